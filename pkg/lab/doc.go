// Package lab builds flowtrace's built-in test topology without a cluster:
// a "node" network namespace routing for three pod namespaces on a bridge,
// with a NetworkPolicy-like nftables drop, and the identity file that names
// the pods for the agent.
package lab
