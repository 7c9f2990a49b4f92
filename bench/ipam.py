"""IPAM benchmark: allocate 10,000 nodes + write the ledger, the no-op re-run, peak memory.

Run: .venv/bin/python bench/ipam.py [--nodes N] [--rounds R] | --quick
Writes bench/results/ipam.json and prints a table with the targets (DESIGN/issue 3):
  allocation of 10,000 nodes plus the ledger write < 1 s; the no-op re-run < 0.5 s.
--quick (CI: proves the benchmark still runs): 500 nodes, one round, written to
build/bench/ipam.quick.json so the committed figures stay. Exits non-zero if a child fails, an
assertion on the allocation fails, or (real runs) a target is missed.

Each round of each scenario runs in a fresh child process (so ru_maxrss is that scenario's
own peak and no warm cache carries over); figures are medians over the rounds.
- alloc:   ledger.update(plan_cluster) on an empty file ledger in a new temp dir: lock, read
           (absent), plan, serialize, write temp file, fsync, rename, fsync dir.
- noop:    the same call again: lock, read + parse, plan (nothing to do), compare, no write.
- read+plan: a lock-free read and the plan alone (what --check needs).
- add1:    one more node joins the full cluster (every existing block is parsed and marked).
- each time is wall-clock (perf_counter; the targets are on these) and the process's CPU time
  (process_time, `*_cpu_s`): on a machine busy with other work the wall time grows with the load,
  the CPU time much less.
- tracemalloc peak: Python heap peak of one alloc (measured in a separate pass: tracing
  slows the code down, so it is not timed). ru_maxrss: the child's peak RSS after the timed
  alloc + noop (interpreter included).
"""
from __future__ import print_function

import argparse
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import tracemalloc

import _common  # first: makes ansible_collections.podnet.fabric importable (here and in each child)

from ansible_collections.podnet.fabric.plugins.plugin_utils import ledger
from ansible_collections.podnet.fabric.plugins.plugin_utils import ipam_plan

TARGET_ALLOC = 1.0
TARGET_NOOP = 0.5
QUICK = {'nodes': 500, 'rounds': 1}


def make_model(scenario, n):
    nodes = dict(('node%05d' % i, {'node_ip': '192.168.%d.%d' % (i // 250, i % 250 + 1), 'node_device': None,
                                   'labels': {}, 'pod_cidrs': [], 'instance': None})
                 for i in range(1, n + 1))
    ipam_cfg = {'mode': scenario, 'ledger': {'backend': 'file', 'path': None},
                'cluster_pool': {'ipv4': {'cidrs': ['10.0.0.0/8'], 'mask_size': 24}, 'ipv6': None},
                'multi_pool': {'pools': {
                    'default': {'ipv4': {'cidrs': ['10.0.0.0/12'], 'mask_size': 27}, 'ipv6': None},
                    'gpu': {'ipv4': {'cidrs': ['10.128.0.0/12'], 'mask_size': 28}, 'ipv6': None}},
                    'pre_allocation': {'default': 8, 'gpu': 16}},   # gpu: 16 free needs 2 x /28
                'kubernetes': {'cluster_cidrs': []}}
    return {'cluster': {'name': 'bench', 'id': 0}, 'ipam': ipam_cfg, 'routing': {}, 'eni': None,
            'policy': {}, 'nodes': nodes}


def child(scenario, n):
    model = make_model(scenario, n)
    run = list(model['nodes'])
    tmp = tempfile.mkdtemp(prefix='podnet-bench-')
    try:
        cfg = {'backend': 'file', 'path': os.path.join(tmp, 'a', 'ledger.json')}

        def plan(doc):
            return ipam_plan.plan_cluster(model, doc, run)[0]

        t0, c0 = time.perf_counter(), time.process_time()
        led = ledger.open_ledger(cfg, cluster='bench')
        doc, changed = led.update(plan)
        t_alloc, c_alloc = time.perf_counter() - t0, time.process_time() - c0
        assert changed and len(doc['nodes']) == n
        blocks = [c for e in doc['nodes'].values() for c in e['cidrs']['ipv4']]
        blocks += [c for e in doc['nodes'].values() for p in e['pools'].values() for c in p['ipv4']]
        assert len(blocks) == len(set(blocks)), 'duplicate blocks'
        size = os.path.getsize(cfg['path'])
        mtime = os.stat(cfg['path']).st_mtime_ns

        t0, c0 = time.perf_counter(), time.process_time()
        doc2, changed2 = ledger.open_ledger(cfg, cluster='bench').update(plan)
        t_noop, c_noop = time.perf_counter() - t0, time.process_time() - c0
        assert not changed2 and os.stat(cfg['path']).st_mtime_ns == mtime

        t0, c0 = time.perf_counter(), time.process_time()
        cur = ledger.open_ledger(cfg, cluster='bench').read()
        new, changes = ipam_plan.plan_cluster(model, cur, run)
        t_read_plan, c_read_plan = time.perf_counter() - t0, time.process_time() - c0
        assert new is cur and not changes
        # one node joins a full cluster: every existing block is parsed and marked in use
        model['nodes']['node-new'] = dict(model['nodes'][run[0]])
        t0, c0 = time.perf_counter(), time.process_time()
        doc3, changed3 = ledger.open_ledger(cfg, cluster='bench').update(
            lambda d: ipam_plan.plan_cluster(model, d, ['node-new'])[0])
        t_add1, c_add1 = time.perf_counter() - t0, time.process_time() - c0
        assert changed3 and len(doc3['nodes']) == n + 1
        maxrss_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

        cfg_b = {'backend': 'file', 'path': os.path.join(tmp, 'b', 'ledger.json')}
        tracemalloc.start()
        ledger.open_ledger(cfg_b, cluster='bench').update(plan)
        _cur, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return {'alloc_s': t_alloc, 'noop_s': t_noop, 'read_plan_s': t_read_plan, 'add1_s': t_add1,
            'alloc_cpu_s': c_alloc, 'noop_cpu_s': c_noop, 'read_plan_cpu_s': c_read_plan, 'add1_cpu_s': c_add1,
            'tracemalloc_peak_mib': peak / 2.0 ** 20, 'ru_maxrss_mib': maxrss_kib / 1024.0,
            'ledger_bytes': size, 'blocks': len(blocks)}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--nodes', type=int, default=10000)
    ap.add_argument('--rounds', type=int, default=5)
    ap.add_argument('--quick', action='store_true',
                    help='%(nodes)d nodes, %(rounds)d round, results in build/bench/ (CI smoke run)' % QUICK)
    ap.add_argument('--out', help='default: bench/results/ipam.json (--quick: build/bench/ipam.quick.json)')
    ap.add_argument('--child', help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.nodes)))
        return 0
    if args.quick:
        args.nodes, args.rounds = QUICK['nodes'], QUICK['rounds']
    out_path = args.out or _common.results_path('ipam', args.quick)
    prov = _common.provenance()

    scenarios = ['cluster-pool', 'multi-pool']
    samples = dict((s, []) for s in scenarios)
    for _r in range(args.rounds):
        for s in scenarios:           # interleaved, so drift on the machine hits both alike
            argv = [sys.executable, os.path.abspath(__file__), '--child', s, '--nodes', str(args.nodes)]
            p = subprocess.run(argv, stdout=subprocess.PIPE, universal_newlines=True, check=False)
            if p.returncode != 0:
                raise SystemExit('ipam bench: the %s child exited %d (its error is above)' % (s, p.returncode))
            samples[s].append(json.loads(p.stdout.strip().splitlines()[-1]))

    results = {}
    for s in scenarios:
        rows = samples[s]
        med = dict((k, statistics.median(r[k] for r in rows)) for k in rows[0])
        med['alloc_s_all'] = [round(r['alloc_s'], 4) for r in rows]
        med['noop_s_all'] = [round(r['noop_s'], 4) for r in rows]
        med['alloc_ok'] = med['alloc_s'] < TARGET_ALLOC
        med['noop_ok'] = med['noop_s'] < TARGET_NOOP
        results[s] = med

    cfgs = {'cluster-pool': 'ipv4 10.0.0.0/8 mask 24',
            'multi-pool': 'default 10.0.0.0/12 mask 27 pre 8; gpu 10.128.0.0/12 mask 28 pre 16'}
    print('IPAM benchmark%s: %d nodes, %d rounds (medians), file ledger, Python %s, nproc %d, commit %s'
          % (' (quick)' if args.quick else '', args.nodes, args.rounds, platform.python_version(),
             prov['machine']['nproc'], (prov['git']['commit'] or '?')[:10]))
    hdr = '%-13s %7s %9s %9s %9s %11s %10s %7s %9s %10s'
    print(hdr % ('scenario', 'blocks', 'alloc s', 'target', 'noop s', 'target', 'read+plan s', 'add1 s',
                 'heap MiB', 'maxrss MiB'))
    for s in scenarios:
        r = results[s]
        print('%-13s %7d %9.3f %9s %9.3f %10s %11.3f %7.3f %9.1f %10.1f' % (
            s, r['blocks'], r['alloc_s'], ('< %.1f %s' % (TARGET_ALLOC, 'ok' if r['alloc_ok'] else 'MISS')),
            r['noop_s'], ('< %.1f %s' % (TARGET_NOOP, 'ok' if r['noop_ok'] else 'MISS')), r['read_plan_s'],
            r['add1_s'], r['tracemalloc_peak_mib'], r['ru_maxrss_mib']))
        print('%-13s %9s %9.3f %9s %9.3f %10s %11.3f %7.3f' % (
            '', 'CPU s', r['alloc_cpu_s'], '', r['noop_cpu_s'], '', r['read_plan_cpu_s'], r['add1_cpu_s']))
        print('%-13s %s; ledger %.2f MB' % ('', cfgs[s], r['ledger_bytes'] / 1e6))
    print('load average at the start %s, at the end %s' % (
        ' '.join('%.2f' % x for x in prov['machine']['loadavg_at_start']), ' '.join('%.2f' % x for x in os.getloadavg())))

    doc = {'benchmark': 'ipam', 'quick': args.quick, 'nodes': args.nodes, 'rounds': args.rounds,
           'targets': {'alloc_s': TARGET_ALLOC, 'noop_s': TARGET_NOOP},
           'method': 'each round runs every scenario once, interleaved, each in a fresh process; '
                     'figures are medians over the rounds',
           'scenarios': dict((s, {'config': cfgs[s], 'median': dict((k, (round(v, 4) if isinstance(v, float) else v))
                                                                    for k, v in results[s].items())})
                             for s in scenarios),
           'ok': all(results[s]['alloc_ok'] and results[s]['noop_ok'] for s in scenarios)}
    doc.update(prov)
    doc['machine']['loadavg_at_end'] = [round(x, 2) for x in os.getloadavg()]
    _common.write_json(out_path, doc)
    return 0 if doc['ok'] else 1


if __name__ == '__main__':
    sys.exit(main())
