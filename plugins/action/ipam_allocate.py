# -*- coding: utf-8 -*-
# Copyright: podnet.fabric contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Cluster-wide IPAM allocation on the controller, through the durable ledger (DESIGN.md 6)."""
from __future__ import annotations

from ansible.errors import AnsibleActionFail
from ansible.module_utils.parsing.convert_bool import boolean

from ansible_collections.podnet.fabric.plugins.module_utils.ipam import cidr as ipam_cidr
from ansible_collections.podnet.fabric.plugins.module_utils.ipam import lease as ipam_lease
from ansible_collections.podnet.fabric.plugins.plugin_utils import identity
from ansible_collections.podnet.fabric.plugins.plugin_utils import ipam_plan
from ansible_collections.podnet.fabric.plugins.plugin_utils import ipam_controller as ctl


def _headline(changes, limit=4):
    """The plan's changes in one line for the diff header (the full list is in `changes`)."""
    msgs = [c['msg'] for c in changes if c['action'] not in ('note',)]
    if not msgs:
        return 'no change'
    more = ' (and %d more)' % (len(msgs) - limit) if len(msgs) > limit else ''
    return '; '.join(msgs[:limit]) + more


class ActionModule(ctl.IpamAction):

    _VALID_ARGS = frozenset(('nodes', 'prune', 'group', 'model'))

    def _run(self, result, args, task_vars):
        model = ctl.require_model(task_vars, args.get('model'))
        group = args.get('group') or 'podnet_nodes'
        prune = boolean(args.get('prune', False), strict=True)
        members = set((task_vars.get('groups') or {}).get(group) or model['nodes'])
        # validate refuses this first, before any node is touched; this is for other callers.
        refused = ctl.sliced_prune_error(task_vars, prune, members, group)
        if refused:
            raise AnsibleActionFail(refused)
        nodes = args.get('nodes')
        if nodes is None:
            nodes = sorted(members, key=ipam_cidr.natural_key)
        if isinstance(nodes, str) or not isinstance(nodes, (list, tuple)):
            raise AnsibleActionFail('nodes: expected a list of host names, got %r' % (nodes,))
        # Hosts passed in `nodes` that are not cluster nodes (a lab router, localhost) are not ours.
        run = [str(n) for n in nodes if str(n) in members]
        mode = model['ipam']['mode']
        led = ctl.open_ledger(model)

        node_docs = None
        if mode == 'crd':
            listed = set(led.list_node_docs())
            node_docs = dict((n, led.read_node_doc(n)) for n in run if n in listed)

        seen = {}

        def plan(doc):
            new, changes = ipam_plan.plan_cluster(model, doc, run, prune=prune, node_docs=node_docs)
            seen['before'] = doc
            seen['changes'] = changes
            return new

        check = self._task.check_mode
        if check:
            before = led.read()
            after = plan(before)
            changed = after is not before and after != before
        else:
            after, changed = led.update(plan)
            before = seen.get('before', after)
        changes = seen.get('changes', [])

        allocations = dict((n, ctl.lease_of(after, n, mode)) for n in run)
        waiting = sorted((n for n in run if allocations[n] is None and mode != 'eni'), key=ipam_cidr.natural_key)
        old_nodes = before.get('nodes') or {}
        new_nodes = after.get('nodes') or {}
        moved = sorted((n for n in set(old_nodes) | set(new_nodes) if old_nodes.get(n) != new_nodes.get(n)),
                       key=ipam_cidr.natural_key)
        counts = {}
        for c in changes:
            counts[c['action']] = counts.get(c['action'], 0) + 1
        summary = ', '.join('%d %s' % (counts[k], k) for k in sorted(counts) if k not in ('note', 'warning'))
        node_map = ipam_lease.node_map(after)
        result.update(
            changed=bool(changed),
            allocations=allocations,
            nodes=node_map,
            cluster_pod_cidrs=ipam_lease.cluster_pod_cidrs(node_map),
            endpoints=dict((n, identity.endpoint_records(e)) for n, e in (after.get('nodes') or {}).items()),
            changes=changes,
            waiting=waiting,
            ledger={'backend': led.backend, 'location': led.location, 'serial': after.get('serial', 0)},
            diff={'before': dict((n, old_nodes.get(n)) for n in moved),
                  'after': dict((n, new_nodes.get(n)) for n in moved),
                  'before_header': 'ledger %s serial %d' % (led.location, before.get('serial', 0)),
                  'after_header': 'ledger %s serial %d: %s' % (led.location, after.get('serial', 0),
                                                               _headline(changes))},
            msg='ipam %s: %d node%s in this run; %s%s; ledger %s serial %d' % (
                mode, len(run), '' if len(run) == 1 else 's', summary or 'nothing to change',
                ' (check mode: nothing written)' if check and changed else '',
                led.location, after.get('serial', 0)),
        )
        warnings = [c['msg'] for c in changes if c['action'] == 'warning']
        if warnings:
            result['warnings'] = warnings
        return result
