# -*- coding: utf-8 -*-
# Copyright: podnet.fabric contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The node's host device: a veth pair (podnet_host <-> podnet_net), as Cilium's cilium_host/cilium_net.

A veth pair, not a dummy device: some kernels (this lab's among them) have no dummy driver, and a
veth pair also gives the eBPF datapath a hook on both sides. podnet_host holds the router (gateway)
IP of each of the node's pod CIDRs.
"""
from __future__ import absolute_import, division, print_function

__metaclass__ = type

from ansible_collections.podnet.fabric.plugins.module_utils import netlink
from ansible_collections.podnet.fabric.plugins.module_utils.reconcile import list_diff


def plan(desired, realized):
    """Pure: the actions that turn `realized` into `desired`.

    desired: {'name', 'peer', 'mtu': int, 'addresses': list or None, 'state'}
    realized: {'host': link dict or None, 'peer': link dict or None} (see netlink.link_view)
    """
    host, peer = realized['host'], realized['peer']
    actions = []
    if desired['state'] == 'absent':
        if host is not None:
            actions.append({'action': 'delete', 'name': desired['name']})
        if peer is not None and (host is None or host.get('kind') != 'veth'):
            actions.append({'action': 'delete', 'name': desired['peer']})
        return actions
    pair_ok = (host is not None and peer is not None and host.get('kind') == 'veth'
               and peer.get('kind') == 'veth' and host.get('link') == peer.get('index'))
    if not pair_ok:
        for name, link in ((desired['name'], host), (desired['peer'], peer)):
            if link is not None:
                actions.append({'action': 'delete', 'name': name})
        actions.append({'action': 'create', 'name': desired['name'], 'peer': desired['peer'],
                        'mtu': desired['mtu']})
        host = peer = None
    for name, link in ((desired['name'], host), (desired['peer'], peer)):
        if link is None or link['mtu'] != desired['mtu']:
            if link is not None:
                actions.append({'action': 'set_mtu', 'name': name, 'mtu': desired['mtu']})
        if link is None or not link['up']:
            actions.append({'action': 'up', 'name': name})
    if desired['addresses'] is not None:
        have = host['addresses'] if host else []
        add, remove = list_diff(desired['addresses'], have)
        for a in remove:
            actions.append({'action': 'del_address', 'name': desired['name'], 'address': a})
        for a in add:
            actions.append({'action': 'add_address', 'name': desired['name'], 'address': a})
    return actions


def project(desired, realized, actions):
    """Pure: the realized view after `actions` (the check-mode 'after' of the diff)."""
    if desired['state'] == 'absent':
        return {'host': None, 'peer': None}
    out = {}
    for key, name in (('host', desired['name']), ('peer', desired['peer'])):
        cur = dict(realized[key] or {'name': name, 'kind': 'veth', 'addresses': []})
        cur.update({'mtu': desired['mtu'], 'up': True})
        if key == 'host' and desired['addresses'] is not None:
            cur['addresses'] = sorted(desired['addresses'])
        out[key] = cur
    return out


def apply_action(ipr, a):
    """Carry out one plan action; deleting what is already gone is success."""
    kind = a['action']
    if kind == 'create':
        ipr.link('add', ifname=a['name'], kind='veth', mtu=a['mtu'], peer={'ifname': a['peer'], 'mtu': a['mtu']})
        return
    if kind == 'delete':
        netlink.delete_link(ipr, a['name'])
        return
    idx = ipr.link_lookup(ifname=a['name'])[0]
    if kind == 'set_mtu':
        ipr.link('set', index=idx, mtu=a['mtu'])
    elif kind == 'up':
        ipr.link('set', index=idx, state='up')
    elif kind == 'add_address':
        ip, plen = a['address'].split('/')
        ipr.addr('add', index=idx, address=ip, prefixlen=int(plen))
    elif kind == 'del_address':
        netlink.delete_address(ipr, idx, a['address'])
