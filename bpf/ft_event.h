/* SPDX-License-Identifier: GPL-2.0 OR BSD-3-Clause */
/*
 * THE flowtrace event ABI. Every struct the Go side decodes lives here and
 * only here. pkg/decode mirrors the offsets as Go constants and a datapath
 * test compares them with the bpf2go-generated types, so any change here
 * must bump FT_EVENT_VERSION and update pkg/decode/abi.go.
 *
 * Rules: explicit padding, no packed, all multi-byte fields in host order
 * (ports included) except addresses, which stay in network byte order.
 */
#ifndef FT_EVENT_H
#define FT_EVENT_H

#define FT_EVENT_VERSION 1

/* Event types. Values 3 and 4 are reserved for TRANSLATED and MTU events. */
enum ft_event_type {
	FT_EV_FLOW = 1,
	FT_EV_DROP = 2,
};

enum ft_direction {
	FT_DIR_UNKNOWN = 0,
	FT_DIR_INGRESS = 1,
	FT_DIR_EGRESS = 2,
};

enum ft_flow_reason {
	FT_REASON_NEW = 1,
	FT_REASON_TCP_FLAGS = 2,
	FT_REASON_PERIODIC = 3,
	FT_REASON_IDLE_FLUSH = 4, /* produced by the Go side only */
};

/* Outcome of ft_parse. Only FT_PARSE_OK tuples are trustworthy. */
enum ft_parse_status {
	FT_PARSE_OK = 0,
	FT_PARSE_NON_IP = 1,
	FT_PARSE_TRUNCATED = 2,
	FT_PARSE_MALFORMED = 3,
};

/* TCP flag bits as on the wire (byte 13 of the TCP header). */
#define FT_TCP_FIN 0x01
#define FT_TCP_SYN 0x02
#define FT_TCP_RST 0x04
#define FT_TCP_PSH 0x08
#define FT_TCP_ACK 0x10

/* 16 bytes. */
struct ft_event_hdr {
	__u8 type;
	__u8 version;
	__u16 len; /* total event length in bytes, header included */
	__u32 cpu;
	__u64 ts_ns; /* bpf_ktime_get_boot_ns() */
};

/* 48 bytes. IPv4 addresses use the first 4 bytes of saddr/daddr. */
struct ft_tuple {
	__u8 saddr[16];
	__u8 daddr[16];
	__u16 sport; /* host order; 0 when the protocol has no ports */
	__u16 dport;
	__u16 ethertype; /* host order, after VLAN tags */
	__u16 vlan;      /* innermost VLAN id, 0 if untagged */
	__u8 ip_version; /* 4, 6 or 0 */
	__u8 proto;      /* L4 protocol number (after IPv6 extension headers) */
	__u8 tcp_flags;
	__u8 icmp_type;
	__u8 icmp_code;
	__u8 status; /* enum ft_parse_status */
	__u8 _pad[2];
};

/* 96 bytes. */
struct ft_flow_event {
	struct ft_event_hdr hdr;
	struct ft_tuple tuple; /* tcp_flags: OR of the flags since the last report */
	__u64 packets;         /* since the previous report of this entry */
	__u64 bytes;
	__u32 ifindex;
	__u32 netns;   /* netns inode of the device, 0 if unknown */
	__u32 pkt_len; /* length of the packet that triggered the report */
	__u8 dir;      /* enum ft_direction */
	__u8 reason;   /* enum ft_flow_reason */
	__u8 _pad[2];
};

/* 112 bytes. */
struct ft_drop_event {
	struct ft_event_hdr hdr;
	struct ft_tuple tuple;
	__u64 location; /* kernel address that freed the skb */
	__u64 first_ns; /* boot ns of the first folded drop */
	__u64 last_ns;  /* boot ns of the last folded drop */
	__u32 reason;   /* enum skb_drop_reason of the running kernel */
	__u32 ifindex;  /* skb->dev ifindex, 0 when dev is NULL */
	__u32 skb_iif;
	__u32 netns;
	__u32 pkt_len; /* skb->len */
	__u32 count;   /* identical drops folded into this event (1 for now) */
};

/* Per-CPU counters in ft_stats; names in pkg/datapath must follow this order. */
enum ft_stat {
	FT_STAT_TC_PACKETS = 0,
	FT_STAT_NON_IP,
	FT_STAT_TRUNCATED,
	FT_STAT_MALFORMED,
	FT_STAT_DROPS_SEEN,
	FT_STAT_DROPS_OUT_OF_SCOPE,
	FT_STAT_FLOW_EVENTS,
	FT_STAT_DROP_EVENTS,
	FT_STAT_MAX,
};

/* Aggregation key: directional 5-tuple per observation point. 40 bytes. */
struct ft_flow_key {
	__u8 saddr[16];
	__u8 daddr[16];
	__u16 sport;
	__u16 dport;
	__u8 proto;
	__u8 ip_version;
	__u8 dir;
	__u8 _pad;
	__u32 ifindex;
	__u32 _pad2;
};

/* Aggregation value. Counters are updated with atomics: tc runs on all CPUs. */
struct ft_flow_val {
	__u64 packets; /* unreported since last_report_ns */
	__u64 bytes;
	__u64 last_report_ns;
	__u64 last_seen_ns;
	__u32 tcp_flags; /* OR since the last report; u32 so it can be atomic */
	__u32 netns;
	__u16 ethertype;
	__u16 vlan;
	__u32 _pad;
};

#endif /* FT_EVENT_H */
