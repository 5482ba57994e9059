// Package datapath loads flowtrace's BPF object (tc flow observers and the
// kfree_skb drop hook), owns its maps and ring buffer, and turns ring buffer
// records into decode.Events with wall-clock timestamps.
package datapath
