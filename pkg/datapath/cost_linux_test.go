//go:build linux

package datapath

import (
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/flowtrace/flowtrace/pkg/decode"
)

// TestTCCost reports the per-packet run time of the tc program from kernel
// BPF stats over 100k test runs of one aggregated TCP flow, with the
// per-CPU flow cache and without. It only fails if stats are unavailable or
// the cost is absurd (> 20 us), since machines are shared and noisy.
func TestTCCost(t *testing.T) {
	t.Run("flow cache", func(t *testing.T) { tcCost(t, Config{}) })
	t.Run("no flow cache", func(t *testing.T) { tcCost(t, Config{NoFlowCache: true}) })
}

func tcCost(t *testing.T, cfg Config) {
	d := load(t, cfg)
	stop, err := ebpf.EnableStats(unix.BPF_STATS_RUN_TIME)
	if err != nil {
		t.Fatalf("enable bpf stats: %v", err)
	}
	defer stop.Close()
	const n = 100000
	for _, c := range []struct {
		name  string
		frame []byte
	}{
		{"ipv4 tcp ack (aggregated)", tcpFrame(53000, decode.TCPAck, 100)},
		{"ipv6 tcp ack (aggregated)", cat(eth(0x86dd), ipv6(6, "fd00::1", "fd00::2", tcp(53001, 443, decode.TCPAck)))},
		{"arp (not ip)", cat(eth(0x0806), make([]byte, 28))},
		// DF and above the MTU-check threshold: one FIB lookup, then the per-flow cache.
		{"ipv4 tcp 1400B DF (aggregated, mtu check)", cat(eth(0x0800), ipv4(6, "10.1.0.1", "10.1.0.2", 0x4000, nil, cat(tcp(53002, 443, decode.TCPAck), make([]byte, 1380))))},
	} {
		before, err := d.Ingress().Stats()
		if err != nil {
			t.Fatal(err)
		}
		if _, err := d.Ingress().Run(&ebpf.RunOptions{Data: c.frame, Repeat: n}); err != nil {
			t.Fatal(err)
		}
		after, err := d.Ingress().Stats()
		if err != nil {
			t.Fatal(err)
		}
		runs := after.RunCount - before.RunCount
		per := (after.Runtime - before.Runtime) / time.Duration(max(runs, 1))
		t.Logf("%s: %d runs, %v per packet", c.name, runs, per)
		if runs != n || per <= 0 || per > 20*time.Microsecond {
			t.Fatalf("%s: runs=%d per=%v", c.name, runs, per)
		}
		drain(t, d)
	}
}
