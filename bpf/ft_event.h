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

#define FT_EVENT_VERSION 3

enum ft_event_type {
	FT_EV_FLOW = 1,
	FT_EV_DROP = 2,
	FT_EV_TRANSLATED = 3, /* struct ft_xlate_event: a connection's NAT, once */
	FT_EV_MTU = 4,        /* struct ft_mtu_event: too big, or an ICMP PMTU error */
};

/* ft_ct.flags */
#define FT_CT_KNOWN 0x01 /* conntrack had the connection; the tuple is valid */
#define FT_CT_REPLY 0x02 /* this packet travels in the REPLY direction */
#define FT_CT_DNAT 0x04  /* destination translated (orig dst != reply src) */
#define FT_CT_SNAT 0x08  /* source translated (orig src != reply dst) */
#define FT_CT_VIA_NFCT 0x10   /* learned from skb->_nfct */
#define FT_CT_VIA_LOOKUP 0x20 /* learned from the bpf_skb_ct_lookup kfunc */
#define FT_CT_VIA_REV 0x40    /* from the other direction's flow entry at the hook */

/* ft_mtu_event.kind */
enum ft_mtu_kind {
	FT_MTU_EXCEEDED = 1,        /* packet larger than the egress device MTU */
	FT_MTU_ICMP_FRAG_NEEDED = 2, /* ICMP type 3 code 4 seen */
	FT_MTU_ICMP6_PKT_TOO_BIG = 3, /* ICMPv6 type 2 seen */
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
	FT_REASON_CLOSED = 5,     /* TCP: the final ACK after both FINs; the entries end */
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

/* 36 bytes: a conntrack tuple (addresses in network order, ports host order). */
struct ft_ct_tuple {
	__u8 saddr[16];
	__u8 daddr[16];
	__u16 sport;
	__u16 dport;
};

/*
 * 40 bytes. The connection as conntrack first saw it (ORIGINAL direction):
 * daddr:dport is the Service VIP when FT_CT_DNAT is set, saddr:sport the
 * client before masquerade. All zero when flags == 0.
 */
struct ft_ct {
	struct ft_ct_tuple orig;
	__u8 flags;      /* FT_CT_* */
	__u8 ip_version; /* of orig */
	__u8 _pad[2];
};

/* 40 bytes. Outer header of a VXLAN packet; all zero when not encapsulated. */
struct ft_encap {
	__u8 saddr[16]; /* outer (underlay) addresses */
	__u8 daddr[16];
	__u32 vni;
	__u16 dport;     /* 4789 or 8472 */
	__u8 ip_version; /* outer; 0 = not encapsulated */
	__u8 _pad;
};

/*
 * 192 bytes. For VXLAN the tuple is the inner one and encap the outer.
 *
 * A TCP connection's closing report (RST, or CLOSED: the final ACK after
 * both FINs) ends both of its entries at the hook and carries, as rev_*,
 * what the other direction's entry held unreported: its FIN, the last
 * ACKs. A FIN is not reported on its own; it comes with the close (or a
 * periodic or idle report when the connection stays half-closed).
 */
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
	__u8 rev_tcp_flags; /* the other direction's, see above */
	__u8 _pad;
	struct ft_ct ct;       /* 96 */
	struct ft_encap encap; /* 136 */
	__u64 rev_packets;     /* 176: the other direction's, see above */
	__u64 rev_bytes;
};

/* 152 bytes. */
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
	struct ft_ct ct; /* 112: from skb->_nfct */
};

/*
 * 152 bytes. One per connection and network namespace: ct.orig is the
 * original tuple (client -> VIP), xlat the same packet after NAT (source
 * after masquerade -> backend), i.e. the REPLY tuple reversed.
 */
struct ft_xlate_event {
	struct ft_event_hdr hdr;
	struct ft_tuple tuple;   /* 16: the packet that revealed it */
	struct ft_ct ct;         /* 64 */
	struct ft_ct_tuple xlat; /* 104 */
	__u32 ifindex;           /* 140 */
	__u32 netns;             /* 144 */
	__u8 dir;                /* 148 */
	__u8 _pad[3];
};

/*
 * 128 bytes. FT_MTU_EXCEEDED: tuple is the too-big packet seen at tc ingress,
 * pkt_len its L3 length, mtu and egress_ifindex the device the FIB picked.
 * FT_MTU_ICMP_*: tuple is the ICMP error itself, emb the flow it is about
 * (the embedded original header, as that flow's sender sent it), mtu the
 * next-hop MTU it announces, pkt_len the embedded packet's L3 length.
 */
struct ft_mtu_event {
	struct ft_event_hdr hdr;
	struct ft_tuple tuple;  /* 16 */
	struct ft_ct_tuple emb; /* 64 */
	__u8 emb_proto;         /* 100 */
	__u8 emb_ip_version;    /* 101 */
	__u8 kind;              /* 102: enum ft_mtu_kind */
	__u8 dir;               /* 103 */
	__u32 pkt_len;          /* 104 */
	__u32 mtu;              /* 108 */
	__u32 ifindex;          /* 112: where it was seen (ingress for EXCEEDED) */
	__u32 egress_ifindex;   /* 116: 0 for ICMP */
	__u32 netns;            /* 120 */
	__u32 _pad;
};

/* Per-CPU counters in ft_stats; names in pkg/datapath must follow this order. */
enum ft_stat {
	FT_STAT_TC_PACKETS = 0, /* counted in ft_scratch.tc_packets (ft_flow.h) */
	FT_STAT_NON_IP,
	FT_STAT_TRUNCATED,
	FT_STAT_MALFORMED,
	FT_STAT_DROPS_SEEN, /* mostly in ft_drop_hdrs.seen (ft_drop.h) */
	FT_STAT_DROPS_OUT_OF_SCOPE,
	FT_STAT_FLOW_EVENTS,
	FT_STAT_DROP_EVENTS,
	FT_STAT_XLATE_EVENTS,
	FT_STAT_MTU_EVENTS,
	FT_STAT_ICMP_EVENTS,
	FT_STAT_VXLAN,
	FT_STAT_CT_LOOKUPS,
	FT_STAT_FIB_LOOKUPS,
	FT_STAT_DROPS_FOLDED, /* in-scope drops counted in ft_drop_folds, not emitted; as SEEN */
	FT_STAT_FC_HITS,      /* counted in ft_scratch.fc_hits (ft_flow.h) */
	FT_STAT_FC_ORPHANED,  /* packets a flow-cache slot held for an entry that was gone */
	FT_STAT_DROP_MEMO_HITS, /* counted in ft_drop_hdrs.memo_hits (ft_drop.h) */
	FT_STAT_FLOWS_CLOSED,   /* flow entries deleted with their TCP connection (ft_flow_end) */
	FT_STAT_DROPS_PARSED_FAST, /* counted in ft_drop_hdrs.parsed_fast (ft_drop.h) */
	FT_STAT_DROPS_TEARDOWN,    /* a socket's teardown, not reported (ft_reason_socket_close) */
	FT_STAT_DEFER_FULL,        /* first reports sent at once: this CPU's queue was full (ft_defer.h) */
	FT_STAT_DEFER_EVICTED,     /* queued first reports whose entry was deleted meanwhile: sent from the queue */
	FT_STAT_FLOW_TABLE_FULL,   /* packets reported on their own: no room for their flow entry */
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
	__u32 vni; /* VXLAN: inner tuples of different VNIs stay apart */
};

/* Aggregation value. Counters are updated with atomics: tc runs on all CPUs. */
struct ft_flow_val {
	/* Times in this struct are CLOCK_MONOTONIC (ft_now), not boot time. */
	__u64 packets; /* unreported since last_report_ns */
	__u64 bytes;
	__u64 last_report_ns;
	__u64 last_seen_ns;
	__u32 tcp_flags; /* OR since the last report; u32 so it can be atomic */
	__u32 netns;
	__u16 ethertype;
	__u16 vlan;
	/*
	 * TCP: this direction sent its FIN (1); both did, and its next packet
	 * (the final ACK) is reported CLOSED and ends the connection (2); its
	 * close was reported (3). See ft_flow_closing.
	 */
	__u32 fin;
	__u64 mtu_report_ns;  /* last MTU_EXCEEDED of this entry (rate limit) */
	__u64 mtu_checked_ns; /* when egress_mtu was learned */
	__u32 egress_mtu;     /* MTU of the FIB's egress device, 0 = unknown */
	/*
	 * Flow-cache slots (any CPU) that took this entry and may hold counts
	 * for it; ft_flow_end keeps an entry while any does.
	 */
	__u32 slots;
	struct ft_ct ct;       /* last conntrack view, for the idle flush */
	struct ft_encap encap; /* outer header, for the idle flush */
	/*
	 * FT_DEFER_*: a queued first report (ft_defer.h) refers to this
	 * entry, by defer_id, and it alone may delete it.
	 */
	__u32 defer;
	__u32 defer_id;
};

#endif /* FT_EVENT_H */
