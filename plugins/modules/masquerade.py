#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: podnet.fabric contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r'''
---
module: masquerade
short_description: SNAT pod traffic leaving the native-routing CIDR to the node IP (nftables)
version_added: 0.1.0
description:
  - Reconciles one nftables table that podnet owns (C(ip podnet) by default). Nothing else in the
    ruleset is read for changes or touched.
  - "The table has a nat base chain C(postrouting) at priority C(srcnat) with one rule:
    C(ip saddr @pod_cidrs ip daddr != @exclude counter snat to <node_ip>), where C(pod_cidrs) and
    C(exclude) are named interval sets holding O(pod_cidrs) and O(exclude)."
  - Pod traffic from O(pod_cidrs) to a destination outside O(exclude) leaves the node with the node
    IP as its source; traffic to O(exclude) (the native-routing CIDR) keeps the pod IP.
  - The table is compared as a whole with what the kernel holds (libnftables JSON, normalized).
    Any difference, a deleted rule or an element added by hand included, is repaired by
    recreating the table in one nftables transaction (add, delete and re-add in one batch), so the
    rule is never missing and the table is never half written.
  - With O(state=absent) the table is deleted; nothing else is.
author:
  - podnet.fabric maintainers (@podnet)
extends_documentation_fragment:
  - podnet.fabric.node_lock
options:
  state:
    description: Whether the masquerade table exists.
    type: str
    choices: [present, absent]
    default: present
  table:
    description: Name of the podnet-owned nftables table (family C(ip)).
    type: str
    default: podnet
  pod_cidrs:
    description:
      - IPv4 CIDRs whose traffic is masqueraded, this node's pod CIDRs. Required and non-empty when
        O(state=present).
      - CIDRs are collapsed (overlapping and adjacent ones merged) before they are written.
      - C(sources), its earlier name, is an alias.
    type: list
    elements: str
    default: []
    aliases: [sources]
  exclude:
    description:
      - IPv4 CIDRs of destinations that are never masqueraded, the native-routing CIDR (the
        cluster's pod CIDRs). Required and non-empty when O(state=present).
    type: list
    elements: str
    default: []
  node_ip:
    description:
      - The node IP (C(podnet_node_ip)), the source address masqueraded traffic gets. It must be an
        address of this node. Required when O(state=present).
      - C(snat_address), its earlier name, is an alias.
    type: str
    aliases: [snat_address]
  exclude_interfaces:
    description: Output interfaces whose traffic is never masqueraded (for example a tunnel device).
    type: list
    elements: str
    default: []
notes:
  - Needs the libnftables Python binding (package C(python3-nftables)) on the node, visible to the
    module's interpreter (a podnet venv must be made with C(--system-site-packages)).
  - Replacing the table does not touch connection tracking, so established connections keep the
    translation they started with.
attributes:
  check_mode:
    support: full
    description: >-
      Reads the table, plans, and validates the transaction with nft's dry run (the kernel checks
      it, nothing is committed), then reports the plan and the projected table.
  diff_mode:
    support: full
    description: Returns the table before and after (projected in check mode), as readable rule text and as normalized data.
'''

EXAMPLES = r'''
- name: Masquerade this node's pods when they leave the native-routing CIDR
  podnet.fabric.masquerade:
    pod_cidrs: "{{ podnet_pod_cidrs }}"
    exclude: ["{{ podnet_routing.native.ipv4_cidr }}"]
    node_ip: "{{ podnet_node_ip }}"

- name: Also leave traffic out through the VXLAN device alone
  podnet.fabric.masquerade:
    pod_cidrs: [10.244.1.0/24]
    exclude: [10.244.0.0/16]
    node_ip: 192.168.50.11
    exclude_interfaces: [podnet_vxlan]

- name: Remove the masquerade table
  podnet.fabric.masquerade:
    state: absent
'''

RETURN = r'''
plan:
  description: The actions taken, or that would be taken in check mode.
  returned: always
  type: list
  elements: dict
  sample:
    - action: replace_table
      family: ip
      table: podnet
      differences: [rules]
      rules: ['postrouting: ip saddr @pod_cidrs ip daddr != @exclude counter snat to 192.168.50.11 comment "..."']
state:
  description: The table after the run (projected in check mode).
  returned: always
  type: dict
  contains:
    text:
      description: The table as readable lines (sets, chains, rules); C(table) is null when absent.
      type: dict
    table:
      description: The normalized table (null when absent), as compared with the desired one.
      type: dict
  sample:
    text:
      table: ip podnet
      sets: ['set exclude { type ipv4_addr; flags interval; elements = { 10.244.0.0/16 } }',
             'set pod_cidrs { type ipv4_addr; flags interval; elements = { 10.244.1.0/24 } }']
      chains: ['chain postrouting { type nat hook postrouting priority 100; policy accept; }']
      rules: ['postrouting: ip saddr @pod_cidrs ip daddr != @exclude counter snat to 192.168.50.11 comment "..."']
    table: {family: ip, name: podnet, sets: [], chains: [], rules: [], other: []}
'''

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.podnet.fabric.plugins.module_utils import masquerade
from ansible_collections.podnet.fabric.plugins.module_utils.reconcile import Reconciler, argument_spec


def main():
    module = AnsibleModule(
        argument_spec=argument_spec(
            state=dict(type='str', choices=['present', 'absent'], default='present'),
            table=dict(type='str', default='podnet'),
            pod_cidrs=dict(type='list', elements='str', default=[], aliases=['sources']),
            exclude=dict(type='list', elements='str', default=[]),
            node_ip=dict(type='str', aliases=['snat_address']),
            exclude_interfaces=dict(type='list', elements='str', default=[]),
        ),
        supports_check_mode=True,
    )
    try:
        sp = masquerade.spec(module.params)
    except masquerade.MasqueradeError as e:
        module.fail_json(msg=str(e))
    if sp['state'] == 'present' and not masquerade.is_local_address(sp['node_ip']):
        module.fail_json(msg='node_ip: %s is not an address of this node; replies to SNATed '
                             'traffic would not come back' % sp['node_ip'])
    if not masquerade.HAS_NFTABLES:
        module.fail_json(msg='Failed to import the Python module nftables: ' + masquerade.PACKAGE_HINT,
                         exception=masquerade.NFTABLES_IMPORT_ERROR)
    desired = masquerade.desired_table(sp)

    def view(table):
        return {'text': masquerade.render(table), 'table': table}

    def project(realized, actions):
        # Check mode: let the kernel validate the transaction without committing it.
        masquerade.apply(masquerade.new_context(dry_run=True), actions, desired)
        return view(masquerade.project(desired, realized['table'], actions))

    def apply(action):
        masquerade.apply(nft, [action], desired)
        # The kernel holds exactly what was written, or the next run could never be changed=0.
        got = masquerade.read(nft, masquerade.FAMILY, sp['table'])
        if got != desired:
            raise masquerade.MasqueradeError('nftables holds table %s %s differently than written: %s'
                                             % (masquerade.FAMILY, sp['table'],
                                                ', '.join(masquerade.differences(desired, got))
                                                if desired else 'it is still there'))

    try:
        nft = masquerade.new_context()
    except masquerade.MasqueradeError as e:
        module.fail_json(msg=str(e))
    result = Reconciler(
        module,
        read=lambda: view(masquerade.read(nft, masquerade.FAMILY, sp['table'])),
        plan=lambda realized: masquerade.plan(desired, realized['table']),
        apply=apply,
        project=project,
        describe=lambda action: '%s %s %s' % (action['action'], action['family'], action['table']),
        name='masquerade',
    ).run()
    module.exit_json(**result)


if __name__ == '__main__':
    main()
