package server

import (
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"time"
)

// ErrAgentRunning is returned by ListenUnix when a live agent already
// answers on the socket path.
var ErrAgentRunning = errors.New("another flowtrace agent is listening")

// maxSocketPath is the longest unix socket path Linux accepts.
const maxSocketPath = 107

// ListenUnix listens on a unix socket at path, readable and writable by its
// owner only (0600). It creates the parent directory (0755), replaces a stale
// socket file left by a crashed agent, and refuses to touch a socket a live
// agent answers on or a path that is not a socket.
func ListenUnix(path string) (net.Listener, error) {
	path = filepath.Clean(path)
	dir := filepath.Dir(path)
	// sun_path holds 107 bytes and a NUL; the socket is bound under a
	// private directory next to path first (".s-" + 8 characters + "/s").
	if n := len(dir) + len("/.s-12345678/s"); len(path) > maxSocketPath || n > maxSocketPath {
		return nil, fmt.Errorf("listen on %s: unix socket paths are limited to %d bytes (this one needs %d); choose a shorter path", path, maxSocketPath, max(len(path), n))
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("create socket directory %s: %w", dir, err)
	}
	fi, err := os.Lstat(path)
	switch {
	case err == nil && fi.Mode()&fs.ModeSocket == 0:
		return nil, fmt.Errorf("listen on %s: path exists and is not a socket; remove it or choose another path", path)
	case err == nil:
		c, derr := net.DialTimeout("unix", path, time.Second)
		if derr == nil {
			c.Close()
			return nil, fmt.Errorf("listen on %s: %w", path, ErrAgentRunning)
		}
	case !errors.Is(err, fs.ErrNotExist):
		return nil, fmt.Errorf("stat socket %s: %w", path, err)
	}

	// Bind inside a private directory, restrict the mode, then rename into
	// place: the socket is never reachable with the process umask's mode,
	// and the rename atomically replaces a stale socket file.
	tmpDir, err := os.MkdirTemp(dir, ".s-")
	if err != nil {
		return nil, fmt.Errorf("create temporary socket directory in %s: %w", dir, err)
	}
	defer os.RemoveAll(tmpDir)
	tmp := filepath.Join(tmpDir, "s")
	l, err := net.ListenUnix("unix", &net.UnixAddr{Name: tmp, Net: "unix"})
	if err != nil {
		return nil, fmt.Errorf("listen on %s: %w", tmp, err)
	}
	// The name moves; unlink the final path ourselves on Close.
	l.SetUnlinkOnClose(false)
	if err := os.Chmod(tmp, 0o600); err != nil {
		l.Close()
		return nil, fmt.Errorf("chmod socket %s: %w", tmp, err)
	}
	if err := os.Rename(tmp, path); err != nil {
		l.Close()
		return nil, fmt.Errorf("move socket into place at %s: %w", path, err)
	}
	return &unixListener{UnixListener: l, path: path}, nil
}

type unixListener struct {
	*net.UnixListener
	path string
}

// Addr reports the final path, not the temporary bind name.
func (u *unixListener) Addr() net.Addr { return &net.UnixAddr{Name: u.path, Net: "unix"} }

func (u *unixListener) Close() error {
	err := u.UnixListener.Close()
	if rerr := os.Remove(u.path); rerr != nil && !errors.Is(rerr, fs.ErrNotExist) {
		err = errors.Join(err, fmt.Errorf("remove socket %s: %w", u.path, rerr))
	}
	return err
}
