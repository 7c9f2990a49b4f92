/* SPDX-License-Identifier: GPL-2.0-or-later */
/* The endpoint's host-side veth (lxc*): from_container at its tc ingress (packets the endpoint
 * sends), to_container at its tc egress (packets delivered to the endpoint). Compiled once per
 * node: the endpoint is found in the maps by address, never by a per-endpoint #define. */
#include "lib/common.h"
#include "lib/maps.h"
#include "lib/metrics.h"
#include "lib/ipcache.h"
#include "lib/policy.h"
#include "lib/conntrack.h"
#include "lib/ingress.h"
#include "lib/host_routing.h"

/* A packet the endpoint's egress allowed: counted forwarded, then to the kernel, or with host
 * routing to a local endpoint's namespace or out of the node toward a remote one. */
static __always_inline int forward(struct __sk_buff *skb, const struct flow *f, const struct endpoint_value *src)
{
	int verdict = pass(skb, DIR_EGRESS);
#if PODNET_HOST_ROUTING
	struct endpoint_value *dst = endpoint_lookup(f->family, f->daddr);

	if (dst)
		return to_local_endpoint(skb, f, dst, src->identity);
	return to_remote_endpoint(skb, f);
#endif
	return verdict;
}

/* Egress of the endpoint: anti-spoofing, conntrack, egress policy; with host routing, the packet
 * then goes to its destination endpoint directly (lib/host_routing.h). */
int from_container(struct __sk_buff *skb)
{
	struct flow f = {};
	struct endpoint_value *ep;
	__u16 rule_id = 0;
	__u8 verdict;
	int parsed;

	parsed = parse_flow(skb, &f);
	if (parsed == PARSE_PASS)
		return TC_ACT_OK;
	if (parsed != PARSE_OK)
		return drop(skb, REASON_UNSUPPORTED, DIR_EGRESS, 0);

	/* The source must be one of this endpoint's own addresses: an address of the endpoints map
	 * that belongs to the veth the packet came in on. */
	ep = endpoint_lookup(f.family, f.saddr);
	if (!ep || ep->ifindex != skb->ingress_ifindex)
		return drop(skb, REASON_INVALID_SOURCE, DIR_EGRESS, 0);

	if (ct_established(&f, DIR_EGRESS) || ct_related(&f))
		return forward(skb, &f, ep);

	if (ep->flags & EP_ENFORCE_EGRESS) {
		verdict = policy_verdict(ep->ep_id, DIR_EGRESS, identity_of(f.family, f.daddr), &f, &rule_id);
		if (verdict == VERDICT_DENY)
			return drop(skb, REASON_POLICY_DENIED, DIR_EGRESS, rule_id);
		if (verdict != VERDICT_ALLOW)
			return drop(skb, REASON_POLICY_DEFAULT_DENY, DIR_EGRESS, 0);
	}
	/* Tracked whether or not the egress is enforced: the peer's replies must find the entry
	 * when this endpoint enforces its ingress. */
	ct_create(&f, DIR_EGRESS, rule_id);
	return forward(skb, &f, ep);
}

/* Ingress of the endpoint: ingress policy by the source's identity; replies pass by conntrack.
 * Packets host routing delivers were judged the same way where they were redirected. */
int to_container(struct __sk_buff *skb)
{
	struct flow f = {};
	struct endpoint_value *ep;
	int parsed;

	parsed = parse_flow(skb, &f);
	if (parsed == PARSE_PASS)
		return TC_ACT_OK;
	if (parsed != PARSE_OK)
		return drop(skb, REASON_UNSUPPORTED, DIR_INGRESS, 0);

	ep = endpoint_lookup(f.family, f.daddr);
	if (!ep)
		return drop(skb, REASON_NO_ENTRY, DIR_INGRESS, 0);
	/* The identity from_netdev/from_overlay carried when the packet came from outside the node;
	 * otherwise endpoint_ingress looks the source up. */
	return endpoint_ingress(skb, &f, ep, mark_identity(skb->mark));
}
