# -*- coding: utf-8 -*-
# Copyright: podnet.fabric contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Rebuild the IPAM ledger from the nodes' leases and endpoint use, under the ledger's lock."""
from __future__ import annotations

from ansible.errors import AnsibleActionFail
from ansible.module_utils.parsing.convert_bool import boolean

from ansible_collections.podnet.fabric.plugins.module_utils import statefile
from ansible_collections.podnet.fabric.plugins.module_utils.ipam import cidr as ipam_cidr
from ansible_collections.podnet.fabric.plugins.module_utils.ipam import lease as ipam_lease
from ansible_collections.podnet.fabric.plugins.plugin_utils import ipam_plan
from ansible_collections.podnet.fabric.plugins.plugin_utils import ipam_controller as ctl
from ansible_collections.podnet.fabric.plugins.plugin_utils.templated import plain


def _summary(doc):
    """{node: {'cidrs': [...], 'pools_used': {...}}} of a ledger document (for the result)."""
    out = {}
    for n in sorted((doc or {}).get('nodes') or {}, key=ipam_cidr.natural_key):
        entry = doc['nodes'][n]
        cidrs = ipam_lease.lease_cidrs(ipam_lease.node_lease(doc, n))
        out[n] = {'cidrs': cidrs['ipv4'] + cidrs['ipv6'], 'pools_used': entry.get('pools_used') or {}}
    return out


class ActionModule(ctl.IpamAction):

    _VALID_ARGS = frozenset(('reports', 'force', 'allow_missing', 'model'))

    def _run(self, result, args, task_vars):
        model = ctl.require_model(task_vars, args.get('model'))
        reports = plain(args.get('reports'))
        if not isinstance(reports, dict):
            raise AnsibleActionFail('reports: expected {node: ipam_node_info result}, got %r' % (type(reports).__name__,))
        force = boolean(args.get('force', False), strict=True)
        allow_missing = boolean(args.get('allow_missing', False), strict=True)

        leases, usage, warnings = ipam_plan.rebuild_inputs(model, reports, allow_missing)
        # Stores of nodes whose ipam_node_info predates node_used are left out: their records are kept.
        node_used = dict((n, reports[n]['node_used']) for n in leases
                         if isinstance(reports.get(n), dict) and isinstance(reports[n].get('node_used'), dict))
        ipam_plan.rebuild_from_leases(model, leases, usage, node_used)   # conflicts fail before the ledger is opened
        led = ctl.open_ledger(model)

        def build(current):
            rebuilt = ipam_plan.rebuild_from_leases(model, leases, usage, node_used, seed=current['doc'])
            return ipam_plan.plan_rebuild(current, rebuilt, force)

        check = self._task.check_mode
        if check:
            current = led.inspect()
            new = build(current)
            aside = None
            if new is not None and current['state'] != 'missing':
                aside = statefile.aside_path(led.location, 'torn' if current['state'] == 'torn' else 'replaced')
        else:
            current, new, aside = led.rebuild(build)

        before = current['doc'] or {}
        after = new if new is not None else before
        was = {'state': current['state'], 'error': current['error']}
        if new is None:
            what = 'already holds what the nodes\' leases hold; nothing written'
        else:
            what = '%s from the leases of %d node%s%s%s' % (
                'would be rebuilt' if check else 'rebuilt', len(new['nodes']), '' if len(new['nodes']) == 1 else 's',
                {'missing': ' (it was missing)', 'torn': ' (it was torn)', 'valid': ' (force)'}[current['state']],
                '; the old one %s kept as %s' % ('would be' if check else 'is', aside) if aside else '')
        result.update(
            changed=new is not None,
            was=was,
            kept_aside=aside,
            nodes=_summary(after),
            ledger={'backend': led.backend, 'location': led.location, 'serial': after.get('serial', 0)},
            diff={'before': {'state': current['state'], 'error': current['error'], 'nodes': before.get('nodes') or {}},
                  'after': {'state': 'valid', 'error': None, 'nodes': after.get('nodes') or {}},
                  'before_header': 'ledger %s (%s)' % (led.location, current['state']),
                  'after_header': 'ledger %s (rebuilt)' % led.location},
            msg='ledger %s: %s' % (led.location, what),
        )
        if warnings:
            result['warnings'] = warnings
        return result
