// Package filters compiles the allow/deny FlowFilter lists of a GetFlows
// request into a Matcher that is evaluated once per flow.
//
// Semantics follow Hubble: a flow passes when it matches any allowlist filter
// (or the allowlist is empty) and no denylist filter. Inside one filter every
// non-empty field must match (AND); inside one field any value may match (OR).
//
// Field values:
//   - pods: "namespace/name-prefix"; "namespace/" matches every pod of the
//     namespace. A value without "/" is a pod-name prefix in ANY namespace
//     (unlike Hubble, which assumes the "default" namespace).
//   - IPs: an address or a CIDR, IPv4 or IPv6, compared with ip.source /
//     ip.destination.
//   - ports: 1..65535, compared with the TCP, UDP or SCTP ports.
//   - protocol: tcp, udp, sctp, icmpv4, icmpv6 (case-insensitive).
//   - interface: an exact device name, or "prefix*". It matches the device the
//     flow was observed on, or the input device of a drop.
//   - namespaces: exact Kubernetes namespace names.
//   - services: "namespace/name-prefix", "namespace/" or a bare Service-name
//     prefix in any namespace, like pods, compared with the flow's
//     source_service / destination_service (the Service the client
//     addressed; set on both directions of a translated connection).
//   - uuid: exact flow record ids.
//   - labels: Kubernetes label selectors on Endpoint.labels ("key=value"):
//     "app=web", "app==web", "tier!=db", "app in (a,b)", "app notin (a,b)",
//     "canary", "!canary"; commas join requirements (AND). != and notin also
//     match an endpoint without the key, as in Kubernetes.
//   - workloads: "kind/name", "kind/" or a bare name (any kind); kinds are
//     case-insensitive.
//   - node_name: the observing node (Flow.node_name), exact or "prefix*".
//   - tcp_flags: a value matches when all of its flags are set on the flow,
//     or all of them in a closing report's reverse_tcp_flags (the other
//     direction's FIN): each set on its own, never their union.
//   - traffic_direction, observation_point, ip_version: enum values
//     (UNSPECIFIED is refused).
//   - reply: Flow.is_reply (a FORWARDED flow in conntrack's REPLY direction).
//
// FieldMask compiles a request's field_mask against the Flow descriptor.
//
// All parsing happens in Build; Match does not allocate.
package filters
