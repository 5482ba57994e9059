package agent

import (
	"context"
	"fmt"

	"github.com/vishvananda/netlink"

	"github.com/flowtrace/flowtrace/pkg/ifwatch"
)

// followLinks attaches to interfaces as they appear and detaches as they go.
// An interface that fails to attach is logged and skipped: one odd device
// must not take the agent down.
// synced is closed once every interface present at start is attached.
func (a *Agent) followLinks(ctx context.Context, events <-chan ifwatch.Event, synced chan<- struct{}) {
	for {
		select {
		case <-ctx.Done():
			return
		case ev := <-events:
			if ev.Synced {
				a.mu.Lock()
				n := len(a.links)
				a.mu.Unlock()
				if n == 0 {
					// Not an error: pods may come later. But a pattern
					// that matches nothing looks just like that.
					a.log.Warn("no interface to observe yet; waiting for one to appear", "include", a.cfg.Include, "exclude", a.cfg.Exclude)
				}
				close(synced)
				continue
			}
			if ev.Added {
				a.addLink(ev.Link)
			} else {
				a.removeLink(ev.Link)
			}
		}
	}
}

func (a *Agent) addLink(l ifwatch.Link) {
	mode, err := a.attacher.Attach(l.Index, l.Name, a.dp.Ingress(), a.dp.Egress())
	if err != nil {
		a.log.Warn("cannot attach; interface not observed", "interface", l.Name, "error", err)
		return
	}
	st := linkState{link: l, mode: mode}
	if l.Kind == ifwatch.KindVeth && l.PeerNetnsID >= 0 {
		// The pod behind the veth: its namespace joins the drop scope so
		// drops inside the pod (closed ports, full socket buffers) are seen.
		if ns, err := a.resolver.PeerNetns(l.PeerNetnsID); err != nil {
			a.log.Warn("peer namespace of veth not found; drops inside it are not reported", "interface", l.Name, "nsid", l.PeerNetnsID, "error", err)
		} else {
			st.peerNetns, st.peerName = ns.Inode, ns.Name
			if st.peerName == "" {
				st.peerName = fmt.Sprintf("netns:%d", ns.Inode)
			}
		}
	}
	a.mu.Lock()
	if old, ok := a.links[l.Index]; ok {
		a.releaseNetnsLocked(old.peerNetns)
	}
	a.links[l.Index] = st
	if st.peerNetns != 0 {
		a.netnsRefs[st.peerNetns]++
		a.netnsName[st.peerNetns] = st.peerName
	}
	a.mu.Unlock()
	if st.peerNetns != 0 {
		if err := a.dp.AllowNetns(st.peerNetns); err != nil {
			a.log.Warn("cannot scope drops to pod namespace", "netns", st.peerName, "error", err)
		}
	}
	a.log.Info("observing interface", "interface", l.Name, "index", l.Index, "kind", l.Kind, "mode", mode, "peer_netns", st.peerName)
}

func (a *Agent) removeLink(l ifwatch.Link) {
	if err := a.attacher.Detach(l.Index); err != nil {
		a.log.Warn("detach failed", "interface", l.Name, "error", err)
	}
	a.mu.Lock()
	st, ok := a.links[l.Index]
	delete(a.links, l.Index)
	forget := uint32(0)
	if ok && a.releaseNetnsLocked(st.peerNetns) {
		forget = st.peerNetns
	}
	a.mu.Unlock()
	if forget != 0 && forget != a.selfNetns {
		if err := a.dp.ForgetNetns(forget); err != nil {
			a.log.Warn("cannot remove pod namespace from drop scope", "error", err)
		}
	}
	a.log.Info("interface gone", "interface", l.Name, "index", l.Index)
}

// releaseNetnsLocked drops one reference and reports whether it was the last.
func (a *Agent) releaseNetnsLocked(inode uint32) bool {
	if inode == 0 {
		return false
	}
	a.netnsRefs[inode]--
	if a.netnsRefs[inode] > 0 {
		return false
	}
	delete(a.netnsRefs, inode)
	delete(a.netnsName, inode)
	return true
}

// InterfaceName implements enrich.InterfaceNamer.
func (a *Agent) InterfaceName(netns, ifindex uint32) (string, string) {
	if netns == 0 || netns == a.selfNetns {
		a.mu.Lock()
		defer a.mu.Unlock()
		if st, ok := a.links[int(ifindex)]; ok {
			return st.link.Name, "node"
		}
		if name, ok := a.otherNames[ifindex]; ok {
			return name, "node"
		}
		name := ""
		if l, err := netlink.LinkByIndex(int(ifindex)); err == nil {
			name = l.Attrs().Name
			// Cache only hits: a miss may be a device that is being created.
			a.otherNames[ifindex] = name
		}
		return name, "node"
	}
	a.mu.Lock()
	nsName := a.netnsName[netns]
	a.mu.Unlock()
	name, _ := a.resolver.LinkName(netns, int(ifindex))
	if nsName == "" {
		nsName = fmt.Sprintf("netns:%d", netns)
	}
	return name, nsName
}
