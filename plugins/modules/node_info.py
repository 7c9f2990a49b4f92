#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: podnet.fabric contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r'''
---
module: node_info
short_description: Read a node's pod-networking state from the kernel
version_added: 0.1.0
description:
  - Reports what podnet cares about on a node, read from the kernel and the filesystem, changing
    nothing - links and their addresses, routes podnet owns (protocol 201), sysctls, whether bpffs is
    mounted, the kernel headers bcc needs, and the Python libraries the node modules need.
  - Used by C(playbooks/verify.yml), the prerequisites role's checks, and the tests.
author:
  - podnet.fabric maintainers (@podnet)
options:
  sysctls:
    description: Sysctl names to read (dotted form).
    type: list
    elements: str
    default: []
  bpffs:
    description: Where bpffs should be mounted.
    type: path
    default: /sys/fs/bpf
  underlay_ip:
    description: The node's underlay address; when given, C(underlay) reports the device holding it.
    type: str
  link_kinds:
    description:
      - Link kinds to probe, for example C(geneve) or C(vxlan). The kernel is asked to create
        each in a private network namespace that is thrown away, so nothing on the node changes;
        C(kernel.link_kinds) says which it could create.
    type: list
    elements: str
    default: []
  paths:
    description: Files to report on (exists, size); for example the node's leases under C(/var/lib/podnet).
    type: list
    elements: path
    default: []
notes:
  - Needs pyroute2 0.9 or later to read links and routes; without it, C(links) and C(routes) are
    empty and C(python.pyroute2) says why.
attributes:
  check_mode:
    support: full
    description: Reads only; the same in check mode.
  diff_mode:
    support: none
    description: Changes nothing, so there is no diff.
'''

EXAMPLES = r'''
- name: Read the node
  podnet.fabric.node_info:
    sysctls: [net.ipv4.ip_forward]
  register: node

- name: Check forwarding
  ansible.builtin.assert:
    that: node.sysctls['net.ipv4.ip_forward'] == '1'
'''

RETURN = r'''
hostname:
  description: The node's hostname (UTS namespace).
  returned: always
  type: str
  sample: node1
kernel:
  description: The running kernel release, where its headers are, and which of O(link_kinds) it can create.
  returned: always
  type: dict
  sample: {release: 6.1.0-26-amd64, headers: /lib/modules/6.1.0-26-amd64/build, headers_ok: true,
           link_kinds: {geneve: false, vxlan: true}}
links:
  description: Every link of the node's network namespace, by name.
  returned: always
  type: dict
  sample: {podnet_host: {kind: veth, mtu: 1450, up: true, addresses: [10.244.1.1/32]}}
routes:
  description: IPv4 routes of the main table that podnet owns (protocol 201).
  returned: always
  type: list
  elements: dict
sysctls:
  description: The requested sysctls, as strings; null when the sysctl does not exist.
  returned: always
  type: dict
  sample: {net.ipv4.ip_forward: '1'}
bpffs:
  description: Whether bpffs is mounted at O(bpffs).
  returned: always
  type: bool
python:
  description: Versions of the Python libraries node modules need (null when missing).
  returned: always
  type: dict
  sample: {interpreter: /opt/podnet/venv/bin/python, pyroute2: 0.9.7, bcc: 0.26.0}
underlay:
  description: The device holding O(underlay_ip) (C(name), C(mtu)), or null when no device holds it.
  returned: when O(underlay_ip) is given
  type: dict
  sample: {name: eth0, mtu: 1500}
paths:
  description: For each of O(paths), whether it exists and its size.
  returned: always
  type: dict
'''

import os
import platform
import socket
import sys

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.podnet.fabric.plugins.module_utils import netlink, sysctl


def _bpffs_mounted(path):
    with open('/proc/self/mounts') as f:
        for line in f:
            fields = line.split()
            if fields[1] == path and fields[2] == 'bpf':
                return True
    return False


def _python_libs():
    out = {'interpreter': sys.executable, 'pyroute2': None, 'bcc': None}
    if netlink.HAS_PYROUTE2:
        out['pyroute2'] = netlink.pyroute2.__version__
    try:
        import bcc  # noqa: F401 pylint: disable=unused-import
        out['bcc'] = getattr(bcc, '__version__', 'unknown')
    except Exception:  # bcc raises more than ImportError when its shared library is broken
        pass
    return out


def main():
    module = AnsibleModule(
        argument_spec=dict(
            sysctls=dict(type='list', elements='str', default=[]),
            bpffs=dict(type='path', default='/sys/fs/bpf'),
            paths=dict(type='list', elements='path', default=[]),
            underlay_ip=dict(type='str'),
            link_kinds=dict(type='list', elements='str', default=[]),
        ),
        supports_check_mode=True,
    )
    release = platform.release()
    headers = '/lib/modules/%s/build' % release
    result = dict(
        changed=False,
        hostname=socket.gethostname(),
        kernel=dict(release=release, headers=headers,
                    headers_ok=os.path.isdir(os.path.join(headers, 'include')),
                    link_kinds=dict((k, netlink.link_kind_supported(k)) for k in module.params['link_kinds'])
                    if netlink.HAS_PYROUTE2 else {}),
        sysctls=dict((s, sysctl.read(s)) for s in module.params['sysctls']),
        bpffs=_bpffs_mounted(module.params['bpffs']),
        python=_python_libs(),
        paths=dict((p, {'exists': os.path.exists(p), 'size': os.path.getsize(p) if os.path.isfile(p) else None})
                   for p in module.params['paths']),
        links={},
        routes=[],
    )
    if netlink.HAS_PYROUTE2:
        with netlink.IPRoute() as ipr:
            result['links'] = dict((link.pop('name'), link) for link in netlink.links(ipr))
            result['routes'] = netlink.routes(ipr, proto=netlink.RTPROT_PODNET)
            if module.params['underlay_ip']:
                dev = netlink.device_for_address(ipr, module.params['underlay_ip'])
                result['underlay'] = dict(name=dev['name'], mtu=dev['mtu']) if dev else None
    module.exit_json(**result)


if __name__ == '__main__':
    main()
