// Package metrics exports flowtrace's Prometheus metrics (client_golang) on
// /metrics of the agent's --metrics-address.
//
// Counters for flows are incremented as flows are published; everything
// else is read at scrape time from the same counters ServerStatus reports,
// so `flowtrace status` and Prometheus never disagree.
//
//	name                                   type     labels             meaning
//	flowtrace_flows_total                  counter  verdict            flows published, by verdict (forwarded, dropped, translated, mtu_exceeded)
//	flowtrace_drops_total                  counter  reason, cause,     dropped packets (event_count of each drop), by flowtrace drop reason,
//	                                                namespace          flowtrace's explanation ("none", "multicast_not_joined", ...) and namespace
//	flowtrace_lost_events_total            counter  stage              events lost, by stage (kernel_ring_buffer, agent_queue, history_evicted, client_queue)
//	flowtrace_attached_interfaces          gauge    mode, kind         interfaces observed, by attach mode (tcx, clsact) and kind (veth, device)
//	flowtrace_subscribers                  gauge    -                  clients following the flow stream
//	flowtrace_history_flows                gauge    -                  flows held in history
//	flowtrace_history_max_flows            gauge    -                  history capacity (--max-flows)
//	flowtrace_seen_flows_total             counter  -                  flows published since start
//	flowtrace_ring_buffer_used_bytes       gauge    -                  bytes waiting in the BPF ring buffer (when the datapath reports it)
//	flowtrace_ring_buffer_size_bytes       gauge    -                  BPF ring buffer size (when the datapath reports it)
//	flowtrace_flow_table_entries           gauge    -                  entries in the kernel's flow table at the agent's last walk (every flow report interval)
//	flowtrace_flow_table_capacity_entries  gauge    -                  kernel flow table size (--flow-table-entries); flow_table_full counts packets that found it full
//	flowtrace_datapath_counter_total       counter  name               kernel-side counters (parse failures, out-of-scope drops, ...)
//
// Cardinality is bounded: reason is an enum (about 130 values), cause one
// of a handful (alerts exclude echo_reply_unclaimed and
// multicast_not_joined, which are no faults), and
// namespace takes at most TopNamespaces distinct values (default 50) — the
// first namespaces that drop keep their name, later ones are counted as
// "other". A drop's namespace is its source's, else its destination's,
// else "none" (the host). Go runtime and process metrics (go_*, process_*)
// are exported too.
package metrics
