// Package datapath loads flowtrace's BPF object (tc flow observers and the
// kfree_skb drop hook), owns its maps and ring buffer, and turns ring buffer
// records into decode.Events with wall-clock timestamps.
//
// Besides flows and drops the tc programs report, per connection, the NAT
// conntrack applied (TRANSLATED, and the original destination on every flow
// and drop, so a Service VIP can be named at the backend), MTU verdicts
// (MTU_EXCEEDED at ingress, ICMP frag-needed / packet-too-big crossing tc)
// and the inner flow of VXLAN packets. The kernel paths these need are
// optional; Features says which ones loaded.
package datapath
