# -*- coding: utf-8 -*-
# Copyright: podnet.fabric contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Hand the collection's bpf/ sources to the bpf_program module on the node.

The module compiles on the node, but ``bpf/`` at the collection root stays the one copy of the C
sources: this reads it on the controller (a few tens of kB) and passes it as the module's
``sources``, so nothing has to be copied to the node beforehand and an installed collection works
the same as a checkout.
"""
from __future__ import annotations

import os

from ansible.errors import AnsibleActionFail
from ansible.plugins.action import ActionBase

from ansible_collections.podnet.fabric.plugins.module_utils import bpf

BPF_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), 'bpf')


class ActionModule(ActionBase):

    _supports_check_mode = True

    def run(self, tmp=None, task_vars=None):
        result = super(ActionModule, self).run(tmp, task_vars)
        args = dict(self._task.args)
        if args.get('state', 'present') == 'present' and not args.get('sources'):
            try:
                args['sources'] = bpf.read_sources(BPF_DIR)
            except OSError as e:
                raise AnsibleActionFail('bpf_program: cannot read the collection\'s C sources in %s: %s' % (BPF_DIR, e))
        result.update(self._execute_module(module_args=args, task_vars=task_vars or {}))
        self._remove_tmp_path(self._connection._shell.tmpdir)
        return result
