/* SPDX-License-Identifier: GPL-2.0-or-later */
/* Address -> security identity: the cluster-wide ipcache (longest prefix wins) and the map of this
 * node's endpoints. */
#ifndef PODNET_IPCACHE_H
#define PODNET_IPCACHE_H

static __always_inline struct ipcache_value *ipcache_lookup(__u8 family, const __u8 *addr)
{
	struct ipcache_key key = {};

	key.family = family;
	key.prefixlen = 32 + (family == FAMILY_V4 ? 32 : 128);
	__builtin_memcpy(key.addr, addr, 16);
	return pn_ipcache.lookup(&key);
}

/* The identity of a peer address; an address the ipcache does not know is `world`. */
static __always_inline __u32 identity_of(__u8 family, const __u8 *addr)
{
	struct ipcache_value *v = ipcache_lookup(family, addr);

	return v ? v->identity : ID_WORLD;
}

static __always_inline struct endpoint_value *endpoint_lookup(__u8 family, const __u8 *addr)
{
	struct endpoint_key key = {};

	key.family = family;
	__builtin_memcpy(key.addr, addr, 16);
	return pn_endpoints.lookup(&key);
}

#endif
