# -*- coding: utf-8 -*-
# Copyright: podnet.fabric contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Routes between nodes: a VXLAN/Geneve overlay or native routing (DESIGN.md sections 3-5).

Tunnel mechanism, and why: VXLAN uses ONE ordinary (not collect_md) device per node with static
FDB and neighbour entries, the way flannel's vxlan backend does it. For every other node P:

    route  P.cidr via P.gw dev podnet_vxlan onlink proto podnet (201)
    neigh  P.gw lladdr mac(P) dev podnet_vxlan nud permanent
    fdb    mac(P) dst P.ip dev podnet_vxlan self permanent

An external (collect_md) device needs either an eBPF program to set the tunnel key per packet or
lightweight-tunnel ``encap ip`` routes, and pyroute2 cannot encode LWTUNNEL_ENCAP_IP; the FDB
variant needs nothing but netlink objects pyroute2 handles, each of which the plan can compare
exactly. Learning is off, so the kernel never adds entries of its own. mac(P) is derived from
P's underlay IPv4 address (0e:70 + the 4 bytes), so no node needs another node's facts (AWX
slices): the node map (node, node_ip, pod CIDRs) comes from the IPAM ledger. P.gw is the router IP
of P's first pod CIDR; only its MAC matters (the inner packet still goes to the pod's address).

Geneve devices have no FDB: a Geneve tunnel is one device per peer (``remote P.ip``), named
``podnet_g`` + the last three bytes of P's IP in hex, with the same routes and neighbours.

Native mode: with auto_direct_node_routes, ``P.cidr via P.ip`` when P.ip is on-link on the
underlay device (else an error naming the node, unless skip_unreachable); without it (BGP), no
routes of ours: the speaker installs what it learns. Either way no tunnel device remains.

Ownership: our routes carry protocol netlink.RTPROT_PODNET (201) in the main table; the endpoint
routes other modules install with it on ``lxc*`` devices are not this module's. Our devices are named podnet_vxlan,
podnet_geneve-peer devices podnet_g*; FDB and neighbour entries live on them.
"""
from __future__ import absolute_import, division, print_function

__metaclass__ = type

import ipaddress

from ansible_collections.podnet.fabric.plugins.module_utils import ipfamily, netlink, tunnel as tunnel_facts
from ansible_collections.podnet.fabric.plugins.module_utils.endpoint import DEVICE_PREFIX as ENDPOINT_DEVICE_PREFIX
from ansible_collections.podnet.fabric.plugins.module_utils.netlink import IFF_UP, RTPROT_PODNET

VXLAN_DEVICE = 'podnet_vxlan'
GENEVE_PREFIX = 'podnet_g'
FAMILIES = ('ipv4', 'ipv6')


class RoutingError(Exception):
    """Bad desired state; message names the node and the key at fault."""


def node_mac(ip):
    """The tunnel MAC of the node with underlay IPv4 address ip: locally administered, unicast."""
    packed = ipaddress.IPv4Address(ip).packed
    return '0e:70:' + ':'.join('%02x' % b for b in bytearray(packed))


def geneve_device(ip):
    packed = bytearray(ipaddress.IPv4Address(ip).packed)
    return GENEVE_PREFIX + ''.join('%02x' % b for b in packed[1:])


def _gateway(cidrs):
    """The next hop standing for a peer on the tunnel: its first CIDR's router IP."""
    for c in cidrs:
        net = ipaddress.ip_network(c, strict=False)
        if net.num_addresses > 2:
            return str(net.network_address + 1)
        return str(net.network_address)
    return None


def peers(nodes, node):
    """The other nodes of the node map as a sorted list of {name, node_ip, pod_cidrs: {family: [...]}}.

    nodes: {name: {'node_ip': str, 'pod_cidrs': {'ipv4': [...], 'ipv6': [...]}}} (ipam_allocate's
    ``nodes``). Nodes without an IP or without pod CIDRs carry nothing to route and are left out.
    """
    out = []
    for name in sorted(nodes or {}):
        if name == node:
            continue
        entry = nodes[name] or {}
        cidrs = entry.get('pod_cidrs') or {}
        norm = dict((f, sorted(str(ipaddress.ip_network(c, strict=False)) for c in cidrs.get(f) or ()))
                    for f in FAMILIES)
        if not entry.get('node_ip') or not (norm['ipv4'] or norm['ipv6']):
            continue
        out.append({'name': name, 'node_ip': str(entry['node_ip']), 'pod_cidrs': norm})
    return out


def desired_state(params, underlay, node='this node'):
    """Normalize the module's parameters into the desired state the plan compares with.

    params: {mode, node, node_ip, nodes, tunnel: {protocol, port, vni}, native:
    {auto_direct_node_routes, skip_unreachable}, mtu, state}; underlay: {'dev', 'mtu',
    'networks': [cidr, ...]} read from the node (the device holding node_ip). Raises RoutingError.
    Returns (desired, warnings).
    """
    warnings = []
    mode = params['mode'] if params.get('state', 'present') == 'present' else 'none'
    desired = {'mode': mode, 'devices': {}, 'routes': [], 'neighbours': [], 'fdb': []}
    if mode == 'none':
        return desired, warnings
    if underlay is None or not underlay.get('dev'):
        raise RoutingError('%s: %s' % (node, netlink.underlay_missing(params['node_ip'], params.get('node_device'),
                                                                      'podnet_')))
    others = peers(params.get('nodes'), params['node'])
    if mode == 'tunnel':
        t = params.get('tunnel') or {}
        protocol = t.get('protocol') or 'vxlan'
        port = t.get('port') or tunnel_facts.PORTS[protocol]
        vni = t.get('vni') or tunnel_facts.DEFAULT_VNI
        mtu = params.get('mtu') or underlay['mtu'] - tunnel_facts.OVERHEAD
        mac = node_mac(params['node_ip'])
        common = {'kind': protocol, 'id': vni, 'port': port, 'mtu': mtu, 'mac': mac}
        if protocol == 'vxlan':
            desired['devices'][VXLAN_DEVICE] = dict(common, local=params['node_ip'], link=underlay['dev'],
                                                    learning=False, remote=None)
        seen = {}
        for p in others:
            dev = VXLAN_DEVICE
            if protocol == 'geneve':
                dev = geneve_device(p['node_ip'])
                if dev in seen:
                    raise RoutingError('%s: podnet_node_ip: Geneve device name %s is shared by %s and %s '
                                       '(their IPs end in the same 3 bytes)' % (p['name'], dev, seen[dev], p['name']))
                seen[dev] = p['name']
                desired['devices'][dev] = dict(common, remote=p['node_ip'], local=None, link=None, learning=None)
            pmac = node_mac(p['node_ip'])
            if protocol == 'vxlan':
                desired['fdb'].append({'dev': dev, 'mac': pmac, 'dst': p['node_ip']})
            for fam in FAMILIES:
                gw = _gateway(p['pod_cidrs'][fam])
                if gw is None:
                    continue
                desired['neighbours'].append({'dev': dev, 'dst': gw, 'mac': pmac})
                for c in p['pod_cidrs'][fam]:
                    desired['routes'].append({'dst': c, 'gateway': gw, 'dev': dev, 'onlink': True})
    elif mode == 'native':
        n = params.get('native') or {}
        if n.get('auto_direct_node_routes'):
            nets = [ipaddress.ip_network(c, strict=False) for c in underlay.get('networks') or ()]
            for p in others:
                ip = ipaddress.ip_address(p['node_ip'])
                if not any(ip in net for net in nets):
                    msg = ("%s: podnet_routing.native.auto_direct_node_routes: %s's IP %s is not on-link "
                           "on %s (%s), so '%s via %s' cannot be a direct route" % (
                               node, p['name'], p['node_ip'], underlay['dev'],
                               ', '.join(str(x) for x in nets) or 'no IPv4 network',
                               ', '.join(p['pod_cidrs']['ipv4'] + p['pod_cidrs']['ipv6']), p['node_ip']))
                    if n.get('skip_unreachable'):
                        warnings.append(msg + '; skipped (skip_unreachable)')
                        continue
                    raise RoutingError(msg + '; route it another way (BGP) or set '
                                       'podnet_routing.native.skip_unreachable')
                for c in p['pod_cidrs']['ipv4']:
                    desired['routes'].append({'dst': c, 'gateway': p['node_ip'], 'dev': underlay['dev'], 'onlink': False})
                if p['pod_cidrs']['ipv6']:
                    warnings.append('%s: %s has IPv6 pod CIDRs %s: direct routes need an IPv6 underlay; '
                                    'not routed' % (node, p['name'], ', '.join(p['pod_cidrs']['ipv6'])))
    else:
        raise RoutingError('%s: podnet_routing.mode: %r is not tunnel or native' % (node, mode))
    for key in ('routes', 'neighbours', 'fdb'):
        desired[key] = _sorted(desired[key])
    return desired, warnings


def _key(obj):
    return tuple(sorted((k, str(v)) for k, v in obj.items()))


def _sorted(items):
    return sorted(items, key=_key)


def owned_route(route):
    """Whether a podnet-protocol route of the main table is this module's (not an endpoint's)."""
    return not (route.get('dev') or '').startswith(ENDPOINT_DEVICE_PREFIX)


def owned_device(name):
    return name == VXLAN_DEVICE or name.startswith(GENEVE_PREFIX)


_DEVICE_KEYS = ('kind', 'id', 'port', 'local', 'remote', 'link', 'learning')


def plan(desired, realized):
    """Pure: the actions turning realized into desired.

    realized: {'devices': {name: {kind, id, port, local, remote, link, learning, mtu, mac, up}},
    'routes': [{dst, gateway, dev, onlink}], 'neighbours': [{dev, dst, mac}],
    'fdb': [{dev, mac, dst}]} -- only what is ours (see owned_route, owned_device).
    """
    actions = []
    have_dev = realized.get('devices') or {}
    want_dev = desired['devices']
    recreated = set()
    for name in sorted(have_dev):
        if name not in want_dev:
            actions.append({'action': 'delete_device', 'name': name})
    for name in sorted(want_dev):
        want, have = want_dev[name], have_dev.get(name)
        if have is not None and any(have.get(k) != want.get(k) for k in _DEVICE_KEYS):
            actions.append({'action': 'delete_device', 'name': name})
            have = None
            recreated.add(name)
        if have is None:
            actions.append(dict(want, action='create_device', name=name))
            recreated.add(name)
            continue
        for k in ('mtu', 'mac'):
            if have.get(k) != want[k]:
                actions.append({'action': 'set_device', 'name': name, k: want[k]})
        if not have.get('up'):
            actions.append({'action': 'set_device', 'name': name, 'up': True})
    gone = set(a['name'] for a in actions if a['action'] == 'delete_device')

    def survives(obj):
        # Objects on a device we delete go with it; those on a re-created device are re-added.
        return obj['dev'] not in gone

    for key, add, delete in (('fdb', 'fdb_add', 'fdb_del'), ('neighbours', 'neigh_add', 'neigh_del'),
                             ('routes', 'route_add', 'route_del')):
        have = [o for o in realized.get(key) or () if survives(o)]
        have_keys = set(_key(o) for o in have)
        want_keys = set(_key(o) for o in desired[key])
        for o in have:
            if _key(o) not in want_keys:
                actions.append(dict(o, action=delete))
        for o in desired[key]:
            if _key(o) not in have_keys or o['dev'] in recreated:
                actions.append(dict(o, action=add))
    return actions


def project(desired, realized, actions):
    """Pure: the realized view after actions (check mode's 'after')."""
    if not actions:
        return realized
    devices = {}
    for name, want in desired['devices'].items():
        devices[name] = dict(want, up=True)
    return {'devices': devices, 'routes': list(desired['routes']),
            'neighbours': list(desired['neighbours']), 'fdb': list(desired['fdb'])}


def summary(actions):
    """One line per action, for messages and the diff header."""
    out = []
    for a in actions:
        kind = a['action']
        if kind in ('create_device', 'delete_device'):
            out.append('%s %s' % (kind.replace('_device', ''), a['name']))
        elif kind == 'set_device':
            fields = ', '.join('%s=%s' % (k, v) for k, v in sorted(a.items()) if k not in ('action', 'name'))
            out.append('set %s %s' % (a['name'], fields))
        elif kind.startswith('route'):
            out.append('%s %s via %s dev %s' % (kind, a['dst'], a['gateway'], a['dev']))
        elif kind.startswith('neigh'):
            out.append('%s %s lladdr %s dev %s' % (kind, a['dst'], a['mac'], a['dev']))
        else:
            out.append('%s %s dst %s dev %s' % (kind, a['mac'], a['dst'], a['dev']))
    return out


# --- netlink side (pyroute2): read what is ours, apply a plan -------------------------------------

RTNH_F_ONLINK = 4
NUD_PERMANENT = 0x80
AF_BRIDGE = 7


def _device_view(link):
    info = link.get_attr('IFLA_LINKINFO')
    kind = info.get_attr('IFLA_INFO_KIND') if info else None
    data = info.get_attr('IFLA_INFO_DATA') if info else None
    view = {'kind': kind, 'mtu': link.get_attr('IFLA_MTU'), 'mac': link.get_attr('IFLA_ADDRESS'),
            'up': bool(link['flags'] & IFF_UP), 'id': None, 'port': None, 'local': None, 'remote': None,
            'link': None, 'learning': None}
    if data is not None and kind == 'vxlan':
        view.update(id=data.get_attr('IFLA_VXLAN_ID'), port=data.get_attr('IFLA_VXLAN_PORT'),
                    local=data.get_attr('IFLA_VXLAN_LOCAL'), remote=data.get_attr('IFLA_VXLAN_GROUP'),
                    link=data.get_attr('IFLA_VXLAN_LINK'), learning=bool(data.get_attr('IFLA_VXLAN_LEARNING')))
    elif data is not None and kind == 'geneve':
        view.update(id=data.get_attr('IFLA_GENEVE_ID'), port=data.get_attr('IFLA_GENEVE_PORT'),
                    remote=data.get_attr('IFLA_GENEVE_REMOTE'))
    return view


def _route_view(r, names):
    family = r['family']
    dst = r.get_attr('RTA_DST')
    return {'dst': '%s/%d' % (dst, r['dst_len']) if dst else ('default' if family == 2 else '::/0'),
            'gateway': r.get_attr('RTA_GATEWAY'), 'dev': names.get(r.get_attr('RTA_OIF')),
            'onlink': bool(r['flags'] & RTNH_F_ONLINK)}


def _neigh_view(n, name):
    if not n['state'] & NUD_PERMANENT:
        return None
    return {'dev': name, 'dst': n.get_attr('NDA_DST'), 'mac': n.get_attr('NDA_LLADDR')}


def _fdb_view(f, idx, name):
    if f['ifindex'] != idx or not f.get_attr('NDA_DST'):
        return None
    return {'dev': name, 'mac': f.get_attr('NDA_LLADDR'), 'dst': f.get_attr('NDA_DST')}


def _names(ipr):
    return dict((link['index'], link.get_attr('IFLA_IFNAME')) for link in ipr.get_links())


def read(ipr, routes_table=254):
    """The realized state (only our objects), in the plan's shape."""
    all_links = ipr.get_links()
    names = dict((link['index'], link.get_attr('IFLA_IFNAME')) for link in all_links)
    devices = {}
    for link in all_links:
        name = link.get_attr('IFLA_IFNAME')
        if owned_device(name):
            view = _device_view(link)
            if view['link'] is not None:
                view['link'] = names.get(view['link'], view['link'])
            devices[name] = view
    routes = []
    for family in (2, 10):
        for r in ipr.get_routes(family=family, table=routes_table, proto=RTPROT_PODNET):
            route = _route_view(r, names)
            if owned_route(route):
                routes.append(route)
    neighbours, fdb = [], []
    for idx, name in names.items():
        if name not in devices:
            continue
        for family in (2, 10):
            neighbours += [v for v in (_neigh_view(n, name) for n in ipr.get_neighbours(family=family, ifindex=idx)) if v]
        if devices[name]['kind'] == 'vxlan':
            fdb += [v for v in (_fdb_view(f, idx, name) for f in ipr.fdb('dump', ifindex=idx)) if v]
    return {'devices': devices, 'routes': _sorted(routes), 'neighbours': _sorted(neighbours), 'fdb': _sorted(fdb)}


def _target(action):
    return dict((k, v) for k, v in action.items() if k != 'action')


def apply_action(ipr, a):
    """Carry out one plan action (the plan orders deletes before adds).

    Deletes remove the kernel objects read() would show as this action's object, each by exactly
    what the kernel reports for it (netlink.delete_matching): whatever their scope, type or metric.
    One that is already gone is success.
    """
    def index(name):
        found = ipr.link_lookup(ifname=name)
        return found[0] if found else None

    kind = a['action']
    if kind == 'delete_device':
        netlink.delete_link(ipr, a['name'])
    elif kind == 'create_device':
        spec = {'ifname': a['name'], 'kind': a['kind'], 'mtu': a['mtu'], 'address': a['mac']}
        if a['kind'] == 'vxlan':
            spec.update(vxlan_id=a['id'], vxlan_port=a['port'], vxlan_local=a['local'],
                        vxlan_link=index(a['link']), vxlan_learning=0)
        else:
            spec.update(geneve_id=a['id'], geneve_port=a['port'], geneve_remote=a['remote'])
        ipr.link('add', **spec)
        ipr.link('set', index=index(a['name']), state='up')
    elif kind == 'set_device':
        change = dict((k, v) for k, v in a.items() if k in ('mtu', 'mac'))
        if 'mac' in change:
            change['address'] = change.pop('mac')
        if a.get('up'):
            change['state'] = 'up'
        ipr.link('set', index=index(a['name']), **change)
    elif kind == 'fdb_add':
        ipr.fdb('append', ifindex=index(a['dev']), lladdr=a['mac'], dst=a['dst'], state=NUD_PERMANENT)
    elif kind == 'neigh_add':
        ipr.neigh('replace', dst=a['dst'], lladdr=a['mac'], ifindex=index(a['dev']), state=NUD_PERMANENT)
    elif kind == 'route_add':
        spec = {'dst': a['dst'], 'gateway': a['gateway'], 'oif': index(a['dev']), 'proto': RTPROT_PODNET}
        if a.get('onlink'):
            spec['flags'] = RTNH_F_ONLINK
        ipr.route('replace', **spec)
    elif kind in ('fdb_del', 'neigh_del'):
        idx = index(a['dev'])
        if idx is None:
            return   # its device is gone, and the entry with it
        if kind == 'fdb_del':
            netlink.delete_matching(ipr, 'fdb', lambda f: _fdb_view(f, idx, a['dev']) == _target(a), ifindex=idx)
        else:
            family = ipfamily.af_of(a['dst'])
            netlink.delete_matching(ipr, 'neigh', lambda n: _neigh_view(n, a['dev']) == _target(a),
                                    family=family, ifindex=idx)
    elif kind == 'route_del':
        names = _names(ipr)
        family = ipfamily.af_of(a['dst'])
        netlink.delete_matching(ipr, 'route', lambda r: _route_view(r, names) == _target(a),
                                family=family, table=254, proto=RTPROT_PODNET)
    else:  # pragma: no cover - plan() only emits the kinds above
        raise RoutingError('unknown routing action %r' % kind)
