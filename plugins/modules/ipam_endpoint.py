#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: podnet.fabric contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r'''
---
module: ipam_endpoint
short_description: Allocate or release an endpoint's IP addresses on a node
version_added: 0.1.0
description:
  - Allocates endpoint (pod) IP addresses from the node's pod CIDRs, or in multi-pool mode from
    the node's blocks of one pool, and releases them. The node's lease (written by
    M(podnet.fabric.ipam_node)) says what the node holds.
  - The allocations persist in a per-node store, O(store_path), by default
    C(/var/lib/podnet/ipam/endpoints.json), changed under an exclusive lock and replaced
    atomically, so concurrent tasks on one node never hand out one address twice.
  - The same endpoint asking again gets the same addresses (idempotent). Addresses are handed out
    lowest first; the network address, the router IP (held by the host device) and the IPv4
    broadcast address of each CIDR are never handed out.
  - In multi-pool mode the endpoint's pool is the value of its label C(ipam.podnet.io/ip-pool),
    else C(default).
  - 'Exhaustion fails with a message that names the pool, its size and its use, for example
    "pool ''gpu'' (10.20.0.0/28: 13 endpoint addresses) is exhausted: 13 of 13 in use".'
  - 'Records the node''s use on the controller when O(update_ledger=true) (an action plugin
    part runs there after the node part): in C(crd) mode the node document''s
    C(status.ipam.used) (as Cilium''s CiliumNode), in the other modes but C(eni) the ledger entry''s
    C(pools_used) (the utilization report and multi-pool C(pre_allocation) read it), and, in every
    mode, the entry''s endpoint records (in C(eni) mode the pod IPs in use that
    M(podnet.fabric.eni_allocate) sizes the node''s ENIs by): each endpoint''s name, addresses, security
    identity (from its labels in C(podnet_endpoints), else O(labels) for this endpoint) and
    endpoint id, which the cluster-wide ipcache is built from. It needs the fact C(podnet_model)
    on C(localhost) (M(podnet.fabric.validate) sets it) and never runs in check mode.'
author:
  - podnet.fabric maintainers (@podnet)
extends_documentation_fragment:
  - podnet.fabric.node_lock
options:
  endpoint_id:
    description:
      - The endpoint's unique name on the node, for example C(namespace/pod). An endpoint of
        C(podnet_endpoints) is C(<namespace>/<name>); its labels there give its identity.
    type: str
    required: true
  family:
    description:
      - The address family. Omitted, O(state=present) allocates one address of every family the
        pool has, and O(state=absent) releases every address of the endpoint.
    type: str
    choices: [ipv4, ipv6]
  labels:
    description:
      - The endpoint's labels; C(ipam.podnet.io/ip-pool) picks its multi-pool pool.
      - The ledger's endpoint record takes the endpoint's identity from them when C(podnet_endpoints)
        does not list the endpoint.
    type: dict
    default: {}
  state:
    description: Whether the endpoint holds addresses.
    type: str
    choices: [present, absent]
    default: present
  lease_path:
    description: The node's lease (see M(podnet.fabric.ipam_node)).
    type: path
    default: /var/lib/podnet/ipam/lease.json
  store_path:
    description: The node's endpoint allocation store.
    type: path
    default: /var/lib/podnet/ipam/endpoints.json
  update_ledger:
    description:
      - Record the node's use on the controller (see the description). Set C(false) where there
        is no validated model or the node's use must not be recorded.
    type: bool
    default: true
notes:
  - Changing an endpoint's pool means releasing it (O(state=absent)) and allocating again.
  - When a node's blocks are full, the run of C(playbooks/site.yml) after the use was recorded
    gives a multi-pool node more blocks (O(update_ledger)); the other modes have one CIDR per node.
attributes:
  action:
    support: full
    description: An action plugin records the node's use in the ledger on the controller.
  check_mode:
    support: full
    description: Reads the store, plans, and reports the addresses and diff without writing.
  diff_mode:
    support: full
    description: Returns the endpoint's addresses before and after.
'''

EXAMPLES = r'''
- name: An IPv4 address for a pod
  podnet.fabric.ipam_endpoint:
    endpoint_id: default/web-1
    family: ipv4
  register: ep

- name: A GPU pod takes its addresses from pool gpu (multi-pool mode)
  podnet.fabric.ipam_endpoint:
    endpoint_id: ml/trainer-0
    labels:
      ipam.podnet.io/ip-pool: gpu

- name: Release the pod's addresses
  podnet.fabric.ipam_endpoint:
    endpoint_id: default/web-1
    state: absent
'''

RETURN = r'''
pool:
  description: The pool the endpoint's addresses come from (C(default) outside multi-pool mode,
    C(kubernetes) or C(crd) in those modes).
  returned: always
  type: str
  sample: gpu
ips:
  description: The endpoint's addresses after the run, by family.
  returned: always
  type: dict
  sample: {ipv4: 10.244.0.2, ipv6: "fd00::2"}
released:
  description: The addresses released by this run.
  returned: always
  type: list
  elements: str
usage:
  description: The endpoint addresses the node uses after the run, per pool and family.
  returned: always
  type: dict
  sample: {default: {ipv4: 3}, gpu: {ipv4: 1}}
node_used:
  description: Every endpoint address the node uses and its owner (CRD C(status.ipam.used)).
  returned: always
  type: dict
  sample: {10.244.0.2: {owner: default/web-1}}
mode:
  description: The IPAM mode the node's lease was written in.
  returned: when the node has a lease
  type: str
  sample: multi-pool
router_ips:
  description:
    - The router IPs of the node's pod CIDRs, read from the lease, IPv4 first. An endpoint's default
      route points at one of them, so a play needs no separate read of the lease.
  returned: always
  type: list
  elements: str
  sample: [10.244.0.1]
ledger:
  description: What the controller recorded (action plugin part), C(updated) and where.
  returned: when O(update_ledger=true) and not in check mode
  type: dict
  sample: {updated: true, location: /var/lib/podnet/ledger/lab.json, record: "pools_used, endpoints"}
plan:
  description: The allocations and releases made, or that would be made in check mode.
  returned: always
  type: list
  elements: dict
  sample: [{action: allocate, family: ipv4, ip: 10.244.0.2, pool: default}]
'''

import ipaddress

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.podnet.fabric.plugins.module_utils import ipfamily, statefile
from ansible_collections.podnet.fabric.plugins.module_utils.ipam import cidr as ipam_cidr
from ansible_collections.podnet.fabric.plugins.module_utils.ipam import endpoints as ipam_endpoints
from ansible_collections.podnet.fabric.plugins.module_utils.ipam import lease as ipam_lease
from ansible_collections.podnet.fabric.plugins.module_utils.reconcile import Reconciler, argument_spec


def _held(store, endpoint_id):
    return dict((ip, rec) for ip, rec in ((store or {}).get('used') or {}).items()
                if (rec or {}).get('owner') == endpoint_id)


def plan_present(store, lease, endpoint_id, family, labels):
    """Pure: (new_store, pool, actions, warnings) for an endpoint that must hold addresses."""
    pool, blocks = ipam_lease.endpoint_source(lease, labels)
    families = [family] if family else [f for f in ipam_cidr.FAMILIES if blocks.get(f)]
    if not families:
        raise ipam_cidr.IpamError("pool '%s': node %s has no CIDRs to allocate from" % (pool, (lease or {}).get('node')))
    old_used = (store or {}).get('used') or {}
    new = store
    actions = []
    warnings = []
    for fam in families:
        for ip, rec in sorted(_held(store, endpoint_id).items()):
            if ipfamily.family_of(ip) == fam and rec.get('pool', ipam_cidr.DEFAULT_POOL) != pool:
                raise ipam_cidr.IpamError("endpoint %s holds %s from pool '%s', not '%s'; release it "
                                          "(state=absent) to move it" % (endpoint_id, ip, rec.get('pool'), pool))
        new, ip = ipam_endpoints.plan_endpoint_ip(new, blocks.get(fam) or [], endpoint_id, fam, pool=pool)
        if ip not in old_used:
            actions.append({'action': 'allocate', 'family': fam, 'ip': ip, 'pool': pool})
        elif not _inside(ip, blocks.get(fam) or []):
            warnings.append("endpoint %s keeps %s, which is no longer in the node's %s CIDRs of pool "
                            "'%s' (%s); release it and allocate again" % (
                                endpoint_id, ip, fam, pool, ', '.join(blocks.get(fam) or []) or 'none'))
    return new, pool, actions, warnings


def plan_absent(store, endpoint_id, family):
    """Pure: (new_store, pool, actions) for an endpoint that must hold no addresses (of family)."""
    used = (store or {}).get('used') or {}
    new, released = ipam_endpoints.release_endpoint_ip(store, endpoint_id, family)
    actions = [{'action': 'release', 'family': ipfamily.family_of(ip), 'ip': ip,
                'pool': (used[ip] or {}).get('pool')} for ip in released]
    pools = sorted(set(a['pool'] for a in actions if a['pool']))
    return new, (pools[0] if len(pools) == 1 else None), actions


def _inside(ip, cidrs):
    addr = ipaddress.ip_address(ip)
    return any(addr in ipaddress.ip_network(c) for c in cidrs)


def _release_ip(store, endpoint_id, ip):
    """Pure: the store without `ip`, when `endpoint_id` holds it (releasing what is gone is a no-op)."""
    used = dict((store or {}).get('used') or {})
    if (used.get(ip) or {}).get('owner') != endpoint_id:
        return store
    del used[ip]
    return dict(store, used=used)


def main():
    module = AnsibleModule(
        argument_spec=argument_spec(
            endpoint_id=dict(type='str', required=True),
            family=dict(type='str', choices=['ipv4', 'ipv6']),
            labels=dict(type='dict', default={}),
            state=dict(type='str', choices=['present', 'absent'], default='present'),
            lease_path=dict(type='path', default='/var/lib/podnet/ipam/lease.json'),
            store_path=dict(type='path', default='/var/lib/podnet/ipam/endpoints.json'),
            update_ledger=dict(type='bool', default=True),
        ),
        supports_check_mode=True,
    )
    p = module.params
    endpoint = p['endpoint_id']
    labels = dict((str(k), str(v)) for k, v in (p['labels'] or {}).items())
    if not endpoint.strip():
        module.fail_json(msg='endpoint_id: must not be empty')
    try:
        lease, error = statefile.read_json_checked(p['lease_path'], ipam_lease.lease_problem)
    except statefile.StateFileError as e:
        module.fail_json(msg='endpoint %s: %s' % (endpoint, e))
    if error:
        module.fail_json(msg='endpoint %s: %s; %s' % (endpoint, error, ipam_lease.LEASE_RESTORE_HINT))
    if p['state'] == 'present' and lease is None:
        module.fail_json(msg='%s: no IPAM lease on this node; run the podnet.fabric.ipam role '
                             '(playbooks/site.yml) first' % p['lease_path'])
    planned = {'warnings': [], 'pool': None, 'new': None}

    def read():
        return statefile.read_json(p['store_path']) or ipam_endpoints.empty_store()

    def plan(store):
        if p['state'] == 'present':
            new, pool, actions, warnings = plan_present(store, lease, endpoint, p['family'], labels)
        else:
            (new, pool, actions), warnings = plan_absent(store, endpoint, p['family']), []
        planned.update(warnings=warnings, pool=pool, new=new)
        return actions

    def apply(action):
        # One action, one atomic write: each step of the plan is redone on the store as it is
        # (under the node lock it is the store the plan read, plus the steps before).
        with statefile.locked(p['store_path']):
            store = read()
            if action['action'] == 'allocate':
                blocks = ipam_lease.endpoint_source(lease, labels)[1]
                new, ip = ipam_endpoints.plan_endpoint_ip(store, blocks.get(action['family']) or [], endpoint,
                                                          action['family'], pool=action['pool'])
                if ip != action['ip']:
                    raise ipam_cidr.IpamError('the store changed while %s was planned: %s is no longer the address '
                                              'to allocate (%s is)' % (endpoint, action['ip'], ip))
            else:
                new = _release_ip(store, endpoint, action['ip'])
            if new != store:
                statefile.write_json(p['store_path'], new)

    def view(store):
        return {'endpoint': endpoint, 'ips': _held(store, endpoint)}

    reconciler = Reconciler(module, read, plan, apply, project=lambda store, actions: planned['new'],
                            view=view, name='endpoint %s' % endpoint)
    result = reconciler.run()
    for w in planned['warnings']:
        module.warn(w)
    after = reconciler.after
    result.pop('state')
    result.update(
        pool=planned['pool'],
        ips=dict((ipfamily.family_of(ip), ip) for ip in sorted(_held(after, endpoint))),
        released=[a['ip'] for a in result['plan'] if a['action'] == 'release'],
        usage=ipam_endpoints.store_usage(after),
        node_used=ipam_endpoints.store_crd_used(after),
        mode=(lease or {}).get('mode'),
        router_ips=ipam_lease.lease_router_ips(lease) if lease else [],
    )
    module.exit_json(**result)


if __name__ == '__main__':
    main()
