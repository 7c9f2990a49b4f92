/* SPDX-License-Identifier: GPL-2.0-or-later */
/* The tunnel device (VXLAN): from_overlay at its tc ingress, after decapsulation. */
#include "lib/common.h"
#include "lib/maps.h"
#include "lib/metrics.h"
#include "lib/ipcache.h"
#include "lib/policy.h"
#include "lib/conntrack.h"
#include "lib/ingress.h"
#include "lib/host_routing.h"

/* A decapsulated packet for one of this node's endpoints: the source's identity comes from the
 * cluster-wide ipcache (it holds every endpoint of every node, tunnel and native mode alike) and
 * travels to to_container in skb->mark. The VNI is not read: podnet's tunnel devices carry one
 * fixed VNI, not the sender's identity. */
int from_overlay(struct __sk_buff *skb)
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
