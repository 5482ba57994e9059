package identity

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"time"
)

// DefaultCNICacheDir is where libcni (containerd, CRI-O) caches the result of
// every CNI ADD, one JSON file per attachment named
// <network>-<containerID>-<ifname>.
const DefaultCNICacheDir = "/var/lib/cni/results"

// CNIConfig configures the CNI cache source.
type CNIConfig struct {
	Dir      string           // default DefaultCNICacheDir
	Node     string           // node name put on the pods found
	Interval time.Duration    // poll interval, default 2s
	Grace    time.Duration    // how long a removed entry keeps naming its IPs, default DefaultGrace
	Now      func() time.Time // clock, for tests
}

// CNICache is the node-local fallback source: it works without any API
// access, from the results the container runtime cached for each pod
// sandbox. It names namespace/pod (from CNI_ARGS K8S_POD_NAMESPACE and
// K8S_POD_NAME) for the pod's IPs and its host-side veth; it knows no labels
// or workloads. Malformed entries are reported and skipped, never fatal.
type CNICache struct {
	cfg  CNIConfig
	log  *slog.Logger
	hist *History

	mu      sync.RWMutex
	entries map[string]cniEntry // by file name
	ifaces  map[string]*Pod
	bad     map[string]string // file name -> error
	synced  bool
	detail  string
}

type cniEntry struct {
	stamp fileStamp
	pod   *Pod // nil: not a Kubernetes pod (no K8S_POD_NAME)
	host  []string
}

// cniCacheFile mirrors the fields of libcni's cachedInfo that flowtrace
// reads; unknown fields are ignored because the runtime owns the format.
type cniCacheFile struct {
	Kind        string      `json:"kind"`
	ContainerID string      `json:"containerId"`
	IfName      string      `json:"ifName"`
	NetworkName string      `json:"networkName"`
	CniArgs     [][2]string `json:"cniArgs"`
	Result      *cniResult  `json:"result"`
}

type cniResult struct {
	Interfaces []struct {
		Name    string `json:"name"`
		Sandbox string `json:"sandbox"`
	} `json:"interfaces"`
	IPs []struct {
		Address string `json:"address"`
	} `json:"ips"`
	// CNI 0.2.0 results.
	IP4 *struct {
		IP string `json:"ip"`
	} `json:"ip4"`
	IP6 *struct {
		IP string `json:"ip"`
	} `json:"ip6"`
}

// NewCNICache returns the source; Run loads and watches the directory. A
// missing directory is not an error (the node may have no pods yet, or a
// runtime that caches elsewhere): the status says so.
func NewCNICache(cfg CNIConfig, log *slog.Logger) *CNICache {
	if cfg.Dir == "" {
		cfg.Dir = DefaultCNICacheDir
	}
	if cfg.Interval <= 0 {
		cfg.Interval = 2 * time.Second
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	return &CNICache{
		cfg:     cfg,
		log:     log,
		hist:    NewHistory(cfg.Grace, cfg.Now),
		entries: map[string]cniEntry{},
		ifaces:  map[string]*Pod{},
		bad:     map[string]string{},
	}
}

// Name implements Source.
func (c *CNICache) Name() string { return "cni:" + c.cfg.Dir }

// Synced implements Source.
func (c *CNICache) Synced() (bool, string) {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return c.synced, c.detail
}

// PodByIP implements Getter.
func (c *CNICache) PodByIP(ip netip.Addr) (*Pod, bool) { return c.hist.At(ip, time.Time{}) }

// PodByIPAt implements TimedGetter.
func (c *CNICache) PodByIPAt(ip netip.Addr, t time.Time) (*Pod, bool) { return c.hist.At(ip, t) }

// ServiceByIP implements Getter: the CNI cache knows no Services.
func (c *CNICache) ServiceByIP(netip.Addr) (*Service, bool) { return nil, false }

// PodByHostIface implements IfaceGetter.
func (c *CNICache) PodByHostIface(name string) (*Pod, bool) {
	c.mu.RLock()
	p, ok := c.ifaces[name]
	c.mu.RUnlock()
	return p, ok
}

// Run polls the directory until ctx is done. Polling, not inotify: the
// runtime writes entries by rename, the directory may not exist yet, and a
// scan of a few hundred small files every two seconds is cheap.
func (c *CNICache) Run(ctx context.Context) error {
	c.Scan()
	t := time.NewTicker(c.cfg.Interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
			c.Scan()
			c.hist.Prune()
		}
	}
}

// Scan reads new and changed entries and releases removed ones. Run calls
// it; tests and the agent may call it to load synchronously.
func (c *CNICache) Scan() {
	des, err := os.ReadDir(c.cfg.Dir)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		c.mu.Lock()
		c.detail = fmt.Sprintf("read %s: %v", c.cfg.Dir, err)
		c.mu.Unlock()
		c.log.Warn("cni cache not readable", "dir", c.cfg.Dir, "error", err)
		return
	}
	seen := map[string]bool{}
	changed := false
	for _, de := range des {
		if !de.Type().IsRegular() || strings.HasPrefix(de.Name(), ".") {
			continue
		}
		name := de.Name()
		seen[name] = true
		st, err := de.Info()
		if err != nil {
			continue // removed between ReadDir and Info
		}
		stamp := fileStamp{mod: st.ModTime(), size: st.Size(), ino: inode(st)}
		c.mu.RLock()
		old, known := c.entries[name]
		c.mu.RUnlock()
		if known && old.stamp == stamp {
			continue
		}
		data, err := os.ReadFile(filepath.Join(c.cfg.Dir, name))
		if err != nil {
			continue
		}
		pod, host, err := parseCNIEntry(data, c.cfg.Node)
		changed = true
		c.mu.Lock()
		if err != nil {
			c.bad[name] = err.Error()
			c.entries[name] = cniEntry{stamp: stamp}
			c.mu.Unlock()
			c.hist.Release(name, time.Time{})
			// Logged once per version of the file: unchanged files are not
			// re-read.
			c.log.Warn("malformed cni cache entry skipped", "file", filepath.Join(c.cfg.Dir, name), "error", err)
			continue
		}
		delete(c.bad, name)
		c.entries[name] = cniEntry{stamp: stamp, pod: pod, host: host}
		c.mu.Unlock()
		if pod != nil {
			c.hist.Set(name, pod, pod.IPs, stamp.mod)
		}
	}
	c.mu.Lock()
	for name := range c.entries {
		if !seen[name] {
			delete(c.entries, name)
			delete(c.bad, name)
			changed = true
			c.hist.Release(name, time.Time{})
		}
	}
	if changed || !c.synced {
		c.rebuildIfacesLocked()
	}
	pods := 0
	for _, e := range c.entries {
		if e.pod != nil {
			pods++
		}
	}
	c.synced = true
	c.detail = fmt.Sprintf("%d pod attachments", pods)
	if len(c.bad) > 0 {
		names := make([]string, 0, len(c.bad))
		for n := range c.bad {
			names = append(names, n)
		}
		sort.Strings(names)
		c.detail += fmt.Sprintf(", %d malformed skipped (%s: %s)", len(c.bad), names[0], c.bad[names[0]])
	}
	if errors.Is(err, os.ErrNotExist) {
		c.detail += ", directory does not exist yet"
	}
	c.mu.Unlock()
}

// rebuildIfacesLocked maps host-side interfaces to pods. Plugins list
// host-side interfaces without a sandbox; the bridge plugin also lists the
// bridge itself (first, and in every entry), which must not name a pod. So
// an interface shared by several entries is not a veth, and within one entry
// the last host-side interface is the veth.
func (c *CNICache) rebuildIfacesLocked() {
	count := map[string]int{}
	for _, e := range c.entries {
		for _, h := range e.host {
			count[h]++
		}
	}
	ifaces := map[string]*Pod{}
	for _, e := range c.entries {
		if e.pod == nil {
			continue
		}
		var own []string
		for _, h := range e.host {
			if count[h] == 1 {
				own = append(own, h)
			}
		}
		if len(own) > 0 {
			ifaces[own[len(own)-1]] = e.pod
		}
	}
	c.ifaces = ifaces
}

// parseCNIEntry returns the pod of one cache entry (nil if the container is
// not a Kubernetes pod sandbox) and its host-side interface names.
func parseCNIEntry(data []byte, node string) (*Pod, []string, error) {
	var f cniCacheFile
	if err := json.Unmarshal(data, &f); err != nil {
		return nil, nil, fmt.Errorf("malformed JSON: %w", err)
	}
	if f.ContainerID == "" {
		return nil, nil, errors.New("no containerId")
	}
	if f.Result == nil {
		return nil, nil, errors.New("no result")
	}
	var ns, name string
	for _, kv := range f.CniArgs {
		switch kv[0] {
		case "K8S_POD_NAMESPACE":
			ns = kv[1]
		case "K8S_POD_NAME":
			name = kv[1]
		}
	}
	var host []string
	for _, i := range f.Result.Interfaces {
		if i.Sandbox == "" && i.Name != "" {
			host = append(host, i.Name)
		}
	}
	if ns == "" && name == "" {
		return nil, host, nil
	}
	if !validName(ns) || !validName(name) {
		return nil, nil, fmt.Errorf("invalid K8S_POD_NAMESPACE/K8S_POD_NAME %q/%q", ns, name)
	}
	var ips []netip.Addr
	add := func(s string) error {
		pfx, err := netip.ParsePrefix(s)
		if err != nil {
			a, err2 := netip.ParseAddr(s)
			if err2 != nil {
				return fmt.Errorf("bad address %q: %w", s, err)
			}
			ips = append(ips, a.Unmap())
			return nil
		}
		ips = append(ips, pfx.Addr().Unmap())
		return nil
	}
	for _, ip := range f.Result.IPs {
		if err := add(ip.Address); err != nil {
			return nil, nil, err
		}
	}
	for _, legacy := range []*struct {
		IP string `json:"ip"`
	}{f.Result.IP4, f.Result.IP6} {
		if legacy != nil && legacy.IP != "" {
			if err := add(legacy.IP); err != nil {
				return nil, nil, err
			}
		}
	}
	if len(ips) == 0 {
		return nil, nil, fmt.Errorf("pod %s/%s: result has no ips", ns, name)
	}
	return &Pod{Namespace: ns, Name: name, Node: node, IPs: ips}, host, nil
}
