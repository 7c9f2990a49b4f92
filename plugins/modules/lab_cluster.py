#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: podnet.fabric contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r'''
---
module: lab_cluster
short_description: Build or remove a one-machine lab cluster of namespace nodes
version_added: 0.1.0
description:
  - Reconciles a lab cluster on the machine it runs on (normally C(localhost)). Each member (node or
    router) is a network, mount and UTS namespace set with its own hostname, its own bpffs at
    C(/sys/fs/bpf), its own C(/run) and overlays over C(/etc) and C(/var/lib).
  - An underlay L2 segment (a bridge in the lab's own namespace C(<prefix>-ul)) joins the members'
    C(eth0) devices, which carry the members' underlay addresses.
  - Everything the lab creates is named with O(prefix), so two labs coexist. Members that exist with
    the prefix but are not in O(members) are removed, with any process still running inside them.
  - Traffic stays inside the lab's namespaces; nothing is added to the host's network namespace.
  - Use M(podnet.fabric.lab_cluster) through C(playbooks/lab_up.yml) and C(playbooks/lab_down.yml),
    and the P(podnet.fabric.lab#connection) connection plugin to run tasks inside a member.
author:
  - podnet.fabric maintainers (@podnet)
options:
  prefix:
    description:
      - Name prefix of every object of this lab (2-6 lowercase letters or digits, starting with a letter).
    type: str
    required: true
  underlay_cidr:
    description:
      - The underlay IPv4 network; every member's O(members[].ip) must be a host address in it.
      - Required when O(state=present).
    type: str
  members:
    description:
      - The lab members. Required when O(state=present).
    type: list
    elements: dict
    default: []
    suboptions:
      name:
        description: Member name; also its hostname and the suffix of its namespace names.
        type: str
        required: true
      ip:
        description: The member's underlay address, on its C(eth0).
        type: str
        required: true
      role:
        description: C(router) members get IPv4 forwarding enabled.
        type: str
        choices: [node, router]
        default: node
  mtu:
    description: MTU of the underlay links.
    type: int
    default: 1500
  state:
    description: C(present) builds or repairs the lab; C(absent) removes every trace of it.
    type: str
    choices: [present, absent]
    default: present
notes:
  - Needs root, util-linux (C(nsenter), C(unshare)), and pyroute2 0.9 or later.
  - Supports check mode and diff mode.
attributes:
  check_mode:
    support: full
    description: Reads the realized state, plans, and reports the plan and diff without applying it.
  diff_mode:
    support: full
    description: Returns the realized state before and after (projected in check mode).
'''

EXAMPLES = r'''
- name: Build a two-node lab with a ToR router
  podnet.fabric.lab_cluster:
    prefix: pnd
    underlay_cidr: 192.168.50.0/24
    members:
      - {name: node1, ip: 192.168.50.11}
      - {name: node2, ip: 192.168.50.12}
      - {name: tor, ip: 192.168.50.1, role: router}

- name: Remove it, leaving no namespace, link, mount or process behind
  podnet.fabric.lab_cluster:
    prefix: pnd
    state: absent
'''

RETURN = r'''
plan:
  description: The actions taken (or that would be taken in check mode), in order.
  returned: always
  type: list
  elements: dict
  sample: [{action: create_member, name: node1, role: node}]
members:
  description: The lab members after the run (projected in check mode), by name.
  returned: always
  type: dict
  sample: {node1: {addresses: [192.168.50.11/24], complete: true, port: true}}
state:
  description: The lab after the run (projected in check mode), C(members) and C(underlay); C({}) when there is none.
  returned: always
  type: dict
  sample: {members: {node1: {addresses: [192.168.50.11/24], complete: true, port: true}}, underlay: true}
'''

import traceback

from ansible.module_utils.basic import AnsibleModule, missing_required_lib

from ansible_collections.podnet.fabric.plugins.module_utils import lab
from ansible_collections.podnet.fabric.plugins.module_utils.reconcile import Reconciler

try:
    import pyroute2  # noqa: F401 pylint: disable=unused-import
    HAS_PYROUTE2 = True
    PYROUTE2_ERR = None
except ImportError:
    HAS_PYROUTE2 = False
    PYROUTE2_ERR = traceback.format_exc()


def main():
    module = AnsibleModule(
        argument_spec=dict(
            prefix=dict(type='str', required=True),
            underlay_cidr=dict(type='str'),
            members=dict(type='list', elements='dict', default=[], options=dict(
                name=dict(type='str', required=True),
                ip=dict(type='str', required=True),
                role=dict(type='str', choices=['node', 'router'], default='node'),
            )),
            mtu=dict(type='int', default=1500),
            state=dict(type='str', choices=['present', 'absent'], default='present'),
        ),
        required_if=[('state', 'present', ('underlay_cidr', 'members'))],
        supports_check_mode=True,
    )
    if not HAS_PYROUTE2:
        module.fail_json(msg=missing_required_lib('pyroute2>=0.9'), exception=PYROUTE2_ERR)
    p = module.params
    prefix = p['prefix']
    name = 'lab %s' % prefix
    try:
        if p['state'] == 'present':
            desired = lab.normalize(prefix, p['underlay_cidr'], p['members'], p['mtu'])
        else:
            if not lab.PREFIX_RE.match(prefix):
                raise lab.LabError('prefix: %r is not a valid lab prefix' % prefix)
            desired = None
    except lab.LabError as e:
        module.fail_json(msg='%s: %s' % (name, e))
    # The lab is the host's, not a node's: no node lock (lock=False).
    result = Reconciler(
        module, lambda: lab.read(prefix), lambda realized: lab.plan(desired, realized),
        apply=lambda action: lab.apply(prefix, desired, [action]),
        project=lambda realized, actions: desired, view=lab.summarize, name=name, lock=False,
    ).run()
    result['members'] = result['state'].get('members', {})
    module.exit_json(**result)


if __name__ == '__main__':
    main()
