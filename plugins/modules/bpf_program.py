#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: podnet.fabric contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r'''
---
module: bpf_program
short_description: Compile, pin and attach one of podnet's eBPF programs at a tc clsact hook
version_added: 0.1.0
description:
  - Attaches the eBPF program O(program) to the O(hook) of the tc clsact qdisc of O(device), at
    podnet's fixed priority 1 and handle 1. A reload replaces the program there in one netlink
    replace, so the hook never holds a second copy and packets never meet an empty hook.
  - The C sources are the collection's C(bpf/) directory, compiled on the node by bcc. A source file
    is the unit of compilation (C(bpf_lxc.c) holds C(from_container) and C(to_container)); one
    compile loads all of its programs and pins each under O(pin_root)C(/programs/). Attaching a
    program to another device reuses the pinned program without compiling.
  - The file is compiled only when the hash of its expanded text, O(defines) and O(pin_root)
    differs from the one recorded in C(/var/lib/podnet/bpf/programs.json), or when the pinned
    program is not the recorded one. A run with nothing to change compiles nothing (RV(compiled) is
    false).
  - The programs use the maps pinned under O(pin_root) (M(podnet.fabric.bpf_map)); the compile
    creates those that are missing, and refuses to run over a pinned map whose layout is not the
    one this collection expects.
  - With O(state=absent) the filter is removed from the hook, and the pinned program is unpinned
    when no other device's hook in the node's network namespace still runs it.
author:
  - podnet.fabric maintainers (@podnet)
extends_documentation_fragment:
  - podnet.fabric.node_lock
options:
  device:
    description: The device whose clsact hook gets the program (an endpoint's C(lxc*) veth, the underlay device, the tunnel device).
    type: str
    required: true
  hook:
    description: The clsact hook. C(from_container) goes on the lxc device's C(ingress), C(to_container) on its C(egress).
    type: str
    choices: [ingress, egress]
    required: true
  program:
    description: The program, a function of C(bpf/bpf_lxc.c), C(bpf/bpf_netdev.c) or C(bpf/bpf_overlay.c).
    type: str
    choices: [from_container, to_container, from_netdev, to_netdev, from_overlay]
    required: true
  defines:
    description:
      - Node-level C(#define)s for the compile, name to value (an integer or a single token), for
        example C(CT_LIFETIME_NONTCP=60). Per-endpoint facts belong in the maps, never here.
      - They apply to the source file, so give the programs of one file the same defines (otherwise
        each run recompiles the file for the other).
      - The loader sets C(PODNET_PIN_ROOT) from O(pin_root) itself.
    type: dict
    default: {}
  state:
    description: Whether the program is attached.
    type: str
    choices: [present, absent]
    default: present
  pin_root:
    description: The bpffs directory of podnet's pinned maps and programs.
    type: path
    default: /sys/fs/bpf/podnet
  sources:
    description:
      - The C sources, relative path to text. The action plugin of this module fills it from the
        collection's C(bpf/) directory; playbooks leave it unset.
    type: dict
notes:
  - Needs bcc (Debian C(python3-bpfcc)) visible to the module's interpreter and kernel headers at
    C(/lib/modules/$(uname -r)/build) on the node, and a bpffs mounted at C(/sys/fs/bpf).
attributes:
  check_mode:
    support: full
    description: Reads the hook, the pinned program and the record, and reports what would be compiled, attached or removed.
  diff_mode:
    support: full
    description: Returns the hook's filter and the pinned program before and after (a program compiled in check mode has no id yet).
'''

EXAMPLES = r'''
- name: Police what an endpoint sends
  podnet.fabric.bpf_program:
    device: lxc2b1e0f4a9c3d
    hook: ingress
    program: from_container

- name: And what it receives
  podnet.fabric.bpf_program:
    device: lxc2b1e0f4a9c3d
    hook: egress
    program: to_container

- name: Identify traffic from the underlay, with a shorter conntrack lifetime for UDP and ICMP
  podnet.fabric.bpf_program:
    device: eth0
    hook: ingress
    program: from_netdev
    defines:
      CT_LIFETIME_NONTCP: 30

- name: Detach (and unpin once no device runs it)
  podnet.fabric.bpf_program:
    device: lxc2b1e0f4a9c3d
    hook: ingress
    program: from_container
    state: absent
'''

RETURN = r'''
compiled:
  description: Whether this run compiled the program's source file.
  returned: always
  type: bool
  sample: false
compile_seconds:
  description: Wall time of bcc's compile and the program loads, when this run compiled.
  returned: always
  type: float
  sample: 0.62
program:
  description: The pinned program after the run (id and tag null in check mode after a compile).
  returned: when O(state=present)
  type: dict
  sample: {id: 412, tag: 6d3f2c1b0a998877, name: from_container, pin: /sys/fs/bpf/podnet/programs/from_container,
           hash: 0f4c...}
plan:
  description: The actions taken, or that would be taken in check mode.
  returned: always
  type: list
  elements: dict
  sample:
    - {action: compile, file: bpf_lxc.c, programs: [from_container, to_container], hash: 0f4c..., reason: sources or defines changed}
    - {action: attach, device: lxc2b1e0f4a9c3d, hook: ingress, program: from_container, prio: 1, handle: 1,
       pin: /sys/fs/bpf/podnet/programs/from_container}
state:
  description: The hook and the program after the run (projected in check mode).
  returned: always
  type: dict
  contains:
    filter:
      description: podnet's filter on the hook (prio, handle, prog_id, name, tag), or null.
      type: dict
    other_filters:
      description: Other filters at podnet's priority (a run removes them).
      type: list
    program:
      description: The pinned program (id, tag, name, pin, hash), or null.
      type: dict
  sample:
    device: lxc2b1e0f4a9c3d
    hook: ingress
    filter: {prio: 1, handle: 1, kind: bpf, prog_id: 412, name: from_container, tag: 6d3f2c1b0a998877}
    other_filters: []
    program: {id: 412, tag: 6d3f2c1b0a998877, name: from_container, pin: /sys/fs/bpf/podnet/programs/from_container, hash: 0f4c...}
'''

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.podnet.fabric.plugins.module_utils import bpf, netlink
from ansible_collections.podnet.fabric.plugins.module_utils.reconcile import Reconciler, argument_spec, error_funnel


def main():
    module = AnsibleModule(
        argument_spec=argument_spec(
            device=dict(type='str', required=True),
            hook=dict(type='str', required=True, choices=sorted(bpf.HOOKS)),
            program=dict(type='str', required=True, choices=sorted(bpf.PROGRAMS)),
            defines=dict(type='dict', default={}),
            state=dict(type='str', choices=['present', 'absent'], default='present'),
            pin_root=dict(type='path', default=bpf.DEFAULT_PIN_ROOT),
            sources=dict(type='dict', no_log=True),
        ),
        supports_check_mode=True,
    )
    netlink.require_pyroute2(module)
    p = module.params
    name = 'bpf_program %s %s/%s' % (p['program'], p['device'], p['hook'])
    try:
        desired = bpf.desired_state(p, p['sources'])
    except bpf.BpfError as e:
        module.fail_json(msg='%s: %s' % (name, e))
    with error_funnel(module, name):
        ipr = netlink.IPRoute()
    try:
        loader = bpf.Loader(ipr, desired, p['sources'])
        result = Reconciler(
            module,
            read=lambda: bpf.read(ipr, desired),
            plan=lambda realized: bpf.plan(desired, realized),
            apply=loader.apply,
            project=lambda realized, actions: bpf.project(desired, realized, actions),
            view=lambda realized: bpf.view(desired, realized),
            describe=bpf.describe,
            name=name,
        ).run()
    finally:
        ipr.close()
    program = result['state']['program']
    module.exit_json(compiled=loader.compiled, compile_seconds=loader.compile_seconds,
                     program=program if desired['state'] == 'present' else None, **result)


if __name__ == '__main__':
    main()
