"""kill -9 of site.yml at random moments, then reruns, on a real lab (prefix `prk`).

First a clean converge of a fresh lab is timed (T, and when each task began) and its kernel
objects recorded as the reference. Then each trial builds a fresh lab, starts site.yml in a process
group of its own and kills the whole group with SIGKILL at a moment m picked from [0, T)
(stratified: trial i of N in [T*i/N, T*(i+1)/N), seeded, the seed printed). The machine's load
moves a run's speed a lot (2x between two runs is common here), so m is placed by progress, not by
the clock: the trial waits for the task the clean converge was running at m, then for the time the
clean converge had spent in it by m, scaled by how much slower or faster this run reached that
task. Then it checks that:
- no process of the killed run survives;
- the rerun converges: rc 0 with site.yml's closing verify play, so verify passes in it (the
  other runs here leave that play out, as labutil does by default), and a third run reports
  changed=0 on every node;
- the ledger is valid, holds no CIDR twice, and equals the clean converge's; every lease equals its
  ledger entry;
- nothing leaked: the nodes' devices, addresses, proto-201 routes, rules, FDB entries on
  podnet_vxlan, permanent and proxy neighbours, nftables ruleset, network namespaces, processes
  (exactly one health responder) and the state files under /var/lib/podnet and /run/podnet equal
  the clean converge's.

PODNET_KILL_TRIALS (default 3) sets the number of trials, PODNET_KILL_SEED replays a run.
"""
import bisect
import ipaddress
import json
import os
import random
import re
import signal
import time

import pytest

from labutil import (LAB_ROOT, assert_lab_gone, group_alive, nsenter, purge, recap, run_ok, start_playbook,
                     write_lab_inventory)

from ansible_collections.podnet.fabric.plugins.module_utils import health
from ansible_collections.podnet.fabric.plugins.module_utils.ipam import lease as ipam_lease
from ansible_collections.podnet.fabric.plugins.module_utils import lab as lab_utils
from ansible_collections.podnet.fabric.plugins.plugin_utils import ledger as ledger_utils

WITH_VERIFY = ['-e', 'podnet_site_verify=true']
PREFIX = 'prk'
NODES = ['node1', 'node2']
LEDGER = os.path.join(LAB_ROOT, PREFIX, 'ledger.json')
LEASE = '/var/lib/podnet/ipam/lease.json'
TRIALS = int(os.environ.get('PODNET_KILL_TRIALS') or 3)

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason='the lab needs root')


def _json(node, argv):
    return json.loads(nsenter(PREFIX, node, argv) or '[]')


def _routes(node, netns=None):
    pre = ['ip', '-n', netns] if netns else ['ip']
    out = []
    for fam in ('-4', '-6'):
        for r in _json(node, pre + [fam, '-j', '-N', 'route', 'show', 'table', 'all', 'proto', '201']):
            out.append(dict((k, r.get(k)) for k in ('dst', 'gateway', 'dev', 'table', 'scope', 'flags', 'metric')))
    return sorted(out, key=json.dumps)


def _processes(node):
    """The processes living in the node's namespaces, by what they are; health responders counted."""
    out = {'health responders': 0, 'other': []}
    for pid in lab_utils.member_pids(PREFIX, node):
        try:
            with open('/proc/%d/cmdline' % pid, 'rb') as f:
                argv = [a.decode('utf-8', 'replace') for a in f.read().split(b'\0')[:-1]]
        except OSError:
            continue
        if health.MARK in argv:
            out['health responders'] += 1
        elif argv:
            out['other'].append(' '.join(argv)[:200])
    out['other'].sort()
    return out


def node_objects(node):
    """Everything of ours on a node, without what differs between two clean labs (ifindexes, the
    MACs of veths, dynamic neighbours, counters)."""
    links = {}
    for link in _json(node, ['ip', '-j', '-d', 'link', 'show']):
        info = link.get('linkinfo') or {}
        kind = info.get('info_kind')
        links[link['ifname']] = {
            'kind': kind, 'mtu': link['mtu'], 'up': 'UP' in link['flags'], 'master': link.get('master'),
            'vxlan': dict((k, v) for k, v in (info.get('info_data') or {}).items()) if kind == 'vxlan' else None,
            'mac': link.get('address') if kind == 'vxlan' else None}
    addrs = dict((a['ifname'], sorted('%s/%d' % (i['local'], i['prefixlen']) for i in a.get('addr_info', [])
                                      if i.get('scope') != 'link'))
                 for a in _json(node, ['ip', '-j', 'addr', 'show']))
    fdb = sorted(json.dumps(e, sort_keys=True) for e in _json(node, ['bridge', '-j', 'fdb', 'show', 'dev', 'podnet_vxlan'])) \
        if 'podnet_vxlan' in links else None
    netns = sorted(nsenter(PREFIX, node, ['ls', '-1', '/run/netns'], check=False).split())
    objs = {
        'links': links,
        'addresses': addrs,
        'routes': _routes(node),
        'rules': _json(node, ['ip', '-j', 'rule', 'show']) + _json(node, ['ip', '-6', '-j', 'rule', 'show']),
        'fdb': fdb,
        'neighbours': sorted(json.dumps(e, sort_keys=True) for e in _json(node, ['ip', '-j', 'neigh', 'show', 'nud', 'permanent'])),
        'proxy neighbours': _json(node, ['ip', '-6', '-j', 'neigh', 'show', 'proxy']),
        'nftables': nsenter(PREFIX, node, ['nft', '-s', 'list', 'ruleset']),
        'netns': netns,
        'processes': _processes(node),
        'files': sorted(nsenter(PREFIX, node, ['find', '/var/lib/podnet', '/run/podnet', '-xdev'], check=False).split()),
    }
    for ns in netns:
        objs['netns %s' % ns] = {
            'addresses': dict((a['ifname'], sorted('%s/%d' % (i['local'], i['prefixlen']) for i in a.get('addr_info', [])
                                                   if i.get('scope') != 'link'))
                              for a in _json(node, ['ip', '-n', ns, '-j', 'addr', 'show'])),
            'routes': _routes(node, ns)}
    return objs


def lab_objects():
    return dict((n, node_objects(n)) for n in NODES)


def check_ledger_and_leases(reference):
    """The ledger is valid, holds no CIDR twice, equals the clean converge's; every lease is its entry."""
    problems = []
    try:
        doc = ledger_utils.open_ledger({'backend': 'file', 'path': LEDGER}, cluster='lab').read()
    except ledger_utils.LedgerError as e:
        return ['ledger: %s' % e]
    nets = [(n, ipaddress.ip_network(c)) for n, e in doc['nodes'].items()
            for c in ipam_lease.lease_cidrs(ipam_lease.node_lease(doc, n))['ipv4'] + ipam_lease.lease_cidrs(ipam_lease.node_lease(doc, n))['ipv6']]
    for i, (n1, a) in enumerate(nets):
        for n2, b in nets[i + 1:]:
            if a.version == b.version and a.overlaps(b):
                problems.append('ledger: %s %s overlaps %s %s' % (n1, a, n2, b))
    if doc['nodes'] != reference['nodes']:
        problems.append('ledger: nodes %s differ from the clean converge\'s %s' % (doc['nodes'], reference['nodes']))
    for n in NODES:
        text = nsenter(PREFIX, n, ['cat', LEASE], check=False)
        want = ipam_lease.node_lease(doc, n, 'cluster-pool')
        try:
            lease = json.loads(text)
        except ValueError:
            lease = text
        if lease != want:
            problems.append('%s: lease %r is not its ledger entry %r' % (n, lease, want))
    return problems


def diff_objects(got, want):
    out = []
    for n in NODES:
        for key in sorted(set(got[n]) | set(want[n])):
            if got[n].get(key) != want[n].get(key):
                out.append('%s: %s: %r, clean converge: %r' % (n, key, got[n].get(key), want[n].get(key)))
    return out


def last_task(log_path):
    with open(log_path, errors='replace') as f:
        tasks = re.findall(r'^TASK \[(.*?)\]', f.read(), re.M)
    return tasks[-1] if tasks else '(before the first task)'


def _tasks_begun(log_path):
    with open(log_path, errors='replace') as f:
        return len(re.findall(r'^TASK \[', f.read(), re.M))


def watched_run(inv, log_path, kill_when=None):
    """site.yml in a process group of its own, its output in log_path. Records when each task
    began (seconds from the start, one entry per TASK header). kill_when(elapsed, begun) -> True
    kills the whole group with SIGKILL. Returns (rc, begun, killed at or None, duration, pgid)."""
    begun = []
    killed_at = None
    with open(log_path, 'w') as out:
        proc = start_playbook('site.yml', inv, log=out)
        start = time.monotonic()
        while proc.poll() is None:
            elapsed = time.monotonic() - start
            begun.extend([elapsed] * (_tasks_begun(log_path) - len(begun)))
            if kill_when is not None and kill_when(elapsed, begun):
                os.killpg(proc.pid, signal.SIGKILL)
                killed_at = elapsed
                break
            time.sleep(0.05)
        rc = proc.wait()
    return rc, begun, killed_at, time.monotonic() - start, proc.pid


def kill_policy(moment, clean_begun):
    """When to kill a run so that it stops where the clean converge was at `moment` seconds: in the
    same task, as far into it, scaled by this run's speed up to that task."""
    k = bisect.bisect_right(clean_begun, moment) - 1          # the task running at moment (-1: none yet)
    t_k = clean_begun[k] if k >= 0 else 0.0
    into = moment - t_k

    def kill_when(elapsed, begun):
        if len(begun) <= k:
            return False
        s_k = begun[k] if k >= 0 else 0.0
        speed = min(4.0, max(0.25, s_k / t_k)) if t_k > 1 else 1.0
        return elapsed >= s_k + into * speed
    return kill_when, k + 1, into


def fresh_lab(inv):
    purge(PREFIX)
    run_ok('lab_up.yml', inv)


@pytest.fixture(scope='module')
def clean(tmp_path_factory):
    """A clean converge of a fresh lab: its duration, when each task began, its ledger and kernel objects."""
    base = tmp_path_factory.mktemp('kill')
    inv = write_lab_inventory(str(base / 'inv'), PREFIX, nodes=len(NODES))
    try:
        fresh_lab(inv)
        log = str(base / 'clean.log')
        rc, begun, _killed, duration, _pgid = watched_run(inv, log)
        assert rc == 0, open(log, errors='replace').read()[-6000:]
        with open(LEDGER) as f:
            doc = json.load(f)
        objs = lab_objects()
        assert all(objs[n]['processes'] == {'health responders': 1, 'other': []} for n in NODES), objs
        yield {'inv': inv, 'base': base, 'duration': duration, 'begun': begun, 'ledger': doc, 'objects': objs}
        run_ok('lab_down.yml', inv)
        assert_lab_gone(PREFIX)
    finally:
        purge(PREFIX)
        assert_lab_gone(PREFIX)


def test_kill_9_at_random_moments_then_rerun_converges_and_leaks_nothing(clean):
    seed = int(os.environ.get('PODNET_KILL_SEED') or random.SystemRandom().randrange(1, 2 ** 31))
    rng = random.Random(seed)
    period = clean['duration']
    moments = [round(period * (i + rng.random()) / TRIALS, 1) for i in range(TRIALS)]
    print('\nkill points: seed %d, %d trials, clean converge %.1f s (%d tasks), moments %s s'
          % (seed, TRIALS, period, len(clean['begun']), ', '.join('%.1f' % m for m in moments)))
    inv = clean['inv']
    failures = []
    for i, moment in enumerate(moments):
        log = str(clean['base'] / ('trial-%d.log' % i))
        problems = []
        try:
            fresh_lab(inv)
            kill_when, task_no, into = kill_policy(moment, clean['begun'])
            rc, _begun, killed_at, _duration, pgid = watched_run(inv, log, kill_when)
            deadline = time.monotonic() + 15
            while group_alive(pgid) and time.monotonic() < deadline:
                time.sleep(0.1)
            if group_alive(pgid):
                problems.append('processes of the killed run survived in group %d' % pgid)
            if killed_at is None:
                where = 'not killed: the run finished first (rc %d)' % rc
            else:
                where = 'killed at %.1f s during task %d [%s]' % (killed_at, _tasks_begun(log), last_task(log))
            start = time.monotonic()
            run_ok('site.yml', inv, extra=WITH_VERIFY)
            rerun = time.monotonic() - start
            out = run_ok('site.yml', inv)
            changed = dict((n, recap(out)[n]['changed']) for n in NODES)
            if any(changed.values()):
                problems.append('third run changed %s' % changed)
            problems += check_ledger_and_leases(clean['ledger'])
            problems += diff_objects(lab_objects(), clean['objects'])
            print('trial %d: moment %.1f s (task %d + %.1f s of the clean converge), %s; rerun converged in %.1f s; '
                  'third run changed %s; %s' % (i + 1, moment, task_no, into, where, rerun, changed,
                                                'OK' if not problems else '; '.join(problems)))
        except AssertionError as e:
            problems.append(str(e)[-3000:])
            print('trial %d: moment %.1f s: FAILED %s' % (i + 1, moment, str(e)[-3000:]))
        if problems:
            failures.append('trial %d (seed %d, moment %.1f s, log %s): %s' % (i + 1, seed, moment, log, '; '.join(problems)))
            failures[-1] += '\n' + open(log, errors='replace').read()[-3000:]
    assert not failures, '\n\n'.join(failures)


def test_a_half_made_health_netns_is_replaced(clean):
    """A kill inside pyroute2's netns.create (after it made the mount point, before the bind mount)
    leaves an empty /run/netns/podnet-health; the next run must replace it, not fail on it for good."""
    inv = clean['inv']
    run_ok('site.yml', inv)                       # whatever the trials left: converged
    nsenter(PREFIX, 'node1', ['ip', 'netns', 'delete', 'podnet-health'])
    nsenter(PREFIX, 'node1', ['touch', '/run/netns/podnet-health'])
    run_ok('site.yml', inv, extra=['--limit', 'node1'])
    problems = check_ledger_and_leases(clean['ledger']) + diff_objects(lab_objects(), clean['objects'])
    assert not problems, problems
