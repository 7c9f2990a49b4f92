/* SPDX-License-Identifier: GPL-2.0-or-later */
/* Packet counters by reason, direction (the endpoint's view) and rule: what `bpf_info` reports as
 * "why was this dropped". */
#ifndef PODNET_METRICS_H
#define PODNET_METRICS_H

#define REASON_FORWARDED 0
#define REASON_INVALID_SOURCE 130
#define REASON_POLICY_DENIED 131
#define REASON_POLICY_DEFAULT_DENY 132
#define REASON_NO_ENTRY 133
#define REASON_UNSUPPORTED 134

static __always_inline void count(struct __sk_buff *skb, __u8 reason, __u8 direction, __u16 rule_id)
{
	struct metrics_key key = {.reason = reason, .direction = direction, .rule_id = rule_id};
	struct metrics_value zero = {};
	struct metrics_value *v;

	v = pn_metrics.lookup_or_try_init(&key, &zero);
	if (v) {
		/* Per-CPU values: no other CPU writes this one. */
		v->packets += 1;
		v->bytes += skb->len;
	}
}

static __always_inline int drop(struct __sk_buff *skb, __u8 reason, __u8 direction, __u16 rule_id)
{
	count(skb, reason, direction, rule_id);
	return TC_ACT_SHOT;
}

static __always_inline int pass(struct __sk_buff *skb, __u8 direction)
{
	count(skb, REASON_FORWARDED, direction, 0);
	return TC_ACT_OK;
}

#endif
