#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: podnet.fabric contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r'''
---
module: bpf_map
short_description: Keep one of podnet's pinned eBPF maps holding the given entries
version_added: 0.1.0
description:
  - Reconciles the entries of one of the datapath's maps, pinned under O(pin_root) with a versioned
    name (C(podnet_ipcache_v1), C(podnet_endpoints_v1), C(podnet_policy_v1), C(podnet_ct_v1),
    C(podnet_metrics_v1)). Entries are given in symbolic form and compared one map key at a time;
    only keys that differ are written. With O(prune), keys not given are removed.
  - New and changed entries are written before any is removed, so a policy change never passes
    through a state holding neither the old nor the new entry.
  - A missing map is created and pinned with the layout the programs use (a later compile reuses
    it). A pinned map with another layout is an error, never reused.
  - C(ct) and C(metrics) are the datapath's own maps and take no entries; O(prune=true) flushes them.
  - With O(state=absent) the map is unpinned (programs still attached keep using it until they are
    replaced).
author:
  - podnet.fabric maintainers (@podnet)
extends_documentation_fragment:
  - podnet.fabric.node_lock
options:
  name:
    description: Which map. One of O(name) and O(maps) is required.
    type: str
    choices: [ipcache, endpoints, policy, ct, metrics]
  maps:
    description:
      - Several maps in one run, synced one after the other in the order given, each as O(name),
        O(entries) and O(prune) would (O(state) and O(pin_root) apply to all). A map may appear
        twice, for example the policy map's additions before the endpoints map and its prune after.
      - One module run on the node instead of one per map. Not together with O(name).
    type: list
    elements: dict
    suboptions:
      name:
        description: Which map.
        type: str
        required: true
        choices: [ipcache, endpoints, policy, ct, metrics]
      entries:
        description: As O(entries).
        type: list
        elements: dict
        default: []
      prune:
        description: As O(prune).
        type: bool
        default: false
  entries:
    description:
      - "C(ipcache): C(prefix) (a CIDR, or an address for its host prefix), C(identity), C(tunnel_endpoint)
        (IPv4 of the node behind a tunnel, or null), C(local) (the address is an endpoint of this node)."
      - "C(endpoints): C(address), C(ifindex) or C(device) (the host side of the endpoint's veth), C(ep_id)
        (1-65535), C(identity), C(mac), C(node_mac) (default: the device's MAC when C(device) is
        given), C(enforce_ingress), C(enforce_egress); C(name), the endpoint's, only names the entry
        in messages."
      - "C(policy): C(ep_id), C(direction) (ingress or egress), C(identity) (the peer's; 0 = any),
        C(protocol) (tcp, udp, sctp, icmp, icmpv6 or any), C(port) and optional C(end_port) (a range,
        decomposed here into aligned prefix blocks, one map key each; no port = every port),
        C(icmp_type) (icmp and icmpv6 only; none = every type), C(verdict) (allow or deny) and
        C(rule) (the 1-based index of the rule in C(podnet_policy.rules), 0 = none)."
    type: list
    elements: dict
    default: []
  prune:
    description: Remove the map's keys that O(entries) does not give (C(ct), C(metrics) are flushed).
    type: bool
    default: false
  state:
    description: Whether the map is pinned.
    type: str
    choices: [present, absent]
    default: present
  pin_root:
    description: The bpffs directory of podnet's pinned maps and programs.
    type: path
    default: /sys/fs/bpf/podnet
notes:
  - Needs libbcc (Debian C(libbpfcc), installed with C(python3-bpfcc)) and a bpffs at C(/sys/fs/bpf).
attributes:
  check_mode:
    support: full
    description: Reads the map and reports the entries that would be added, changed and removed.
  diff_mode:
    support: full
    description: Shows the entries the run touches, before and after (not whole maps).
'''

EXAMPLES = r'''
- name: The ipcache
  podnet.fabric.bpf_map:
    name: ipcache
    entries:
      - {prefix: 10.244.1.5/32, identity: 260, local: true}
      - {prefix: 10.244.2.0/24, identity: 6, tunnel_endpoint: 192.168.50.12}
      - {prefix: 0.0.0.0/0, identity: 2}
    prune: true

- name: This node's endpoints
  podnet.fabric.bpf_map:
    name: endpoints
    entries:
      - {address: 10.244.1.5, device: lxc2b1e0f4a9c3d, ep_id: 7, identity: 260, enforce_ingress: true}
    prune: true

- name: Endpoint 7 takes TCP 8080-8090 from identity 261 (rule 3) and nothing else
  podnet.fabric.bpf_map:
    name: policy
    entries:
      - {ep_id: 7, direction: ingress, identity: 261, protocol: tcp, port: 8080, end_port: 8090, verdict: allow, rule: 3}
    prune: true

- name: A node's datapath maps in one run, policy additions before the endpoints enforce
  podnet.fabric.bpf_map:
    maps:
      - {name: ipcache, entries: "{{ node_ipcache }}", prune: true}
      - {name: policy, entries: "{{ node_policy }}"}
      - {name: endpoints, entries: "{{ node_endpoints }}", prune: true}
      - {name: policy, entries: "{{ node_policy }}", prune: true}

- name: Reset the drop counters
  podnet.fabric.bpf_map:
    name: metrics
    prune: true
'''

RETURN = r'''
added:
  description: Entries added (canonical form; a port range appears as its prefix blocks).
  returned: always
  type: list
  elements: dict
  sample: [{ep_id: 7, direction: ingress, identity: 261, protocol: tcp, port: 8080, end_port: 8087,
            icmp_type: null, verdict: allow, rule: 3}]
removed:
  description: Entries removed.
  returned: always
  type: list
  elements: dict
  sample: []
changed_entries:
  description: Entries whose value changed, each as C(before) and C(after).
  returned: always
  type: list
  elements: dict
  sample: [{before: {prefix: 10.244.1.5/32, identity: 260, tunnel_endpoint: null, local: true},
            after: {prefix: 10.244.1.5/32, identity: 262, tunnel_endpoint: null, local: true}}]
flushed:
  description: How many entries a flush removed (C(ct), C(metrics)).
  returned: always
  type: int
  sample: 0
pin:
  description: The map's pin.
  returned: always
  type: str
  sample: /sys/fs/bpf/podnet/podnet_policy_v1
plan:
  description: The actions taken, or that would be taken in check mode.
  returned: always
  type: list
  elements: dict
state:
  description: Whether the map is pinned and how many entries it holds, after the run (projected in check mode).
  returned: always
  type: dict
  sample: {exists: true, count: 12}
maps:
  description:
    - With O(maps), each map's result in order, with the keys above (C(name), C(changed), C(added),
      C(removed), C(changed_entries), C(flushed), C(pin), C(plan), C(state)). The top-level C(added),
      C(removed), C(changed_entries) and C(plan) then gather every map's, C(flushed) sums them, and
      C(pin) and C(state) are those of the last map.
  returned: when O(maps) is given
  type: list
  elements: dict
  sample: [{name: ipcache, changed: false, added: [], removed: [], changed_entries: [], flushed: 0,
            pin: /sys/fs/bpf/podnet/podnet_ipcache_v1, plan: [], state: {exists: true, count: 9}}]
'''

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.podnet.fabric.plugins.module_utils import bpf_maps, netlink
from ansible_collections.podnet.fabric.plugins.module_utils.reconcile import Reconciler, argument_spec, error_funnel


def resolver(ipr):
    def resolve(device):
        idx = ipr.link_lookup(ifname=device)
        if not idx:
            return None
        return idx[0], ipr.get_links(idx[0])[0].get_attr('IFLA_ADDRESS')
    return resolve


def sync(module, name, entries, prune):
    """One map's reconcile pass: its result, exit_json's keywords for one map."""
    p = module.params
    label = 'bpf_map %s' % name
    pin_root = p['pin_root']
    desired = {}
    if p['state'] == 'present':
        needs_links = name == 'endpoints' and any(isinstance(e, dict) and e.get('device') is not None for e in entries)
        ipr = None
        try:
            if needs_links:
                netlink.require_pyroute2(module)
                with error_funnel(module, label):
                    ipr = netlink.IPRoute()
            desired = bpf_maps.normalize(name, entries, resolver(ipr) if ipr else None)
        except bpf_maps.BpfMapError as e:
            module.fail_json(msg='%s: %s' % (label, e))
        finally:
            if ipr is not None:
                ipr.close()

    syncer = bpf_maps.Syncer(name, pin_root)
    reconciler = Reconciler(
        module,
        read=lambda: bpf_maps.read(name, pin_root),
        plan=lambda realized: bpf_maps.plan(name, desired, realized, prune, p['state']),
        apply=syncer.apply,
        project=bpf_maps.project,
        view=lambda realized: {'exists': realized['exists'], 'count': realized['count']},
        describe=lambda a: '%s %s' % (a['action'], a.get('id', a['map'])),
        name=label,
    )
    try:
        result = reconciler.run()
    finally:
        syncer.close()
    actions = result['plan']
    if module._diff:
        result['diff'] = {
            'before': dict(result['diff']['before'], entries=bpf_maps.touched(reconciler.before, actions)),
            'after': dict(result['diff']['after'], entries=bpf_maps.touched(reconciler.after, actions)),
        }
    else:
        result.pop('diff')
    return dict(
        added=[a['entry'] for a in actions if a['action'] == 'add'],
        removed=[a['entry'] for a in actions if a['action'] == 'remove'],
        changed_entries=[{'before': a['before'], 'after': a['entry']} for a in actions if a['action'] == 'change'],
        flushed=sum(a['count'] for a in actions if a['action'] == 'flush'),
        pin=bpf_maps.MAPS[name].path(pin_root),
        **result)


def gather(results):
    """Several maps' results, [(name, result)], as one module result (see RETURN: maps)."""
    out = dict(results[-1][1])
    out.pop('diff', None)
    out['maps'] = [dict(((k, v) for k, v in r.items() if k != 'diff'), name=n) for n, r in results]
    out['changed'] = any(r['changed'] for _n, r in results)
    for key in ('added', 'removed', 'changed_entries', 'plan'):
        out[key] = [x for _n, r in results for x in r[key]]
    out['flushed'] = sum(r['flushed'] for _n, r in results)
    if any('diff' in r for _n, r in results):
        out['diff'] = dict((side, dict(('%d %s' % (i, n), r['diff'][side]) for i, (n, r) in enumerate(results, 1)))
                           for side in ('before', 'after'))
    return out


def main():
    module = AnsibleModule(
        argument_spec=argument_spec(
            name=dict(type='str', choices=sorted(bpf_maps.MAPS)),
            entries=dict(type='list', elements='dict', default=[]),
            prune=dict(type='bool', default=False),
            maps=dict(type='list', elements='dict', options=dict(
                name=dict(type='str', required=True, choices=sorted(bpf_maps.MAPS)),
                entries=dict(type='list', elements='dict', default=[]),
                prune=dict(type='bool', default=False),
            )),
            state=dict(type='str', choices=['present', 'absent'], default='present'),
            pin_root=dict(type='path', default=bpf_maps.DEFAULT_PIN_ROOT),
        ),
        mutually_exclusive=[('name', 'maps')],
        required_one_of=[('name', 'maps')],
        supports_check_mode=True,
    )
    p = module.params
    if p['maps'] is None:
        module.exit_json(**sync(module, p['name'], p['entries'], p['prune']))
    module.exit_json(**gather([(m['name'], sync(module, m['name'], m['entries'], m['prune'])) for m in p['maps']]))


if __name__ == '__main__':
    main()
