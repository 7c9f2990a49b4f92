#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: podnet.fabric contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r'''
---
module: routing
short_description: Reconcile a node's routes to the other nodes' pod CIDRs (overlay or native)
version_added: 0.1.0
description:
  - 'O(mode=tunnel): a VXLAN overlay. One device, C(podnet_vxlan) (UDP port O(tunnel.port), VNI
    O(tunnel.vni), learning off), with, for every other node, a static FDB entry (its tunnel MAC
    to its underlay IP), a permanent neighbour entry and a route of its pod CIDRs through the
    device. Tunnel MACs are derived from the underlay IPs (C(0e:70) + the four bytes), so a node
    needs nothing but the node map. Geneve (O(tunnel.protocol=geneve), UDP 6081) has no FDB: one
    device per other node, C(podnet_g) + the last three bytes of its IP in hex, with C(remote) set.'
  - 'Before changing anything the kernel is asked (in a throwaway network namespace) whether it
    can create the tunnel device; if it cannot, for example Geneve on a kernel without the geneve
    driver, the module fails and changes nothing.'
  - 'O(mode=native): no tunnel device. With O(native.auto_direct_node_routes), a route
    C(podCIDR via nodeIP) for every other node whose IP is on-link on the underlay device; a node
    that is not on-link is an error naming it, unless O(native.skip_unreachable) (then a warning).
    Without it (BGP), this module keeps no routes: the BGP speaker installs what it learns.'
  - Ownership. Routes carry protocol 201 (C(podnet)) in the main table; routes of that protocol
    on C(lxc*) devices belong to endpoints and are left alone. Devices C(podnet_vxlan) and
    C(podnet_g*) are ours with their FDB and neighbour entries. Whatever of ours is not desired is
    removed (a node left the cluster, the mode changed); nothing else is touched.
  - The node map, O(nodes), is the IPAM ledger's view of every node (what
    M(podnet.fabric.ipam_allocate) returns as C(nodes)), never other hosts' variables, so
    runs limited to some nodes (C(--limit), AWX slices) still route to all of them.
author:
  - podnet.fabric maintainers (@podnet)
extends_documentation_fragment:
  - podnet.fabric.node_lock
options:
  mode:
    description: How pod traffic crosses nodes (C(podnet_routing.mode)).
    type: str
    choices: [tunnel, native]
    default: tunnel
  node:
    description: This node's name in O(nodes) (the inventory hostname).
    type: str
    required: true
  node_ip:
    description: This node's underlay IPv4 address (C(podnet_node_ip)); it finds the underlay device
      unless O(node_device) names it.
    type: str
    required: true
  node_device:
    description:
      - This node's underlay device (C(podnet_node_device)), the one whose MTU and networks count
        (the VXLAN device's C(link), the on-link check of direct routes). Default, the device
        holding O(node_ip).
    type: str
  nodes:
    description:
      - 'The node map: every node of the cluster, C({name: {node_ip, pod_cidrs: {ipv4: [...], ipv6: [...]}}}).
        This node''s own entry is skipped.'
      - C(cluster), its earlier name, is an alias.
    type: dict
    default: {}
    aliases: [cluster]
  tunnel:
    description: The tunnel (C(podnet_routing.tunnel)).
    type: dict
    default: {}
    suboptions:
      protocol:
        description: The encapsulation.
        type: str
        choices: [vxlan, geneve]
        default: vxlan
      port:
        description: UDP port; default 8472 for VXLAN, 6081 for Geneve.
        type: int
      vni:
        description: The VXLAN/Geneve network identifier.
        type: int
        default: 2
  native:
    description: Native routing (C(podnet_routing.native)).
    type: dict
    default: {}
    suboptions:
      auto_direct_node_routes:
        description: Install C(podCIDR via nodeIP) for every other node.
        type: bool
        default: false
      skip_unreachable:
        description: Skip (with a warning) nodes whose IP is not on-link instead of failing.
        type: bool
        default: false
  mtu:
    description: MTU of the tunnel device; C(0) is the underlay MTU minus 50.
    type: int
    default: 0
  state:
    description: C(absent) removes every route, device, FDB and neighbour entry of ours.
    type: str
    choices: [present, absent]
    default: present
notes:
  - IPv6 pod CIDRs cross the tunnel; native direct routes are IPv4 only (the underlay is IPv4).
attributes:
  check_mode:
    support: full
    description: Plans against the kernel's state and reports the plan and diff without applying it.
  diff_mode:
    support: full
    description: The diff is the module's objects (devices, routes, neighbours, FDB) before and after.
'''

EXAMPLES = r'''
- name: Route to the other nodes through a VXLAN overlay
  podnet.fabric.routing:
    mode: tunnel
    node: "{{ inventory_hostname }}"
    node_ip: "{{ podnet_node_ip }}"
    nodes: "{{ ipam_allocation.nodes }}"
    tunnel: {protocol: vxlan, port: 8472, vni: 2}

- name: Native routing with direct routes
  podnet.fabric.routing:
    mode: native
    node: "{{ inventory_hostname }}"
    node_ip: "{{ podnet_node_ip }}"
    nodes: "{{ ipam_allocation.nodes }}"
    native: {auto_direct_node_routes: true}
'''

RETURN = r'''
plan:
  description: The actions taken (or, in check mode, that would be taken).
  returned: always
  type: list
  elements: dict
  sample: [{action: route_add, dst: 10.244.2.0/24, gateway: 10.244.2.1, dev: podnet_vxlan, onlink: true}]
changes:
  description: The plan as one line per action.
  returned: always
  type: list
  elements: str
  sample: [create podnet_vxlan, route_add 10.244.2.0/24 via 10.244.2.1 dev podnet_vxlan]
state:
  description: The module's objects after the run (projected in check mode).
  returned: always
  type: dict
peers:
  description: The other nodes routed to, C(name), C(node_ip) and C(pod_cidrs).
  returned: always
  type: list
  elements: dict
underlay:
  description: The underlay device (C(dev), C(mtu), C(networks)).
  returned: when O(state=present)
  type: dict
'''

import ipaddress
import platform

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.podnet.fabric.plugins.module_utils import netlink, routing, tunnel as tunnel_facts
from ansible_collections.podnet.fabric.plugins.module_utils.reconcile import Reconciler, argument_spec, error_funnel


def _underlay(ipr, node_ip, node_device):
    dev = netlink.underlay(ipr, node_ip, node_device)
    if dev is None:
        return None
    nets = []
    for a in dev['addresses']:
        iface = ipaddress.ip_interface(a)
        if iface.version == 4:
            nets.append(str(iface.network))
    return {'dev': dev['name'], 'mtu': dev['mtu'], 'networks': nets}


def main():
    module = AnsibleModule(
        argument_spec=argument_spec(
            mode=dict(type='str', choices=['tunnel', 'native'], default='tunnel'),
            node=dict(type='str', required=True),
            node_ip=dict(type='str', required=True),
            node_device=dict(type='str'),
            nodes=dict(type='dict', default={}, aliases=['cluster']),
            tunnel=dict(type='dict', default={}, options=dict(
                protocol=dict(type='str', choices=['vxlan', 'geneve'], default='vxlan'),
                port=dict(type='int'),
                vni=dict(type='int', default=tunnel_facts.DEFAULT_VNI),
            )),
            native=dict(type='dict', default={}, options=dict(
                auto_direct_node_routes=dict(type='bool', default=False),
                skip_unreachable=dict(type='bool', default=False),
            )),
            mtu=dict(type='int', default=0),
            state=dict(type='str', choices=['present', 'absent'], default='present'),
        ),
        supports_check_mode=True,
    )
    netlink.require_pyroute2(module)
    p = module.params
    node = p['node']
    try:
        ipaddress.IPv4Address(p['node_ip'])
    except ValueError:
        module.fail_json(msg='%s: podnet_node_ip: %r is not an IPv4 address' % (node, p['node_ip']))
    present = p['state'] == 'present'
    if present and p['mode'] == 'tunnel':
        protocol = p['tunnel']['protocol']
        if not netlink.link_kind_supported(protocol):
            module.fail_json(msg='%s: podnet_routing.tunnel.protocol: %s: this kernel (%s) cannot create %s '
                                 'devices (no %s driver); nothing was changed. Use vxlan, native routing, '
                                 'or a kernel with the %s driver' % (
                                     node, protocol, platform.release(), protocol,
                                     'Geneve' if protocol == 'geneve' else 'VXLAN', protocol))
    with error_funnel(module, 'routing (%s)' % node):
        with netlink.IPRoute() as ipr:
            underlay = _underlay(ipr, p['node_ip'], p['node_device']) if present else None
            try:
                desired, warnings = routing.desired_state(dict(p), underlay, node=node)
            except routing.RoutingError as e:
                module.fail_json(msg=str(e))
            for w in warnings:
                module.warn(w)
            seen = {}

            def plan(realized):
                seen['actions'] = routing.plan(desired, realized)
                return seen['actions']

            result = Reconciler(
                module, lambda: routing.read(ipr), plan,
                apply=lambda action: routing.apply_action(ipr, action),
                project=lambda realized, actions: routing.project(desired, realized, actions),
                describe=lambda action: routing.summary([action])[0],
                name='routing (%s)' % node,
            ).run(peers=routing.peers(p['nodes'], node) if present else [])
            if underlay is not None:
                result['underlay'] = underlay
            result['changes'] = routing.summary(seen.get('actions') or [])
    module.exit_json(**result)


if __name__ == '__main__':
    main()
