# -*- coding: utf-8 -*-
# Copyright: podnet.fabric contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""A daemon kept running without a service manager (the lab: PID 1 is not systemd).

The daemon runs in the foreground as a child we detach (own session, stdio to a log file, cwd /);
we write its pidfile ourselves. "Running" means: the pidfile names a live (non-zombie) process
whose /proc/<pid>/cmdline runs the same program as argv. A stale pidfile, or one naming a PID the
kernel has since given to another program, is not running - and that other process is never
signalled. A live process running exactly argv in our own network and mount namespaces but missing
from the pidfile (the pidfile was lost) is adopted rather than started twice.
"""
from __future__ import absolute_import, division, print_function

__metaclass__ = type

import os
import signal
import subprocess
import time

POLL = 0.05


class DaemonError(Exception):
    pass


# ---------------------------------------------------------------- pure

def same_program(running_argv, argv):
    """True when a process's argv runs the program argv names (paths may differ: bird vs /usr/sbin/bird)."""
    if not running_argv or not argv:
        return False
    return os.path.basename(running_argv[0]) == os.path.basename(argv[0])


def plan(desired, realized):
    """Pure: the actions that bring the daemon to desired['state'].

    desired: {'name', 'argv': [...], 'state': started|stopped|restarted|reloaded, 'reload_argv': [...] or None}
    realized: {'pidfile': bool (the file exists), 'pid': int or None (the live process the pidfile
               names, or an adopted one), 'argv': [...] or None (that process's cmdline),
               'adopted': bool (found by argv, not through the pidfile)}
    """
    state = desired['state']
    ours = realized['pid'] is not None and same_program(realized['argv'], desired['argv'])
    actions = []
    if ours and realized.get('adopted') and state != 'stopped':
        actions.append({'action': 'write_pidfile', 'pid': realized['pid']})
    if state == 'stopped':
        if ours:
            actions.append({'action': 'stop', 'pid': realized['pid']})
        if ours or realized['pidfile']:
            actions.append({'action': 'remove_pidfile'})
        return actions
    if not ours:
        if realized['pidfile']:
            actions.append({'action': 'remove_pidfile'})
        actions.append({'action': 'start', 'argv': list(desired['argv'])})
        return actions
    if state == 'restarted' or realized['argv'] != list(desired['argv']):
        # A changed command line can only take effect through a restart.
        actions.append({'action': 'stop', 'pid': realized['pid']})
        actions.append({'action': 'start', 'argv': list(desired['argv'])})
    elif state == 'reloaded':
        if desired.get('reload_argv'):
            actions.append({'action': 'reload', 'argv': list(desired['reload_argv'])})
        else:
            actions.append({'action': 'signal', 'pid': realized['pid'], 'signal': 'SIGHUP'})
    return actions


def view(realized):
    """The diff-friendly view of a realized state."""
    return {'running': realized['pid'] is not None, 'pid': realized['pid'], 'argv': realized['argv']}


def project(desired, realized, actions):
    """Pure: the view after `actions` (check mode); a PID not known yet is None."""
    out = view(realized)
    for a in actions:
        if a['action'] == 'stop':
            out = {'running': False, 'pid': None, 'argv': None}
        elif a['action'] == 'start':
            out = {'running': True, 'pid': None, 'argv': list(a['argv'])}
    return out


# ---------------------------------------------------------------- reading /proc

def read_pidfile(path):
    try:
        with open(path) as f:
            text = f.read().strip()
    except (IOError, OSError):
        return None
    return int(text) if text.isdigit() else None


def proc_argv(pid):
    """The cmdline of a live process, or None (gone, or a zombie: it no longer runs anything)."""
    try:
        with open('/proc/%d/stat' % pid) as f:
            stat = f.read()
        with open('/proc/%d/cmdline' % pid, 'rb') as f:
            raw = f.read()
    except (IOError, OSError):
        return None
    # The state is the field after the parenthesised comm, which may itself hold spaces.
    if stat[stat.rfind(')') + 2:].split(' ', 1)[0] in ('Z', 'X') or not raw:
        return None
    return [a.decode('utf-8', 'surrogateescape') for a in raw.rstrip(b'\0').split(b'\0')]


def _ns_inodes(pid='self'):
    out = []
    for kind in ('net', 'mnt'):
        try:
            out.append(os.stat('/proc/%s/ns/%s' % (pid, kind)).st_ino)
        except OSError:
            return None
    return tuple(out)


def find_by_argv(argv):
    """A live process running exactly argv in our network and mount namespaces (None if none)."""
    mine = _ns_inodes()
    want = list(argv)
    for entry in os.listdir('/proc'):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        if proc_argv(int(entry)) == want and _ns_inodes(entry) == mine:
            return int(entry)
    return None


def read(pidfile, argv):
    exists = os.path.exists(pidfile)
    pid = read_pidfile(pidfile)
    cmd = proc_argv(pid) if pid else None
    if cmd is not None and same_program(cmd, argv):
        return {'pidfile': exists, 'pid': pid, 'argv': cmd, 'adopted': False}
    found = find_by_argv(argv)
    if found is not None:
        return {'pidfile': exists, 'pid': found, 'argv': list(argv), 'adopted': True}
    return {'pidfile': exists, 'pid': None, 'argv': None, 'adopted': False}


# ---------------------------------------------------------------- apply

def _write_pidfile(path, pid):
    d = os.path.dirname(path)
    if d and not os.path.isdir(d):
        os.makedirs(d)
    tmp = '%s.tmp.%d' % (path, os.getpid())
    with open(tmp, 'w') as f:
        f.write('%d\n' % pid)
    os.rename(tmp, path)


def _remove(path):
    try:
        os.unlink(path)
    except OSError:
        pass


def _log_tail(path, limit=2000):
    if not path:
        return ''
    try:
        with open(path, 'rb') as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - limit))
            return f.read().decode('utf-8', 'replace').strip()
    except (IOError, OSError):
        return ''


def alive(pid):
    """Whether pid is a process that still runs (not gone, not a zombie)."""
    try:
        with open('/proc/%d/stat' % pid) as f:
            state = f.read().rsplit(')', 1)[1].split()[0]
    except (IOError, OSError, IndexError):
        return False
    return state not in ('Z', 'X')


def terminate(pids, ours, grace):
    """The one stop loop: SIGTERM each of pids that is ours, wait up to `grace` s for them to end,
    then SIGKILL those still ours. ours(pid) -> bool is asked again before every signal, so a PID
    that now belongs to another process is never signalled. Returns the PIDs that needed SIGKILL."""
    pids = [p for p in pids if ours(p)]
    for pid in pids:
        try:
            os.kill(pid, signal.SIGTERM)
        except OSError:
            pass
    deadline = time.time() + grace
    left = [p for p in pids if ours(p)]
    while left and time.time() < deadline:
        time.sleep(POLL)
        left = [p for p in left if ours(p)]
    killed = []
    for pid in left:
        if ours(pid):
            try:
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
            except OSError:
                pass
    return killed


def stop(pid, argv, timeout):
    """SIGTERM, wait up to `timeout` s, then SIGKILL. Returns 'term' or 'kill' (how it ended)."""
    def ours(p):
        cmd = proc_argv(p)
        return cmd is not None and same_program(cmd, argv)

    if not terminate([pid], ours, timeout):
        return 'term'
    deadline = time.time() + 5
    while ours(pid) and time.time() < deadline:
        time.sleep(POLL)
    if ours(pid):
        raise DaemonError('pid %d survived SIGKILL' % pid)
    return 'kill'


def start(argv, pidfile, log_path=None, wait_for=None, timeout=10.0, settle=0.3):
    """Start argv (a foreground daemon) detached; return its PID once it is up.

    Up means: still alive, and `wait_for` exists (when given; a leftover of an earlier run is
    removed first), or still alive after `settle` seconds.
    """
    if wait_for and os.path.exists(wait_for):
        _remove(wait_for)
    if log_path:
        d = os.path.dirname(log_path)
        if d and not os.path.isdir(d):
            os.makedirs(d)
        out = open(log_path, 'ab')
    else:
        out = open(os.devnull, 'wb')
    try:
        try:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                    cwd='/', close_fds=True, start_new_session=True)
        except OSError as e:
            raise DaemonError('cannot run %s: %s' % (argv[0], e))
    finally:
        out.close()
    _write_pidfile(pidfile, proc.pid)
    began = time.time()
    while True:
        rc = proc.poll()
        if rc is not None:
            _remove(pidfile)
            raise DaemonError('%s exited with status %d right after starting%s' % (
                ' '.join(argv), rc, (': ' + _log_tail(log_path)) if log_path else ''))
        waited = time.time() - began
        if wait_for:
            if os.path.exists(wait_for):
                return proc.pid
            if waited > timeout:
                # Not ready is not up: leave nothing half-started behind.
                stop(proc.pid, argv, 2.0)
                proc.poll()
                _remove(pidfile)
                raise DaemonError('%s (pid %d) was stopped: %s did not appear within %ss%s' % (
                    argv[0], proc.pid, wait_for, timeout, (': ' + _log_tail(log_path)) if log_path else ''))
        elif waited >= settle:
            return proc.pid
        time.sleep(POLL)


def reload(argv):
    p = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, universal_newlines=True,
                       check=False)
    if p.returncode != 0:
        raise DaemonError('reload command %s failed (rc=%d): %s' % (' '.join(argv), p.returncode, p.stdout.strip()))
    return p.stdout


def apply(desired, actions, pidfile, log_path=None, wait_for=None, start_timeout=10.0, stop_timeout=10.0):
    """Run the plan; returns notes (how a stop ended, reload output) for the module's result."""
    notes = []
    for a in actions:
        kind = a['action']
        if kind == 'stop':
            notes.append('stopped pid %d (%s)' % (a['pid'], stop(a['pid'], desired['argv'], stop_timeout)))
        elif kind == 'remove_pidfile':
            _remove(pidfile)
        elif kind == 'write_pidfile':
            _write_pidfile(pidfile, a['pid'])
        elif kind == 'start':
            pid = start(a['argv'], pidfile, log_path=log_path, wait_for=wait_for, timeout=start_timeout)
            notes.append('started pid %d' % pid)
        elif kind == 'reload':
            out = reload(a['argv']).strip()
            notes.append('reloaded' + (': ' + out if out else ''))
        elif kind == 'signal':
            os.kill(a['pid'], getattr(signal, a['signal']))
            notes.append('sent %s to pid %d' % (a['signal'], a['pid']))
        else:  # pragma: no cover - plan() only emits the kinds above
            raise DaemonError('unknown daemon action %r' % kind)
    return notes
