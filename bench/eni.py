"""ENI benchmark: podnet.fabric.eni_allocate planning and converging a fleet against the local EC2 endpoint.

Run: .venv/bin/python bench/eni.py [--sizes 50,200] [--rounds 5] [--workers 4] | --quick
Writes bench/results/eni.json and prints a table with the targets (issue 11): a no-op run of 200 nodes
under 2 s, and a no-op run's describe calls independent of the node count (the same at every size).
--quick (CI: proves the benchmark still runs; its figures mean nothing): 10 and 20 nodes, one round,
written to build/bench/eni.quick.json. Exits 2 when something breaks (the emulator, a failed run, a fleet
that is not converged after the first run, a no-op run that writes), 1 when a target is missed.

What is measured, per size and round (sizes interleaved in every round, each round from a fresh EC2):
- the EC2 endpoint is plugins/plugin_utils/ec2_emulator.py (moto in server mode on 127.0.0.1, one request
  at a time), a child process of this script, ended by its PID; each round resets it and seeds a VPC, a
  /16 subnet and one c5.large instance per node (not timed);
- first: eni_allocate's ActionModule.run() in this process (as Ansible's TaskExecutor builds it, a task
  that never connects) with the validated model: first_interface_index 1, pre_allocate 8, so every node
  gets one ENI of ours with 8 secondary IPs (create, attach, DeleteOnTermination: 3 writes a node), plus
  the ledger record; wall time, the client's calls by operation and the server's answered requests;
- noop: the same action again: reads only (the figure the target is about).
The fleet's state is checked after each run through the EC2 API (each node one ENI of ours holding 8).
Figures are medians over the rounds with min-max.
"""
from __future__ import print_function

import argparse
import ctypes
import importlib
import json
import os
import select
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import types
import urllib.request

import _common
from _common import BenchError

QUICK = {'sizes': [10, 20], 'rounds': 1}
TARGET_NOOP_S = 2.0
TARGET_NOOP_N = 200
REGION = 'us-east-1'
CLUSTER = 'pbe'
EMULATOR = os.path.join(_common.ROOT, 'plugins', 'plugin_utils', 'ec2_emulator.py')
GROUP = 'podnet_nodes'


def use_aws_env():
    """This process and its children: dummy credentials, loopback without a proxy, no metadata lookups."""
    e = os.environ
    e.update(AWS_ACCESS_KEY_ID='testing', AWS_SECRET_ACCESS_KEY='testing', AWS_DEFAULT_REGION=REGION,
             AWS_EC2_METADATA_DISABLED='true', NO_PROXY='127.0.0.1', no_proxy='127.0.0.1')
    for k in ('AWS_PROFILE', 'AWS_SESSION_TOKEN', 'HTTP_PROXY', 'HTTPS_PROXY', 'http_proxy', 'https_proxy'):
        e.pop(k, None)


def _die_with_parent():
    """preexec_fn: the child gets SIGTERM if this script dies without ending it (prctl PDEATHSIG)."""
    try:
        ctypes.CDLL('libc.so.6', use_errno=True).prctl(1, signal.SIGTERM)
    except OSError:  # pragma: no cover - not glibc
        pass


class Emulator(object):
    def __init__(self):
        self.proc = subprocess.Popen([sys.executable, EMULATOR, '--port', '0'], stdout=subprocess.PIPE,
                                     universal_newlines=True, preexec_fn=_die_with_parent)
        ready, _w, _x = select.select([self.proc.stdout], [], [], 60)
        line = self.proc.stdout.readline() if ready else ''
        if not line:
            self.stop()
            raise BenchError('the EC2 emulator did not start (rc %s)' % self.proc.poll())
        self.url = 'http://127.0.0.1:%d' % json.loads(line)['port']

    def post(self, path, doc=None):
        req = urllib.request.Request(self.url + path, data=json.dumps(doc).encode() if doc is not None else b'',
                                     method='POST')
        return json.loads(urllib.request.urlopen(req, timeout=60).read() or b'{}')

    def stats(self):
        return json.loads(urllib.request.urlopen(self.url + '/podnet-emulator/stats', timeout=60).read())

    def stop(self):
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


def _action(cls, args, check=False):
    """An action plugin as Ansible's TaskExecutor builds it, for a task that never connects (bench/fleet.py)."""
    from ansible.playbook.task import Task
    task = Task()
    task.args = args
    task.check_mode = check
    conn = types.SimpleNamespace(_shell=types.SimpleNamespace(tmpdir=None))
    return cls(task, conn, None, None, None, None)


def setup(emu, n, where):
    """A fresh EC2 with n c5.large instances; the validated model for them."""
    import boto3
    from ansible_collections.podnet.fabric.plugins.plugin_utils import ec2_emulator, inventory
    emu.post('/moto-api/reset')
    ec2 = boto3.client('ec2', region_name=REGION, endpoint_url=emu.url)
    hosts = ['node%d' % i for i in range(1, n + 1)]
    lab = ec2_emulator.seed(ec2, dict((h, 'c5.large') for h in hosts), vpc_cidr='10.30.0.0/16',
                            subnets=[{'cidr': '10.30.0.0/16'}])
    cv = {'podnet_cluster': {'name': CLUSTER, 'id': 9},
          'podnet_ipam': {'mode': 'eni', 'ledger': {'backend': 'file', 'path': os.path.join(where, 'ledger.json')}},
          'podnet_routing': {'mode': 'eni'},
          'podnet_eni': {'region': REGION, 'endpoint_url': emu.url, 'first_interface_index': 1, 'pre_allocate': 8}}
    nodes = dict((h, {'podnet_node_ip': '10.255.%d.%d' % (i // 250, i % 250 + 1),
                      'podnet_instance': {'id': lab['instances'][h], 'type': 'c5.large'}}) for i, h in enumerate(hosts))
    return ec2, inventory.validate(cv, nodes), hosts


def converged(ec2, hosts):
    """Each node exactly one ENI of ours, attached, holding 8 secondary IPs (through the EC2 API)."""
    from ansible_collections.podnet.fabric.plugins.plugin_utils import eni_plan
    per = {}
    for e in ec2.describe_network_interfaces(Filters=[{'Name': 'tag:%s' % eni_plan.TAG_CLUSTER, 'Values': [CLUSTER]}])[
            'NetworkInterfaces']:
        node = dict((t['Key'], t['Value']) for t in e['TagSet']).get(eni_plan.TAG_NODE)
        ok = e['Status'] == 'in-use' and len(e['PrivateIpAddresses']) == 9
        per[node] = per.get(node, []) + [ok]
    bad = [h for h in hosts if per.get(h) != [True]]
    return bad


def one_run(emu, model, hosts, workers, check_changed):
    from ansible_collections.podnet.fabric.plugins.action import eni_allocate
    emu.post('/podnet-emulator/stats/reset')
    task_vars = {'groups': {GROUP: list(hosts)}, 'hostvars': {'localhost': {'podnet_model': model}}}
    t0 = time.perf_counter()
    res = _action(eni_allocate.ActionModule, {'group': GROUP, 'model': model, 'workers': workers}).run(task_vars=task_vars)
    wall = time.perf_counter() - t0
    if res.get('failed'):
        raise BenchError('eni_allocate failed: %s' % res.get('msg'))
    if bool(res.get('changed')) != check_changed:
        raise BenchError('eni_allocate: changed=%s, expected %s: %s' % (res.get('changed'), check_changed, res.get('msg')))
    st = emu.stats()
    served = st['requests']
    calls = res['api_calls']
    return {'wall_s': wall, 'describe_calls': calls['describe_calls'], 'write_calls': calls['write_calls'],
            'server_s': sum(st.get('seconds', {}).values()), 'server_requests': sum(served.values()),
            'server_writes': sum(v for k, v in served.items() if not k.startswith('Describe'))}, calls['calls']


def stats(values):
    return {'median': statistics.median(values), 'min': min(values), 'max': max(values), 'n': len(values)}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n', maxsplit=1)[0])
    ap.add_argument('--sizes', default='50,200')
    ap.add_argument('--rounds', type=int, default=5)
    ap.add_argument('--workers', type=int, default=4)
    ap.add_argument('--quick', action='store_true', help='%s nodes, %d round, results in build/bench/'
                    % (QUICK['sizes'], QUICK['rounds']))
    ap.add_argument('--out')
    args = ap.parse_args()
    sizes = sorted(int(x) for x in args.sizes.split(',') if x)
    rounds = args.rounds
    if args.quick:
        sizes, rounds = list(QUICK['sizes']), QUICK['rounds']
    out_path = args.out or _common.results_path('eni', args.quick)
    prov = _common.provenance()
    t_start = time.monotonic()
    use_aws_env()
    importlib.import_module('boto3')     # before timing, as an Ansible worker has it once imported
    tmp = tempfile.mkdtemp(prefix='pbe-eni-')
    samples = dict((n, {'first': [], 'noop': []}) for n in sizes)
    ops = dict((n, {}) for n in sizes)
    emu = None
    try:
        emu = Emulator()
        for r in range(rounds):
            for n in sizes:
                where = os.path.join(tmp, 'r%d-n%d' % (r, n))
                os.makedirs(where)
                ec2, model, hosts = setup(emu, n, where)
                first, first_ops = one_run(emu, model, hosts, args.workers, True)
                bad = converged(ec2, hosts)
                if bad:
                    raise BenchError('%d nodes: not converged after the first run: %s' % (n, ', '.join(bad[:5])))
                noop, noop_ops = one_run(emu, model, hosts, args.workers, False)
                if noop['server_writes']:
                    raise BenchError('%d nodes: the no-op run wrote %d times' % (n, noop['server_writes']))
                samples[n]['first'].append(first)
                samples[n]['noop'].append(noop)
                ops[n] = {'first': first_ops, 'noop': noop_ops}
                print('round %d, %d nodes: first %.2f s (%d describe, %d write calls), no-op %.2f s (%d describe calls)' % (
                    r + 1, n, first['wall_s'], first['describe_calls'], first['write_calls'], noop['wall_s'],
                    noop['describe_calls']), flush=True)
    finally:
        if emu is not None:
            emu.stop()
        shutil.rmtree(tmp, ignore_errors=True)

    results = dict((str(n), dict((phase, dict((k, stats([row[k] for row in rows])) for k in rows[0]))
                                 for phase, rows in samples[n].items())) for n in sizes)
    noop_describes = set(row['describe_calls'] for n in sizes for row in samples[n]['noop'])
    checks = {'noop_describe_calls_flat': len(noop_describes) == 1,
              'noop_describe_calls': sorted(noop_describes)}
    if str(TARGET_NOOP_N) in results:
        checks['noop_%d_s' % TARGET_NOOP_N] = results[str(TARGET_NOOP_N)]['noop']['wall_s']['median']
        checks['noop_ok'] = checks['noop_%d_s' % TARGET_NOOP_N] < TARGET_NOOP_S
    report(results, sizes, rounds)
    judged = [checks['noop_describe_calls_flat']] + ([checks['noop_ok']] if 'noop_ok' in checks else [])
    doc = {'benchmark': 'eni', 'quick': args.quick, 'sizes': sizes, 'rounds': rounds, 'workers': args.workers,
           'config': {'instance_type': 'c5.large', 'first_interface_index': 1, 'pre_allocate': 8,
                      'endpoint': 'plugins/plugin_utils/ec2_emulator.py (moto server on 127.0.0.1, one request at a time)',
                      'ledger': 'file'},
           'targets': {'noop_s': TARGET_NOOP_S, 'noop_nodes': TARGET_NOOP_N, 'noop_describe_calls': 'the same at every size'},
           'method': 'each round: for every size, a fresh EC2 (reset and seeded, not timed), the first run, then a no-op run, '
                     'both eni_allocate ActionModule.run() in this process; medians over the rounds with min and max',
           'results': results, 'calls_by_operation_last_round': dict((str(n), ops[n]) for n in sizes),
           'checks': checks, 'elapsed_s': time.monotonic() - t_start,
           'ok': all(judged) if not args.quick else True}
    doc.update(prov)
    doc['machine']['loadavg_at_end'] = [round(x, 2) for x in os.getloadavg()]
    _common.write_json(out_path, _rounded(doc))
    if not all(judged):
        print('target missed: %s' % json.dumps(checks))
    return 0 if doc['ok'] else 1


def report(results, sizes, rounds):
    print('\neni_allocate against the EC2 emulator, %d round%s (median, min-max)' % (rounds, '' if rounds == 1 else 's'))
    header = ('nodes', 'run', 'wall s', 'of which EC2 endpoint s', 'describe calls', 'write calls')
    print('%-6s %-6s %-22s %-22s %-16s %-14s' % header)
    for n in sizes:
        for phase in ('first', 'noop'):
            row = results[str(n)][phase]
            print('%-6d %-6s %-22s %-22s %-16s %-14s' % (
                n, phase, '%.2f (%.2f-%.2f)' % (row['wall_s']['median'], row['wall_s']['min'], row['wall_s']['max']),
                '%.2f (%.2f-%.2f)' % (row['server_s']['median'], row['server_s']['min'], row['server_s']['max']),
                '%g' % row['describe_calls']['median'], '%g' % row['write_calls']['median']))


def _rounded(value):
    if isinstance(value, float):
        return round(value, 4)
    if isinstance(value, dict):
        return dict((k, _rounded(v)) for k, v in value.items())
    if isinstance(value, list):
        return [_rounded(v) for v in value]
    return value


if __name__ == '__main__':
    try:
        sys.exit(main())
    except BenchError as e:
        sys.stderr.write('bench/eni.py: %s\n' % e)
        sys.exit(2)
