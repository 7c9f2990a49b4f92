#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: podnet.fabric contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r'''
---
module: lab_capture
short_description: Capture packets on a lab's underlay while traffic runs inside its nodes
version_added: 0.1.0
description:
  - Runs C(tcpdump) on the underlay bridge of a lab made by M(podnet.fabric.lab_cluster) (in the
    lab's underlay namespace C(<prefix>-ul)), runs the given traffic commands inside lab members
    (optionally inside a network namespace of the member, such as a pod's), stops the capture and
    returns the packets, decoded. It proves what crossed the wire, for example VXLAN on UDP 8472
    in tunnel mode or plain pod-to-pod IP in native mode.
  - UDP packets are decoded as VXLAN (C(tcpdump -T vxlan)), giving the inner addresses of those
    sent to O(vxlan_port); keep other UDP traffic out of O(filter).
  - Lab-only and read-only towards the cluster; it runs on the machine hosting the lab
    (C(localhost)). The capture and the traffic commands are processes it starts and ends.
author:
  - podnet.fabric maintainers (@podnet)
options:
  prefix:
    description: The lab's name prefix.
    type: str
    required: true
  interface:
    description: The interface in the O(segment) namespace to capture on.
    type: str
    default: br0
  segment:
    description:
      - Where to capture. C(underlay) is the lab's underlay namespace C(<prefix>-ul); C(vpc) is an
        ENI lab's VPC namespace C(<prefix>vpc) (M(podnet.fabric.lab_vpc)), whose bridge is C(vpc0).
    type: str
    choices: [underlay, vpc]
    default: underlay
  filter:
    description: A tcpdump (pcap) filter expression.
    type: str
    default: ''
  vxlan_port:
    description: UDP port decoded as VXLAN.
    type: int
    default: 8472
  traffic:
    description: Commands to run, in order, while capturing.
    type: list
    elements: dict
    default: []
    suboptions:
      member:
        description: The lab member (node) to run the command in.
        type: str
        required: true
      netns:
        description: A named network namespace inside the member (for example a pod's) to run it in.
        type: str
      argv:
        description: The command.
        type: list
        elements: str
        required: true
  settle:
    description: Seconds to wait after the traffic before stopping the capture.
    type: float
    default: 0.5
notes:
  - Needs C(tcpdump) on the lab machine.
attributes:
  check_mode:
    support: full
    description: Changes nothing on any node; it runs in check mode too.
  diff_mode:
    support: none
    description: Nothing to diff.
'''

EXAMPLES = r'''
- name: Ping a pod on node2 from node1's health endpoint and capture the underlay
  podnet.fabric.lab_capture:
    prefix: pnt
    filter: udp or icmp
    traffic:
      - member: node1
        netns: podnet-health
        argv: [ping, -c, "2", 10.244.1.2]
  delegate_to: localhost
  register: capture
'''

RETURN = r'''
packets:
  description:
    - Each captured packet. C(src)/C(dst) are the outer addresses, C(proto) C(udp), C(tcp),
      C(icmp) or C(other), C(dport) the destination port. VXLAN packets also have C(vni),
      C(inner_src), C(inner_dst) and C(inner_proto).
  returned: always
  type: list
  elements: dict
  sample: [{src: 192.168.50.11, dst: 192.168.50.12, proto: udp, dport: 8472, vni: 2,
            inner_src: 10.244.0.2, inner_dst: 10.244.1.2, inner_proto: icmp}]
traffic:
  description: Each traffic command's C(rc), C(stdout) and C(stderr).
  returned: always
  type: list
  elements: dict
lines:
  description: The raw tcpdump lines.
  returned: always
  type: list
  elements: str
'''


from ansible.module_utils.basic import AnsibleModule

from ansible_collections.podnet.fabric.plugins.module_utils import lab, lab_ec2


def main():
    module = AnsibleModule(
        argument_spec=dict(
            prefix=dict(type='str', required=True),
            interface=dict(type='str', default='br0'),
            segment=dict(type='str', choices=['underlay', 'vpc'], default='underlay'),
            filter=dict(type='str', default=''),
            vxlan_port=dict(type='int', default=8472),
            traffic=dict(type='list', elements='dict', default=[], options=dict(
                member=dict(type='str', required=True),
                netns=dict(type='str'),
                argv=dict(type='list', elements='str', required=True),
            )),
            settle=dict(type='float', default=0.5),
        ),
        supports_check_mode=True,
    )
    p = module.params
    try:
        result = lab.capture(p['prefix'], p['traffic'], interface=p['interface'], pcap_filter=p['filter'],
                             segment_netns=lab_ec2.vpc_netns(p['prefix']) if p['segment'] == 'vpc' else None,
                             vxlan_port=p['vxlan_port'], settle=p['settle'],
                             tcpdump=module.get_bin_path('tcpdump', required=True))
    except lab.LabError as e:
        module.fail_json(msg=str(e))
    module.exit_json(changed=False, **result)


if __name__ == '__main__':
    main()
