# -*- coding: utf-8 -*-
# Copyright: podnet.fabric contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The node's lease (what /var/lib/podnet/ipam/lease.json holds) and what follows from it: the
router IPs the host device holds, the pool an endpoint's IP comes from, the node map routing
reads, and the lease checks that restore an unreadable one from the ledger. Pure. Nodes use it
(ipam_node, ipam_endpoint, ipam_node_info); the controller builds leases and the node map with it.
"""
from __future__ import absolute_import, division, print_function

__metaclass__ = type

from ansible_collections.podnet.fabric.plugins.module_utils.ipam.cidr import (
    DEFAULT_POOL, ENDPOINT_POOL_LABEL, FAMILIES, IpamError, NODE_POOLS_LABEL, natural_key, router_ip)


def node_lease(doc, node, mode=None):
    """The lease a node keeps in /var/lib/podnet/ipam/lease.json, from the ledger's entry.

    mode: the IPAM mode, recorded in the lease (when given) so that the node's endpoint
    allocation knows whether to use the node's cidrs or its multi-pool pools."""
    entry = (doc.get('nodes') or {}).get(node)
    if entry is None:
        return None
    lease = {'cluster': doc.get('cluster'), 'node': node, 'ip': entry.get('ip'),
             'cidrs': {fam: list((entry.get('cidrs') or {}).get(fam) or []) for fam in FAMILIES},
             'pools': dict((p, {fam: list((v or {}).get(fam) or []) for fam in FAMILIES})
                           for p, v in (entry.get('pools') or {}).items()),
             'allocated_at': entry.get('allocated_at', 0)}
    if mode is not None:
        lease['mode'] = mode
    return lease


def pools_used_record(usage):
    """A node's endpoint use ({pool: {family: count}}, as store_usage returns it) as the ledger
    records it in the entry's pools_used: non-zero int counts only; {} when nothing is in use."""
    out = {}
    for pool, fams in sorted((usage or {}).items()):
        nz = dict((f, int(n)) for f, n in sorted((fams or {}).items()) if int(n) > 0)
        if nz:
            out[pool] = nz
    return out


def lease_problem(lease):
    """None when `lease` (a parsed lease file) has a lease's shape, else what is wrong with it."""
    if not isinstance(lease, dict):
        why = 'a JSON %s, not an object' % type(lease).__name__
    elif 'node' not in lease or 'cidrs' not in lease:
        why = 'no %s key' % ('node' if 'node' not in lease else 'cidrs')
    elif not isinstance(lease['cidrs'], dict) or not isinstance(lease.get('pools') or {}, dict):
        why = 'cidrs and pools must be objects'
    else:
        return None
    return 'not a lease (%s)' % why


LEASE_RESTORE_HINT = ('playbooks/site.yml restores the lease from the ledger (the ipam role keeps the bad file '
                      'beside it)')


def plan_lease(desired, stored, path, aside=None):
    """Pure: the actions that make the node's lease file `desired` (None: no file).

    stored: {'lease': the stored lease or None, 'unreadable': what is wrong with the file, when it
    is there but not a lease}. An unreadable file is kept aside (as `aside`) before the ledger's
    lease is written over it; a readable one is simply replaced."""
    bad = stored.get('unreadable')
    if desired is None:
        return [{'action': 'remove', 'path': path}] if stored.get('lease') is not None or bad else []
    if not bad and desired == stored.get('lease'):
        return []
    actions = []
    if bad:
        actions.append({'action': 'keep_aside', 'path': path, 'to': aside, 'error': bad})
    actions.append({'action': 'write', 'path': path})
    return actions


def _holdings(lease):
    """What a lease claims, for comparisons: node, cluster and every CIDR by family and pool."""
    lease = lease or {}
    return {'node': lease.get('node'), 'cluster': lease.get('cluster'),
            'cidrs': dict((f, list((lease.get('cidrs') or {}).get(f) or [])) for f in FAMILIES),
            'pools': dict((p, dict((f, list((v or {}).get(f) or [])) for f in FAMILIES))
                          for p, v in sorted((lease.get('pools') or {}).items()))}


def _flat(holdings):
    """Every CIDR of _holdings() as text, pool blocks as pool:CIDR, sorted."""
    return sorted(c for fam in FAMILIES for c in holdings['cidrs'][fam]) + sorted(
        '%s:%s' % (p, c) for p, v in holdings['pools'].items() for fam in FAMILIES for c in v[fam])


def lease_disagreement(stored, desired):
    """A short text when the node's stored lease claims other CIDRs (or another node or cluster)
    than the ledger's lease although the ledger has not reallocated since the stored one was
    written (its allocated_at is not newer): the node's copy drifted. None when they agree or
    when the ledger legitimately changed the allocation (prune, multi-pool growth, new pod CIDRs)."""
    if stored is None or desired is None or lease_problem(stored):
        return None
    if desired.get('mode') == 'eni':
        return None   # the node's ENI addresses follow EC2 (eni_allocate), not a ledger allocation
    have, want = _holdings(stored), _holdings(desired)
    if have == want:
        return None
    try:
        newer = int(desired.get('allocated_at') or 0) > int(stored.get('allocated_at') or 0)
    except (TypeError, ValueError):
        newer = False
    if newer:
        return None
    parts = []
    for key in ('node', 'cluster'):
        if have[key] != want[key]:
            parts.append('%s %s -> %s' % (key, have[key], want[key]))
    if _flat(have) != _flat(want):
        parts.append('CIDRs %s -> %s' % (', '.join(_flat(have)) or 'none', ', '.join(_flat(want)) or 'none'))
    return '; '.join(parts) or 'pool layout differs'


def mode_pool(mode):
    """The pool name endpoint IPs are counted under outside multi-pool mode (as the report names
    it): 'default' for cluster-pool, else the mode's name ('kubernetes', 'crd', 'eni')."""
    return mode if mode in ('kubernetes', 'crd', 'eni') else DEFAULT_POOL


def lease_cidrs(lease):
    """{family: [cidr, ...]}: every CIDR the lease holds (its cidrs, then its pools' blocks in
    pool-name order), each once."""
    out = dict((fam, []) for fam in FAMILIES)
    lease = lease or {}
    sources = [lease.get('cidrs') or {}]
    sources.extend((lease.get('pools') or {})[p] or {} for p in sorted(lease.get('pools') or {}))
    for src in sources:
        for fam in FAMILIES:
            for c in src.get(fam) or ():
                if c not in out[fam]:
                    out[fam].append(c)
    return out


def node_map(doc):
    """Every node of the ledger as routing needs it: {node: {'node_ip', 'pod_cidrs': {family: [...]}}}.

    The ledger, not the inventory of one run, is the cluster: a run limited to some nodes (or
    one AWX slice) still routes to all of them; a node leaves the map when it is pruned."""
    out = {}
    for node in sorted(doc.get('nodes') or {}, key=natural_key):
        lease = node_lease(doc, node)
        out[node] = {'node_ip': lease['ip'], 'pod_cidrs': lease_cidrs(lease)}
    return out


def cluster_pod_cidrs(nodes):
    """Every pod CIDR of a node map (node_map), by family, each once, sorted as text: what the
    masquerade leaves alone when neither a native-routing CIDR nor the cluster pool bounds the pods.
    The controller builds it once per run; derived on each node from the map, it cost every node a
    walk of the whole map."""
    return dict((fam, sorted(set(c for entry in nodes.values() for c in entry['pod_cidrs'].get(fam) or ())))
                for fam in FAMILIES)


def lease_router_ips(lease):
    """The router IPs of every CIDR of the lease (IPv4 first); single addresses have none, and an
    eni lease none at all: its addresses are the VPC's, routed by the ENIs (the eni role), and a
    /28 delegated prefix's first address is a pod's, not a router's."""
    if (lease or {}).get('mode') == 'eni':
        return []
    out = []
    cidrs = lease_cidrs(lease)
    for fam in FAMILIES:
        for c in cidrs[fam]:
            ip = router_ip(c)
            if ip is not None and ip not in out:
                out.append(ip)
    return out


def endpoint_source(lease, labels=None):
    """(pool, {family: [cidr, ...]}) an endpoint allocates from, given the node's lease and the
    endpoint's labels. multi-pool: the pool named by the label ``ipam.podnet.io/ip-pool``
    (else 'default'), which the node must hold blocks of; other modes: the node's cidrs, under
    mode_pool(mode); the pool label is an error there unless it names that pool."""
    lease = lease or {}
    mode = lease.get('mode') or ('multi-pool' if lease.get('pools') else 'cluster-pool')
    label = (labels or {}).get(ENDPOINT_POOL_LABEL)
    if mode == 'multi-pool':
        pool = label or DEFAULT_POOL
        held = (lease.get('pools') or {}).get(pool)
        if not held or not any(held.get(fam) for fam in FAMILIES):
            have = sorted(p for p, v in (lease.get('pools') or {}).items()
                          if any((v or {}).get(f) for f in FAMILIES))
            raise IpamError("pool '%s': node %s holds no blocks of it (it holds: %s); a node serves a "
                            "pool when the pool has pre_allocation or the node's label %s names it"
                            % (pool, lease.get('node'), ', '.join(have) or 'none', NODE_POOLS_LABEL))
        return pool, dict((fam, list(held.get(fam) or [])) for fam in FAMILIES)
    pool = mode_pool(mode)
    if label and label != pool:
        raise IpamError("labels.%s: %r needs podnet_ipam.mode multi-pool (this node's mode is %s)"
                        % (ENDPOINT_POOL_LABEL, label, mode))
    cidrs = lease.get('cidrs') or {}
    return pool, dict((fam, list(cidrs.get(fam) or [])) for fam in FAMILIES)
