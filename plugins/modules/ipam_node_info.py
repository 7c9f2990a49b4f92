#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: podnet.fabric contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r'''
---
module: ipam_node_info
short_description: Read a node's IPAM lease and endpoint use (for rebuilding the ledger)
version_added: 0.1.0
description:
  - Reads the node's own copy of its allocation, the lease (O(lease_path), written by
    M(podnet.fabric.ipam_node)), and its endpoint allocation store (O(store_path), written by
    M(podnet.fabric.ipam_endpoint)), and returns what the controller needs to rebuild the
    cluster's ledger - the lease, the endpoint addresses in use per pool and family (the ledger
    entry's C(pools_used)) and which endpoint holds each (its endpoint records). C(playbooks/ledger_rebuild.yml) hands every node's result to
    M(podnet.fabric.ipam_rebuild).
  - Never fails on a file it cannot parse, and never changes anything. An unreadable lease or
    store is returned as RV(lease_error) / RV(store_error) instead, so the controller
    can name every node it cannot rebuild from at once.
author:
  - podnet.fabric maintainers (@podnet)
options:
  lease_path:
    description: The node's lease.
    type: path
    default: /var/lib/podnet/ipam/lease.json
  store_path:
    description: The node's endpoint allocation store.
    type: path
    default: /var/lib/podnet/ipam/endpoints.json
attributes:
  check_mode:
    support: full
    description: Reads only; the same in check mode.
  diff_mode:
    support: none
    description: Changes nothing, so there is nothing to diff.
seealso:
  - module: podnet.fabric.ipam_rebuild
'''

EXAMPLES = r'''
- name: Read the node's lease and endpoint use
  podnet.fabric.ipam_node_info:
  register: node_ipam
'''

RETURN = r'''
lease:
  description: The stored lease; null when there is none or it is unreadable (see RV(lease_error)).
  returned: always
  type: dict
  sample: {cluster: lab, node: node1, ip: 192.168.50.11, mode: cluster-pool, allocated_at: 1,
           cidrs: {ipv4: [10.244.0.0/24], ipv6: []}, pools: {}}
lease_error:
  description: Why the lease file could not be used (not valid JSON, not a lease); null otherwise.
  returned: always
  type: str
  sample: "/var/lib/podnet/ipam/lease.json: not valid JSON (Expecting value: line 1 column 1 (char 0))"
usage:
  description: The endpoint addresses the node uses, per pool and family ({} when none).
  returned: always
  type: dict
  sample: {default: {ipv4: 3}}
addresses:
  description: Every endpoint address in the store, sorted.
  returned: always
  type: list
  elements: str
  sample: [10.244.0.2, 10.244.0.3]
node_used:
  description:
    - Every endpoint address in the store and the endpoint that holds it (its IPAM name); the ledger
      rebuild restores the ledger's endpoint records from it.
  returned: always
  type: dict
  sample: {10.244.0.2: {owner: podnet-health}, 10.244.0.3: {owner: default/web-1}}
store_error:
  description: Why the endpoint store could not be used; null otherwise.
  returned: always
  type: str
'''

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.podnet.fabric.plugins.module_utils import statefile
from ansible_collections.podnet.fabric.plugins.module_utils.ipam import cidr as ipam_cidr
from ansible_collections.podnet.fabric.plugins.module_utils.ipam import endpoints as ipam_endpoints
from ansible_collections.podnet.fabric.plugins.module_utils.ipam import lease as ipam_lease


def _store_problem(store):
    if not isinstance(store, dict) or not isinstance(store.get('used') or {}, dict):
        return 'not an endpoint store (expected an object with "used")'
    return None


def main():
    module = AnsibleModule(
        argument_spec=dict(
            lease_path=dict(type='path', default='/var/lib/podnet/ipam/lease.json'),
            store_path=dict(type='path', default='/var/lib/podnet/ipam/endpoints.json'),
        ),
        supports_check_mode=True,
    )
    p = module.params
    try:
        lease, lease_error = statefile.read_json_checked(p['lease_path'], ipam_lease.lease_problem)
        store, store_error = statefile.read_json_checked(p['store_path'], _store_problem)
    except statefile.StateFileError as e:
        module.fail_json(msg=str(e))
    module.exit_json(
        changed=False,
        lease=lease,
        lease_error=lease_error,
        usage=ipam_endpoints.store_usage(store),
        addresses=sorted(((store or {}).get('used') or {}), key=ipam_cidr.natural_key),
        node_used=ipam_endpoints.store_crd_used(store),
        store_error=store_error,
    )


if __name__ == '__main__':
    main()
