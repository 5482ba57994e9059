package observer

import (
	"runtime"
	"strconv"
	"testing"
	"time"

	flowtracev1 "github.com/flowtrace/flowtrace/proto/flowtrace/v1"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// realisticFlow is a typical enriched FORWARDED TCP flow between two pods.
func realisticFlow(i int) *flowtracev1.Flow {
	return &flowtracev1.Flow{
		Time:             timestamppb.New(base.Add(time.Duration(i) * time.Millisecond)),
		Uuid:             "6f1c2a4e-8d3b-4c5a-9e7f-" + strconv.Itoa(100000000000+i),
		NodeName:         "node-1",
		Verdict:          flowtracev1.Verdict_VERDICT_FORWARDED,
		Ip:               &flowtracev1.IP{Source: "10.244.0.10", Destination: "10.244.1.30", IpVersion: flowtracev1.IPVersion_IP_VERSION_IPV4},
		L4:               &flowtracev1.Layer4{Protocol: &flowtracev1.Layer4_Tcp{Tcp: &flowtracev1.TCP{SourcePort: uint32(30000 + i%30000), DestinationPort: 5432, Flags: &flowtracev1.TCPFlags{Ack: true, Psh: true}}}},
		Source:           &flowtracev1.Endpoint{Namespace: "shop", PodName: "frontend-6c9f7d-x2x9z", Labels: []string{"app=frontend", "pod-template-hash=6c9f7d"}, Workload: &flowtracev1.Workload{Kind: "Deployment", Name: "frontend"}, NodeName: "node-1"},
		Destination:      &flowtracev1.Endpoint{Namespace: "shop", PodName: "db-0", Labels: []string{"app=db"}, Workload: &flowtracev1.Workload{Kind: "StatefulSet", Name: "db"}, NodeName: "node-2"},
		Interface:        &flowtracev1.Interface{Name: "ftv-frontend", Index: 12, NetnsInode: 4026531840, Netns: "node"},
		TrafficDirection: flowtracev1.TrafficDirection_TRAFFIC_DIRECTION_INGRESS,
		ObservationPoint: flowtracev1.ObservationPoint_OBSERVATION_POINT_TC_INGRESS,
		Packets:          12, Bytes: 3400, Report: flowtracev1.FlowReport_FLOW_REPORT_PERIODIC,
		Summary: "TCP ACK|PSH",
	}
}

func heapInUse() uint64 {
	runtime.GC()
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return ms.HeapAlloc
}

// BenchmarkHistoryMemory reports how many flows fit in a MB of heap, held
// as the observer holds them (marshalled) and as *Flow values for
// comparison. Run: go test -run - -bench HistoryMemory ./pkg/observer
func BenchmarkHistoryMemory(b *testing.B) {
	const n = 20000
	b.Run("compact", func(b *testing.B) {
		for range b.N {
			before := heapInUse()
			o := New(Config{MaxFlows: n}, nil)
			for i := 0; i < n; i++ {
				o.Publish(realisticFlow(i))
			}
			// The arena is outside the Go heap: add the bytes it touched.
			after := heapInUse() + uint64(o.hist.high)
			b.ReportMetric(float64(n)/(float64(after-before)/(1<<20)), "flows/MB")
			runtime.KeepAlive(o)
		}
	})
	b.Run("pointers", func(b *testing.B) {
		for range b.N {
			before := heapInUse()
			held := make([]*flowtracev1.Flow, n)
			for i := range held {
				held[i] = realisticFlow(i)
			}
			after := heapInUse()
			b.ReportMetric(float64(n)/(float64(after-before)/(1<<20)), "flows/MB")
			runtime.KeepAlive(held)
		}
	})
}

func BenchmarkPublish(b *testing.B) {
	o := New(Config{MaxFlows: 4096}, nil)
	f := realisticFlow(1)
	b.ReportAllocs()
	for range b.N {
		o.Publish(f)
	}
}
