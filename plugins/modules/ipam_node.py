#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: podnet.fabric contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r'''
---
module: ipam_node
short_description: Store a node's IPAM lease and report its pod CIDRs and router IPs
version_added: 0.1.0
description:
  - Keeps the node's own copy of its allocation (its lease) in O(path), by default
    C(/var/lib/podnet/ipam/lease.json), written atomically (temp file, fsync, rename). The
    cluster-wide ledger can be rebuilt from these leases.
  - Returns the node's pod CIDRs and the router (gateway) IP of each, the first host address of
    the CIDR, as C(address/32) and C(address/128) ready for M(podnet.fabric.host_device).
  - The lease comes from M(podnet.fabric.ipam_allocate) (its C(allocations[node])); the
    C(podnet.fabric.ipam) role wires the two together.
  - Without O(lease) (and O(state=present)) it only reads the stored lease and changes nothing;
    C(playbooks/verify.yml) uses that. A stored lease that is not valid JSON (or not a lease) fails
    then, naming the file.
  - 'Recovery: the ledger is the authority, the lease is the node''s copy. With O(lease), a stored
    lease that is unreadable (garbage, truncated, not a lease) is kept beside it as
    C(<path>.corrupt-<UTC time>), for example C(lease.json.corrupt-20250101T120000Z), and the
    ledger''s lease is written in its place, with a warning. A readable stored lease that claims
    other CIDRs (or another node or cluster) than the ledger''s although the ledger has not
    reallocated since (its C(allocated_at) is not newer) is corrected from the ledger, with a
    warning. In check mode both are reported (plan, diff, warning) and nothing is written.'
author:
  - podnet.fabric maintainers (@podnet)
extends_documentation_fragment:
  - podnet.fabric.node_lock
options:
  lease:
    description:
      - The node's lease, as M(podnet.fabric.ipam_allocate) returns it (C(cluster), C(node),
        C(ip), C(cidrs), C(pools), C(allocated_at), C(mode)). Stored exactly.
      - Omit it to read the stored lease only.
    type: dict
  path:
    description: Where the lease is stored on the node.
    type: path
    default: /var/lib/podnet/ipam/lease.json
  state:
    description: Whether the lease file exists. C(absent) removes it (endpoint IPs are not touched).
    type: str
    choices: [present, absent]
    default: present
attributes:
  check_mode:
    support: full
    description: Reads the stored lease, plans, and reports the plan and diff without writing (an
      unreadable lease is neither kept aside nor replaced).
  diff_mode:
    support: full
    description: Returns the stored lease before and after (projected in check mode).
'''

EXAMPLES = r'''
- name: Allocate on the controller
  podnet.fabric.ipam_allocate:
    nodes: "{{ ansible_play_hosts_all }}"
  delegate_to: localhost
  run_once: true
  register: alloc

- name: Store the lease on each node
  podnet.fabric.ipam_node:
    lease: "{{ alloc.allocations[inventory_hostname] }}"
  register: lease

- name: Put the router IPs on the host device
  podnet.fabric.host_device:
    node_ip: "{{ podnet_node_ip }}"
    router_ips: "{{ lease.router_ips }}"

- name: Read the stored lease only
  podnet.fabric.ipam_node:
  register: stored
'''

RETURN = r'''
lease:
  description: The stored lease after the run (projected in check mode); null when there is none.
  returned: always
  type: dict
  sample: {cluster: lab, node: node1, ip: 192.168.50.11, mode: cluster-pool, allocated_at: 1,
           cidrs: {ipv4: [10.244.0.0/24], ipv6: ["fd00::/120"]}, pools: {}}
cidrs:
  description: Every pod CIDR of the lease (its C(cidrs) and its multi-pool blocks), per family.
  returned: always
  type: dict
  sample: {ipv4: [10.244.0.0/24], ipv6: ["fd00::/120"]}
router_ips:
  description: The router (gateway) IP of each pod CIDR; single addresses (CRD pools) have none.
  returned: always
  type: list
  elements: str
  sample: [10.244.0.1, "fd00::1"]
plan:
  description:
    - The actions taken, or that would be taken in check mode. C(keep_aside) keeps an unreadable
      lease as C(to) before C(write) replaces it; C(error) says what was wrong with it.
  returned: always
  type: list
  elements: dict
  sample: [{action: keep_aside, path: /var/lib/podnet/ipam/lease.json,
            to: /var/lib/podnet/ipam/lease.json.corrupt-20250101T120000Z,
            error: "/var/lib/podnet/ipam/lease.json: not valid JSON (Expecting value: line 1 column 1 (char 0))"},
           {action: write, path: /var/lib/podnet/ipam/lease.json}]
kept_aside:
  description: Where the unreadable lease was kept (would be kept, in check mode); null otherwise.
  returned: always
  type: str
  sample: /var/lib/podnet/ipam/lease.json.corrupt-20250101T120000Z
'''

import json

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.podnet.fabric.plugins.module_utils import statefile
from ansible_collections.podnet.fabric.plugins.module_utils.ipam import cidr as ipam_cidr
from ansible_collections.podnet.fabric.plugins.module_utils.ipam import lease as ipam_lease
from ansible_collections.podnet.fabric.plugins.module_utils.reconcile import Reconciler, argument_spec


def _canonical_lease(module, lease):
    """The lease as plain JSON values, checked enough that the host device gets valid addresses."""
    lease = json.loads(json.dumps(lease))
    for key in ('node', 'cidrs'):
        if key not in lease:
            module.fail_json(msg='lease: missing key %r (pass ipam_allocate\'s allocations[node])' % key)
    try:
        ipam_lease.lease_router_ips(lease)
    except ipam_cidr.IpamError as e:
        module.fail_json(msg='lease: %s' % e)
    return lease


def main():
    module = AnsibleModule(
        argument_spec=argument_spec(
            lease=dict(type='dict'),
            path=dict(type='path', default='/var/lib/podnet/ipam/lease.json'),
            state=dict(type='str', choices=['present', 'absent'], default='present'),
        ),
        supports_check_mode=True,
    )
    p = module.params
    path = p['path']
    read_only = p['state'] == 'present' and p['lease'] is None
    desired = None if p['state'] == 'absent' or read_only else _canonical_lease(module, p['lease'])
    aside = statefile.aside_path(path, 'corrupt')

    def read():
        lease, error = statefile.read_json_checked(path, ipam_lease.lease_problem)
        if error and read_only:
            module.fail_json(msg='%s; %s' % (error, ipam_lease.LEASE_RESTORE_HINT))
        return dict({'lease': lease}, **({'unreadable': error} if error else {}))

    def apply(action):
        if action['action'] == 'keep_aside':
            action['to'] = statefile.keep_aside(path, 'corrupt')
        elif action['action'] == 'write':
            statefile.write_json(path, desired)
        else:
            statefile.remove(path)

    result = Reconciler(
        module, read,
        plan=lambda realized: [] if read_only else ipam_lease.plan_lease(desired, realized, path, aside),
        apply=apply,
        project=lambda realized, actions: {'lease': desired},
        name='ipam_node',
    ).run()

    try:
        lease = result['state']['lease']
        result.update(lease=lease, cidrs=ipam_lease.lease_cidrs(lease), router_ips=ipam_lease.lease_router_ips(lease))
    except ipam_cidr.IpamError as e:
        module.fail_json(msg=str(e))
    del result['state']
    before = result['diff']['before']
    kept = [a for a in result['plan'] if a['action'] == 'keep_aside']
    result['kept_aside'] = kept[0]['to'] if kept else None
    verb = 'would keep' if module.check_mode else 'kept'
    for a in kept:
        module.warn('%s; %s the bad file as %s and %s the ledger\'s lease in its place' % (
            a['error'], verb, a['to'], 'would write' if module.check_mode else 'wrote'))
    drift = ipam_lease.lease_disagreement(before.get('lease'), desired)
    if drift:
        module.warn('%s: the stored lease disagreed with the ledger (%s); %s from the ledger' % (
            path, drift, 'would be corrected' if module.check_mode else 'corrected'))
    module.exit_json(**result)


if __name__ == '__main__':
    main()
