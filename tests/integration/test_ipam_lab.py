"""IPAM on a real lab (prefix `ptb`): allocation through the ledger, leases on the nodes, router IPs
on podnet_host, --limit, adding and pruning nodes, endpoint IPs, exhaustion, the report.

Assertions are on kernel state (read with nsenter), the ledger file and the nodes' files, never on
a task's status alone. Each test asks the module's lab for the state it needs (`ptb.need(...)`):
a fresh lab, the 2 nodes converged by site.yml, or node3 added as well; the lab is rebuilt when it
is not known to be in that state (a test run alone, or after a test that failed midway). The file
order only saves rebuilds: the tests that add and remove node3 come last.
"""
import ipaddress
import json
import os
import time

import labutil
import pytest
import yaml

from labutil import LAB_ROOT, nsenter, playbook, recap, run_ok, write_lab_inventory

PREFIX = 'ptb'
NODES = ['node1', 'node2']
LEDGER = os.path.join(LAB_ROOT, PREFIX, 'ledger.json')
LEASE = '/var/lib/podnet/ipam/lease.json'
STORE = '/var/lib/podnet/ipam/endpoints.json'
POOL = ipaddress.ip_network('10.244.0.0/16')

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason='the lab needs root')


class Lab(labutil.LabState):
    """The ptb lab. States: 'fresh' (lab_up only: no ledger, no lease), 'converged' (site.yml on
    node1-2 with the lab's ledger; no endpoint but the health endpoints), 'node3' (then lab_up and
    site.yml with node3 as well: node3 holds 10.244.2.0/24)."""

    def __init__(self, base):
        labutil.LabState.__init__(self, self._build)
        self.inv2 = write_lab_inventory(str(base / 'inv2'), PREFIX, nodes=2)
        self.inv3 = write_lab_inventory(str(base / 'inv3'), PREFIX, nodes=3)

    def _build(self, state, current):
        if not (state == 'node3' and current == 'converged'):
            labutil.fresh(PREFIX)                   # the ledger lives in the lab dir: it goes too
            run_ok('lab_up.yml', self.inv2)
            if state == 'fresh':
                return
            run_ok('site.yml', self.inv2)
            if state == 'converged':
                return
        run_ok('lab_up.yml', self.inv3)
        run_ok('site.yml', self.inv3)


@pytest.fixture(scope='module')
def ptb(tmp_path_factory):
    labutil.fresh(PREFIX)                           # whatever a killed earlier run left
    host_links = set(os.listdir('/sys/class/net'))
    lab = Lab(tmp_path_factory.mktemp('ipam'))
    try:
        yield lab
    finally:
        # lab_down leaves nothing of the lab (node3 included), whatever the tests left in it.
        try:
            run_ok('lab_down.yml', lab.inv3)
            labutil.assert_lab_gone(PREFIX)
        finally:
            labutil.fresh(PREFIX)
    assert set(os.listdir('/sys/class/net')) == host_links


def lab_snapshot(prefix, nodes):
    """labutil.lab_snapshot once IPv6 duplicate address detection has settled: the kernel drops
    the 'tentative' flag and adds local routes for link-local addresses of new devices by itself
    about a second later, which is not a change podnet made."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if not any('tentative' in nsenter(prefix, n, ['ip', '-6', 'addr', 'show']) for n in nodes):
            break
        time.sleep(0.2)
    return labutil.lab_snapshot(prefix, nodes)


def ledger(path=LEDGER):
    with open(path) as f:
        return json.load(f)


def ledger_bytes(path=LEDGER):
    with open(path, 'rb') as f:
        return f.read()


def node_json(node, path):
    text = nsenter(PREFIX, node, ['cat', path], check=False)
    return json.loads(text) if text else None


def host_addresses(node):
    """podnet_host's addresses as the node's kernel holds them (link-local left out)."""
    links = json.loads(nsenter(PREFIX, node, ['ip', '-j', 'addr', 'show', 'dev', 'podnet_host']) or '[]')
    return sorted('%s/%d' % (a['local'], a['prefixlen']) for link in links for a in link.get('addr_info', [])
                  if a.get('scope') != 'link')


def router(cidr):
    net = ipaddress.ip_network(cidr)
    return '%s/%d' % (net.network_address + 1, net.max_prefixlen)


def write_vars(path, data):
    with open(path, 'w') as f:
        yaml.safe_dump(data, f)
    return path


def remove_ledger(path):
    """A test's own ledger file in the lab dir, and its lock file."""
    for p in (path, path + '.lock'):
        if os.path.exists(p):
            os.unlink(p)


def endpoint_play(path, tasks, hosts='node1'):
    """A playbook: validate on localhost (ipam_endpoint records use in the ledger), then tasks."""
    with open(path, 'w') as f:
        yaml.safe_dump([
            {'name': 'validate', 'hosts': 'localhost', 'gather_facts': False,
             'tasks': [{'name': 'validate', 'podnet.fabric.validate': {}}]},
            {'name': 'endpoints', 'hosts': hosts, 'gather_facts': False, 'tasks': tasks},
        ], f)
    return str(path)


def test_check_mode_plans_then_site_allocates_and_podnet_host_holds_the_router_ips(ptb):
    ptb.need('fresh')
    out = run_ok('site.yml', ptb.inv2, check=True)
    assert not os.path.exists(LEDGER), 'check mode wrote the ledger'
    assert all(node_json(n, LEASE) is None for n in NODES)
    assert '10.244.0.0/24' in out and '10.244.1.0/24' in out  # the diff shows the planned allocations

    run_ok('site.yml', ptb.inv2)
    doc = ledger()
    assert sorted(doc['nodes']) == NODES and doc['cluster'] == 'lab'
    # One allocation write (serial 1); later writes record the health endpoints' IP use.
    assert all(doc['nodes'][n]['allocated_at'] == 1 for n in NODES)
    assert all(doc['nodes'][n]['pools_used'] == {'default': {'ipv4': 1}} for n in NODES), doc
    cidrs = [doc['nodes'][n]['cidrs']['ipv4'][0] for n in NODES]
    assert cidrs == ['10.244.0.0/24', '10.244.1.0/24']
    for n, cidr in zip(NODES, cidrs):
        assert ipaddress.ip_network(cidr).subnet_of(POOL)
        assert host_addresses(n) == [router(cidr)]
        lease = node_json(n, LEASE)
        assert lease['node'] == n and lease['cidrs'] == doc['nodes'][n]['cidrs'] and lease['mode'] == 'cluster-pool'
        # The lease is in the node's own /var/lib, not on the host.
        assert os.path.exists(os.path.join(LAB_ROOT, PREFIX, n, 'varlib.upper', 'podnet', 'ipam', 'lease.json'))
    assert not os.path.exists(LEASE)
    ptb.left('converged')


def test_second_run_changes_nothing(ptb):
    ptb.need('converged')
    before = ledger_bytes()
    mtime = os.stat(LEDGER).st_mtime_ns
    snap = lab_snapshot(PREFIX, NODES)
    out = run_ok('site.yml', ptb.inv2)
    assert all(recap(out)[n]['changed'] == 0 for n in NODES), out
    assert ledger_bytes() == before and os.stat(LEDGER).st_mtime_ns == mtime
    assert lab_snapshot(PREFIX, NODES) == snap
    ptb.keep()


def test_limit_touches_only_that_node_and_moves_nothing(ptb):
    ptb.need('converged')
    before = ledger()
    others = lab_snapshot(PREFIX, ['node1'])
    want = node_json('node2', LEASE)
    # Drift on node2: its lease is gone and podnet_host lost its router IP.
    nsenter(PREFIX, 'node2', ['rm', '-f', LEASE])
    nsenter(PREFIX, 'node2', ['ip', 'addr', 'flush', 'dev', 'podnet_host', 'scope', 'global'])
    assert host_addresses('node2') == []

    out = run_ok('site.yml', ptb.inv2, extra=['--limit', 'node2'])
    hosts = set(recap(out))
    assert 'node2' in hosts and 'node1' not in hosts, out
    assert recap(out)['node2']['changed'] >= 2
    assert node_json('node2', LEASE) == want
    assert host_addresses('node2') == [router(before['nodes']['node2']['cidrs']['ipv4'][0])]
    assert ledger() == before
    assert lab_snapshot(PREFIX, ['node1']) == others
    ptb.keep()                                      # node2 repaired: converged again


def test_endpoint_ips_are_allocated_and_released_persistently(ptb, tmp_path):
    ptb.need('converged')
    alloc = endpoint_play(tmp_path / 'alloc.yml', [
        {'name': 'a', 'podnet.fabric.ipam_endpoint': {'endpoint_id': 'default/a'}},
        {'name': 'b', 'podnet.fabric.ipam_endpoint': {'endpoint_id': 'default/b'}}])
    run_ok(alloc, ptb.inv2)
    used = node_json('node1', STORE)['used']
    # .2 is the node's health endpoint (site.yml's health role)
    assert used == {'10.244.0.2': {'owner': 'podnet-health', 'pool': 'default'},
                    '10.244.0.3': {'owner': 'default/a', 'pool': 'default'},
                    '10.244.0.4': {'owner': 'default/b', 'pool': 'default'}}
    assert ledger()['nodes']['node1']['pools_used'] == {'default': {'ipv4': 3}}
    assert list(node_json('node2', STORE)['used']) == ['10.244.1.2']

    # A later run (a new process, as a new job would be) gives the same endpoints the same IPs.
    out = run_ok(alloc, ptb.inv2)
    assert recap(out)['node1']['changed'] == 0, out
    assert node_json('node1', STORE)['used'] == used

    release = endpoint_play(tmp_path / 'release.yml', [
        {'name': 'release a', 'podnet.fabric.ipam_endpoint': {'endpoint_id': 'default/a', 'state': 'absent'}},
        {'name': 'c', 'podnet.fabric.ipam_endpoint': {'endpoint_id': 'default/c'}, 'register': 'c'},
        {'name': 'show', 'ansible.builtin.debug': {'msg': 'C-IP {{ c.ips.ipv4 }}'}}])
    out = run_ok(release, ptb.inv2)
    assert 'C-IP 10.244.0.3' in out                  # the released address is handed out again
    assert node_json('node1', STORE)['used'] == {'10.244.0.2': {'owner': 'podnet-health', 'pool': 'default'},
                                                 '10.244.0.3': {'owner': 'default/c', 'pool': 'default'},
                                                 '10.244.0.4': {'owner': 'default/b', 'pool': 'default'}}

    cleanup = endpoint_play(tmp_path / 'cleanup.yml', [
        {'name': 'release %s' % e, 'podnet.fabric.ipam_endpoint': {'endpoint_id': e, 'state': 'absent'}}
        for e in ('default/b', 'default/c')])
    run_ok(cleanup, ptb.inv2)
    assert list(node_json('node1', STORE)['used']) == ['10.244.0.2']
    assert ledger()['nodes']['node1']['pools_used'] == {'default': {'ipv4': 1}}
    ptb.keep()                                      # the endpoints are released again


def test_report_writes_json_and_html(ptb, tmp_path):
    ptb.need('converged')
    out = run_ok('ipam_report.yml', ptb.inv2, extra=['-e', 'ipam_report_dir=%s' % tmp_path])
    assert 'default  ipv4    10.244.0.0/16  /24   2 of 256 (0.8%)' in out
    with open(str(tmp_path / 'ipam.json')) as f:
        report = json.load(f)
    assert sorted(report['nodes']) == NODES and report['pools']['default']['ipv4']['blocks']['used'] == 2
    page = (tmp_path / 'ipam.html').read_text()
    assert '<svg' in page and 'node2' in page
    ptb.keep()


def test_exhausted_pool_fails_with_pool_size_and_use_and_changes_nothing(ptb, tmp_path):
    ptb.need('converged')                           # converged: node_prereqs has nothing left to change
    tiny = os.path.join(LAB_ROOT, PREFIX, 'ledger-tiny.json')
    # Three blocks of a 4-block pool are held by nodes that left the inventory (not pruned).
    with open(tiny, 'w') as f:
        json.dump({'version': 1, 'cluster': 'lab', 'serial': 5, 'identities': {}, 'nodes': {
            'old1': {'ip': '192.168.50.91', 'cidrs': {'ipv4': ['10.99.0.0/24'], 'ipv6': []}, 'pools': {}},
            'old2': {'ip': '192.168.50.92', 'cidrs': {'ipv4': ['10.99.2.0/24'], 'ipv6': []}, 'pools': {}},
            'old3': {'ip': '192.168.50.93', 'cidrs': {'ipv4': ['10.99.3.0/24'], 'ipv6': []}, 'pools': {}}}}, f)
    try:
        before = ledger_bytes(tiny)
        snap = lab_snapshot(PREFIX, NODES)
        ev = write_vars(str(tmp_path / 'tiny.yml'), {'podnet_ipam': {
            'mode': 'cluster-pool', 'ledger': {'backend': 'file', 'path': tiny},
            'cluster_pool': {'ipv4': {'cidrs': ['10.99.0.0/22'], 'mask_size': 24}}}})
        rc, out = playbook('site.yml', ptb.inv2, extra=['-e', '@' + ev])
        assert rc != 0, out
        flat = ' '.join(out.split())
        assert ("pool 'default' (10.99.0.0/22, mask 24: 4 blocks) is exhausted: 4 of 4 blocks in use; "
                "cannot allocate for node2") in flat, out
        assert ledger_bytes(tiny) == before
        assert lab_snapshot(PREFIX, NODES) == snap
    finally:
        remove_ledger(tiny)
    ptb.keep()


def test_exhausted_node_cidr_fails_the_endpoint_with_pool_size_and_use(ptb, tmp_path):
    ptb.need('converged')
    small = os.path.join(LAB_ROOT, PREFIX, 'ledger-small.json')
    remove_ledger(small)
    ev = write_vars(str(tmp_path / 'small.yml'), {'podnet_ipam': {
        'mode': 'cluster-pool', 'ledger': {'backend': 'file', 'path': small},
        'cluster_pool': {'ipv4': {'cidrs': ['10.98.0.0/24'], 'mask_size': 30}}}})
    try:
        run_ok('site.yml', ptb.inv2, extra=['-e', '@' + ev])
        assert host_addresses('node1') == ['10.98.0.1/32']
        # The /30's one endpoint address went to the node's health endpoint (site.yml's health role).
        play = endpoint_play(tmp_path / 'full.yml', [
            {'name': 'first', 'podnet.fabric.ipam_endpoint': {'endpoint_id': 'default/first'}}])
        rc, out = playbook(play, ptb.inv2, extra=['-e', '@' + ev])
        assert rc != 0, out
        flat = ' '.join(out.split())
        assert ("pool 'default' (10.98.0.0/30: 1 endpoint address) is exhausted: 1 of 1 in use; cannot allocate "
                "an ipv4 address for endpoint default/first") in flat, out
        assert node_json('node1', STORE)['used'] == {'10.98.0.2': {'owner': 'podnet-health', 'pool': 'default'}}
        assert ledger(small)['nodes']['node1']['pools_used'] == {'default': {'ipv4': 1}}

        # Back to the lab's own ledger: the nodes get their CIDRs back, unchanged.
        run_ok('site.yml', ptb.inv2)
        assert host_addresses('node1') == ['10.244.0.1/32']
        assert node_json('node1', LEASE)['cidrs']['ipv4'] == ['10.244.0.0/24']
        assert node_json('node1', STORE)['used'] == {'10.244.0.2': {'owner': 'podnet-health', 'pool': 'default'}}
    finally:
        remove_ledger(small)
    ptb.keep()


# Last in the file, as they leave node3 behind: run in this order, nothing needs rebuilding.

def test_adding_a_node_allocates_a_new_cidr_without_moving_others(ptb):
    ptb.need('converged')
    before = ledger()
    snap = lab_snapshot(PREFIX, NODES)
    run_ok('lab_up.yml', ptb.inv3)
    run_ok('site.yml', ptb.inv3)
    doc = ledger()
    for n in NODES:
        assert doc['nodes'][n] == before['nodes'][n]
    assert doc['nodes']['node3']['cidrs']['ipv4'] == ['10.244.2.0/24']
    assert host_addresses('node3') == ['10.244.2.1/32']
    assert node_json('node3', LEASE)['cidrs']['ipv4'] == ['10.244.2.0/24']
    # The other nodes gain a route to node3's CIDR (routing follows the ledger) and nothing else.
    after = lab_snapshot(PREFIX, NODES)
    for n in NODES:
        added = [r for r in after[n]['routes'] if r not in snap[n]['routes']]
        assert [r for r in snap[n]['routes'] if r not in after[n]['routes']] == []
        assert [r['dst'] for r in added] == ['10.244.2.0/24'], added
        after[n]['routes'] = snap[n]['routes']
    assert after == snap
    ptb.left('node3')


def test_removed_node_keeps_its_cidr_until_prune_then_it_is_reused(ptb):
    ptb.need('node3')
    run_ok('lab_up.yml', ptb.inv2)                  # node3 leaves the lab and the inventory
    run_ok('site.yml', ptb.inv2)
    doc = ledger()
    assert doc['nodes']['node3']['cidrs']['ipv4'] == ['10.244.2.0/24'], 'a removed node lost its CIDR without prune'

    kept = dict((n, doc['nodes'][n]) for n in NODES)
    out = run_ok('site.yml', ptb.inv2, extra=['-e', 'ipam_prune=true'], check=True)
    assert 'node3' in ledger()['nodes'], 'check mode pruned'
    assert 'node3: released 10.244.2.0/24 (not in the inventory; prune)' in out
    run_ok('site.yml', ptb.inv2, extra=['-e', 'ipam_prune=true'])
    doc = ledger()
    assert 'node3' not in doc['nodes']
    assert dict((n, doc['nodes'][n]) for n in NODES) == kept

    # The released block is free again: the next node that needs one gets it.
    run_ok('lab_up.yml', ptb.inv3)
    run_ok('site.yml', ptb.inv3, extra=['--limit', 'node3'])
    assert ledger()['nodes']['node3']['cidrs']['ipv4'] == ['10.244.2.0/24']
    assert host_addresses('node3') == ['10.244.2.1/32']
    # Not 'node3' again: node1..2 have not run since node3 came back. A later test rebuilds.
