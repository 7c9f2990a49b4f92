"""Health endpoints and pod-to-pod connectivity on a real 2-node lab (prefix `phe`).

Each node gets its pod CIDR from IPAM (validate, node_prereqs, ipam and host_device, as site.yml
runs them) and then the health role. Routing between the nodes is not part of this test: it adds
temporary routes itself (`<other pod CIDR> via <other node IP>`), so the probes cross the underlay
as pod traffic would in native mode.

Assertions are on kernel state inside the members (namespaces, links, addresses, routes with proto
podnet (201), neighbours), on the responder process (PID, its network and mount namespaces), on real ping
and TCP results, and on what lab teardown leaves. The tests share one lab and each asks it for the
state it needs (`phe.need(...)`): nodes set up without health endpoints, with them, or no lab at all;
the lab is brought there when it is not known to be in that state (a test run alone, or after a test
that failed midway). The file order only saves work.
"""
import ipaddress
import json
import os
import re
import time

import labutil
import pytest
import yaml

from labutil import LAB_ROOT, nsenter, playbook, recap, run_ok, write_lab_inventory

PREFIX = 'phe'
NODES = ['node1', 'node2']
NETNS = 'podnet-health'
PIDFILE = '/run/podnet/health-%s.pid' % NETNS
STORE = '/var/lib/podnet/ipam/endpoints.json'
LEASE = '/var/lib/podnet/ipam/lease.json'
MARK = 'podnet-health-responder'

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason='the lab needs root')

SETUP = [
    {'name': 'Validate', 'hosts': 'localhost', 'gather_facts': False,
     'tasks': [{'name': 'Validate', 'podnet.fabric.validate': {}}]},
    {'name': 'Nodes', 'hosts': 'podnet_nodes', 'gather_facts': False,
     'roles': [{'role': 'podnet.fabric.node_prereqs'}, {'role': 'podnet.fabric.ipam'},
               {'role': 'podnet.fabric.host_device',
                'vars': {'host_device_router_ips': '{{ ipam_router_ips | default(none) }}'}}]},
]

HEALTH = [
    {'name': 'Validate', 'hosts': 'localhost', 'gather_facts': False,
     'tasks': [{'name': 'Validate', 'podnet.fabric.validate': {}}]},
    {'name': 'Health endpoints', 'hosts': 'podnet_nodes', 'gather_facts': False,
     'roles': [{'role': 'podnet.fabric.health'}],
     'tasks': [{'name': 'Report the address',
                'ansible.builtin.debug': {'msg': 'HEALTH {{ inventory_hostname }} {{ health_address }}'}}]},
]


def probe_play(outdir):
    """The probe entry point as verify.yml runs it: where the health endpoints are comes from the
    ledger's endpoint records (the ipam role's cluster_map read), not from the hosts' variables."""
    return [{
        'name': 'Validate', 'hosts': 'localhost', 'gather_facts': False,
        'tasks': [{'name': 'Validate', 'podnet.fabric.validate': {}}]}, {
        'name': 'Probe', 'hosts': 'podnet_nodes', 'gather_facts': False,
        'tasks': [
            {'name': 'Read the ledger',
             'ansible.builtin.import_role': {'name': 'podnet.fabric.ipam', 'tasks_from': 'cluster_map'}},
            {'name': 'Probe', 'ansible.builtin.import_role': {'name': 'podnet.fabric.health', 'tasks_from': 'probe'},
             'vars': {'health_peers': '{{ ipam_cluster_map.endpoints }}'}, 'ignore_errors': True},
            {'name': 'Keep the result', 'delegate_to': 'localhost', 'check_mode': False,
             'ansible.builtin.copy': {'content': '{{ health_connectivity | to_json }}',
                                      'dest': '%s/{{ inventory_hostname }}.json' % outdir, 'mode': '0644'}},
        ]}]


def write_yaml(path, data):
    with open(str(path), 'w') as f:
        yaml.safe_dump(data, f, sort_keys=False)
    return str(path)


class Lab(labutil.LabState):
    """The phe lab (2 nodes, IPv4). States: 'bare' (lab_up, then SETUP: pod CIDRs and podnet_host,
    no health endpoint), 'healthy' (then HEALTH: an endpoint and responder on every node), 'down'
    (no phe lab: a test that builds its own)."""

    def __init__(self, base):
        labutil.LabState.__init__(self, self._build)
        self.base = base
        self.inv = write_lab_inventory(str(base / 'inv'), PREFIX, nodes=len(NODES))
        self.setup = write_yaml(base / 'setup.yml', SETUP)
        self.health = write_yaml(base / 'health.yml', HEALTH)

    def _build(self, state, current):
        if state == 'healthy' and current == 'bare':
            run_ok(self.health, self.inv)
            return
        labutil.fresh(PREFIX)
        if state == 'down':
            return
        run_ok('lab_up.yml', self.inv)
        run_ok(self.setup, self.inv)
        if state == 'healthy':
            run_ok(self.health, self.inv)


@pytest.fixture(scope='module')
def phe(tmp_path_factory):
    labutil.fresh(PREFIX)                           # whatever a killed earlier run left
    host_links = set(os.listdir('/sys/class/net'))
    lab = Lab(tmp_path_factory.mktemp('health'))
    try:
        yield lab
    finally:
        try:
            if lab.state != 'down':
                run_ok('lab_down.yml', lab.inv)
            labutil.assert_lab_gone(PREFIX)
        finally:
            labutil.fresh(PREFIX)
    assert set(os.listdir('/sys/class/net')) == host_links


# --- reading a node --------------------------------------------------------------------------

def ns_run(node, argv, check=True):
    """Run argv inside the node's health endpoint (node's mount namespace, endpoint's network)."""
    return nsenter(PREFIX, node, ['nsenter', '--net=/run/netns/' + NETNS, '--'] + argv, check=check)


def ipj(node, *args, endpoint=False):
    argv = ['ip', '-j', '-d'] + list(args)
    text = ns_run(node, argv) if endpoint else nsenter(PREFIX, node, argv)
    return json.loads(text or '[]')


def link(node, name, endpoint=False):
    found = [entry for entry in ipj(node, 'link', 'show', endpoint=endpoint) if entry['ifname'] == name]
    return found[0] if found else None


def global_addrs(node, dev, endpoint=False):
    return sorted('%s/%d' % (a['local'], a['prefixlen'])
                  for entry in ipj(node, 'addr', 'show', 'dev', dev, endpoint=endpoint)
                  for a in entry.get('addr_info', []) if a.get('scope') == 'global')


def routes(node, endpoint=False, family='-4'):
    argv = ['ip', '-N', '-j', family, 'route', 'show']
    text = ns_run(node, argv) if endpoint else nsenter(PREFIX, node, argv)
    return json.loads(text or '[]')


def netns_list(node):
    return nsenter(PREFIX, node, ['ls', '/run/netns'], check=False).split()


def netns_inode(node):
    out = nsenter(PREFIX, node, ['stat', '-L', '-c', '%i', '/run/netns/' + NETNS], check=False).strip()
    return int(out) if out else None


def member_inode(node, kind):
    if kind == 'mnt':
        return os.stat(os.path.join(LAB_ROOT, PREFIX, node, 'mnt')).st_ino
    return os.stat('/run/netns/%s-%s' % (PREFIX, node)).st_ino


def pidfile_pid(node):
    out = nsenter(PREFIX, node, ['cat', PIDFILE], check=False).strip()
    return int(out) if out else None


def responders(node):
    """PIDs of health responders living in the node's mount namespace (found from the host)."""
    mnt = member_inode(node, 'mnt')
    pids = []
    for entry in os.listdir('/proc'):
        if not entry.isdigit():
            continue
        try:
            with open('/proc/%s/cmdline' % entry, 'rb') as f:
                argv = f.read().split(b'\0')
            if MARK.encode() in argv and os.stat('/proc/%s/ns/mnt' % entry).st_ino == mnt and not zombie(int(entry)):
                pids.append(int(entry))
        except OSError:
            pass
    return sorted(pids)


def zombie(pid):
    try:
        with open('/proc/%d/stat' % pid) as f:
            return f.read().rsplit(')', 1)[1].split()[0] in ('Z', 'X')
    except OSError:
        return True


def gone(pid, timeout=5.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if zombie(pid):
            return True
        time.sleep(0.05)
    return False


def lease_of(node):
    return json.loads(nsenter(PREFIX, node, ['cat', LEASE]))


def store_of(node):
    text = nsenter(PREFIX, node, ['cat', STORE], check=False)
    return json.loads(text) if text else {'used': {}}


def health_ip(node):
    held = [ip for ip, rec in store_of(node)['used'].items() if rec.get('owner') == 'podnet-health']
    return held[0] if held else None


def router_of(node):
    return str(ipaddress.ip_network(lease_of(node)['cidrs']['ipv4'][0]).network_address + 1)


def snapshot():
    """Everything the health role may touch, node side and endpoint side."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if not any('tentative' in nsenter(PREFIX, n, ['ip', '-6', 'addr', 'show']) for n in NODES):
            break
        time.sleep(0.2)
    snap = labutil.lab_snapshot(PREFIX, NODES)
    for n in NODES:
        snap[n]['netns'] = netns_list(n)
        snap[n]['pidfile'] = pidfile_pid(n)
        snap[n]['responders'] = responders(n)
        snap[n]['store'] = store_of(n)
    return snap


def run_health(lab, *extra, check=False):
    return run_ok(lab.health, lab.inv, extra=list(extra), check=check)


def assert_endpoint(node):
    """The node's health endpoint as the kernel holds it; returns (address, pid)."""
    ip = health_ip(node)
    cidr = ipaddress.ip_network(lease_of(node)['cidrs']['ipv4'][0])
    router = router_of(node)
    assert ip and ipaddress.ip_address(ip) in cidr and ip != router
    assert NETNS in netns_list(node)
    mtu = link(node, 'podnet_host')['mtu']
    dev = link(node, 'lxc_health')
    peer = link(node, 'eth0', endpoint=True)
    assert dev['linkinfo']['info_kind'] == 'veth' and peer['linkinfo']['info_kind'] == 'veth'
    assert dev['mtu'] == peer['mtu'] == mtu == 1450          # the pod MTU (tunnel mode: 1500 - 50)
    assert 'UP' in dev['flags'] and 'UP' in peer['flags']
    assert dev['link_index'] == peer['ifindex'] and peer['link_index'] == dev['ifindex']
    assert global_addrs(node, 'eth0', endpoint=True) == ['%s/32' % ip]
    assert global_addrs(node, 'lxc_health') == []
    assert 'UP' in link(node, 'lo', endpoint=True)['flags']
    inside = sorted((r['dst'], r.get('gateway'), r['dev'], r.get('scope'), r['protocol'])
                    for r in routes(node, endpoint=True))
    assert inside == [(router, None, 'eth0', '253', '201'), ('default', router, 'eth0', None, '201')]
    ours = [r for r in routes(node) if r.get('protocol') == '201' and r.get('dev') == 'lxc_health']
    assert [(r['dst'], r.get('scope')) for r in ours] == [(ip, '253')]   # scope link
    pid = pidfile_pid(node)
    assert pid and responders(node) == [pid]
    assert os.stat('/proc/%d/ns/net' % pid).st_ino == netns_inode(node)
    assert os.stat('/proc/%d/ns/mnt' % pid).st_ino == member_inode(node, 'mnt')   # teardown finds it
    assert int(nsenter(PREFIX, node, ['sysctl', '-n', 'net.ipv4.conf.lxc_health.arp_ignore'])) == 0
    return ip, pid


# --- tests -----------------------------------------------------------------------------------

def test_check_mode_plans_and_changes_nothing(phe):
    phe.need('bare')
    before = snapshot()
    out = run_health(phe, check=True)
    assert all(recap(out)[n]['changed'] >= 2 for n in NODES), out
    assert '+        name: lxc_health' in out and '+        - podnet-health-responder' in out   # the diff, shown
    assert snapshot() == before
    assert all(NETNS not in before[n]['netns'] and not before[n]['responders'] for n in NODES)
    phe.keep()


def test_role_creates_the_endpoint_and_sets_health_address(phe):
    phe.need('bare')
    out = run_health(phe)
    assert all(recap(out)[n]['changed'] >= 2 for n in NODES), out
    facts = dict(re.findall(r'HEALTH (node\d) ([0-9.]+)', out))
    for n in NODES:
        ip, _pid = assert_endpoint(n)
        assert facts[n] == ip
    phe.left('healthy')


def test_the_node_answers_arp_for_the_router_and_reaches_the_endpoint(phe):
    phe.need('healthy')
    for n in NODES:
        router = router_of(n)
        ns_run(n, ['ip', 'neigh', 'flush', 'dev', 'eth0'])
        ns_run(n, ['ping', '-c', '1', '-W', '2', router])
        neigh = [e for e in ipj(n, 'neigh', 'show', 'dev', 'eth0', endpoint=True) if e['dst'] == router]
        assert neigh and neigh[0]['lladdr'] == link(n, 'lxc_health')['address'], neigh
        # Node -> endpoint through the proto podnet (201) route, answered by the responder.
        reply = nsenter(PREFIX, n, [os.path.join(labutil.VENV_BIN, 'python'), '-c',
                                    'import socket;s=socket.create_connection(("%s",4240),3);print(s.recv(99).decode())'
                                    % health_ip(n)])
        assert reply.strip() == 'podnet-health %s' % n
    phe.keep()


def test_second_run_changes_nothing(phe):
    phe.need('healthy')
    before = snapshot()
    inodes = dict((n, netns_inode(n)) for n in NODES)
    out = run_health(phe)
    assert all(recap(out)[n]['changed'] == 0 for n in NODES), out
    assert snapshot() == before
    assert dict((n, netns_inode(n)) for n in NODES) == inodes
    phe.keep()


def _cross_routes():
    """Temporary routes between the nodes' pod CIDRs (no routing role here); `replace`: idempotent."""
    leases = dict((n, lease_of(n)) for n in NODES)
    for n in NODES:
        for other in NODES:
            if other != n:
                nsenter(PREFIX, n, ['ip', 'route', 'replace', leases[other]['cidrs']['ipv4'][0],
                                    'via', leases[other]['ip']])


def _probe(lab, name, targets, check=False, **opts):
    outdir = lab.base / name
    outdir.mkdir()
    extra = dict(opts)
    if targets is not None:
        extra['health_targets'] = targets
    vars_file = write_yaml(outdir / 'vars.yml', extra)
    run_ok(write_yaml(outdir / 'probe.yml', probe_play(str(outdir))), lab.inv,
           extra=['-e', '@' + vars_file], check=check)
    results = {}
    for n in NODES:
        with open(str(outdir / ('%s.json' % n))) as f:
            results[n] = json.load(f)
    return results


def test_every_pair_of_nodes_answers_ping_and_tcp_pod_to_pod(phe):
    phe.need('healthy')
    _cross_routes()
    t0 = time.monotonic()
    # No targets: the role probes every host of the play, at the addresses the ledger records.
    results = _probe(phe, 'all', None)
    assert time.monotonic() - t0 < 60
    for src in NODES:
        res = results[src]
        assert not res.get('failed') and res['reachable'] and not res['changed'], res
        by_name = dict((r['name'], r) for r in res['results'])
        assert sorted(by_name) == NODES
        for dst, r in by_name.items():
            assert r['address'] == health_ip(dst)
            assert r['ping']['ok'] and r['ping']['received'] >= 1 and r['ping']['sent'] == 3
            assert 0 < r['ping']['rtt_ms'] < 1000
            assert r['tcp']['ok'] and r['tcp']['reply'] == 'podnet-health %s' % dst
    # The probes crossed the nodes' kernels: each node forwarded the others' endpoint traffic,
    # so its endpoint learned its router's address and its node learned the endpoint's.
    for n in NODES:
        assert any(e['dst'] == health_ip(n) for e in ipj(n, 'neigh', 'show', 'dev', 'lxc_health'))
    phe.keep()                                      # the routes are the tests' own, outside podnet's


def test_a_workload_endpoint_reaches_another_nodes_health_endpoint(phe):
    """The generic endpoint module (the health endpoint minus its responder): an IP from node1's
    IPAM store, a namespace with an lxc<hash> pair, and packets to node2's health endpoint."""
    phe.need('healthy')
    _cross_routes()
    inv, name = phe.inv, 'phe-web'
    rc, ip = labutil.adhoc(inv, 'node1', 'podnet.fabric.ipam_endpoint', {'endpoint_id': name, 'update_ledger': False})
    assert rc == 0 and ip['ips'].get('ipv4'), ip
    args = {'name': name, 'addresses': [ip['ips']['ipv4']], 'router_ips': [router_of('node1')]}
    try:
        rc, check = labutil.adhoc(inv, 'node1', 'podnet.fabric.endpoint', args, check=True)
        assert rc == 0 and check['changed'] and check['plan'][0] == {'action': 'create_netns', 'name': name}, check
        assert name not in netns_list('node1')
        rc, res = labutil.adhoc(inv, 'node1', 'podnet.fabric.endpoint', args)
        assert rc == 0 and res['changed'] and res['address'] == ip['ips']['ipv4'], res
        dev = res['device']
        assert re.match(r'^lxc[0-9a-f]{12}$', dev) and link('node1', dev)['linkinfo']['info_kind'] == 'veth'
        assert [r for r in routes('node1') if r['dst'] == ip['ips']['ipv4'] and r.get('dev') == dev
                and r.get('protocol') == '201']
        in_ep = ['nsenter', '--net=/run/netns/' + name, '--']
        addrs = json.loads(nsenter(PREFIX, 'node1', in_ep + ['ip', '-j', 'addr', 'show', 'dev', 'eth0']))
        assert [a['local'] for a in addrs[0]['addr_info'] if a['family'] == 'inet'] == [ip['ips']['ipv4']]
        # Pod to pod across the underlay: node1's workload to node2's health endpoint, ping and TCP.
        nsenter(PREFIX, 'node1', in_ep + ['ping', '-c', '1', '-W', '2', health_ip('node2')])
        reply = nsenter(PREFIX, 'node1', in_ep + [
            os.path.join(labutil.VENV_BIN, 'python'), '-c',
            'import socket;s=socket.create_connection(("%s",4240),3);print(s.recv(99).decode())' % health_ip('node2')])
        assert reply.strip() == 'podnet-health node2'
        rc, again = labutil.adhoc(inv, 'node1', 'podnet.fabric.endpoint', args)
        assert rc == 0 and not again['changed'] and again['plan'] == [], again
    finally:
        rc, res = labutil.adhoc(inv, 'node1', 'podnet.fabric.endpoint', {'name': name, 'state': 'absent'})
        assert rc == 0, res
        rc, rel = labutil.adhoc(inv, 'node1', 'podnet.fabric.ipam_endpoint',
                                {'endpoint_id': name, 'update_ledger': False, 'state': 'absent'})
        assert rc == 0, rel
    assert res['changed'] and name not in netns_list('node1') and link('node1', res['device']) is None
    assert not [r for r in routes('node1') if r.get('dev') == res['device']]
    assert name not in [rec.get('owner') for rec in store_of('node1')['used'].values()]
    phe.keep()


def test_unreachable_targets_fail_with_one_line_per_pair(phe):
    phe.need('healthy')
    _cross_routes()
    node2_cidr = ipaddress.ip_network(lease_of('node2')['cidrs']['ipv4'][0])
    ghost = str(node2_cidr.network_address + 250)     # in node2's pod CIDR, no endpoint holds it
    targets = [{'name': 'node2', 'address': health_ip('node2')},
               {'name': 'ghost', 'address': ghost},
               {'name': 'node1', 'address': health_ip('node2')}]    # reaches node2's endpoint, not node1's
    t0 = time.monotonic()
    results = _probe(phe, 'ghost', targets, health_tcp_timeout=1.0, health_ping_timeout=1.0)
    assert time.monotonic() - t0 < 60
    res = results['node1']
    assert res['failed'] and not res['reachable'] and not res['changed']
    lines = res['failures']
    assert lines[0] == 'node1 -> ghost (%s): ping no echo reply (0 of 3)' % ghost
    assert re.match(r'^node1 -> ghost \(%s\): tcp 4240 (timed out|no route to host)$' % re.escape(ghost), lines[1])
    assert lines[2] == 'node1 -> node1 (%s): tcp 4240 answered as node2, expected node1' % health_ip('node2')
    assert len(lines) == 3
    for line in lines:
        assert line in res['msg']
    ok = [r for r in res['results'] if r['name'] == 'node2'][0]
    assert ok['ping']['ok'] and ok['tcp']['ok']
    phe.keep()


def test_connectivity_probes_in_check_mode_too(phe):
    phe.need('healthy')
    _cross_routes()
    targets = [{'name': n, 'address': health_ip(n)} for n in NODES]
    before = snapshot()
    results = _probe(phe, 'check', targets, check=True)
    for src in NODES:
        assert results[src]['reachable'] and all(r['tcp']['ok'] for r in results[src]['results'])
    assert snapshot() == before
    phe.keep()


def test_drift_is_reported_in_check_mode_and_repaired(phe):
    phe.need('healthy')
    old_pid = pidfile_pid('node2')
    ip2 = health_ip('node2')
    os.kill(old_pid, 15)                 # our responder, by PID
    assert gone(old_pid)
    nsenter(PREFIX, 'node2', ['ip', 'route', 'del', ip2, 'dev', 'lxc_health'])
    ns_run('node2', ['ip', 'link', 'set', 'eth0', 'mtu', '1400'])
    before = snapshot()
    out = run_health(phe, check=True)
    assert recap(out)['node2']['changed'] >= 1 and recap(out)['node1']['changed'] == 0, out
    assert snapshot() == before and not responders('node2')
    out = run_health(phe)
    assert recap(out)['node2']['changed'] >= 1 and recap(out)['node1']['changed'] == 0, out
    ip, pid = assert_endpoint('node2')
    assert ip == ip2 and pid != old_pid
    out = run_health(phe)
    assert all(recap(out)[n]['changed'] == 0 for n in NODES), out
    phe.keep()


def test_absent_leaves_nothing(phe):
    phe.need('healthy')
    pids = dict((n, pidfile_pid(n)) for n in NODES)
    out = run_health(phe, '-e', 'health_state=absent')
    assert all(recap(out)[n]['changed'] >= 2 for n in NODES), out
    for n in NODES:
        assert gone(pids[n]) and not responders(n)
        assert NETNS not in netns_list(n)
        assert link(n, 'lxc_health') is None
        assert not [r for r in routes(n) if r.get('protocol') == '201' and r.get('dev') == 'lxc_health']
        assert pidfile_pid(n) is None
        assert health_ip(n) is None                     # the IP went back to the node's pool
    out = run_health(phe, '-e', 'health_state=absent')
    assert all(recap(out)[n]['changed'] == 0 for n in NODES), out
    phe.left('bare')


def _assert_nothing_holds(held):
    """After lab_down: no responder of `held` ({node: (pid, endpoint netns inode)}) survived, and
    nothing on the machine still holds an endpoint namespace (a process in it or an open fd)."""
    inodes = set(ino for _pid, ino in held.values())
    for n, (pid, _ino) in held.items():
        assert gone(pid), '%s: responder %d survived lab teardown' % (n, pid)
    for entry in os.listdir('/proc'):
        if not entry.isdigit():
            continue
        try:
            assert os.stat('/proc/%s/ns/net' % entry).st_ino not in inodes or zombie(int(entry)), entry
            for fd in os.listdir('/proc/%s/fd' % entry):
                target = os.readlink('/proc/%s/fd/%s' % (entry, fd))
                assert not any(target == 'net:[%d]' % i for i in inodes), (entry, target)
        except OSError:
            pass


def _link_local(node, dev='eth0'):
    for entry in ipj(node, '-6', 'addr', 'show', 'dev', dev):
        for a in entry.get('addr_info', []):
            if a.get('scope') == 'link':
                return a['local']
    raise AssertionError('%s: %s has no link-local address' % (node, dev))


def test_dual_stack_endpoint_answers_over_both_families_and_lab_down_leaves_nothing(phe, tmp_path):
    """A 2-node dual-stack lab of its own (the IPv4 lab goes first: same prefix): IPv6 /128 on eth0,
    routes through the node's IPv6 router IP, proxy NDP for it on lxc_health, probes over both
    families. Then lab_down ends the responders and leaves no namespace."""
    phe.need('down')
    nodes = ['node1', 'node2']
    with open(os.path.join(labutil.REPO, 'inventories', 'lab', 'group_vars', 'all', 'cluster.yml')) as f:
        cluster = yaml.safe_load(f)
    cluster['podnet_ipam']['cluster_pool']['ipv6'] = {'cidrs': ['fd00:10::/104'], 'mask_size': 120}
    inv = write_lab_inventory(str(tmp_path / 'inv'), PREFIX, nodes=2,
                              cluster_vars=write_yaml(tmp_path / 'cluster.yml', cluster))
    try:
        run_ok('lab_up.yml', inv)
        run_ok(write_yaml(tmp_path / 'setup.yml', SETUP), inv)
        health_yml = write_yaml(tmp_path / 'health.yml', HEALTH)
        run_ok(health_yml, inv)
        addrs = {}
        for n in nodes:
            used = store_of(n)['used']
            v4 = [ip for ip, rec in used.items() if rec['owner'] == 'podnet-health' and ':' not in ip]
            v6 = [ip for ip, rec in used.items() if rec['owner'] == 'podnet-health' and ':' in ip]
            assert len(v4) == len(v6) == 1
            addrs[n] = (v4[0], v6[0])
            router6 = str(ipaddress.ip_network(lease_of(n)['cidrs']['ipv6'][0]).network_address + 1)
            assert global_addrs(n, 'eth0', endpoint=True) == sorted(['%s/32' % v4[0], '%s/128' % v6[0]])
            inside6 = sorted((r['dst'], r.get('gateway'), r.get('protocol'))
                             for r in routes(n, endpoint=True, family='-6') if r.get('protocol') == '201')
            assert inside6 == [('default', router6, '201'), (router6, None, '201')]
            ours6 = [r['dst'] for r in routes(n, family='-6') if r.get('protocol') == '201'
                     and r.get('dev') == 'lxc_health']
            assert ours6 == [v6[0]]
            proxy = nsenter(PREFIX, n, ['ip', '-6', 'neigh', 'show', 'proxy', 'dev', 'lxc_health']).split()
            assert proxy[:1] == [router6]
            assert nsenter(PREFIX, n, ['sysctl', '-n', 'net.ipv6.conf.lxc_health.proxy_ndp']).strip() == '1'
            # The node answers neighbour solicitations for its router IP on lxc_health.
            ns_run(n, ['ping', '-6', '-c', '1', '-W', '2', router6])
            neigh = [e for e in ipj(n, '-6', 'neigh', 'show', 'dev', 'eth0', endpoint=True) if e['dst'] == router6]
            assert neigh and neigh[0]['lladdr'] == link(n, 'lxc_health')['address']
            pid = pidfile_pid(n)
            assert pid and responders(n) == [pid]
            assert os.stat('/proc/%d/ns/net' % pid).st_ino == netns_inode(n)
        out = run_ok(health_yml, inv)
        assert all(recap(out)[n]['changed'] == 0 for n in nodes), out
        # Temporary routes between the two nodes (no routing role here): IPv6 via the other node's
        # link-local underlay address.
        for n, other in (('node1', 'node2'), ('node2', 'node1')):
            lease = lease_of(other)
            nsenter(PREFIX, n, ['ip', 'route', 'replace', lease['cidrs']['ipv4'][0], 'via', lease['ip']])
            nsenter(PREFIX, n, ['ip', '-6', 'route', 'replace', lease['cidrs']['ipv6'][0], 'via', _link_local(other),
                                'dev', 'eth0'])
        outdir = tmp_path / 'probe'
        outdir.mkdir()
        # No targets: every host of the play, IPv4 and IPv6.
        run_ok(write_yaml(outdir / 'probe.yml', probe_play(str(outdir))), inv)
        for n in nodes:
            with open(str(outdir / ('%s.json' % n))) as f:
                res = json.load(f)
            assert res['reachable'], res
            assert sorted(r['address'] for r in res['results']) == sorted(a for n2 in nodes for a in addrs[n2])
            for r in res['results']:
                assert r['ping']['received'] >= 1 and r['tcp']['reply'] == 'podnet-health %s' % r['name']
        held = dict((n, (pidfile_pid(n), netns_inode(n))) for n in nodes)
        assert all(pid and ino for pid, ino in held.values()), held
    finally:
        rc, out = playbook('lab_down.yml', inv)     # a failed test is cleaned up too (checked below)
    assert rc == 0, out
    labutil.assert_lab_gone(PREFIX)
    _assert_nothing_holds(held)
    phe.left('down')
