# -*- coding: utf-8 -*-
# Copyright: podnet.fabric contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""AWS ENI IPAM, the pure plan (DESIGN.md 5, issue 11): desired ENIs and addresses per node from the
realized EC2 state (the `view` eni_cloud.read_view builds from a few fleet-wide describe calls).

Sizing is Cilium's (pkg/ipam/node.go calculateNeededIPs / calculateExcessIPs):

    available = addresses the node's pod ENIs hold (secondary IPs, 16 per /28 prefix)
    needed    = max(pre_allocate - (available - used), min_allocate - available),
                capped by max(max_allocate - available, 0) when max_allocate > 0
    excess    = (available - used) - (pre_allocate + max_above_watermark)

When addresses are needed, max_above_watermark more are taken on the way (Cilium's
MaxIPsToAllocate = needed + watermark), within the limits. The node's limit is
(MaximumNetworkInterfaces - first_interface_index) x (Ipv4AddressesPerInterface - 1) addresses
(one address of each ENI is its primary), x16 with prefix delegation. Needing more than that is an
error naming the node, the type and the limit, raised for the whole fleet before any API write.

Ownership: every ENI podnet creates carries TAG_CLUSTER, TAG_NODE and TAG_MANAGED. Only ENIs with
TAG_MANAGED and this cluster's TAG_CLUSTER are ever attached, changed, marked or deleted; the
primary ENI (device index 0) only gets secondary addresses (first_interface_index 0, as Cilium).
"""
from __future__ import absolute_import, division, print_function

__metaclass__ = type

import ipaddress
import re

TAG_CLUSTER = 'podnet.io/cluster'
TAG_NODE = 'podnet.io/node'
TAG_MANAGED = 'podnet.io/managed'
MANAGED_VALUE = 'podnet.fabric'
TAG_GC_MARK = 'podnet.io/gc-marked'
GC_MAX_PER_RUN = 25          # Cilium's ENI garbage collection: at most 25 interfaces per interval
PREFIX_SIZE = 16             # a /28 delegated prefix
DEFAULTS = {'pre_allocate': 8, 'min_allocate': 0, 'max_allocate': 0, 'max_above_watermark': 0,
            'first_interface_index': 0, 'subnet_ids': [], 'subnet_tags': {}, 'security_group_ids': [],
            'security_group_tags': {}, 'tags': {}, 'prefix_delegation': False, 'release_excess_ips': False,
            'delete_on_termination': True}


class EniPlanError(Exception):
    """The plan is impossible; ``errors`` lists every problem, each naming its node."""

    def __init__(self, errors):
        self.errors = list(errors)
        super(EniPlanError, self).__init__('eni: %d error%s, nothing was changed:\n%s' % (
            len(self.errors), '' if len(self.errors) == 1 else 's', '\n'.join('  - ' + e for e in self.errors)))


def _natural(text):
    return [int(p) if p.isdigit() else p for p in re.split(r'(\d+)', str(text))]


def config(eni_cfg):
    """podnet_eni with every default filled in (the validated model already has them)."""
    out = dict(DEFAULTS)
    out.update(dict((k, v) for k, v in (eni_cfg or {}).items() if v is not None))
    return out


# ------------------------------------------------------------------------- limits and sizing

def limits_from_instance_types(instance_types):
    """{type: {'max_enis', 'ipv4_per_eni'}} from DescribeInstanceTypes' InstanceTypes list."""
    out = {}
    for item in instance_types or ():
        net = item.get('NetworkInfo') or {}
        out[item['InstanceType']] = {'max_enis': int(net.get('MaximumNetworkInterfaces') or 0),
                                     'ipv4_per_eni': int(net.get('Ipv4AddressesPerInterface') or 0)}
    return out


def node_limit(limits, first_interface_index, prefix_delegation=False):
    """The most pod addresses a node of these limits can hold."""
    slots = max(limits['max_enis'] - first_interface_index, 0) * max(limits['ipv4_per_eni'] - 1, 0)
    return slots * (PREFIX_SIZE if prefix_delegation else 1)


def needed_ips(available, used, pre_allocate, min_allocate=0, max_allocate=0):
    needed = pre_allocate - (available - used)
    if min_allocate > 0:
        needed = max(needed, min_allocate - available)
    if max_allocate > 0:
        needed = min(needed, max(max_allocate - available, 0))
    return max(needed, 0)


def excess_ips(available, used, pre_allocate, max_above_watermark=0, min_allocate=0):
    # Cilium keeps the initial min_allocate (+ watermark) even when nothing uses it.
    if min_allocate > 0 and available <= min_allocate + max_above_watermark:
        return 0
    return max((available - used) - (pre_allocate + max_above_watermark), 0)


# ------------------------------------------------------------------------- ownership

def is_ours(eni, cluster):
    tags = eni.get('tags') or {}
    return tags.get(TAG_MANAGED) == MANAGED_VALUE and tags.get(TAG_CLUSTER) == cluster


def owner_tags(cluster, node, extra=None):
    tags = dict(extra or {})
    tags.update({TAG_CLUSTER: cluster, TAG_NODE: node, TAG_MANAGED: MANAGED_VALUE})
    return tags


def description(cluster, node, instance_id):
    return 'podnet.fabric pod ENI of %s (node %s, cluster %s)' % (instance_id, node, cluster)


# ------------------------------------------------------------------------- selection

def _tags_match(tags, want):
    return all((tags or {}).get(k) == v for k, v in want.items())


def select_subnets(view, cfg, override, primary):
    """(candidate subnet ids, source, error). Subnets by ids, else by tags (all must match), else the
    node's own; always in the primary ENI's VPC and AZ. A per-node override replaces the cluster's."""
    src = override if override and (override.get('subnet_ids') or override.get('subnet_tags')) else cfg
    subnets = view['subnets']
    where = (primary['vpc_id'], primary['az'])
    if src.get('subnet_ids'):
        unknown = [s for s in src['subnet_ids'] if s not in subnets]
        ok = [s for s in src['subnet_ids'] if s in subnets and (subnets[s]['vpc_id'], subnets[s]['az']) == where]
        if not ok:
            return [], 'subnet_ids', 'none of subnet_ids %s is in %s %s%s' % (
                ', '.join(src['subnet_ids']), primary['vpc_id'], primary['az'],
                ' (unknown: %s)' % ', '.join(unknown) if unknown else '')
        return ok, 'subnet_ids', None
    if src.get('subnet_tags'):
        ok = sorted((s for s, sn in subnets.items() if (sn['vpc_id'], sn['az']) == where
                     and _tags_match(sn.get('tags'), src['subnet_tags'])), key=_natural)
        if not ok:
            return [], 'subnet_tags', 'no subnet of %s %s has the tags %s' % (
                primary['vpc_id'], primary['az'], _show_tags(src['subnet_tags']))
        return ok, 'subnet_tags', None
    return [primary['subnet_id']], 'node subnet', None


def select_security_groups(view, cfg, override, primary):
    """(group ids, source, warning, error): by ids, else by tags (warn and use the primary ENI's when
    none match), else the primary ENI's. A per-node override replaces the cluster's."""
    src = override if override and (override.get('security_group_ids') or override.get('security_group_tags')) else cfg
    groups = view.get('security_groups') or {}
    if src.get('security_group_ids'):
        bad = [g for g in src['security_group_ids'] if g not in groups or groups[g]['vpc_id'] != primary['vpc_id']]
        if bad:
            return [], 'security_group_ids', None, 'security groups %s are not in %s' % (', '.join(bad), primary['vpc_id'])
        return list(src['security_group_ids']), 'security_group_ids', None, None
    if src.get('security_group_tags'):
        ok = sorted(g for g, sg in groups.items() if sg['vpc_id'] == primary['vpc_id']
                    and _tags_match(sg.get('tags'), src['security_group_tags']))
        if ok:
            return ok, 'security_group_tags', None, None
        return (list(primary['groups']), 'primary ENI', 'no security group of %s has the tags %s: using the primary '
                'ENI\'s (%s)' % (primary['vpc_id'], _show_tags(src['security_group_tags']),
                                 ', '.join(primary['groups']) or 'none'), None)
    return list(primary['groups']), 'primary ENI', None, None


def _show_tags(tags):
    return ', '.join('%s=%s' % (k, v) for k, v in sorted(tags.items()))


# ------------------------------------------------------------------------- the plan

def _capacity(eni, lim, prefix_mode):
    """Free slots of an ENI, in its unit (IPs, or /28 prefixes), and that unit."""
    slots = lim['ipv4_per_eni'] - 1
    if eni['prefixes'] or (prefix_mode and not eni['ips']):
        return max(slots - len(eni['prefixes']), 0), 'prefix'
    return max(slots - len(eni['ips']), 0), 'ip'


def _held(eni):
    return len(eni['ips']) + PREFIX_SIZE * len(eni['prefixes'])


def _addresses_of(eni):
    out = set(eni['ips'])
    for p in eni['prefixes']:
        out.update(str(a) for a in ipaddress.ip_network(p))
    return out


class _Subnets(object):
    """Free addresses per subnet as the plan consumes them, so two nodes never count one address."""

    def __init__(self, subnets):
        self.free = dict((s, int(sn.get('available') or 0)) for s, sn in subnets.items())

    def take(self, subnet, count):
        if self.free.get(subnet, 0) < count:
            return False
        self.free[subnet] -= count
        return True

    def best(self, candidates, count):
        """The candidate with the most free addresses that has `count` (Cilium picks the emptiest)."""
        fit = [s for s in candidates if self.free.get(s, 0) >= count]
        if not fit:
            return None
        return max(fit, key=lambda s: (self.free[s], -candidates.index(s)))


def plan(view, cfg, cluster, nodes, model_nodes=None, no_prefix_subnets=()):
    """The whole fleet's plan.

    view: {'limits': {type: limits}, 'enis': {id: eni}, 'subnets': {id: subnet}, 'security_groups':
      {id: group}} (eni_cloud.read_view; each eni: id, mac, subnet_id, vpc_id, az, status, instance_id,
      device_index, attachment_id, delete_on_termination, primary_ip, ips (secondary), prefixes,
      groups, tags).
    cfg: podnet_eni (config()); cluster: the cluster's name.
    nodes: {host: {'instance_id', 'instance_type', 'used_ips': [pod IPs in use], 'eni': per-node
      override (podnet_node_eni) or None}} - this run's nodes.
    model_nodes: every node of the inventory (a detached ENI of ours whose node is in it but not in
      this run is that node's, for its own run: never collected here). Defaults to nodes.
    no_prefix_subnets: subnets that refused a /28 (InsufficientPrefixesInSubnet): new ENIs there take
      single IPs.

    Returns {'nodes': {host: summary}, 'actions': [...], 'warnings': [...]}. Actions, in apply order:
      attach {eni_id, instance_id, device_index, unmark}; create {subnet_id, groups, device_index,
      ip_count | prefix_count, description, tags, instance_id}; delete_on_termination {eni_id,
      attachment_id}; assign {eni_id, ip_count | prefix_count}; unassign {eni_id, ips}; gc_mark
      {eni_id}; gc_delete {eni_id}. Each names its node ('node'; None for gc).
    Raises EniPlanError listing every node's problem.
    """
    cfg = config(cfg)
    fii = cfg['first_interface_index']
    model_nodes = set(model_nodes if model_nodes is not None else nodes)
    enis = view['enis']
    by_instance = {}
    for e in enis.values():
        if e.get('instance_id'):
            by_instance.setdefault(e['instance_id'], []).append(e)
    orphans = {}
    for e in sorted(enis.values(), key=lambda e: _natural(e['id'])):
        if e['status'] == 'available' and not e.get('instance_id') and is_ours(e, cluster):
            orphans.setdefault((e.get('tags') or {}).get(TAG_NODE), []).append(e)
    subnets = _Subnets(view['subnets'])
    errors, warnings, actions = [], [], []
    summaries = {}
    reused = set()
    for host in sorted(nodes, key=_natural):
        node = nodes[host]
        iid, itype = node['instance_id'], node['instance_type']
        lim = (view.get('limits') or {}).get(itype)
        if lim is None:
            errors.append('%s: instance type %r of %s is unknown to DescribeInstanceTypes (InvalidInstanceType)'
                          % (host, itype, iid))
            continue
        attached = sorted(by_instance.get(iid) or [], key=lambda e: e['device_index'])
        primary = next((e for e in attached if e['device_index'] == 0), None)
        if primary is None:
            errors.append('%s: instance %s has no network interface at device index 0 (unknown or terminated '
                          'instance: InvalidInstanceID.NotFound)' % (host, iid))
            continue
        prefix_mode = bool(cfg['prefix_delegation'])
        limit = node_limit(lim, fii, prefix_mode)
        pods = [e for e in attached if e['device_index'] >= fii and (e['device_index'] == 0 or is_ours(e, cluster))]
        taken = set(e['device_index'] for e in attached)
        free_index = [i for i in range(max(fii, 1), lim['max_enis']) if i not in taken]
        node_actions = []
        # ENIs of ours created for this node by a run that stopped before attaching them: attach first.
        for e in orphans.get(host) or []:
            if not free_index:
                break
            index = free_index.pop(0)
            node_actions.append({'action': 'attach', 'node': host, 'eni_id': e['id'], 'instance_id': iid,
                                 'device_index': index, 'unmark': TAG_GC_MARK in (e.get('tags') or {})})
            reused.add(e['id'])
            pods.append(dict(e, device_index=index, instance_id=iid))
        if cfg['delete_on_termination']:
            for e in pods:
                if e['device_index'] > 0 and e.get('attachment_id') and not e.get('delete_on_termination'):
                    node_actions.append({'action': 'delete_on_termination', 'node': host, 'eni_id': e['id'],
                                         'attachment_id': e['attachment_id']})
        available = sum(_held(e) for e in pods)
        held = set()
        for e in pods:
            held |= _addresses_of(e)
        used_ips = set(node.get('used_ips') or ())
        used = len(used_ips & held)
        stray = sorted(used_ips - held, key=_natural)
        if stray:
            warnings.append('%s: pod IPs %s are on none of the node\'s ENIs' % (host, ', '.join(stray)))
        needed = needed_ips(available, used, cfg['pre_allocate'], cfg['min_allocate'], cfg['max_allocate'])
        summary = {'instance_id': iid, 'instance_type': itype, 'limit': limit, 'available': available,
                   'used': used, 'needed': needed, 'excess': 0, 'max_enis': lim['max_enis'],
                   'ipv4_per_eni': lim['ipv4_per_eni']}
        summaries[host] = summary
        if available + needed > limit:
            errors.append('%s: needs %d pod addresses (%d used, pre_allocate %d, min_allocate %d) but %s allows %d: '
                          '(%d ENIs - first_interface_index %d) x (%d IPv4 per ENI - 1)%s' % (
                              host, available + needed, used, cfg['pre_allocate'], cfg['min_allocate'], itype,
                              limit, lim['max_enis'], fii, lim['ipv4_per_eni'],
                              ' x 16 per /28 prefix' if prefix_mode else ''))
            continue
        want = needed + cfg['max_above_watermark'] if needed > 0 else 0
        if cfg['max_allocate'] > 0:
            want = min(want, max(cfg['max_allocate'] - available, 0))
        want = min(want, limit - available)
        if want > 0:
            problem = _grow(host, node, iid, pods, free_index, want, lim, prefix_mode, cfg, cluster, view,
                            subnets, no_prefix_subnets, node_actions, warnings)
            if problem:
                errors.append(problem)
                continue
        elif cfg['release_excess_ips']:
            excess = excess_ips(available, used, cfg['pre_allocate'], cfg['max_above_watermark'], cfg['min_allocate'])
            summary['excess'] = excess
            node_actions.extend(_release(host, pods, used_ips, excess))
        actions.extend(node_actions)
    if errors:
        raise EniPlanError(errors)
    actions.extend(_gc(orphans, reused, set(nodes), model_nodes))
    return {'nodes': summaries, 'actions': actions, 'warnings': warnings}


def _grow(host, node, iid, pods, free_index, want, lim, prefix_mode, cfg, cluster, view, subnets,
          no_prefix_subnets, out, warnings):
    """Actions that add `want` addresses: existing pod ENIs first (lowest device index), then new ENIs.
    Returns an error text, or None."""
    for e in sorted(pods, key=lambda e: e['device_index']):
        if want <= 0:
            break
        pmode = prefix_mode and e['subnet_id'] not in no_prefix_subnets
        free, unit = _capacity(e, lim, pmode)
        if free <= 0:
            continue
        if unit == 'prefix':
            count = min(free, -(-want // PREFIX_SIZE))
            if not subnets.take(e['subnet_id'], count * PREFIX_SIZE):
                continue
            out.append({'action': 'assign', 'node': host, 'eni_id': e['id'], 'prefix_count': count})
            want -= count * PREFIX_SIZE
        else:
            count = min(free, want)
            if not subnets.take(e['subnet_id'], count):
                continue
            out.append({'action': 'assign', 'node': host, 'eni_id': e['id'], 'ip_count': count})
            want -= count
    if want <= 0:
        return None
    override = node.get('eni') or {}
    primary = next(e for e in view['enis'].values() if e.get('instance_id') == iid and e['device_index'] == 0)
    candidates, source, problem = select_subnets(view, cfg, override, primary)
    if problem:
        return '%s: %s' % (host, problem)
    groups, _gsrc, warning, problem = select_security_groups(view, cfg, override, primary)
    if problem:
        return '%s: %s' % (host, problem)
    if warning:
        warnings.append('%s: %s' % (host, warning))
    slots = lim['ipv4_per_eni'] - 1
    while want > 0:
        if not free_index:
            return '%s: %d more addresses needed but all %d ENI slots of %s are taken' % (
                host, want, lim['max_enis'], node['instance_type'])
        index = free_index.pop(0)
        pick_prefix = [s for s in candidates if s not in no_prefix_subnets] if prefix_mode else []
        if pick_prefix:
            count = min(slots, -(-want // PREFIX_SIZE))
            subnet = subnets.best(pick_prefix, count * PREFIX_SIZE + 1)
            if subnet is not None:
                subnets.take(subnet, count * PREFIX_SIZE + 1)
                out.append(_create(host, iid, subnet, groups, index, cfg, cluster, prefix_count=count))
                want -= count * PREFIX_SIZE
                continue
        count = min(slots, want)
        subnet = subnets.best(candidates, count + 1)
        if subnet is None:
            return '%s: no subnet (%s: %s) has the %d free addresses a new ENI needs (InsufficientFreeAddressesInSubnet): %s' % (
                host, source, ', '.join(candidates), count + 1,
                ', '.join('%s %d free' % (s, subnets.free.get(s, 0)) for s in candidates))
        subnets.take(subnet, count + 1)
        out.append(_create(host, iid, subnet, groups, index, cfg, cluster, ip_count=count))
        want -= count
    return None


def _create(host, iid, subnet, groups, index, cfg, cluster, ip_count=0, prefix_count=0):
    act = {'action': 'create', 'node': host, 'instance_id': iid, 'subnet_id': subnet, 'groups': list(groups),
           'device_index': index, 'description': description(cluster, host, iid),
           'tags': owner_tags(cluster, host, cfg.get('tags')),
           'delete_on_termination': bool(cfg['delete_on_termination'])}
    if prefix_count:
        act['prefix_count'] = prefix_count
    else:
        act['ip_count'] = ip_count
    return act


def _release(host, pods, used_ips, excess):
    """Unassign `excess` free secondary IPs, never one in use, never a primary or a prefix: from the ENI
    with the most free IPs first (the highest device index on ties), as Cilium releases."""
    out = []
    order = sorted(pods, key=lambda e: (-len([ip for ip in e['ips'] if ip not in used_ips]), -e['device_index']))
    for e in order:
        if excess <= 0:
            break
        free = sorted((ip for ip in e['ips'] if ip not in used_ips), key=lambda ip: -int(ipaddress.ip_address(ip)))
        take = free[:excess]
        if take:
            out.append({'action': 'unassign', 'node': host, 'eni_id': e['id'], 'ips': sorted(take, key=_natural)})
            excess -= len(take)
    return out


def _gc(orphans, reused, run_nodes, model_nodes):
    """Two-phase collection of detached ENIs of ours: marked on one run, deleted on a later one if still
    detached, at most GC_MAX_PER_RUN of each per run. A detached ENI of a node of the inventory that is
    not in this run belongs to that node's run (AWX slices, --limit): left alone."""
    marks, deletes = [], []
    for owner in sorted(orphans, key=lambda o: _natural(o or '')):
        if owner in model_nodes and owner not in run_nodes:
            continue
        for e in orphans[owner]:
            if e['id'] in reused:
                continue
            if TAG_GC_MARK in (e.get('tags') or {}):
                deletes.append({'action': 'gc_delete', 'node': None, 'eni_id': e['id'], 'owner': owner})
            else:
                marks.append({'action': 'gc_mark', 'node': None, 'eni_id': e['id'], 'owner': owner})
    return marks[:GC_MAX_PER_RUN] + deletes[:GC_MAX_PER_RUN]


def describe_action(act):
    """One readable line per action (the result's changes and the diff header)."""
    kind = act['action']
    if kind == 'create':
        what = '%d /28 prefixes' % act['prefix_count'] if act.get('prefix_count') else '%d secondary IPs' % act['ip_count']
        return '%s: create an ENI in %s with %s, attach it to %s as device %d' % (
            act['node'], act['subnet_id'], what, act['instance_id'], act['device_index'])
    if kind == 'attach':
        return '%s: attach %s (created by an earlier, interrupted run) to %s as device %d' % (
            act['node'], act['eni_id'], act['instance_id'], act['device_index'])
    if kind == 'assign':
        what = '%d /28 prefixes' % act['prefix_count'] if act.get('prefix_count') else '%d secondary IPs' % act['ip_count']
        return '%s: assign %s to %s' % (act['node'], what, act['eni_id'])
    if kind == 'unassign':
        return '%s: release %d unused IPs of %s (%s)' % (act['node'], len(act['ips']), act['eni_id'], ', '.join(act['ips']))
    if kind == 'delete_on_termination':
        return '%s: set delete_on_termination on %s' % (act['node'], act['eni_id'])
    if kind == 'gc_mark':
        return 'gc: mark detached ENI %s (node %s) for deletion on the next run' % (act['eni_id'], act.get('owner'))
    if kind == 'gc_delete':
        return 'gc: delete detached ENI %s (node %s), marked on an earlier run' % (act['eni_id'], act.get('owner'))
    return '%s: %s' % (act.get('node'), kind)


def node_enis(view, instance_id, first_interface_index, cluster):
    """The node's pod ENIs as eni_allocate returns them (the contract with the eni role): device index
    >= first_interface_index, the primary or ours, by device index."""
    out = []
    for e in sorted((e for e in view['enis'].values() if e.get('instance_id') == instance_id),
                    key=lambda e: e['device_index']):
        if e['device_index'] < first_interface_index or not (e['device_index'] == 0 or is_ours(e, cluster)):
            continue
        subnet = view['subnets'].get(e['subnet_id']) or {}
        out.append({'id': e['id'], 'mac': (e.get('mac') or '').lower(), 'device_index': e['device_index'],
                    'subnet_id': e['subnet_id'], 'subnet_cidr': subnet.get('cidr'), 'primary_ip': e['primary_ip'],
                    'ips': sorted(e['ips'], key=lambda ip: int(ipaddress.ip_address(ip))),
                    'prefixes': sorted(e['prefixes'], key=lambda p: int(ipaddress.ip_network(p).network_address))})
    return out
