"""The fleet bench's lab half (`make bench BENCH=fleet BENCH_ARGS='--lab 20'`): a lab of N namespace
nodes converged whole, then a fresh one converged as AWX runs a sliced job (the slice inventories as
AWX writes them, all slices at once against one ledger), the peers pass, and verify.yml over the
whole inventory, which probes pod to pod (ping and TCP) between every pair of nodes' health
endpoints. Wall and CPU seconds per stage. Lab prefix `pfb`; what it starts it removes.
"""
from __future__ import print_function

import concurrent.futures
import json
import os
import re
import resource
import subprocess
import tempfile
import time

import yaml

from _common import BenchError, ROOT, VENV_BIN, env, lab_utils, playbook, purge

PREFIX = 'pfb'


def _inventory(directory, nodes):
    os.makedirs(os.path.join(directory, 'group_vars', 'all'), exist_ok=True)
    with open(os.path.join(directory, 'lab.podnet.yml'), 'w') as f:
        f.write('plugin: podnet.fabric.lab\nprefix: %s\nnodes: %d\nunderlay_cidr: 192.168.50.0/24\n' % (PREFIX, nodes))
    with open(os.path.join(ROOT, 'inventories', 'lab', 'group_vars', 'all', 'cluster.yml')) as f:
        text = f.read()
    with open(os.path.join(directory, 'group_vars', 'all', 'cluster.yml'), 'w') as f:
        f.write(text)
    return directory


def _slices(lab_inv, directory, count):
    p = subprocess.run([os.path.join(VENV_BIN, 'ansible-inventory'), '-i', lab_inv, '--list'], cwd=ROOT, env=env(),
                       stdout=subprocess.PIPE, universal_newlines=True, check=True)
    out = []
    for n, hosts, doc in lab_utils.awx_slices(json.loads(p.stdout), 'podnet_nodes', count):
        path = os.path.join(directory, 'slice%d.yml' % n)
        with open(path, 'w') as f:
            yaml.safe_dump(doc, f)
        out.append((n, hosts, path))
    return out


class _Clock(object):
    """Wall and CPU seconds (this process's finished children) of a stage."""

    def __init__(self):
        self.stages = {}

    def run(self, name, fn):
        r0, t0 = resource.getrusage(resource.RUSAGE_CHILDREN), time.monotonic()
        out = fn()
        r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        self.stages[name] = {'wall_s': round(time.monotonic() - t0, 1),
                             'cpu_s': round(r1.ru_utime + r1.ru_stime - r0.ru_utime - r0.ru_stime, 1)}
        print('  %-32s %7.1f s wall %7.1f s CPU' % (name, self.stages[name]['wall_s'], self.stages[name]['cpu_s']),
              flush=True)
        return out


def _answers(verify_output):
    """How many health endpoints answered a TCP probe in verify.yml's per-node results (-v). Any
    target that did not answer fails verify.yml (fail_on_unreachable), so the run raised already."""
    return len(re.findall(r'["\']?reply["\']?: ["\']?podnet-health ', verify_output))


def run_lab(nodes, slices, timeout=3600):
    """Converge an N-node lab whole, then a fresh one in `slices` concurrent AWX slices + the peers
    pass; verify.yml over the whole inventory after each. Returns the figures."""
    out = {'nodes': nodes, 'slices': slices}
    tmp = tempfile.mkdtemp(prefix='pfb-')
    inv = _inventory(os.path.join(tmp, 'inv'), nodes)
    site = ('-e', 'podnet_site_verify=false')
    try:
        for how in ('whole', 'sliced'):
            clock = _Clock()
            print('%d-node lab, %s:' % (nodes, how), flush=True)
            purge(PREFIX)
            clock.run('lab_up.yml', lambda: playbook('lab_up.yml', inv, timeout=timeout))
            if how == 'whole':
                clock.run('site.yml', lambda: playbook('site.yml', inv, *site, timeout=timeout))
            else:
                parts = _slices(inv, tmp, slices)

                def sliced():
                    with concurrent.futures.ThreadPoolExecutor(max_workers=slices) as pool:
                        futs = [pool.submit(playbook, 'site.yml', path, '-e', 'job_slice=%d' % n, *site, timeout=timeout)
                                for n, _hosts, path in parts]
                        return [f.result() for f in futs]
                clock.run('site.yml x%d slices at once' % slices, sliced)
                clock.run('peers.yml', lambda: playbook('peers.yml', inv, timeout=timeout))
            verify = clock.run('verify.yml', lambda: playbook('verify.yml', inv, '-v', timeout=timeout))
            answered = _answers(verify)
            if answered != nodes * nodes:
                raise BenchError('%s: %d of %d pod-to-pod TCP probes answered in verify.yml' % (how, answered, nodes * nodes))
            out[how] = {'stages': clock.stages, 'tcp_probes_answered': answered}
            playbook('lab_down.yml', inv, timeout=timeout)
    finally:
        purge(PREFIX)
    return out
