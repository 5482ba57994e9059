// Package netnsutil resolves network namespaces: the inode of our own
// namespace, the namespace behind a veth's IFLA_LINK_NETNSID, and interface
// names inside other namespaces. It also runs code inside a namespace.
package netnsutil
