# -*- coding: utf-8 -*-
# Copyright: podnet.fabric contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Run the ipam_endpoint module on the node, then record the node's use on the controller.

The node is the source of truth for which endpoint holds which address (its store). The
controller keeps the cluster's view current right after each change: in crd mode the node
document's status.ipam.used (an external allocator must not take those addresses back), in the
other modes but eni the ledger entry's pools_used (report, multi-pool pre_allocation), and in every
mode the entry's endpoint records (in eni mode the IPs in use eni_allocate sizes the ENIs by): each endpoint's name, addresses, identity and endpoint id,
which the cluster-wide ipcache is built from (identity.py, ipcache.py). The record is written
from the node's whole store, not incrementally, so it also heals a missed update.
"""
from __future__ import annotations

from ansible.module_utils.parsing.convert_bool import boolean
from ansible.plugins.action import ActionBase
from ansible.utils.vars import merge_hash

from ansible_collections.podnet.fabric.plugins.plugin_utils import identity
from ansible_collections.podnet.fabric.plugins.plugin_utils import ledger
from ansible_collections.podnet.fabric.plugins.plugin_utils import ipam_controller as ctl


class ActionModule(ActionBase):

    _supports_check_mode = True

    def run(self, tmp=None, task_vars=None):
        result = super(ActionModule, self).run(tmp, task_vars)
        task_vars = task_vars or {}
        result = merge_hash(result, self._execute_module(task_vars=task_vars))
        self._remove_tmp_path(self._connection._shell.tmpdir)
        if result.get('failed') or result.get('skipped') or self._task.check_mode:
            return result
        if not boolean(self._task.args.get('update_ledger', True), strict=False):
            return result
        node = task_vars.get('inventory_hostname')
        model = ctl.get_model(task_vars)
        if not model:
            result.setdefault('warnings', []).append(
                'podnet_model is not set on localhost (run podnet.fabric.validate first): the '
                'controller did not record %s\'s endpoint use' % node)
            return result
        if node not in model.get('nodes', {}):
            result.update(failed=True, msg='%s: not a node of the validated model (podnet_model holds %s); '
                          'validate the inventory group this node belongs to before recording its use'
                          % (node, ', '.join(sorted(model.get('nodes', {}))[:5]) or 'no nodes'))
            return result
        if (result.get('mode') or model['ipam']['mode']) != model['ipam']['mode']:
            result.update(failed=True, msg='%s: the node\'s lease is for IPAM mode %s but the inventory says %s; '
                          'run playbooks/site.yml first' % (node, result.get('mode'), model['ipam']['mode']))
            return result
        args = self._task.args
        current = (args.get('endpoint_id'), args.get('labels') or {}) if args.get('state', 'present') == 'present' else None
        try:
            rec = ctl.record_use(model, node, result.get('usage'), result.get('node_used'), current=current)
        except (ledger.LedgerError, identity.IdentityError) as e:
            result.update(failed=True, msg='%s: the endpoint change was made on the node, but recording '
                          'the node\'s use failed: %s (the next run of this task records it)' % (node, e))
            return result
        result['ledger'] = rec
        if rec['updated']:
            result['changed'] = True
        return result
