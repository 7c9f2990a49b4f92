#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: podnet.fabric contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r'''
---
module: host_device
short_description: Reconcile a node's pod-network host device (a veth pair)
version_added: 0.1.0
description:
  - Creates, repairs or removes the node's host device, a veth pair (default C(podnet_host) and
    C(podnet_net)), the podnet equivalent of Cilium's C(cilium_host)/C(cilium_net).
  - C(podnet_host) holds the router (gateway) IP of each of the node's pod CIDRs, as a host prefix
    (/32, /128), when O(router_ips) is given; addresses not in the list are removed from it (the
    device is ours).
  - A veth pair rather than a dummy device because not every kernel has the dummy driver.
author:
  - podnet.fabric maintainers (@podnet)
extends_documentation_fragment:
  - podnet.fabric.node_lock
options:
  name:
    description: Name of the host side of the pair.
    type: str
    default: podnet_host
  peer:
    description: Name of the other side of the pair.
    type: str
    default: podnet_net
  mtu:
    description:
      - MTU of both sides. C(0) means the MTU of the underlay device (O(node_device), else the
        device holding O(node_ip)) minus O(overhead).
    type: int
    default: 0
  overhead:
    description: Bytes to subtract from the underlay MTU when O(mtu=0), for example 50 for VXLAN.
    type: int
    default: 0
  node_ip:
    description: The node's underlay address (podnet_node_ip); O(mtu=0) needs it or O(node_device).
    type: str
    aliases: [underlay_ip]
  node_device:
    description: The node's underlay device (podnet_node_device); default, the device holding O(node_ip).
    type: str
  router_ips:
    description:
      - The node's router IPs (bare, or as host prefixes C(/32) and C(/128)), which C(podnet_host)
        must hold exactly, as host prefixes. Omit to leave the device's addresses alone.
      - C(addresses), its earlier name, is an alias.
    type: list
    elements: str
    aliases: [addresses]
  state:
    description: Whether the device exists.
    type: str
    choices: [present, absent]
    default: present
notes:
  - Needs pyroute2 0.9 or later on the node; run it with the podnet interpreter.
attributes:
  check_mode:
    support: full
    description: Reads the realized state, plans, and reports the plan and diff without applying it.
  diff_mode:
    support: full
    description: Returns the realized state before and after (projected in check mode).
'''

EXAMPLES = r'''
- name: Host device with the MTU of a VXLAN overlay
  podnet.fabric.host_device:
    node_ip: "{{ podnet_node_ip }}"
    overhead: 50

- name: Host device holding the node's router IPs
  podnet.fabric.host_device:
    mtu: 1450
    router_ips: [10.244.1.1]

- name: Remove it
  podnet.fabric.host_device:
    state: absent
'''

RETURN = r'''
plan:
  description: The actions taken, or that would be taken in check mode.
  returned: always
  type: list
  elements: dict
  sample: [{action: create, name: podnet_host, peer: podnet_net, mtu: 1450}]
state:
  description: The host device pair after the run (projected in check mode).
  returned: always
  type: dict
  sample: {host: {name: podnet_host, mtu: 1450, up: true, addresses: []}, peer: {name: podnet_net}}
mtu:
  description: The MTU the pair was given.
  returned: always
  type: int
  sample: 1450
'''

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.podnet.fabric.plugins.module_utils import host_device, ipfamily, netlink
from ansible_collections.podnet.fabric.plugins.module_utils.reconcile import Reconciler, argument_spec, error_funnel


def _host_prefixes(module, router_ips):
    """The router IPs as podnet_host holds them: address/32, address/128."""
    out = []
    for a in router_ips:
        try:
            out.append(ipfamily.host_prefix(a))
        except ValueError as e:
            module.fail_json(msg='router_ips: %s' % e)
    return sorted(set(out))


def main():
    module = AnsibleModule(
        argument_spec=argument_spec(
            name=dict(type='str', default='podnet_host'),
            peer=dict(type='str', default='podnet_net'),
            mtu=dict(type='int', default=0),
            overhead=dict(type='int', default=0),
            node_ip=dict(type='str', aliases=['underlay_ip']),
            node_device=dict(type='str'),
            router_ips=dict(type='list', elements='str', aliases=['addresses']),
            state=dict(type='str', choices=['present', 'absent'], default='present'),
        ),
        supports_check_mode=True,
    )
    netlink.require_pyroute2(module)
    p = module.params
    with error_funnel(module, 'host_device %s' % p['name']):
        with netlink.IPRoute() as ipr:
            mtu = p['mtu']
            if p['state'] == 'present' and mtu == 0:
                if not p['node_ip'] and not p['node_device']:
                    module.fail_json(msg='node_ip: required when mtu is 0 (auto), unless node_device is given')
                dev = netlink.underlay(ipr, p['node_ip'], p['node_device'])
                if dev is None:
                    module.fail_json(msg=netlink.underlay_missing(p['node_ip'], p['node_device']))
                mtu = dev['mtu'] - p['overhead']
            if p['state'] == 'present' and not 68 <= mtu <= 65535:
                module.fail_json(msg='mtu: %d is not a valid MTU' % mtu)
            desired = dict(name=p['name'], peer=p['peer'], mtu=mtu, state=p['state'],
                           addresses=None if p['router_ips'] is None else _host_prefixes(module, p['router_ips']))

            def read():
                return {'host': netlink.get_link(ipr, p['name']), 'peer': netlink.get_link(ipr, p['peer'])}

            result = Reconciler(
                module, read,
                plan=lambda realized: host_device.plan(desired, realized),
                apply=lambda action: host_device.apply_action(ipr, action),
                project=lambda realized, actions: host_device.project(desired, realized, actions),
                name='host_device %s' % p['name'],
            ).run(mtu=mtu)
    module.exit_json(**result)


if __name__ == '__main__':
    main()
