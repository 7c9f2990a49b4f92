# -*- coding: utf-8 -*-
# Copyright: podnet.fabric contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""What drifted on a node, from the results of a check-mode site run (pure; the drift job's report).

A podnet node module's result carries its plan: one line per action, with what the inventory wants
and what the kernel has now. Any other task (a file, a mount, a sysctl) that would change is one line
naming it. Results are taken by area, e.g. {'routing': <result of the routing module>, ...}.
"""
from __future__ import annotations

from ansible_collections.podnet.fabric.plugins.module_utils.reconcile import describe_action

# How an action's name reads as (expected, found).
_MAKES = ('create', 'add', 'start', 'write', 'allocate', 'insert', 'up')
_REMOVES = ('delete', 'del', 'remove', 'stop', 'release', 'flush', 'kill')


def expected_found(action_name):
    words = set(str(action_name).split('_'))
    if words & set(_REMOVES):
        return 'absent', 'present'
    if words & set(_MAKES):
        return 'present', 'missing'
    return 'as configured', 'different'


def _item_label(item):
    label = item.get('_ansible_item_label', item.get('item'))
    if isinstance(label, dict):
        label = label.get('key', label)
    return label


def result_lines(area, result):
    """[{area, object, expected, found}] for one task result (empty when it would change nothing)."""
    if not isinstance(result, dict) or result.get('skipped') or not result.get('changed'):
        return []
    if isinstance(result.get('results'), list):       # a loop: each item that would change
        return [line for item in result['results'] for line in result_lines(area, item)]
    plan = result.get('plan')
    if isinstance(plan, list) and plan and all(isinstance(a, dict) and 'action' in a for a in plan):
        out = []
        for action in plan:
            expected, found = expected_found(action['action'])
            out.append({'area': area, 'object': describe_action(action), 'expected': expected, 'found': found})
        return out
    target = result.get('dest') or result.get('path') or result.get('name') or _item_label(result) or area
    return [{'area': area, 'object': '%s' % (target,), 'expected': 'as configured', 'found': 'different'}]


def node_report(node, results):
    """The drift of one node: (lines, text). results: {area: task result}, in the order to report."""
    lines = []
    for area, result in results.items():
        lines += result_lines(area, result)
    if not lines:
        return lines, '%s: no drift' % node
    text = ['%s: %d object(s) drifted' % (node, len(lines))]
    text += ['  %s: %s (expected %s, found %s)' % (l['area'], l['object'], l['expected'], l['found']) for l in lines]
    return lines, '\n'.join(text)
