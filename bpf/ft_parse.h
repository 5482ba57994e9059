/* SPDX-License-Identifier: GPL-2.0 OR BSD-3-Clause */
/*
 * One packet parser for every hook. Headers are copied through ft_load so the
 * same code serves tc and the kfree_skb tracepoint (bpf_probe_read_kernel
 * from skb->head, bounded by the end of the linear data since paged
 * fragments cannot be read there). At tc, headers in the linear part are
 * read directly (a few loads instead of a helper call per header: about
 * half of the parse's cost); anything beyond it goes through
 * bpf_skb_load_bytes, which reads paged data too and, unlike
 * bpf_skb_pull_data, never modifies the packet.
 */
#ifndef FT_PARSE_H
#define FT_PARSE_H

#include "ft_event.h"

#define FT_ETH_P_IP 0x0800
#define FT_ETH_P_IPV6 0x86DD
#define FT_ETH_P_8021Q 0x8100
#define FT_ETH_P_8021AD 0x88A8

#define FT_IPPROTO_HOPOPTS 0
#define FT_IPPROTO_ICMP 1
#define FT_IPPROTO_TCP 6
#define FT_IPPROTO_UDP 17
#define FT_IPPROTO_ROUTING 43
#define FT_IPPROTO_FRAGMENT 44
#define FT_IPPROTO_AH 51
#define FT_IPPROTO_ICMPV6 58
#define FT_IPPROTO_DSTOPTS 60
#define FT_IPPROTO_SCTP 132

/* Bounds of the IPv6 extension header walk; more is reported as malformed. */
#define FT_MAX_IPV6_EXT 6
#define FT_MAX_VLAN 2

/*
 * Bytes of a dropped packet copied at once: IPv4 or IPv6 with a TCP
 * header's first 14 bytes fit; headers beyond (IPv4 options, IPv6
 * extension headers) are read on their own (ft_load). One cache line: the
 * copy is most of the drop hook's parse, and 128 bytes cost ~5 ns more
 * per drop for headers nearly no drop has.
 */
#define FT_DROP_HDR 64

struct ft_src {
	struct __sk_buff *skb;     /* tc: offsets relative to skb->data */
	const unsigned char *head; /* tracepoint: offsets relative to head */
	__u32 end;                 /* tracepoint: offset of the end of linear data */
	__u32 buflen;              /* tracepoint: bytes of head already in buf */
	const __u8 *buf;           /* (a per-CPU map value of FT_DROP_HDR bytes) */
};

/* Offsets above this always take the helper: it bounds off for the verifier. */
#define FT_DIRECT_MAX 0x3fff

static __always_inline int ft_load(const struct ft_src *s, __u32 off, void *dst, __u32 len)
{
	if (s->skb) {
		const __u8 *data = (const __u8 *)(long)s->skb->data;
		const __u8 *end = (const __u8 *)(long)s->skb->data_end;
		const __u8 *p;

		if (off <= FT_DIRECT_MAX) {
			/*
			 * Re-bound off in the register the pointer math uses:
			 * clang may test a copy, and verifiers before 5.11 do
			 * not carry a bound from one copy to another.
			 */
			__u32 o = off;

			barrier_var(o);
			o &= FT_DIRECT_MAX;
			p = data + o;
			if (p + len <= end) {
				__builtin_memcpy(dst, p, len);
				return 0;
			}
		}
		return bpf_skb_load_bytes(s->skb, off, dst, len);
	}
	if (s->buf) {
		/*
		 * The constant bound is what the verifier needs, on the register
		 * the pointer math uses: without the barrier clang tests what
		 * off was derived from (an IPv4 header length) instead, and
		 * older verifiers (6.1's) do not carry that bound over.
		 */
		__u32 o = off;

		barrier_var(o);
		if (o <= FT_DROP_HDR - len && o + len <= s->buflen) {
			__builtin_memcpy(dst, s->buf + o, len);
			return 0;
		}
	}
	if (off > s->end || len > s->end - off)
		return -1;
	return bpf_probe_read_kernel(dst, len, s->head + off);
}

/* Side results of a parse that are not part of the event tuple. */
struct ft_pmeta {
	__u32 l3_off;
	__u32 l4_off;    /* 0 when no L4 header was reached */
	__u32 l3_len;    /* IPv4 tot_len, IPv6 40 + payload_len */
	__u8 df;         /* IPv4 don't-fragment bit */
	__u8 ports_only; /* in: TCP needs only its ports (ICMP-embedded headers are cut short) */
	__u8 l4_hlen;    /* TCP/UDP header length, for the size of a GSO packet's segments */
	__u8 _pad;
};

struct ft_ip4 {
	__u8 vihl;
	__u8 tos;
	__be16 tot_len;
	__be16 id;
	__be16 frag_off;
	__u8 ttl;
	__u8 proto;
	__be16 csum;
	__be32 saddr;
	__be32 daddr;
};

struct ft_ip6 {
	__be32 vtcfl;
	__be16 payload_len;
	__u8 nexthdr;
	__u8 hop_limit;
	__u8 saddr[16];
	__u8 daddr[16];
};

static __always_inline int ft_parse_l4(const struct ft_src *s, __u32 off, __u8 proto,
				       struct ft_tuple *t, struct ft_pmeta *m)
{
	__u8 b[14];

	t->proto = proto;
	m->l4_off = off;
	switch (proto) {
	case FT_IPPROTO_TCP:
		if (m->ports_only) {
			if (ft_load(s, off, b, 4))
				return FT_PARSE_TRUNCATED;
			break;
		}
		if (ft_load(s, off, b, 14))
			return FT_PARSE_TRUNCATED;
		t->tcp_flags = b[13];
		m->l4_hlen = (b[12] >> 4) * 4;
		break;
	case FT_IPPROTO_UDP:
	case FT_IPPROTO_SCTP:
		if (ft_load(s, off, b, 4))
			return FT_PARSE_TRUNCATED;
		m->l4_hlen = proto == FT_IPPROTO_UDP ? 8 : 0;
		break;
	case FT_IPPROTO_ICMP:
	case FT_IPPROTO_ICMPV6:
		if (ft_load(s, off, b, 2))
			return FT_PARSE_TRUNCATED;
		t->icmp_type = b[0];
		t->icmp_code = b[1];
		return FT_PARSE_OK;
	default:
		return FT_PARSE_OK; /* protocol number only */
	}
	t->sport = ((__u16)b[0] << 8) | b[1];
	t->dport = ((__u16)b[2] << 8) | b[3];
	return FT_PARSE_OK;
}

static __always_inline int ft_parse_ip4(const struct ft_src *s, __u32 off, struct ft_tuple *t,
					struct ft_pmeta *m)
{
	struct ft_ip4 ip;
	__u32 ihl;

	if (ft_load(s, off, &ip, sizeof(ip)))
		return FT_PARSE_TRUNCATED;
	ihl = ip.vihl & 0x0f;
	if ((ip.vihl >> 4) != 4 || ihl < 5)
		return FT_PARSE_MALFORMED;
	/* Options must be present in full, even when no L4 header is read. */
	if (ihl > 5 && ft_load(s, off + ihl * 4 - 1, &ip.tos, 1))
		return FT_PARSE_TRUNCATED;
	t->ip_version = 4;
	m->l3_off = off;
	m->l3_len = bpf_ntohs(ip.tot_len);
	m->df = !!(bpf_ntohs(ip.frag_off) & 0x4000);
	__builtin_memcpy(t->saddr, &ip.saddr, 4);
	__builtin_memcpy(t->daddr, &ip.daddr, 4);
	/* A non-first fragment carries no L4 header: report the protocol only. */
	if (bpf_ntohs(ip.frag_off) & 0x1fff) {
		t->proto = ip.proto;
		return FT_PARSE_OK;
	}
	return ft_parse_l4(s, off + ihl * 4, ip.proto, t, m);
}

static __always_inline int ft_parse_ip6(const struct ft_src *s, __u32 off, struct ft_tuple *t,
					struct ft_pmeta *m)
{
	struct ft_ip6 ip;
	__u8 nh;
	__u8 ext[4];
	int i;

	if (ft_load(s, off, &ip, sizeof(ip)))
		return FT_PARSE_TRUNCATED;
	if ((bpf_ntohl(ip.vtcfl) >> 28) != 6)
		return FT_PARSE_MALFORMED;
	t->ip_version = 6;
	m->l3_off = off;
	m->l3_len = 40 + (__u32)bpf_ntohs(ip.payload_len);
	__builtin_memcpy(t->saddr, ip.saddr, 16);
	__builtin_memcpy(t->daddr, ip.daddr, 16);
	nh = ip.nexthdr;
	off += sizeof(ip);

	for (i = 0; i < FT_MAX_IPV6_EXT; i++) {
		switch (nh) {
		case FT_IPPROTO_HOPOPTS:
		case FT_IPPROTO_ROUTING:
		case FT_IPPROTO_DSTOPTS:
			if (ft_load(s, off, ext, 2))
				return FT_PARSE_TRUNCATED;
			nh = ext[0];
			off += ((__u32)ext[1] + 1) * 8;
			break;
		case FT_IPPROTO_AH:
			if (ft_load(s, off, ext, 2))
				return FT_PARSE_TRUNCATED;
			nh = ext[0];
			off += ((__u32)ext[1] + 2) * 4;
			break;
		case FT_IPPROTO_FRAGMENT:
			if (ft_load(s, off, ext, 4))
				return FT_PARSE_TRUNCATED;
			nh = ext[0];
			off += 8;
			/* Offset != 0: a non-first fragment, no L4 header. */
			if ((((__u16)ext[2] << 8) | ext[3]) & 0xfff8) {
				t->proto = nh;
				return FT_PARSE_OK;
			}
			break;
		default:
			return ft_parse_l4(s, off, nh, t, m);
		}
	}
	return FT_PARSE_MALFORMED;
}

/* Parses from the L3 header at off; ethertype is in host order. */
static __always_inline int ft_parse_l3(const struct ft_src *s, __u32 off, __u16 ethertype,
				       struct ft_tuple *t, struct ft_pmeta *m)
{
	t->ethertype = ethertype;
	if (ethertype == FT_ETH_P_IP)
		return ft_parse_ip4(s, off, t, m);
	if (ethertype == FT_ETH_P_IPV6)
		return ft_parse_ip6(s, off, t, m);
	return FT_PARSE_NON_IP;
}

/*
 * Ethernet at off (0 at tc, the inner frame for VXLAN), up to FT_MAX_VLAN
 * in-band tags. skb is NULL for an inner frame: the offloaded tag belongs to
 * the outer one.
 */
static __always_inline int ft_parse_eth_at(const struct ft_src *s, struct __sk_buff *skb,
					   __u32 off, struct ft_tuple *t, struct ft_pmeta *m)
{
	__u8 eth[14];
	__u8 tag[4];
	__u16 proto;
	int i;

	if (ft_load(s, off, eth, sizeof(eth)))
		return FT_PARSE_TRUNCATED;
	off += 14;
	proto = ((__u16)eth[12] << 8) | eth[13];
	/* An offloaded (already stripped) tag is the outermost one. */
	if (skb && skb->vlan_present)
		t->vlan = skb->vlan_tci & 0x0fff;
	for (i = 0; i < FT_MAX_VLAN; i++) {
		if (proto != FT_ETH_P_8021Q && proto != FT_ETH_P_8021AD)
			break;
		if (ft_load(s, off, tag, sizeof(tag)))
			return FT_PARSE_TRUNCATED;
		t->vlan = (((__u16)tag[0] << 8) | tag[1]) & 0x0fff;
		proto = ((__u16)tag[2] << 8) | tag[3];
		off += 4;
	}
	if (proto == FT_ETH_P_8021Q || proto == FT_ETH_P_8021AD) {
		t->ethertype = proto;
		return FT_PARSE_MALFORMED; /* more tags than we walk */
	}
	return ft_parse_l3(s, off, proto, t, m);
}

static __always_inline int ft_parse_eth(const struct ft_src *s, struct __sk_buff *skb,
					struct ft_tuple *t, struct ft_pmeta *m)
{
	return ft_parse_eth_at(s, skb, 0, t, m);
}

static __always_inline void ft_count_status(int status)
{
	if (status == FT_PARSE_NON_IP)
		ft_stat_inc(FT_STAT_NON_IP);
	else if (status == FT_PARSE_TRUNCATED)
		ft_stat_inc(FT_STAT_TRUNCATED);
	else if (status == FT_PARSE_MALFORMED)
		ft_stat_inc(FT_STAT_MALFORMED);
}

#endif /* FT_PARSE_H */
