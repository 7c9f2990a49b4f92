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
    mounted, the kernel headers bcc needs, the Python libraries the node modules need, the OS
    (C(/etc/os-release)), C(/etc/fstab), and small configuration files.
  - One run answers every check a play makes of a node, so the site run reads each node once
    instead of gathering facts and probing per role.
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
  node_ip:
    description: The node's underlay address (podnet_node_ip); when given, C(underlay) reports the device holding it.
    type: str
    aliases: [underlay_ip]
  node_device:
    description:
      - The node's underlay device (podnet_node_device); when given, C(underlay) reports it, wherever
        O(node_ip) is (a node IP on C(lo), say, with the fabric on C(eth0)).
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
  files:
    description:
      - Small configuration files to read whole (content, mode, owner), so that a play can leave a
        file alone when it is already as wanted without running a module per file.
      - Content is read as UTF-8 text up to 64 KiB; a larger or unreadable file reports C(content) null.
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
  description: The underlay device, O(node_device) or else the device holding O(node_ip) (C(name),
    C(mtu)), or null when the node has no such device.
  returned: when O(node_ip) or O(node_device) is given
  type: dict
  sample: {name: eth0, mtu: 1500}
paths:
  description: For each of O(paths), whether it exists and its size.
  returned: always
  type: dict
files:
  description:
    - For each of O(files), its C(content) (null when missing, not a regular file, unreadable or over
      64 KiB), C(mode) (octal string), C(uid) and C(gid); all null when the file does not exist.
  returned: always
  type: dict
  sample: {/etc/iproute2/rt_protos.d/podnet.conf: {content: "201 podnet\n", mode: '0644', uid: 0, gid: 0}}
os:
  description: The OS from C(/etc/os-release) (C(id) and the list C(id_like)); C(id) null when unknown.
  returned: always
  type: dict
  sample: {id: debian, id_like: []}
fstab:
  description: The entries of C(/etc/fstab) (C(src), C(path), C(fstype), C(opts), C(dump), C(passno)).
  returned: always
  type: list
  elements: dict
  sample: [{src: bpffs, path: /sys/fs/bpf, fstype: bpf, opts: 'rw,nosuid', dump: '0', passno: '0'}]
'''

import os
import platform
import re
import socket
import stat
import sys

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.podnet.fabric.plugins.module_utils import netlink, sysctl
from ansible_collections.podnet.fabric.plugins.module_utils.reconcile import error_funnel


def _bpffs_mounted(path):
    with open('/proc/self/mounts') as f:
        for line in f:
            fields = line.split()
            if fields[1] == path and fields[2] == 'bpf':
                return True
    return False


def _bcc_version():
    """bcc's version from its package files, None when bcc or its shared library (libbcc.so.0, which
    bcc loads on import) is missing. Importing bcc would dlopen libbcc, tens of ms for nothing here."""
    import ctypes.util
    import importlib.util
    try:
        spec = importlib.util.find_spec('bcc')
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.origin or not ctypes.util.find_library('bcc'):
        return None
    try:
        with open(os.path.join(os.path.dirname(spec.origin), 'version.py')) as f:
            found = re.search(r'''__version__\s*=\s*['"]([^'"]+)['"]''', f.read())
    except (IOError, OSError):
        found = None
    return found.group(1) if found else 'unknown'


def _python_libs():
    return {'interpreter': sys.executable,
            'pyroute2': netlink.pyroute2.__version__ if netlink.HAS_PYROUTE2 else None,
            'bcc': _bcc_version()}


FILE_MAX = 65536


def _file(path):
    try:
        st = os.stat(path)
    except OSError:
        return dict(content=None, mode=None, uid=None, gid=None)
    out = dict(content=None, mode='%04o' % stat.S_IMODE(st.st_mode), uid=st.st_uid, gid=st.st_gid)
    if stat.S_ISREG(st.st_mode) and st.st_size <= FILE_MAX:
        try:
            with open(path, 'rb') as f:
                out['content'] = f.read().decode('utf-8')
        except (OSError, IOError, UnicodeDecodeError):
            pass
    return out


def _os_release(path='/etc/os-release'):
    values = {}
    try:
        with open(path) as f:
            for line in f:
                key, sep, value = line.strip().partition('=')
                if sep:
                    values[key] = value.strip().strip('"\'')
    except (IOError, OSError):
        pass
    return dict(id=values.get('ID'), id_like=values.get('ID_LIKE', '').split())


FSTAB_FIELDS = ('src', 'path', 'fstype', 'opts', 'dump', 'passno')


def _fstab(path='/etc/fstab'):
    entries = []
    try:
        with open(path) as f:
            for line in f:
                fields = line.split('#', 1)[0].split()
                if len(fields) >= 3:
                    fields += ['defaults', '0', '0'][len(fields) - 3:]
                    entries.append(dict(zip(FSTAB_FIELDS, fields)))
    except (IOError, OSError):
        pass
    return entries


def main():
    module = AnsibleModule(
        argument_spec=dict(
            sysctls=dict(type='list', elements='str', default=[]),
            bpffs=dict(type='path', default='/sys/fs/bpf'),
            paths=dict(type='list', elements='path', default=[]),
            node_ip=dict(type='str', aliases=['underlay_ip']),
            node_device=dict(type='str'),
            link_kinds=dict(type='list', elements='str', default=[]),
            files=dict(type='list', elements='path', default=[]),
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
        files=dict((p, _file(p)) for p in module.params['files']),
        os=_os_release(),
        fstab=_fstab(),
        links={},
        routes=[],
    )
    with error_funnel(module, 'node_info'):
        if netlink.HAS_PYROUTE2:
            with netlink.IPRoute() as ipr:
                result['links'] = dict((link.pop('name'), link) for link in netlink.links(ipr))
                result['routes'] = netlink.routes(ipr, proto=netlink.RTPROT_PODNET)
                if module.params['node_ip'] or module.params['node_device']:
                    dev = netlink.underlay(ipr, module.params['node_ip'], module.params['node_device'])
                    result['underlay'] = dict(name=dev['name'], mtu=dev['mtu']) if dev else None
    module.exit_json(**result)


if __name__ == '__main__':
    main()
