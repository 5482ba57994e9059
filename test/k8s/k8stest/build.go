//go:build linux

// Package k8stest runs a real etcd and kube-apiserver on loopback for
// flowtrace's integration tests. Both binaries are built from the Go module
// proxy through the wrapper modules in test/k8s/etcd and
// test/k8s/kube-apiserver, and cached under ~/.cache/flowtrace/k8s keyed by
// the wrapper's go.mod/go.sum and the Go version, so only a fresh machine
// pays the (about 13 minute) kube-apiserver build.
package k8stest

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
)

// Versions of the control plane the wrappers pin; keep in sync with
// test/k8s/*/go.mod.
const (
	EtcdVersion          = "v3.7.3"
	KubeAPIServerVersion = "v1.37.2"
)

// Binaries are the paths of the built control-plane binaries.
type Binaries struct {
	Etcd          string
	KubeAPIServer string
}

type target struct {
	name string // binary and wrapper directory name
	pkg  string // package to build inside the wrapper module
	ld   string // extra -ldflags
}

var targets = []target{
	{name: "etcd", pkg: "."},
	{name: "kube-apiserver", pkg: "k8s.io/kubernetes/cmd/kube-apiserver", ld: strings.Join([]string{
		"-X k8s.io/component-base/version.gitVersion=" + KubeAPIServerVersion,
		"-X k8s.io/component-base/version.gitMajor=1",
		"-X k8s.io/component-base/version.gitMinor=37",
		"-X k8s.io/component-base/version.gitTreeState=clean",
	}, " ")},
}

// WrapperDir returns test/k8s in the source tree (where this file lives).
func WrapperDir() (string, error) {
	_, file, _, ok := runtime.Caller(0)
	if !ok {
		return "", errors.New("cannot locate test/k8s")
	}
	return filepath.Dir(filepath.Dir(file)), nil
}

// CacheDir returns the binary cache root, ~/.cache/flowtrace/k8s (or under
// $XDG_CACHE_HOME).
func CacheDir() (string, error) {
	base, err := os.UserCacheDir()
	if err != nil {
		return "", fmt.Errorf("user cache dir: %w", err)
	}
	return filepath.Join(base, "flowtrace", "k8s"), nil
}

// Cached returns the binaries if both are already in the cache (or named by
// FLOWTRACE_ETCD and FLOWTRACE_KUBE_APISERVER), without building.
func Cached() (Binaries, bool, error) {
	var b Binaries
	paths, err := binaryPaths()
	if err != nil {
		return b, false, err
	}
	b = Binaries{Etcd: paths[0], KubeAPIServer: paths[1]}
	if v := os.Getenv("FLOWTRACE_ETCD"); v != "" {
		b.Etcd = v
	}
	if v := os.Getenv("FLOWTRACE_KUBE_APISERVER"); v != "" {
		b.KubeAPIServer = v
	}
	for _, p := range []string{b.Etcd, b.KubeAPIServer} {
		if st, err := os.Stat(p); err != nil || st.Mode()&0o111 == 0 {
			return b, false, nil
		}
	}
	return b, true, nil
}

// Ensure builds whatever is missing from the cache and returns the paths.
// Concurrent callers (CI's background build and a test) serialize on a
// lock file, so the second one waits and then finds the binary.
func Ensure(ctx context.Context, progress io.Writer) (Binaries, error) {
	paths, err := binaryPaths()
	if err != nil {
		return Binaries{}, err
	}
	for i, t := range targets {
		if err := ensureOne(ctx, t, paths[i], progress); err != nil {
			return Binaries{}, err
		}
	}
	b, ok, err := Cached()
	if err != nil || !ok {
		return b, errors.Join(err, errors.New("binaries missing after build"))
	}
	return b, nil
}

func binaryPaths() ([]string, error) {
	dir, err := WrapperDir()
	if err != nil {
		return nil, err
	}
	root, err := CacheDir()
	if err != nil {
		return nil, err
	}
	gover, err := goVersion()
	if err != nil {
		return nil, err
	}
	out := make([]string, len(targets))
	for i, t := range targets {
		key, err := cacheKey(filepath.Join(dir, t.name), gover)
		if err != nil {
			return nil, err
		}
		out[i] = filepath.Join(root, t.name+"-"+key, t.name)
	}
	return out, nil
}

// cacheKey hashes what determines the binary: the wrapper's module files
// and the toolchain.
func cacheKey(wrapper, gover string) (string, error) {
	h := sha256.New()
	for _, f := range []string{"go.mod", "go.sum"} {
		data, err := os.ReadFile(filepath.Join(wrapper, f))
		if err != nil {
			return "", fmt.Errorf("cache key: %w", err)
		}
		fmt.Fprintf(h, "%s %d\n", f, len(data))
		h.Write(data)
	}
	fmt.Fprintf(h, "%s %s/%s\n", gover, runtime.GOOS, runtime.GOARCH)
	return hex.EncodeToString(h.Sum(nil))[:16], nil
}

func goTool() string {
	if p, err := exec.LookPath("go"); err == nil {
		return p
	}
	return "/usr/local/go/bin/go"
}

func goVersion() (string, error) {
	out, err := exec.Command(goTool(), "env", "GOVERSION").Output()
	if err != nil {
		return "", fmt.Errorf("go env GOVERSION: %w", err)
	}
	return strings.TrimSpace(string(out)), nil
}

func ensureOne(ctx context.Context, t target, bin string, progress io.Writer) error {
	if err := os.MkdirAll(filepath.Dir(bin), 0o755); err != nil {
		return fmt.Errorf("cache dir: %w", err)
	}
	lock, err := os.OpenFile(bin+".lock", os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return fmt.Errorf("lock %s: %w", t.name, err)
	}
	defer lock.Close()
	if err := syscall.Flock(int(lock.Fd()), syscall.LOCK_EX); err != nil {
		return fmt.Errorf("lock %s: %w", t.name, err)
	}
	defer syscall.Flock(int(lock.Fd()), syscall.LOCK_UN) //nolint:errcheck // closing releases it anyway
	if _, err := os.Stat(bin); err == nil {
		return nil
	}
	dir, err := WrapperDir()
	if err != nil {
		return err
	}
	tmp := bin + ".tmp"
	args := []string{"build", "-trimpath", "-ldflags", strings.TrimSpace("-s -w " + t.ld), "-o", tmp, t.pkg}
	cmd := exec.CommandContext(ctx, goTool(), args...)
	cmd.Dir = filepath.Join(dir, t.name)
	// The wrappers are modules of their own: no workspace, no cgo (static
	// binaries, no C toolchain needed).
	cmd.Env = append(os.Environ(), "GOWORK=off", "CGO_ENABLED=0", "GOFLAGS=-mod=readonly -buildvcs=false")
	if progress != nil {
		fmt.Fprintf(progress, "building %s in %s (cold kube-apiserver builds take ~13 min on 2 cores)\n", t.name, cmd.Dir)
		cmd.Stdout, cmd.Stderr = progress, progress
	}
	if err := cmd.Run(); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("build %s: %w", t.name, err)
	}
	if err := os.Rename(tmp, bin); err != nil {
		return fmt.Errorf("install %s: %w", t.name, err)
	}
	return nil
}
