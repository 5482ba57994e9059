package lab

import "github.com/flowtrace/flowtrace/pkg/netnsutil"

// Do runs fn on a thread inside the named namespace (a netns name such as
// ft-node, or a pod name / app label). Sockets fn opens stay there.
func (l *Lab) Do(netnsName string, fn func() error) error {
	if p, ok := l.Pod(netnsName); ok {
		netnsName = p.Netns
	}
	return netnsutil.Do(netnsName, fn)
}
