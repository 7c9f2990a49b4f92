# -*- coding: utf-8 -*-
# Copyright: podnet.fabric contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Controller-side validation of the whole cluster inventory, before any node is touched."""
from __future__ import annotations

from ansible.errors import AnsibleError
from ansible.module_utils.parsing.convert_bool import boolean
from ansible.plugins.action import ActionBase

from ansible_collections.podnet.fabric.plugins.plugin_utils import inventory
from ansible_collections.podnet.fabric.plugins.plugin_utils import ipam_controller
from ansible_collections.podnet.fabric.plugins.plugin_utils.templated import plain

CLUSTER_KEYS = inventory.CLUSTER_KEYS
NODE_KEYS = inventory.NODE_KEYS


class ActionModule(ActionBase):

    TRANSFERS_FILES = False
    _VALID_ARGS = frozenset(('group',))
    _requires_connection = False

    def run(self, tmp=None, task_vars=None):
        result = super(ActionModule, self).run(tmp, task_vars)
        group = self._task.args.get('group', 'podnet_nodes')
        hosts = sorted(task_vars['groups'].get(group, []))
        hostvars = task_vars['hostvars']
        template_errors = []

        def take(host, keys):
            out = {}
            hv = hostvars[host]
            for key in keys:
                if key not in hv:
                    continue
                try:
                    out[key] = plain(hv[key])
                except AnsibleError as e:
                    template_errors.append('%s: %s: cannot be templated: %s' % (host, key, e.message))
            return out

        nodes = dict((h, take(h, NODE_KEYS + CLUSTER_KEYS)) for h in hosts)
        cluster_vars = dict(nodes[hosts[0]]) if hosts else {}
        for key in NODE_KEYS:
            cluster_vars.pop(key, None)
        if template_errors:
            errors = template_errors
        else:
            try:
                model = inventory.validate(cluster_vars, nodes)
                errors = []
            except inventory.InventoryError as e:
                errors = list(e.errors)
        if not errors:
            # ipam_prune as the ipam role will read it: an extra var, or the nodes' own variables.
            prune = task_vars.get('ipam_prune', hostvars[hosts[0]].get('ipam_prune') if hosts else False)
            refused = ipam_controller.sliced_prune_error(task_vars, boolean(plain(prune) or False, strict=False),
                                                         hosts, group)
            if refused:
                errors = [refused]
        result['changed'] = False
        if errors:
            result['failed'] = True
            result['errors'] = errors
            result['msg'] = 'podnet inventory: %d error%s, no node was changed:\n%s' % (
                len(errors), '' if len(errors) == 1 else 's', '\n'.join(errors))
            return result
        result['model'] = model
        result['ansible_facts'] = {'podnet_model': model}
        result['msg'] = 'podnet inventory: %d nodes, ipam %s, routing %s' % (
            len(model['nodes']), model['ipam']['mode'], model['routing']['mode'])
        return result
