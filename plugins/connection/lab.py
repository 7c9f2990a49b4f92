# -*- coding: utf-8 -*-
# Copyright: podnet.fabric contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import annotations

DOCUMENTATION = r'''
name: lab
short_description: Run tasks inside a podnet lab node
version_added: 0.1.0
description:
  - Runs ordinary Ansible tasks (command, copy, template, fetch, modules) inside a member of a lab
    built by M(podnet.fabric.lab_cluster), by entering its network, mount and UTS namespaces with
    C(nsenter). Files are transferred through the member's own mount namespace, so a file written to
    C(/etc) lands in the member's C(/etc) overlay, not on the host.
  - The controller must be the machine that hosts the lab, and Ansible must run as root.
author:
  - podnet.fabric maintainers (@podnet)
options:
  remote_addr:
    description: The lab member to enter (its name in the lab).
    type: str
    default: inventory_hostname
    vars:
      - name: inventory_hostname
      - name: podnet_lab_member_name
  lab_prefix:
    description: The prefix of the lab the member belongs to.
    type: str
    required: true
    vars:
      - name: podnet_lab_prefix
    env:
      - name: PODNET_LAB_PREFIX
  shell_executable:
    description: The shell that runs commands inside the member.
    type: str
    default: /bin/sh
    vars:
      - name: ansible_lab_shell_executable
extends_documentation_fragment:
  - connection_pipelining
notes:
  - O(remote_addr) takes C(podnet_lab_member_name) before C(inventory_hostname) when both are set.
'''

import os
import shlex
import subprocess

from ansible.errors import AnsibleConnectionFailure, AnsibleError, AnsibleFileNotFound
from ansible.module_utils.common.text.converters import to_bytes, to_text
from ansible.plugins.connection import ConnectionBase
from ansible.utils.display import Display

from ansible_collections.podnet.fabric.plugins.module_utils import lab

display = Display()

BUFSIZE = 65536


class Connection(ConnectionBase):
    """Enter a lab member's namespaces with nsenter."""

    transport = 'podnet.fabric.lab'
    has_pipelining = True
    default_user = 'root'

    def _member(self):
        return self.get_option('lab_prefix'), self.get_option('remote_addr')

    def _argv(self, argv):
        prefix, name = self._member()
        return lab.nsenter_argv(prefix, name, argv)

    def _connect(self):
        if not self._connected:
            prefix, name = self._member()
            files = lab.ns_files(prefix, name)
            for kind, path in sorted(files.items()):
                if not os.path.exists(path):
                    raise AnsibleConnectionFailure(
                        'lab member %s of lab %s is not up: %s namespace %s is missing '
                        '(run playbooks/lab_up.yml)' % (name, prefix, kind, path))
            if os.geteuid() != 0:
                raise AnsibleConnectionFailure('the podnet.fabric.lab connection needs root on the controller')
            display.vvv('ENTER lab %s member %s' % (prefix, name), host=name)
            self._connected = True
        return self

    def exec_command(self, cmd, in_data=None, sudoable=False):
        super(Connection, self).exec_command(cmd, in_data=in_data, sudoable=sudoable)
        argv = self._argv([self.get_option('shell_executable'), '-c', to_text(cmd)])
        display.vvv('EXEC %s' % ' '.join(shlex.quote(a) for a in argv), host=self._member()[1])
        p = subprocess.Popen(
            [to_bytes(a) for a in argv],
            stdin=subprocess.PIPE if in_data is not None else subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )
        stdout, stderr = p.communicate(in_data)
        return p.returncode, stdout, stderr

    def put_file(self, in_path, out_path):
        super(Connection, self).put_file(in_path, out_path)
        display.vvv('PUT %s TO %s' % (in_path, out_path), host=self._member()[1])
        if not os.path.exists(to_bytes(in_path)):
            raise AnsibleFileNotFound('file or module does not exist: %s' % in_path)
        argv = self._argv(['/bin/sh', '-c', 'cat > %s' % shlex.quote(out_path)])
        with open(to_bytes(in_path), 'rb') as src:
            p = subprocess.Popen([to_bytes(a) for a in argv], stdin=src,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            stdout, stderr = p.communicate()
        if p.returncode != 0:
            raise AnsibleError('failed to transfer %s to %s: %s' % (in_path, out_path, to_text(stderr)))

    def fetch_file(self, in_path, out_path):
        super(Connection, self).fetch_file(in_path, out_path)
        display.vvv('FETCH %s TO %s' % (in_path, out_path), host=self._member()[1])
        argv = self._argv(['cat', '--', in_path])
        with open(to_bytes(out_path), 'wb') as dst:
            p = subprocess.Popen([to_bytes(a) for a in argv], stdout=dst, stderr=subprocess.PIPE)
            stderr = p.communicate()[1]
        if p.returncode != 0:
            raise AnsibleError('failed to fetch %s to %s: %s' % (in_path, out_path, to_text(stderr)))

    def close(self):
        self._connected = False
