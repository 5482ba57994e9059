// Package ifwatch follows the network interfaces of a namespace through
// netlink and reports the veths and physical NICs flowtrace should attach
// to, as they come and go.
package ifwatch
