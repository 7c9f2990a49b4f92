"""Policy change to enforcement on the 3-node lab: the time from a rule change in the inventory to the
new verdict on every node, through playbooks/policy.yml (the policy pass: the datapath's maps alone),
and what an allowed flow loses meanwhile.

Run: .venv/bin/python bench/policy_change.py [--rounds 5] | --quick
Writes bench/results/policy_change.json. --quick (CI: proves the benchmark still runs, its figures
mean nothing): one round, written to build/bench/policy_change.quick.json. Exits non-zero when
something breaks (a playbook, a probe that never saw the change, an allowed connection that did not
start); a missed target is reported, not an error. Leftovers of the lab `pbq` (a killed run) are
purged first; teardown runs whatever happens.

Method. Lab `pbq`: 3 nodes, VXLAN, the eBPF datapath with its defaults (host routing bpf),
converged by site.yml. Endpoints (podnet_endpoints): web-N {app: web} and client-N {app: client} on
each node N. Rule 1 (`web`) lets clients reach web endpoints on any TCP port. An echo server runs in
each web endpoint on 8080. Each round:
- on every node N, client-N holds one connection to web-M (M = the next node: every flow crosses the
  tunnel) on 8080, a 1-byte request and reply every 10 ms, and probes web-M on TCP 9999 every 20 ms
  (no listener: a refusal means delivered, no answer in 0.2 s dropped);
- the inventory's rule 1 gains `ingress_deny` from clients on TCP 9999, and policy.yml runs;
- the figure is the time from the write to the last node's first dropped probe (every node's
  verdict changed), beside policy.yml's wall time; the held connections must lose no request;
- the deny is removed again with policy.yml (untimed), so each round starts from the same policy.
Target (issue 10): under 5 s, and no request of an allowed flow lost.
"""
from __future__ import print_function

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

import yaml

import _common  # first: makes ansible_collections.podnet.fabric importable
from _common import BenchError, ROOT, VENV_BIN

PREFIX = 'pbq'
NODES = ('node1', 'node2', 'node3')
ECHO_PORT = 8080
PROBE_PORT = 9999
TARGETS = {'enforced_after_s': 5.0, 'lost_requests': 0}
RULE = {'name': 'web', 'endpoint_selector': {'app': 'web'},
        'ingress': [{'from_endpoints': [{'app': 'client'}]}]}
DENY = [{'from_endpoints': [{'app': 'client'}], 'to_ports': [{'port': PROBE_PORT, 'protocol': 'tcp'}]}]
POLICY_BENCH = os.path.join(ROOT, 'bench', 'policy.py')   # its --child hold / probe


# ---------------------------------------------------------------- children (inside endpoints)

def child_echo(port):
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(('0.0.0.0', port))
    s.listen(16)
    print('ready', flush=True)

    def echo(c):
        with c:
            while True:
                d = c.recv(64)
                if not d:
                    return
                c.sendall(d)
    while True:
        c, _a = s.accept()
        threading.Thread(target=echo, args=(c,), daemon=True).start()


# ---------------------------------------------------------------- the lab

def next_node(n):
    return NODES[(NODES.index(n) + 1) % len(NODES)]


def inventory(directory):
    os.makedirs(os.path.join(directory, 'group_vars', 'all'), exist_ok=True)
    os.makedirs(os.path.join(directory, 'host_vars'), exist_ok=True)
    with open(os.path.join(directory, 'lab.podnet.yml'), 'w') as f:
        f.write('plugin: podnet.fabric.lab\nprefix: %s\nnodes: %d\nunderlay_cidr: 192.168.50.0/24\n' % (PREFIX, len(NODES)))
    shutil.copy(os.path.join(ROOT, 'inventories', 'lab', 'group_vars', 'all', 'cluster.yml'),
                os.path.join(directory, 'group_vars', 'all', 'cluster.yml'))
    for i, n in enumerate(NODES, 1):
        with open(os.path.join(directory, 'host_vars', n + '.yml'), 'w') as f:
            yaml.safe_dump({'podnet_endpoints': [{'name': 'web-%d' % i, 'labels': {'app': 'web'}},
                                                 {'name': 'client-%d' % i, 'labels': {'app': 'client'}}]}, f)
    write_policy(directory, deny=False)
    return directory


def write_policy(directory, deny):
    rule = dict(RULE, ingress_deny=DENY) if deny else RULE
    with open(os.path.join(directory, 'group_vars', 'all', 'datapath.yml'), 'w') as f:
        yaml.safe_dump({'podnet_datapath': {'enabled': True}, 'podnet_policy': {'rules': [rule]}}, f)


def ep(n, kind):
    return 'default.%s-%d' % (kind, NODES.index(n) + 1)


def address(n, netns):
    out = subprocess.run(_common.nsenter(PREFIX, n, ['ip', '-4', '-j', 'addr', 'show', 'dev', 'eth0'], netns=netns),
                         stdout=subprocess.PIPE, universal_newlines=True, check=True).stdout
    return json.loads(out)[0]['addr_info'][0]['local']


def spawn(n, netns, argv):
    return subprocess.Popen(_common.nsenter(PREFIX, n, [os.path.join(VENV_BIN, 'python')] + [str(a) for a in argv], netns=netns),
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, universal_newlines=True)


# ---------------------------------------------------------------- one round

def one_round(inv, webs):
    holds, probes = {}, {}
    try:
        for n in NODES:
            target = webs[next_node(n)]
            holds[n] = spawn(n, ep(n, 'client'), [POLICY_BENCH, '--child', 'hold', target, '120'])
            probes[n] = spawn(n, ep(n, 'client'), [POLICY_BENCH, '--child', 'probe', target, PROBE_PORT, '120'])
        for n in NODES:
            if holds[n].stdout.readline().strip() != 'connected' or probes[n].stdout.readline().strip() != 'probing':
                raise BenchError('%s: the allowed connection or the probe did not start' % n)
        time.sleep(0.5)
        t0 = time.monotonic()
        write_policy(inv, deny=True)
        _common.playbook('policy.yml', inv)
        t1 = time.monotonic()
        probed = dict((n, json.loads(probes[n].communicate(timeout=150)[0].strip().splitlines()[-1])) for n in NODES)
        time.sleep(0.5)   # the allowed connections go on past the change
        held = dict((n, json.loads(holds[n].communicate(input='', timeout=30)[0].strip().splitlines()[-1])) for n in NODES)
    finally:
        _common.stop(list(holds.values()) + list(probes.values()))
    never = [n for n in NODES if probed[n]['dropped_at'] is None]
    if never:
        raise BenchError('the deny was never enforced on %s: %s' % (', '.join(never), probed))
    write_policy(inv, deny=False)
    _common.playbook('policy.yml', inv)
    return {'enforced_after_s': round(max(p['dropped_at'] for p in probed.values()) - t0, 3),
            'policy_yml_s': round(t1 - t0, 3),
            'first_node_s': round(min(p['dropped_at'] for p in probed.values()) - t0, 3),
            'requests': sum(h['requests'] for h in held.values()),
            'lost_requests': sum(h['lost'] for h in held.values()),
            'slowest_reply_s': max(h['slowest_reply_s'] for h in held.values())}


def stats(values):
    return {'median': round(statistics.median(values), 3), 'min': min(values), 'max': max(values)}


def measure(args, tmp):
    inv = inventory(os.path.join(tmp, 'inv'))
    servers = []
    try:
        t = time.monotonic()
        _common.playbook('lab_up.yml', inv)
        _common.playbook('site.yml', inv, '-e', 'podnet_site_verify=false')
        setup_s = time.monotonic() - t
        webs = dict((n, address(n, ep(n, 'web'))) for n in NODES)
        for n in NODES:
            servers.append(spawn(n, ep(n, 'web'), [os.path.abspath(__file__), '--child', 'echo', ECHO_PORT]))
            if servers[-1].stdout.readline().strip() != 'ready':
                raise BenchError('%s: the echo server did not start' % n)
        rounds = []
        for r in range(args.rounds):
            rounds.append(one_round(inv, webs))
            print('round %d: %s' % (r + 1, json.dumps(rounds[-1])), flush=True)
    finally:
        _common.stop(servers)
        try:
            _common.playbook('lab_down.yml', inv)
        finally:
            _common.purge(PREFIX)
    return setup_s, rounds


def main():
    if len(sys.argv) > 1 and sys.argv[1] == '--child':
        child_echo(int(sys.argv[3]))
        return 0
    ap = argparse.ArgumentParser(description=__doc__.split('\n', maxsplit=1)[0])
    ap.add_argument('--rounds', type=int, default=5)
    ap.add_argument('--quick', action='store_true', help='one round; results in build/bench/ (CI smoke run)')
    ap.add_argument('--out', help='default: bench/results/policy_change.json (--quick: build/bench/policy_change.quick.json)')
    args = ap.parse_args()
    if args.quick:
        args.rounds = 1
    elif args.rounds < 5:
        ap.error('--rounds: at least 5')
    out_path = args.out or _common.results_path('policy_change', args.quick)
    t_start = time.time()
    prov = _common.provenance()
    if _common.leftovers(PREFIX):
        print('removing leftovers of lab %s' % PREFIX, flush=True)
        _common.purge(PREFIX)
    tmp = tempfile.mkdtemp(prefix='podnet-bench-')
    try:
        setup_s, rounds = measure(args, tmp)
    except BenchError as e:
        raise SystemExit('policy_change bench: %s' % e)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    figures = dict((k, stats([r[k] for r in rounds])) for k in ('enforced_after_s', 'policy_yml_s', 'first_node_s'))
    figures['lost_requests'] = sum(r['lost_requests'] for r in rounds)
    figures['requests'] = sum(r['requests'] for r in rounds)
    ok = {'enforced_after_s': figures['enforced_after_s']['median'] < TARGETS['enforced_after_s'],
          'lost_requests': figures['lost_requests'] == TARGETS['lost_requests']}
    doc = {'benchmark': 'policy_change', 'quick': args.quick, 'nodes': len(NODES), 'rounds': rounds,
           'figures': figures, 'targets': TARGETS, 'ok': ok, 'setup_s': round(setup_s, 1),
           'wall_s': round(time.time() - t_start, 1)}
    doc.update(prov)
    _common.write_json(out_path, doc)
    print('policy change to enforcement, %d nodes, %d rounds: every node %.2f s median (%.2f-%.2f), policy.yml %.2f s, '
          'lost %d of %d requests; targets %s -> %s' % (
              len(NODES), len(rounds), figures['enforced_after_s']['median'], figures['enforced_after_s']['min'],
              figures['enforced_after_s']['max'], figures['policy_yml_s']['median'], figures['lost_requests'],
              figures['requests'], TARGETS, ok), flush=True)
    return 0


if __name__ == '__main__':
    sys.exit(main())
