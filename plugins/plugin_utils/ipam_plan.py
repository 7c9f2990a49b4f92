# -*- coding: utf-8 -*-
# Copyright: podnet.fabric contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The controller's IPAM planners (DESIGN.md section 6): allocation for every mode, the ledger
rebuild and the utilization report. Pure, no I/O: callers read and write the ledger (ledger.py).
Nodes never receive this file; what they need is in module_utils/ipam/ (cidr, lease, endpoints).

Controller side
- ``plan_cluster(model, doc, run_nodes, prune=False, node_docs=None) -> (new_doc, changes)``
- ``rebuild_from_leases(model, leases, usage=None) -> doc``; ``rebuild_inputs(model, reports)``
  (what ipam_node_info reported -> leases, usage); ``plan_rebuild(current, rebuilt, force)``
  (what to write over a missing, torn or readable ledger)
- ``utilization(model, doc, node_docs=None) -> report``
- ``node_lease(doc, node, mode=None) -> lease`` (what the node stores in
  /var/lib/podnet/ipam/lease.json)

Node side
- ``lease_cidrs(lease)``, ``lease_router_ips(lease)``: what the host device holds; ``endpoint_source(lease, labels) -> (pool, {family: cidrs})``;
  ``store_usage(store)`` / ``store_crd_used(store)``: what the controller records of a node's use
- ``plan_endpoint_ip(store, cidrs_or_pool, endpoint_id, family, pool=None) -> (new_store, ip)``
- ``release_endpoint_ip(store, endpoint_id, family=None) -> (new_store, released_ips)``
- ``router_ip(cidr)``: the gateway address the host device holds for a pod CIDR.

Rules that hold in every mode
- Existing allocations never move: a node keeps its blocks whatever else joins or leaves the
  inventory. A ledger node that is no longer in the inventory keeps its blocks until a run with
  ``prune=True`` releases them; the next allocation may then reuse them.
- Allocation is lowest-free-block first, over the pool's CIDRs in the order given, and nodes
  that need blocks are served in natural name order (node2 before node10), so a run is
  deterministic whatever order Ansible lists the hosts in.
- A plan is all-or-nothing: an exhausted pool raises IpamError and the caller writes nothing.

Multi-pool: which pools a node gets blocks from
- ``default`` always (when defined); every pool whose ``pre_allocation`` is > 0; the pools named
  in the node label ``ipam.podnet.io/ip-pools`` (comma-separated), e.g. only GPU nodes carry
  ``ipam.podnet.io/ip-pools: gpu``; and any pool the node already holds blocks from.
- per pool and family the node gets enough blocks of the pool's ``mask_size`` that
  ``capacity - used >= pre_allocation[pool]`` (at least one block), where capacity counts the
  endpoint addresses of its blocks (see ``usable_addresses``) and ``used`` is what the node
  reported in ``doc['nodes'][node]['pools_used'][pool]``: an int (the same count for each
  family: a dual-stack endpoint takes one address of each) or ``{"ipv4": n, "ipv6": m}``.
  Blocks are never taken back automatically (stable), only by prune.
"""
from __future__ import absolute_import, division, print_function

__metaclass__ = type

import copy
import ipaddress

from ansible_collections.podnet.fabric.plugins.module_utils.ipam.cidr import (
    DEFAULT_POOL, FAMILIES, IpamError, MAX_BITS, NODE_POOLS_LABEL, count_of, entry_cidrs, fmt_cidr,
    natural_key, parse_cidr, prefix_size, usable_addresses)
from ansible_collections.podnet.fabric.plugins.module_utils.ipam.lease import mode_pool, pools_used_record
from ansible_collections.podnet.fabric.plugins.module_utils.ipfamily import family_of
from ansible_collections.podnet.fabric.plugins.plugin_utils import identity


# A used CIDR that covers more blocks than this is kept as a range instead of a set of indexes.
_SET_LIMIT = 4096


class _Pool:
    """One family of one pool: its CIDRs cut into blocks of mask_size, indexed 0..total-1."""

    def __init__(self, name, family, cfg):
        self.name = name
        self.family = family
        maxbits = MAX_BITS[family]
        mask = cfg.get('mask_size')
        where = "pool '%s' %s" % (name, family)
        if not isinstance(mask, int) or isinstance(mask, bool) or mask < 1:
            raise IpamError('%s: mask_size %r is not a positive integer' % (where, mask))
        if mask > maxbits:
            raise IpamError('%s: mask_size %d is larger than %s allows (%d)' % (where, mask, family, maxbits))
        if usable_addresses(family, mask) < 1 or prefix_size(family, mask) == 1:
            raise IpamError('%s: mask_size %d leaves no addresses for endpoints' % (where, mask))
        cidrs = cfg.get('cidrs') or []
        if not cidrs:
            raise IpamError('%s: no cidrs' % where)
        self.mask = mask
        self.block = prefix_size(family, mask)
        self.cidrs = []       # (start, end, first block index, block count, text)
        offset = 0
        for text in cidrs:
            fam, start, plen = parse_cidr(text, where)
            if fam != family:
                raise IpamError('%s: %s is not an %s CIDR' % (where, text, family))
            if plen > mask:
                raise IpamError('%s: %s is smaller than one mask_size %d block' % (where, text, mask))
            count = 1 << (mask - plen)
            self.cidrs.append((start, start + prefix_size(family, plen), offset, count, text))
            offset += count
        self.total = offset
        self.used = set()     # block indexes
        self.ranges = []      # [lo, hi] block index ranges (huge used CIDRs only)
        self.cursor = 0
        self.last = None      # (start, end) of the block take() returned last

    def describe(self):
        return "pool '%s' (%s, mask %d: %s)" % (
            self.name, ', '.join(c[4] for c in self.cidrs), self.mask, count_of(self.total, 'block'))

    def mark(self, start, end):
        """Mark every block that the address range [start, end) touches as used."""
        bs = self.block
        for cstart, cend, offset, _count_, _text in self.cidrs:
            lo, hi = max(start, cstart), min(end, cend)
            if lo >= hi:
                continue
            a = offset + (lo - cstart) // bs
            b = offset + (hi - 1 - cstart) // bs
            if b - a < _SET_LIMIT:
                self.used.update(range(a, b + 1))
            else:
                self.ranges.append((a, b))

    def used_count(self):
        if not self.ranges:
            return len(self.used)
        merged = []
        for a, b in sorted(self.ranges):
            if merged and a <= merged[-1][1] + 1:
                merged[-1][1] = max(merged[-1][1], b)
            else:
                merged.append([a, b])
        n = sum(b - a + 1 for a, b in merged)
        return n + sum(1 for i in self.used if not any(a <= i <= b for a, b in merged))

    def take(self):
        """The lowest free block as CIDR text, or None. The cursor only moves forward: nothing
        is released while a plan allocates (prune happens first)."""
        idx = self.cursor
        used = self.used
        ranges = self.ranges
        while idx < self.total:
            if idx in used:
                idx += 1
                continue
            jumped = False
            for a, b in ranges:
                if a <= idx <= b:
                    idx = b + 1
                    jumped = True
                    break
            if not jumped:
                break
        if idx >= self.total:
            self.cursor = idx
            return None
        used.add(idx)
        self.cursor = idx + 1
        for cstart, _cend, offset, count, _text in self.cidrs:
            if idx < offset + count:
                start = cstart + (idx - offset) * self.block
                self.last = (start, start + self.block)
                return fmt_cidr(self.family, start, self.mask)
        raise AssertionError('block index out of range')  # pragma: no cover

    def exhausted(self, node, waiting):
        more = ' (and %d more %s)' % (waiting, 'node' if waiting == 1 else 'nodes') if waiting else ''
        return IpamError('%s is exhausted: %d of %s in use; cannot allocate for %s%s' % (
            self.describe(), self.used_count(), count_of(self.total, 'block'), node, more))


def _ledger_spans(nodes, family):
    """[(start, end)] of every CIDR of `family` held in the ledger, parsed once."""
    out = []
    for name, entry in nodes.items():
        for text in entry_cidrs(entry):
            if family_of(text) == family:
                fam, start, plen = parse_cidr(text, 'ledger node %s' % name)
                out.append((start, start + prefix_size(fam, plen)))
    return out


def _mark_all(pool, nodes):
    for start, end in _ledger_spans(nodes, pool.family):
        pool.mark(start, end)


def _find_conflict(items):
    """items: (family, start, end, node, text). CIDRs are laminar (nested or disjoint), so after
    sorting by (start, -size) the open intervals form a stack of containers. Returns the first
    pair held by two different nodes as ((node, text), (node, text)) or None."""
    items = sorted(items, key=lambda t: (t[0], t[1], -t[2], natural_key(t[3])))
    stack = []
    fam_prev = None
    for fam, start, end, node, text in items:
        if fam != fam_prev:
            stack = []
            fam_prev = fam
        while stack and stack[-1][2] <= start:
            stack.pop()
        for other in reversed(stack):
            if other[3] != node:
                return (other[3], other[4]), (node, text)
        stack.append((fam, start, end, node, text))
    return None


def _conflict_message(pair, what='CIDR conflict'):
    (n1, c1), (n2, c2) = pair
    if c1 == c2:
        return '%s: %s and %s both claim %s' % (what, n1, n2, c1)
    return '%s: %s claims %s, which overlaps %s held by %s' % (what, n2, c2, c1, n1)


def _check_conflicts(nodes, what='CIDR conflict', changed=()):
    """Raise on any two nodes holding overlapping CIDRs. The message names a node changed by
    this plan as the claimant when there is one (it is the likely culprit)."""
    items = []
    for name, entry in nodes.items():
        for text in entry_cidrs(entry):
            fam, start, plen = parse_cidr(text, 'ledger node %s' % name)
            items.append((fam, start, start + prefix_size(fam, plen), name, text))
    pair = _find_conflict(items)
    if pair:
        if pair[0][0] in changed and pair[1][0] not in changed:
            pair = (pair[1], pair[0])
        raise IpamError(_conflict_message(pair, what))


class _Plan:
    """Copy-on-write view of the ledger's nodes plus the change log."""

    def __init__(self, doc, serial):
        self.old = doc.get('nodes') or {}
        self.nodes = None
        self.serial = serial
        self.changes = []
        self.modified = False
        self.touched = set()
        self._spans = {}      # family -> ledger spans, parsed once per plan
        self._marked = []     # pools already seeded with the ledger's spans

    def seed(self, pool):
        """Mark everything the ledger holds in pool (once); later takes are shared (below)."""
        if pool in self._marked:
            return
        if pool.family not in self._spans:
            self._spans[pool.family] = _ledger_spans(self.view(), pool.family)
        for start, end in self._spans[pool.family]:
            pool.mark(start, end)
        self._marked.append(pool)

    def take(self, pool):
        """pool.take(), also marking the block in the other seeded pools of the family, so
        overlapping pools (which validation should refuse anyway) can never double-allocate."""
        self.seed(pool)
        cidr = pool.take()
        if cidr is not None:
            span = pool.last
            self._spans[pool.family].append(span)
            for other in self._marked:
                if other is not pool and other.family == pool.family:
                    other.mark(*span)
        return cidr

    def view(self):
        return self.nodes if self.nodes is not None else self.old

    def entry(self, node, ip=None):
        """A private, writable copy of node's entry (created if absent)."""
        if self.nodes is None:
            self.nodes = dict(self.old)
        cur = self.nodes.get(node)
        if cur is None or cur is self.old.get(node):
            new = dict(cur) if cur else {'ip': ip, 'cidrs': {'ipv4': [], 'ipv6': []}, 'pools': {},
                                         'allocated_at': self.serial}
            new['cidrs'] = dict(new.get('cidrs') or {'ipv4': [], 'ipv6': []})
            for fam in FAMILIES:
                new['cidrs'][fam] = list(new['cidrs'].get(fam) or [])
            new['pools'] = dict((k, dict(v or {})) for k, v in (new.get('pools') or {}).items())
            self.nodes[node] = new
            cur = new
        self.modified = True
        self.touched.add(node)
        return cur

    def release(self, node):
        if self.nodes is None:
            self.nodes = dict(self.old)
        entry = self.nodes.pop(node)
        self.modified = True
        return entry

    def note(self, action, msg, **fields):
        item = {'action': action, 'msg': msg}
        item.update(fields)
        self.changes.append(item)


def _check_doc(doc, cluster):
    if not isinstance(doc, dict) or not isinstance(doc.get('nodes', {}), dict):
        raise IpamError('the ledger document is not a ledger (expected an object with "nodes")')
    if doc.get('cluster') not in (None, cluster):
        raise IpamError('the ledger belongs to cluster %r, but this inventory is cluster %r'
                        % (doc.get('cluster'), cluster))


def plan_cluster(model, doc, run_nodes, prune=False, node_docs=None):
    """Allocate for every node of this run that lacks an allocation; never move existing ones.

    model: the normalized inventory model (inventory.validate); doc: the ledger document;
    run_nodes: the hosts of this run (a subset of model['nodes'] under --limit / AWX slices);
    prune: release ledger nodes that are not in model['nodes'];
    node_docs: crd mode only, {node: per-node document} as ledger.read_node_doc returns.

    Returns (new_doc, changes). new_doc is doc itself (the same object) when nothing changes.
    changes: a list of dicts, each with 'action' (allocated | released | recorded | updated |
    note | warning), a human-readable 'msg' and structured fields (node, family, pool, cidrs).
    The serial of a changed document is doc['serial'] + 1, the same the ledger will store.
    """
    ipam_cfg = model['ipam']
    mode = ipam_cfg.get('mode') or 'cluster-pool'
    cluster = model['cluster']['name']
    inventory = model['nodes']
    _check_doc(doc, cluster)
    run = []
    seen = set()
    for n in run_nodes:
        if n not in inventory:
            raise IpamError('%s: in this run but not in the inventory model' % n)
        if n not in seen:
            seen.add(n)
            run.append(n)
    run.sort(key=natural_key)
    serial = (doc.get('serial') or 0) + 1
    plan = _Plan(doc, serial)

    if prune:
        for n in sorted(plan.old, key=natural_key):
            if n not in inventory:
                entry = plan.release(n)
                cidrs = entry_cidrs(entry)
                plan.note('released', '%s: released %s (not in the inventory; prune)'
                          % (n, ', '.join(cidrs) or 'nothing'), node=n, cidrs=cidrs)

    # Keep the recorded underlay IP current for the nodes we see (rebuild and reports use it).
    for n in run:
        cur = plan.view().get(n)
        ip = inventory[n].get('node_ip')
        if cur is not None and cur.get('ip') != ip:
            plan.entry(n)['ip'] = ip
            plan.note('updated', '%s: node ip %s -> %s' % (n, cur.get('ip'), ip), node=n, ip=ip)

    if mode == 'cluster-pool':
        _plan_cluster_pool(ipam_cfg, inventory, run, plan)
    elif mode == 'kubernetes':
        _plan_kubernetes(ipam_cfg, inventory, run, plan)
    elif mode == 'multi-pool':
        _plan_multi_pool(ipam_cfg, inventory, run, plan)
    elif mode == 'crd':
        _plan_crd(inventory, run, plan, node_docs or {})
    elif mode == 'eni':
        if run:
            plan.note('note', 'eni mode: pod IPs are ENI secondary addresses assigned by the eni role; '
                      'the ledger records nothing for %s' % count_of(len(run), 'node'), nodes=list(run))
    else:
        raise IpamError('ipam.mode: unknown mode %r' % (mode,))

    if not plan.modified:
        return doc, plan.changes
    new_doc = dict(doc)
    new_doc['version'] = doc.get('version') or 1
    new_doc['cluster'] = cluster
    new_doc['serial'] = serial
    new_doc['nodes'] = plan.nodes
    new_doc.setdefault('identities', {})
    return new_doc, plan.changes


def _plan_cluster_pool(cfg, inventory, run, plan):
    cp = cfg.get('cluster_pool') or {}
    for fam in FAMILIES:
        if not cp.get(fam):
            continue
        need = [n for n in run if not ((plan.view().get(n) or {}).get('cidrs') or {}).get(fam)]
        pool = _Pool(DEFAULT_POOL, fam, cp[fam])   # validates the config even when nothing is needed
        if not need:
            continue
        for i, n in enumerate(need):
            cidr = plan.take(pool)
            if cidr is None:
                raise pool.exhausted(n, len(need) - i - 1)
            entry = plan.entry(n, inventory[n].get('node_ip'))
            entry['cidrs'][fam] = [cidr]
            entry['allocated_at'] = plan.serial
            plan.note('allocated', '%s: allocated %s %s' % (n, fam, cidr), node=n, family=fam,
                      pool=DEFAULT_POOL, cidrs=[cidr])


def _split_families(cidrs, where):
    out = {'ipv4': [], 'ipv6': []}
    parsed = []
    for text in cidrs or ():
        fam, start, plen = parse_cidr(text, where)
        parsed.append((fam, start, plen))
    for fam, start, plen in sorted(parsed):
        out[fam].append(fmt_cidr(fam, start, plen))
    return out, parsed


def _plan_kubernetes(cfg, inventory, run, plan):
    cluster_cidrs = ((cfg.get('kubernetes') or {}).get('cluster_cidrs')) or []
    containers = [parse_cidr(c, 'ipam.kubernetes.cluster_cidrs') for c in cluster_cidrs]
    for n in run:
        where = '%s: podnet_pod_cidrs' % n
        want, parsed = _split_families(inventory[n].get('pod_cidrs'), where)
        if not parsed:
            raise IpamError('%s: empty; kubernetes (host-scope) IPAM takes each node\'s pod CIDRs from it' % where)
        for fam, start, plen in parsed:
            fam_containers = [c for c in containers if c[0] == fam]
            if not fam_containers:
                continue
            end = start + prefix_size(fam, plen)
            if not any(cs <= start and end <= cs + prefix_size(fam, cp) for _f, cs, cp in fam_containers):
                raise IpamError('%s: %s is outside the cluster CIDRs (%s)' % (
                    where, fmt_cidr(fam, start, plen),
                    ', '.join(fmt_cidr(*c) for c in fam_containers)))
        cur = plan.view().get(n)
        have = {fam: list(((cur or {}).get('cidrs') or {}).get(fam) or []) for fam in FAMILIES}
        if cur is not None and have == want:
            continue
        entry = plan.entry(n, inventory[n].get('node_ip'))
        entry['cidrs'] = want
        entry['allocated_at'] = plan.serial
        flat = want['ipv4'] + want['ipv6']
        if cur is None or not any(have.values()):
            plan.note('recorded', '%s: recorded pod CIDRs %s' % (n, ', '.join(flat)), node=n, cidrs=flat)
        else:
            was = ', '.join(have['ipv4'] + have['ipv6'])
            plan.note('updated', '%s: pod CIDRs %s -> %s' % (n, was, ', '.join(flat)), node=n, cidrs=flat)
    if plan.modified:
        _check_conflicts(plan.view(), 'podnet_pod_cidrs conflict', plan.touched)


def _used_for(entry, pool, fam):
    used = ((entry or {}).get('pools_used') or {}).get(pool) or 0
    if isinstance(used, dict):
        used = used.get(fam) or 0
    if not isinstance(used, int) or isinstance(used, bool) or used < 0:
        raise IpamError('pools_used.%s: %r is not a non-negative integer' % (pool, used))
    return used


def _capacity(fam, blocks, mask):
    if not blocks:
        return 0
    suffix = '/%d' % mask
    if all(b.endswith(suffix) for b in blocks):   # the common case: no parsing
        return len(blocks) * usable_addresses(fam, mask)
    return sum(usable_addresses(fam, parse_cidr(b, 'pool block')[2]) for b in blocks)


def _plan_multi_pool(cfg, inventory, run, plan):
    mp = cfg.get('multi_pool') or {}
    pools_cfg = mp.get('pools') or {}
    pre = mp.get('pre_allocation') or {}
    if not pools_cfg:
        raise IpamError('ipam.multi_pool.pools: no pools defined')
    for p in sorted(pre):
        if p not in pools_cfg:
            raise IpamError('ipam.multi_pool.pre_allocation: unknown pool %r (pools: %s)'
                            % (p, ', '.join(sorted(pools_cfg))))
    objs = {}
    for p in sorted(pools_cfg):
        for fam in FAMILIES:
            if (pools_cfg[p] or {}).get(fam):
                objs[(p, fam)] = _Pool(p, fam, pools_cfg[p][fam])
    base = sorted(p for p in pools_cfg if p == DEFAULT_POOL or (pre.get(p) or 0) > 0)
    # per pool: [(family, _Pool, endpoint addresses per block, pre_allocation)]
    plans = dict((p, [(fam, objs[(p, fam)], usable_addresses(fam, objs[(p, fam)].mask), pre.get(p) or 0)
                      for fam in FAMILIES if (p, fam) in objs]) for p in pools_cfg)
    for n in run:
        cur = plan.view().get(n) or {}
        held = cur.get('pools') or {}
        pools_used = cur.get('pools_used')
        label = (inventory[n].get('labels') or {}).get(NODE_POOLS_LABEL)
        if label or pools_used or any(p not in base for p in held):
            wanted = set(base)
            for p in [x.strip() for x in str(label or '').split(',') if x.strip()]:
                if p not in pools_cfg:
                    raise IpamError('%s: podnet_node_labels.%s: unknown pool %r (pools: %s)'
                                    % (n, NODE_POOLS_LABEL, p, ', '.join(sorted(pools_cfg))))
                wanted.add(p)
            wanted.update(p for p in held if p in pools_cfg)
            wanted.update(p for p, v in (pools_used or {}).items() if p in pools_cfg and v)
            wanted = sorted(wanted)
        else:
            wanted = base
        for p in wanted:
            for fam, pool, per, want_free in plans[p]:
                have = (held.get(p) or {}).get(fam) or []
                used = _used_for(cur, p, fam) if pools_used else 0
                deficit = want_free + used - _capacity(fam, have, pool.mask)
                k = -(-deficit // per) if deficit > 0 else 0
                if not have and k == 0:
                    k = 1
                if not k:
                    continue
                got = []
                for _i in range(k):
                    cidr = plan.take(pool)
                    if cidr is None:
                        raise pool.exhausted(n, 0)
                    got.append(cidr)
                entry = plan.entry(n, inventory[n].get('node_ip'))
                blocks = dict(entry['pools'].get(p) or {})
                blocks[fam] = list(blocks.get(fam) or []) + got
                for other in FAMILIES:
                    blocks.setdefault(other, [])
                entry['pools'][p] = blocks
                entry['allocated_at'] = plan.serial
                cur = entry
                held = entry['pools']
                plan.note('allocated', '%s: allocated %s %s from pool %s' % (n, fam, ', '.join(got), p),
                          node=n, family=fam, pool=p, cidrs=got)


def _crd_pool(node_doc):
    return ((((node_doc or {}).get('spec') or {}).get('ipam') or {}).get('pool')) or {}


def _crd_used(node_doc):
    return ((((node_doc or {}).get('status') or {}).get('ipam') or {}).get('used')) or {}


def _plan_crd(inventory, run, plan, node_docs):
    for n in run:
        nd = node_docs.get(n)
        if nd is None:
            plan.note('note', '%s: no CRD node document yet; waiting for the external allocator' % n, node=n)
            continue
        where = '%s: spec.ipam.pool' % n
        pool = _crd_pool(nd)
        want, parsed = _split_families(list(pool), where)
        if not parsed:
            plan.note('note', '%s: spec.ipam.pool is empty; waiting for the external allocator' % n, node=n)
        spans = [(f, s, s + prefix_size(f, pl)) for f, s, pl in parsed]
        for ip in sorted(_crd_used(nd)):
            try:
                addr = ipaddress.ip_address(ip)
            except ValueError:
                raise IpamError('%s: status.ipam.used: %r is not an IP address' % (n, ip))
            fam = 'ipv6' if addr.version == 6 else 'ipv4'
            if not any(f == fam and s <= int(addr) < e for f, s, e in spans):
                plan.note('warning', '%s: status.ipam.used: %s is in use but no longer in spec.ipam.pool'
                          % (n, ip), node=n, ip=ip)
        cur = plan.view().get(n)
        have = {fam: list(((cur or {}).get('cidrs') or {}).get(fam) or []) for fam in FAMILIES}
        if cur is not None and have == want:
            continue
        if cur is None and not parsed:
            continue
        entry = plan.entry(n, inventory[n].get('node_ip'))
        entry['cidrs'] = want
        entry['allocated_at'] = plan.serial
        flat = want['ipv4'] + want['ipv6']
        plan.note('recorded', '%s: recorded CRD pool %s' % (n, ', '.join(flat) or '(empty)'), node=n, cidrs=flat)
    if plan.modified:
        _check_conflicts(plan.view(), 'CRD pool conflict', plan.touched)


def _ordered_families(texts, where):
    """[CIDR text] -> ({family: [canonical text, in the given order]}, [(family, start, plen, text)])."""
    out = {'ipv4': [], 'ipv6': []}
    parsed = []
    for text in texts or ():
        fam, start, plen = parse_cidr(text, where)
        canonical = fmt_cidr(fam, start, plen)
        parsed.append((fam, start, plen, canonical))
        out[fam].append(canonical)
    return out, parsed


def rebuild_from_leases(model, leases, usage=None, node_used=None, seed=None):
    """A ledger document rebuilt from the nodes' own leases {node: lease} and, for each node's
    pools_used, their endpoint use {node: {pool: {family: count}}} (store_usage of each node's
    endpoint store; not recorded in crd mode, whose use lives in the node documents, or eni mode).

    node_used: {node: {ip: {'owner': endpoint}}} (each node's store as ipam_node_info returns it):
    the nodes' endpoint records are rebuilt from it (identity.record_endpoints: names, addresses,
    identities from the inventory's labels); a node without it keeps seed's records. seed: the
    ledger being replaced, when readable: its identities and endpoint ids are kept, so a rebuild
    of a ledger that agrees with the nodes changes nothing. Without one, identities are allocated
    afresh and endpoint ids handed out in order (the health endpoint first, as site.yml creates it).

    Each entry is what ipam_allocate wrote (its CIDRs in the lease's order, allocated_at), so the
    leases the rebuilt ledger hands out equal the ones the nodes hold. serial is the highest
    allocated_at. Raises IpamError when a lease is for another cluster or node, holds an invalid
    CIDR, or when two nodes claim overlapping CIDRs (naming both nodes and the CIDR).
    """
    cluster = model['cluster']['name']
    mode = (model.get('ipam') or {}).get('mode') or 'cluster-pool'
    usage = usage or {}
    nodes = {}
    items = []
    top = 0
    for n in sorted(leases, key=natural_key):
        lease = leases[n] or {}
        if lease.get('cluster') not in (None, cluster):
            raise IpamError('%s: the lease is for cluster %r, not %r' % (n, lease.get('cluster'), cluster))
        if lease.get('node') not in (None, n):
            raise IpamError('%s: the lease is for node %r' % (n, lease.get('node')))
        entry = {'ip': lease.get('ip') or ((model['nodes'].get(n) or {}).get('node_ip')),
                 'cidrs': {}, 'pools': {}, 'allocated_at': int(lease.get('allocated_at') or 0)}
        top = max(top, entry['allocated_at'])
        where = '%s: lease cidrs' % n
        entry['cidrs'], parsed = _ordered_families(
            [c for fam in FAMILIES for c in ((lease.get('cidrs') or {}).get(fam) or [])], where)
        for p in sorted(lease.get('pools') or {}):
            entry['pools'][p], more = _ordered_families(
                [c for fam in FAMILIES for c in (((lease['pools'][p]) or {}).get(fam) or [])],
                '%s: lease pools.%s' % (n, p))
            parsed.extend(more)
        for fam, start, plen, text in parsed:
            items.append((fam, start, start + prefix_size(fam, plen), n, text))
        used = pools_used_record(usage.get(n)) if mode not in ('crd', 'eni') else {}
        if used:
            entry['pools_used'] = used
        nodes[n] = entry
    pair = _find_conflict(items)
    if pair:
        raise IpamError(_conflict_message(pair, 'lease conflict'))
    doc = {'version': 1, 'cluster': cluster, 'serial': top, 'nodes': nodes,
           'identities': copy.deepcopy((seed or {}).get('identities') or {})}
    _rebuild_endpoint_records(model, doc, seed, node_used or {})
    return doc


def _rebuild_endpoint_records(model, doc, seed, node_used):
    cluster = model.get('cluster') or {}
    flt = identity.label_filter(model)
    wanted = identity.model_endpoint_labels(model, [n for n in doc['nodes'] if n in model['nodes']])
    for n in sorted(doc['nodes'], key=natural_key):
        old = ((seed or {}).get('nodes') or {}).get(n) or {}
        if old.get('endpoints'):
            doc['nodes'][n]['endpoints'] = copy.deepcopy(old['endpoints'])
        if n in node_used:
            identity.record_endpoints(doc, n, node_used[n], cluster.get('id', 0), cluster.get('name'), flt,
                                      wanted.get(n))


def rebuild_inputs(model, reports, allow_missing=False):
    """What the nodes reported (ipam_node_info results, {node: result}; None or a failed result for
    a node that could not be read) -> (leases, usage, warnings) for rebuild_from_leases.

    Every node of the model must be accounted for: a node that did not report, whose lease is
    unreadable, or that has no lease while its endpoint store holds addresses, would leave its
    CIDR out of the ledger, to be handed to another node. That raises IpamError listing every such
    node, unless allow_missing, which leaves them out with a warning. A node with neither lease
    nor endpoints was never provisioned: it is left out (the next site.yml allocates it)."""
    leases, usage, warnings, problems = {}, {}, [], []
    for n in sorted(model['nodes'], key=natural_key):
        rep = (reports or {}).get(n)
        if not isinstance(rep, dict) or rep.get('failed') or rep.get('unreachable') or 'lease' not in rep:
            why = (rep or {}).get('msg') if isinstance(rep, dict) else None
            problems.append('%s: did not report its lease%s' % (n, ' (%s)' % why if why else ''))
            continue
        if rep.get('lease_error'):
            problems.append('%s: %s' % (n, rep['lease_error']))
            continue
        if rep.get('store_error'):
            warnings.append('%s: %s; its pools_used is not rebuilt (the next ipam_endpoint call records it)'
                            % (n, rep['store_error']))
        if rep['lease'] is None:
            addrs = rep.get('addresses') or []
            if addrs:
                problems.append('%s: no lease, but its endpoint store holds %s (%s%s): its CIDR is unknown'
                                % (n, count_of(len(addrs), 'address', 'addresses'), ', '.join(addrs[:3]),
                                   ', ...' if len(addrs) > 3 else ''))
            else:
                warnings.append('%s: no lease (never provisioned): not in the rebuilt ledger; the next '
                                'site.yml run allocates it' % n)
            continue
        leases[n] = rep['lease']
        usage[n] = rep.get('usage') or {}
    if problems:
        if not allow_missing:
            raise IpamError('cannot rebuild the ledger from every node: %s. Fix or reach those nodes, or '
                            'rebuild without them (-e ledger_rebuild_allow_missing=true): their CIDRs '
                            'may then be handed to other nodes' % '; '.join(problems))
        warnings.extend('%s; left out (allow_missing)' % p for p in problems)
    return leases, usage, warnings


def _entries_differ(current, rebuilt):
    """Nodes whose entries differ between two ledger documents, in natural order."""
    a, b = current.get('nodes') or {}, rebuilt.get('nodes') or {}
    return sorted((n for n in set(a) | set(b) if a.get(n) != b.get(n)), key=natural_key)


def plan_rebuild(current, rebuilt, force=False):
    """What to write over the ledger the backend holds, given the rebuilt document.

    current: {'state': 'missing' | 'torn' | 'valid', 'doc': the document when valid, 'error'}.
    Returns the document to write, or None when the ledger already holds what the nodes hold.
    A readable ledger that differs is only replaced with force (it is kept beside the new one);
    otherwise IpamError names the nodes that differ. A rebuilt document without any node is
    refused: there is nothing to rebuild from."""
    if not rebuilt.get('nodes'):
        raise IpamError('no node holds a lease: there is nothing to rebuild the ledger from')
    if current['state'] != 'valid':
        return rebuilt
    doc = current['doc']
    differ = _entries_differ(doc, rebuilt)
    if not differ:
        return None
    if not force:
        raise IpamError('the ledger is readable and differs from the nodes\' leases for %s; ledger_rebuild '
                        'replaces a lost or torn ledger only. To replace this one anyway (it is kept beside '
                        'the new one) pass -e ledger_rebuild_force=true'
                        % ', '.join(differ[:8] + (['...'] if len(differ) > 8 else [])))
    out = dict(rebuilt)
    out['serial'] = max(rebuilt['serial'], int(doc.get('serial') or 0) + 1)
    return out


def _pct(used, size):
    return round(100.0 * used / size, 1) if size else 0.0


def _stat(size, used):
    return {'size': size, 'used': used, 'free': size - used, 'percent': _pct(used, size)}


def utilization(model, doc, node_docs=None):
    """Utilization per pool and per node, for the report (JSON-ready).

    {'cluster', 'mode', 'serial',
     'pools': {pool: {family: {'cidrs', 'mask_size', 'blocks': stat, 'addresses': stat,
                               'endpoints': stat}}},
     'nodes': {node: {'ip', 'in_inventory', 'pools': {pool: {family: {'cidrs', 'addresses',
                      'endpoints': stat}}}}}}
    stat = {'size', 'used', 'free', 'percent'}. blocks/addresses: how much of the pool is handed
    to nodes; endpoints: how many endpoint addresses the nodes' blocks hold and use (from
    pools_used, or status.ipam.used in crd mode). kubernetes/crd have no blocks: their pool is
    'kubernetes' (sized by cluster_cidrs when given) / 'crd' and blocks is None.
    """
    ipam_cfg = model['ipam']
    mode = ipam_cfg.get('mode') or 'cluster-pool'
    nodes = doc.get('nodes') or {}
    node_docs = node_docs or {}
    report = {'cluster': model['cluster']['name'], 'mode': mode, 'serial': doc.get('serial', 0),
              'pools': {}, 'nodes': {}}

    if mode == 'multi-pool':
        pool_cfgs = ((ipam_cfg.get('multi_pool') or {}).get('pools')) or {}
    elif mode == 'cluster-pool':
        pool_cfgs = {DEFAULT_POOL: ipam_cfg.get('cluster_pool') or {}}
    else:
        pool_cfgs = {}

    def holdings(entry):
        """{pool: {family: [cidrs]}} for one ledger entry, in the report's pool naming."""
        if mode == 'multi-pool':
            return dict((p, {f: list((v or {}).get(f) or []) for f in FAMILIES})
                        for p, v in (entry.get('pools') or {}).items())
        name = mode_pool(mode)
        return {name: {f: list((entry.get('cidrs') or {}).get(f) or []) for f in FAMILIES}}

    def endpoints_used(n, entry, pname, fam):
        if mode == 'crd':
            return sum(1 for ip in _crd_used(node_docs.get(n)) if family_of(ip) == fam)
        return _used_for(entry, pname, fam)

    for pname in sorted(pool_cfgs):
        for fam in FAMILIES:
            pcfg = (pool_cfgs[pname] or {}).get(fam)
            if not pcfg:
                continue
            pool = _Pool(pname, fam, pcfg)
            _mark_all(pool, nodes)
            used = pool.used_count()
            report['pools'].setdefault(pname, {})[fam] = {
                'cidrs': [c[4] for c in pool.cidrs], 'mask_size': pool.mask,
                'blocks': _stat(pool.total, used),
                'addresses': _stat(pool.total * pool.block, used * pool.block),
                'endpoints': {'size': 0, 'used': 0}}

    if mode == 'kubernetes':
        ccidrs = ((ipam_cfg.get('kubernetes') or {}).get('cluster_cidrs')) or []
        for fam in FAMILIES:
            fam_c = [c for c in ccidrs if family_of(c) == fam]
            report['pools'].setdefault('kubernetes', {})[fam] = {
                'cidrs': fam_c, 'mask_size': None, 'blocks': None,
                'addresses': {'size': sum(prefix_size(*parse_cidr(c, 'cluster_cidrs')[::2]) for c in fam_c) or None,
                              'used': 0},
                'endpoints': {'size': 0, 'used': 0}}
    elif mode == 'crd':
        for fam in FAMILIES:
            report['pools'].setdefault('crd', {})[fam] = {
                'cidrs': [], 'mask_size': None, 'blocks': None, 'addresses': {'size': None, 'used': 0},
                'endpoints': {'size': 0, 'used': 0}}

    for n in sorted(nodes, key=natural_key):
        entry = nodes[n]
        out = {'ip': entry.get('ip'), 'in_inventory': n in model['nodes'], 'pools': {}}
        for pname, fams in sorted(holdings(entry).items()):
            for fam in FAMILIES:
                blocks = fams.get(fam) or []
                if not blocks:
                    continue
                addrs = cap = 0
                for b in blocks:
                    f, _s, plen = parse_cidr(b, '%s: %s' % (n, pname))
                    addrs += prefix_size(f, plen)
                    cap += usable_addresses(f, plen)
                used = endpoints_used(n, entry, pname, fam)
                out['pools'].setdefault(pname, {})[fam] = {
                    'cidrs': blocks, 'addresses': addrs, 'endpoints': _stat(cap, used)}
                prow = report['pools'].get(pname, {}).get(fam)
                if prow is not None:
                    prow['endpoints']['size'] += cap
                    prow['endpoints']['used'] += used
                    if prow['blocks'] is None:
                        prow['addresses']['used'] += addrs
        report['nodes'][n] = out

    for fams in report['pools'].values():
        for row in fams.values():
            row['endpoints'] = _stat(row['endpoints']['size'], row['endpoints']['used'])
            if row['blocks'] is None:
                size = row['addresses']['size']
                used = row['addresses']['used']
                row['addresses'] = {'size': size, 'used': used,
                                    'free': None if size is None else size - used,
                                    'percent': None if size is None else _pct(used, size)}
    return report
