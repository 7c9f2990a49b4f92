# -*- coding: utf-8 -*-
# Copyright: podnet.fabric contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""An endpoint: a workload's network namespace joined to the node, as a Cilium endpoint is a pod's.

An endpoint is a network namespace (under /run/netns) with a veth pair to the node (``lxc<hash>`` on
the node, or a name of the caller's such as ``lxc_health``; ``eth0`` inside), its addresses from the
node's IPAM store, and the routes and neighbour set-up that make the node its only router:

- inside: ``eth0`` holds each address as /32 (/128), with ``<router> dev eth0 scope link`` and
  ``default via <router>``, the router being the node's router IP on podnet_host;
- on the node: ``<address>/32 dev <device> scope link proto podnet`` (and the /128);
- ARP: the node answers for the router IP on the device because the address is local to the node
  and Linux's default arp_ignore=0 answers for any local address on any interface (with
  arp_ignore >= 1 it would not: arp_ignore() lets a module warn);
- IPv6 neighbour discovery answers only for addresses of the receiving interface, so for an IPv6
  endpoint the node proxies the router IP on the device (proxy_ndp=1, a proxy neighbour entry,
  proxy_delay=0 so that the first packet is not held back).

The health endpoint (health.py) is this plus a responder. Layout: pure functions (normalize,
desired state, plan, project) first; then the reader and the applier, which need root.
"""
from __future__ import absolute_import, division, print_function

__metaclass__ = type

import hashlib
import ipaddress
import os
import socket

from ansible_collections.podnet.fabric.plugins.module_utils import ipfamily, netlink, sysctl
from ansible_collections.podnet.fabric.plugins.module_utils.netns import inode, netns_exists, netns_path
from ansible_collections.podnet.fabric.plugins.module_utils.reconcile import Reconciler, error_funnel, list_diff
from ansible_collections.podnet.fabric.plugins.module_utils.netlink import NTF_PROXY, RTPROT_PODNET

SCOPE_LINK = 253
IFA_F_NODAD = 0x02
PEER = 'eth0'
DEVICE_PREFIX = 'lxc'
PROXY_SYSCTLS = {'net.ipv6.conf.%s.proxy_ndp': 1, 'net.ipv6.neigh.%s.proxy_delay': 0}


class EndpointError(Exception):
    pass


# ---------------------------------------------------------------------------------------------
# Pure: names, input normalization, desired state, plan, projection
# ---------------------------------------------------------------------------------------------

def device_name(name):
    """The node side of an endpoint's pair, as Cilium names it: lxc + 12 hex digits of a hash of the
    endpoint's name (15 characters, the kernel's limit), the same on every run."""
    return DEVICE_PREFIX + hashlib.sha256(name.encode('utf-8')).hexdigest()[:12]


def check_names(netns, device):
    """Raise EndpointError unless `netns` is a namespace name and `device` a link name."""
    if not netns or '/' in netns or netns in ('.', '..'):
        raise EndpointError('netns: %r is not a namespace name' % (netns,))
    if not device or len(device) > 15 or '/' in device or any(c.isspace() for c in device):
        raise EndpointError('device: %r is not a link name (1 to 15 characters)' % (device,))


def normalize_addresses(addresses):
    """{'ipv4': 'a.b.c.d/32', 'ipv6': 'x::y/128'} from a list of addresses (bare or host prefixes).

    At most one address per family, always a host prefix: the endpoint owns one address, its
    neighbours are reached through the router.
    """
    out = {}
    for a in addresses or []:
        try:
            host = ipfamily.host_prefix(str(a).strip())
        except ValueError as e:
            raise EndpointError('addresses: %s' % e)
        fam = ipfamily.family_of(host)
        if fam in out:
            raise EndpointError('addresses: more than one %s address (%s, %s)' % (fam, out[fam], a))
        out[fam] = host
    if 'ipv4' not in out and 'ipv6' not in out:
        raise EndpointError('addresses: the endpoint needs an address')
    return out


def normalize_routers(router_ips):
    """{family: router IP}: the first router IP of each family in `router_ips` (the node's router
    IPs as ipam_endpoint returns them, IPv4 first), bare or as host prefixes."""
    out = {}
    for router in router_ips or ():
        text = str(router).split('/', 1)[0].strip()
        try:
            addr = ipaddress.ip_address(text)
        except ValueError:
            raise EndpointError('router_ips: %r is not an IP address' % (router,))
        out.setdefault('ipv%d' % addr.version, str(addr))
    return out


def desired_state(netns, device, addresses, router_ips, mtu, state):
    """Validate and normalize everything the plan compares (raises EndpointError)."""
    check_names(netns, device)
    if state == 'absent':
        return {'state': 'absent', 'netns': netns, 'device': device}
    addrs = normalize_addresses(addresses)
    routers = normalize_routers(router_ips)
    for fam in ('ipv4', 'ipv6'):
        if fam in addrs and not routers.get(fam):
            raise EndpointError('router_ips: the endpoint has an %s address (%s) but no %s router IP to route through'
                                % (fam, addrs[fam], fam))
    if not 68 <= int(mtu) <= 65535:
        raise EndpointError('mtu: %s is not a valid MTU' % mtu)
    routes, node_routes = [], []
    for fam in ('ipv4', 'ipv6'):
        if fam not in addrs:
            continue
        host = '/32' if fam == 'ipv4' else '/128'
        routes.append({'dst': routers[fam] + host, 'gateway': None, 'dev': PEER})
        routes.append({'dst': 'default' if fam == 'ipv4' else 'default6', 'gateway': routers[fam], 'dev': PEER})
        node_routes.append({'dst': addrs[fam], 'gateway': None, 'dev': device})
    return {
        'state': 'present',
        'proxy_ndp': [routers['ipv6']] if 'ipv6' in addrs else [],
        'netns': netns,
        'device': device,
        'mtu': int(mtu),
        'addresses': sorted(addrs.values()),
        'routes': sort_routes(routes),
        'node_routes': sort_routes(node_routes),
    }


def sort_routes(routes):
    return sorted(routes, key=lambda r: (r['dst'], r['gateway'] or '', r['dev'] or ''))


def _route_diff(want, have):
    """Like list_diff, ordered so that a gateway's link route is added before and removed after it."""
    add, remove = list_diff(want, have)
    return (sorted(add, key=lambda r: r['gateway'] is not None),
            sorted(remove, key=lambda r: r['gateway'] is None))


def _pair_ok(dev, peer):
    return (dev is not None and peer is not None and dev.get('kind') == 'veth' and peer.get('kind') == 'veth'
            and dev.get('link') == peer.get('index') and peer.get('link') == dev.get('index'))


def plan(desired, realized):
    """Pure: the actions that turn `realized` into `desired` (see read() for the realized shape)."""
    ns = realized['netns']
    dev, peer = realized['device'], realized['peer']
    actions = []

    if desired['state'] == 'absent':
        if dev is not None:
            actions.append({'action': 'delete_link', 'name': desired['device']})
        if ns['exists']:
            actions.append({'action': 'delete_netns', 'name': desired['netns']})
        return actions

    new_ns = not ns['exists']
    if new_ns:
        actions.append({'action': 'create_netns', 'name': desired['netns']})
        peer = None
    if not _pair_ok(dev, peer):
        if dev is not None:
            actions.append({'action': 'delete_link', 'name': desired['device']})
        if peer is not None and (dev is None or dev.get('link') != peer.get('index')):
            actions.append({'action': 'delete_peer', 'name': PEER, 'netns': desired['netns']})
        actions.append({'action': 'create_veth', 'name': desired['device'], 'peer': PEER,
                        'netns': desired['netns'], 'mtu': desired['mtu']})
        dev = peer = None
    for side, name, link in (('node', desired['device'], dev), ('endpoint', PEER, peer)):
        if link is not None and link['mtu'] != desired['mtu']:
            actions.append({'action': 'set_mtu', 'side': side, 'name': name, 'mtu': desired['mtu']})
        if link is None or not link['up']:
            actions.append({'action': 'up', 'side': side, 'name': name})
    if new_ns or not realized.get('lo_up'):
        actions.append({'action': 'up', 'side': 'endpoint', 'name': 'lo'})

    # New addresses before old ones go: removing a device's last IPv4 address flushes its routes.
    add, remove = list_diff(desired['addresses'], peer['addresses'] if peer else [])
    actions += [{'action': 'add_address', 'address': a} for a in add]
    actions += [{'action': 'del_address', 'address': a} for a in remove]

    # Routes go with their device: a recreated pair starts with none.
    add, remove = _route_diff(desired['routes'], realized['routes'] if peer else [])
    actions += [dict(r, action='del_route', side='endpoint') for r in remove]
    actions += [dict(r, action='add_route', side='endpoint') for r in add]
    add, remove = _route_diff(desired['node_routes'], realized['node_routes'] if dev else [])
    actions += [dict(r, action='del_route', side='node') for r in remove]
    actions += [dict(r, action='add_route', side='node') for r in add]

    # IPv6: the node answers neighbour solicitations for the router IP on the device (see top).
    recreated = dev is None
    have = [] if recreated else realized.get('proxy_ndp') or []
    if desired['proxy_ndp']:
        sysctls = {} if recreated else realized.get('sysctls') or {}
        for key, value in sorted(PROXY_SYSCTLS.items()):
            if sysctls.get(key % desired['device']) != value:
                actions.append({'action': 'set_sysctl', 'key': key % desired['device'], 'value': value})
    add, remove = list_diff(desired['proxy_ndp'], have)
    actions += [{'action': 'del_proxy', 'address': a, 'name': desired['device']} for a in remove]
    actions += [{'action': 'add_proxy', 'address': a, 'name': desired['device']} for a in add]
    return actions


def project(desired, realized, actions):
    """Pure: the realized view after `actions` (the check-mode 'after' of the diff)."""
    if desired['state'] == 'absent':
        return empty_realized(desired['netns'])
    if not actions:
        return realized
    out = dict(realized)
    out['netns'] = dict(realized['netns'], exists=True, path=netns_path(desired['netns']))
    recreated = any(a['action'] == 'create_veth' for a in actions)
    for key, name, kind in (('device', desired['device'], 'veth'), ('peer', PEER, 'veth')):
        cur = dict((None if recreated else realized[key]) or {'name': name, 'kind': kind, 'addresses': []})
        cur.update({'mtu': desired['mtu'], 'up': True})
        if key == 'peer':
            cur['addresses'] = list(desired['addresses'])
        out[key] = cur
    out['lo_up'] = True
    out['routes'] = list(desired['routes'])
    out['node_routes'] = list(desired['node_routes'])
    out['proxy_ndp'] = list(desired['proxy_ndp'])
    if desired['proxy_ndp']:
        out['sysctls'] = dict((key % desired['device'], value) for key, value in PROXY_SYSCTLS.items())
    return out


def empty_realized(netns):
    return {
        'netns': {'name': netns, 'exists': False, 'inode': None, 'path': netns_path(netns)},
        'device': None,
        'peer': None,
        'lo_up': None,
        'routes': [],
        'node_routes': [],
        'proxy_ndp': [],
        'sysctls': {},
    }


def addresses_by_family(realized, desired):
    """{'ipv4': 'a.b.c.d', 'ipv6': ...}: what the endpoint holds (what it will hold in check mode)."""
    held = (realized.get('peer') or {}).get('addresses') or desired['addresses']
    out = {}
    for a in held:
        ip = a.split('/', 1)[0]
        out['ipv6' if ':' in ip else 'ipv4'] = ip
    return out


# ---------------------------------------------------------------------------------------------
# Root: reading and applying
# ---------------------------------------------------------------------------------------------

def _route_view(r, dev_name):
    dst = r.get_attr('RTA_DST')
    if dst:
        dst = '%s/%d' % (dst, r['dst_len'])
    else:
        dst = 'default' if r['family'] == socket.AF_INET else 'default6'
    return {'dst': dst, 'gateway': r.get_attr('RTA_GATEWAY'), 'dev': dev_name}


def _routes(ipr, dev_name):
    """Our (proto podnet) routes through `dev_name` in the main table, both families."""
    idx = ipr.link_lookup(ifname=dev_name)
    if not idx:
        return []
    return sort_routes([_route_view(r, dev_name) for fam in (socket.AF_INET, socket.AF_INET6)
                        for r in ipr.get_routes(family=fam, table=254, proto=RTPROT_PODNET)
                        if r.get_attr('RTA_OIF') == idx[0]])


def arp_ignore(device):
    """The node's effective arp_ignore on `device` (the larger of all and the device), or None."""
    vals = [v for v in (sysctl.read_int('net.ipv4.conf.%s.arp_ignore' % conf) for conf in ('all', device))
            if v is not None]
    return max(vals) if vals else None


def read(ipr_factory, netns, device):
    """The realized state. ipr_factory(netns_name or None) opens an IPRoute (node or endpoint)."""
    out = empty_realized(netns)
    with ipr_factory(None) as ipr:
        out['device'] = netlink.get_link(ipr, device)
        out['node_routes'] = _routes(ipr, device)
    if out['device'] is not None:
        out['proxy_ndp'] = netlink.proxy_neighbours(out['device']['index'])
        out['sysctls'] = dict((key % device, sysctl.read_int(key % device)) for key in PROXY_SYSCTLS)
    if netns_exists(netns):
        out['netns'].update(exists=True, inode=inode(netns_path(netns)))
        with ipr_factory(netns) as nipr:
            out['peer'] = netlink.get_link(nipr, PEER)
            lo = netlink.get_link(nipr, 'lo')
            out['lo_up'] = bool(lo and lo['up'])
            out['routes'] = _routes(nipr, PEER)
    return out


def open_ipr(ns):
    """An IPRoute on the node (ns None) or in the endpoint's namespace, never creating it (flags=0)."""
    if ns is None:
        return netlink.IPRoute()
    return netlink.IPRoute(netns=ns, flags=0)


def apply_action(ipr_factory, netns, a):
    """Carry out one plan() action; endpoint-side ones run in the network namespace `netns`.

    Deleting what is already gone is success; deletes go by what the kernel reports (netlink).
    """
    kind = a['action']
    if kind == 'create_netns':
        from pyroute2 import netns as pnetns
        path = netns_path(a['name'])
        if os.path.lexists(path) and not netns_exists(a['name']):
            # The empty mount point a create killed before its bind mount leaves behind:
            # pyroute2 creates it with O_EXCL and would fail on it for good.
            os.unlink(path)
        pnetns.create(a['name'])
    elif kind == 'delete_netns':
        from pyroute2 import netns as pnetns
        pnetns.remove(a['name'])
    elif kind == 'create_veth':
        with ipr_factory(None) as ipr:
            ipr.link('add', ifname=a['name'], kind='veth', mtu=a['mtu'],
                     peer={'ifname': a['peer'], 'mtu': a['mtu'], 'net_ns_fd': netns_path(a['netns'])})
    elif kind in ('delete_link', 'delete_peer'):
        with ipr_factory(a['netns'] if kind == 'delete_peer' else None) as ipr:
            netlink.delete_link(ipr, a['name'])
    elif kind == 'set_sysctl':
        sysctl.write(a['key'], a['value'])
    elif kind in ('add_proxy', 'del_proxy'):
        with ipr_factory(None) as ipr:
            idx = ipr.link_lookup(ifname=a['name'])
            if kind == 'add_proxy':
                ipr.neigh('add', dst=a['address'], ifindex=idx[0], flags=NTF_PROXY, family=socket.AF_INET6)
            elif idx:   # a proxy entry goes with its link
                netlink.delete(ipr, 'neigh', {'family': socket.AF_INET6, 'ifindex': idx[0], 'flags': NTF_PROXY,
                                              'NDA_DST': a['address']})
    else:
        _apply_in(ipr_factory, netns, a)


def _apply_in(ipr_factory, netns, a):
    """Link, address and route actions, on the node (side 'node') or in the endpoint."""
    kind = a['action']
    side = a.get('side', 'endpoint')
    ns = None if side == 'node' else netns
    with ipr_factory(ns) as ipr:
        if kind in ('set_mtu', 'up'):
            idx = ipr.link_lookup(ifname=a['name'])[0]
            if kind == 'set_mtu':
                ipr.link('set', index=idx, mtu=a['mtu'])
            else:
                ipr.link('set', index=idx, state='up')
        elif kind == 'add_address':
            idx = ipr.link_lookup(ifname=PEER)[0]
            ip, plen = a['address'].split('/')
            kw = {'flags': IFA_F_NODAD} if ':' in ip else {}   # a /128 of our own: no duplicate detection delay
            ipr.addr('add', index=idx, address=ip, prefixlen=int(plen), **kw)
        elif kind == 'del_address':
            idx = ipr.link_lookup(ifname=PEER)
            if idx:
                netlink.delete_address(ipr, idx[0], a['address'])
        elif kind == 'add_route':
            ipr.route('replace', **route_spec(ipr, a))
        elif kind == 'del_route':
            # The kernel flushes a device's IPv4 routes with its last address: gone is success.
            idx = ipr.link_lookup(ifname=a['dev'])
            target = dict((k, a[k]) for k in ('dst', 'gateway', 'dev'))
            if idx:
                netlink.delete_matching(
                    ipr, 'route', lambda r: r.get_attr('RTA_OIF') == idx[0] and _route_view(r, a['dev']) == target,
                    family=socket.AF_INET6 if ':' in a['dst'] or a['dst'] == 'default6' else socket.AF_INET,
                    table=254, proto=RTPROT_PODNET)
        else:  # pragma: no cover - plan() only emits the kinds above
            raise EndpointError('unknown endpoint action %r' % kind)


def route_spec(ipr, r):
    idx = ipr.link_lookup(ifname=r['dev'])[0]
    if r['dst'] in ('default', 'default6'):
        fam = socket.AF_INET if r['dst'] == 'default' else socket.AF_INET6
        dst = '0.0.0.0/0' if fam == socket.AF_INET else '::/0'
    else:
        fam = socket.AF_INET6 if ':' in r['dst'] else socket.AF_INET
        dst = r['dst']
    spec = {'dst': dst, 'oif': idx, 'family': fam, 'table': 254, 'proto': RTPROT_PODNET}
    if r.get('gateway'):
        spec['gateway'] = r['gateway']
    elif fam == socket.AF_INET:
        spec['scope'] = SCOPE_LINK
    return spec


# ---------------------------------------------------------------------------------------------
# Shared by the modules that reconcile an endpoint (endpoint, health_endpoint)
# ---------------------------------------------------------------------------------------------

# The options both endpoint modules take (their documentation: doc_fragments/endpoint.py).
ARGUMENT_SPEC = dict(
    addresses=dict(type='list', elements='str'),
    router_ips=dict(type='list', elements='str', default=[]),
    mtu=dict(type='int', default=0),
    host_device=dict(type='str', default='podnet_host'),
    state=dict(type='str', choices=['present', 'absent'], default='present'),
)


def resolve_mtu(mtu, host_device):
    """`mtu`, or the MTU of the node's `host_device` when it is 0 (the pod MTU)."""
    if mtu:
        return mtu
    with netlink.IPRoute() as ipr:
        host = netlink.get_link(ipr, host_device)
    if host is None:
        raise EndpointError('mtu: 0 takes the MTU of %s, which this node does not have; run the '
                            'podnet.fabric.host_device role first or set mtu' % host_device)
    return host['mtu']


def run_module(module, name, device, desired_state, read, plan, apply, project):
    """The pass of a module that reconciles an endpoint (endpoint, health_endpoint): the desired
    state (desired_state(mtu), the MTU resolved first), one reconcile pass, the convergence check,
    and the result's endpoint keys. read(desired) and apply(action) act on the node; plan and project are
    the pure functions of the endpoint (or of the endpoint plus what the module adds to it).

    Every error fails the module in one line that starts with `name`. Returns (result, desired).
    """
    p = module.params
    with error_funnel(module, name):
        try:
            mtu = resolve_mtu(p['mtu'], p['host_device']) if p['state'] == 'present' else 0
            desired = desired_state(mtu)
        except EndpointError as e:
            module.fail_json(msg='%s: %s' % (name, e))
        result = Reconciler(module, lambda: read(desired), plan=lambda realized: plan(desired, realized), apply=apply,
                            project=lambda realized, actions: project(desired, realized, actions), name=name).run()
        after = result['state']
        if result['changed'] and not module.check_mode:
            left = plan(desired, after)
            if left:
                module.fail_json(msg='%s: did not converge; still to do: %s' % (name, left), **result)
        result['arp_ignore'] = arp_ignore(device)
        if p['state'] == 'present':
            by_fam = addresses_by_family(after, desired)
            result.update(address=by_fam.get('ipv4'), address_ipv6=by_fam.get('ipv6'), mtu=mtu)
            _warn_unreachable_router(module, device, by_fam, desired, result['arp_ignore'])
    return result, desired


def _warn_unreachable_router(module, device, by_family, desired, arp_ignore_value):
    """Warn when the node will not answer the endpoint's neighbour requests for its router IP."""
    gateways = dict((r['dst'], r['gateway']) for r in desired['routes'] if r['gateway'])
    if 'ipv4' in by_family and arp_ignore_value not in (None, 0):
        module.warn('%s: net.ipv4.conf arp_ignore is %s: the node will not answer ARP for the router IP %s '
                    'on %s, so the endpoint cannot reach its router; set arp_ignore=0 there'
                    % (device, arp_ignore_value, gateways.get('default'), device))
    if 'ipv6' in by_family and sysctl.read_int('net.ipv6.conf.%s.forwarding' % device) == 0:
        module.warn('%s: net.ipv6.conf forwarding is 0: the node does not answer neighbour solicitations '
                    'for the proxied router IP %s, so the IPv6 endpoint cannot reach its router'
                    % (device, gateways.get('default6')))
