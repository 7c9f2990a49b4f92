/* SPDX-License-Identifier: GPL-2.0-or-later */
/* The pinned maps of the datapath contract (the controller and the node agree on these layouts);
 * plugins/module_utils/bpf_maps.py is the one Python copy of them, and the loader checks each
 * pinned map's type and sizes against it before and after a compile.
 *
 * bcc reuses a map that is already pinned without comparing its definition, so a layout change
 * must come with a new version suffix in the pin name (and in bpf_maps.py).
 */
#ifndef PODNET_MAPS_H
#define PODNET_MAPS_H

#define PIN(name) PODNET_PIN_ROOT "/" name

#define IPCACHE_LOCAL 0x1          /* ipcache value flags: the address is an endpoint of this node */
#define EP_ENFORCE_INGRESS 0x1     /* endpoints value flags */
#define EP_ENFORCE_EGRESS 0x2

struct ipcache_key {
	__u32 prefixlen;           /* counts from `family`: 32 + the address bits */
	__u8 family;
	__u8 pad[3];
	__u8 addr[16];
};

struct ipcache_value {
	__u32 identity;
	__be32 tunnel_endpoint;    /* 0: the address is local or reached natively */
	__u8 flags;
	__u8 pad[3];
};

struct endpoint_key {
	__u8 family;
	__u8 pad[3];
	__u8 addr[16];
};

struct endpoint_value {
	__u32 ifindex;             /* the host side of the endpoint's lxc veth */
	__u16 ep_id;
	__u8 flags;
	__u8 pad;
	__u32 identity;
	__u8 mac[6];
	__u8 node_mac[6];
};

/* Packed: the LPM prefix runs over consecutive bytes, ep_id .. identity (64 bits), protocol (+8),
 * dport (+16). Natural alignment would put a hole between protocol and dport. */
struct policy_key {
	__u32 prefixlen;
	__u16 ep_id;
	__u8 direction;
	__u8 pad;
	__u32 identity;            /* 0 = any peer */
	__u8 protocol;             /* 0 = any */
	__be16 dport;              /* ICMP: type << 8 */
	__u8 pad2;
} __attribute__((packed));

#define POLICY_PREFIX_FULL 88

struct policy_value {
	__u8 verdict;
	__u8 pad;
	__u16 rule_id;             /* 1-based rule index in podnet_policy.rules; 0 = not from a rule */
};

#define VERDICT_NONE 0
#define VERDICT_ALLOW 1
#define VERDICT_DENY 2

struct ct_key {
	__u8 family;
	__u8 protocol;
	__be16 sport;
	__be16 dport;
	__u8 direction;            /* whose policy created the entry: DIR_INGRESS or DIR_EGRESS */
	__u8 pad;
	__u8 saddr[16];
	__u8 daddr[16];
};

struct ct_value {
	__u64 created_ns;
	__u64 last_seen_ns;
	__u32 flags;
	__u32 rule_id;
};

struct metrics_key {
	__u8 reason;
	__u8 direction;
	__u16 rule_id;
};

struct metrics_value {
	__u64 packets;
	__u64 bytes;
};

BPF_TABLE_PINNED("lpm_trie", struct ipcache_key, struct ipcache_value, pn_ipcache, 65536,
		 PIN("podnet_ipcache_v1"), BPF_F_NO_PREALLOC);
BPF_TABLE_PINNED("hash", struct endpoint_key, struct endpoint_value, pn_endpoints, 4096,
		 PIN("podnet_endpoints_v1"));
BPF_TABLE_PINNED("lpm_trie", struct policy_key, struct policy_value, pn_policy, 65536,
		 PIN("podnet_policy_v1"), BPF_F_NO_PREALLOC);
BPF_TABLE_PINNED("lru_hash", struct ct_key, struct ct_value, pn_ct, 65536, PIN("podnet_ct_v1"));
BPF_TABLE_PINNED("percpu_hash", struct metrics_key, struct metrics_value, pn_metrics, 4096,
		 PIN("podnet_metrics_v1"));

#endif
