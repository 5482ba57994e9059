package server

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"os"
	"sync"
	"time"
)

// TLSFiles names the PEM files of a TCP listener's TLS configuration.
type TLSFiles struct {
	CertFile string // server certificate chain
	KeyFile  string // its private key
	// ClientCAFile, when set, turns on mTLS: clients must present a
	// certificate signed by one of these CAs.
	ClientCAFile string
}

// ErrInsecureTCP is returned by CheckTCPSecurity for a TCP listener that
// would carry flows in the clear beyond this machine.
var ErrInsecureTCP = errors.New("a TCP listener needs TLS")

// CheckTCPSecurity enforces flowtrace's transport policy for a TCP listen
// address: TLS is required, with one exception for local development and
// sidecars: plain TCP on a loopback address when insecure is set
// explicitly. Flows name pods, addresses and drop reasons; they never
// cross a network unencrypted.
func CheckTCPSecurity(addr string, haveTLS, insecure bool) error {
	if haveTLS {
		if insecure {
			return errors.New("--insecure-listen and TLS certificates are mutually exclusive")
		}
		return nil
	}
	if !insecure {
		return fmt.Errorf("listen on %s: %w: pass --tls-cert-file and --tls-key-file (and --tls-client-ca-file for mTLS)", addr, ErrInsecureTCP)
	}
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("listen address %q: %w", addr, err)
	}
	if host == "localhost" {
		return nil
	}
	ip := net.ParseIP(host)
	if ip == nil || !ip.IsLoopback() {
		return fmt.Errorf("listen on %s: %w: plain TCP (--insecure-listen) is allowed on a loopback address only (127.0.0.1, ::1, localhost)", addr, ErrInsecureTCP)
	}
	return nil
}

// ListenTCP listens on a TCP host:port. The caller serves it with ServeTLS
// (or, after CheckTCPSecurity allowed it, Serve on loopback).
func ListenTCP(addr string) (net.Listener, error) {
	if _, _, err := net.SplitHostPort(addr); err != nil {
		return nil, fmt.Errorf("listen address %q: want host:port: %w", addr, err)
	}
	l, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("listen on %s: %w", addr, err)
	}
	return l, nil
}

// ServerTLSConfig loads f into a TLS 1.2+ configuration. The key pair is
// re-read when either file changes (checked at most every 10s), so a
// certificate rotated by cert-manager or a script takes effect without a
// restart; a broken rotation keeps serving the last good pair.
func ServerTLSConfig(f TLSFiles) (*tls.Config, error) {
	if f.CertFile == "" || f.KeyFile == "" {
		return nil, errors.New("TLS needs both a certificate file and a key file")
	}
	kp := &keyPair{cert: f.CertFile, key: f.KeyFile}
	if err := kp.load(); err != nil {
		return nil, err
	}
	cfg := &tls.Config{
		MinVersion:     tls.VersionTLS12,
		GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) { return kp.get(), nil },
		NextProtos:     []string{"h2"},
	}
	if f.ClientCAFile != "" {
		pool, err := LoadCertPool(f.ClientCAFile)
		if err != nil {
			return nil, err
		}
		cfg.ClientCAs = pool
		cfg.ClientAuth = tls.RequireAndVerifyClientCert
	}
	return cfg, nil
}

// LoadCertPool reads PEM CA certificates from path.
func LoadCertPool(path string) (*x509.CertPool, error) {
	pem, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read CA file: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("CA file %s: no PEM certificates found", path)
	}
	return pool, nil
}

const keyPairRecheck = 10 * time.Second

type keyPair struct {
	cert, key string

	mu      sync.Mutex
	current *tls.Certificate
	mtimes  [2]time.Time
	checked time.Time
}

func (k *keyPair) load() error {
	c, err := tls.LoadX509KeyPair(k.cert, k.key)
	if err != nil {
		return fmt.Errorf("load TLS key pair %s, %s: %w", k.cert, k.key, err)
	}
	k.mu.Lock()
	k.current = &c
	k.mtimes = k.stat()
	k.checked = time.Now()
	k.mu.Unlock()
	return nil
}

func (k *keyPair) stat() [2]time.Time {
	var m [2]time.Time
	for i, p := range []string{k.cert, k.key} {
		if fi, err := os.Stat(p); err == nil {
			m[i] = fi.ModTime()
		}
	}
	return m
}

func (k *keyPair) get() *tls.Certificate {
	k.mu.Lock()
	defer k.mu.Unlock()
	if time.Since(k.checked) < keyPairRecheck {
		return k.current
	}
	k.checked = time.Now()
	if m := k.stat(); m != k.mtimes {
		if c, err := tls.LoadX509KeyPair(k.cert, k.key); err == nil {
			k.current, k.mtimes = &c, m
		}
	}
	return k.current
}
