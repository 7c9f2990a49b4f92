/* SPDX-License-Identifier: GPL-2.0-or-later */
/* Connection tracking. An entry is keyed by the flow's tuple as first seen plus the direction
 * whose policy admitted it (an endpoint's egress in from_container, its ingress in to_container),
 * so one side's egress verdict is never taken for the other side's ingress verdict.
 *
 * A packet passes without a policy check when
 *  - its own tuple has an entry for this direction (the connection's later packets), or
 *  - its reversed tuple has an entry for the other direction (a reply).
 * Entries expire CT_LIFETIME_* seconds after their last packet; the LRU map bounds their number.
 */
#ifndef PODNET_CONNTRACK_H
#define PODNET_CONNTRACK_H

#define CT_NSEC_PER_SEC 1000000000ULL

static __always_inline void ct_fill(struct ct_key *key, const struct flow *f, __u8 direction, int reversed)
{
	key->family = f->family;
	key->protocol = f->protocol;
	key->direction = direction;
	if (reversed) {
		key->sport = f->dport;
		key->dport = f->sport;
		__builtin_memcpy(key->saddr, f->daddr, 16);
		__builtin_memcpy(key->daddr, f->saddr, 16);
	} else {
		key->sport = f->sport;
		key->dport = f->dport;
		__builtin_memcpy(key->saddr, f->saddr, 16);
		__builtin_memcpy(key->daddr, f->daddr, 16);
	}
}

static __always_inline __u64 ct_lifetime(__u8 protocol)
{
	return (protocol == IPPROTO_TCP ? CT_LIFETIME_TCP : CT_LIFETIME_NONTCP) * CT_NSEC_PER_SEC;
}

static __always_inline struct ct_value *ct_find(struct ct_key *key, __u64 now)
{
	struct ct_value *v = pn_ct.lookup(key);

	if (!v || now - v->last_seen_ns > ct_lifetime(key->protocol))
		return 0;
	v->last_seen_ns = now;
	return v;
}

/* Whether the packet belongs to a tracked connection, seen from `direction` of the endpoint. */
static __always_inline int ct_established(const struct flow *f, __u8 direction)
{
	struct ct_key key = {};
	__u64 now = bpf_ktime_get_ns();

	ct_fill(&key, f, direction, 0);
	if (ct_find(&key, now))
		return 1;
	__builtin_memset(&key, 0, sizeof(key));
	ct_fill(&key, f, direction == DIR_INGRESS ? DIR_EGRESS : DIR_INGRESS, 1);
	return ct_find(&key, now) != 0;
}

/* An ICMP error about a tracked connection: the packet it quotes belongs to an entry of either
 * direction, as the connection's original direction or as its reply. */
static __always_inline int ct_related(const struct flow *f)
{
	struct ct_key key = {};
	__u64 now = bpf_ktime_get_ns();
	int i;

	if (!f->icmp_error)
		return 0;
#pragma unroll
	for (i = 0; i < 4; i++) {
		int reversed = i & 1;

		__builtin_memset(&key, 0, sizeof(key));
		key.family = f->family;
		key.protocol = f->inner.protocol;
		key.direction = i >> 1;
		key.sport = reversed ? f->inner.dport : f->inner.sport;
		key.dport = reversed ? f->inner.sport : f->inner.dport;
		__builtin_memcpy(key.saddr, reversed ? f->inner.daddr : f->inner.saddr, 16);
		__builtin_memcpy(key.daddr, reversed ? f->inner.saddr : f->inner.daddr, 16);
		if (ct_find(&key, now))
			return 1;
	}
	return 0;
}

static __always_inline void ct_create(const struct flow *f, __u8 direction, __u16 rule_id)
{
	struct ct_key key = {};
	struct ct_value v = {};

	/* Only flows with a tuple that a reply can name: ports, or an ICMP echo identifier. Other
	 * protocols (and ICMP types other than echo) are judged by policy on every packet. */
	if (!f->has_ports)
		return;
	ct_fill(&key, f, direction, 0);
	v.created_ns = v.last_seen_ns = bpf_ktime_get_ns();
	v.rule_id = rule_id;
	pn_ct.update(&key, &v);
}

#endif
