# -*- coding: utf-8 -*-
# Copyright: podnet.fabric contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The node's health endpoint (as Cilium's cilium-health): an endpoint plus its responder.

Every node gets one endpoint (endpoint.py) named ``podnet-health``, with ``lxc_health`` as the node
side of its pair and an address from the node's pod CIDR, and a tiny TCP responder inside it that
answers ``podnet-health <node>``. Probing every other node's endpoint from this one (probe.py)
exercises exactly the path pod traffic takes (veth, the node's routing, the underlay or the tunnel,
the remote node's routing, its veth), not the node-to-node path.

The responder is a child of the module's interpreter (``sys.executable -c RESPONDER_SRC ...``)
that enters the endpoint's network namespace with setns() before it binds, and keeps the node's
mount namespace, so anything that ends a node by its mount namespace (the lab's teardown) ends it.
It is "running" only when its pidfile's PID is alive, its command line is the one this code would
start, and its network namespace is the endpoint's (same nsfs inode). Process handling (pidfile,
command line, signals) is daemon.py's.

This file adds the responder to the endpoint's desired state, plan, projection, read and apply.
"""
from __future__ import absolute_import, division, print_function

__metaclass__ = type

import errno
import hashlib
import os
import select
import subprocess
import time

from ansible_collections.podnet.fabric.plugins.module_utils import daemon, endpoint
from ansible_collections.podnet.fabric.plugins.module_utils.netns import inode, netns_path

DEFAULT_DEVICE = 'lxc_health'
PID_DIR = '/run/podnet'
MARK = 'podnet-health-responder'

# The responder. It runs as `python -c RESPONDER_SRC MARK VERSION NSPATH PORT NODE PIDFILE`; the
# module reads the command line back to tell whether the running one is the one it would start.
RESPONDER_SRC = r'''
import ctypes, os, signal, socket, sys
mark, version, nspath, port, node, pidfile = sys.argv[1:7]
libc = ctypes.CDLL(None, use_errno=True)
fd = os.open(nspath, os.O_RDONLY)
if libc.setns(fd, 0x40000000) != 0:
    raise OSError(ctypes.get_errno(), 'setns(%s) failed' % nspath)
os.close(fd)
try:
    srv = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    srv.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    addr = ('::', int(port))
except OSError:
    srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    addr = ('0.0.0.0', int(port))
srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(addr)
srv.listen(128)


def stop(signum, frame):
    try:
        with open(pidfile) as f:
            mine = f.read().strip() == str(os.getpid())
        if mine:
            os.unlink(pidfile)
    except OSError:
        pass
    os._exit(0)


signal.signal(signal.SIGTERM, stop)
signal.signal(signal.SIGINT, stop)
tmp = '%s.%d' % (pidfile, os.getpid())
with open(tmp, 'w') as f:
    f.write('%d\n' % os.getpid())
os.rename(tmp, pidfile)
line = ('podnet-health %s\n' % node).encode()
sys.stdout.write('ready\n')
sys.stdout.flush()
null = os.open(os.devnull, os.O_RDWR)
for n in (0, 1, 2):
    os.dup2(null, n)
while True:
    try:
        conn = srv.accept()[0]
    except OSError:
        continue
    try:
        conn.settimeout(2)
        conn.sendall(line)
        conn.shutdown(socket.SHUT_WR)
    except OSError:
        pass
    finally:
        conn.close()
'''
RESPONDER_VERSION = hashlib.sha1(RESPONDER_SRC.encode('utf-8')).hexdigest()[:12]


class HealthError(endpoint.EndpointError):
    pass


# ---------------------------------------------------------------------------------------------
# Pure: desired state, plan, projection (the endpoint's, plus the responder)
# ---------------------------------------------------------------------------------------------

def pidfile_path(name, pid_dir=PID_DIR):
    return os.path.join(pid_dir, 'health-%s.pid' % name)


def responder_args(netns, port, node_name, pidfile):
    """The command line after `python -c SRC` (what identifies a responder's configuration)."""
    return [MARK, RESPONDER_VERSION, netns_path(netns), str(port), node_name, pidfile]


def responder_argv(python, netns, port, node_name, pidfile):
    return [python, '-c', RESPONDER_SRC] + responder_args(netns, port, node_name, pidfile)


def desired_state(netns, device, addresses, router_ips, mtu, port, node_name, state,
                  pid_dir=PID_DIR):
    """The endpoint's desired state plus the responder's (raises EndpointError)."""
    out = endpoint.desired_state(netns, device, addresses, router_ips, mtu, state)
    out['pidfile'] = pidfile_path(netns, pid_dir)
    if state == 'absent':
        return out
    if not 1 <= int(port) <= 65535:
        raise HealthError('port: %s is not a TCP port' % port)
    if not node_name or any(c.isspace() for c in node_name):
        raise HealthError('node_name: %r must be a non-empty word' % (node_name,))
    out.update(port=int(port), node_name=node_name,
               responder_args=responder_args(netns, port, node_name, out['pidfile']))
    return out


def responder_ok(desired, realized):
    r = realized.get('responder') or {}
    ns = realized.get('netns') or {}
    return bool(r.get('running') and r.get('args') == desired['responder_args']
                and ns.get('inode') and r.get('netns_inode') == ns.get('inode'))


def plan(desired, realized):
    """Pure: the endpoint's actions, the responder stopped before its endpoint goes and (re)started
    after it is complete."""
    resp = realized['responder']
    stop = [p for p in ([resp.get('pid')] if resp.get('ours') else []) + list(resp.get('strays') or []) if p]
    actions = endpoint.plan(desired, realized)
    if desired['state'] == 'absent':
        if stop or resp.get('pidfile_exists'):
            actions.insert(0, {'action': 'stop_responder', 'pids': stop, 'pidfile': desired['pidfile']})
        return actions
    if not realized['netns']['exists'] or not responder_ok(desired, realized):
        actions.append({'action': 'start_responder', 'stop': stop, 'pidfile': desired['pidfile'],
                        'netns': desired['netns'], 'port': desired['port'], 'node_name': desired['node_name']})
    elif resp.get('strays'):
        actions.append({'action': 'stop_responder', 'pids': list(resp['strays']), 'pidfile': None})
    return actions


def project(desired, realized, actions):
    """Pure: the realized view after `actions` (the check-mode 'after' of the diff)."""
    out = endpoint.project(desired, realized, actions)
    if desired['state'] == 'absent':
        return dict(out, responder=empty_responder(desired['pidfile']))
    if any(a['action'] == 'start_responder' for a in actions):
        out = dict(out, responder={'pid': None, 'running': True, 'ours': True, 'args': desired['responder_args'],
                                   'netns_inode': None, 'pidfile': desired['pidfile'], 'pidfile_exists': True,
                                   'strays': []})
    elif any(a['action'] == 'stop_responder' for a in actions):
        out = dict(out, responder=dict(realized['responder'], strays=[]))
    return out


def empty_responder(pidfile=None):
    return {'pid': None, 'running': False, 'ours': False, 'args': None, 'netns_inode': None,
            'pidfile': pidfile, 'pidfile_exists': False, 'strays': []}


def empty_realized(netns, pidfile=None):
    return dict(endpoint.empty_realized(netns), responder=empty_responder(pidfile))


# ---------------------------------------------------------------------------------------------
# Root: the responder, reading and applying
# ---------------------------------------------------------------------------------------------

def _is_responder(cmdline):
    return bool(cmdline) and len(cmdline) >= 4 and cmdline[1] == '-c' and cmdline[3] == MARK


def read_responder(netns, pidfile):
    pid = daemon.read_pidfile(pidfile)
    out = dict(empty_responder(pidfile), pidfile_exists=os.path.exists(pidfile))
    if pid:
        cmd = daemon.proc_argv(pid)
        if _is_responder(cmd):
            out.update(pid=pid, ours=True, args=cmd[3:], netns_inode=inode('/proc/%d/ns/net' % pid))
            ns_ino = inode(netns_path(netns))
            out['running'] = bool(ns_ino) and out['netns_inode'] == ns_ino
    # Responders for this endpoint that the pidfile lost track of (same netns path, same mount
    # namespace: on a lab machine every node has its own /run and its own responder).
    my_mnt = inode('/proc/self/ns/mnt')
    for entry in os.listdir('/proc'):
        if not entry.isdigit() or int(entry) in (out['pid'], os.getpid()):
            continue
        cmd = daemon.proc_argv(int(entry))     # None: gone, or a zombie
        if (_is_responder(cmd) and len(cmd) >= 6 and cmd[5] == netns_path(netns)
                and inode('/proc/%s/ns/mnt' % entry) == my_mnt):
            out['strays'].append(int(entry))
    out['strays'].sort()
    return out


def stop_pids(pids, grace=3.0):
    """Stop responders (a PID that no longer runs a responder is never signalled)."""
    daemon.terminate(pids, lambda pid: _is_responder(daemon.proc_argv(pid)), grace)


def start_responder(python, netns, port, node_name, pidfile, timeout=10.0):
    """Start the responder and wait until it listens; its PID."""
    pid_dir = os.path.dirname(pidfile)
    if not os.path.isdir(pid_dir):
        os.makedirs(pid_dir, 0o755)
    argv = responder_argv(python, netns, port, node_name, pidfile)
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            cwd='/', close_fds=True, start_new_session=True)
    line = b''
    deadline = time.time() + timeout
    while time.time() < deadline and not line.endswith(b'\n'):
        ready = select.select([proc.stdout], [], [], max(0.0, deadline - time.time()))[0]
        if not ready:
            break
        chunk = os.read(proc.stdout.fileno(), 64)
        if not chunk:
            break
        line += chunk
    proc.stdout.close()
    if line != b'ready\n':
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        err = proc.stderr.read().decode('utf-8', 'replace').strip().splitlines()
        proc.stderr.close()
        raise HealthError('the health responder did not start (exit %s): %s'
                          % (proc.returncode, err[-1] if err else 'no output within %gs' % timeout))
    proc.stderr.close()
    # The responder outlives this process; it is reparented to init. Forget it without a warning.
    proc.returncode = 0
    return proc.pid


def read(ipr_factory, netns, device, pidfile):
    """The endpoint's realized state plus its responder's."""
    return dict(endpoint.read(ipr_factory, netns, device), responder=read_responder(netns, pidfile))


def apply_action(ipr_factory, python, netns, a):
    """Carry out one plan() action: the responder's here, the endpoint's in endpoint.py."""
    kind = a['action']
    if kind == 'stop_responder':
        stop_pids(a['pids'])
        if a.get('pidfile'):
            try:
                os.unlink(a['pidfile'])
            except OSError as e:
                if e.errno != errno.ENOENT:
                    raise
    elif kind == 'start_responder':
        stop_pids(a['stop'])
        start_responder(python, a['netns'], a['port'], a['node_name'], a['pidfile'])
    else:
        endpoint.apply_action(ipr_factory, netns, a)
