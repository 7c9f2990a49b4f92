"""The ipam_allocate action plugin run by ansible itself (ad-hoc, on localhost, no lab): it allocates
for every node of the inventory group by default (so runs limited to different nodes agree on one
cluster map), and a sliced run may not prune."""
import json
import os
import subprocess

import pytest

from ansible_collections.podnet.fabric.plugins.plugin_utils import inventory

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BIN = os.path.join(ROOT, '.venv', 'bin')


def model(ledger_path, n=3):
    cluster = {'podnet_cluster': {'name': 'lab', 'id': 0},
               'podnet_ipam': {'mode': 'cluster-pool', 'ledger': {'backend': 'file', 'path': ledger_path},
                               'cluster_pool': {'ipv4': {'cidrs': ['10.244.0.0/16'], 'mask_size': 24}}},
               'podnet_routing': {'mode': 'tunnel'}}
    nodes = dict(('node%d' % i, dict(cluster, podnet_node_ip='192.168.50.%d' % (10 + i))) for i in range(1, n + 1))
    return inventory.validate(cluster, nodes)


def allocate(tmp_path, m, args, extra=(), check=False):
    inv = tmp_path / 'hosts.yml'
    inv.write_text('all:\n  children:\n    podnet_nodes:\n      hosts: {%s}\n' % ', '.join('%s: {}' % n for n in m['nodes']))
    argv = [os.path.join(BIN, 'ansible'), 'localhost', '-i', str(inv), '-c', 'local',
            '-m', 'podnet.fabric.ipam_allocate', '-a', json.dumps(dict(args, model=m))] + list(extra)
    if check:
        argv.append('--check')
    env = dict(os.environ, ANSIBLE_CONFIG=os.path.join(ROOT, 'ansible.cfg'), ANSIBLE_LOAD_CALLBACK_PLUGINS='1',
               ANSIBLE_STDOUT_CALLBACK='json', ANSIBLE_PYTHON_INTERPRETER=os.path.join(BIN, 'python'))
    p = subprocess.run(argv, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                       universal_newlines=True, check=False)
    try:
        out = json.loads(p.stdout)
    except ValueError:
        raise AssertionError('not JSON: %s\n%s' % (p.stdout, p.stderr))
    return out['plays'][0]['tasks'][0]['hosts']['localhost']


@pytest.fixture
def ledger_path(tmp_path):
    return str(tmp_path / 'ledger' / 'lab.json')


def test_allocates_every_node_of_the_group_by_default(tmp_path, ledger_path):
    m = model(ledger_path)
    res = allocate(tmp_path, m, {})
    assert res['changed'] and not res.get('failed'), res
    assert sorted(res['allocations']) == ['node1', 'node2', 'node3']
    assert sorted(res['nodes']) == ['node1', 'node2', 'node3']
    cidrs = [c for n in res['nodes'].values() for c in n['pod_cidrs']['ipv4']]
    assert len(set(cidrs)) == 3
    assert res['cluster_pod_cidrs'] == {'ipv4': sorted(cidrs), 'ipv6': []}
    # A run of some nodes only (a role passing nodes) still reports the whole map, and changes nothing.
    res = allocate(tmp_path, m, {'nodes': ['node2']})
    assert not res['changed'] and sorted(res['nodes']) == ['node1', 'node2', 'node3'], res


@pytest.mark.parametrize('extra, why', [
    (('-e', 'job_slice=2'), 'slice 2 of an AWX sliced job (job_slice)'),
    (('-e', 'podnet_sliced=true'), 'a slice of the inventory (podnet_sliced=true)'),
])
def test_a_slice_may_not_prune(tmp_path, ledger_path, extra, why):
    m = model(ledger_path)
    res = allocate(tmp_path, m, {'prune': True}, extra=extra)
    assert res.get('failed'), res
    assert res['msg'].startswith('all: ipam_prune: refused, this run is %s and sees 3 nodes of group podnet_nodes' % why)
    assert not os.path.exists(ledger_path)
    # Not sliced: prune is allowed (nothing to release here).
    res = allocate(tmp_path, m, {'prune': True})
    assert not res.get('failed'), res
