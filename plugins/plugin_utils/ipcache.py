# -*- coding: utf-8 -*-
# Copyright: podnet.fabric contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The cluster-wide ipcache one node holds (DESIGN.md 7; the datapath contract's symbolic
ipcache entries ``{prefix, identity, tunnel_endpoint, local}``), from the ledger alone.

Every node holds the same addresses, whichever run or AWX slice computes them, because they come
from the ledger, never from other hosts' variables:

- every endpoint address of every node (the endpoint records, identity.endpoint_records), with
  the endpoint's identity; tunnel_endpoint = the owning node's node_ip in tunnel mode for another
  node's endpoint, None for the node's own endpoints and in native mode; local = the node's own;
- every node's underlay address and the router IPs of its pod CIDRs (the host side of its pods'
  gateway, Cilium's cilium_host addresses) as ``host`` (1) on the node itself, ``remote-node`` (6)
  elsewhere; a remote router IP is behind the tunnel in tunnel mode (its tunnel_endpoint is the
  node_ip), the underlay address never is;
- every CIDR identity's CIDR (rules that name CIDRs), with that identity;
- an explicit ``0.0.0.0/0`` and ``::/0`` -> world (2): every address has an entry (Cilium's ipcache
  has the same world prefixes), so a lookup miss never stands for world and stays the datapath's
  "no ipcache entry" drop.

Ledger data read: ``nodes.<node>.ip``, ``.cidrs``, ``.pools`` (router IPs, through the node's
lease), ``.endpoints`` (identity.py), and ``identities`` (the CIDR ones). Pure.
"""
from __future__ import absolute_import, division, print_function

__metaclass__ = type

import ipaddress

from ansible_collections.podnet.fabric.plugins.module_utils.ipam.cidr import natural_key
from ansible_collections.podnet.fabric.plugins.module_utils.ipam import lease as ipam_lease
from ansible_collections.podnet.fabric.plugins.plugin_utils import identity as ident

WORLD_PREFIXES = ('0.0.0.0/0', '::/0')


def _host_prefix(ip):
    address = ipaddress.ip_address(ip)
    return '%s/%d' % (address, 32 if address.version == 4 else 128)


def _prefix_order(prefix):
    net = ipaddress.ip_network(prefix)
    return (net.version, int(net.network_address), net.prefixlen)


def cluster_entries(doc, tunnel, cluster_id=0):
    """What every node's ipcache has in common, before the node-specific part:
    [(prefix, identity, owner node or None, behind the tunnel, an endpoint's)], and the warnings (an address two
    records claim: the first in node order wins)."""
    rows = []
    warnings = []
    seen = {}

    def add(prefix, identity, owner, tunneled, what, endpoint=False):
        if prefix in seen:
            if seen[prefix] != what:
                warnings.append('ipcache: %s is %s and %s; keeping the first' % (prefix, seen[prefix], what))
            return
        seen[prefix] = what
        rows.append((prefix, identity, owner, tunneled, endpoint))

    for text in WORLD_PREFIXES:
        add(text, ident.WORLD, None, False, 'world')
    table = ident.Table(doc, cluster_id)
    for identity in sorted(table.cidr_of):
        add(str(ipaddress.ip_network(table.cidr_of[identity])), identity, None, False,
            'CIDR identity %d' % identity)
    nodes = (doc or {}).get('nodes') or {}
    for node in sorted(nodes, key=natural_key):
        entry = nodes[node] or {}
        if entry.get('ip'):
            add(_host_prefix(entry['ip']), None, node, False, "%s's node address" % node)
        for ip in ipam_lease.lease_router_ips(ipam_lease.node_lease(doc, node)):
            add(_host_prefix(ip), None, node, tunnel, "%s's router IP" % node)
    for node in sorted(nodes, key=natural_key):
        for key, rec in sorted(ident.endpoint_records(nodes[node]).items()):
            for ip in rec['ips']:
                add(_host_prefix(ip), rec['identity'], node, tunnel, "%s's endpoint %s" % (node, key), True)
    rows.sort(key=lambda row: _prefix_order(row[0]))       # once: every node's entries come out in this order
    return rows, warnings


def node_entries(rows, doc, node):
    """The contract's ipcache entries for `node` from cluster_entries' rows (sorted by prefix).
    A row without an identity is a node address: host on its own node, remote-node elsewhere."""
    nodes = (doc or {}).get('nodes') or {}
    out = []
    for prefix, identity, owner, tunneled, endpoint in rows:
        own = owner is not None and owner == node
        if identity is None:
            identity = ident.HOST if own else ident.REMOTE_NODE
        tunnel_endpoint = None
        if tunneled and owner is not None and not own:
            tunnel_endpoint = (nodes.get(owner) or {}).get('ip')
        out.append({'prefix': prefix, 'identity': identity, 'tunnel_endpoint': tunnel_endpoint,
                    'local': endpoint and own})
    return out


def node_ipcache(doc, node, tunnel, cluster_id=0):
    """The ipcache entries of one node: (entries, warnings)."""
    rows, warnings = cluster_entries(doc, tunnel, cluster_id)
    return node_entries(rows, doc, node), warnings
