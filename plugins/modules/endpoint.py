#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: podnet.fabric contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r'''
---
module: endpoint
short_description: Reconcile a workload endpoint (a pod-like network namespace joined to the node)
version_added: 0.2.0
description:
  - Creates, repairs or removes an endpoint, the podnet equivalent of a Cilium endpoint - a network
    namespace (O(name), under C(/run/netns)) joined to the node by a veth pair (O(device) on the
    node, C(eth0) inside) that holds the endpoint's addresses from the node's pod CIDR.
  - Take the addresses from the node's IPAM store with M(podnet.fabric.ipam_endpoint), which
    allocates them to an endpoint ID and returns the node's router IPs.
  - The node's health endpoint is one of these plus a responder - M(podnet.fabric.health_endpoint).
author:
  - podnet.fabric maintainers (@podnet)
extends_documentation_fragment:
  - podnet.fabric.endpoint
  - podnet.fabric.node_lock
options:
  name:
    description: The endpoint's name, which is the name of its network namespace (a file under C(/run/netns)).
    type: str
    required: true
  device:
    description:
      - Name of the node side of the veth pair (the endpoint side is always C(eth0)).
      - Defaults to C(lxc) followed by 12 hex digits of the SHA-256 of O(name), as Cilium names its
        endpoints' devices - 15 characters, the same on every run.
    type: str
  state:
    description: Whether the endpoint exists. C(absent) removes the namespace, the veth pair and the
      node's routes to it.
    type: str
    choices: [present, absent]
    default: present
notes:
  - Anything running inside the namespace is the caller's; removing the endpoint does not end it.
attributes:
  check_mode:
    support: full
    description: Reads the realized state, plans, and reports the plan and the projected state without applying it.
  diff_mode:
    support: full
    description: Returns the realized state before and after (projected in check mode).
'''

EXAMPLES = r'''
- name: Allocate an IP for the endpoint from the node's pod CIDR
  podnet.fabric.ipam_endpoint:
    endpoint_id: web-1
  register: web_ipam

- name: The endpoint, routed through the node's router IP
  podnet.fabric.endpoint:
    name: web-1
    addresses: "{{ web_ipam.ips.values() | list }}"
    router_ips: "{{ web_ipam.router_ips }}"

- name: Remove it
  podnet.fabric.endpoint:
    name: web-1
    state: absent
'''

RETURN = r'''
plan:
  description: The actions taken, or that would be taken in check mode.
  returned: always
  type: list
  elements: dict
  sample: [{action: create_netns, name: web-1}, {action: create_veth, name: lxc2b1e0f4a9c3d, peer: eth0, mtu: 1450}]
state:
  description: The endpoint after the run (projected in check mode) - namespace, both links, routes.
  returned: always
  type: dict
  sample:
    netns: {name: web-1, exists: true, inode: 4026532871, path: /run/netns/web-1}
    device: {name: lxc2b1e0f4a9c3d, kind: veth, mtu: 1450, up: true, addresses: []}
    peer: {name: eth0, kind: veth, mtu: 1450, up: true, addresses: [10.244.1.9/32]}
    routes: [{dst: 10.244.1.1/32, gateway: null, dev: eth0}, {dst: default, gateway: 10.244.1.1, dev: eth0}]
    node_routes: [{dst: 10.244.1.9/32, gateway: null, dev: lxc2b1e0f4a9c3d}]
device:
  description: The node side of the pair.
  returned: always
  type: str
  sample: lxc2b1e0f4a9c3d
netns_path:
  description: The namespace's path, for C(ip netns exec) or C(nsenter --net=).
  returned: always
  type: str
  sample: /run/netns/web-1
address:
  description: The endpoint's IPv4 address (no prefix), or null.
  returned: when O(state=present)
  type: str
  sample: 10.244.1.9
address_ipv6:
  description: The endpoint's IPv6 address (no prefix), or null.
  returned: when O(state=present)
  type: str
  sample: "fd00::109"
mtu:
  description: The MTU the pair was given.
  returned: when O(state=present)
  type: int
  sample: 1450
arp_ignore:
  description: The node's effective arp_ignore on the node side of the pair (0 is what the endpoint needs).
  returned: always
  type: int
  sample: 0
'''

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.podnet.fabric.plugins.module_utils import endpoint, netlink
from ansible_collections.podnet.fabric.plugins.module_utils.netns import netns_path
from ansible_collections.podnet.fabric.plugins.module_utils.reconcile import argument_spec


def main():
    module = AnsibleModule(
        argument_spec=argument_spec(name=dict(type='str', required=True), device=dict(type='str'),
                                    **endpoint.ARGUMENT_SPEC),
        required_if=[('state', 'present', ['addresses'])],
        supports_check_mode=True,
    )
    netlink.require_pyroute2(module)
    p = module.params
    ns = p['name']
    device = p['device'] or endpoint.device_name(ns or '')
    result, _desired = endpoint.run_module(
        module, 'endpoint %s' % ns, device,
        lambda mtu: endpoint.desired_state(ns, device, p['addresses'], p['router_ips'], mtu, p['state']),
        read=lambda desired: endpoint.read(endpoint.open_ipr, ns, device),
        plan=endpoint.plan,
        apply=lambda action: endpoint.apply_action(endpoint.open_ipr, ns, action),
        project=endpoint.project)
    module.exit_json(device=device, netns_path=netns_path(ns), **result)


if __name__ == '__main__':
    main()
