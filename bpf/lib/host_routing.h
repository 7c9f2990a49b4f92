/* SPDX-License-Identifier: GPL-2.0-or-later */
/* eBPF host routing (podnet_datapath.host_routing: bpf). The loader sets PODNET_HOST_ROUTING to 1
 * when the node's kernel gives tc programs bpf_redirect_peer, bpf_redirect_neigh and bpf_fib_lookup,
 * else to 0 (kernel routing, the programs as without this header).
 *
 * - A packet for an endpoint of this node is put straight into the endpoint's namespace with
 *   bpf_redirect_peer, from the tc ingress hook it arrived at (a local sender's lxc veth, the
 *   underlay, the tunnel device). It skips the lxc veth's egress, so to_container's judgement
 *   (lib/ingress.h) is made here first.
 * - A packet from an endpoint to an endpoint of another node leaves by bpf_fib_lookup and
 *   bpf_redirect (neighbour known) or bpf_redirect_neigh (let the kernel resolve it).
 * Neither crosses the host's IP stack (routing, netfilter, the lxc veth's egress queue). Anything
 * else stays with the kernel: the node itself, other nodes' addresses, the world (masquerade is the
 * host's nftables), and a packet at its last hop (the kernel answers it). */
#ifndef PODNET_HOST_ROUTING_H
#define PODNET_HOST_ROUTING_H

#ifndef PODNET_HOST_ROUTING
#define PODNET_HOST_ROUTING 0
#endif

#if PODNET_HOST_ROUTING

#define PN_AF_INET 2
#define PN_AF_INET6 10
#define ID_HEALTH 4
/* Cluster-local identities live below bit 24; CIDR identities have it set (docs/datapath.md). */
#define ID_LOCAL_SCOPE (1 << 24)
#define IP4_TTL_OFF (ETH_HLEN + 8)
#define IP4_CSUM_OFF (ETH_HLEN + 10)
#define IP6_HOPLIMIT_OFF (ETH_HLEN + 7)

/* bcc 0.26 declares bpf_redirect_neigh as (ifindex, params, flags), a draft of the helper; the
 * kernel's takes the length of params before the flags. */
static long (*pn_redirect_neigh)(__u32 ifindex, struct bpf_redir_neigh *params, int plen, __u64 flags) =
	(void *)BPF_FUNC_redirect_neigh;

/* An endpoint's address (any node's, health endpoints included): the traffic host routing takes. */
static __always_inline int routed_identity(__u32 identity)
{
	return identity == ID_HEALTH || (identity >= 256 && identity < ID_LOCAL_SCOPE);
}

/* The TTL / hop limit, or 0 when the header can't be read. */
static __always_inline __u8 hops_left(struct __sk_buff *skb, __u8 family)
{
	__u8 hops = 0;

	bpf_skb_load_bytes(skb, family == FAMILY_V4 ? IP4_TTL_OFF : IP6_HOPLIMIT_OFF, &hops, 1);
	return hops;
}

/* What the kernel's forwarding does to the header: one hop less (hops > 1, checked first). */
static __always_inline void hop_decrement(struct __sk_buff *skb, __u8 family, __u8 hops)
{
	__u8 left = hops - 1;

	if (family == FAMILY_V4) {
		bpf_l3_csum_replace(skb, IP4_CSUM_OFF, bpf_htons((__u16)hops << 8), bpf_htons((__u16)left << 8), 2);
		bpf_skb_store_bytes(skb, IP4_TTL_OFF, &left, 1, 0);
	} else {
		bpf_skb_store_bytes(skb, IP6_HOPLIMIT_OFF, &left, 1, 0);
	}
}

static __always_inline int mac_is_zero(const __u8 *mac)
{
	return !(mac[0] | mac[1] | mac[2] | mac[3] | mac[4] | mac[5]);
}

/* Deliver to an endpoint of this node: its ingress judgement, then into its namespace.
 * identity: the source's when known (ID_UNKNOWN: the ipcache's). */
static __always_inline int to_local_endpoint(struct __sk_buff *skb, const struct flow *f,
					     const struct endpoint_value *ep, __u32 identity)
{
	__u8 hops = hops_left(skb, f->family);
	int verdict;

	if (hops <= 1)
		return TC_ACT_OK;
	verdict = endpoint_ingress(skb, f, ep, identity);
	if (verdict != TC_ACT_OK)
		return verdict;
	hop_decrement(skb, f->family, hops);
	/* The frame as the lxc veth would have sent it (when the endpoint's MAC is known: the kernel
	 * already took the packet as addressed to this host, the peer does not look again). */
	if (!mac_is_zero(ep->mac)) {
		bpf_skb_store_bytes(skb, 0, (void *)ep->mac, 6, 0);
		bpf_skb_store_bytes(skb, 6, (void *)ep->node_mac, 6, 0);
	}
	/* The identity mark is for to_container, which this path skips: it does not enter the pod. */
	if ((skb->mark & MARK_MAGIC_MASK) == MARK_MAGIC_IDENTITY)
		skb->mark = 0;
	return bpf_redirect_peer(ep->ifindex, 0);
}

/* From an endpoint to an endpoint elsewhere: the kernel's FIB says where, the packet goes there
 * without the host stack. */
static __always_inline int to_remote_endpoint(struct __sk_buff *skb, const struct flow *f)
{
	struct bpf_fib_lookup p = {};
	struct bpf_redir_neigh nh = {};
	struct ipcache_value *dst = ipcache_lookup(f->family, f->daddr);
	__u8 hops;
	long rc;

	if (!dst || !routed_identity(dst->identity))
		return TC_ACT_OK;
	hops = hops_left(skb, f->family);
	if (hops <= 1)
		return TC_ACT_OK;
	p.ifindex = skb->ingress_ifindex;
	p.l4_protocol = f->protocol;
	if (f->protocol == IPPROTO_TCP || f->protocol == IPPROTO_UDP || f->protocol == IPPROTO_SCTP) {
		p.sport = f->sport;
		p.dport = f->dport;
	}
	/* tot_len 0: no MTU check (a GSO packet is longer than the MTU; the endpoint's MTU already
	 * fits the path). */
	p.tot_len = 0;
	if (f->family == FAMILY_V4) {
		p.family = PN_AF_INET;
		__builtin_memcpy(&p.ipv4_src, f->saddr, 4);
		__builtin_memcpy(&p.ipv4_dst, f->daddr, 4);
	} else {
		p.family = PN_AF_INET6;
		__builtin_memcpy(p.ipv6_src, f->saddr, 16);
		__builtin_memcpy(p.ipv6_dst, f->daddr, 16);
	}
	rc = bpf_fib_lookup(skb, &p, sizeof(p), 0);
	if (rc == BPF_FIB_LKUP_RET_SUCCESS) {
		hop_decrement(skb, f->family, hops);
		bpf_skb_store_bytes(skb, 0, p.dmac, 6, 0);
		bpf_skb_store_bytes(skb, 6, p.smac, 6, 0);
		return bpf_redirect(p.ifindex, 0);
	}
	if (rc == BPF_FIB_LKUP_RET_NO_NEIGH) {
		/* The lookup left the next hop in p's destination. */
		nh.nh_family = p.family;
		if (f->family == FAMILY_V4)
			nh.ipv4_nh = p.ipv4_dst;
		else
			__builtin_memcpy(nh.ipv6_nh, p.ipv6_dst, 16);
		hop_decrement(skb, f->family, hops);
		return pn_redirect_neigh(p.ifindex, &nh, sizeof(nh), 0);
	}
	return TC_ACT_OK;
}

#endif /* PODNET_HOST_ROUTING */
#endif
