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
//
// Drop storms are folded in the kernel: after a drop is emitted, identical
// drops (tuple, reason, location, netns, ifindex) on the same CPU within
// Config.DropFoldWindow are only counted in a per-CPU LRU map (through a
// per-CPU memo of the slot used last, written back before each walk:
// Features.DropMemo), and Run reports the counts (FlushDrops) as drop
// events with Count > 1. Stats "drops_folded" (kernel),
// "drops_fold_reported" and "drops_fold_lost" (evicted before they could
// be reported) account for every folded drop, and "drop_hook_missed" for
// the kfree_skb calls the kernel ran no hook for.
//
// tc counts a connection's packets in a per-CPU flow cache in front of the
// flow table (Features.FlowCache), reached for most packets by a fast path
// that reads their headers directly (bpf/ft_flow.h ft_fc_fast). A TCP
// connection's flow entries are deleted once its RST or second FIN is
// reported, unless a cache slot still holds counts for one (Stats
// "flows_closed"; ft_flow_end).
package datapath
