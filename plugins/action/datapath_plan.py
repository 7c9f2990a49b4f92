# -*- coding: utf-8 -*-
# Copyright: podnet.fabric contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The eBPF datapath's controller half: identities through the ledger, then per node the endpoint,
ipcache and policy entries the node's maps get (plugin_utils/datapath.py)."""
from __future__ import annotations

import copy

from ansible.errors import AnsibleActionFail
from ansible.module_utils.parsing.convert_bool import boolean

from ansible_collections.podnet.fabric.plugins.module_utils.ipam.cidr import natural_key
from ansible_collections.podnet.fabric.plugins.plugin_utils import datapath
from ansible_collections.podnet.fabric.plugins.plugin_utils import identity
from ansible_collections.podnet.fabric.plugins.plugin_utils import ipam_controller as ctl


class ActionModule(ctl.IpamAction):

    _VALID_ARGS = frozenset(('nodes', 'prune', 'group', 'model', 'health_endpoint_id', 'walk_ports'))

    def _run(self, result, args, task_vars):
        model = ctl.require_model(task_vars, args.get('model'))
        group = args.get('group') or 'podnet_nodes'
        prune = boolean(args.get('prune', False), strict=True)
        health = args.get('health_endpoint_id') or identity.HEALTH_ENDPOINT
        members = set((task_vars.get('groups') or {}).get(group) or model['nodes'])
        sliced = ctl.slice_of(task_vars) if prune else None
        if sliced:
            raise AnsibleActionFail('all: prune: refused, this run is %s: the endpoints of the other slices that '
                                    'have no address yet would look unused and lose their identities. Prune from a '
                                    'run over the whole inventory. Nothing was changed' % sliced)
        walk_ports = args.get('walk_ports')
        if walk_ports is not None:
            try:
                walk_ports = sorted(set(int(p) for p in walk_ports))
            except (TypeError, ValueError):
                walk_ports = None
            if walk_ports is None or not all(0 < p < 65536 for p in walk_ports):
                raise AnsibleActionFail('walk_ports: expected a list of TCP ports, got %r' % (args.get('walk_ports'),))
        nodes = args.get('nodes')
        if nodes is None:
            nodes = task_vars.get('ansible_play_hosts_all') or []
        if isinstance(nodes, str) or not isinstance(nodes, (list, tuple)):
            raise AnsibleActionFail('nodes: expected a list of host names, got %r' % (nodes,))
        run = sorted(set(str(n) for n in nodes if str(n) in members and str(n) in model['nodes']), key=natural_key)
        settings = model.get('datapath') or {}
        if not settings.get('enabled', True):
            result.update(changed=False, enabled=False, datapath={}, identities={}, changes=[],
                          msg='datapath: off (podnet_datapath.enabled is false); nothing planned')
            return result
        led = ctl.open_ledger(model)
        seen = {}

        def plan(doc):
            seen['before'] = copy.deepcopy(doc)
            seen['changes'] = datapath.update(model, doc, prune=prune, health=health)
            return doc

        if self._task.check_mode:
            after = plan(copy.deepcopy(led.read()))
            changed = after != seen['before']
        else:
            after, changed = led.update(plan)
        per_node, warnings = datapath.outputs(model, after, run)
        before = seen['before']
        changes = seen['changes']
        old, new = datapath.identities_view(model, before), datapath.identities_view(model, after)
        touched = sorted(set(i for i in set(old) | set(new) if old.get(i) != new.get(i)))
        counts = dict((n, dict((k, len(v)) for k, v in per_node[n].items())) for n in per_node)
        summary = {}
        for c in changes:
            summary[c['action']] = summary.get(c['action'], 0) + 1
        serial = after.get('serial', 0)
        result.update(
            changed=bool(changed),
            enabled=True,
            host_routing=settings.get('host_routing', 'bpf'),
            datapath=per_node,
            counts=counts,
            identities=dict((str(i), v) for i, v in new.items()),
            changes=changes,
            ledger={'backend': led.backend, 'location': led.location, 'serial': serial},
            diff={'before': dict((str(i), old.get(i)) for i in touched),
                  'after': dict((str(i), new.get(i)) for i in touched),
                  'before_header': 'ledger %s identities, serial %d' % (led.location, before.get('serial', 0)),
                  'after_header': 'ledger %s identities, serial %d' % (led.location, serial)},
            msg='datapath: %d node%s, %d identities; %s%s; ledger %s serial %d' % (
                len(run), '' if len(run) == 1 else 's', len(new),
                ', '.join('%d %s' % (summary[k], k) for k in sorted(summary)) or 'no identity change',
                ' (check mode: nothing written)' if self._task.check_mode and changed else '',
                led.location, serial),
        )
        if walk_ports is not None:
            result['walk'] = datapath.walk(model, after, run, walk_ports, health=health)
        if warnings:
            result['warnings'] = warnings
        return result
