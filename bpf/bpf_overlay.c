/* SPDX-License-Identifier: GPL-2.0-or-later */
/* The tunnel device (VXLAN): from_overlay at its tc ingress, after decapsulation. */
#include "lib/common.h"
#include "lib/maps.h"
#include "lib/metrics.h"
#include "lib/ipcache.h"

/* A decapsulated packet for one of this node's endpoints: the source's identity comes from the
 * cluster-wide ipcache (it holds every endpoint of every node, tunnel and native mode alike) and
 * travels to to_container in skb->mark. The VNI is not read: podnet's tunnel devices carry one
 * fixed VNI, not the sender's identity. */
int from_overlay(struct __sk_buff *skb)
{
	struct flow f = {};

	if (parse_flow(skb, &f) != PARSE_OK)
		return TC_ACT_OK;
	if (!endpoint_lookup(f.family, f.daddr))
		return TC_ACT_OK;
	skb->mark = identity_mark(identity_of(f.family, f.saddr));
	return TC_ACT_OK;
}
