//go:build linux

package k8stest

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/flowtrace/flowtrace/pkg/testutil"
)

// BuildEnv set to 1 lets a test build missing binaries itself. CI
// (FLOWTRACE_REQUIRE_PRIVILEGED=1) always builds; a developer's plain
// `go test` skips instead of silently spending 13 minutes.
const BuildEnv = "FLOWTRACE_K8S_BUILD"

// Cluster is a running etcd + kube-apiserver on loopback.
type Cluster struct {
	URL        string       // https://127.0.0.1:port
	Token      string       // bearer token of a system:masters user
	CA         []byte       // PEM of the serving certificate's CA
	Config     *rest.Config // admin client configuration
	Kubeconfig string       // path of a kubeconfig file for the same user
	Client     kubernetes.Interface

	dir   string
	procs []*proc
}

// Start builds (if allowed) and starts a control plane for t, and stops it
// when t ends. It fails or skips (testutil.SkipOrFail) when the binaries
// are missing and cannot be built.
func Start(t testing.TB) *Cluster {
	t.Helper()
	bins, ok, err := Cached()
	if err != nil {
		testutil.SkipOrFail(t, fmt.Sprintf("kube-apiserver binaries: %v", err))
	}
	if !ok {
		if !testutil.Required() && os.Getenv(BuildEnv) != "1" {
			testutil.SkipOrFail(t, "etcd/kube-apiserver not built: run `make k8s-binaries` (~13 min cold) or set "+BuildEnv+"=1")
		}
		ctx := context.Background()
		if dl, ok := t.(interface{ Deadline() (time.Time, bool) }); ok {
			if d, has := dl.Deadline(); has {
				var cancel context.CancelFunc
				ctx, cancel = context.WithDeadline(ctx, d.Add(-30*time.Second))
				defer cancel()
			}
		}
		start := time.Now()
		bins, err = Ensure(ctx, testWriter{t})
		if err != nil {
			testutil.SkipOrFail(t, fmt.Sprintf("build etcd/kube-apiserver: %v", err))
		}
		t.Logf("built control plane binaries in %s", time.Since(start).Round(time.Second))
	}
	c, err := Launch(bins, t.TempDir())
	if err != nil {
		t.Fatalf("start control plane: %v", err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Log(c.LogTail(4000))
		}
		c.Stop()
	})
	return c
}

type testWriter struct{ t testing.TB }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

// Launch starts etcd and kube-apiserver with their data, keys and logs in
// dir, and waits until the API server is ready. Stop ends both. Outside
// tests (the lab's local API server) the caller owns dir and Stop.
func Launch(bins Binaries, dir string) (_ *Cluster, err error) {
	c := &Cluster{dir: dir}
	defer func() {
		if err != nil {
			err = fmt.Errorf("%w\n%s", err, c.LogTail(3000))
			c.Stop()
		}
	}()
	ports, err := freePorts(3)
	if err != nil {
		return nil, err
	}
	clientURL := "http://127.0.0.1:" + strconv.Itoa(ports[0])
	peerURL := "http://127.0.0.1:" + strconv.Itoa(ports[1])
	if err := c.spawn("etcd", bins.Etcd,
		"--name", "ftt",
		"--data-dir", filepath.Join(dir, "etcd-data"),
		"--listen-client-urls", clientURL, "--advertise-client-urls", clientURL,
		"--listen-peer-urls", peerURL, "--initial-advertise-peer-urls", peerURL,
		"--initial-cluster", "ftt="+peerURL,
		"--unsafe-no-fsync",
		"--log-level", "warn",
	); err != nil {
		return nil, err
	}
	pki, err := writePKI(dir)
	if err != nil {
		return nil, err
	}
	c.URL = "https://127.0.0.1:" + strconv.Itoa(ports[2])
	if err := c.spawn("kube-apiserver", bins.KubeAPIServer,
		"--etcd-servers", clientURL,
		"--bind-address", "127.0.0.1", "--advertise-address", "127.0.0.1",
		"--secure-port", strconv.Itoa(ports[2]),
		// The default reconciler refuses a loopback advertise address.
		"--endpoint-reconciler-type", "none",
		"--tls-cert-file", pki.cert, "--tls-private-key-file", pki.key,
		"--token-auth-file", pki.tokens,
		"--authorization-mode", "RBAC",
		"--service-account-issuer", "https://kubernetes.default.svc",
		"--service-account-key-file", pki.saKey,
		"--service-account-signing-key-file", pki.saKey,
		"--service-cluster-ip-range", ServiceCIDR,
		// No controller-manager creates default ServiceAccounts, so the
		// ServiceAccount admission plugin would reject every pod.
		"--disable-admission-plugins", "ServiceAccount",
		"--allow-privileged=true",
		"--cert-dir", filepath.Join(dir, "apiserver-certs"),
		"-v", "1",
	); err != nil {
		return nil, err
	}
	c.Token, c.CA = pki.token, pki.caPEM
	c.Config = &rest.Config{Host: c.URL, BearerToken: pki.token, TLSClientConfig: rest.TLSClientConfig{CAData: pki.caPEM}, QPS: 100, Burst: 200}
	if err := waitReady(c, 90*time.Second); err != nil {
		return nil, err
	}
	c.Kubeconfig = filepath.Join(dir, "kubeconfig")
	if err := os.WriteFile(c.Kubeconfig, kubeconfig(c), 0o600); err != nil {
		return nil, err
	}
	if c.Client, err = kubernetes.NewForConfig(c.Config); err != nil {
		return nil, err
	}
	return c, nil
}

// ServiceCIDR is the range the API server assigns ClusterIPs from.
const ServiceCIDR = "10.96.0.0/16"

type proc struct {
	name   string
	cmd    *exec.Cmd
	exited chan struct{}
}

// spawn starts a process that dies with its owner: Stop sends SIGTERM, then
// SIGKILL, and the kernel sends SIGKILL if the owning process dies first
// (Pdeathsig), so a crashed test binary leaves nothing behind.
func (c *Cluster) spawn(name, bin string, args ...string) error {
	logf, err := os.Create(filepath.Join(c.dir, name+".log"))
	if err != nil {
		return err
	}
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL, Setpgid: true}
	if err := cmd.Start(); err != nil {
		logf.Close()
		return fmt.Errorf("start %s: %w", name, err)
	}
	p := &proc{name: name, cmd: cmd, exited: make(chan struct{})}
	go func() { cmd.Wait(); logf.Close(); close(p.exited) }() //nolint:errcheck // exit status is in the log
	c.procs = append(c.procs, p)
	return nil
}

// Stop ends the API server, then etcd (reverse start order), by PID.
func (c *Cluster) Stop() {
	for i := len(c.procs) - 1; i >= 0; i-- {
		p := c.procs[i]
		p.cmd.Process.Signal(syscall.SIGTERM) //nolint:errcheck // may have exited
		select {
		case <-p.exited:
		case <-time.After(10 * time.Second):
			p.cmd.Process.Kill() //nolint:errcheck
			<-p.exited
		}
	}
	c.procs = nil
}

// LogTail returns the last n bytes of each process's log.
func (c *Cluster) LogTail(n int) string {
	var b strings.Builder
	for _, name := range []string{"etcd", "kube-apiserver"} {
		data, err := os.ReadFile(filepath.Join(c.dir, name+".log"))
		if err != nil {
			continue
		}
		if len(data) > n {
			data = data[len(data)-n:]
		}
		fmt.Fprintf(&b, "--- tail of %s.log ---\n%s\n", name, data)
	}
	return b.String()
}

func freePorts(n int) ([]int, error) {
	var ls []net.Listener
	defer func() {
		for _, l := range ls {
			l.Close()
		}
	}()
	var out []int
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, fmt.Errorf("free port: %w", err)
		}
		ls = append(ls, l)
		out = append(out, l.Addr().(*net.TCPAddr).Port)
	}
	return out, nil
}

func waitReady(c *Cluster, timeout time.Duration) error {
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(c.CA)
	hc := &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}
	deadline := time.Now().Add(timeout)
	var last string
	for time.Now().Before(deadline) {
		req, _ := http.NewRequest(http.MethodGet, c.URL+"/readyz", nil)
		req.Header.Set("Authorization", "Bearer "+c.Token)
		resp, err := hc.Do(req)
		if err == nil {
			var b bytes.Buffer
			b.ReadFrom(resp.Body) //nolint:errcheck
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
			last = fmt.Sprintf("%d %s", resp.StatusCode, b.String())
		} else {
			last = err.Error()
		}
		time.Sleep(100 * time.Millisecond)
	}
	return fmt.Errorf("kube-apiserver not ready within %s: %s", timeout, last)
}

type pkiFiles struct {
	cert, key, tokens, saKey string
	caPEM                    []byte
	token                    string
}

// writePKI makes a throwaway CA, a serving certificate for 127.0.0.1 and
// localhost, a service-account signing key and a static admin token.
func writePKI(dir string) (pkiFiles, error) {
	var p pkiFiles
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return p, err
	}
	now := time.Now()
	caTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "flowtrace-test-ca"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		return p, err
	}
	ca, err := x509.ParseCertificate(caDER)
	if err != nil {
		return p, err
	}
	srvKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return p, err
	}
	srvTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "kube-apiserver"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(24 * time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		DNSNames: []string{"localhost"}, IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback},
	}
	srvDER, err := x509.CreateCertificate(rand.Reader, srvTmpl, ca, &srvKey.PublicKey, caKey)
	if err != nil {
		return p, err
	}
	srvKeyDER, err := x509.MarshalECPrivateKey(srvKey)
	if err != nil {
		return p, err
	}
	saKey, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		return p, err
	}
	tok := make([]byte, 16)
	if _, err := rand.Read(tok); err != nil {
		return p, err
	}
	p.token = hex.EncodeToString(tok)
	p.caPEM = pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER})
	p.cert, p.key = filepath.Join(dir, "apiserver.crt"), filepath.Join(dir, "apiserver.key")
	p.saKey, p.tokens = filepath.Join(dir, "sa.key"), filepath.Join(dir, "tokens.csv")
	files := map[string][]byte{
		p.cert:   pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srvDER}),
		p.key:    pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: srvKeyDER}),
		p.saKey:  pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(saKey)}),
		p.tokens: []byte(p.token + ",flowtrace-admin,flowtrace-admin,system:masters\n"),
	}
	for path, data := range files {
		if err := os.WriteFile(path, data, 0o600); err != nil {
			return p, errors.Join(fmt.Errorf("write %s", path), err)
		}
	}
	return p, nil
}

func kubeconfig(c *Cluster) []byte {
	var b strings.Builder
	fmt.Fprintf(&b, `apiVersion: v1
kind: Config
clusters:
- name: ftt
  cluster:
    server: %s
    certificate-authority-data: %s
users:
- name: admin
  user:
    token: %s
contexts:
- name: ftt
  context: {cluster: ftt, user: admin}
current-context: ftt
`, c.URL, b64(c.CA), c.Token)
	return []byte(b.String())
}

func b64(b []byte) string { return base64.StdEncoding.EncodeToString(b) }
