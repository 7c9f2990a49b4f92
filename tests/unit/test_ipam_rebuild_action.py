"""The ipam_rebuild action plugin run by ansible itself (ad-hoc, on localhost, no lab): a lost,
torn, readable or conflicting ledger, check mode, and what it writes. The lab test
(tests/integration/test_ledger_rebuild_lab.py) runs playbooks/ledger_rebuild.yml on real nodes."""
import glob
import json
import os
import subprocess

import pytest

from ansible_collections.podnet.fabric.plugins.plugin_utils import inventory
from ansible_collections.podnet.fabric.plugins.module_utils.ipam import lease as ipam_lease
from ansible_collections.podnet.fabric.plugins.plugin_utils import ipam_plan

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BIN = os.path.join(ROOT, '.venv', 'bin')


def model(ledger_path, n=3):
    cluster = {'podnet_cluster': {'name': 'lab', 'id': 0},
               'podnet_ipam': {'mode': 'cluster-pool', 'ledger': {'backend': 'file', 'path': ledger_path},
                               'cluster_pool': {'ipv4': {'cidrs': ['10.244.0.0/16'], 'mask_size': 24}}},
               'podnet_routing': {'mode': 'tunnel'}}
    nodes = dict(('node%d' % i, dict(cluster, podnet_node_ip='192.168.50.%d' % (10 + i))) for i in range(1, n + 1))
    return inventory.validate(cluster, nodes)


def reports_for(m):
    """Each node's ipam_node_info result after a site.yml run: its lease and its health endpoint's use."""
    doc = ipam_plan.plan_cluster(m, {'version': 1, 'cluster': None, 'serial': 0, 'nodes': {}, 'identities': {}},
                                 sorted(m['nodes']))[0]
    return doc, dict((n, {'changed': False, 'lease': ipam_lease.node_lease(doc, n, 'cluster-pool'), 'lease_error': None,
                          'usage': {'default': {'ipv4': i + 1}}, 'addresses': [], 'store_error': None})
                     for i, n in enumerate(sorted(m['nodes'])))


def rebuild(args, check=False):
    argv = [os.path.join(BIN, 'ansible'), 'localhost', '-i', 'localhost,', '-c', 'local',
            '-m', 'podnet.fabric.ipam_rebuild', '-a', json.dumps(args)]
    if check:
        argv += ['--check', '--diff']
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


def test_rebuilds_a_lost_ledger_check_mode_first(ledger_path):
    m = model(ledger_path)
    doc, reports = reports_for(m)
    r = rebuild({'reports': reports, 'model': m}, check=True)
    assert not r.get('failed'), r
    assert r['changed'] and r['was'] == {'state': 'missing', 'error': None} and r['kept_aside'] is None
    assert 'would be rebuilt from the leases of 3 nodes (it was missing)' in r['msg']
    assert r['diff']['before']['nodes'] == {} and sorted(r['diff']['after']['nodes']) == ['node1', 'node2', 'node3']
    assert not os.path.exists(ledger_path)

    r = rebuild({'reports': reports, 'model': m})
    assert r['changed'] and r['ledger']['serial'] == 1, r
    with open(ledger_path) as f:
        written = json.load(f)
    for i, n in enumerate(['node1', 'node2', 'node3']):
        assert written['nodes'][n] == dict(doc['nodes'][n], pools_used={'default': {'ipv4': i + 1}})
    assert r['nodes']['node2'] == {'cidrs': ['10.244.1.0/24'], 'pools_used': {'default': {'ipv4': 2}}}
    # Again: the ledger holds what the nodes hold.
    r = rebuild({'reports': reports, 'model': m})
    assert not r['changed'] and 'nothing written' in r['msg'] and r['was']['state'] == 'valid'


def test_a_torn_ledger_is_kept_aside_and_a_conflict_writes_nothing(ledger_path):
    m = model(ledger_path)
    _doc, reports = reports_for(m)
    os.makedirs(os.path.dirname(ledger_path))
    with open(ledger_path, 'wb') as f:
        f.write(b'{"version": 1, "cluster": "lab", "nod')
    # node3's lease claims node1's CIDR: refused, naming both, nothing written, nothing kept aside
    bad = json.loads(json.dumps(reports))
    bad['node3']['lease']['cidrs']['ipv4'] = ['10.244.0.0/24']
    r = rebuild({'reports': bad, 'model': m})
    assert r['failed'] and r['msg'] == 'lease conflict: node1 and node3 both claim 10.244.0.0/24', r
    assert sorted(os.listdir(os.path.dirname(ledger_path))) == ['lab.json']

    r = rebuild({'reports': reports, 'model': m}, check=True)
    assert r['changed'] and r['was']['state'] == 'torn' and 'not valid JSON' in r['was']['error']
    assert '.torn-' in r['kept_aside'] and sorted(os.listdir(os.path.dirname(ledger_path))) == ['lab.json']
    r = rebuild({'reports': reports, 'model': m})
    assert r['changed'] and 'it was torn' in r['msg'] and os.path.exists(r['kept_aside'])
    assert glob.glob(ledger_path + '.torn-*') == [r['kept_aside']]
    with open(r['kept_aside'], 'rb') as f:
        assert f.read() == b'{"version": 1, "cluster": "lab", "nod'


def test_a_readable_ledger_that_differs_needs_force_and_a_silent_node_needs_allow_missing(ledger_path):
    m = model(ledger_path)
    _doc, reports = reports_for(m)
    assert rebuild({'reports': reports, 'model': m})['changed']
    other = json.loads(json.dumps(reports))
    other['node2']['usage'] = {'default': {'ipv4': 9}}
    r = rebuild({'reports': other, 'model': m})
    assert r['failed'] and 'differs from the nodes\' leases for node2' in r['msg'], r
    r = rebuild({'reports': other, 'model': m, 'force': True})
    assert r['changed'] and '.replaced-' in r['kept_aside'] and r['ledger']['serial'] == 2, r

    other['node3'] = False
    r = rebuild({'reports': other, 'model': m})
    assert r['failed'] and 'node3: did not report its lease' in r['msg']
    r = rebuild({'reports': other, 'model': m, 'allow_missing': True, 'force': True})
    assert r['changed'] and sorted(r['nodes']) == ['node1', 'node2'], r
    assert any('node3: did not report its lease; left out' in str(w) for w in r['warnings'])


def test_the_endpoint_records_come_back_from_the_stores_and_a_second_rebuild_changes_nothing(ledger_path):
    m = model(ledger_path)
    _doc, reports = reports_for(m)
    for i, n in enumerate(sorted(reports)):
        reports[n]['node_used'] = {'10.244.%d.2' % i: {'owner': 'podnet-health'}}
    r = rebuild({'reports': reports, 'model': m})
    assert r['changed'], r
    with open(ledger_path) as f:
        written = json.load(f)
    assert written['nodes']['node2']['endpoints'] == {'podnet-health': {'ep_id': 1, 'identity': 4, 'ips': ['10.244.1.2']}}
    r = rebuild({'reports': reports, 'model': m})
    assert not r['changed'] and 'nothing written' in r['msg'], r
