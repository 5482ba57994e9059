// Package lab builds flowtrace's built-in test topology without a cluster:
// a "node" network namespace routing for three pod namespaces on a bridge,
// with a NetworkPolicy-like nftables drop, and the identity file that names
// the pods for the agent.
//
// The extended lab (Config.Extended) adds what Service translation and MTU
// verdicts need: a second backend replica, kube-proxy-like Services in
// nftables (a ClusterIP with a NodePort, and a Service without endpoints),
// a second node joined by an underlay veth with a flannel-like VXLAN overlay
// and a pod of its own, and pods whose MTU is larger than the overlay's.
package lab
