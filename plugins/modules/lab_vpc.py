#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: podnet.fabric contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r'''
---
module: lab_vpc
short_description: Build or remove the VPC segment of a one-machine ENI lab
version_added: 0.1.0
description:
  - The lab's stand-in for an AWS VPC (ENI mode, C(podnet_ipam.mode=eni)), a network namespace
    C(<prefix>vpc) with a bridge C(vpc0) that holds the first host of every lab subnet (the VPC
    router's address on AWS) and forwards between them, without ICMP redirects.
  - The ENIs' interfaces are veths between a node and this bridge; the lab's attach watcher (the
    C(agent) daemon of C(plugins/module_utils/lab_ec2.py), which C(playbooks/lab_up.yml) starts)
    makes them when moto attaches an ENI and removes them when it detaches it.
  - Removing the namespace removes every ENI veth with it. Nothing is added to the host's network namespace.
author:
  - podnet.fabric maintainers (@podnet)
options:
  prefix:
    description: The lab's prefix (see M(podnet.fabric.lab_cluster)).
    type: str
    required: true
  subnets:
    description: The lab VPC's subnets (IPv4 CIDRs). Required when O(state=present).
    type: list
    elements: str
    default: []
  state:
    description: Whether the VPC namespace exists.
    type: str
    choices: [present, absent]
    default: present
attributes:
  check_mode:
    support: full
    description: Reads the namespace and reports the plan without changing anything.
  diff_mode:
    support: full
    description: The namespace, the router's addresses and forwarding before and after.
'''

EXAMPLES = r'''
- name: The VPC of lab pen
  podnet.fabric.lab_vpc:
    prefix: pen
    subnets: [10.100.1.0/24]

- name: Remove it
  podnet.fabric.lab_vpc:
    prefix: pen
    state: absent
'''

RETURN = r'''
plan:
  description: The actions taken, or that would be taken in check mode.
  returned: always
  type: list
  elements: dict
  sample: [{action: create_vpc, netns: penvpc}, {action: add_address, address: 10.100.1.1/24}]
state:
  description: The namespace after the run (projected in check mode); C({}) when there is none.
  returned: always
  type: dict
  sample: {netns: penvpc, addresses: [10.100.1.1/24], forwarding: true}
'''

import ipaddress

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.podnet.fabric.plugins.module_utils import lab, lab_ec2, netlink
from ansible_collections.podnet.fabric.plugins.module_utils.reconcile import Reconciler


def main():
    module = AnsibleModule(
        argument_spec=dict(
            prefix=dict(type='str', required=True),
            subnets=dict(type='list', elements='str', default=[]),
            state=dict(type='str', choices=['present', 'absent'], default='present'),
        ),
        required_if=[('state', 'present', ('subnets',))],
        supports_check_mode=True,
    )
    netlink.require_pyroute2(module)
    p = module.params
    prefix = p['prefix']
    name = 'lab %s vpc' % prefix
    if not lab.PREFIX_RE.match(prefix):
        module.fail_json(msg='%s: prefix: %r is not a valid lab prefix' % (name, prefix))
    desired = None
    if p['state'] == 'present':
        try:
            nets = [ipaddress.IPv4Network(s) for s in p['subnets']]
        except ValueError as e:
            module.fail_json(msg='%s: subnets: %s' % (name, e))
        desired = lab_ec2.vpc_desired(prefix, [str(n) for n in nets])

    def project(realized, actions):
        return dict(desired, exists=True) if desired else {'netns': realized['netns'], 'exists': False}

    # The lab is the machine's, not a node's: no node lock.
    result = Reconciler(
        module, lambda: lab_ec2.vpc_read(prefix), lambda realized: lab_ec2.vpc_plan(desired, realized),
        apply=lambda action: lab_ec2.vpc_apply(prefix, action), project=project,
        view=lab_ec2.vpc_view, name=name, lock=False,
    ).run()
    module.exit_json(**result)


if __name__ == '__main__':
    main()
