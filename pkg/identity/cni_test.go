package identity

import (
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// cniEntry writes a cache entry the way libcni lays it out (cachedInfo).
func cniEntryJSON(cid, ns, name string, ips ...string) string {
	var ipj []string
	for _, ip := range ips {
		ipj = append(ipj, fmt.Sprintf(`{"address": %q, "interface": 2}`, ip))
	}
	return fmt.Sprintf(`{"kind": "cniCacheV1", "containerId": %q, "config": "eyJ9", "ifName": "eth0",
  "networkName": "cbr0", "netns": "/var/run/netns/cni-1",
  "cniArgs": [["IgnoreUnknown", "1"], ["K8S_POD_NAMESPACE", %q], ["K8S_POD_NAME", %q], ["K8S_POD_INFRA_CONTAINER_ID", %q]],
  "result": {"cniVersion": "1.0.0",
    "interfaces": [{"name": "cni0", "mac": "aa:aa:aa:aa:aa:01"}, {"name": "veth%s", "mac": "aa:aa:aa:aa:aa:02"},
                   {"name": "eth0", "mac": "aa:aa:aa:aa:aa:03", "sandbox": "/var/run/netns/cni-1"}],
    "ips": [%s], "dns": {}}}`, cid, ns, name, cid, cid[:6], strings.Join(ipj, ", "))
}

func TestCNICache(t *testing.T) {
	dir := t.TempDir()
	clk := &testClock{t: time.Now()}
	put := func(name, data string) {
		t.Helper()
		if err := os.WriteFile(filepath.Join(dir, name), []byte(data), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	put("cbr0-aaaaaa01-eth0", cniEntryJSON("aaaaaa01", "shop", "web-1", "10.244.0.5/24", "fd00:10:244::5/64"))
	put("cbr0-bbbbbb02-eth0", cniEntryJSON("bbbbbb02", "shop", "db-0", "10.244.0.6/24"))
	put("cbr0-cccccc03-eth0", `{"containerId": "cccccc03", "result": {"ips": [`) // truncated write
	put("cbr0-dddddd04-eth0", `{"kind": "cniCacheV1", "containerId": "dddddd04", "ifName": "eth0", "result": {"ips": [{"address": "10.244.0.7/24"}]}}`)
	c := NewCNICache(CNIConfig{Dir: dir, Node: "n1", Now: clk.now}, quietLog())
	c.Scan()

	if p, ok := c.PodByIP(netip.MustParseAddr("10.244.0.5")); !ok || p.Key() != "shop/web-1" || p.Node != "n1" || len(p.IPs) != 2 {
		t.Errorf("v4: %+v %v", p, ok)
	}
	if p, ok := c.PodByIP(netip.MustParseAddr("fd00:10:244::5")); !ok || p.Name != "web-1" {
		t.Errorf("v6: %+v %v", p, ok)
	}
	if _, ok := c.PodByIP(netip.MustParseAddr("10.244.0.7")); ok {
		t.Error("a container without K8S_POD_NAME was named")
	}
	if p, ok := c.PodByHostIface("vethaaaaaa"); !ok || p.Name != "web-1" {
		t.Errorf("host veth: %+v %v", p, ok)
	}
	if p, ok := c.PodByHostIface("cni0"); ok {
		t.Errorf("the shared bridge named pod %s", p.Key())
	}
	ok, detail := c.Synced()
	if !ok || !strings.Contains(detail, "2 pod attachments") || !strings.Contains(detail, "1 malformed skipped (cbr0-cccccc03-eth0") {
		t.Errorf("status %v %q", ok, detail)
	}

	// Removal: the pod keeps its IP for the grace period, then not.
	if err := os.Remove(filepath.Join(dir, "cbr0-bbbbbb02-eth0")); err != nil {
		t.Fatal(err)
	}
	c.Scan()
	if p, ok := c.PodByIP(netip.MustParseAddr("10.244.0.6")); !ok || p.Name != "db-0" {
		t.Errorf("removed entry forgotten within grace: %+v %v", p, ok)
	}
	clk.t = clk.t.Add(DefaultGrace + time.Second)
	if _, ok := c.PodByIP(netip.MustParseAddr("10.244.0.6")); ok {
		t.Error("removed entry named after grace")
	}

	// A fixed entry is picked up; the bad count drops.
	put("cbr0-cccccc03-eth0", cniEntryJSON("cccccc03", "shop", "cache-0", "10.244.0.8/24"))
	future := clk.t.Add(time.Second)                                     // a new mtime, as a rewrite would have
	os.Chtimes(filepath.Join(dir, "cbr0-cccccc03-eth0"), future, future) //nolint:errcheck
	c.Scan()
	if p, ok := c.PodByIP(netip.MustParseAddr("10.244.0.8")); !ok || p.Name != "cache-0" {
		t.Errorf("fixed entry: %+v %v", p, ok)
	}
	if _, detail := c.Synced(); strings.Contains(detail, "malformed") {
		t.Errorf("status still reports malformed: %q", detail)
	}
}

func TestCNICacheMissingDir(t *testing.T) {
	c := NewCNICache(CNIConfig{Dir: filepath.Join(t.TempDir(), "absent")}, quietLog())
	c.Scan()
	if ok, detail := c.Synced(); !ok || !strings.Contains(detail, "does not exist") {
		t.Errorf("missing dir: %v %q", ok, detail)
	}
}

func TestParseCNIEntryErrors(t *testing.T) {
	cases := map[string]string{
		`nope`:                 "malformed JSON",
		`{"result": {}}`:       "no containerId",
		`{"containerId": "x"}`: "no result",
		`{"containerId": "x", "cniArgs": [["K8S_POD_NAMESPACE", "a"], ["K8S_POD_NAME", "b"]], "result": {"ips": []}}`:                             "no ips",
		`{"containerId": "x", "cniArgs": [["K8S_POD_NAMESPACE", "a"], ["K8S_POD_NAME", "b"]], "result": {"ips": [{"address": "10.1.1.300/24"}]}}`: "bad address",
		`{"containerId": "x", "cniArgs": [["K8S_POD_NAME", "b"]], "result": {"ips": [{"address": "10.1.1.3/24"}]}}`:                               "invalid K8S_POD_NAMESPACE",
	}
	for in, want := range cases {
		if _, _, err := parseCNIEntry([]byte(in), ""); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("parseCNIEntry(%s) = %v, want %q", in, err, want)
		}
	}
	// CNI 0.2.0 results carry ip4/ip6 instead of ips.
	p, _, err := parseCNIEntry([]byte(`{"containerId": "x", "cniArgs": [["K8S_POD_NAMESPACE", "a"], ["K8S_POD_NAME", "b"]],
		"result": {"ip4": {"ip": "10.1.1.3/24"}, "ip6": {"ip": "fd00::3/64"}}}`), "")
	if err != nil || len(p.IPs) != 2 {
		t.Errorf("0.2.0 result: %+v %v", p, err)
	}
}

func TestChainOptionalInterfaces(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "net-aaaaaa01-eth0"), []byte(cniEntryJSON("aaaaaa01", "shop", "web-1", "10.244.0.5/24")), 0o600); err != nil {
		t.Fatal(err)
	}
	cni := NewCNICache(CNIConfig{Dir: dir}, quietLog())
	cni.Scan()
	path := filepath.Join(t.TempDir(), "id.json")
	write(t, path, good)
	f, err := NewFile(path, time.Hour, quietLog())
	if err != nil {
		t.Fatal(err)
	}
	c := Chain{cni, f}
	if p, ok := c.PodByIPAt(netip.MustParseAddr("10.244.0.5"), time.Time{}); !ok || p.Name != "web-1" {
		t.Errorf("timed via cni: %+v", p)
	}
	if p, ok := c.PodByIPAt(netip.MustParseAddr("10.244.0.10"), time.Now()); !ok || p.Name != "frontend-1" {
		t.Errorf("timed falls back to the file's PodByIP: %+v", p)
	}
	if s, ok := c.ServiceByVIPPort(netip.MustParseAddr("10.96.0.10"), 80, "tcp"); !ok || s.Name != "web" {
		t.Errorf("VIP:port via file: %+v", s)
	}
	if _, ok := c.ServiceByVIPPort(netip.MustParseAddr("10.96.0.10"), 81, "tcp"); ok {
		t.Error("wrong port resolved via file")
	}
	if p, ok := c.PodByHostIface("vethaaaaaa"); !ok || p.Name != "web-1" {
		t.Errorf("iface: %+v", p)
	}
	if st := c.Synced(); len(st) != 2 || !st[0].Synced || !strings.HasPrefix(st[1].Name, "file:") {
		t.Errorf("status %+v", st)
	}
}
