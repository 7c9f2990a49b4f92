"""BGP on a real lab (prefix `pbg`): BIRD (and FRR) speakers on the nodes, FRR on the ToR.

Asserts on what the daemons and kernels hold (vtysh JSON in the ToR, `ip -j route` in every
member, /proc for daemon PIDs), never on a task's status alone. Also measures BGP convergence: the
time from a new node's speaker starting (its process start time) to its route being in the ToR's
kernel and in a peer node's kernel, polled every 50 ms.

Every test stands alone. The module fixture purges what a killed run left of `pbg`, brings up a
bare 2-node lab and tears it down whatever happens, checking that no daemon the tests saw is still
running and nothing of the lab is left. Each test starts from the state it names: `ensure_bare()`
(no speaker anywhere) or `ensure_bgp(n)` (n nodes running BIRD, the ToR FRR, all converged). Both
remember what the last test left, so a file run in order re-runs nothing it does not need; a test
that changes the lab marks the state unknown until it has re-established a known one.
"""
import json
import os
import statistics
import subprocess
import threading
import time

import labutil
import pytest
import yaml

from labutil import nsenter, playbook, recap, run_ok, write_lab_inventory

PREFIX = 'pbg'
TOR = 'tor'
TOR_IP = '192.168.50.1'
PLAY = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'playbooks', 'bgp_lab.yml')
BIRD_PID = '/run/podnet/bgp/bird/bird.pid'
FRR_PIDS = {'zebra': '/run/podnet/bgp/frr/podnet-zebra.pid', 'bgpd': '/run/podnet/bgp/frr/podnet-bgpd.pid'}
TOR_PIDS = {'zebra': '/run/frr/podnet-zebra.pid', 'bgpd': '/run/frr/podnet-bgpd.pid'}
CLUSTER = {
    'podnet_cluster': {'name': 'lab', 'id': 0},
    'podnet_routing': {
        'mode': 'native', 'mtu': 0, 'masquerade': True,
        'native': {'ipv4_cidr': '10.244.0.0/16',
                   'bgp': {'local_asn': 65001, 'speaker': 'bird', 'hold_time': 9,
                           'peers': [{'address': TOR_IP, 'asn': 65000}]}},
    },
}

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason='the lab needs root')


def nodes(n):
    return ['node%d' % i for i in range(1, n + 1)]


def node_ip(node):
    return '192.168.50.%d' % (10 + int(node[4:]))


def cidr(node):
    return '10.244.%d.0/24' % int(node[4:])


@pytest.fixture(scope='module')
def lab(tmp_path_factory):
    base = tmp_path_factory.mktemp('bgp')
    cluster = base / 'cluster.yml'
    cluster.write_text(yaml.safe_dump(CLUSTER))
    inv2 = write_lab_inventory(str(base / 'inv2'), PREFIX, nodes=2, cluster_vars=str(cluster))
    inv3 = write_lab_inventory(str(base / 'inv3'), PREFIX, nodes=3, cluster_vars=str(cluster))
    # What a killed earlier run left: its daemons die with the members, its files with the lab dir.
    labutil.purge(PREFIX)
    # pids: {pid: start time} of every daemon a test saw (a PID alone could be reused meanwhile).
    # state: 'bare', 'bgp2', 'bgp3', 'absent', 'down' or None (unknown); n: the lab's node count.
    state = {'inv2': inv2, 'inv3': inv3, 'pids': {}, 'state': None, 'n': None, 'convergence': []}
    try:
        run_ok('lab_up.yml', inv2)
        state.update(state='bare', n=2)
        yield state
    finally:
        if state['state'] != 'down':    # test_lab_down_leaves_no_daemon_and_no_namespace took it down
            run_ok('lab_down.yml', inv3)
        left = sorted(p for p, t in state['pids'].items() if same_process(p, t))
        assert not left, 'daemons left: %s' % left
        labutil.assert_lab_gone(PREFIX)


def run(inv, *extra, check=False):
    return playbook(PLAY, inv, extra=list(extra), check=check)


def run_bgp(inv, *extra, check=False):
    """The BGP lab playbook, which must succeed: its output."""
    return run_ok(PLAY, inv, extra=list(extra), check=check)


def inv(lab, n):
    return lab['inv%d' % n]


def changing(lab):
    """The test is about to change the lab: its state is unknown until the test says otherwise."""
    lab['state'] = None


def lab_up(lab, n):
    lab['n'] = None
    run_ok('lab_up.yml', inv(lab, n))
    lab['n'] = n


def ensure_bare(lab):
    """A lab of 2 nodes where no speaker ever ran: nothing in /etc/podnet, no BGP route anywhere."""
    if lab['state'] == 'bare':
        return
    changing(lab)
    labutil.purge(PREFIX)
    lab_up(lab, 2)
    lab['state'] = 'bare'


def ensure_bgp(lab, n):
    """n nodes running BIRD, FRR on the ToR, every node's CIDR learned everywhere."""
    if lab['state'] == 'bgp%d' % n:
        return
    changing(lab)
    if lab['n'] != n:
        lab_up(lab, n)
    run_bgp(inv(lab, n))
    wait_for('BGP convergence', lambda: converged(nodes(n)))
    lab['state'] = 'bgp%d' % n


# ---------------------------------------------------------------- reading the lab

def ip_routes(member):
    """{dst: {gateway, protocol}} of the member's main IPv4 table."""
    out = json.loads(nsenter(PREFIX, member, ['ip', '-j', '-4', 'route', 'show']) or '[]')
    return dict((r['dst'], {'gateway': r.get('gateway'), 'protocol': r.get('protocol')}) for r in out)


def tor_rib():
    """{prefix: [next hops of the best path]} from FRR's BGP table in the ToR."""
    doc = json.loads(nsenter(PREFIX, TOR, ['vtysh', '-c', 'show ip bgp json']))
    out = {}
    for prefix, paths in doc.get('routes', {}).items():
        best = [p for p in paths if p.get('bestpath')] or paths
        out[prefix] = sorted(h['ip'] for p in best for h in p.get('nexthops', []))
    return out


def pidfile(member, path):
    text = nsenter(PREFIX, member, ['cat', path], check=False).strip()
    return int(text) if text.isdigit() else None


def alive(pid):
    """A live, non-zombie process."""
    try:
        with open('/proc/%d/stat' % pid) as f:
            return f.read().rsplit(')', 1)[1].split()[0] not in ('Z', 'X')
    except (IOError, OSError):
        return False


def same_process(pid, start):
    """The process `pid` that started at `start` is still alive (not a later one reusing the PID)."""
    try:
        return alive(pid) and started_at(pid) == start
    except (IOError, OSError):
        return False


def comm(pid):
    with open('/proc/%d/comm' % pid) as f:
        return f.read().strip()


def in_member(pid, member):
    return os.stat('/proc/%d/ns/net' % pid).st_ino == os.stat('/run/netns/%s-%s' % (PREFIX, member)).st_ino


def speaker_pids(lab, members):
    """{member: {daemon: pid}} for the BGP daemons the lab members run, checked against /proc."""
    out = {}
    for m in members:
        files = TOR_PIDS if m == TOR else dict(FRR_PIDS, bird=BIRD_PID)
        pids = {}
        for name, path in files.items():
            pid = pidfile(m, path)
            if pid and alive(pid):
                assert comm(pid) == name and in_member(pid, m), (m, name, pid)
                pids[name] = pid
        out[m] = pids
        for pid in pids.values():
            lab['pids'][pid] = started_at(pid)
    return out


def wait_for(what, check, timeout=20.0):
    deadline = time.time() + timeout
    while True:
        problems = check()
        if not problems:
            return
        if time.time() > deadline:
            raise AssertionError('%s: still %s after %ss' % (what, problems, timeout))
        time.sleep(0.2)


def converged(members, extra=None):
    """Problems (empty when fine): the ToR's RIB and kernel and every node's kernel vs the nodes' CIDRs."""
    extra = extra or {}
    want = dict((cidr(n), node_ip(n)) for n in members)
    want.update(extra)
    problems = []
    rib = tor_rib()
    kernel = ip_routes(TOR)
    for prefix, via in sorted(want.items()):
        if rib.get(prefix) != [via]:
            problems.append('ToR RIB %s: %s, want [%s]' % (prefix, rib.get(prefix), via))
        if kernel.get(prefix, {}).get('gateway') != via or kernel[prefix]['protocol'] != 'bgp':
            problems.append('ToR kernel %s: %s' % (prefix, kernel.get(prefix)))
    for n in members:
        routes = ip_routes(n)
        for prefix, via in sorted(want.items()):
            if via == node_ip(n):
                # The node's own CIDR: advertised from a blackhole that never reaches the kernel.
                if prefix in routes:
                    problems.append('%s kernel has its own %s: %s' % (n, prefix, routes[prefix]))
            elif routes.get(prefix, {}).get('gateway') != TOR_IP:
                problems.append('%s kernel %s: %s, want via the ToR' % (n, prefix, routes.get(prefix)))
    return problems


def speaker_routes(member):
    return dict((d, r) for d, r in ip_routes(member).items() if r['protocol'] in ('bird', 'bgp'))


# ---------------------------------------------------------------- tests

def test_check_mode_starts_nothing(lab):
    ensure_bare(lab)
    changing(lab)
    run_bgp(lab['inv2'], check=True)
    assert speaker_pids(lab, nodes(2) + [TOR]) == dict((m, {}) for m in nodes(2) + [TOR])
    for m in nodes(2) + [TOR]:
        assert not speaker_routes(m)
        assert nsenter(PREFIX, m, ['ls', '/etc/podnet'], check=False) == ''
    lab['state'] = 'bare'


def test_nodes_advertise_their_cidrs_and_pod_traffic_crosses_the_tor(lab):
    ensure_bare(lab)
    changing(lab)
    run_bgp(lab['inv2'])
    pids = speaker_pids(lab, nodes(2) + [TOR])
    assert all(set(pids[n]) == {'bird'} for n in nodes(2)) and set(pids[TOR]) == {'zebra', 'bgpd'}, pids
    wait_for('BGP convergence', lambda: converged(nodes(2)))
    lab['state'] = 'bgp2'
    # One pod address per node (on lo: the test's own stand-in for a pod), then ICMP between them.
    for n in nodes(2):
        nsenter(PREFIX, n, ['ip', 'addr', 'replace', cidr(n).replace('0/24', '1/32'), 'dev', 'lo'])
    src, dst = '10.244.1.1', '10.244.2.1'
    ok = subprocess.run(['nsenter', '--net=/run/netns/%s-node1' % PREFIX, 'ping', '-c', '1', '-W', '2', '-I', src, dst],
                        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, universal_newlines=True, check=False)
    assert ok.returncode == 0, ok.stdout
    # With TTL 1 the packet dies at the ToR, which answers: the path crosses it.
    ttl1 = subprocess.run(['nsenter', '--net=/run/netns/%s-node1' % PREFIX, 'ping', '-c', '1', '-W', '2', '-t', '1',
                           '-I', src, dst], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          universal_newlines=True, check=False)
    assert ttl1.returncode != 0 and 'From %s' % TOR_IP in ttl1.stdout and 'Time to live exceeded' in ttl1.stdout, ttl1.stdout
    # No ICMP redirect may teach node1 a shortcut around the ToR.
    assert nsenter(PREFIX, TOR, ['sysctl', '-n', 'net.ipv4.conf.all.send_redirects']).strip() == '0'
    assert json.loads(nsenter(PREFIX, 'node1', ['ip', '-j', 'route', 'get', dst, 'from', src]))[0]['gateway'] == TOR_IP


def test_second_run_changes_nothing_and_restarts_nothing(lab):
    ensure_bgp(lab, 2)
    before = speaker_pids(lab, nodes(2) + [TOR])
    out = run_bgp(lab['inv2'])
    assert all(v['changed'] == 0 for v in recap(out).values()), recap(out)
    assert speaker_pids(lab, nodes(2) + [TOR]) == before


class Poller(object):
    """First time (CLOCK_BOOTTIME) a route to `prefix` is in each member's kernel, polled every 50 ms."""

    def __init__(self, prefix, members):
        self.prefix, self.members, self.seen = prefix, members, {}
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run)

    def _run(self):
        while not self.stop.is_set() and len(self.seen) < len(self.members):
            for m in self.members:
                if m in self.seen:
                    continue
                p = subprocess.run(['nsenter', '--net=/run/netns/%s-%s' % (PREFIX, m), 'ip', '-4', 'route', 'show',
                                    'exact', self.prefix], stdout=subprocess.PIPE, universal_newlines=True, check=False)
                if p.stdout.strip():
                    self.seen[m] = time.clock_gettime(time.CLOCK_BOOTTIME)
            time.sleep(0.05)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        deadline = time.time() + 10
        while len(self.seen) < len(self.members) and time.time() < deadline:
            time.sleep(0.05)
        self.stop.set()
        self.thread.join()


def started_at(pid):
    """A process's start, in seconds of CLOCK_BOOTTIME (field 22 of /proc/PID/stat, in clock ticks)."""
    with open('/proc/%d/stat' % pid) as f:
        fields = f.read().rsplit(')', 1)[1].split()
    return int(fields[19]) / float(os.sysconf('SC_CLK_TCK'))


def speaker_start(lab, node):
    """When the node's BIRD started (CLOCK_BOOTTIME seconds)."""
    return started_at(speaker_pids(lab, [node])[node]['bird'])


def convergence_sample(lab, poll, node):
    """(speaker start -> ToR kernel, -> node1 kernel) in seconds, recorded for the summary."""
    t0 = speaker_start(lab, node)
    assert TOR in poll.seen and 'node1' in poll.seen, 'never seen: %s' % sorted(set([TOR, 'node1']) - set(poll.seen))
    sample = (poll.seen[TOR] - t0, poll.seen['node1'] - t0)
    lab['convergence'].append(sample)
    return sample


def test_a_third_node_joins_without_touching_the_others(lab):
    ensure_bgp(lab, 2)
    changing(lab)
    members = nodes(2) + [TOR]
    before = speaker_pids(lab, members)
    lab_up(lab, 3)
    with Poller(cidr('node3'), [TOR, 'node1']) as poll:
        rc, out = run(lab['inv3'])
    assert rc == 0, out[-6000:]
    # The ToR takes the new neighbour by itself (listen range); no other node's config changes.
    assert all(recap(out)[m]['changed'] == 0 for m in members), recap(out)
    assert speaker_pids(lab, members) == before
    wait_for('BGP convergence with node3', lambda: converged(nodes(3)))
    lab['state'] = 'bgp3'
    sample = convergence_sample(lab, poll, 'node3')
    print('BGP convergence (node3 join): speaker start -> ToR kernel %.2f s, -> node1 kernel %.2f s' % sample)
    assert all(0 < c < 3.0 for c in sample), sample


def test_convergence_of_a_restarted_speaker(lab):
    """node3's speaker removed, then started again by the role: its CIDR is withdrawn and comes back
    within bounds (one more sample; the figures themselves come from `make bench BENCH=datapath`)."""
    ensure_bgp(lab, 3)
    changing(lab)
    run_bgp(lab['inv3'], '--limit', 'node3', '-e', 'bgp_test_state=absent')
    wait_for('node3 withdrawn', lambda: [m for m in (TOR, 'node1') if cidr('node3') in ip_routes(m)])
    with Poller(cidr('node3'), [TOR, 'node1']) as poll:
        rc, out = run(lab['inv3'], '--limit', 'node3')
    assert rc == 0, out[-6000:]
    convergence_sample(lab, poll, 'node3')
    # With the join test's sample when it ran in this module.
    tor = [c[0] for c in lab['convergence']]
    peer = [c[1] for c in lab['convergence']]
    print('BGP convergence over %d starts (BIRD): ToR kernel median %.2f s (%.2f-%.2f), peer node kernel median '
          '%.2f s (%.2f-%.2f)' % (len(tor), statistics.median(tor), min(tor), max(tor),
                                  statistics.median(peer), min(peer), max(peer)))
    assert all(0 < c < 3.0 for c in tor + peer), lab['convergence']
    wait_for('BGP convergence', lambda: converged(nodes(3)))
    lab['state'] = 'bgp3'


def test_config_change_reloads_bird_without_restart(lab):
    ensure_bgp(lab, 3)
    changing(lab)
    pid = speaker_pids(lab, ['node1'])['node1']['bird']
    out = run_bgp(lab['inv3'], '--limit', 'node1', '-e', '{"bgp_test_extra_prefixes": ["10.99.1.0/24"]}')
    assert 'RUNNING HANDLER [podnet.fabric.bgp : Reload BIRD (lab process)]' in out
    wait_for('10.99.1.0/24 learned', lambda: converged(nodes(3), {'10.99.1.0/24': node_ip('node1')}))
    assert speaker_pids(lab, ['node1'])['node1'] == {'bird': pid}
    run_bgp(lab['inv3'], '--limit', 'node1')
    wait_for('10.99.1.0/24 withdrawn', lambda: [m for m in nodes(3) + [TOR] if '10.99.1.0/24' in ip_routes(m)])
    assert speaker_pids(lab, ['node1'])['node1'] == {'bird': pid}
    lab['state'] = 'bgp3'


def test_frr_speaker_on_a_node_reloads_without_restart_and_hands_back_to_bird(lab):
    ensure_bgp(lab, 3)
    changing(lab)
    old_bird = speaker_pids(lab, ['node2'])['node2']['bird']
    run_bgp(lab['inv3'], '--limit', 'node2', '-e', 'bgp_test_speaker=frr')
    frr = speaker_pids(lab, ['node2'])['node2']
    assert set(frr) == {'zebra', 'bgpd'} and not alive(old_bird), frr
    wait_for('BGP convergence with FRR on node2', lambda: converged(nodes(3)))
    assert set(r['protocol'] for r in speaker_routes('node2').values()) == {'bgp'}   # zebra installed them

    out = run_bgp(lab['inv3'], '--limit', 'node2', '-e', 'bgp_test_speaker=frr',
                  '-e', '{"bgp_test_extra_prefixes": ["10.99.2.0/24"]}')
    assert 'RUNNING HANDLER [podnet.fabric.bgp : Reload bgpd (lab process)]' in out
    wait_for('10.99.2.0/24 learned', lambda: converged(nodes(3), {'10.99.2.0/24': node_ip('node2')}))
    assert speaker_pids(lab, ['node2'])['node2'] == frr
    out = run_bgp(lab['inv3'], '--limit', 'node2', '-e', 'bgp_test_speaker=frr',
                  '-e', '{"bgp_test_extra_prefixes": ["10.99.2.0/24"]}')
    assert recap(out)['node2']['changed'] == 0, out

    run_bgp(lab['inv3'], '--limit', 'node2')
    pids = speaker_pids(lab, ['node2'])['node2']
    assert set(pids) == {'bird'} and not any(alive(p) for p in frr.values())
    assert nsenter(PREFIX, 'node2', ['ls', '/etc/podnet/bgp']).split() == ['bird.conf']
    wait_for('BGP convergence back on BIRD', lambda: converged(nodes(3)) + [
        '10.99.2.0/24 still at %s' % m for m in nodes(3) + [TOR] if '10.99.2.0/24' in ip_routes(m)])
    lab['state'] = 'bgp3'


def test_absent_removes_speakers_routes_and_config(lab):
    ensure_bgp(lab, 3)
    changing(lab)
    members = nodes(3) + [TOR]
    before = speaker_pids(lab, members)
    run_bgp(lab['inv3'], '-e', 'bgp_test_state=absent', check=True)
    assert speaker_pids(lab, members) == before
    # A speaker killed outright cannot withdraw its kernel routes: the role must.
    killed = before['node3']['bird']
    os.kill(killed, 9)     # a daemon this test's own playbook run started, by its PID
    wait_for('node3 bird gone', lambda: [killed] if alive(killed) else [])
    assert speaker_routes('node3')

    run_bgp(lab['inv3'], '-e', 'bgp_test_state=absent')
    for n in nodes(3):
        assert not any(alive(p) for p in before[n].values())
        assert speaker_pids(lab, [n])[n] == {}
        assert speaker_routes(n) == {}, n
        # No speaker file is left; the node lock (/run/podnet/node.lock) is the node's, not the speaker's.
        left = nsenter(PREFIX, n, ['ls', '/etc/podnet', '/run/podnet'], check=False).split()
        assert [f for f in left if f != 'node.lock'] == ['/etc/podnet:', '/run/podnet:'], (n, left)
    wait_for('the ToR forgets the nodes', lambda: [p for p in tor_rib() if p.startswith('10.')] + list(speaker_routes(TOR)))
    out = run_bgp(lab['inv3'], '-e', 'bgp_test_state=absent')
    assert all(recap(out)[n]['changed'] == 0 for n in nodes(3)), recap(out)

    # No BGP in the cluster (tunnel mode): the ToR runs no daemon and keeps no config.
    tunnel = ['-e', '{"podnet_routing": {"mode": "tunnel"}}']
    run_ok('lab_tor.yml', lab['inv3'], extra=tunnel)
    assert not any(alive(p) for p in before[TOR].values())
    assert speaker_pids(lab, [TOR])[TOR] == {}
    assert nsenter(PREFIX, TOR, ['ls', '/etc/podnet', '/run'], check=False).split() == ['/etc/podnet:', '/run:', 'podnet']
    assert nsenter(PREFIX, TOR, ['sysctl', '-n', 'net.ipv4.conf.all.send_redirects']).strip() == '1'
    out = run_ok('lab_tor.yml', lab['inv3'], extra=tunnel)
    assert recap(out)[TOR]['changed'] == 0, out
    lab['state'] = 'absent'


def test_lab_down_leaves_no_daemon_and_no_namespace(lab):
    # Every daemon running (3 BIRDs, the ToR's zebra and bgpd), then the lab goes.
    ensure_bgp(lab, 3)
    running = speaker_pids(lab, nodes(3) + [TOR])
    assert sum(len(v) for v in running.values()) == 5, running
    changing(lab)
    lab['n'] = None
    run_ok('lab_down.yml', lab['inv3'])
    lab.update(state='down', n=0)
    left = [p for m in running.values() for p in m.values() if same_process(p, lab['pids'][p])]
    assert not left, 'daemons left: %s' % left
    labutil.assert_lab_gone(PREFIX)
