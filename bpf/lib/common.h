/* SPDX-License-Identifier: GPL-2.0-or-later */
/* podnet.fabric datapath: packet parsing and the constants every program shares.
 *
 * The sources are compiled by bcc on the node (plugins/module_utils/bpf.py). bcc rewrites map
 * calls (`map.lookup(&k)`) only in the file it is given, so the loader expands our own quoted
 * includes (`#include "lib/x.h"`) into one translation unit, with #line markers so compiler
 * messages still name bpf/lib/x.h. Kernel headers are included the usual way.
 */
#ifndef PODNET_COMMON_H
#define PODNET_COMMON_H

#include <uapi/linux/bpf.h>
#include <uapi/linux/pkt_cls.h>
#include <uapi/linux/if_ether.h>
#include <uapi/linux/ip.h>
#include <uapi/linux/ipv6.h>

/* Protocol numbers and ICMP types by hand: linux/in.h, tcp.h and icmp.h pull in the socket headers
 * and more than double the compile time. The packet is read with bpf_skb_load_bytes, so no L4
 * header struct is needed. */
#define IPPROTO_ICMP 1
#define IPPROTO_TCP 6
#define IPPROTO_UDP 17
#define IPPROTO_ICMPV6 58
#define IPPROTO_SCTP 132
#define ICMP_ECHOREPLY 0
#define ICMP_DEST_UNREACH 3
#define ICMP_ECHO 8
#define ICMP_TIME_EXCEEDED 11
#define ICMP_PARAMETERPROB 12
#define ICMPV6_ECHO_REQUEST 128
#define ICMPV6_ECHO_REPLY 129

/* Node-level facts arrive as -D defines; per-endpoint facts only ever come from the maps. */
#ifndef PODNET_PIN_ROOT
#error "PODNET_PIN_ROOT must be defined: the loader passes the pin root (default /sys/fs/bpf/podnet)"
#endif
/* How long a conntrack entry stays valid without traffic, in seconds (Cilium's defaults). */
#ifndef CT_LIFETIME_TCP
#define CT_LIFETIME_TCP 21600
#endif
#ifndef CT_LIFETIME_NONTCP
#define CT_LIFETIME_NONTCP 60
#endif

/* Reserved identities (DESIGN.md section 5). */
#define ID_UNKNOWN 0
#define ID_HOST 1
#define ID_WORLD 2

#define DIR_INGRESS 0
#define DIR_EGRESS 1

#define FAMILY_V4 4
#define FAMILY_V6 6

/* The source identity travels from from_netdev/from_overlay to to_container in skb->mark, laid
 * out as Cilium does: magic 0x0F00, identity bits 0-15 in the upper half, bits 16-23 (the
 * cluster id of a cluster-local identity) in the low byte. */
#define MARK_MAGIC_IDENTITY 0x0F00
#define MARK_MAGIC_MASK 0x0F00

static __always_inline __u32 mark_identity(__u32 mark)
{
	if ((mark & MARK_MAGIC_MASK) != MARK_MAGIC_IDENTITY)
		return ID_UNKNOWN;
	return ((mark >> 16) & 0xFFFF) | ((mark & 0xFF) << 16);
}

static __always_inline __u32 identity_mark(__u32 identity)
{
	return ((identity & 0xFFFF) << 16) | ((identity >> 16) & 0xFF) | MARK_MAGIC_IDENTITY;
}

/* One packet's L3/L4 facts. Addresses are 16 bytes for both families (v4 in the first four), in
 * network order, so map keys are filled by copying. For ICMP echo the identifier stands in for
 * the ports (request: sport = id, reply: dport = id), so a reply's reversed tuple finds the
 * request's conntrack entry. */
struct flow {
	__u8 family;
	__u8 protocol;
	__u8 has_ports;    /* TCP/UDP/SCTP ports, or an ICMP echo identifier, were read */
	__u8 icmp_type;
	__u8 icmp_error;   /* an ICMP error: `inner` holds the tuple of the packet it is about */
	__u8 pad[3];
	__be16 sport;
	__be16 dport;
	__u8 saddr[16];
	__u8 daddr[16];
	struct {
		__u8 protocol;
		__u8 pad;
		__be16 sport;
		__be16 dport;
		__u8 saddr[16];
		__u8 daddr[16];
	} inner;
};

enum parse_result {
	PARSE_OK = 0,
	PARSE_PASS = 1,          /* not ours to judge: ARP, IPv6 neighbour discovery, link-local */
	PARSE_UNSUPPORTED = 2,   /* another L3, or a truncated header */
};

static __always_inline int is_icmp(__u8 family, __u8 protocol)
{
	return (family == FAMILY_V4 && protocol == IPPROTO_ICMP) ||
	       (family == FAMILY_V6 && protocol == IPPROTO_ICMPV6);
}

static __always_inline int icmp_is_error(__u8 family, __u8 type)
{
	if (family == FAMILY_V4)
		return type == ICMP_DEST_UNREACH || type == ICMP_TIME_EXCEEDED || type == ICMP_PARAMETERPROB;
	return type >= 1 && type <= 4;   /* destination unreachable, too big, time exceeded, parameter problem */
}

static __always_inline int icmp_echo_request(__u8 family, __u8 type)
{
	return family == FAMILY_V4 ? type == ICMP_ECHO : type == ICMPV6_ECHO_REQUEST;
}

static __always_inline int icmp_echo_reply(__u8 family, __u8 type)
{
	return family == FAMILY_V4 ? type == ICMP_ECHOREPLY : type == ICMPV6_ECHO_REPLY;
}

/* The ports of the L4 header at `off` (bpf_skb_load_bytes: no packet-pointer bounds to prove). */
static __always_inline int load_ports(struct __sk_buff *skb, __u32 off, __be16 *sport, __be16 *dport)
{
	__be16 ports[2];

	if (bpf_skb_load_bytes(skb, off, ports, sizeof(ports)) < 0)
		return -1;
	*sport = ports[0];
	*dport = ports[1];
	return 0;
}

/* The tuple an ICMP error quotes (the offending packet's header starts 8 bytes into the ICMP
 * message). IPv4 only: IPv6 errors go through policy like any other ICMPv6 type. */
static __always_inline void parse_icmp4_inner(struct __sk_buff *skb, __u32 off, struct flow *f)
{
	struct iphdr ip;
	__u32 l4;

	if (bpf_skb_load_bytes(skb, off, &ip, sizeof(ip)) < 0 || ip.ihl < 5)
		return;
	l4 = off + ip.ihl * 4;
	f->inner.protocol = ip.protocol;
	__builtin_memcpy(f->inner.saddr, &ip.saddr, 4);
	__builtin_memcpy(f->inner.daddr, &ip.daddr, 4);
	if (ip.protocol == IPPROTO_TCP || ip.protocol == IPPROTO_UDP) {
		if (load_ports(skb, l4, &f->inner.sport, &f->inner.dport) < 0)
			return;
	}
	f->icmp_error = 1;
}

static __always_inline int parse_l4(struct __sk_buff *skb, __u32 off, struct flow *f, int first_fragment)
{
	if (!first_fragment)
		return PARSE_OK;   /* later fragments carry no L4 header: judged without ports */
	switch (f->protocol) {
	case IPPROTO_TCP:
	case IPPROTO_UDP:
	case IPPROTO_SCTP:
		if (load_ports(skb, off, &f->sport, &f->dport) < 0)
			return PARSE_UNSUPPORTED;
		f->has_ports = 1;
		return PARSE_OK;
	case IPPROTO_ICMP:
	case IPPROTO_ICMPV6: {
		__u8 hdr[8];

		if (bpf_skb_load_bytes(skb, off, hdr, sizeof(hdr)) < 0)
			return PARSE_UNSUPPORTED;
		f->icmp_type = hdr[0];
		if (f->family == FAMILY_V6 && f->icmp_type >= 133 && f->icmp_type <= 137)
			return PARSE_PASS;   /* router/neighbour discovery: hop limit 255, never routed */
		if (icmp_echo_request(f->family, f->icmp_type)) {
			__builtin_memcpy(&f->sport, &hdr[4], 2);
			f->has_ports = 1;
		} else if (icmp_echo_reply(f->family, f->icmp_type)) {
			__builtin_memcpy(&f->dport, &hdr[4], 2);
			f->has_ports = 1;
		} else if (f->family == FAMILY_V4 && icmp_is_error(f->family, f->icmp_type)) {
			parse_icmp4_inner(skb, off + 8, f);
		}
		return PARSE_OK;
	}
	default:
		return PARSE_OK;
	}
}

static __always_inline int parse_flow(struct __sk_buff *skb, struct flow *f)
{
	__u16 proto = skb->protocol;

	if (proto == bpf_htons(ETH_P_IP)) {
		struct iphdr ip;

		if (bpf_skb_load_bytes(skb, ETH_HLEN, &ip, sizeof(ip)) < 0 || ip.ihl < 5)
			return PARSE_UNSUPPORTED;
		f->family = FAMILY_V4;
		f->protocol = ip.protocol;
		__builtin_memcpy(f->saddr, &ip.saddr, 4);
		__builtin_memcpy(f->daddr, &ip.daddr, 4);
		return parse_l4(skb, ETH_HLEN + ip.ihl * 4, f, (ip.frag_off & bpf_htons(0x1FFF)) == 0);
	}
	if (proto == bpf_htons(ETH_P_IPV6)) {
		struct ipv6hdr ip6;

		if (bpf_skb_load_bytes(skb, ETH_HLEN, &ip6, sizeof(ip6)) < 0)
			return PARSE_UNSUPPORTED;
		f->family = FAMILY_V6;
		/* Extension headers are not walked: such a packet is judged by its first next-header
		 * value, without ports. */
		f->protocol = ip6.nexthdr;
		__builtin_memcpy(f->saddr, &ip6.saddr, 16);
		__builtin_memcpy(f->daddr, &ip6.daddr, 16);
		/* Link-local and multicast never leave the link: the kernel does not route them. */
		if ((f->saddr[0] == 0xfe && (f->saddr[1] & 0xc0) == 0x80) ||
		    (f->daddr[0] == 0xfe && (f->daddr[1] & 0xc0) == 0x80) || f->daddr[0] == 0xff)
			return PARSE_PASS;
		return parse_l4(skb, ETH_HLEN + sizeof(ip6), f, 1);
	}
	if (proto == bpf_htons(ETH_P_ARP))
		return PARSE_PASS;
	return PARSE_UNSUPPORTED;
}

#endif
