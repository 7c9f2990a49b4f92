/* SPDX-License-Identifier: GPL-2.0-or-later */
/* The underlay device: from_netdev at its tc ingress, to_netdev at its tc egress. */
#include "lib/common.h"
#include "lib/maps.h"
#include "lib/metrics.h"
#include "lib/ipcache.h"

/* A packet from outside the node to one of its endpoints: look up the source's identity in the
 * ipcache once, here, and carry it to to_container in skb->mark. Anything else (the node's own
 * traffic, traffic routed through) is not the datapath's to judge. */
int from_netdev(struct __sk_buff *skb)
{
	struct flow f = {};

	if (parse_flow(skb, &f) != PARSE_OK)
		return TC_ACT_OK;
	if (!endpoint_lookup(f.family, f.daddr))
		return TC_ACT_OK;
	skb->mark = identity_mark(identity_of(f.family, f.saddr));
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
