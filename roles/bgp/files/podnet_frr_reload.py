# -*- coding: utf-8 -*-
# Copyright: podnet.fabric contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Reload a running FRR daemon from a config file without restarting it.

FRR's own frr-reload.py lives in frr-pythontools, which Debian does not install with frr. This is
the same idea cut to what podnet's templates write: read the daemon's running config through
vtysh, diff it against the file context by context (top level, `router bgp N`, its
`address-family` blocks), send `no <line>` for what is gone and `<line>` for what is new, then read
it back and fail unless it now matches. A neighbor whose definition (remote-as, peer-group) changes
is removed and added again whole, as FRR would otherwise drop its other settings.

usage: podnet_frr_reload.py [--vtysh PATH] [--vty-socket DIR] [--daemon bgpd] [--dry-run] CONFIG
Standard library only (runs under the system python3).
"""
from __future__ import absolute_import, division, print_function

import argparse
import subprocess
import sys

# Lines vtysh shows that are not configuration we can (or want to) change at run time.
IGNORED = ('frr version', 'frr defaults', 'service integrated-vtysh-config', 'hostname ',
           'Building configuration', 'Current configuration', 'end')
CONTEXT_STARTS = ('router ', 'interface ', 'route-map ', 'vrf ', 'line ', 'key chain ', 'bfd',
                  'segment-routing', 'rpki')
NEIGHBOR_DEFINITIONS = ('remote-as', 'peer-group', 'interface')


def parse(text):
    """{context path (tuple): [lines]} in file order; the top level is ()."""
    out = {(): []}
    path = ()
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(('!', '#')) or line.startswith(IGNORED):
            continue
        if line == 'exit' and len(path) == 1 or line == 'exit-address-family' and len(path) == 2:
            path = path[:-1]
            continue
        if not raw[:1].isspace() and line.startswith(CONTEXT_STARTS):
            path = (line,)
            out.setdefault(path, [])
            continue
        if len(path) == 1 and line.startswith(('address-family ', 'vni ')):
            path = path + (line,)
            out.setdefault(path, [])
            continue
        out.setdefault(path, []).append(line)
    return out


def _neighbor(line):
    words = line.split()
    return words[1] if len(words) > 2 and words[0] == 'neighbor' else None


def _definitions(config, top):
    """{neighbor: [definition lines]} inside one `router ...` context."""
    out = {}
    for path, lines in config.items():
        if path[:1] != (top,):
            continue
        for line in lines:
            n = _neighbor(line)
            if n and line.split()[2] in NEIGHBOR_DEFINITIONS:
                out.setdefault(n, []).append(line)
    return out


def negate(line):
    return line[3:] if line.startswith('no ') else 'no ' + line


def diff(running, desired):
    """The commands (each a context path plus one command) that turn running into desired."""
    cmds = []
    dropped = set()
    for path in running:
        if len(path) == 1 and path not in desired:
            cmds.append(((), 'no ' + path[0]))
            dropped.add(path[0])
    # Neighbors that disappear or are redefined: `no neighbor X` removes every setting of theirs.
    renew = {}
    for path in running:
        if len(path) != 1 or path[0] in dropped:
            continue
        have, want = _definitions(running, path[0]), _definitions(desired, path[0])
        for n in have:
            if have[n] != want.get(n):
                cmds.append((path, 'no neighbor ' + n))
                renew.setdefault(path[0], set()).add(n)
    for path, lines in running.items():
        if path[:1] and path[0] in dropped:
            continue
        gone = renew.get(path[0], set()) if path else set()
        want = desired.get(path, [])
        for line in lines:
            if line not in want and _neighbor(line) not in gone:
                cmds.append((path, negate(line)))
    for path, lines in desired.items():
        fresh = not path or path[0] in dropped or path not in running
        have = [] if path and (path[0] in dropped) else running.get(path, [])
        gone = renew.get(path[0], set()) if path else set()
        todo = [line for line in lines if line not in have or _neighbor(line) in gone]
        if fresh and path and not todo and path not in running:
            cmds.append((path, None))   # an empty context still has to exist
        for line in todo:
            cmds.append((path, line))
    return cmds


def vtysh_argv(cmds, socket_dir=None, vtysh='vtysh'):
    argv = [vtysh] + (['--vty_socket', socket_dir] if socket_dir else [])
    argv += ['-c', 'configure terminal']
    for path, cmd in cmds:
        for step in path:
            argv += ['-c', step]
        if cmd is not None:
            argv += ['-c', cmd]
        argv += ['-c', 'end', '-c', 'configure terminal']
    return argv + ['-c', 'end']


def running_config(socket_dir, daemon, vtysh='vtysh'):
    argv = [vtysh] + (['--vty_socket', socket_dir] if socket_dir else [])
    argv += ['-d', daemon, '-c', 'show running-config']
    p = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True, check=False)
    if p.returncode != 0:
        raise SystemExit('cannot read the running config of %s: %s' % (daemon, p.stderr.strip() or p.stdout.strip()))
    return p.stdout


def main(args=None):
    ap = argparse.ArgumentParser(description=__doc__.split('\n', maxsplit=1)[0])
    ap.add_argument('--vtysh', default='vtysh')
    ap.add_argument('--vty-socket')
    ap.add_argument('--daemon', default='bgpd')
    ap.add_argument('--dry-run', action='store_true')
    ap.add_argument('config')
    o = ap.parse_args(args)
    with open(o.config) as f:
        desired = parse(f.read())
    cmds = diff(parse(running_config(o.vty_socket, o.daemon, o.vtysh)), desired)
    for path, cmd in cmds:
        print(' > '.join(list(path) + ([cmd] if cmd else [])))
    if o.dry_run or not cmds:
        return 0
    p = subprocess.run(vtysh_argv(cmds, o.vty_socket, o.vtysh), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                       universal_newlines=True, check=False)
    left = diff(parse(running_config(o.vty_socket, o.daemon, o.vtysh)), desired)
    if left:
        sys.stderr.write('the running config still differs from %s after the reload:\n%s\nvtysh said:\n%s\n' % (
            o.config, '\n'.join(' > '.join(list(pth) + ([c] if c else [])) for pth, c in left), p.stdout))
        return 1
    return 0


if __name__ == '__main__':
    sys.exit(main())
