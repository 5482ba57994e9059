package agent

import (
	"net/netip"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/flowtrace/flowtrace/pkg/decode"
	"github.com/flowtrace/flowtrace/pkg/enrich"
	"github.com/flowtrace/flowtrace/pkg/identity"
	"github.com/flowtrace/flowtrace/pkg/observer"
)

type benchNamer map[uint32]string

func (n benchNamer) InterfaceName(_, ifindex uint32) (string, string) { return n[ifindex], "node" }

// churnEvents is what the datapath reports for one short TCP connection
// between two pods on one node (the bench's churn workload): NEW at both
// veths in each direction, then the close at each veth carrying the
// server's FIN as its reverse counts.
func churnEvents(client, server netip.Addr, port uint16, t time.Time, ct decode.Conntrack) [6]decode.Event {
	ev := func(src, dst netip.Addr, sport, dport uint16, ifindex uint32, dir decode.Direction, flags uint8, reason decode.FlowReason) decode.Event {
		return decode.Event{Kind: decode.KindFlow, IPVersion: 4, EtherType: 0x0800, Src: src, Dst: dst, Proto: 6,
			SrcPort: sport, DstPort: dport, TCPFlags: flags, Ifindex: ifindex, Netns: 4026531840, Direction: dir,
			Packets: 1, Bytes: 60, PktLen: 60, FlowReason: reason, Time: t, CT: ct}
	}
	syn, synack := uint8(decode.TCPSyn), uint8(decode.TCPSyn|decode.TCPAck)
	evs := [6]decode.Event{
		ev(client, server, port, 5201, 11, decode.DirIngress, syn, decode.ReasonNew),
		ev(client, server, port, 5201, 12, decode.DirEgress, syn, decode.ReasonNew),
		ev(server, client, 5201, port, 12, decode.DirIngress, synack, decode.ReasonNew),
		ev(server, client, 5201, port, 11, decode.DirEgress, synack, decode.ReasonNew),
		ev(client, server, port, 5201, 11, decode.DirIngress, decode.TCPAck|decode.TCPRst, decode.ReasonTCPFlags),
		ev(client, server, port, 5201, 12, decode.DirEgress, decode.TCPAck|decode.TCPRst, decode.ReasonTCPFlags),
	}
	for i := 2; i < 4; i++ {
		evs[i].CT.Flags |= decode.CTReply
	}
	for i := 4; i < 6; i++ {
		evs[i].Packets, evs[i].Bytes = 2, 112
		evs[i].RevPackets, evs[i].RevBytes, evs[i].RevTCPFlags = 2, 104, decode.TCPFin|decode.TCPAck
	}
	return evs
}

// BenchmarkEnrichPublish is the agent's per-event path as enrichLoop runs
// it under connection churn: with nobody following (forwarded-traffic
// reports kept lazily: enrich.Lazy, observer.PublishLazy), and "followed"
// (every event made a Flow and published, the flows recycled), batches of
// 32. Identities come from an identity file, as in the bench's testbed;
// "pod" connects to the server pod's address (the bench's churn),
// "service" through a Service VIP that kube-proxy translated. Decoding
// (BenchmarkDecodeEvent), the ring buffer read and a follower's own work
// are not in it.
func BenchmarkEnrichPublish(b *testing.B) {
	client, server := netip.MustParseAddr("10.244.0.10"), netip.MustParseAddr("10.244.0.30")
	vip := netip.MustParseAddr("10.96.0.10")
	path := filepath.Join(b.TempDir(), "identity.json")
	doc := `{"node": "n1", "pods": [
	 {"namespace": "bench", "name": "client", "labels": {"app": "client"}, "workload": {"kind": "Deployment", "name": "client"}, "node": "n1", "ips": ["10.244.0.10"]},
	 {"namespace": "bench", "name": "server", "labels": {"app": "server"}, "workload": {"kind": "Deployment", "name": "server"}, "node": "n1", "ips": ["10.244.0.30"]}],
	 "services": [{"namespace": "bench", "name": "server", "vips": ["10.96.0.10"], "ports": [{"name": "iperf", "port": 80, "protocol": "TCP"}]}]}`
	if err := os.WriteFile(path, []byte(doc), 0o600); err != nil {
		b.Fatal(err)
	}
	ids, err := identity.NewFile(path, time.Hour, nil)
	if err != nil {
		b.Fatal(err)
	}
	for _, bc := range []struct {
		name     string
		ct       decode.Conntrack
		followed bool
	}{
		{"pod", decode.Conntrack{Flags: decode.CTKnown}, false},
		{"service", decode.Conntrack{Flags: decode.CTKnown | decode.CTDNAT, IPVersion: 4, OrigSrc: client, OrigDst: vip, OrigDstPort: 80}, false},
		{"pod-followed", decode.Conntrack{Flags: decode.CTKnown}, true},
	} {
		b.Run(bc.name, func(b *testing.B) {
			e := enrich.New("n1", identity.Chain{ids}, nil, nil, benchNamer{11: "ftv-client", 12: "ftv-server"})
			var conns [][6]decode.Event
			t0 := time.Now()
			for i := range 1024 {
				ct := bc.ct
				ct.OrigSrcPort = uint16(32768 + i)
				conns = append(conns, churnEvents(client, server, ct.OrigSrcPort, t0.Add(time.Duration(i)*time.Microsecond), ct))
			}
			if f := e.Flow(&conns[0][0]); (bc.ct.OrigDst.IsValid()) != (f.GetDestinationService() != nil) {
				b.Fatalf("%s: destination service %v", bc.name, f.GetDestinationService())
			}
			runEnrichPublish(b, e, conns, bc.followed)
		})
	}
}

func runEnrichPublish(b *testing.B, e *enrich.Enricher, conns [][6]decode.Event, followed bool) {
	obs := observer.New(observer.Config{MaxFlows: 65536, Materialize: e.Builder().Materialize}, nil)
	defer obs.Close()
	p := newPublisher(&Agent{enricher: e, obs: obs})
	b.ReportAllocs()
	n := 0
	for b.Loop() {
		ev := &conns[(n/6)%len(conns)][n%6]
		n++
		if followed || !p.lazy(ev) {
			if f := e.Flow(ev); f != nil {
				p.flow(f)
			}
		}
		if n%batchSize == 0 {
			p.flush()
		}
	}
	p.flush()
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "events/s")
	if st := obs.Status(); st.SeenFlows != uint64(n) {
		b.Fatalf("history saw %d flows of %d", st.SeenFlows, n)
	}
}
