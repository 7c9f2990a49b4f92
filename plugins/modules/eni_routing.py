#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: podnet.fabric contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r'''
---
module: eni_routing
short_description: Reconcile a node's source-based routing of pod IPs through its AWS ENIs
version_added: 0.1.0
description:
  - 'AWS ENI routing (C(podnet_routing.mode: eni)), as Cilium does it: pods use secondary IPs of
    the node''s ENIs, packets keep the pod IP inside the VPC (no SNAT), and a pod''s egress leaves
    through the ENI that owns its IP.'
  - Each ENI's interface is found by its MAC. Its device number and subnet come from the instance
    metadata (C(network/interfaces/macs/<mac>/device-number) and C(subnet-ipv4-cidr-block)) at
    O(metadata_url); without a metadata URL, from O(enis) themselves. The interface gets O(mtu)
    and is brought up; it is never created, renamed or deleted (it is the cloud's).
  - 'Per ENI with device number N, table C(10+N) holds C(gw/32 dev ethN scope link) and
    C(default via gw dev ethN), gw being the first host of the ENI''s subnet (the VPC router).'
  - 'Per pod IP in use (O(pod_ips)), rule priority 20 C(to podIP lookup main) and rule priority 111
    C(from podIP lookup 10+N), N being the device number of the ENI that holds the IP among its
    secondary IPs or prefixes. A pod IP no ENI holds is an error naming it, and nothing changes.'
  - Ownership. Our rules and routes carry protocol 201 (C(podnet)); rules of priority 20 or 111
    with it, and routes with it in tables 10 to 210, are ours. Ours that are not desired (a
    released IP, an IP that moved to another ENI, a detached ENI) are removed, each by exactly
    its identity, so a reused IP keeps the rules of its new endpoint. Rules and routes that are
    not ours are never touched.
  - An ENI attached moments ago may not have its interface yet (attachment is asynchronous on
    AWS). Outside check mode the module waits up to O(wait_timeout) seconds for every ENI's
    interface (and its metadata) before planning; an interface still missing then is an error
    naming the ENI, and nothing changes.
author:
  - podnet.fabric maintainers (@podnet)
extends_documentation_fragment:
  - podnet.fabric.node_lock
options:
  node:
    description: This node's name (the inventory hostname), for messages.
    type: str
    required: true
  enis:
    description:
      - The ENIs the node uses for pods, as M(podnet.fabric.eni_allocate) returns them in
        C(eni_nodes[<node>].enis). ENIs below C(podnet_eni.first_interface_index) are not listed there.
    type: list
    elements: dict
    default: []
    suboptions:
      id:
        description: The ENI id.
        type: str
        required: true
      mac:
        description: The ENI's MAC address.
        type: str
        required: true
      device_index:
        description: The ENI's attachment device index (used when there is no metadata).
        type: int
      subnet_id:
        description: The ENI's subnet (for messages).
        type: str
      subnet_cidr:
        description: The ENI's subnet CIDR (used when there is no metadata).
        type: str
      primary_ip:
        description: The ENI's primary private IP (never a pod's).
        type: str
      ips:
        description: The ENI's secondary private IPv4 addresses.
        type: list
        elements: str
        default: []
      prefixes:
        description: The ENI's delegated IPv4 prefixes (/28).
        type: list
        elements: str
        default: []
  pod_ips:
    description: The pod IPs in use on this node (the endpoint store's IPv4 addresses).
    type: list
    elements: str
    default: []
  metadata_url:
    description:
      - The instance metadata service (C(podnet_eni.metadata_url)). IMDSv2 (a session token) is
        used, IMDSv1 when the service has no token endpoint. Proxies from the environment are ignored.
      - An empty string reads device numbers and subnets from O(enis) instead.
    type: str
    default: http://169.254.169.254/
  mtu:
    description: The MTU of the ENI interfaces (C(podnet_eni.mtu)); 9001 on AWS.
    type: int
    default: 9001
  wait_timeout:
    description: Seconds to wait for the interfaces of newly attached ENIs.
    type: float
    default: 60
  state:
    description: C(absent) removes every rule and route of ours (the interfaces stay).
    type: str
    choices: [present, absent]
    default: present
attributes:
  check_mode:
    support: full
    description: Reads the metadata and the kernel, plans, and reports the plan and diff without
      applying it or waiting; an interface not there yet is planned as C(await_link).
  diff_mode:
    support: full
    description: The diff is the ENI interfaces, our routes and our rules before and after.
'''

EXAMPLES = r'''
- name: Route this node's pod IPs through its ENIs
  podnet.fabric.eni_routing:
    node: "{{ inventory_hostname }}"
    enis: "{{ eni_allocation.eni_nodes[inventory_hostname].enis }}"
    pod_ips: [10.100.1.20, 10.100.1.21]
    metadata_url: http://169.254.169.254/

- name: Remove the rules and tables
  podnet.fabric.eni_routing:
    node: "{{ inventory_hostname }}"
    state: absent
'''

RETURN = r'''
plan:
  description: The actions taken (or, in check mode, that would be taken).
  returned: always
  type: list
  elements: dict
  sample: [{action: rule_add, priority: 111, src: 10.100.1.20/32, dst: null, table: 11}]
changes:
  description: The plan as one line per action.
  returned: always
  type: list
  elements: str
  sample: ['rule_add priority 111 from 10.100.1.20/32 lookup 11']
state:
  description: The ENI interfaces, our routes and our rules after the run (projected in check mode).
  returned: always
  type: dict
interfaces:
  description: Per ENI id, its MAC, kernel link, device number, table, subnet and gateway.
  returned: always
  type: dict
  sample: {eni-0a1b2c3d4e5f60718: {mac: '02:00:00:aa:bb:01', link: eth1, device_number: 1, table: 11,
           subnet_cidr: 10.100.1.0/24, gateway: 10.100.1.1}}
pod_ips:
  description: Per pod IP, the ENI that owns it.
  returned: always
  type: dict
  sample: {10.100.1.20: eni-0a1b2c3d4e5f60718}
'''

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.podnet.fabric.plugins.module_utils import eni, netlink
from ansible_collections.podnet.fabric.plugins.module_utils.reconcile import Reconciler, argument_spec, error_funnel


def main():
    module = AnsibleModule(
        argument_spec=argument_spec(
            node=dict(type='str', required=True),
            enis=dict(type='list', elements='dict', default=[], options=dict(
                id=dict(type='str', required=True),
                mac=dict(type='str', required=True),
                device_index=dict(type='int'),
                subnet_id=dict(type='str'),
                subnet_cidr=dict(type='str'),
                primary_ip=dict(type='str'),
                ips=dict(type='list', elements='str', default=[]),
                prefixes=dict(type='list', elements='str', default=[]),
            )),
            pod_ips=dict(type='list', elements='str', default=[]),
            metadata_url=dict(type='str', default=eni.DEFAULT_METADATA_URL),
            mtu=dict(type='int', default=eni.DEFAULT_MTU),
            wait_timeout=dict(type='float', default=60.0),
            state=dict(type='str', choices=['present', 'absent'], default='present'),
        ),
        supports_check_mode=True,
    )
    netlink.require_pyroute2(module)
    p = module.params
    node = p['node']
    name = 'eni_routing (%s)' % node
    present = p['state'] == 'present'
    try:
        enis = eni.normalize_enis(p['enis'], node) if present else []
        if present:
            eni.owner_of(enis, p['pod_ips'], node)   # fail on a stray pod IP before touching anything
    except eni.EniError as e:
        module.fail_json(msg=str(e))
    metadata = eni.Metadata(p['metadata_url']) if present and p['metadata_url'] else None
    with error_funnel(module, name):
        with netlink.IPRoute() as ipr:
            def lookup(e):
                facts = metadata.interface(e['mac'], node) if metadata is not None else {}
                if metadata is not None and 'device_number' not in facts:
                    return facts   # the metadata does not know the interface yet
                return dict(facts, link=eni.links_by_mac(ipr).get(e['mac']))

            try:
                if enis and not module.check_mode:
                    interfaces = eni.wait_for_interfaces(enis, lookup, p['wait_timeout'], node)
                else:
                    interfaces = dict((e['mac'], lookup(e)) for e in enis)
                for e in enis:
                    got = interfaces.get(e['mac']) or {}
                    if 'device_number' in got and e['device_index'] is not None and got['device_number'] != e['device_index']:
                        module.warn('%s: ENI %s: the instance metadata says device number %d, the ENI says %d; '
                                    'using the metadata' % (node, e['id'], got['device_number'], e['device_index']))
                desired = eni.desired_state(enis, interfaces, p['pod_ips'], p['mtu'], node, p['state'])
            except eni.EniError as e:
                module.fail_json(msg=str(e), changed=False)
            seen = {}

            def plan(realized):
                seen['actions'] = eni.plan(desired, realized)
                return seen['actions']

            macs = [e['mac'] for e in enis]
            result = Reconciler(
                module, lambda: eni.read(ipr, macs), plan,
                apply=lambda action: eni.apply_action(ipr, action),
                project=lambda realized, actions: eni.project(desired, realized, actions),
                describe=lambda action: eni.summary([action])[0],
                name=name,
            ).run()
    owners = eni.owner_of(enis, p['pod_ips'], node) if present else {}
    report = {}
    for e in enis:
        facts = interfaces.get(e['mac']) or {}
        number = facts.get('device_number', e['device_index'])
        subnet = facts.get('subnet_cidr') or e['subnet_cidr']
        report[e['id']] = {'mac': e['mac'], 'link': facts.get('link'), 'device_number': number,
                           'table': eni.table_of(number), 'subnet_cidr': subnet, 'gateway': eni.gateway(subnet)}
    result['changes'] = eni.summary(seen.get('actions') or [])
    result['interfaces'] = report
    result['pod_ips'] = owners
    module.exit_json(**result)


if __name__ == '__main__':
    main()
