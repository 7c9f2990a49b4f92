#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: podnet.fabric contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r'''
---
module: lab_daemon
short_description: Keep a daemon process running where there is no service manager (the lab)
version_added: 0.1.0
description:
  - Starts, stops, restarts or reloads one daemon process on a host whose PID 1 is not systemd,
    such as a member of the one-machine lab (M(podnet.fabric.lab_cluster)). On hosts with systemd
    use M(ansible.builtin.systemd_service) and a unit instead.
  - The daemon runs in the foreground (for example C(bird -f), or FRR daemons without C(-d)) as a
    detached child in its own session, with standard input from C(/dev/null), standard output and
    error appended to O(log_path), and C(/) as working directory; the module writes O(pidfile).
  - The daemon counts as running only when O(pidfile) names a live process whose
    C(/proc/<pid>/cmdline) runs the same program as O(argv). A stale pidfile is not running, and a
    process that merely reuses the PID is never signalled. A process running exactly O(argv) in
    this host's network and mount namespaces that the pidfile lost is adopted, not started twice.
  - When the running command line differs from O(argv), O(state=started) restarts the daemon.
author:
  - podnet.fabric maintainers (@podnet)
extends_documentation_fragment:
  - podnet.fabric.node_lock
options:
  name:
    description: A name for the daemon, used in messages.
    type: str
    required: true
  argv:
    description: The command that runs the daemon in the foreground, as a list (no shell).
    type: list
    elements: str
    required: true
  pidfile:
    description: Where the daemon's PID is kept. The module writes and removes it.
    type: path
    required: true
  state:
    description:
      - C(started) starts the daemon when it is not running.
      - C(stopped) sends SIGTERM, waits O(stop_timeout) seconds, then sends SIGKILL.
      - C(restarted) always stops (when running) and starts it.
      - C(reloaded) runs O(reload_argv) (or sends SIGHUP when it is not given) when the daemon runs,
        and starts it when it does not.
    type: str
    choices: [started, stopped, restarted, reloaded]
    default: started
  reload_argv:
    description: The command that makes the running daemon re-read its configuration, for example C([birdc, -s, SOCKET, configure]).
    type: list
    elements: str
  log_path:
    description: File that receives the daemon's standard output and error (appended). Default is none (C(/dev/null)).
    type: path
  wait_for:
    description:
      - A path (typically the daemon's control socket) whose appearance means the daemon is ready;
        starting waits for it up to O(start_timeout) seconds. A leftover of an earlier run is removed
        before starting. Without it, starting waits a short moment and checks the daemon still runs.
    type: path
  start_timeout:
    description: Seconds to wait for O(wait_for) after starting.
    type: float
    default: 10
  stop_timeout:
    description: Seconds between SIGTERM and SIGKILL when stopping.
    type: float
    default: 10
notes:
  - The daemon inherits the namespaces of the process running the module; in the lab that is the
    member's, so the lab's teardown stops it.
attributes:
  check_mode:
    support: full
    description: Reads the process state, plans, and reports the plan and the projected state without starting or signalling anything.
  diff_mode:
    support: full
    description: Returns whether the daemon runs, its PID and command line, before and after (projected in check mode; a new PID is unknown there).
'''

EXAMPLES = r'''
- name: BIRD inside a lab node
  podnet.fabric.lab_daemon:
    name: bird
    argv: [bird, -f, -c, /etc/podnet/bgp/bird.conf, -s, /run/podnet/bgp/bird.ctl]
    pidfile: /run/podnet/bgp/bird.pid
    wait_for: /run/podnet/bgp/bird.ctl
    log_path: /run/podnet/bgp/bird.log

- name: Make it re-read its configuration
  podnet.fabric.lab_daemon:
    name: bird
    argv: [bird, -f, -c, /etc/podnet/bgp/bird.conf, -s, /run/podnet/bgp/bird.ctl]
    pidfile: /run/podnet/bgp/bird.pid
    reload_argv: [birdc, -s, /run/podnet/bgp/bird.ctl, configure]
    state: reloaded

- name: Stop it
  podnet.fabric.lab_daemon:
    name: bird
    argv: [bird, -f, -c, /etc/podnet/bgp/bird.conf, -s, /run/podnet/bgp/bird.ctl]
    pidfile: /run/podnet/bgp/bird.pid
    state: stopped
'''

RETURN = r'''
plan:
  description: The actions taken, or that would be taken in check mode.
  returned: always
  type: list
  elements: dict
  sample: [{action: start, argv: [bird, -f, -c, /etc/podnet/bgp/bird.conf]}]
state:
  description: Whether the daemon runs, its PID and command line after the run (projected in check mode).
  returned: always
  type: dict
  sample: {running: true, pid: 4242, argv: [bird, -f, -c, /etc/podnet/bgp/bird.conf]}
pid:
  description: The daemon's PID after the run; null when it is stopped, or not known yet in check mode.
  returned: always
  type: int
  sample: 4242
notes:
  description: What happened (how a stop ended - C(term) or C(kill) - and the reload command's output).
  returned: always
  type: list
  elements: str
  sample: ['stopped pid 4242 (term)', 'started pid 4250']
'''

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.podnet.fabric.plugins.module_utils import daemon
from ansible_collections.podnet.fabric.plugins.module_utils.reconcile import Reconciler, argument_spec


def main():
    module = AnsibleModule(
        argument_spec=argument_spec(
            name=dict(type='str', required=True),
            argv=dict(type='list', elements='str', required=True),
            pidfile=dict(type='path', required=True),
            state=dict(type='str', choices=['started', 'stopped', 'restarted', 'reloaded'], default='started'),
            reload_argv=dict(type='list', elements='str'),
            log_path=dict(type='path'),
            wait_for=dict(type='path'),
            start_timeout=dict(type='float', default=10.0),
            stop_timeout=dict(type='float', default=10.0),
        ),
        supports_check_mode=True,
    )
    p = module.params
    if not p['argv']:
        module.fail_json(msg='argv: must name the daemon program')
    desired = dict(name=p['name'], argv=p['argv'], state=p['state'], reload_argv=p['reload_argv'])
    notes = []

    def apply(action):
        notes.extend(daemon.apply(desired, [action], p['pidfile'], log_path=p['log_path'],
                                  wait_for=p['wait_for'], start_timeout=p['start_timeout'],
                                  stop_timeout=p['stop_timeout']))

    # The planner needs more than the diff shows (pidfile presence, adoption): keep the full read.
    realized = {}

    def read_full():
        realized.clear()
        realized.update(daemon.read(p['pidfile'], p['argv']))
        return daemon.view(realized)

    result = Reconciler(
        module, read_full,
        plan=lambda view: daemon.plan(desired, dict(realized)),
        apply=apply,
        project=lambda view, actions: daemon.project(desired, dict(realized), actions),
        name=p['name'],
    ).run()
    result['pid'] = result['state']['pid']
    result['notes'] = notes
    module.exit_json(**result)


if __name__ == '__main__':
    main()
