# -*- coding: utf-8 -*-
# Copyright: podnet.fabric contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The read / plan / apply loop every podnet module runs (DESIGN.md section 3).

``changed`` and ``diff`` fall out of what was read before and after, not of hand-kept flags: a
module gives a reader of the realized state, a pure planner and an applier; this runs them.
"""
from __future__ import absolute_import, division, print_function

__metaclass__ = type


class Reconciler(object):
    """Run one reconcile pass for an AnsibleModule.

    read() -> realized state (a plain, JSON-able dict)
    plan(realized) -> list of actions (pure; each a JSON-able dict with an 'action' key)
    apply(actions) -> None (only called outside check mode, only with a non-empty plan)
    project(realized, actions) -> the state the actions would produce (used for the check-mode diff)
    """

    def __init__(self, module, read, plan, apply, project=None):
        self.module = module
        self.read = read
        self.plan = plan
        self.apply = apply
        self.project = project

    def run(self, **extra):
        before = self.read()
        actions = self.plan(before)
        if actions and not self.module.check_mode:
            self.apply(actions)
            after = self.read()
        elif actions and self.project is not None:
            after = self.project(before, actions)
        else:
            after = before
        result = dict(
            changed=bool(actions),
            plan=actions,
            state=after,
            diff=dict(before=before, after=after),
        )
        result.update(extra)
        return result


def list_diff(want, have):
    """(to_add, to_remove) between two iterables, order-stable."""
    want_l = list(want)
    have_s = set(have)
    want_s = set(want_l)
    return [w for w in want_l if w not in have_s], [h for h in have if h not in want_s]
