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
  - O(host_routing=bpf) compiles the programs for eBPF host routing. Traffic to an endpoint of the node is
    delivered into the endpoint's namespace with C(bpf_redirect_peer), from the hook it arrives at, after the
    endpoint's ingress judgement. Traffic from an endpoint to another node's endpoint leaves by
    C(bpf_fib_lookup) and C(bpf_redirect) / C(bpf_redirect_neigh). Neither crosses the host's IP stack.
    The kernel's support for the three helpers is probed with a trial load of a tiny program each run
    (no compile). Without them the programs are compiled for kernel routing and RV(host_routing) says why.
  - With O(state=absent) the filter is removed from the hook, and the pinned program is unpinned
    when no other device's hook in the node's network namespace still runs it.
author:
  - podnet.fabric maintainers (@podnet)
extends_documentation_fragment:
  - podnet.fabric.node_lock
options:
  device:
    description:
      - The device whose clsact hook gets the program (an endpoint's C(lxc*) veth, the underlay device, the tunnel device).
      - O(device), O(hook) and O(program) go together; either they or O(attachments) are required.
    type: str
  hook:
    description: The clsact hook. C(from_container) goes on the lxc device's C(ingress), C(to_container) on its C(egress).
    type: str
    choices: [ingress, egress]
  program:
    description: The program, a function of C(bpf/bpf_lxc.c), C(bpf/bpf_netdev.c) or C(bpf/bpf_overlay.c).
    type: str
    choices: [from_container, to_container, from_netdev, to_netdev, from_overlay]
  attachments:
    description:
      - Several attachments in one run, reconciled one after the other in the order given, each as
        O(device), O(hook) and O(program) would; O(defines), O(state) and O(pin_root) apply to all.
        A source file is still compiled at most once (the first attachment that needs it compiles
        it, the others reuse the pin, in check mode too).
      - One module run on the node instead of one per hook. Not together with O(device), O(hook) or O(program).
    type: list
    elements: dict
    suboptions:
      device:
        description: As O(device).
        type: str
        required: true
      hook:
        description: As O(hook).
        type: str
        choices: [ingress, egress]
        required: true
      program:
        description: As O(program).
        type: str
        choices: [from_container, to_container, from_netdev, to_netdev, from_overlay]
        required: true
  defines:
    description:
      - Node-level C(#define)s for the compile, name to value (an integer or a single token), for
        example C(CT_LIFETIME_NONTCP=60). Per-endpoint facts belong in the maps, never here.
      - They apply to the source file, so give the programs of one file the same defines (otherwise
        each run recompiles the file for the other).
      - The loader sets C(PODNET_PIN_ROOT) from O(pin_root) and C(PODNET_HOST_ROUTING) from O(host_routing) itself.
    type: dict
    default: {}
  host_routing:
    description:
      - C(bpf) redirects endpoint traffic in eBPF, around the host stack, where the kernel has the helpers,
        else falls back to C(kernel). C(kernel) leaves routing to the kernel (the lxc veth, the host's routes
        and netfilter).
      - Like O(defines), it applies to the source file; give every program of a node the same.
    type: str
    choices: [bpf, kernel]
    default: bpf
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

- name: An endpoint's two hooks and the underlay's in one run
  podnet.fabric.bpf_program:
    attachments:
      - {device: lxc2b1e0f4a9c3d, hook: ingress, program: from_container}
      - {device: lxc2b1e0f4a9c3d, hook: egress, program: to_container}
      - {device: eth0, hook: ingress, program: from_netdev}
      - {device: eth0, hook: egress, program: to_netdev}

- name: Detach (and unpin once no device runs it)
  podnet.fabric.bpf_program:
    device: lxc2b1e0f4a9c3d
    hook: ingress
    program: from_container
    state: absent
'''

RETURN = r'''
compiled:
  description: Whether this run compiled the program's source file (with O(attachments), any file).
  returned: always
  type: bool
  sample: false
compile_seconds:
  description: Wall time of bcc's compile and the program loads, when this run compiled (with O(attachments), their sum).
  returned: always
  type: float
  sample: 0.62
program:
  description: The pinned program after the run (id and tag null in check mode after a compile).
  returned: when O(state=present)
  type: dict
  sample: {id: 412, tag: 6d3f2c1b0a998877, name: from_container, pin: /sys/fs/bpf/podnet/programs/from_container,
           hash: 0f4c...}
host_routing:
  description: The host routing the programs are compiled for (C(mode)), the one asked for, and the helpers the kernel lacks when C(bpf) fell back to C(kernel).
  returned: when O(state=present)
  type: dict
  sample: {requested: bpf, mode: bpf, missing: []}
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
attachments:
  description:
    - With O(attachments), each attachment's result in order (C(device), C(hook), C(program),
      C(changed), C(compiled), C(plan), C(state)). The top-level C(plan) then gathers every
      attachment's; C(program) and C(state) are those of the last one.
  returned: when O(attachments) is given
  type: list
  elements: dict
  sample: [{device: eth0, hook: ingress, program: from_netdev, changed: false, compiled: false, plan: [],
            state: {device: eth0, hook: ingress, filter: {prio: 1, handle: 1, kind: bpf, prog_id: 415,
            name: from_netdev, tag: 1a2b3c4d5e6f7081}, other_filters: [], program: null}}]
'''

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.podnet.fabric.plugins.module_utils import bpf, netlink
from ansible_collections.podnet.fabric.plugins.module_utils.reconcile import Reconciler, argument_spec, error_funnel


def attach(module, ipr, item, carried, support):
    """One attachment's reconcile pass: its result. ``carried`` holds, per source file,
    the pins and record a check-mode pass before this one projected for its compile, so a later
    attachment of the same file plans no second compile. ``support``: the probed host-routing
    helpers (None when not probed)."""
    p = module.params
    params = dict(item, defines=p['defines'], state=p['state'], pin_root=p['pin_root'], host_routing=p['host_routing'])
    name = 'bpf_program %s %s/%s' % (item['program'], item['device'], item['hook'])
    try:
        desired = bpf.desired_state(params, p['sources'], support)
    except bpf.BpfError as e:
        module.fail_json(msg='%s: %s' % (name, e))

    def read():
        realized = bpf.read(ipr, desired)
        if desired['file'] in carried:
            realized = dict(realized, pins=dict(realized['pins'], **carried[desired['file']]['pins']),
                            record=carried[desired['file']]['record'])
        return realized

    loader = bpf.Loader(ipr, desired, p['sources'])
    reconciler = Reconciler(
        module,
        read=read,
        plan=lambda realized: bpf.plan(desired, realized),
        apply=loader.apply,
        project=lambda realized, actions: bpf.project(desired, realized, actions),
        view=lambda realized: bpf.view(desired, realized),
        describe=bpf.describe,
        name=name,
    )
    result = reconciler.run()
    if module.check_mode and any(a['action'] == 'compile' for a in result['plan']):
        carried[desired['file']] = {'pins': reconciler.after['pins'], 'record': reconciler.after['record']}
    program = result['state']['program']
    return dict(result, compiled=loader.compiled, compile_seconds=loader.compile_seconds,
                program=program if desired['state'] == 'present' else None, host_routing=desired['host_routing'])


def gather(items, results):
    """Several attachments' results as one module result (see RETURN: attachments)."""
    out = dict(results[-1])
    out.pop('diff', None)
    out['attachments'] = [dict(((k, v) for k, v in r.items() if k not in ('diff', 'compile_seconds')),
                               device=i['device'], hook=i['hook'], program=i['program'])
                          for i, r in zip(items, results)]
    out['changed'] = any(r['changed'] for r in results)
    out['plan'] = [a for r in results for a in r['plan']]
    out['compiled'] = any(r['compiled'] for r in results)
    seconds = [r['compile_seconds'] for r in results if r['compile_seconds'] is not None]
    out['compile_seconds'] = round(sum(seconds), 3) if seconds else None
    out['diff'] = dict((side, dict(('%s %s' % (i['device'], i['hook']), r['diff'][side]) for i, r in zip(items, results)))
                       for side in ('before', 'after'))
    return out


def main():
    module = AnsibleModule(
        argument_spec=argument_spec(
            device=dict(type='str'),
            hook=dict(type='str', choices=sorted(bpf.HOOKS)),
            program=dict(type='str', choices=sorted(bpf.PROGRAMS)),
            attachments=dict(type='list', elements='dict', options=dict(
                device=dict(type='str', required=True),
                hook=dict(type='str', required=True, choices=sorted(bpf.HOOKS)),
                program=dict(type='str', required=True, choices=sorted(bpf.PROGRAMS)),
            )),
            defines=dict(type='dict', default={}),
            state=dict(type='str', choices=['present', 'absent'], default='present'),
            pin_root=dict(type='path', default=bpf.DEFAULT_PIN_ROOT),
            host_routing=dict(type='str', choices=list(bpf.HOST_ROUTING_MODES), default='bpf'),
            sources=dict(type='dict', no_log=True),
        ),
        mutually_exclusive=[('attachments', 'device'), ('attachments', 'hook'), ('attachments', 'program')],
        required_one_of=[('attachments', 'device')],
        required_together=[('device', 'hook', 'program')],
        supports_check_mode=True,
    )
    netlink.require_pyroute2(module)
    p = module.params
    items = p['attachments']
    # The kernel's support of host routing's helpers, probed once for every attachment of the run.
    support = None
    if p['state'] == 'present' and p['host_routing'] == 'bpf':
        with error_funnel(module, 'bpf_program host_routing'):
            support = bpf.probe_helpers()
    with error_funnel(module, 'bpf_program'):
        ipr = netlink.IPRoute()
    carried = {}
    try:
        if items is None:
            result = attach(module, ipr, dict(device=p['device'], hook=p['hook'], program=p['program']), carried, support)
        else:
            result = gather(items, [attach(module, ipr, item, carried, support) for item in items]) if items else \
                dict(changed=False, plan=[], attachments=[], compiled=False, compile_seconds=None, host_routing=None)
    finally:
        ipr.close()
    module.exit_json(**result)


if __name__ == '__main__':
    main()
