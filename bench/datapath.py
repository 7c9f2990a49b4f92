"""Datapath benchmark: node-to-node vs pod-to-pod native (kernel routing, and eBPF host routing) vs
pod-to-pod VXLAN, BGP convergence, and the connectivity gap while a cluster switches between tunnel
and native routing.

Run: .venv/bin/python bench/datapath.py [--rounds 9] [--seconds 4] [--bgp-rounds 3] | --quick
Writes bench/results/datapath.json and prints the figures and ratios. --quick (CI: proves the
benchmark still runs, its figures mean nothing): the same labs, playbooks, iperf3 runs and pings, one
round of 1 s; one switch (tunnel -> native) overlapped with one BGP restart; written to
build/bench/datapath.quick.json.
Exits non-zero when something breaks: a missing tool, a failed playbook, iperf3 or ping, a lab
left behind. A missed target is reported (figures, `ok`), not an error. Before setup, leftovers of
the bench's own labs (pbn, pbv, pbc, pbd; a killed run) are purged; teardown runs whatever happens.

Method (DESIGN.md section 9: single pairs vary by +-6-8% on a 2-vCPU VM). The three labs below are
set up side by side first (lab_up, lab_tor, site.yml), then measured one thing at a time.
- Three labs converged with playbooks/site.yml: `pbn` (native routing, direct routes, eBPF datapath
  with podnet_datapath.host_routing kernel), `pbd` (the same with host_routing bpf: bpf_redirect_peer
  into the pod, bpf_fib_lookup + redirect out of it) and `pbv` (VXLAN overlay, host_routing kernel),
  two nodes each, the same pod MTU (1450) in all. Pods are the nodes' health endpoints (netns
  podnet-health, a veth to the node), as the product sets them up. pbd's programs must say they were
  compiled for bpf host routing (the loader's record), else the bench fails.
- Configurations are interleaved A B C D, A B C D ... over the rounds: A = node to node over the
  underlay (pbn's node1 -> node2), B = pod to pod native, kernel routing (pbn), C = pod to pod
  native, eBPF host routing (pbd), D = pod to pod VXLAN (pbv).
  Each is one iperf3 TCP stream for --seconds (client on CPU 0, server on CPU 1) and a ping RTT
  (--pings echoes, 50 by default, 10 ms apart). Figures are medians over the rounds. Each ratio is the median of the per-round paired ratios, with min-max.
- BGP convergence (lab `pbc`, three nodes peering with the ToR's FRR, BIRD on the nodes): a node's
  speaker is stopped (its route withdrawn everywhere), then site.yml --limit that node starts it
  again; the time from the speaker process's start to its pod CIDR in the ToR's FRR RIB and in a
  peer node's kernel, polled every 20 ms. Repeated --bgp-rounds times.
- Switch gap: in pbv, a pod on node1 pings a pod on node2 every 10 ms while site.yml switches the
  cluster tunnel -> native, then native -> tunnel; the gap is the longest time without a reply.
Targets (issue 4): vxlan/native >= 0.90, native/node >= 0.85, BGP convergence < 3 s; (issue 10)
bpf/node >= 0.95 and bpf/native >= 1.05 (eBPF host routing against node to node and kernel routing).
"""
from __future__ import print_function

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time

import _common  # first: makes ansible_collections.podnet.fabric importable
from _common import BenchError, nsenter as enter, playbook, run

PREFIXES = ('pbn', 'pbv', 'pbc', 'pbd')
HEALTH_NS = 'podnet-health'
TARGETS = {'vxlan/native': 0.90, 'native/node': 0.85, 'bpf/node': 0.95, 'bpf/native': 1.05, 'bgp_convergence_s': 3.0}
RATIOS = ('native/node', 'vxlan/native', 'bpf/node', 'bpf/native')
QUICK = {'rounds': 1, 'seconds': 1, 'bgp_rounds': 1, 'pings': 10}
TOOLS = ('iperf3', 'ping', 'nsenter', 'taskset', 'ip')
LABS = {'pbn': (2, 'native', 1450), 'pbv': (2, 'tunnel', 0), 'pbc': (3, 'bgp', 0), 'pbd': (2, 'native', 1450)}  # nodes, routing, mtu
HOST_ROUTING = {'pbn': 'kernel', 'pbv': 'kernel', 'pbc': 'kernel', 'pbd': 'bpf'}
SWITCHES = (('tunnel->native', 'native', 1450), ('native->tunnel', 'tunnel', 0))  # in pbv; quick: the first

CLUSTER = """---
podnet_cluster: {name: %(name)s, id: 0}
podnet_datapath: {enabled: true, host_routing: %(host_routing)s}
podnet_ipam:
  mode: cluster-pool
  ledger: {backend: file, path: "/run/podnet-lab/{{ podnet_lab_prefix }}/ledger.json"}
  cluster_pool:
    ipv4: {cidrs: [10.244.0.0/16], mask_size: 24}
podnet_routing:
%(routing)s
  masquerade: true
"""
ROUTING = {
    'native': """  mode: native
  native: {ipv4_cidr: 10.244.0.0/16, auto_direct_node_routes: true}
  mtu: %(mtu)s""",
    'tunnel': """  mode: tunnel
  tunnel: {protocol: vxlan, port: 8472, vni: 2}
  mtu: %(mtu)s""",
    'bgp': """  mode: native
  native:
    ipv4_cidr: 10.244.0.0/16
    auto_direct_node_routes: false
    bgp: {local_asn: 65001, speaker: bird, peers: [{address: 192.168.50.1, asn: 65000}]}
  mtu: %(mtu)s""",
}


def inventory(tmp, prefix, nodes, routing, mtu):
    d = os.path.join(tmp, prefix)
    os.makedirs(os.path.join(d, 'group_vars', 'all'), exist_ok=True)
    with open(os.path.join(d, 'lab.podnet.yml'), 'w') as f:
        f.write('plugin: podnet.fabric.lab\nprefix: %s\nnodes: %d\nunderlay_cidr: 192.168.50.0/24\n' % (prefix, nodes))
    write_cluster(d, prefix, routing, mtu)
    return d


def write_cluster(d, name, routing, mtu):
    with open(os.path.join(d, 'group_vars', 'all', 'cluster.yml'), 'w') as f:
        f.write(CLUSTER % {'name': name, 'routing': ROUTING[routing] % {'mtu': mtu}, 'host_routing': HOST_ROUTING[name]})


def health_ip(prefix, node):
    rc, out, err = run(enter(prefix, node, ['ip', '-4', '-o', 'addr', 'show', 'dev', 'eth0'], netns=HEALTH_NS))
    m = re.search(r'inet (\S+)/', out)
    if rc != 0 or not m:
        raise BenchError('%s/%s: no health endpoint address (%s)' % (prefix, node, err.strip()))
    return m.group(1)


def iperf(prefix, server, client, address, seconds, netns=None, port=5201):
    """One single-stream TCP run: Gbit/s received. Server on CPU 1, client on CPU 0."""
    srv = subprocess.Popen(enter(prefix, server, ['taskset', '-c', '1', 'iperf3', '-s', '-1', '-p', str(port)],
                                 netns=netns), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _attempt in range(50):
            rc, out, err = run(enter(prefix, client, ['taskset', '-c', '0', 'iperf3', '-c', address, '-p', str(port),
                                                      '-t', str(seconds), '-J'], netns=netns), timeout=seconds + 30)
            try:
                doc = json.loads(out)
            except ValueError:
                doc = {'error': out + err}
            if rc == 0 and 'sum_received' in doc.get('end', {}):
                return doc['end']['sum_received']['bits_per_second'] / 1e9
            # iperf3 -J reports a server not listening yet in 'error' (sometimes with rc 0): retry.
            if 'refused' not in str(doc.get('error')) + err:
                raise BenchError('iperf3 %s/%s -> %s failed: %s' % (prefix, client, address, (out + err)[-500:]))
            time.sleep(0.1)
        raise BenchError('iperf3 server on %s/%s never listened' % (prefix, server))
    finally:
        if srv.poll() is None:
            srv.terminate()
        srv.wait(timeout=10)


def rtt(prefix, client, address, netns=None, count=50):
    """Mean RTT in ms of `count` echoes 10 ms apart; every one must be answered."""
    rc, out, err = run(enter(prefix, client, ['ping', '-q', '-c', str(count), '-i', '0.01', address], netns=netns))
    m = re.search(r'= [\d.]+/([\d.]+)/', out)
    if rc != 0 or not m:
        raise BenchError('ping %s/%s -> %s failed: %s' % (prefix, client, address, out + err))
    return float(m.group(1))


def stats(values):
    return {'median': round(statistics.median(values), 3), 'min': round(min(values), 3),
            'max': round(max(values), 3), 'n': len(values)}


def in_parallel(*fns):
    """Run the callables in threads, wait for all of them; their results, or the first error."""
    results, errors = [None] * len(fns), []

    def call(i, fn):
        try:
            results[i] = fn()
        except BaseException as e:  # noqa: BLE001 - handed to the caller
            errors.append(e)
    threads = [threading.Thread(target=call, args=(i, fn)) for i, fn in enumerate(fns)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return results


def setup(tmp):
    """The three labs, converged with site.yml, set up side by side (nothing is measured yet; an
    idle lab costs nothing measurable later: BIRD and FRR only keep their sessions alive)."""
    invs = dict((prefix, inventory(tmp, prefix, *LABS[prefix])) for prefix in PREFIXES)

    def up(prefix):
        playbook('lab_up.yml', invs[prefix])
        if LABS[prefix][1] == 'bgp':
            playbook('lab_tor.yml', invs[prefix])
        playbook('site.yml', invs[prefix])
    in_parallel(*[lambda p=p: up(p) for p in PREFIXES])
    return invs


def host_routing_mode(prefix, node):
    """The host routing the node's programs were compiled for (the loader's record, per file)."""
    rc, out, err = run(enter(prefix, node, ['cat', '/var/lib/podnet/bpf/programs.json']))
    try:
        files = json.loads(out)['/sys/fs/bpf/podnet']
    except (ValueError, KeyError):
        raise BenchError('%s/%s: no record of the datapath programs (%s)' % (prefix, node, (out + err).strip()[-300:]))
    return sorted(set(r.get('host_routing', 'kernel') for r in files.values()))


def throughput(args):
    for prefix in ('pbn', 'pbd'):
        for node in ('node1', 'node2'):
            if host_routing_mode(prefix, node) != [HOST_ROUTING[prefix]]:
                raise BenchError('%s/%s: programs compiled for host routing %s, not %s' % (
                    prefix, node, host_routing_mode(prefix, node), HOST_ROUTING[prefix]))
    pod = {'native': health_ip('pbn', 'node2'), 'vxlan': health_ip('pbv', 'node2'), 'bpf': health_ip('pbd', 'node2')}
    configs = [('node', 'pbn', None, '192.168.50.12'), ('native', 'pbn', HEALTH_NS, pod['native']),
               ('bpf', 'pbd', HEALTH_NS, pod['bpf']), ('vxlan', 'pbv', HEALTH_NS, pod['vxlan'])]
    rounds = []
    for r in range(args.rounds):
        row = {}
        for name, prefix, netns, address in configs:
            row[name] = {'gbps': iperf(prefix, 'node2', 'node1', address, args.seconds, netns=netns),
                         'rtt_ms': rtt(prefix, 'node1', address, netns=netns, count=args.pings)}
        for ratio in RATIOS:
            a, b = ratio.split('/')
            row[ratio] = row[a]['gbps'] / row[b]['gbps']
        rounds.append(row)
        print('round %d: node %.2f, native %.2f, bpf %.2f, vxlan %.2f Gbit/s; %s' % (
            r + 1, row['node']['gbps'], row['native']['gbps'], row['bpf']['gbps'], row['vxlan']['gbps'],
            ', '.join('%s %.3f' % (x, row[x]) for x in RATIOS)), flush=True)
    out = {'rounds': rounds, 'seconds_per_run': args.seconds, 'pings_per_run': args.pings, 'pod_mtu': 1450,
           'host_routing': dict((p, HOST_ROUTING[p]) for p in ('pbn', 'pbd', 'pbv'))}
    for name in ('node', 'native', 'bpf', 'vxlan'):
        out[name] = {'gbps': stats([x[name]['gbps'] for x in rounds]),
                     'rtt_ms': stats([x[name]['rtt_ms'] for x in rounds])}
    for ratio in RATIOS:
        out[ratio] = stats([x[ratio] for x in rounds])
    return out


def _ping_gap(prefix, address, action):
    """Ping every 10 ms from node1's pod while action() runs; the longest time without a reply."""
    p = subprocess.Popen(enter(prefix, 'node1', ['ping', '-D', '-i', '0.01', '-W', '1', address], netns=HEALTH_NS),
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, universal_newlines=True)
    lines = []
    reader = threading.Thread(target=lambda: lines.extend(p.stdout))
    reader.start()
    time.sleep(1.0)
    t0 = time.time()
    action()
    t1 = time.time()
    time.sleep(1.0)
    p.terminate()
    p.wait(timeout=10)
    reader.join(timeout=10)
    stamps, seqs = [], []
    for line in lines:
        m = re.match(r'\[([\d.]+)\] \d+ bytes from .*icmp_seq=(\d+)', line)
        if m:
            stamps.append(float(m.group(1)))
            seqs.append(int(m.group(2)))
    window = [s for s in stamps if t0 - 1 <= s <= t1 + 1]
    gaps = [b - a for a, b in zip(window, window[1:])]
    sent = max(seqs) if seqs else 0
    if not window:
        raise BenchError('%s: no ping reply from %s while the cluster switched' % (prefix, address))
    return {'gap_s': round(max(gaps), 3) if gaps else None, 'lost': sent - len(set(seqs)),
            'replies': len(seqs), 'switch_run_s': round(t1 - t0, 2)}


def switch_gap(inv, switches):
    address = health_ip('pbv', 'node2')
    out = {}
    for name, routing, mtu in switches:
        write_cluster(inv, 'pbv', routing, mtu)
        out[name] = _ping_gap('pbv', address, lambda: playbook('site.yml', inv))
        g = out[name]
        print('switch %s: gap %s s, %d lost, site.yml %.1f s' % (name, g['gap_s'], g['lost'], g['switch_run_s']),
              flush=True)
    return out


def _bird_pid(prefix, node):
    ns = os.stat('/run/netns/%s-%s' % (prefix, node)).st_ino
    for pid in os.listdir('/proc'):
        if not pid.isdigit():
            continue
        try:
            with open('/proc/%s/comm' % pid) as f:
                comm = f.read().strip()
            if comm == 'bird' and os.stat('/proc/%s/ns/net' % pid).st_ino == ns:
                return int(pid)
        except OSError:
            continue
    return None


def _start_time(pid):
    with open('/proc/%d/stat' % pid) as f:
        ticks = int(f.read().rsplit(')', 1)[1].split()[19])
    with open('/proc/stat') as f:
        btime = int(re.search(r'^btime (\d+)', f.read(), re.M).group(1))
    return btime + ticks / float(os.sysconf('SC_CLK_TCK'))


def _tor_has(prefix, cidr, nexthop):
    rc, out, err = run(enter(prefix, 'tor', ['vtysh', '-c', 'show ip bgp %s json' % cidr]), timeout=10)
    try:
        doc = json.loads(out or '{}')
    except ValueError:
        return False
    for path in doc.get('paths', []):
        if any(h.get('ip') == nexthop for h in path.get('nexthops', [])):
            return True
    return False


def _kernel_has(prefix, node, cidr):
    rc, out, err = run(enter(prefix, node, ['ip', '-4', 'route', 'show', cidr]), timeout=10)
    return bool(out.strip())


def bgp_convergence(args, inv):
    with open(os.path.join(_common.lab_utils.lab_dir('pbc'), 'ledger.json')) as f:
        cidr = json.load(f)['nodes']['node3']['cidrs']['ipv4'][0]
    samples = []
    for r in range(args.bgp_rounds):
        pid = _bird_pid('pbc', 'node3')
        if pid is None:
            raise BenchError('bgp: no BIRD process in pbc/node3')
        os.kill(pid, 15)  # the lab's own speaker, which site.yml started in our lab
        deadline = time.time() + 15
        while _tor_has('pbc', cidr, '192.168.50.13') or _kernel_has('pbc', 'node1', cidr):
            if time.time() > deadline:
                raise BenchError('bgp: %s still routed 15 s after node3\'s speaker stopped' % cidr)
            time.sleep(0.05)
        done = {}
        finished = threading.Event()

        def poll():
            # until both have the route, or 60 s after site.yml ended (however long it took)
            end = None
            while len(done) < 2 and (end is None or time.time() < end):
                if end is None and finished.is_set():
                    end = time.time() + 60
                now = time.time()
                if 'tor' not in done and _tor_has('pbc', cidr, '192.168.50.13'):
                    done['tor'] = now
                if 'peer' not in done and _kernel_has('pbc', 'node1', cidr):
                    done['peer'] = now
                time.sleep(0.02)
        t = threading.Thread(target=poll)
        t.start()
        try:
            playbook('site.yml', inv, '--limit', 'node3')
        finally:
            finished.set()
            t.join()
        pid = _bird_pid('pbc', 'node3')
        if pid is None or len(done) < 2:
            raise BenchError('bgp: node3 speaker did not converge (pid %s, seen %s)' % (pid, sorted(done)))
        start = _start_time(pid)
        sample = {'tor_s': round(done['tor'] - start, 3), 'peer_s': round(done['peer'] - start, 3)}
        samples.append(sample)
        print('bgp round %d: route at the ToR %.2f s, at node1 %.2f s after the speaker started' % (
            r + 1, sample['tor_s'], sample['peer_s']), flush=True)
    return {'rounds': samples, 'tor_s': stats([s['tor_s'] for s in samples]),
            'peer_s': stats([s['peer_s'] for s in samples]), 'cidr': cidr}


PHASES = []
_T0 = [time.time()]


def _phase(name):
    """Wall time of each part of the run (printed, and kept in the JSON)."""
    now = time.time()
    PHASES.append({'phase': name, 's': round(now - _T0[0], 1)})
    _T0[0] = now
    print('[%5.1f s] %s' % (PHASES[-1]['s'], name), flush=True)


def teardown(tmp):
    """lab_down.yml for each lab the run set up (side by side); purge whatever is left. Never
    raises: returns what went wrong (a failed lab_down is a failure even when purge cleans up)."""
    problems = []

    def down(inv):
        try:
            playbook('lab_down.yml', inv)
        except Exception as e:  # noqa: BLE001 - every lab must still be torn down
            problems.append(str(e))
    invs = [os.path.join(tmp, p) for p in PREFIXES if os.path.isdir(os.path.join(tmp, p))]
    in_parallel(*[lambda i=i: down(i) for i in invs])
    for prefix in PREFIXES:
        if _common.leftovers(prefix):
            problems.append('lab %s left behind: %s' % (prefix, ' '.join(_common.leftovers(prefix))))
            try:
                _common.purge(prefix)
            except Exception as e:  # noqa: BLE001
                problems.append('purge %s: %s' % (prefix, e))
    shutil.rmtree(tmp, ignore_errors=True)
    _phase('teardown')
    return problems


def measure(args, tmp):
    invs = setup(tmp)
    _phase('labs %s up and converged' % ', '.join(PREFIXES))
    tput = throughput(args)
    _phase('throughput and RTT, %d rounds' % args.rounds)
    switches = SWITCHES[:1] if args.quick else SWITCHES
    if args.quick:
        # a quick run's figures mean nothing: overlap the two to save a site.yml run's time
        gap, bgp = in_parallel(lambda: switch_gap(invs['pbv'], switches), lambda: bgp_convergence(args, invs['pbc']))
        _phase('switch gap and BGP convergence (overlapped)')
    else:
        gap = switch_gap(invs['pbv'], switches)
        _phase('switch gaps')
        bgp = bgp_convergence(args, invs['pbc'])
        _phase('BGP convergence, %d rounds' % args.bgp_rounds)
    return tput, gap, bgp


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n', maxsplit=1)[0])
    ap.add_argument('--rounds', type=int, default=9)
    ap.add_argument('--seconds', type=int, default=4, help='iperf3 seconds per run')
    ap.add_argument('--bgp-rounds', type=int, default=3)
    ap.add_argument('--pings', type=int, default=50, help='echoes per RTT figure')
    ap.add_argument('--quick', action='store_true',
                    help='%(rounds)d round, %(seconds)d s iperf3, %(bgp_rounds)d BGP round, %(pings)d pings; '
                         'results in build/bench/ (CI smoke run)' % QUICK)
    ap.add_argument('--out', help='default: bench/results/datapath.json (--quick: build/bench/datapath.quick.json)')
    args = ap.parse_args()
    if args.quick:
        for k, v in QUICK.items():
            setattr(args, k, v)
    elif args.rounds < 5:
        ap.error('--rounds: at least 5 (single pairs vary by +-6-8%)')
    out_path = args.out or _common.results_path('datapath', args.quick)
    t_start = time.time()
    try:
        _common.need_tools(*TOOLS)
        prov = _common.provenance()
        for prefix in PREFIXES:
            if _common.leftovers(prefix):
                print('removing leftovers of lab %s: %s' % (prefix, ' '.join(_common.leftovers(prefix))), flush=True)
                _common.purge(prefix)
    except BenchError as e:
        raise SystemExit('datapath bench: %s' % e)
    _phase('preflight')
    tmp = tempfile.mkdtemp(prefix='podnet-bench-')
    try:
        tput, gap, bgp = measure(args, tmp)
    except BaseException as e:  # KeyboardInterrupt too: the labs must go
        problems = teardown(tmp)
        for p in problems:
            sys.stderr.write('teardown: %s\n' % p)
        if isinstance(e, BenchError):
            raise SystemExit('datapath bench: %s' % e)
        raise
    problems = teardown(tmp)
    if problems:
        raise SystemExit('datapath bench: teardown: %s' % '; '.join(problems))

    doc = {'benchmark': 'datapath', 'quick': args.quick,
           'settings': {'rounds': args.rounds, 'seconds': args.seconds, 'bgp_rounds': args.bgp_rounds,
                        'pings': args.pings},
           'method': 'iperf3 single TCP stream, client CPU 0, server CPU 1; configurations interleaved '
                     'node, native (kernel routing), bpf (eBPF host routing), vxlan per round; figures are medians '
                     'over the rounds; ratios = median of per-round paired ratios',
           'throughput': tput, 'switch': gap, 'bgp_convergence': bgp, 'targets': TARGETS,
           'phases': PHASES, 'wall_s': round(time.time() - t_start, 1),
           'ok': {'vxlan/native': tput['vxlan/native']['median'] >= TARGETS['vxlan/native'],
                  'native/node': tput['native/node']['median'] >= TARGETS['native/node'],
                  'bpf/node': tput['bpf/node']['median'] >= TARGETS['bpf/node'],
                  'bpf/native': tput['bpf/native']['median'] >= TARGETS['bpf/native'],
                  'bgp_convergence': max(bgp['tor_s']['median'], bgp['peer_s']['median']) < TARGETS['bgp_convergence_s']}}
    doc.update(prov)
    doc['machine']['loadavg_at_end'] = [round(x, 2) for x in os.getloadavg()]
    print()
    print('%-22s %10s %18s %10s' % ('path', 'Gbit/s', 'min-max', 'RTT ms'))
    for name, label in (('node', 'node to node'), ('native', 'pod to pod native'), ('bpf', 'pod to pod bpf host rt'),
                        ('vxlan', 'pod to pod VXLAN')):
        g = tput[name]['gbps']
        span = '%.2f-%.2f' % (g['min'], g['max'])
        print('%-22s %10.2f %18s %10.3f' % (label, g['median'], span, tput[name]['rtt_ms']['median']))
    for ratio in RATIOS:
        s = tput[ratio]
        print('%-22s %10.3f %18s   target >= %.2f %s' % (ratio, s['median'], '%.3f-%.3f' % (s['min'], s['max']),
                                                         TARGETS[ratio], 'ok' if doc['ok'][ratio] else 'MISSED'))
    print('BGP convergence: ToR %.2f s, peer %.2f s (median of %d; target < %.0f s) %s' % (
        bgp['tor_s']['median'], bgp['peer_s']['median'], len(bgp['rounds']), TARGETS['bgp_convergence_s'],
        'ok' if doc['ok']['bgp_convergence'] else 'MISSED'))
    for name, g in gap.items():
        print('switch %s: longest gap %s s, %d pings lost' % (name, g['gap_s'], g['lost']))
    print('%s run: %.1f s (nproc %d, commit %s%s)' % (
        'quick' if args.quick else 'full', doc['wall_s'], doc['machine']['nproc'],
        (doc['git']['commit'] or '?')[:10], ', dirty' if doc['git']['dirty'] else ''))
    _common.write_json(out_path, doc)
    return 0


if __name__ == '__main__':
    sys.exit(main())
