#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: podnet.fabric contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r'''
---
module: bpf_info
short_description: Report podnet's eBPF programs, maps, attachments and drops on a node
version_added: 0.1.0
description:
  - Reads, never changes. Programs, maps and tc attachments come from C(bpftool)'s JSON
    (C(bpftool -j -f prog show), C(map show), C(net)); entry counts and the counters of
    C(podnet_metrics_v1) are read from the pinned maps.
  - podnet's programs are those pinned under O(pin_root)C(/programs/), and any program with one of
    podnet's program names attached at a tc hook (one from before the last reload, on a device not
    yet updated, has C(current) false). podnet's maps are those pinned directly under O(pin_root).
  - Answers why a packet was dropped. Each drop counter names its reason, the endpoint's direction
    and, for a policy drop, the rule (C(rule) 0 is the default deny of an endpoint a rule selects).
author:
  - podnet.fabric maintainers (@podnet)
options:
  pin_root:
    description: The bpffs directory of podnet's pinned maps and programs.
    type: path
    default: /sys/fs/bpf/podnet
  bpftool:
    description: The bpftool command (found on the PATH and in the sbin directories when not a path).
    type: str
    default: bpftool
notes:
  - Needs C(bpftool) (Debian package C(bpftool)) and libbcc on the node.
attributes:
  check_mode:
    support: full
    description: Reads only; the same in check mode.
  diff_mode:
    support: none
    description: Reports state; nothing to diff.
'''

EXAMPLES = r'''
- name: What the datapath dropped, and why
  podnet.fabric.bpf_info:
  register: bpf

- name: Show the policy drops
  ansible.builtin.debug:
    msg: "{{ item.packets }} packets: {{ item.reason_name }} ({{ item.direction }}, rule {{ item.rule }})"
  loop: "{{ bpf.drops }}"
'''

RETURN = r'''
programs:
  description: podnet's programs.
  returned: always
  type: list
  elements: dict
  sample:
    - {id: 412, name: from_container, tag: 6d3f2c1b0a998877, pin: /sys/fs/bpf/podnet/programs/from_container, current: true,
       loaded_at: 1733050000, bytes_xlated: 11496, bytes_jited: 6727, map_ids: [31, 32, 33, 34, 35],
       attached: [{device: lxc2b1e0f4a9c3d, hook: ingress}]}
maps:
  description: podnet's pinned maps, with their entry counts.
  returned: always
  type: list
  elements: dict
  sample:
    - {name: policy, pin: /sys/fs/bpf/podnet/podnet_policy_v1, id: 33, type: lpm_trie, key_size: 16, value_size: 4,
       max_entries: 65536, entries: 12}
attachments:
  description: Every tc clsact attachment in the node's network namespace (podnet's and others').
  returned: always
  type: list
  elements: dict
  sample: [{device: lxc2b1e0f4a9c3d, ifindex: 12, hook: ingress, prog_id: 412, name: from_container}]
drops:
  description: Dropped packets by reason, direction (the endpoint's) and rule, most first.
  returned: always
  type: list
  elements: dict
  sample: [{reason: 131, reason_name: policy denied, direction: ingress, rule: 2, packets: 3, bytes: 252}]
host_routing:
  description:
    - The host routing the pinned programs were compiled for (C(mode) bpf, kernel, mixed while a run is under way,
      or null without programs; C(files) per source file), and whether this kernel has the helpers eBPF host
      routing needs (a trial load each, C(missing) names those it lacks).
  returned: always
  type: dict
  sample: {mode: bpf, files: {bpf_lxc.c: bpf, bpf_netdev.c: bpf, bpf_overlay.c: bpf}, kernel_supports_bpf: true, missing: []}
forwarded:
  description: Packets the endpoint programs passed, by direction.
  returned: always
  type: list
  elements: dict
  sample: [{reason: 0, reason_name: forwarded, direction: egress, rule: 0, packets: 40, bytes: 3360}]
'''

import json

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.podnet.fabric.plugins.module_utils import bpf, bpf_info, bpf_maps


def main():
    module = AnsibleModule(
        argument_spec=dict(
            pin_root=dict(type='path', default=bpf_maps.DEFAULT_PIN_ROOT),
            bpftool=dict(type='str', default='bpftool'),
        ),
        supports_check_mode=True,
    )
    pin_root = module.params['pin_root']
    tool = module.params['bpftool']
    if '/' not in tool:
        tool = module.get_bin_path(tool, required=True, opt_dirs=['/usr/sbin', '/sbin'])

    def bpftool(*argv):
        rc, out, err = module.run_command([tool, '-j', '-f'] + list(argv))
        if rc != 0:
            module.fail_json(msg='bpf_info: bpftool %s failed (rc %d): %s' % (' '.join(argv), rc, err.strip() or out.strip()))
        try:
            return json.loads(out or '[]')
        except ValueError as e:
            module.fail_json(msg='bpf_info: bpftool %s printed no JSON: %s' % (' '.join(argv), e))

    attached = bpf_info.attachments(bpftool('net'))
    progs = bpf_info.programs(bpftool('prog', 'show'), attached, pin_root)
    counts, metrics = {}, {}
    try:
        for name in sorted(bpf_maps.MAPS):
            m = bpf_maps.PinnedMap.open(name, pin_root)
            if m is None:
                continue
            with m:
                counts[m.path] = m.count()
                if name == 'metrics':
                    metrics = m.entries()
    except (bpf_maps.BpfMapError, OSError) as e:
        module.fail_json(msg='bpf_info: %s' % e)
    drops, forwarded = bpf_info.drops(metrics)
    try:
        routing = bpf_info.host_routing(bpf.read_records(), pin_root, bpf.probe_helpers())
    except (bpf_maps.BpfMapError, OSError, ValueError) as e:
        module.fail_json(msg='bpf_info: host routing: %s' % e)
    module.exit_json(changed=False, programs=progs, maps=bpf_info.maps(bpftool('map', 'show'), pin_root, counts),
                     attachments=attached, drops=drops, forwarded=forwarded, host_routing=routing)


if __name__ == '__main__':
    main()
