/* SPDX-License-Identifier: GPL-2.0-or-later */
/* An endpoint's ingress judgement: what to_container decides for a packet delivered to the
 * endpoint, and what the host-routing paths (lib/host_routing.h) decide before they deliver around
 * to_container. One copy, so policy, conntrack and the counters are the same on either path. */
#ifndef PODNET_INGRESS_H
#define PODNET_INGRESS_H

/* identity: the source's, when the caller knows it (the sending endpoint's own, or the one
 * from_netdev/from_overlay carried in the mark); ID_UNKNOWN looks it up in the ipcache, and only
 * when a policy decision needs it. TC_ACT_OK (counted forwarded) or TC_ACT_SHOT (counted drop). */
static __always_inline int endpoint_ingress(struct __sk_buff *skb, const struct flow *f,
					    const struct endpoint_value *ep, __u32 identity)
{
	__u16 rule_id = 0;
	__u8 verdict;

	if (ct_established(f, DIR_INGRESS) || ct_related(f))
		return pass(skb, DIR_INGRESS);

	if (ep->flags & EP_ENFORCE_INGRESS) {
		if (identity == ID_UNKNOWN)
			identity = identity_of(f->family, f->saddr);
		verdict = policy_verdict(ep->ep_id, DIR_INGRESS, identity, f, &rule_id);
		if (verdict == VERDICT_DENY)
			return drop(skb, REASON_POLICY_DENIED, DIR_INGRESS, rule_id);
		if (verdict != VERDICT_ALLOW)
			return drop(skb, REASON_POLICY_DEFAULT_DENY, DIR_INGRESS, 0);
	}
	ct_create(f, DIR_INGRESS, rule_id);
	return pass(skb, DIR_INGRESS);
}

#endif
