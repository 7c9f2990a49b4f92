# -*- coding: utf-8 -*-
# Copyright: podnet.fabric contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The drift of one node, from the results of a check-mode site run (see plugin_utils/drift.py)."""
from __future__ import annotations

from ansible.errors import AnsibleActionFail
from ansible.plugins.action import ActionBase

from ansible_collections.podnet.fabric.plugins.plugin_utils import drift


class ActionModule(ActionBase):

    TRANSFERS_FILES = False
    _VALID_ARGS = frozenset(('results', 'node'))
    _requires_connection = False

    def run(self, tmp=None, task_vars=None):
        result = super(ActionModule, self).run(tmp, task_vars)
        args = self._task.args
        node = args.get('node') or (task_vars or {}).get('inventory_hostname')
        results = args.get('results')
        if not isinstance(results, dict):
            raise AnsibleActionFail('%s: results: a mapping of area to task result is required, got %s'
                                    % (node, type(results).__name__))
        lines, text = drift.node_report(node, results)
        result.update(changed=False, drifted=bool(lines), lines=lines, text=text, msg=text)
        return result
