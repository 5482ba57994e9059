package netnsutil

import (
	"errors"
	"log/slog"
	"testing"

	"github.com/vishvananda/netlink"

	"github.com/flowtrace/flowtrace/pkg/netnsutil/nstest"
	"github.com/flowtrace/flowtrace/pkg/testutil"
)

func TestResolvePeerNetnsAndLinkName(t *testing.T) {
	testutil.RequirePrivileged(t)
	nsA, nsB := nstest.NewNetns(t), nstest.NewNetns(t)
	nstest.Veth(t, nsA, "hostside", "10.98.0.1/30", nsB, "podside", "10.98.0.2/30")

	inoA, err := inodeOf(RunDir + "/" + nsA)
	if err != nil {
		t.Fatal(err)
	}
	inoB, err := inodeOf(RunDir + "/" + nsB)
	if err != nil {
		t.Fatal(err)
	}
	self, err := SelfInode()
	if err != nil {
		t.Fatal(err)
	}

	err = Do(nsA, func() error {
		in, err := SelfInode()
		if err != nil {
			return err
		}
		if in != inoA {
			t.Errorf("SelfInode inside %s = %d, want %d", nsA, in, inoA)
		}
		l, err := netlink.LinkByName("hostside")
		if err != nil {
			return err
		}
		nsid, peer := l.Attrs().NetNsID, l.Attrs().ParentIndex
		if nsid < 0 {
			return errors.New("veth has no link netnsid")
		}
		r := NewResolver(slog.New(slog.DiscardHandler))
		got, err := r.PeerNetns(nsid)
		if err != nil {
			return err
		}
		if got.Inode != inoB || got.Name != nsB {
			t.Errorf("PeerNetns(%d) = %+v, want inode %d name %s", nsid, got, inoB, nsB)
		}
		// Second lookup is served from the cache and must agree.
		if again, err := r.PeerNetns(nsid); err != nil || again != got {
			t.Errorf("cached PeerNetns = %+v, %v", again, err)
		}
		name, ok := r.LinkName(inoB, peer)
		if !ok || name != "podside" {
			t.Errorf("LinkName(%d, %d) = %q, %v; want podside", inoB, peer, name, ok)
		}
		if _, ok := r.LinkName(inoB, 9999); ok {
			t.Errorf("LinkName of a missing ifindex reported found")
		}
		if _, err := r.PeerNetns(4242); !errors.Is(err, ErrNotFound) {
			t.Errorf("unknown nsid: err = %v, want ErrNotFound", err)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	after, err := SelfInode()
	if err != nil {
		t.Fatal(err)
	}
	if after != self {
		t.Errorf("namespace changed after Do: %d -> %d", self, after)
	}
}

func TestDoMissingNetns(t *testing.T) {
	testutil.RequirePrivileged(t)
	if err := Do("ftt-does-not-exist", func() error { return nil }); err == nil {
		t.Fatal("Do into a missing namespace succeeded")
	}
}

func TestCandidatesDedupe(t *testing.T) {
	testutil.RequirePrivileged(t)
	ns := nstest.NewNetns(t)
	seen := map[uint32]bool{}
	found := false
	for _, c := range Candidates() {
		if seen[c.Inode] {
			t.Errorf("inode %d listed twice", c.Inode)
		}
		seen[c.Inode] = true
		if c.Name == ns {
			found = true
		}
	}
	if !found {
		t.Errorf("namespace %s not among candidates", ns)
	}
}
