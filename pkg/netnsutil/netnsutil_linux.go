package netnsutil

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"sync"
	"syscall"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// RunDir is where `ip netns` (and containerd's CNI setup) pin named namespaces.
const RunDir = "/run/netns"

// ErrNotFound is returned when no namespace we can see carries the asked nsid.
var ErrNotFound = errors.New("network namespace not found")

// Netns identifies one network namespace.
type Netns struct {
	Inode uint32
	Path  string // a path that opens it: /run/netns/NAME or /proc/PID/ns/net
	Name  string // the `ip netns` name when pinned under /run/netns, else ""
}

// SelfInode returns the inode of the network namespace of the calling
// thread. The thread matters, not the process: code running under Do (a
// locked thread switched into another namespace) gets that namespace.
func SelfInode() (uint32, error) {
	return inodeOf("/proc/thread-self/ns/net")
}

func inodeOf(path string) (uint32, error) {
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		return 0, fmt.Errorf("stat %s: %w", path, err)
	}
	return uint32(st.Ino), nil
}

// Do runs fn on a dedicated OS thread switched into the namespace at path
// (a /run/netns name is accepted too). Sockets fn creates stay in that
// namespace after Do returns. If switching back fails, the thread stays
// locked so the runtime discards it instead of reusing a thread in the
// wrong namespace.
func Do(path string, fn func() error) error {
	if !filepath.IsAbs(path) {
		path = filepath.Join(RunDir, path)
	}
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("get current netns: %w", err)
			return
		}
		defer orig.Close()
		target, err := netns.GetFromPath(path)
		if err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("open netns %s: %w", path, err)
			return
		}
		defer target.Close()
		if err := netns.Set(target); err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("enter netns %s: %w", path, err)
			return
		}
		fnErr := fn()
		if err := netns.Set(orig); err != nil {
			// Thread stays locked: the goroutine exits and the thread dies.
			errc <- errors.Join(fnErr, fmt.Errorf("restore netns after %s: %w", path, err))
			return
		}
		runtime.UnlockOSThread()
		errc <- fnErr
	}()
	return <-errc
}

// Resolver maps nsids and inodes to namespaces. It caches what it found
// and rescans /run/netns and /proc only on a miss, so a steady stream of
// lookups for known pods costs a stat, not a scan.
type Resolver struct {
	log *slog.Logger

	mu     sync.Mutex
	byNsid map[int]Netns
	links  map[uint32]map[int]string // inode -> ifindex -> name
	paths  map[uint32]Netns          // inode -> how to open it (last scan)
}

// NewResolver returns a resolver for nsids as seen from the calling
// thread's namespace.
func NewResolver(log *slog.Logger) *Resolver {
	return &Resolver{
		log:    log,
		byNsid: map[int]Netns{},
		links:  map[uint32]map[int]string{},
		paths:  map[uint32]Netns{},
	}
}

// PeerNetns returns the namespace that nsid (the IFLA_LINK_NETNSID of a veth
// in our namespace) refers to.
func (r *Resolver) PeerNetns(nsid int) (Netns, error) {
	if nsid < 0 {
		return Netns{}, fmt.Errorf("resolve nsid %d: %w", nsid, ErrNotFound)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if ns, ok := r.byNsid[nsid]; ok {
		// An nsid is only reused after its namespace died; then the path
		// is gone or opens a different inode, which this stat catches.
		if ino, err := inodeOf(ns.Path); err == nil && ino == ns.Inode {
			return ns, nil
		}
		delete(r.byNsid, nsid)
	}
	r.scanLocked()
	if ns, ok := r.byNsid[nsid]; ok {
		return ns, nil
	}
	return Netns{}, fmt.Errorf("resolve nsid %d: %w", nsid, ErrNotFound)
}

// LinkName returns the name of interface ifindex inside the namespace with
// that inode.
func (r *Resolver) LinkName(inode uint32, ifindex int) (string, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if name, ok := r.links[inode][ifindex]; ok {
		return name, true
	}
	ns, ok := r.paths[inode]
	if ok {
		if ino, err := inodeOf(ns.Path); err != nil || ino != inode {
			ok = false
		}
	}
	if !ok {
		r.scanLocked()
		if ns, ok = r.paths[inode]; !ok {
			return "", false
		}
	}
	names, err := listLinks(ns.Path)
	if err != nil {
		r.log.Debug("list links in netns", "path", ns.Path, "err", err)
		return "", false
	}
	r.links[inode] = names
	name, ok := names[ifindex]
	return name, ok
}

func listLinks(path string) (map[int]string, error) {
	h, err := netns.GetFromPath(path)
	if err != nil {
		return nil, fmt.Errorf("open netns %s: %w", path, err)
	}
	defer h.Close()
	nh, err := netlink.NewHandleAt(h, unix.NETLINK_ROUTE)
	if err != nil {
		return nil, fmt.Errorf("netlink handle in %s: %w", path, err)
	}
	defer nh.Close()
	links, err := nh.LinkList()
	if err != nil {
		return nil, fmt.Errorf("list links in %s: %w", path, err)
	}
	out := make(map[int]string, len(links))
	for _, l := range links {
		out[l.Attrs().Index] = l.Attrs().Name
	}
	return out, nil
}

// Candidates lists every network namespace reachable through /run/netns
// and /proc/*/ns/net, one entry per inode. Named pins win over /proc paths
// because they outlive processes and carry a name.
func Candidates() []Netns {
	seen := map[uint32]bool{}
	var out []Netns
	if ents, err := os.ReadDir(RunDir); err == nil {
		for _, e := range ents {
			p := filepath.Join(RunDir, e.Name())
			ino, err := nsfsInode(p)
			if err != nil || seen[ino] {
				continue
			}
			seen[ino] = true
			out = append(out, Netns{Inode: ino, Path: p, Name: e.Name()})
		}
	}
	procs, _ := os.ReadDir("/proc")
	for _, e := range procs {
		if _, err := strconv.Atoi(e.Name()); err != nil {
			continue
		}
		p := filepath.Join("/proc", e.Name(), "ns", "net")
		ino, err := inodeOf(p)
		if err != nil || seen[ino] {
			continue
		}
		seen[ino] = true
		out = append(out, Netns{Inode: ino, Path: p})
	}
	return out
}

// nsfsInode stats a /run/netns entry and rejects plain files: an entry
// whose bind mount is gone (ip netns del racing us) is an empty file.
func nsfsInode(path string) (uint32, error) {
	var fs unix.Statfs_t
	if err := unix.Statfs(path, &fs); err != nil {
		return 0, err
	}
	if fs.Type != unix.NSFS_MAGIC {
		return 0, fmt.Errorf("%s is not a namespace pin", path)
	}
	return inodeOf(path)
}

func (r *Resolver) scanLocked() {
	cands := Candidates()
	r.paths = make(map[uint32]Netns, len(cands))
	for _, ns := range cands {
		r.paths[ns.Inode] = ns
		nsid, err := nsidOf(ns.Path)
		if err != nil {
			r.log.Debug("nsid lookup", "path", ns.Path, "err", err)
			continue
		}
		if nsid >= 0 {
			r.byNsid[nsid] = ns
		}
	}
}

// nsidOf returns the nsid our namespace assigned to the one at path, or -1
// when none is assigned (then no veth of ours can point at it).
func nsidOf(path string) (int, error) {
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return -1, err
	}
	defer unix.Close(fd)
	id, err := netlink.GetNetNsIdByFd(fd)
	if err != nil {
		if errors.Is(err, syscall.ENOENT) {
			return -1, nil
		}
		return -1, err
	}
	return id, nil
}
