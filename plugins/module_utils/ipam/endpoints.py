# -*- coding: utf-8 -*-
# Copyright: podnet.fabric contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The node's endpoint-IP store (/var/lib/podnet/ipam/endpoints.json): an address per endpoint
and family from the node's CIDRs or pool, released and reused, and the use the controller records.
Pure; ipam_endpoint reads and writes the file. The store's 'used' mirrors CiliumNode
status.ipam.used."""
from __future__ import absolute_import, division, print_function

__metaclass__ = type

import ipaddress

from ansible_collections.podnet.fabric.plugins.module_utils.ipam.cidr import (
    DEFAULT_POOL, FAMILIES, IpamError, count_of, fmt_addr, fmt_cidr, parse_cidr, prefix_size,
    usable_addresses)
from ansible_collections.podnet.fabric.plugins.module_utils.ipfamily import family_of


def store_usage(store):
    """{pool: {family: count}} of the endpoint addresses a node's store holds (non-zero only);
    the controller records it as the ledger entry's pools_used."""
    out = {}
    for ip, rec in ((store or {}).get('used') or {}).items():
        pool = (rec or {}).get('pool') or DEFAULT_POOL
        fams = out.setdefault(pool, {})
        fam = family_of(ip)
        fams[fam] = fams.get(fam, 0) + 1
    return out


def store_crd_used(store):
    """The store as CiliumNode-style status.ipam.used: {ip: {'owner': endpoint}}."""
    return dict((ip, {'owner': (rec or {}).get('owner')}) for ip, rec in ((store or {}).get('used') or {}).items())


def empty_store():
    """The node's persistent endpoint-IP store; 'used' mirrors CiliumNode status.ipam.used."""
    return {'version': 1, 'used': {}}


def _blocks_of(cidrs_or_pool, family):
    if isinstance(cidrs_or_pool, dict):
        texts = list(cidrs_or_pool)        # a CRD pool: {IP-or-CIDR: {}}
    elif isinstance(cidrs_or_pool, str):
        texts = [cidrs_or_pool]
    else:
        texts = list(cidrs_or_pool or [])
    out = []
    for t in texts:
        fam, start, plen = parse_cidr(t, 'endpoint pool')
        if fam == family:
            out.append((start, plen, fmt_cidr(fam, start, plen)))
    return sorted(out)


def _host_range(family, start, plen):
    """[first, last] endpoint addresses of a block (see usable_addresses)."""
    size = prefix_size(family, plen)
    if size == 1:
        return start, start
    last = start + size - 1
    if family == 'ipv4':
        last -= 1              # broadcast
    return start + 2, last     # skip the network address and the router IP


def plan_endpoint_ip(store, cidrs_or_pool, endpoint_id, family, pool=None):
    """Pick the lowest free endpoint address of `family` from the node's CIDRs or a pool.

    cidrs_or_pool: a list of CIDR/IP texts (the node's cidrs or one multi-pool pool's blocks) or
    a CRD pool dict {IP-or-CIDR: {}}. Idempotent: an endpoint that already holds an address of
    this family (and pool) gets it back unchanged. Returns (new_store, ip); store is not mutated.

    An address the endpoint holds that is no longer inside the node's CIDRs (the node's lease
    changed, for example a new ledger) is stale: it is dropped and a new one allocated.
    """
    if family not in FAMILIES:
        raise IpamError('family %r is not ipv4 or ipv6' % (family,))
    store = store or empty_store()
    used = store.get('used') or {}
    blocks = _blocks_of(cidrs_or_pool, family)
    ranges = [_host_range(family, start, plen) for start, plen, _text in blocks]
    held = [ip for ip, rec in used.items()
            if rec.get('owner') == endpoint_id and family_of(ip) == family and (pool is None or rec.get('pool') == pool)]
    for ip in held:
        value = int(ipaddress.ip_address(ip))
        if any(first <= value <= last for first, last in ranges):
            return store, ip
    if held:
        used = dict((ip, rec) for ip, rec in used.items() if ip not in held)
        store = dict(store, used=used)
    label = "pool '%s'" % pool if pool else 'node CIDRs'
    if not blocks:
        raise IpamError('%s: no %s CIDRs to allocate from for endpoint %s' % (label, family, endpoint_id))
    taken = set(int(ipaddress.ip_address(ip)) for ip in used if family_of(ip) == family)
    total = in_use = 0
    for start, plen, _text in blocks:
        first, last = _host_range(family, start, plen)
        total += usable_addresses(family, plen)
        a = first
        while a <= last and a in taken:
            a += 1
        if a <= last:
            ip = fmt_addr(family, a)
            new_used = dict(used)
            rec = {'owner': endpoint_id}
            if pool:
                rec['pool'] = pool
            new_used[ip] = rec
            new_store = dict(store)
            new_store['used'] = new_used
            new_store.setdefault('version', 1)
            return new_store, ip
        in_use += sum(1 for t in taken if first <= t <= last)
    raise IpamError('%s (%s: %s) is exhausted: %d of %d in use; cannot allocate an %s address for '
                    'endpoint %s' % (label, ', '.join(b[2] for b in blocks), count_of(total, 'endpoint address', 'endpoint addresses'),
                                     in_use, total, family, endpoint_id))


def release_endpoint_ip(store, endpoint_id, family=None):
    """Release the endpoint's addresses (of one family, or all). Idempotent: releasing what is
    not held returns the store unchanged. Returns (new_store, released_ips)."""
    store = store or empty_store()
    used = store.get('used') or {}
    gone = sorted(ip for ip, rec in used.items()
                  if rec.get('owner') == endpoint_id and (family is None or family_of(ip) == family))
    if not gone:
        return store, []
    new_store = dict(store)
    new_store['used'] = dict((ip, rec) for ip, rec in used.items() if ip not in gone)
    return new_store, gone
