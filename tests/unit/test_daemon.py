"""lab_daemon: the pure plan for every state, and the module driving a real (unprivileged) daemon.

The daemon in the module tests is a small Python script in a temp dir: it logs signals to a file,
and one variant ignores SIGTERM so the SIGKILL escalation is exercised. Every process a test starts
is stopped by its PID at the end.
"""
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from ansible_collections.podnet.fabric.plugins.module_utils import daemon

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
COLLECTIONS = os.path.join(ROOT, 'build', 'collections')

ARGV = ['/usr/sbin/bird', '-f', '-c', '/etc/podnet/bgp/bird.conf']


def realized(pid=None, argv=None, pidfile=None, adopted=False):
    return {'pidfile': pid is not None if pidfile is None else pidfile, 'pid': pid, 'argv': argv,
            'adopted': adopted}


def desired(state='started', argv=None, reload_argv=None):
    return {'name': 'bird', 'argv': list(argv or ARGV), 'state': state, 'reload_argv': reload_argv}


# ----------------------------------------------------------------------------------------------
# plan (pure)

def test_plan_started():
    start = {'action': 'start', 'argv': ARGV}
    assert daemon.plan(desired(), realized()) == [start]
    # Running as wanted: nothing to do. Same program under another path counts as the same.
    assert daemon.plan(desired(), realized(42, list(ARGV))) == []
    # A stale pidfile (dead PID) is not running: clean it and start.
    assert daemon.plan(desired(), realized(None, None, pidfile=True)) == [{'action': 'remove_pidfile'}, start]
    # The pidfile's PID now runs another program: never signal it, start ours.
    assert daemon.plan(desired(), realized(42, ['/usr/bin/sleep', '100'])) == [{'action': 'remove_pidfile'}, start]
    # The command line changed: only a restart applies it.
    assert daemon.plan(desired(), realized(42, ['bird', '-f', '-c', '/old.conf'])) == [
        {'action': 'stop', 'pid': 42}, start]
    # Found by its exact argv although the pidfile was lost: adopt, don't start a second copy.
    assert daemon.plan(desired(), realized(42, list(ARGV), pidfile=False, adopted=True)) == [
        {'action': 'write_pidfile', 'pid': 42}]


def test_plan_stopped():
    assert daemon.plan(desired('stopped'), realized()) == []
    assert daemon.plan(desired('stopped'), realized(42, list(ARGV))) == [
        {'action': 'stop', 'pid': 42}, {'action': 'remove_pidfile'}]
    assert daemon.plan(desired('stopped'), realized(None, None, pidfile=True)) == [{'action': 'remove_pidfile'}]
    assert daemon.plan(desired('stopped'), realized(42, ['sleep', '1'])) == [{'action': 'remove_pidfile'}]
    assert daemon.plan(desired('stopped'), realized(42, list(ARGV), pidfile=False, adopted=True)) == [
        {'action': 'stop', 'pid': 42}, {'action': 'remove_pidfile'}]


def test_plan_restarted_and_reloaded():
    start = {'action': 'start', 'argv': ARGV}
    assert daemon.plan(desired('restarted'), realized(42, list(ARGV))) == [{'action': 'stop', 'pid': 42}, start]
    assert daemon.plan(desired('restarted'), realized()) == [start]
    reload_argv = ['birdc', '-s', '/run/podnet/bgp/bird.ctl', 'configure']
    assert daemon.plan(desired('reloaded', reload_argv=reload_argv), realized(42, list(ARGV))) == [
        {'action': 'reload', 'argv': reload_argv}]
    assert daemon.plan(desired('reloaded'), realized(42, list(ARGV))) == [
        {'action': 'signal', 'pid': 42, 'signal': 'SIGHUP'}]
    # Reloading a daemon that is not running starts it (as systemd's reload-or-restart would).
    assert daemon.plan(desired('reloaded', reload_argv=reload_argv), realized()) == [start]
    assert daemon.plan(desired('reloaded'), realized(42, ['bird', '-c', 'x'])) == [
        {'action': 'stop', 'pid': 42}, start]


def test_project_and_same_program():
    r = realized(42, list(ARGV))
    assert daemon.project(desired('stopped'), r, [{'action': 'stop', 'pid': 42}]) == {
        'running': False, 'pid': None, 'argv': None}
    assert daemon.project(desired('restarted'), r, daemon.plan(desired('restarted'), r)) == {
        'running': True, 'pid': None, 'argv': ARGV}
    assert daemon.project(desired(), r, []) == {'running': True, 'pid': 42, 'argv': ARGV}
    assert daemon.same_program(['bird', '-f'], ['/usr/sbin/bird'])
    assert not daemon.same_program(['birdc'], ['bird'])
    assert not daemon.same_program(None, ['bird'])


# ----------------------------------------------------------------------------------------------
# the module with a real process

DAEMON = r'''
import signal, sys, time
log = sys.argv[1]
def note(what):
    with open(log, 'a') as f:
        f.write(what + '\n')
def on_signal(num, frame):
    note(signal.Signals(num).name)
    if num == signal.SIGTERM and 'stubborn' not in sys.argv:
        sys.exit(0)
signal.signal(signal.SIGHUP, on_signal)
signal.signal(signal.SIGTERM, on_signal)
note('up')
while True:
    time.sleep(0.05)
'''


@pytest.fixture
def lab(tmp_path):
    script = tmp_path / 'fake_daemon.py'
    script.write_text(DAEMON)
    started = []
    counter = [0]

    def run(args, check=False):
        counter[0] += 1
        argfile = tmp_path / ('args-%d.json' % counter[0])
        margs = dict(args, _ansible_check_mode=check, _ansible_diff=True)
        margs.setdefault('lock_path', str(tmp_path / 'node.lock'))   # not the host's /run/podnet
        argfile.write_text(json.dumps({'ANSIBLE_MODULE_ARGS': margs}))
        p = subprocess.run([sys.executable, os.path.join(ROOT, 'plugins', 'modules', 'lab_daemon.py'), str(argfile)],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True,
                           env=dict(os.environ, PYTHONPATH=COLLECTIONS), check=False, timeout=60)
        try:
            out = json.loads(p.stdout)
        except ValueError:
            raise AssertionError('module output is not JSON: %s\n%s' % (p.stdout, p.stderr))
        if out.get('pid'):
            started.append(out['pid'])
        return out

    def params(*extra, **kw):
        base = {'name': 'fake', 'argv': [sys.executable, str(script), str(tmp_path / 'events')] + list(extra),
                'pidfile': str(tmp_path / 'run' / 'fake.pid'), 'log_path': str(tmp_path / 'fake.log')}
        base.update(kw)
        return base

    yield {'run': run, 'params': params, 'tmp': tmp_path, 'events': tmp_path / 'events'}
    for pid in started:
        if daemon.proc_argv(pid) and str(script) in daemon.proc_argv(pid):
            os.kill(pid, signal.SIGKILL)


def events(path):
    deadline = time.time() + 5
    while time.time() < deadline and not path.exists():
        time.sleep(0.05)
    return path.read_text().split() if path.exists() else []


def alive(pid):
    return daemon.proc_argv(pid) is not None


def test_module_start_is_idempotent_and_check_mode_starts_nothing(lab):
    run, params = lab['run'], lab['params']
    r = run(params(), check=True)
    assert r['changed'] and r['plan'][0]['action'] == 'start' and r['pid'] is None
    assert r['diff']['before']['running'] is False and r['diff']['after']['running'] is True
    assert not os.path.exists(params()['pidfile']) and not lab['events'].exists()

    r = run(params())
    assert r['changed'] and r['pid'] and alive(r['pid']), r
    pid = r['pid']
    with open(params()['pidfile']) as f:
        assert int(f.read()) == pid
    assert daemon.proc_argv(pid) == params()['argv']
    assert events(lab['events']) == ['up']

    r = run(params())
    assert not r['changed'] and r['pid'] == pid and r['plan'] == []

    # Check mode on a running daemon: the stop is planned, nothing is signalled.
    r = run(params(state='stopped'), check=True)
    assert r['changed'] and r['diff']['after'] == {'running': False, 'pid': None, 'argv': None}
    assert alive(pid) and events(lab['events']) == ['up']

    r = run(params(state='stopped'))
    assert r['changed'] and r['pid'] is None and not alive(pid)
    assert r['notes'] == ['stopped pid %d (term)' % pid]
    assert events(lab['events']) == ['up', 'SIGTERM']
    assert not os.path.exists(params()['pidfile'])
    assert not run(params(state='stopped'))['changed']


def test_module_reload_restart_and_changed_argv(lab):
    run, params = lab['run'], lab['params']
    pid = run(params())['pid']
    r = run(params(state='reloaded'))
    assert r['changed'] and r['pid'] == pid and r['plan'] == [{'action': 'signal', 'pid': pid, 'signal': 'SIGHUP'}]
    marker = lab['tmp'] / 'reloaded'
    r = run(params(state='reloaded', reload_argv=['touch', str(marker)]))
    assert r['changed'] and r['pid'] == pid and marker.exists()
    r = run(params(state='reloaded', reload_argv=['false']))
    assert r.get('failed') and 'reload command false failed' in r['msg']

    r = run(params(state='restarted'))
    assert r['changed'] and r['pid'] != pid and alive(r['pid']) and not alive(pid)
    pid = r['pid']
    # A changed command line restarts the daemon.
    r = run(params('extra'))
    assert r['changed'] and r['pid'] != pid and not alive(pid)
    assert daemon.proc_argv(r['pid'])[-1] == 'extra'
    run(params('extra', state='stopped'))


def test_module_stale_pidfile_and_pid_reused_by_another_program(lab, tmp_path):
    run, params = lab['run'], lab['params']
    pidfile = params()['pidfile']
    os.makedirs(os.path.dirname(pidfile))
    # A dead PID.
    dead = subprocess.Popen(['true'])
    dead.wait()
    with open(pidfile, 'w') as f:
        f.write('%d\n' % dead.pid)
    r = run(params(state='stopped'))
    assert r['changed'] and r['plan'] == [{'action': 'remove_pidfile'}] and not os.path.exists(pidfile)
    # A live PID that runs something else: it is not our daemon and must survive.
    other = subprocess.Popen(['sleep', '30'])
    try:
        with open(pidfile, 'w') as f:
            f.write('%d\n' % other.pid)
        r = run(params(state='stopped'))
        assert r['plan'] == [{'action': 'remove_pidfile'}]
        with open(pidfile, 'w') as f:
            f.write('%d\n' % other.pid)
        r = run(params())
        assert r['changed'] and r['pid'] != other.pid and alive(other.pid)
        assert [a['action'] for a in r['plan']] == ['remove_pidfile', 'start']
    finally:
        other.kill()
        other.wait()
    # The pidfile is lost but the daemon still runs: adopt it rather than start a second copy.
    pid = r['pid']
    os.unlink(pidfile)
    r = run(params())
    assert r['changed'] and r['plan'] == [{'action': 'write_pidfile', 'pid': pid}] and r['pid'] == pid
    assert not run(params())['changed']
    run(params(state='stopped'))
    assert not alive(pid)


def test_module_kills_a_daemon_that_ignores_sigterm(lab):
    run, params = lab['run'], lab['params']
    pid = run(params('stubborn'))['pid']
    assert events(lab['events']) == ['up']
    began = time.time()
    r = run(params('stubborn', state='stopped', stop_timeout=0.5))
    assert r['changed'] and not alive(pid) and r['notes'] == ['stopped pid %d (kill)' % pid]
    assert 0.5 <= time.time() - began < 60   # waited stop_timeout, then killed (not hung); no speed bound
    assert events(lab['events']) == ['up', 'SIGTERM']


def test_module_reports_a_daemon_that_dies_at_start(lab, tmp_path):
    run, params = lab['run'], lab['params']
    # /bin/sh, not Python: it must be dead within the module's settle time (0.3 s) even on a busy machine.
    r = run(params(argv=['/bin/sh', '-c', 'echo "bad config line 3"; exit 3']))
    assert r.get('failed') and 'exited with status 3' in r['msg'] and 'bad config line 3' in r['msg']
    assert not os.path.exists(params()['pidfile'])
    # wait_for: the daemon is up only once its socket/file appears.
    ready = tmp_path / 'ready'
    r = run(params(wait_for=str(ready), start_timeout=0.5))
    assert r.get('failed') and 'did not appear' in r['msg']
    pid = int(r['msg'].split('(pid ')[1].split(')')[0])
    assert not alive(pid) and not os.path.exists(params()['pidfile'])
