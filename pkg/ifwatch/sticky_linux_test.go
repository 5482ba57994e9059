package ifwatch

import (
	"context"
	"testing"
)

// A notification without link info must not turn a known veth into a NIC.
func TestVethStaysVethWithoutLinkInfo(t *testing.T) {
	known := map[int]Link{}
	out := make(chan Event, 4)
	ctx := context.Background()
	veth := Link{Index: 7, Name: "ftv-db", Kind: KindVeth, PeerNetnsID: 3, PeerIndex: 2}
	if err := upsert(ctx, veth, known, out); err != nil {
		t.Fatal(err)
	}
	<-out
	bare := Link{Index: 7, Name: "ftv-db", Kind: KindDevice, PeerNetnsID: -1}
	if err := upsert(ctx, bare, known, out); err != nil {
		t.Fatal(err)
	}
	select {
	case ev := <-out:
		t.Fatalf("a bare notification changed the link: %+v", ev)
	default:
	}
	if known[7] != veth {
		t.Fatalf("known link became %+v", known[7])
	}
	// A real rename is still reported.
	renamed := veth
	renamed.Name = "ftv-db2"
	if err := upsert(ctx, renamed, known, out); err != nil {
		t.Fatal(err)
	}
	if ev := <-out; ev.Link.Name != "ftv-db2" || ev.Link.Kind != KindVeth {
		t.Fatalf("rename: %+v", ev)
	}
}
