#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: podnet.fabric contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r'''
---
module: connectivity
short_description: Probe pod-to-pod connectivity from this node's health endpoint
version_added: 0.1.0
description:
  - From inside the node's health endpoint (see M(podnet.fabric.health_endpoint)), pings (ICMP or
    ICMPv6 echo) and opens a TCP connection to each target, normally every other node's health
    endpoint, so the probes take the path pod traffic takes.
  - 'The TCP probe reads the responder''s line and checks that it names the expected node
    (C(podnet-health <name>)): reaching the wrong endpoint is a failure too.'
  - 'Fails with one message listing every unreachable pair, one per line, for example
    C(node1 -> node3 (10.244.2.5): tcp 4240 timed out), unless O(fail_on_unreachable=false).'
  - Targets are probed in parallel; a target costs at most about
    O(ping_count) x O(ping_interval) + O(ping_timeout) + O(tcp_timeout) seconds.
  - Read-only - it changes nothing on the node and always returns C(changed=false).
author:
  - podnet.fabric maintainers (@podnet)
options:
  targets:
    description:
      - The endpoints to probe. Each has C(name) (the node whose endpoint it is, checked against the
        responder's reply), C(address) (IPv4 or IPv6) and optionally C(port) (default O(port)).
    type: list
    elements: dict
    required: true
  netns:
    description: The health endpoint's network namespace on this node (probes start there).
    type: str
    default: podnet-health
  node_name:
    description: This node's name in the failure messages. Defaults to the hostname.
    type: str
  port:
    description: The responders' TCP port.
    type: int
    default: 4240
  ping:
    description: Send ICMP echo requests.
    type: bool
    default: true
  tcp:
    description: Connect over TCP and check the reply.
    type: bool
    default: true
  ping_count:
    description: Echo requests per target; the target answers ping when at least one reply comes back.
    type: int
    default: 3
  ping_interval:
    description: Seconds between echo requests.
    type: float
    default: 0.2
  ping_timeout:
    description: Seconds to wait for replies after the last echo request.
    type: float
    default: 2.0
  tcp_timeout:
    description: Seconds for the TCP connection and the reply, together.
    type: float
    default: 2.0
  fail_on_unreachable:
    description: Fail when any target does not answer. With C(false) the module only reports.
    type: bool
    default: true
notes:
  - Runs as root (raw ICMP sockets, entering the namespace). Needs no ping binary.
  - Check mode probes too - probing only sends traffic to the endpoints and reads the answers, it
    changes no state - so C(--check) runs give real results.
attributes:
  check_mode:
    support: full
    description: Probes as in a normal run (it only reads); never changes anything.
  diff_mode:
    support: none
    description: Nothing changes, so there is no diff.
'''

EXAMPLES = r'''
- name: Every other node's health endpoint answers ping and TCP
  podnet.fabric.connectivity:
    targets:
      - {name: node2, address: 10.244.1.5}
      - {name: node3, address: 10.244.2.5}

- name: Only report, with short timeouts
  podnet.fabric.connectivity:
    targets: "{{ health_targets }}"
    tcp_timeout: 1
    ping_timeout: 1
    fail_on_unreachable: false
  register: probe
'''

RETURN = r'''
source:
  description: This node's name, as in the messages.
  returned: always
  type: str
  sample: node1
results:
  description:
    - One entry per target.
    - C(tcp.connected) says whether the TCP handshake completed (a connection refused or timed out before it
      did is false), which tells a dropped SYN from a listener that did not answer.
  returned: always
  type: list
  elements: dict
  sample:
    - name: node2
      address: 10.244.1.5
      port: 4240
      ping: {ok: true, sent: 3, received: 3, rtt_ms: 0.061, rtt_min_ms: 0.05, rtt_max_ms: 0.08}
      tcp: {ok: true, reply: podnet-health node2, error: null, ms: 0.4, connected: true}
failures:
  description:
    - One line per failed probe (empty when every target answered).
    - (Not named C(unreachable) - Ansible takes a true C(unreachable) in a result for an unreachable host.)
  returned: always
  type: list
  elements: str
  sample: ["node1 -> node3 (10.244.2.5): tcp 4240 timed out"]
reachable:
  description: Whether every target answered every enabled probe.
  returned: always
  type: bool
  sample: true
'''

import socket

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.podnet.fabric.plugins.module_utils import netns, probe


def main():
    module = AnsibleModule(
        argument_spec=dict(
            targets=dict(type='list', elements='dict', required=True),
            netns=dict(type='str', default=probe.DEFAULT_NETNS),
            node_name=dict(type='str'),
            port=dict(type='int', default=probe.DEFAULT_PORT),
            ping=dict(type='bool', default=True),
            tcp=dict(type='bool', default=True),
            ping_count=dict(type='int', default=3),
            ping_interval=dict(type='float', default=0.2),
            ping_timeout=dict(type='float', default=2.0),
            tcp_timeout=dict(type='float', default=2.0),
            fail_on_unreachable=dict(type='bool', default=True),
        ),
        supports_check_mode=True,
    )
    p = module.params
    source = p['node_name'] or socket.gethostname()
    if p['ping_count'] < 1 or p['ping_interval'] < 0 or p['ping_timeout'] <= 0 or p['tcp_timeout'] <= 0:
        module.fail_json(msg='ping_count must be at least 1 and the timeouts positive')
    try:
        targets = probe.normalize_targets(p['targets'], p['port'])
    except probe.ProbeError as e:
        module.fail_json(msg=str(e))
    if not netns.netns_exists(p['netns']):
        module.fail_json(msg='%s: the health endpoint %s does not exist on this node (no %s); run the '
                             'podnet.fabric.health role first' % (source, p['netns'], netns.netns_path(p['netns'])),
                         source=source, results=[], failures=[], reachable=False)
    try:
        results = probe.probe(p['netns'], targets, ping=p['ping'], tcp=p['tcp'], ping_count=p['ping_count'],
                              ping_interval=p['ping_interval'], ping_timeout=p['ping_timeout'],
                              tcp_timeout=p['tcp_timeout'])
    except OSError as e:
        module.fail_json(msg='%s: cannot probe from %s: %s' % (source, p['netns'], e))
    lines = probe.failures(source, results, ping=p['ping'], tcp=p['tcp'])
    out = dict(changed=False, source=source, results=results, failures=lines, reachable=not lines)
    if lines and p['fail_on_unreachable']:
        probes = len(results) * (int(p['ping']) + int(p['tcp']))
        module.fail_json(msg='%d of %d probes failed:\n%s' % (len(lines), probes, '\n'.join(lines)), **out)
    module.exit_json(**out)


if __name__ == '__main__':
    main()
