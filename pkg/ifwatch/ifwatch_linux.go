package ifwatch

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// Kind is the sort of interface flowtrace attaches to.
type Kind string

const (
	KindVeth   Kind = "veth"   // a pod's host-side veth
	KindDevice Kind = "device" // a physical NIC
)

// Link is one watched interface.
type Link struct {
	Index int
	Name  string
	Kind  Kind
	// PeerNetnsID is the nsid (relative to the watched namespace) of the
	// namespace holding a veth's peer, -1 when there is none or the peer
	// is in the same namespace; PeerIndex is the peer's ifindex there.
	PeerNetnsID int
	PeerIndex   int
}

// Event reports a link appearing (or changing: Added is an upsert keyed by
// Index) or going away.
type Event struct {
	Added bool
	Link  Link
	// Synced marks the end of the first listing: every interface present
	// at start has been reported. It is sent once, with no Link.
	Synced bool
}

// Watcher follows the links of one namespace.
type Watcher struct {
	cfg Config
	m   matcher
	log *slog.Logger
}

// New validates cfg and returns a Watcher.
func New(cfg Config, log *slog.Logger) (*Watcher, error) {
	m, err := newMatcher(cfg)
	if err != nil {
		return nil, err
	}
	return &Watcher{cfg: cfg, m: m, log: log}, nil
}

// classify returns the kind of l, or false for links flowtrace ignores
// (lo, bridges, vxlan, dummies, tunnels...). hasDevice reports a backing
// bus device in sysfs, which marks NICs whose driver sets a link kind.
func classify(l netlink.Link, hasDevice func(string) bool) (Kind, bool) {
	a := l.Attrs()
	if a.Flags&net.FlagLoopback != 0 {
		return "", false
	}
	switch l.Type() {
	case "veth":
		return KindVeth, true
	case "device":
		return KindDevice, true
	}
	if hasDevice != nil && hasDevice(a.Name) {
		return KindDevice, true
	}
	return "", false
}

func sysfsHasDevice(name string) bool {
	_, err := os.Stat(filepath.Join("/sys/class/net", name, "device"))
	return err == nil
}

func (w *Watcher) toLink(l netlink.Link) (Link, bool) {
	var hasDev func(string) bool
	if w.cfg.NetnsPath == "" {
		// /sys/class/net shows the namespace sysfs was mounted in, which
		// is ours only when we watch our own namespace.
		hasDev = sysfsHasDevice
	}
	kind, ok := classify(l, hasDev)
	if !ok || !w.m.match(l.Attrs().Name) {
		return Link{}, false
	}
	out := Link{Index: l.Attrs().Index, Name: l.Attrs().Name, Kind: kind, PeerNetnsID: -1}
	if kind == KindVeth {
		out.PeerNetnsID = l.Attrs().NetNsID
		out.PeerIndex = l.Attrs().ParentIndex
	}
	return out, true
}

// Run emits an Added event for every matching link present at start and
// then follows changes until ctx ends. After a netlink error (overrun
// socket, interrupted dump) it subscribes again and diffs a fresh listing
// against what it reported, so no add or remove is lost for good.
func (w *Watcher) Run(ctx context.Context, out chan<- Event) error {
	ns := netns.None()
	if w.cfg.NetnsPath != "" {
		h, err := netns.GetFromPath(w.cfg.NetnsPath)
		if err != nil {
			return fmt.Errorf("open netns %s: %w", w.cfg.NetnsPath, err)
		}
		defer h.Close()
		ns = h
	}
	known := map[int]Link{}
	synced := false
	for attempt := 0; ; attempt++ {
		err := w.follow(ctx, ns, known, &synced, out)
		if ctx.Err() != nil {
			return nil
		}
		if attempt == 0 && err != nil {
			return err
		}
		w.log.Warn("link watch interrupted, resubscribing", "err", err)
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// follow runs one subscription until it fails or ctx ends.
func (w *Watcher) follow(ctx context.Context, ns netns.NsHandle, known map[int]Link, synced *bool, out chan<- Event) error {
	updates := make(chan netlink.LinkUpdate, 512)
	done := make(chan struct{})
	resync := make(chan error, 1)
	opts := netlink.LinkSubscribeOptions{
		ListExisting: true,
		ErrorCallback: func(err error) {
			select {
			case resync <- err:
			default: // a resync is already pending
			}
		},
		// A bounded receive keeps us from missing overrun errors forever.
		ReceiveBufferSize: 1 << 20,
	}
	if ns.IsOpen() {
		opts.Namespace = &ns
	}
	if err := netlink.LinkSubscribeWithOptions(updates, done, opts); err != nil {
		return fmt.Errorf("subscribe to link updates: %w", err)
	}
	defer func() {
		close(done)
		// The library's reader blocks on sending; drain until it exits.
		for range updates {
		}
	}()
	// Subscribed first, listed second: a link created in between shows up
	// in the listing or the stream, never in neither.
	if err := w.resync(ctx, ns, known, out); err != nil {
		return err
	}
	if !*synced {
		*synced = true
		if err := send(ctx, out, Event{Synced: true}); err != nil {
			return err
		}
	}
	for {
		select {
		case <-ctx.Done():
			return nil
		case u, ok := <-updates:
			if !ok {
				select {
				case err := <-resync:
					return err
				default:
					return errors.New("link subscription closed")
				}
			}
			if err := w.handle(ctx, u, known, out); err != nil {
				return err
			}
		case err := <-resync:
			w.log.Debug("link watch error, relisting", "err", err)
			if err := w.resync(ctx, ns, known, out); err != nil {
				return err
			}
		}
	}
}

func send(ctx context.Context, out chan<- Event, ev Event) error {
	select {
	case out <- ev:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// upsert reports l if it is new or changed.
func upsert(ctx context.Context, l Link, known map[int]Link, out chan<- Event) error {
	old, ok := known[l.Index]
	l = sticky(old, ok, l)
	if ok && old == l {
		return nil
	}
	if ok && l.Kind == KindVeth && l.PeerIndex == 0 && old.PeerIndex != 0 && old.Name == l.Name {
		// Deleting a veth first reports it without its peer, then
		// RTM_DELLINK follows: not a change worth an event.
		return nil
	}
	known[l.Index] = l
	return send(ctx, out, Event{Added: true, Link: l})
}

func remove(ctx context.Context, index int, known map[int]Link, out chan<- Event) error {
	old, ok := known[index]
	if !ok {
		return nil
	}
	delete(known, index)
	return send(ctx, out, Event{Added: false, Link: old})
}

func (w *Watcher) handle(ctx context.Context, u netlink.LinkUpdate, known map[int]Link, out chan<- Event) error {
	idx := u.Link.Attrs().Index
	if u.Header.Type == unix.RTM_DELLINK {
		return remove(ctx, idx, known, out)
	}
	l, ok := w.toLink(u.Link)
	if !ok {
		// Renamed out of the patterns, or never ours.
		return remove(ctx, idx, known, out)
	}
	return upsert(ctx, l, known, out)
}

func (w *Watcher) resync(ctx context.Context, ns netns.NsHandle, known map[int]Link, out chan<- Event) error {
	h, err := netlink.NewHandleAt(ns, unix.NETLINK_ROUTE)
	if err != nil {
		return fmt.Errorf("netlink handle: %w", err)
	}
	defer h.Close()
	links, err := h.LinkList()
	if err != nil && !errors.Is(err, netlink.ErrDumpInterrupted) {
		return fmt.Errorf("list links: %w", err)
	}
	interrupted := err != nil
	present := map[int]bool{}
	for _, nl := range links {
		present[nl.Attrs().Index] = true
		l, ok := w.toLink(nl)
		if !ok {
			if err := remove(ctx, nl.Attrs().Index, known, out); err != nil {
				return err
			}
			continue
		}
		if err := upsert(ctx, l, known, out); err != nil {
			return err
		}
	}
	if interrupted {
		// A partial listing cannot prove a link is gone; the stream will.
		return nil
	}
	for idx := range known {
		if !present[idx] {
			if err := remove(ctx, idx, known, out); err != nil {
				return err
			}
		}
	}
	return nil
}

// sticky keeps a veth a veth: some RTM_NEWLINK notifications (seen when a
// pod's side changes state) carry no IFLA_LINKINFO, which the netlink
// library reports as type "device" with no peer. The link did not become a
// NIC; treating it as one would re-attach it and drop its pod's namespace
// from the drop scope.
func sticky(old Link, known bool, l Link) Link {
	if known && old.Kind == KindVeth && l.Kind == KindDevice && old.Name == l.Name {
		l.Kind, l.PeerNetnsID, l.PeerIndex = old.Kind, old.PeerNetnsID, old.PeerIndex
	}
	return l
}
