"""Recovery on a real lab (prefix `prr`): a node's unreadable lease restored from the ledger (and one
that disagrees corrected), then playbooks/ledger_rebuild.yml rebuilding a deleted and a truncated
ledger from the nodes' leases and endpoint stores, and refusing two leases that claim one CIDR.

Assertions are on the ledger file, the nodes' files (read with nsenter) and the PLAY RECAP; every
playbook's return code is checked. A 2-node lab is enough: node1 holds one endpoint (its health
endpoint) and node2 three, so their pools_used differ. Each test starts from the converged lab the
fixture built and leaves it converged with the same ledger.
"""
import glob
import json
import os
import subprocess
import time

import pytest
import yaml

from labutil import (LAB_ROOT, assert_lab_gone, nsenter, playbook, purge, recap, run_ok, write_lab_inventory)

from ansible_collections.podnet.fabric.plugins.module_utils.ipam import lease as ipam_lease
from ansible_collections.podnet.fabric.plugins.module_utils import lab as lab_utils

PREFIX = 'prr'
NODES = ['node1', 'node2']
LAB = os.path.join(LAB_ROOT, PREFIX)
LEDGER = os.path.join(LAB, 'ledger.json')
LEASE = '/var/lib/podnet/ipam/lease.json'
MODE = 'cluster-pool'

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason='the lab needs root')


def ledger():
    with open(LEDGER) as f:
        return json.load(f)


def node_file(node, path):
    return nsenter(PREFIX, node, ['cat', path], check=False)


def write_node_file(node, path, data):
    """Overwrite a file inside the node (its own /var/lib), as a process on the node would."""
    subprocess.run(lab_utils.nsenter_argv(PREFIX, node, ['sh', '-c', 'cat > "$0"', path]), input=data, check=True)
    assert node_file(node, path).encode() == data


def node_ls(node, directory='/var/lib/podnet/ipam'):
    return sorted(nsenter(PREFIX, node, ['ls', '-1', directory]).split())


def flat(out):
    return ' '.join(out.split())


def assert_converged_with_no_change(inv):
    out = run_ok('site.yml', inv)
    counts = recap(out)
    assert all(counts[n]['changed'] == 0 for n in NODES), out[-5000:]
    return out


def rebuild(inv, check=False):
    start = time.monotonic()
    rc, out = playbook('ledger_rebuild.yml', inv, check=check)
    print('ledger_rebuild.yml%s: rc %d in %.1f s' % (' --check' if check else '', rc, time.monotonic() - start))
    return rc, out


@pytest.fixture(scope='module')
def lab(tmp_path_factory):
    base = tmp_path_factory.mktemp('rebuild')
    inv = write_lab_inventory(str(base / 'inv'), PREFIX, nodes=len(NODES))
    purge(PREFIX)
    try:
        run_ok('lab_up.yml', inv)
        run_ok('site.yml', inv)
        # Endpoints beyond the health endpoints, so that every node's pools_used differs.
        play = base / 'endpoints.yml'
        play.write_text(yaml.safe_dump([
            {'name': 'validate', 'hosts': 'localhost', 'gather_facts': False,
             'tasks': [{'name': 'validate', 'podnet.fabric.validate': {}}]},
            {'name': 'endpoints', 'hosts': 'node2', 'gather_facts': False, 'tasks': [
                {'name': 'a', 'podnet.fabric.ipam_endpoint': {'endpoint_id': 'default/a'}},
                {'name': 'b', 'podnet.fabric.ipam_endpoint': {'endpoint_id': 'default/b'}}]}]))
        run_ok(str(play), inv)
        original = ledger()
        assert [original['nodes'][n]['pools_used'] for n in NODES] == [
            {'default': {'ipv4': 1}}, {'default': {'ipv4': 3}}]
        yield {'inv': inv, 'original': original, 'base': base}
        run_ok('lab_down.yml', inv)
        assert_lab_gone(PREFIX)
    finally:
        purge(PREFIX)


def test_an_unreadable_lease_is_restored_from_the_ledger_and_a_drifted_one_corrected(lab):
    doc = lab['original']
    garbage = b'\x00\x13not json at all'
    write_node_file('node1', LEASE, garbage)
    drifted = ipam_lease.node_lease(doc, 'node2', MODE)
    drifted['cidrs']['ipv4'] = ['10.244.9.0/24']
    write_node_file('node2', LEASE, json.dumps(drifted).encode())

    # Check mode: reported (plan, warnings), nothing written, nothing kept aside, and the run passes.
    out = run_ok('site.yml', lab['inv'], check=True)
    assert 'would keep the bad file as /var/lib/podnet/ipam/lease.json.corrupt-' in flat(out), out[-6000:]
    assert 'disagreed with the ledger (CIDRs 10.244.9.0/24 -> 10.244.1.0/24); would be corrected' in flat(out)
    assert node_file('node1', LEASE).encode() == garbage and not any('corrupt' in f for f in node_ls('node1'))
    assert json.loads(node_file('node2', LEASE)) == drifted

    out = run_ok('site.yml', lab['inv'])
    assert 'kept the bad file as /var/lib/podnet/ipam/lease.json.corrupt-' in flat(out), out[-6000:]
    assert 'disagreed with the ledger (CIDRs 10.244.9.0/24 -> 10.244.1.0/24); corrected from the ledger' in flat(out)
    for n in NODES:
        assert json.loads(node_file(n, LEASE)) == ipam_lease.node_lease(doc, n, MODE)
    aside = [f for f in node_ls('node1') if f.startswith('lease.json.corrupt-')]
    assert len(aside) == 1 and node_file('node1', '/var/lib/podnet/ipam/' + aside[0]).encode() == garbage
    assert ledger()['nodes'] == doc['nodes']


def test_a_deleted_ledger_is_rebuilt_from_the_leases_and_site_changes_nothing(lab):
    os.unlink(LEDGER)
    rc, out = rebuild(lab['inv'], check=True)
    assert rc == 0, out
    assert 'would be rebuilt from the leases of 2 nodes (it was missing)' in flat(out), out[-4000:]
    assert not os.path.exists(LEDGER)

    rc, out = rebuild(lab['inv'])
    assert rc == 0, out
    assert recap(out)['localhost']['changed'] == 1
    rebuilt = ledger()
    assert rebuilt['nodes'] == lab['original']['nodes']     # CIDRs, ips, allocated_at and pools_used
    assert rebuilt['cluster'] == 'lab'
    assert [n for n in os.listdir(LAB) if n.startswith('ledger.json.')] == ['ledger.json.lock']

    rc, out = rebuild(lab['inv'])                           # the ledger holds what the nodes hold
    assert rc == 0 and recap(out)['localhost']['changed'] == 0, out
    assert_converged_with_no_change(lab['inv'])
    assert ledger()['nodes'] == lab['original']['nodes']


def test_a_truncated_ledger_is_kept_aside_and_rebuilt(lab):
    with open(LEDGER, 'rb') as f:
        data = f.read()
    torn = data[:len(data) // 2]
    with open(LEDGER, 'wb') as f:
        f.write(torn)
    rc, out = playbook('site.yml', lab['inv'])
    assert rc != 0
    assert LEDGER in out and 'playbooks/ledger_rebuild.yml' in flat(out), out[-4000:]

    rc, out = rebuild(lab['inv'])
    assert rc == 0, out
    assert 'it was torn' in flat(out) and 'ledger.json.torn-' in out
    kept = glob.glob(LEDGER + '.torn-*')
    assert len(kept) == 1
    with open(kept[0], 'rb') as f:
        assert f.read() == torn
    assert ledger()['nodes'] == lab['original']['nodes']
    assert_converged_with_no_change(lab['inv'])


def test_two_leases_claiming_one_cidr_are_refused_naming_both_and_nothing_is_written(lab):
    with open(LEDGER, 'rb') as f:
        saved = f.read()
    node2 = node_file('node2', LEASE).encode()
    bad = json.loads(node2)
    bad['cidrs']['ipv4'] = list(lab['original']['nodes']['node1']['cidrs']['ipv4'])
    write_node_file('node2', LEASE, json.dumps(bad).encode())
    os.unlink(LEDGER)
    files = sorted(os.listdir(LAB))
    try:
        rc, out = rebuild(lab['inv'])
        assert rc != 0, out
        assert 'lease conflict: node1 and node2 both claim 10.244.0.0/24' in flat(out), out[-4000:]
        assert not os.path.exists(LEDGER) and sorted(os.listdir(LAB)) == files
    finally:
        write_node_file('node2', LEASE, node2)
        with open(LEDGER, 'wb') as f:
            f.write(saved)
