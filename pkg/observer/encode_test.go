package observer

import (
	"bytes"
	"context"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
	"unicode/utf8"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/known/fieldmaskpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	flowtracev1 "github.com/flowtrace/flowtrace/proto/flowtrace/v1"
)

// fill sets every field of m, recursively, to a non-zero value; of each
// oneof it sets the member numbered variant (modulo the members).
func fill(m protoreflect.Message, variant int, n *int) {
	fields := m.Descriptor().Fields()
	for i := range fields.Len() {
		fd := fields.Get(i)
		if od := fd.ContainingOneof(); od != nil && !od.IsSynthetic() {
			if od.Fields().Get(variant%od.Fields().Len()) != fd {
				continue
			}
		}
		*n++
		if fd.IsList() {
			l := m.Mutable(fd).List()
			// An empty element too: repeated strings keep it.
			l.Append(scalar(fd, *n))
			if fd.Kind() == protoreflect.StringKind {
				l.Append(protoreflect.ValueOfString(""))
			}
			continue
		}
		if fd.Kind() == protoreflect.MessageKind {
			fill(m.Mutable(fd).Message(), variant, n)
			continue
		}
		m.Set(fd, scalar(fd, *n))
	}
}

func scalar(fd protoreflect.FieldDescriptor, n int) protoreflect.Value {
	switch fd.Kind() {
	case protoreflect.BoolKind:
		return protoreflect.ValueOfBool(true)
	case protoreflect.EnumKind:
		vals := fd.Enum().Values()
		return protoreflect.ValueOfEnum(vals.Get(1 + n%(vals.Len()-1)).Number())
	case protoreflect.Int32Kind:
		return protoreflect.ValueOfInt32(int32(-n)) // negative: ten-byte varint
	case protoreflect.Int64Kind:
		return protoreflect.ValueOfInt64(int64(n) << 40)
	case protoreflect.Uint32Kind:
		return protoreflect.ValueOfUint32(uint32(n) * 1000003)
	case protoreflect.Uint64Kind:
		return protoreflect.ValueOfUint64(uint64(n) << 50)
	case protoreflect.StringKind:
		return protoreflect.ValueOfString(fd.TextName() + "-" + strconv.Itoa(n) + "-ü")
	}
	panic("fill: add kind " + fd.Kind().String())
}

func checkEncoding(t *testing.T, name string, f *flowtracev1.Flow) {
	t.Helper()
	got, ok := appendFlow([]byte("prefix"), f)
	if !ok {
		t.Fatalf("%s: appendFlow refused a valid flow", name)
	}
	if !bytes.HasPrefix(got, []byte("prefix")) {
		t.Fatalf("%s: appendFlow lost what b held", name)
	}
	got = got[len("prefix"):]
	want, err := proto.Marshal(f)
	if err != nil {
		t.Fatal(err)
	}
	back := &flowtracev1.Flow{}
	if err := proto.Unmarshal(got, back); err != nil {
		t.Fatalf("%s: undecodable: %v", name, err)
	}
	if !proto.Equal(back, f) {
		t.Fatalf("%s: decodes to\n%v\nwant\n%v", name, back, f)
	}
	// Same field order as proto's marshaller: byte for byte.
	if !bytes.Equal(got, want) {
		t.Fatalf("%s: bytes differ from proto.Marshal\n got %x\nwant %x", name, got, want)
	}
	// Through the cache of shared messages: filled, then hit, for a
	// response (no spans) and for history (spans, shared messages as
	// references). Two passes, so the second takes the dictionary ids
	// the first left in the cache.
	c := newEncodeCache()
	fromSpans, parsed := newDict(), newDict()
	for pass := range 2 {
		cached, ok := appendFlowCached([]byte("prefix"), f, c, nil)
		cached = cached[len("prefix"):]
		if !ok || !bytes.Equal(cached, want) {
			t.Fatalf("%s: cached encoding, pass %d, differs from proto.Marshal\n got %x\nwant %x", name, pass, cached, want)
		}
		var sp flowSpans
		data, ok := appendFlowCached(nil, f, c, &sp)
		if !ok {
			t.Fatalf("%s: history encoding, pass %d, refused", name, pass)
		}
		checkRecord(t, fmt.Sprintf("%s, pass %d", name, pass), f, fromSpans, parsed, data, &sp, want)
	}
}

// checkRecord: the history record the dictionary makes from the encoder's
// output and spans is byte for byte the one it makes by parsing the
// flow's full encoding (want), and decodes to the flow.
func checkRecord(t *testing.T, name string, f *flowtracev1.Flow, fromSpans, parsed *dict, data []byte, sp *flowSpans, want []byte) {
	t.Helper()
	var l1, l2 layout
	rec1 := make([]byte, fromSpans.splitSpans(data, sp, &l1))
	fromSpans.encode(rec1, data, &l1)
	rec2 := make([]byte, parsed.split(want, &l2))
	parsed.encode(rec2, want, &l2)
	if !bytes.Equal(rec1, rec2) {
		t.Fatalf("%s: record from the encoder's spans\n%x\nfrom parsing\n%x", name, rec1, rec2)
	}
	back := &flowtracev1.Flow{}
	if err := proto.Unmarshal(fromSpans.decode(nil, rec1), back); err != nil || !proto.Equal(back, f) {
		t.Fatalf("%s: record decodes to %v (%v), want %v", name, back, err, f)
	}
}

// TestEncodeCacheShared: flows sharing a pod's endpoint and an interface
// reuse their encodings; other flows' messages do not leak in.
func TestEncodeCacheShared(t *testing.T) {
	c := newEncodeCache()
	pod := &flowtracev1.Endpoint{Namespace: "shop", PodName: "web-1", Labels: []string{"app=web"}, NodeName: "n1"}
	node := &flowtracev1.Endpoint{NodeName: "n2"}
	eth := &flowtracev1.Interface{Name: "eth0", Index: 2}
	web := &flowtracev1.Service{Namespace: "shop", Name: "web", Port: 80, PortName: "http"}
	for i := range 10 {
		f := &flowtracev1.Flow{Uuid: strconv.Itoa(i), Source: pod, Destination: node, Interface: eth,
			InputInterface:     &flowtracev1.Interface{Name: "veth" + strconv.Itoa(i), Index: uint32(i + 10)},
			DestinationService: web}
		got, ok := appendFlowCached(nil, f, c, nil)
		want, _ := proto.Marshal(f)
		if !ok || !bytes.Equal(got, want) {
			t.Fatalf("flow %d: cached encoding differs", i)
		}
	}
	if len(c.endpoints) != 1 {
		t.Errorf("%d endpoints cached, want the pod's only", len(c.endpoints))
	}
	if len(c.ifaces) != 11 {
		t.Errorf("%d interfaces cached, want 11", len(c.ifaces))
	}
	if len(c.services) != 1 {
		t.Errorf("%d services cached, want 1", len(c.services))
	}
	for i := range encodeCacheLimit + 1 {
		appendFlowCached(nil, &flowtracev1.Flow{Interface: &flowtracev1.Interface{Index: uint32(i)}}, c, nil)
	}
	if len(c.ifaces) > encodeCacheLimit {
		t.Errorf("interface cache grew to %d, limit %d", len(c.ifaces), encodeCacheLimit)
	}
}

// TestAppendFlowMatchesProto: every field of Flow, at every depth, with each
// oneof member in turn, encodes as proto.Marshal encodes it. A field added
// to Flow that appendFlow does not write fails here.
func TestAppendFlowMatchesProto(t *testing.T) {
	for variant := range 6 {
		f := &flowtracev1.Flow{}
		n := 0
		fill(f.ProtoReflect(), variant, &n)
		checkEncoding(t, "variant "+strconv.Itoa(variant), f)
	}
	checkEncoding(t, "empty", &flowtracev1.Flow{})
	// Present but empty messages are written; a oneof scalar 0 too.
	checkEncoding(t, "empty messages", &flowtracev1.Flow{
		Time: &timestamppb.Timestamp{}, Ip: &flowtracev1.IP{}, Source: &flowtracev1.Endpoint{Workload: &flowtracev1.Workload{}},
		L4: &flowtracev1.Layer4{Protocol: &flowtracev1.Layer4_Tcp{Tcp: &flowtracev1.TCP{Flags: &flowtracev1.TCPFlags{}}}},
	})
	checkEncoding(t, "udp", &flowtracev1.Flow{L4: &flowtracev1.Layer4{Protocol: &flowtracev1.Layer4_Udp{Udp: &flowtracev1.UDP{}}}})
	checkEncoding(t, "other 0", &flowtracev1.Flow{L4: &flowtracev1.Layer4{Protocol: &flowtracev1.Layer4_Other{}}})
	checkEncoding(t, "empty l4", &flowtracev1.Flow{L4: &flowtracev1.Layer4{}})
	checkEncoding(t, "negative time", &flowtracev1.Flow{Time: &timestamppb.Timestamp{Seconds: -5, Nanos: -1}})
	// Sub-messages whose length needs a two- and a three-byte varint.
	for _, size := range []int{127, 128, 200, 16383, 16384, 70000} {
		checkEncoding(t, "label "+strconv.Itoa(size), &flowtracev1.Flow{
			Uuid:   "u",
			Source: &flowtracev1.Endpoint{Namespace: "ns", Labels: []string{strings.Repeat("x", size)}, NodeName: "n"},
			Ip:     &flowtracev1.IP{Source: "10.0.0.1"},
		})
	}
	for i := range 3 {
		checkEncoding(t, "realistic", realisticFlow(i))
	}
}

// TestAppendFlowsResponseMatchesProto: the gRPC server's encoding of a
// flow response is proto.Marshal's, byte for byte; other responses and
// flows proto must judge are left to proto.
func TestAppendFlowsResponseMatchesProto(t *testing.T) {
	var flows []*flowtracev1.Flow
	for variant := range 6 {
		f := &flowtracev1.Flow{}
		n := 0
		fill(f.ProtoReflect(), variant, &n)
		flows = append(flows, f)
	}
	flows = append(flows, &flowtracev1.Flow{}, realisticFlow(0), realisticFlow(1),
		&flowtracev1.Flow{Uuid: "u", Source: &flowtracev1.Endpoint{Labels: []string{strings.Repeat("x", 300)}}})
	enc := NewResponseEncoder()
	// Twice: the second pass writes shared messages from the cache.
	flows = append(flows, flows...)
	for i, f := range flows {
		for _, r := range []*flowtracev1.GetFlowsResponse{
			{ResponseTypes: &flowtracev1.GetFlowsResponse_Flow{Flow: f}, NodeName: "node-1", Time: f.GetTime()},
			{ResponseTypes: &flowtracev1.GetFlowsResponse_Flow{Flow: f}},
			{ResponseTypes: &flowtracev1.GetFlowsResponse_Flow{Flow: f}, Time: &timestamppb.Timestamp{}},
		} {
			got, ok := enc.Append(nil, r)
			if !ok {
				t.Fatalf("flow %d: refused a valid response", i)
			}
			want, err := proto.Marshal(r)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, want) {
				t.Fatalf("flow %d: bytes differ from proto.Marshal\n got %x\nwant %x", i, got, want)
			}
		}
	}
	for name, r := range map[string]*flowtracev1.GetFlowsResponse{
		"lost events":  {ResponseTypes: &flowtracev1.GetFlowsResponse_LostEvents{LostEvents: &flowtracev1.LostEvents{NumEventsLost: 3}}},
		"empty":        {},
		"nil flow":     {ResponseTypes: &flowtracev1.GetFlowsResponse_Flow{}},
		"invalid utf8": {ResponseTypes: &flowtracev1.GetFlowsResponse_Flow{Flow: &flowtracev1.Flow{Summary: string([]byte{0xff})}}},
	} {
		if _, ok := enc.Append(nil, r); ok {
			t.Errorf("%s: encoded by hand, want proto.Marshal", name)
		}
	}
}

func TestAppendFlowInvalidUTF8(t *testing.T) {
	bad := string([]byte{0xff, 0xfe})
	for _, f := range []*flowtracev1.Flow{
		{Summary: bad},
		{Source: &flowtracev1.Endpoint{Labels: []string{"ok", bad}}},
		{Interface: &flowtracev1.Interface{Name: bad}},
		{Translation: &flowtracev1.Translation{OriginalIp: bad}},
	} {
		if _, ok := appendFlow(nil, f); ok {
			t.Errorf("accepted invalid UTF-8 in %v", f)
		}
		if _, err := proto.Marshal(f); err == nil {
			t.Errorf("proto.Marshal accepts %v: appendFlow need not refuse it", f)
		}
	}
}

func BenchmarkEncode(b *testing.B) {
	f := realisticFlow(1)
	b.Run("appendFlow", func(b *testing.B) {
		b.ReportAllocs()
		var buf []byte
		for range b.N {
			buf, _ = appendFlow(buf[:0], f)
		}
	})
	b.Run("appendFlowCached", func(b *testing.B) {
		b.ReportAllocs()
		var buf []byte
		c := newEncodeCache()
		for range b.N {
			buf, _ = appendFlowCached(buf[:0], f, c, nil)
		}
	})
	b.Run("proto.Marshal", func(b *testing.B) {
		b.ReportAllocs()
		var buf []byte
		for range b.N {
			buf, _ = proto.MarshalOptions{}.MarshalAppend(buf[:0], f)
		}
	})
}

// TestLiveWindow: while someone follows, the newest liveWindow flows reach
// readers as the very values published (no unmarshal); older ones, and
// those published while no one followed, are decoded from history and
// equal to what was published. Without followers the window keeps no flow
// alive, and PublishBatch says so: the publisher may then reuse the flows.
func TestLiveWindow(t *testing.T) {
	const before, n = 300, liveWindow + 300
	o := New(Config{MaxFlows: 4 * liveWindow}, nil)
	published := make([]*flowtracev1.Flow, before+n)
	for i := range before {
		published[i] = realisticFlow(i)
		if o.PublishBatch(published[i : i+1]) {
			t.Fatal("flow kept with no follower")
		}
	}
	if held := liveHeld(o); held != 0 {
		t.Fatalf("live window holds %d flows with no follower", held)
	}
	stop := follow(t, o)
	for i := before; i < before+n; i++ {
		published[i] = realisticFlow(i)
		if !o.PublishBatch(published[i : i+1]) {
			t.Fatal("flow not kept while followed")
		}
	}
	var got []*flowtracev1.Flow
	err := o.GetFlows(context.Background(), &flowtracev1.GetFlowsRequest{}, nil, func(r *flowtracev1.GetFlowsResponse) error {
		got = append(got, r.GetFlow())
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != len(published) {
		t.Fatalf("got %d flows, want %d", len(got), len(published))
	}
	for i, f := range got {
		live := i >= len(published)-liveWindow
		if (f == published[i]) != live {
			t.Fatalf("flow %d: shared=%v, want %v", i, f == published[i], live)
		}
		if !proto.Equal(f, published[i]) {
			t.Fatalf("flow %d differs from what was published", i)
		}
	}
	stop()
	if held := liveHeld(o); held != 0 {
		t.Fatalf("live window holds %d flows after the last follower left", held)
	}
	// Nor are flows published after the last follower left.
	stop = follow(t, o)
	o.Publish(realisticFlow(0))
	stop()
	if o.PublishBatch([]*flowtracev1.Flow{realisticFlow(1)}) {
		t.Error("flow kept after the last follower left")
	}
	if held := liveHeld(o); held != 0 {
		t.Fatalf("live window holds %d flows", held)
	}

	// Evicted flows leave the window too: a small ring holds no stale flow.
	small := New(Config{MaxFlows: 2}, nil)
	stop = follow(t, small)
	defer stop()
	for i := range 5 {
		small.Publish(realisticFlow(i))
	}
	if held := liveHeld(small); held != 2 {
		t.Fatalf("live window holds %d flows with 2 in history", held)
	}
}

// follow subscribes a follower that discards what it gets; stop ends it
// and waits until it is gone.
func follow(t *testing.T, o *Observer) (stop func()) {
	t.Helper()
	n := o.Status().Followers
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = o.GetFlows(ctx, &flowtracev1.GetFlowsRequest{Follow: true}, nil, func(*flowtracev1.GetFlowsResponse) error { return nil })
	}()
	waitFollowers(t, o, n+1)
	return func() { cancel(); <-done }
}

func liveHeld(o *Observer) int {
	o.mu.Lock()
	defer o.mu.Unlock()
	held := 0
	for _, f := range o.live {
		if f != nil {
			held++
		}
	}
	return held
}

// TestPublishBatch: a batch lands in order, nil flows skipped, and a small
// ring keeps the newest of a batch larger than itself.
func TestPublishBatch(t *testing.T) {
	o := New(Config{MaxFlows: 3}, nil)
	o.PublishBatch([]*flowtracev1.Flow{mkFlow(0), nil, mkFlow(1)})
	o.PublishBatch(nil)
	o.PublishBatch([]*flowtracev1.Flow{mkFlow(2), mkFlow(3), mkFlow(4)})
	var got []string
	err := o.GetFlows(context.Background(), &flowtracev1.GetFlowsRequest{}, nil, func(r *flowtracev1.GetFlowsResponse) error {
		if f := r.GetFlow(); f != nil {
			got = append(got, f.GetUuid())
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if strings.Join(got, ",") != "2,3,4" {
		t.Fatalf("history %v, want 2,3,4", got)
	}
	if st := o.Status(); st.SeenFlows != 5 || st.EvictedFlows != 2 {
		t.Fatalf("seen %d evicted %d, want 5 and 2", st.SeenFlows, st.EvictedFlows)
	}
	if o.pubFlows[:cap(o.pubFlows)][0] != nil {
		t.Fatal("the publish buffer keeps a flow")
	}
}

// TestEncodedSend: with Sender.Encoded, flows from history and from the live
// window go out as history's bytes, and a client decodes from them exactly
// the flows published, with the response's node name and time; a field
// mask sends them through Send, masked.
func TestEncodedSend(t *testing.T) {
	const n = 300
	o := New(Config{NodeName: "n1", MaxFlows: 4 * liveWindow}, nil)
	published := make([]*flowtracev1.Flow, 2*n)
	for i := range published {
		published[i] = realisticFlow(i)
		if i%3 == 0 {
			published[i].NodeName = "" // named by the observer
		}
	}
	for _, f := range published[:n] {
		o.Publish(f) // before anyone follows: history only
	}
	type got struct {
		mu    sync.Mutex
		resps []*flowtracev1.GetFlowsResponse
		plain int
	}
	stream := func(req *flowtracev1.GetFlowsRequest, g *got) (stop func()) {
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() {
			done <- o.GetFlowsTo(ctx, req, nil, Sender{
				Send: func(r *flowtracev1.GetFlowsResponse) error {
					g.mu.Lock()
					defer g.mu.Unlock()
					if r.GetFlow() != nil {
						g.plain++
						g.resps = append(g.resps, proto.Clone(r).(*flowtracev1.GetFlowsResponse))
					}
					return nil
				},
				Encoded: func(e *EncodedFlow) error {
					b, ok := e.AppendResponse(nil)
					if !ok {
						t.Error("AppendResponse refused a valid response")
					}
					r := &flowtracev1.GetFlowsResponse{}
					if err := proto.Unmarshal(b, r); err != nil {
						t.Errorf("encoded response does not decode: %v", err)
					}
					g.mu.Lock()
					defer g.mu.Unlock()
					g.resps = append(g.resps, r)
					return nil
				},
			})
		}()
		return func() {
			cancel()
			if err := <-done; err != nil && ctx.Err() == nil {
				t.Error(err)
			}
		}
	}
	since := timestamppb.New(base.Add(-time.Second))
	var enc, masked got
	stopEnc := stream(&flowtracev1.GetFlowsRequest{Follow: true, Since: since}, &enc)
	stopMasked := stream(&flowtracev1.GetFlowsRequest{Follow: true, Since: since,
		FieldMask: &fieldmaskpb.FieldMask{Paths: []string{"uuid"}}}, &masked)
	waitFollowers(t, o, 2)
	for _, f := range published[n:] {
		o.Publish(f) // followed: the live window
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		enc.mu.Lock()
		masked.mu.Lock()
		k, m := len(enc.resps), len(masked.resps)
		masked.mu.Unlock()
		enc.mu.Unlock()
		if k >= len(published) && m >= len(published) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("received %d and %d (masked) of %d flows", k, m, len(published))
		}
		time.Sleep(5 * time.Millisecond)
	}
	stopEnc()
	stopMasked()
	if enc.plain != 0 {
		t.Errorf("%d flows sent encoded again instead of as history's bytes", enc.plain)
	}
	for i, r := range enc.resps {
		want := published[i]
		node := want.GetNodeName()
		if node == "" {
			node = "n1"
		}
		if !proto.Equal(r.GetFlow(), want) || r.GetNodeName() != node || !proto.Equal(r.GetTime(), want.GetTime()) {
			t.Fatalf("flow %d: got\n%v\nwant flow\n%v\nnode %q", i, r, want, node)
		}
	}
	if masked.plain != len(published) {
		t.Errorf("masked: %d of %d flows through Send", masked.plain, len(published))
	}
	for i, r := range masked.resps {
		if f := r.GetFlow(); f.GetUuid() != published[i].GetUuid() || f.GetSource() != nil {
			t.Fatalf("masked flow %d: %v", i, f)
		}
	}
}

// TestStringValidation: the encoder's ASCII shortcut agrees with
// utf8.ValidString at every length and position of a non-ASCII byte, so
// valid non-ASCII names are kept and invalid ones refused as proto.Marshal
// refuses them.
func TestStringValidation(t *testing.T) {
	for n := 0; n <= 20; n++ {
		ascii := strings.Repeat("a", n)
		if !isASCII(ascii) {
			t.Errorf("%q: not ASCII", ascii)
		}
		for i := 0; i < n; i++ {
			for _, bad := range []string{"é", "\xff", "\xc3"} {
				s := ascii[:i] + bad + ascii[i+1:]
				if isASCII(s) {
					t.Errorf("%q: taken for ASCII", s)
				}
				f := &flowtracev1.Flow{NodeName: s}
				_, ok := appendFlow(nil, f)
				if want := utf8.ValidString(s); ok != want {
					t.Errorf("%q: encoded %v, valid UTF-8 %v", s, ok, want)
				}
			}
		}
	}
}
