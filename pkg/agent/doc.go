// Package agent wires flowtrace's node agent together: it loads the datapath,
// attaches it to the node's veths and NICs as they come and go, turns kernel
// events into named flows and serves them over gRPC.
//
// The pipeline is bounded at every step: ring buffer (kernel, losses counted
// per CPU) → agent queue (drop and count when full) → enrich → observer
// history and per-client queues (drop and count). Every loss reaches clients
// as a LostEvents message and ServerStatus.
package agent
