/* SPDX-License-Identifier: GPL-2.0-or-later */
/* Per-endpoint policy: two LPM lookups, the peer's identity and the wildcard identity 0. A deny
 * from either wins, then an allow from either; nothing matched means "no verdict" and the caller
 * applies the endpoint's default (deny once a rule selects it in that direction). The controller
 * emits entries so that within one identity the longest match is already right. */
#ifndef PODNET_POLICY_H
#define PODNET_POLICY_H

static __always_inline __u8 policy_verdict(__u16 ep_id, __u8 direction, __u32 identity,
					   const struct flow *f, __u16 *rule_id)
{
	struct policy_key key = {};
	struct policy_value *peer, *any;

	key.prefixlen = POLICY_PREFIX_FULL;
	key.ep_id = ep_id;
	key.direction = direction;
	key.identity = identity;
	key.protocol = f->protocol;
	if (is_icmp(f->family, f->protocol))
		key.dport = bpf_htons((__u16)f->icmp_type << 8);
	else if (f->has_ports)
		key.dport = f->dport;
	peer = pn_policy.lookup(&key);
	key.identity = 0;
	any = pn_policy.lookup(&key);

	if (peer && peer->verdict == VERDICT_DENY) {
		*rule_id = peer->rule_id;
		return VERDICT_DENY;
	}
	if (any && any->verdict == VERDICT_DENY) {
		*rule_id = any->rule_id;
		return VERDICT_DENY;
	}
	if (peer && peer->verdict == VERDICT_ALLOW) {
		*rule_id = peer->rule_id;
		return VERDICT_ALLOW;
	}
	if (any && any->verdict == VERDICT_ALLOW) {
		*rule_id = any->rule_id;
		return VERDICT_ALLOW;
	}
	*rule_id = 0;
	return VERDICT_NONE;
}

#endif
