#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: podnet.fabric contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r'''
---
module: health_endpoint
short_description: Reconcile a node's health endpoint (a pod-like namespace with a TCP responder)
version_added: 0.1.0
description:
  - Creates, repairs or removes the node's health endpoint, the podnet equivalent of Cilium's
    health endpoint - a network namespace (default C(podnet-health), under C(/run/netns)) joined to
    the node by a veth pair (C(lxc_health) on the node, C(eth0) inside), holding an endpoint (pod)
    address from the node's pod CIDR.
  - The health endpoint is an endpoint (M(podnet.fabric.endpoint)) plus a responder.
  - 'A TCP responder listens on O(port) inside the namespace and answers every connection with one
    line, C(podnet-health <node_name>), then closes. It is a process of the module''s Python started
    in the node''s mount namespace that enters the endpoint''s network namespace before it binds;
    its pidfile is C(<pid_dir>/health-<netns>.pid). It counts as running when the pidfile''s PID is
    alive, its command line is the one this module would start (same namespace, port, node name
    and responder code) and its network namespace is the endpoint''s; otherwise it is restarted.'
  - M(podnet.fabric.connectivity) probes these endpoints from one another.
author:
  - podnet.fabric maintainers (@podnet)
extends_documentation_fragment:
  - podnet.fabric.endpoint
  - podnet.fabric.node_lock
options:
  netns:
    description: Name of the endpoint's network namespace (a file under C(/run/netns)).
    type: str
    default: podnet-health
  device:
    description: Name of the node side of the veth pair (the endpoint side is always C(eth0)).
    type: str
    default: lxc_health
  port:
    description: TCP port the responder listens on (Cilium's health port by default).
    type: int
    default: 4240
  node_name:
    description: The name the responder answers with. Defaults to the node's hostname.
    type: str
  pid_dir:
    description: Directory of the responder's pidfile.
    type: path
    default: /run/podnet
  state:
    description: Whether the endpoint exists. C(absent) stops the responder and removes the namespace,
      the veth pair and the node's route.
    type: str
    choices: [present, absent]
    default: present
notes:
  - The responder does not survive a reboot either; running the role again restarts it.
attributes:
  check_mode:
    support: full
    description: Reads the realized state, plans, and reports the plan and the projected state without applying it.
  diff_mode:
    support: full
    description: Returns the realized state before and after (projected in check mode).
'''

EXAMPLES = r'''
- name: Health endpoint with an address from the node's pod CIDR
  podnet.fabric.health_endpoint:
    addresses: [10.244.1.7]
    router_ips: [10.244.1.1]

- name: Dual stack, explicit MTU and port
  podnet.fabric.health_endpoint:
    addresses: [10.244.1.7/32, "fd00::107/128"]
    router_ips: [10.244.1.1, "fd00::101"]
    mtu: 1450
    port: 4240

- name: Remove it
  podnet.fabric.health_endpoint:
    state: absent
'''

RETURN = r'''
plan:
  description: The actions taken, or that would be taken in check mode.
  returned: always
  type: list
  elements: dict
  sample: [{action: create_netns, name: podnet-health}, {action: create_veth, name: lxc_health, peer: eth0, mtu: 1450}]
state:
  description: The endpoint after the run (projected in check mode) - namespace, both links, routes, responder.
  returned: always
  type: dict
  sample:
    netns: {name: podnet-health, exists: true, inode: 4026532871, path: /run/netns/podnet-health}
    device: {name: lxc_health, kind: veth, mtu: 1450, up: true, addresses: []}
    peer: {name: eth0, kind: veth, mtu: 1450, up: true, addresses: [10.244.1.7/32]}
    routes: [{dst: 10.244.1.1/32, gateway: null, dev: eth0}, {dst: default, gateway: 10.244.1.1, dev: eth0}]
    node_routes: [{dst: 10.244.1.7/32, gateway: null, dev: lxc_health}]
    responder: {pid: 4242, running: true}
address:
  description: The endpoint's IPv4 address (no prefix), or null.
  returned: when O(state=present)
  type: str
  sample: 10.244.1.7
address_ipv6:
  description: The endpoint's IPv6 address (no prefix), or null.
  returned: when O(state=present)
  type: str
  sample: "fd00::107"
mtu:
  description: The MTU the pair was given.
  returned: when O(state=present)
  type: int
  sample: 1450
port:
  description: The responder's TCP port.
  returned: when O(state=present)
  type: int
  sample: 4240
pid:
  description: The responder's PID after the run (null in check mode when it would be started).
  returned: always
  type: int
  sample: 4242
arp_ignore:
  description: The node's effective arp_ignore on the node side of the pair (0 is what the endpoint needs).
  returned: always
  type: int
  sample: 0
'''

import socket
import sys

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.podnet.fabric.plugins.module_utils import endpoint, health, netlink, probe
from ansible_collections.podnet.fabric.plugins.module_utils.reconcile import argument_spec


def main():
    module = AnsibleModule(
        argument_spec=argument_spec(
            netns=dict(type='str', default=probe.DEFAULT_NETNS),
            device=dict(type='str', default=health.DEFAULT_DEVICE),
            port=dict(type='int', default=probe.DEFAULT_PORT),
            node_name=dict(type='str'),
            pid_dir=dict(type='path', default=health.PID_DIR),
            **endpoint.ARGUMENT_SPEC),
        required_if=[('state', 'present', ['addresses'])],
        supports_check_mode=True,
    )
    netlink.require_pyroute2(module)
    p = module.params
    ns, device = p['netns'], p['device']
    result, desired = endpoint.run_module(
        module, 'health endpoint %s' % ns, device,
        lambda mtu: health.desired_state(ns, device, p['addresses'], p['router_ips'], mtu, p['port'],
                                         p['node_name'] or socket.gethostname(), p['state'], pid_dir=p['pid_dir']),
        read=lambda desired: health.read(endpoint.open_ipr, ns, device, desired['pidfile']),
        plan=health.plan,
        apply=lambda action: health.apply_action(endpoint.open_ipr, sys.executable, ns, action),
        project=health.project)
    result['pid'] = result['state']['responder'].get('pid')
    if p['state'] == 'present':
        result['port'] = p['port']
    module.exit_json(**result)


if __name__ == '__main__':
    main()
