/* SPDX-License-Identifier: GPL-2.0-or-later */
/* Per-endpoint policy: two LPM lookups, the peer's identity and the wildcard identity 0. A deny
 * from either wins, then an allow from either (the lower rule number when both say so); nothing
 * matched means "no verdict" and the caller applies the endpoint's default (deny once a rule
 * selects it in that direction). The controller emits entries so that within one identity the
 * longest match is already right. */
#ifndef PODNET_POLICY_H
#define PODNET_POLICY_H

static __always_inline __u8 policy_verdict(__u16 ep_id, __u8 direction, __u32 identity,
					   const struct flow *f, __u16 *rule_id)
{
	struct policy_key key = {};
	struct policy_value *peer, *any;
	__u8 pv, av, verdict;
	__u16 rule;

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

	pv = peer ? peer->verdict : VERDICT_NONE;
	av = any ? any->verdict : VERDICT_NONE;
	if (pv == VERDICT_DENY || av == VERDICT_DENY)
		verdict = VERDICT_DENY;
	else if (pv == VERDICT_ALLOW || av == VERDICT_ALLOW)
		verdict = VERDICT_ALLOW;
	else
		verdict = VERDICT_NONE;
	/* When both lookups give the verdict, the lower rule number is reported (the controller's
	 * model reports the first rule of the winning kind). */
	rule = 0xFFFF;
	if (verdict != VERDICT_NONE && pv == verdict)
		rule = peer->rule_id;
	if (verdict != VERDICT_NONE && av == verdict && any->rule_id < rule)
		rule = any->rule_id;
	*rule_id = verdict == VERDICT_NONE ? 0 : rule;
	return verdict;
}

#endif
