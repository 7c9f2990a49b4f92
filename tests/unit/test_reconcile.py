"""The reconcile loop: what a failing pass reports, one-line errors, and the node lock (a real flock
on a temp file; the module is a stand-in that records exit_json/fail_json)."""
import errno
import os
import threading
import time

import pytest

from ansible_collections.podnet.fabric.plugins.module_utils import reconcile, statefile


class Exit(Exception):
    def __init__(self, kw):
        super(Exit, self).__init__(kw.get('msg'))
        self.kw = kw


class FakeModule(object):
    _name = 'podnet.fabric.fake'

    def __init__(self, tmp_path, check_mode=False, timeout=5.0):
        self.check_mode = check_mode
        self.params = {'lock_path': str(tmp_path / 'run' / 'node.lock'), 'lock_timeout': timeout}

    def fail_json(self, **kw):
        raise Exit(dict(kw, failed=True))


class NetlinkError(Exception):
    """Shaped like pyroute2's: args (code, text), .code; not an OSError."""

    def __init__(self, code, text):
        super(NetlinkError, self).__init__(code, text)
        self.code = code


class World(object):
    """A realized state made of names; actions add and remove names, and the third may fail."""

    def __init__(self, have=('stale1', 'stale2', 'stale3'), fail_on=None):
        self.have = set(have)
        self.fail_on = fail_on
        self.applied = []

    def read(self):
        return {'objects': sorted(self.have)}

    @staticmethod
    def plan(realized):
        return [{'action': 'delete', 'name': n} for n in realized['objects'] if n.startswith('stale')]

    def apply(self, action):
        if action['name'] == self.fail_on:
            raise NetlinkError(errno.ESRCH, 'No such process')
        self.have.discard(action['name'])
        self.applied.append(action['name'])


def reconciler(module, world, **kw):
    return reconcile.Reconciler(module, world.read, world.plan, world.apply,
                                describe=lambda a: 'route %s' % a['name'], name='routing (node1)', **kw)


def test_a_pass_applies_every_action_and_reads_again(tmp_path):
    world = World()
    result = reconciler(FakeModule(tmp_path), world).run(extra=1)
    assert result['changed'] and world.applied == ['stale1', 'stale2', 'stale3']
    assert result['state'] == {'objects': []} and result['diff']['before'] == {'objects': ['stale1', 'stale2', 'stale3']}
    assert result['extra'] == 1
    assert reconciler(FakeModule(tmp_path), world).run()['changed'] is False


def test_a_failure_after_changes_reports_changed_done_the_failing_action_and_one_line(tmp_path):
    world = World(fail_on='stale3')
    with pytest.raises(Exit) as e:
        reconciler(FakeModule(tmp_path), world).run()
    kw = e.value.kw
    assert kw['failed'] and kw['changed'] is True
    assert kw['done'] == [{'action': 'delete', 'name': 'stale1'}, {'action': 'delete', 'name': 'stale2'}]
    assert kw['failed_action'] == {'action': 'delete', 'name': 'stale3'}
    assert kw['msg'] == ('routing (node1): route stale3: No such process (ESRCH, errno 3); '
                         '2 of 3 planned actions were done before it (see done)')
    assert '\n' not in kw['msg'] and 'exception' not in kw   # a netlink error is no bug: no traceback


def test_a_failure_before_any_change_is_not_changed(tmp_path):
    world = World(fail_on='stale1')
    with pytest.raises(Exit) as e:
        reconciler(FakeModule(tmp_path), world).run()
    assert e.value.kw['changed'] is False and e.value.kw['done'] == []
    assert e.value.kw['msg'] == 'routing (node1): route stale1: No such process (ESRCH, errno 3)'


def test_errors_while_reading_and_unexpected_errors_are_one_line_too(tmp_path):
    def read():
        raise OSError(errno.EACCES, 'Permission denied', '/proc/net/x')

    with pytest.raises(Exit) as e:
        reconcile.Reconciler(FakeModule(tmp_path), read, World.plan, None, name='x').run()
    assert e.value.kw['msg'] == 'x: Permission denied: /proc/net/x (EACCES, errno 13)'
    assert e.value.kw['changed'] is False

    def bad_plan(realized):
        raise KeyError('devices')

    with pytest.raises(Exit) as e:
        reconcile.Reconciler(FakeModule(tmp_path), World().read, bad_plan, None, name='x').run()
    assert e.value.kw['msg'] == "x: KeyError: 'devices'" and 'Traceback' in e.value.kw['exception']


def test_error_text():
    assert reconcile.error_text(NetlinkError(17, 'File exists')) == 'File exists (EEXIST, errno 17)'
    assert reconcile.error_text(OSError(errno.ENOENT, 'No such file or directory')) == \
        'No such file or directory (ENOENT, errno 2)'
    assert reconcile.error_text(statefile.StateFileError('/x: not valid JSON\n(line 2)')) == '/x: not valid JSON | (line 2)'
    assert reconcile.error_text(ValueError('bad')) == 'ValueError: bad'


def test_check_mode_reads_without_the_lock_and_projects(tmp_path):
    module = FakeModule(tmp_path, check_mode=True)
    world = World()
    result = reconciler(module, world, project=lambda realized, actions: {'objects': []}).run()
    assert result['changed'] and world.applied == [] and result['state'] == {'objects': []}
    assert not os.path.exists(module.params['lock_path'])
    # ... and does not wait for a lock someone holds
    module2 = FakeModule(tmp_path, check_mode=True, timeout=0.1)
    with statefile.lock_file(module2.params['lock_path'], holder='run other'):
        assert reconciler(module2, World()).run()['changed']


def test_without_the_node_lock_a_pass_applies_and_leaves_no_lock_file(tmp_path):
    # lock=False: a module that changes no node (lab_cluster builds the lab on its host).
    module = FakeModule(tmp_path, timeout=0.1)
    with statefile.lock_file(module.params['lock_path'], holder='run other'):
        world = World()
        result = reconciler(module, world, lock=False).run()
    assert result['changed'] and world.applied == ['stale1', 'stale2', 'stale3']
    other = FakeModule(tmp_path / 'other')
    reconciler(other, World(), lock=False).run()
    assert not os.path.exists(other.params['lock_path'])


def test_a_run_waits_for_the_lock_and_plans_from_what_the_holder_left(tmp_path):
    world = World()
    module = FakeModule(tmp_path)
    results = []
    with statefile.lock_file(module.params['lock_path'], holder='run A: podnet.fabric.routing (pid 1)'):
        t = threading.Thread(target=lambda: results.append(reconciler(module, world).run()))
        t.start()
        time.sleep(0.3)
        assert t.is_alive() and world.applied == []      # waiting, has not even read
        world.have = set(['stale2', 'ok'])               # what the holder changed meanwhile
    t.join(10)
    assert world.applied == ['stale2'] and results[0]['plan'] == [{'action': 'delete', 'name': 'stale2'}]


def test_a_run_that_times_out_names_the_holder_and_changes_nothing(tmp_path):
    module = FakeModule(tmp_path, timeout=0.2)
    world = World()
    with statefile.lock_file(module.params['lock_path'], holder='run 20250101T000000Z-42: podnet.fabric.health_endpoint '
                                                                '(pid 4242, since 2025-01-01T00:00:00Z)'):
        with pytest.raises(Exit) as e:
            reconciler(module, world).run()
    msg = e.value.kw['msg']
    assert msg.startswith('routing (node1): the node lock: %s: timed out after 0.2 s' % module.params['lock_path'])
    assert 'held by run 20250101T000000Z-42: podnet.fabric.health_endpoint (pid 4242' in msg
    assert msg.endswith('nothing was changed') and e.value.kw['changed'] is False and world.applied == []


def test_the_lock_file_names_its_holder_while_held_and_is_emptied_after(tmp_path, monkeypatch):
    monkeypatch.setenv(reconcile.RUN_ID_ENV, 'site-run-7')
    module = FakeModule(tmp_path)
    seen = []

    def read():
        with open(module.params['lock_path']) as f:
            seen.append(f.read())
        return {'objects': []}

    reconcile.Reconciler(module, read, World.plan, None).run()
    assert seen[0].startswith('run site-run-7: podnet.fabric.fake (pid %d, since ' % os.getpid())
    with open(module.params['lock_path']) as f:
        assert f.read() == ''
