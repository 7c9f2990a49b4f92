# -*- coding: utf-8 -*-
# Copyright: podnet.fabric contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""AWS ENI IPAM on the controller (issue 11): read the fleet's EC2 state once, plan every node's ENIs
and addresses (plugin_utils/eni_plan.py), apply the plan (plugin_utils/eni_cloud.py), record each
node's ENIs in the ledger and return them as `eni_nodes` for the eni role's node half."""
from __future__ import annotations

from ansible.errors import AnsibleActionFail

from ansible_collections.podnet.fabric.plugins.module_utils.ipam.cidr import natural_key
from ansible_collections.podnet.fabric.plugins.plugin_utils import eni_cloud
from ansible_collections.podnet.fabric.plugins.plugin_utils import eni_plan
from ansible_collections.podnet.fabric.plugins.plugin_utils import identity
from ansible_collections.podnet.fabric.plugins.plugin_utils import ipam_controller as ctl
from ansible_collections.podnet.fabric.plugins.plugin_utils import ledger

SUBNET_WARN_FRACTION = 0.1   # a subnet with less than this share of its addresses free is reported


def used_ips(doc, node):
    """The node's pod IPs in use: the addresses of its endpoint records in the ledger."""
    out = set()
    for rec in identity.endpoint_records(((doc.get('nodes') or {}).get(node))).values():
        out.update(rec['ips'])
    return sorted(out, key=natural_key)


def eni_nodes(view, nodes, fii, cluster):
    return dict((n, {'instance_id': nodes[n]['instance_id'], 'instance_type': nodes[n]['instance_type'],
                     'enis': eni_plan.node_enis(view, nodes[n]['instance_id'], fii, cluster)}) for n in nodes)


def _summary(record):
    """A node's ENIs as the diff shows them: '<id> (device N, <subnet>)': address count."""
    return dict(('%s (device %d, %s)' % (e['id'], e['device_index'], e['subnet_id']),
                 len(e['ips']) + eni_plan.PREFIX_SIZE * len(e['prefixes'])) for e in record['enis'])


def _predicted(before, actions):
    """The diff's after-side in check mode: the before-side with the plan's changes applied."""
    after = dict((n, dict(s)) for n, s in before.items())
    for act in actions:
        node = act.get('node')
        if node not in after:
            continue
        count = act.get('ip_count') or eni_plan.PREFIX_SIZE * (act.get('prefix_count') or 0)
        if act['action'] == 'create':
            after[node]['(new ENI) (device %d, %s)' % (act['device_index'], act['subnet_id'])] = count
        elif act['action'] == 'attach':
            after[node]['%s (device %d, attached)' % (act['eni_id'], act['device_index'])] = None
        elif act['action'] in ('assign', 'unassign'):
            for key in after[node]:
                if key.startswith(act['eni_id'] + ' '):
                    after[node][key] += count if act['action'] == 'assign' else -len(act['ips'])
    return after


def subnet_report(view, warn_fraction=SUBNET_WARN_FRACTION):
    """{subnet: {cidr, vpc_id, az, size, available}} of the subnets holding pod ENIs, and warnings."""
    held = set(e['subnet_id'] for e in view['enis'].values() if e.get('instance_id'))
    out, warnings = {}, []
    for sid in sorted(held, key=natural_key):
        sn = view['subnets'].get(sid)
        if not sn:
            continue
        size = max(2 ** (32 - int(sn['cidr'].split('/')[1])) - 5, 0) if sn.get('cidr') else 0   # AWS reserves 5
        out[sid] = {'cidr': sn.get('cidr'), 'vpc_id': sn.get('vpc_id'), 'az': sn.get('az'), 'size': size,
                    'available': sn['available']}
        if size and sn['available'] < size * warn_fraction:
            warnings.append('subnet %s (%s) is running out of addresses: %d of %d free' % (
                sid, sn.get('cidr'), sn['available'], size))
    return out, warnings


class ActionModule(ctl.IpamAction):

    _VALID_ARGS = frozenset(('nodes', 'group', 'model', 'workers'))

    def _run(self, result, args, task_vars):
        model = ctl.require_model(task_vars, args.get('model'))
        if model['ipam']['mode'] != 'eni' or not model.get('eni'):
            raise AnsibleActionFail("all: podnet_ipam.mode: eni_allocate needs 'eni' (it is %r)" % model['ipam']['mode'])
        cfg = eni_plan.config(model['eni'])
        cluster = model['cluster']['name']
        group = args.get('group') or 'podnet_nodes'
        members = set((task_vars.get('groups') or {}).get(group) or model['nodes'])
        names = args.get('nodes')
        if names is None:
            names = sorted(members, key=natural_key)
        if isinstance(names, str) or not isinstance(names, (list, tuple)):
            raise AnsibleActionFail('nodes: expected a list of host names, got %r' % (names,))
        run = [str(n) for n in names if str(n) in members and str(n) in model['nodes']]
        try:
            workers = int(args.get('workers', 4))
        except (TypeError, ValueError):
            raise AnsibleActionFail('workers: %r is not an integer' % (args.get('workers'),))
        led = ctl.open_ledger(model)
        doc = led.read()
        nodes = {}
        for n in run:
            inst = model['nodes'][n].get('instance') or {}
            if not inst.get('id') or not inst.get('type'):
                raise AnsibleActionFail('%s: podnet_instance: required in eni mode (id and type)' % n)
            nodes[n] = {'instance_id': inst['id'], 'instance_type': inst['type'], 'used_ips': used_ips(doc, n),
                        'eni': model['nodes'][n].get('eni')}
        check = self._task.check_mode
        ec2 = eni_cloud.Ec2(cfg['region'], cfg.get('endpoint_url'))
        try:
            out = eni_cloud.converge(ec2, cluster, cfg, nodes, model_nodes=list(model['nodes']), check=check,
                                     workers=workers, run_key='%s@%s' % (led.location, doc.get('serial', 0)))
        except eni_plan.EniPlanError as e:
            result.update(failed=True, changed=False, msg=str(e), errors=e.errors, api_calls=ec2.api_calls())
            return result
        except eni_cloud.EniCloudError as e:
            result.update(failed=True, changed=False, msg='eni: %s' % e, aws_error_code=e.code, api_calls=ec2.api_calls(),
                          errors=[str(x) for x in getattr(e, 'errors', [e])])
            return result
        fii = cfg['first_interface_index']
        before = eni_nodes(out['before'], nodes, fii, cluster)
        after = eni_nodes(out['after'], nodes, fii, cluster)
        actions = out['plan']['actions'] if check else out['done']
        subnets, subnet_warnings = subnet_report(out['after'])
        recorded = False
        if not check:
            def record(d):
                for n in run:
                    entry = d['nodes'].get(n)
                    if entry is None:
                        entry = d['nodes'][n] = {'ip': model['nodes'][n]['node_ip'], 'cidrs': {'ipv4': [], 'ipv6': []},
                                                 'pools': {}, 'allocated_at': d.get('serial', 0) + 1}
                    entry['eni'] = dict(after[n], limit=(out['plan']['nodes'].get(n) or {}).get('limit'))
                d['eni_subnets'] = dict((d.get('eni_subnets') or {}), **subnets)
                return d
            try:
                _doc, recorded = led.update(record)
            except ledger.LedgerError as e:
                raise AnsibleActionFail('eni: the EC2 changes are made but the ledger was not updated: %s' % e)
        diff_before = dict((n, _summary(before[n])) for n in run)
        diff_after = _predicted(diff_before, actions) if check else dict((n, _summary(after[n])) for n in run)
        moved = sorted((n for n in run if diff_before[n] != diff_after[n]), key=natural_key)
        gc = [a for a in actions if a['action'].startswith('gc_')]
        changes = [eni_plan.describe_action(a) for a in actions]
        counts = {}
        for a in actions:
            counts[a['action']] = counts.get(a['action'], 0) + 1
        calls = ec2.api_calls()
        result.update(
            changed=bool(actions),
            eni_nodes=after if not check else before,
            plan=out['plan']['actions'],
            changes=changes,
            nodes=out['plan']['nodes'],
            subnets=subnets,
            gc=gc,
            api_calls=calls,
            ledger={'backend': led.backend, 'location': led.location, 'recorded': bool(recorded)},
            diff={'before': dict((n, diff_before[n]) for n in moved), 'after': dict((n, diff_after[n]) for n in moved),
                  'before_header': 'EC2 ENIs of %d nodes' % len(run),
                  'after_header': '; '.join(changes[:4]) + (' (and %d more)' % (len(changes) - 4) if len(changes) > 4 else '')
                  if changes else 'no change'},
            msg='eni: %d node%s; %s; %d describe and %d write calls%s' % (
                len(run), '' if len(run) == 1 else 's',
                ', '.join('%d %s' % (counts[k], k) for k in sorted(counts)) or 'nothing to change',
                calls['describe_calls'], calls['write_calls'],
                ' (check mode: would have made these changes)' if check and actions else ''),
        )
        warnings = out['warnings'] + subnet_warnings + ['gc: %s was attached again since the read: kept' % a['eni_id']
                                                        for a in out['gc_skipped']]
        if warnings:
            result['warnings'] = warnings
        return result
