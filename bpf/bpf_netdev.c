/* SPDX-License-Identifier: GPL-2.0-or-later */
/* The underlay device: from_netdev at its tc ingress, to_netdev at its tc egress. */
#include "lib/common.h"
#include "lib/maps.h"
#include "lib/metrics.h"
#include "lib/ipcache.h"
#include "lib/policy.h"
#include "lib/conntrack.h"
#include "lib/ingress.h"
#include "lib/host_routing.h"

/* A packet from outside the node to one of its endpoints: look up the source's identity in the
 * ipcache once, here, and carry it to to_container in skb->mark. Anything else (the node's own
 * traffic, traffic routed through) is not the datapath's to judge. */
int from_netdev(struct __sk_buff *skb)
{
	struct flow f = {};
	struct endpoint_value *ep;
	__u32 identity;

	if (parse_flow(skb, &f) != PARSE_OK)
		return TC_ACT_OK;
	ep = endpoint_lookup(f.family, f.daddr);
	if (!ep)
		return TC_ACT_OK;
	identity = identity_of(f.family, f.saddr);
	skb->mark = identity_mark(identity);
#if PODNET_HOST_ROUTING
	/* Judged and delivered here (to_container is skipped), or left to the kernel with the mark. */
	return to_local_endpoint(skb, &f, ep, identity);
#endif
	return TC_ACT_OK;
}

/* An identity mark is only meaningful inside the node: a packet leaving on the underlay (routed
 * through, or looped back out) sheds it, so no later hook on another device reads a stale one. */
int to_netdev(struct __sk_buff *skb)
{
	if ((skb->mark & MARK_MAGIC_MASK) == MARK_MAGIC_IDENTITY)
		skb->mark = 0;
	return TC_ACT_OK;
}
