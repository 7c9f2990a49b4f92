"""IPAM on a real lab (prefix `ptb`): allocation through the ledger, leases on the nodes, router IPs
on podnet_host, --limit, adding and pruning nodes, endpoint IPs, exhaustion, the report.

Assertions are on kernel state (read with nsenter), the ledger file and the nodes' files, never on
a task's status alone. The tests run in file order and build on each other's lab state.
"""
import ipaddress
import json
import os
import time

import labutil
import pytest
import yaml

from labutil import LAB_ROOT, mountpoints, netns_names, nsenter, playbook, recap, write_lab_inventory

PREFIX = 'ptb'
NODES = ['node1', 'node2', 'node3']
LEDGER = os.path.join(LAB_ROOT, PREFIX, 'ledger.json')
LEASE = '/var/lib/podnet/ipam/lease.json'
STORE = '/var/lib/podnet/ipam/endpoints.json'
POOL = ipaddress.ip_network('10.244.0.0/16')

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason='the lab needs root')


@pytest.fixture(scope='module')
def labs(tmp_path_factory):
    base = tmp_path_factory.mktemp('ipam')
    inv3 = write_lab_inventory(str(base / 'inv3'), PREFIX, nodes=3)
    inv4 = write_lab_inventory(str(base / 'inv4'), PREFIX, nodes=4)
    host_links = set(os.listdir('/sys/class/net'))
    rc, out = playbook('lab_up.yml', inv3)
    assert rc == 0, out
    yield {'inv3': inv3, 'inv4': inv4, 'base': base}
    playbook('lab_down.yml', inv4)
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


def endpoint_play(path, tasks, hosts='node1'):
    """A playbook: validate on localhost (ipam_endpoint records use in the ledger), then tasks."""
    with open(path, 'w') as f:
        yaml.safe_dump([
            {'name': 'validate', 'hosts': 'localhost', 'gather_facts': False,
             'tasks': [{'name': 'validate', 'podnet.fabric.validate': {}}]},
            {'name': 'endpoints', 'hosts': hosts, 'gather_facts': False, 'tasks': tasks},
        ], f)
    return str(path)


def test_check_mode_plans_then_site_allocates_and_podnet_host_holds_the_router_ips(labs):
    rc, out = playbook('site.yml', labs['inv3'], check=True)
    assert rc == 0, out
    assert not os.path.exists(LEDGER), 'check mode wrote the ledger'
    assert all(node_json(n, LEASE) is None for n in NODES)
    assert '10.244.0.0/24' in out and '10.244.2.0/24' in out  # the diff shows the planned allocations

    rc, out = playbook('site.yml', labs['inv3'])
    assert rc == 0, out
    doc = ledger()
    assert sorted(doc['nodes']) == NODES and doc['cluster'] == 'lab'
    # One allocation write (serial 1); later writes record the health endpoints' IP use.
    assert all(doc['nodes'][n]['allocated_at'] == 1 for n in NODES)
    assert all(doc['nodes'][n]['pools_used'] == {'default': {'ipv4': 1}} for n in NODES), doc
    cidrs = [doc['nodes'][n]['cidrs']['ipv4'][0] for n in NODES]
    assert cidrs == ['10.244.0.0/24', '10.244.1.0/24', '10.244.2.0/24']
    for n, cidr in zip(NODES, cidrs):
        assert ipaddress.ip_network(cidr).subnet_of(POOL)
        assert host_addresses(n) == [router(cidr)]
        lease = node_json(n, LEASE)
        assert lease['node'] == n and lease['cidrs'] == doc['nodes'][n]['cidrs'] and lease['mode'] == 'cluster-pool'
        # The lease is in the node's own /var/lib, not on the host.
        assert os.path.exists(os.path.join(LAB_ROOT, PREFIX, n, 'varlib.upper', 'podnet', 'ipam', 'lease.json'))
    assert not os.path.exists(LEASE)


def test_second_run_changes_nothing(labs):
    before = ledger_bytes()
    mtime = os.stat(LEDGER).st_mtime_ns
    snap = lab_snapshot(PREFIX, NODES)
    rc, out = playbook('site.yml', labs['inv3'])
    assert rc == 0, out
    assert all(recap(out)[n]['changed'] == 0 for n in NODES), out
    assert ledger_bytes() == before and os.stat(LEDGER).st_mtime_ns == mtime
    assert lab_snapshot(PREFIX, NODES) == snap


def test_limit_touches_only_that_node_and_moves_nothing(labs):
    before = ledger()
    others = lab_snapshot(PREFIX, ['node1', 'node3'])
    want = node_json('node2', LEASE)
    # Drift on node2: its lease is gone and podnet_host lost its router IP.
    nsenter(PREFIX, 'node2', ['rm', '-f', LEASE])
    nsenter(PREFIX, 'node2', ['ip', 'addr', 'flush', 'dev', 'podnet_host', 'scope', 'global'])
    assert host_addresses('node2') == []

    rc, out = playbook('site.yml', labs['inv3'], extra=['--limit', 'node2'])
    assert rc == 0, out
    hosts = set(recap(out))
    assert 'node2' in hosts and not hosts & {'node1', 'node3'}, out
    assert recap(out)['node2']['changed'] >= 2
    assert node_json('node2', LEASE) == want
    assert host_addresses('node2') == [router(before['nodes']['node2']['cidrs']['ipv4'][0])]
    assert ledger() == before
    assert lab_snapshot(PREFIX, ['node1', 'node3']) == others


def test_adding_a_node_allocates_a_new_cidr_without_moving_others(labs):
    before = ledger()
    snap = lab_snapshot(PREFIX, NODES)
    rc, out = playbook('lab_up.yml', labs['inv4'])
    assert rc == 0, out
    rc, out = playbook('site.yml', labs['inv4'])
    assert rc == 0, out
    doc = ledger()
    for n in NODES:
        assert doc['nodes'][n] == before['nodes'][n]
    assert doc['nodes']['node4']['cidrs']['ipv4'] == ['10.244.3.0/24']
    assert host_addresses('node4') == ['10.244.3.1/32']
    assert node_json('node4', LEASE)['cidrs']['ipv4'] == ['10.244.3.0/24']
    # The other nodes gain a route to node4's CIDR (routing follows the ledger) and nothing else.
    after = lab_snapshot(PREFIX, NODES)
    for n in NODES:
        added = [r for r in after[n]['routes'] if r not in snap[n]['routes']]
        assert [r for r in snap[n]['routes'] if r not in after[n]['routes']] == []
        assert [r['dst'] for r in added] == ['10.244.3.0/24'], added
        after[n]['routes'] = snap[n]['routes']
    assert after == snap


def test_removed_node_keeps_its_cidr_until_prune_then_it_is_reused(labs):
    rc, out = playbook('lab_up.yml', labs['inv3'])           # node4 leaves the lab and the inventory
    assert rc == 0, out
    rc, out = playbook('site.yml', labs['inv3'])
    assert rc == 0, out
    doc = ledger()
    assert doc['nodes']['node4']['cidrs']['ipv4'] == ['10.244.3.0/24'], 'a removed node lost its CIDR without prune'

    kept = dict((n, doc['nodes'][n]) for n in NODES)
    rc, out = playbook('site.yml', labs['inv3'], extra=['-e', 'ipam_prune=true'], check=True)
    assert rc == 0, out
    assert 'node4' in ledger()['nodes'], 'check mode pruned'
    assert 'node4: released 10.244.3.0/24 (not in the inventory; prune)' in out
    rc, out = playbook('site.yml', labs['inv3'], extra=['-e', 'ipam_prune=true'])
    assert rc == 0, out
    doc = ledger()
    assert 'node4' not in doc['nodes']
    assert dict((n, doc['nodes'][n]) for n in NODES) == kept

    # The released block is free again: the next node that needs one gets it.
    rc, out = playbook('lab_up.yml', labs['inv4'])
    assert rc == 0, out
    rc, out = playbook('site.yml', labs['inv4'], extra=['--limit', 'node4'])
    assert rc == 0, out
    assert ledger()['nodes']['node4']['cidrs']['ipv4'] == ['10.244.3.0/24']
    assert host_addresses('node4') == ['10.244.3.1/32']
    # Back to three nodes for the tests that follow.
    assert playbook('lab_up.yml', labs['inv3'])[0] == 0
    rc, out = playbook('site.yml', labs['inv3'], extra=['-e', 'ipam_prune=true'])
    assert rc == 0, out
    assert sorted(ledger()['nodes']) == NODES


def test_endpoint_ips_are_allocated_and_released_persistently(labs, tmp_path):
    alloc = endpoint_play(tmp_path / 'alloc.yml', [
        {'name': 'a', 'podnet.fabric.ipam_endpoint': {'endpoint_id': 'default/a'}},
        {'name': 'b', 'podnet.fabric.ipam_endpoint': {'endpoint_id': 'default/b'}}])
    rc, out = playbook(alloc, labs['inv3'])
    assert rc == 0, out
    used = node_json('node1', STORE)['used']
    # .2 is the node's health endpoint (site.yml's health role)
    assert used == {'10.244.0.2': {'owner': 'podnet-health', 'pool': 'default'},
                    '10.244.0.3': {'owner': 'default/a', 'pool': 'default'},
                    '10.244.0.4': {'owner': 'default/b', 'pool': 'default'}}
    assert ledger()['nodes']['node1']['pools_used'] == {'default': {'ipv4': 3}}
    assert list(node_json('node2', STORE)['used']) == ['10.244.1.2']

    # A later run (a new process, as a new job would be) gives the same endpoints the same IPs.
    rc, out = playbook(alloc, labs['inv3'])
    assert rc == 0 and recap(out)['node1']['changed'] == 0, out
    assert node_json('node1', STORE)['used'] == used

    release = endpoint_play(tmp_path / 'release.yml', [
        {'name': 'release a', 'podnet.fabric.ipam_endpoint': {'endpoint_id': 'default/a', 'state': 'absent'}},
        {'name': 'c', 'podnet.fabric.ipam_endpoint': {'endpoint_id': 'default/c'}, 'register': 'c'},
        {'name': 'show', 'ansible.builtin.debug': {'msg': 'C-IP {{ c.ips.ipv4 }}'}}])
    rc, out = playbook(release, labs['inv3'])
    assert rc == 0, out
    assert 'C-IP 10.244.0.3' in out                  # the released address is handed out again
    assert node_json('node1', STORE)['used'] == {'10.244.0.2': {'owner': 'podnet-health', 'pool': 'default'},
                                                 '10.244.0.3': {'owner': 'default/c', 'pool': 'default'},
                                                 '10.244.0.4': {'owner': 'default/b', 'pool': 'default'}}

    cleanup = endpoint_play(tmp_path / 'cleanup.yml', [
        {'name': 'release %s' % e, 'podnet.fabric.ipam_endpoint': {'endpoint_id': e, 'state': 'absent'}}
        for e in ('default/b', 'default/c')])
    rc, out = playbook(cleanup, labs['inv3'])
    assert rc == 0, out
    assert list(node_json('node1', STORE)['used']) == ['10.244.0.2']
    assert ledger()['nodes']['node1']['pools_used'] == {'default': {'ipv4': 1}}


def test_report_writes_json_and_html(labs, tmp_path):
    rc, out = playbook('ipam_report.yml', labs['inv3'], extra=['-e', 'ipam_report_dir=%s' % tmp_path])
    assert rc == 0, out
    assert 'default  ipv4    10.244.0.0/16  /24   3 of 256 (1.2%)' in out
    with open(str(tmp_path / 'ipam.json')) as f:
        report = json.load(f)
    assert sorted(report['nodes']) == NODES and report['pools']['default']['ipv4']['blocks']['used'] == 3
    page = (tmp_path / 'ipam.html').read_text()
    assert '<svg' in page and 'node3' in page


def test_exhausted_pool_fails_with_pool_size_and_use_and_changes_nothing(labs, tmp_path):
    tiny = os.path.join(LAB_ROOT, PREFIX, 'ledger-tiny.json')
    # Two blocks of a 4-block pool are held by nodes that left the inventory (not pruned).
    with open(tiny, 'w') as f:
        json.dump({'version': 1, 'cluster': 'lab', 'serial': 5, 'identities': {}, 'nodes': {
            'old1': {'ip': '192.168.50.91', 'cidrs': {'ipv4': ['10.99.0.0/24'], 'ipv6': []}, 'pools': {}},
            'old2': {'ip': '192.168.50.92', 'cidrs': {'ipv4': ['10.99.2.0/24'], 'ipv6': []}, 'pools': {}}}}, f)
    before = ledger_bytes(tiny)
    snap = lab_snapshot(PREFIX, NODES)
    ev = write_vars(str(tmp_path / 'tiny.yml'), {'podnet_ipam': {
        'mode': 'cluster-pool', 'ledger': {'backend': 'file', 'path': tiny},
        'cluster_pool': {'ipv4': {'cidrs': ['10.99.0.0/22'], 'mask_size': 24}}}})
    rc, out = playbook('site.yml', labs['inv3'], extra=['-e', '@' + ev])
    assert rc != 0, out
    flat = ' '.join(out.split())
    assert ("pool 'default' (10.99.0.0/22, mask 24: 4 blocks) is exhausted: 4 of 4 blocks in use; "
            "cannot allocate for node3") in flat, out
    assert ledger_bytes(tiny) == before
    assert lab_snapshot(PREFIX, NODES) == snap


def test_exhausted_node_cidr_fails_the_endpoint_with_pool_size_and_use(labs, tmp_path):
    small = os.path.join(LAB_ROOT, PREFIX, 'ledger-small.json')
    ev = write_vars(str(tmp_path / 'small.yml'), {'podnet_ipam': {
        'mode': 'cluster-pool', 'ledger': {'backend': 'file', 'path': small},
        'cluster_pool': {'ipv4': {'cidrs': ['10.98.0.0/24'], 'mask_size': 30}}}})
    rc, out = playbook('site.yml', labs['inv3'], extra=['-e', '@' + ev])
    assert rc == 0, out
    assert host_addresses('node1') == ['10.98.0.1/32']
    # The /30's one endpoint address went to the node's health endpoint (site.yml's health role).
    play = endpoint_play(tmp_path / 'full.yml', [
        {'name': 'first', 'podnet.fabric.ipam_endpoint': {'endpoint_id': 'default/first'}}])
    rc, out = playbook(play, labs['inv3'], extra=['-e', '@' + ev])
    assert rc != 0, out
    flat = ' '.join(out.split())
    assert ("pool 'default' (10.98.0.0/30: 1 endpoint address) is exhausted: 1 of 1 in use; cannot allocate "
            "an ipv4 address for endpoint default/first") in flat, out
    assert node_json('node1', STORE)['used'] == {'10.98.0.2': {'owner': 'podnet-health', 'pool': 'default'}}
    assert ledger(small)['nodes']['node1']['pools_used'] == {'default': {'ipv4': 1}}

    # Back to the lab's own ledger: the nodes get their CIDRs back, unchanged.
    rc, out = playbook('site.yml', labs['inv3'])
    assert rc == 0, out
    assert host_addresses('node1') == ['10.244.0.1/32']
    assert node_json('node1', LEASE)['cidrs']['ipv4'] == ['10.244.0.0/24']
    assert node_json('node1', STORE)['used'] == {'10.244.0.2': {'owner': 'podnet-health', 'pool': 'default'}}


def test_zz_lab_down_leaves_nothing(labs):
    rc, out = playbook('lab_down.yml', labs['inv4'])
    assert rc == 0, out
    assert not [n for n in netns_names() if n.startswith(PREFIX + '-')]
    assert not [m for m in mountpoints() if m.startswith(os.path.join(LAB_ROOT, PREFIX))]
    assert not os.path.exists(os.path.join(LAB_ROOT, PREFIX))
