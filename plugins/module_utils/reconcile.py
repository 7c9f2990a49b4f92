# -*- coding: utf-8 -*-
# Copyright: podnet.fabric contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The read / plan / apply loop every podnet node module runs (DESIGN.md section 3).

``changed`` and ``diff`` fall out of what was read before and after, not of hand-kept flags: a
module gives a reader of the realized state, a pure planner and an applier of one action; this
runs them. It is also the one place that

- holds the node lock. Outside check mode the whole pass (read, plan, apply, read again) runs
  under an exclusive flock on the node's lock file (default ``/run/podnet/node.lock``), so two runs
  changing one node never interleave their changes, and a plan is always computed from a read made
  under the lock, after whatever the other run did. The holder (run id, module, PID, start time)
  is written into the file; a run that gives up waiting (``lock_timeout``) names it. Check mode
  only reads and never waits.
- keeps what was done. Each action that completes is recorded; when one raises, the module fails
  with one line naming the module, the object and the error (the errno name for a NetlinkError or
  OSError, never a traceback), ``changed`` true when anything was done before it, ``done`` (the
  completed actions) and ``failed_action`` (the one that raised).
"""
from __future__ import absolute_import, division, print_function

__metaclass__ = type

import contextlib
import datetime
import errno
import os
import sys
import traceback

from ansible_collections.podnet.fabric.plugins.module_utils import statefile

NODE_LOCK = '/run/podnet/node.lock'
LOCK_TIMEOUT = 300.0
# Set by playbooks/site.yml for the node plays: the lock file names the run holding it.
RUN_ID_ENV = 'PODNET_RUN_ID'
# The lock options of every node module (documented by the doc fragment podnet.fabric.node_lock).
LOCK_ARGUMENT_SPEC = dict(
    lock_path=dict(type='path', default=NODE_LOCK),
    lock_timeout=dict(type='float', default=LOCK_TIMEOUT),
)


def argument_spec(**spec):
    """A node module's argument spec: its own options plus the lock options."""
    out = dict(spec)
    out.update(LOCK_ARGUMENT_SPEC)
    return out


def error_text(error):
    """Pure: one line for an exception.

    A NetlinkError (``code``) or an OSError with an errno reads ``<text> (<ERRNO NAME>, errno N)``;
    our own errors (module_utils exceptions) read as their message; anything else is prefixed with
    its type, which then matters.
    """
    code = getattr(error, 'code', None)
    if not isinstance(code, int) and isinstance(error, (OSError, IOError)):
        code = error.errno
    if isinstance(code, int) and code > 0:
        args = getattr(error, 'args', ())
        text = getattr(error, 'strerror', None)
        if not text:
            text = args[1] if len(args) > 1 and isinstance(args[1], str) else os.strerror(code)
        filename = getattr(error, 'filename', None)
        where = ': %s' % filename if filename else ''
        line = '%s%s (%s, errno %d)' % (text, where, errno.errorcode.get(code, 'E?'), code)
    else:
        line = str(error) or type(error).__name__
        if not type(error).__module__.startswith('ansible_collections.podnet.'):
            line = '%s: %s' % (type(error).__name__, line)
    return ' | '.join(part.strip() for part in line.splitlines() if part.strip())


def describe_action(action):
    """Pure: an action as a short line, `<action> key=value ...` (for messages)."""
    fields = ' '.join('%s=%s' % (k, v) for k, v in sorted(action.items())
                      if k != 'action' and v not in (None, '', [], {}))
    return ('%s %s' % (action.get('action'), fields)).strip()


def failure(name, error, actions, done, failed=None, describe=describe_action):
    """Pure: the fail_json keywords for an error in a pass (see the module docstring)."""
    what = '%s: %s' % (describe(failed), error_text(error)) if failed is not None else error_text(error)
    msg = '%s: %s' % (name, what)
    if done:
        msg += '; %d of %d planned actions were done before it (see done)' % (len(done), len(actions))
    return dict(msg=msg, changed=bool(done), done=list(done), failed_action=failed, plan=list(actions))


class Reconciler(object):
    """Run one reconcile pass for an AnsibleModule.

    read() -> realized state (a plain, JSON-able dict)
    plan(realized) -> list of actions (pure; each a JSON-able dict with an 'action' key)
    apply(action) -> None: carry out ONE action (only outside check mode)
    project(realized, actions) -> the state the actions would produce (used for the check-mode diff)
    view(realized) -> what ``state`` and the diff show (default: the realized state itself)
    describe(action) -> the object an action changes, for messages (default: describe_action)
    name: what messages start with: the module, and its object where it has one.
    lock: False for a module that changes no node (lab_cluster builds the lab on the machine that
    hosts it): no node lock is taken.

    After run(), ``before`` and ``after`` hold the realized states (after: projected in check mode).
    """

    def __init__(self, module, read, plan, apply, project=None, view=None, describe=None, name=None, lock=True):
        self.module = module
        self.lock = lock
        self.read = read
        self.plan = plan
        self.apply = apply
        self.project = project
        self.view = view or (lambda realized: realized)
        self.describe = describe or describe_action
        self.name = name or module_name(module)
        self.before = self.after = None

    def run(self, **extra):
        """One pass; the result (exit_json's keywords). Fails the module on any error."""
        if self.module.check_mode or not self.lock:
            return self._pass(extra)
        params = self.module.params
        path = params.get('lock_path') or NODE_LOCK
        timeout = params.get('lock_timeout')
        held = []
        try:
            with statefile.lock_file(path, timeout=LOCK_TIMEOUT if timeout is None else timeout,
                                     holder=holder_line(self.module)):
                held.append(True)
                return self._pass(extra)
        except statefile.StateFileError as e:
            if held:
                raise
            self.module.fail_json(msg='%s: the node lock: %s; nothing was changed' % (self.name, e),
                                  changed=False)

    def _fail(self, error, actions, done, failed=None):
        kw = failure(self.name, error, actions, done, failed, self.describe)
        _add_traceback(kw, error)
        self.module.fail_json(**kw)

    def _call(self, fn, args, actions=(), done=()):
        try:
            return fn(*args)
        except Exception as e:  # NetlinkError is not an OSError: everything becomes one line
            self._fail(e, list(actions), list(done))

    def _pass(self, extra):
        before = self._call(self.read, ())
        actions = self._call(self.plan, (before,))
        done = []
        if actions and not self.module.check_mode:
            for action in actions:
                try:
                    self.apply(action)
                except Exception as e:
                    self._fail(e, actions, done, action)
                done.append(action)
            after = self._call(self.read, (), actions, done)
        elif actions and self.project is not None:
            after = self._call(self.project, (before, actions), actions)
        else:
            after = before
        self.before, self.after = before, after
        result = dict(
            changed=bool(actions),
            plan=actions,
            state=self.view(after),
            diff=dict(before=self.view(before), after=self.view(after)),
        )
        result.update(extra)
        return result


def _add_traceback(kw, error):
    """An error that is not the OS's, netlink's or ours is a bug: -vvv shows where it came from."""
    if not isinstance(error, (OSError, IOError)) and getattr(error, 'code', None) is None \
            and not type(error).__module__.startswith('ansible_collections.podnet.'):
        kw['exception'] = traceback.format_exc()


@contextlib.contextmanager
def error_funnel(module, name):
    """The same one-line failure for what a module does around its reconcile pass (opening netlink,
    reading the underlay device or the host device's MTU): ``<name>: <error>``, nothing changed.

    The reconcile pass inside has already failed the module its own way (fail_json raises
    SystemExit, which this lets through).
    """
    try:
        yield
    except Exception as e:
        kw = {'msg': '%s: %s' % (name, error_text(e)), 'changed': False}
        _add_traceback(kw, e)
        module.fail_json(**kw)


def module_name(module):
    name = getattr(module, '_name', None) or ''
    if not name or name.endswith('.py'):
        name = os.path.splitext(os.path.basename(sys.argv[0] or 'module'))[0]
    return name


def holder_line(module):
    """Who holds the node lock: the run (PODNET_RUN_ID), the module, its PID and start time."""
    return 'run %s: %s (pid %d, since %s)' % (
        os.environ.get(RUN_ID_ENV) or 'without a run id', module_name(module), os.getpid(),
        datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%dT%H:%M:%SZ'))


def list_diff(want, have):
    """(to_add, to_remove) between two iterables, order-stable; items may be unhashable (dicts)."""
    want_l, have_l = list(want), list(have)
    try:
        want_s, have_s = set(want_l), set(have_l)
    except TypeError:              # dicts: compare by equality (the lists are short)
        want_s, have_s = want_l, have_l
    return [w for w in want_l if w not in have_s], [h for h in have_l if h not in want_s]
