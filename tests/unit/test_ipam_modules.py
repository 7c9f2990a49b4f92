"""The node-side IPAM modules (ipam_node, ipam_endpoint) run as Ansible runs them, against
temp files; the IPAM node-side helpers; and the report renderer.

The modules run in subprocesses with their arguments in a file (as AnsiballZ passes them), so
flock, atomic replace and check mode are exercised for real, including 8 processes allocating on
one store at once.
"""
import concurrent.futures
import ipaddress
import json
import os
import subprocess
import sys

import pytest

from ansible_collections.podnet.fabric.plugins.plugin_utils import ledger
from ansible_collections.podnet.fabric.plugins.module_utils.ipam import cidr as ipam_cidr
from ansible_collections.podnet.fabric.plugins.module_utils.ipam import endpoints as ipam_endpoints
from ansible_collections.podnet.fabric.plugins.module_utils.ipam import lease as ipam_lease
from ansible_collections.podnet.fabric.plugins.plugin_utils import ipam_plan
from ansible_collections.podnet.fabric.plugins.plugin_utils import ipam_controller
from ansible_collections.podnet.fabric.plugins.plugin_utils import ipam_report as report_render

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
COLLECTIONS = os.path.join(ROOT, 'build', 'collections')   # tests/conftest.py links the checkout there


READ_ONLY = ('ipam_node_info',)


@pytest.fixture
def run(tmp_path):
    counter = [0]

    def _run(module, args, check=False):
        counter[0] += 1
        argfile = tmp_path / ('args-%d.json' % counter[0])
        margs = dict(args)
        if module not in READ_ONLY:   # read-only modules take no node lock
            margs.setdefault('lock_path', str(tmp_path / 'node.lock'))   # not the host's /run/podnet
        margs['_ansible_check_mode'] = check
        margs['_ansible_diff'] = True
        argfile.write_text(json.dumps({'ANSIBLE_MODULE_ARGS': margs}))
        env = dict(os.environ, PYTHONPATH=COLLECTIONS)
        p = subprocess.run([sys.executable, os.path.join(ROOT, 'plugins', 'modules', module + '.py'), str(argfile)],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, universal_newlines=True,
                           check=False)
        try:
            return json.loads(p.stdout)
        except ValueError:
            raise AssertionError('module output is not JSON: %s\n%s' % (p.stdout, p.stderr))
    return _run


def warnings(result):
    """The warning texts of a module result (ansible-core 2.19 returns them as structured events)."""
    return [w['event']['msg'] if isinstance(w, dict) else w for w in result.get('warnings') or []]


def lease(node='node1', v4=('10.244.1.0/24',), v6=(), pools=None, mode='cluster-pool'):
    return {'cluster': 'lab', 'node': node, 'ip': '192.168.50.11', 'mode': mode, 'allocated_at': 1,
            'cidrs': {'ipv4': list(v4), 'ipv6': list(v6)}, 'pools': pools or {}}


# ----------------------------------------------------------------------------------------------
# ipam_node


def test_ipam_node_writes_once_reports_router_ips_and_check_mode_writes_nothing(run, tmp_path):
    path = str(tmp_path / 'ipam' / 'lease.json')
    want = lease(v6=('fd00::100/120',))
    r = run('ipam_node', {'lease': want, 'path': path}, check=True)
    assert r['changed'] and not os.path.exists(path)
    assert r['diff']['before'] == {'lease': None} and r['diff']['after'] == {'lease': want}
    r = run('ipam_node', {'lease': want, 'path': path})
    assert r['changed'] and r['plan'] == [{'action': 'write', 'path': path}]
    with open(path) as f:
        assert json.load(f) == want
    assert r['router_ips'] == ['10.244.1.1', 'fd00::101']
    assert r['router_ips'] == ['10.244.1.1', 'fd00::101']
    assert r['cidrs'] == {'ipv4': ['10.244.1.0/24'], 'ipv6': ['fd00::100/120']}
    mtime = os.stat(path).st_mtime_ns
    r = run('ipam_node', {'lease': want, 'path': path})
    assert not r['changed'] and r['plan'] == [] and os.stat(path).st_mtime_ns == mtime

    # Read only: no lease given.
    r = run('ipam_node', {'path': path})
    assert not r['changed'] and r['lease'] == want and r['router_ips'] == ['10.244.1.1', 'fd00::101']

    # A changed lease (check mode first), then absent.
    other = lease(v4=('10.244.7.0/24',))
    r = run('ipam_node', {'lease': other, 'path': path}, check=True)
    assert r['changed'] and r['router_ips'] == ['10.244.7.1']
    with open(path) as f:
        assert json.load(f) == want
    r = run('ipam_node', {'path': path, 'state': 'absent'})
    assert r['changed'] and not os.path.exists(path) and r['router_ips'] == []
    r = run('ipam_node', {'path': path, 'state': 'absent'})
    assert not r['changed']


def test_ipam_node_multi_pool_and_crd_router_ips(run, tmp_path):
    path = str(tmp_path / 'lease.json')
    pools = {'default': {'ipv4': ['10.10.0.32/27'], 'ipv6': []},
             'gpu': {'ipv4': ['10.20.0.0/28', '10.20.0.16/28'], 'ipv6': []}}
    mp = lease(v4=(), mode='multi-pool', pools=pools)
    r = run('ipam_node', {'lease': mp, 'path': path})
    assert r['router_ips'] == ['10.10.0.33', '10.20.0.1', '10.20.0.17']
    crd = lease(v4=('10.1.0.0/28', '10.1.0.77/32'), mode='crd')
    r = run('ipam_node', {'lease': crd, 'path': path})
    assert r['router_ips'] == ['10.1.0.1']          # a single address has no router IP


def test_ipam_node_refuses_a_torn_lease_and_a_bad_lease(run, tmp_path):
    path = tmp_path / 'lease.json'
    path.write_text('{"cluster": "lab", "no')
    r = run('ipam_node', {'path': str(path)})
    assert r['failed'] and 'not valid JSON' in r['msg'] and str(path) in r['msg']
    assert 'playbooks/site.yml restores the lease from the ledger' in r['msg']
    assert path.read_text() == '{"cluster": "lab", "no'      # a read never moves or rewrites it
    r = run('ipam_node', {'lease': {'node': 'n1', 'cidrs': {'ipv4': ['10.0.0.1/24']}}, 'path': str(tmp_path / 'x')})
    assert r['failed'] and 'lease:' in r['msg']
    r = run('ipam_node', {'lease': {'node': 'n1'}, 'path': str(tmp_path / 'x')})
    assert r['failed'] and "missing key 'cidrs'" in r['msg']


@pytest.mark.parametrize('garbage', [b'\x00\x17garbage', b'', b'{"cluster": "lab", "no', b'[1, 2]',
                                     b'{"cluster": "lab"}'])
def test_ipam_node_restores_an_unreadable_lease_from_the_ledger_and_keeps_it_aside(run, tmp_path, garbage):
    path = tmp_path / 'ipam' / 'lease.json'
    path.parent.mkdir()
    path.write_bytes(garbage)
    want = lease()
    r = run('ipam_node', {'lease': want, 'path': str(path)}, check=True)
    assert not r.get('failed'), r
    assert r['changed'] and [a['action'] for a in r['plan']] == ['keep_aside', 'write']
    assert r['plan'][0]['to'].startswith(str(path) + '.corrupt-') and r['kept_aside'] == r['plan'][0]['to']
    assert r['diff']['before']['lease'] is None and str(path) in r['diff']['before']['unreadable']
    assert r['diff']['after'] == {'lease': want}
    assert any('would keep the bad file as' in w and str(path) in w for w in warnings(r)), r
    assert path.read_bytes() == garbage and os.listdir(str(path.parent)) == ['lease.json']   # check mode

    r = run('ipam_node', {'lease': want, 'path': str(path)})
    assert r['changed'] and r['lease'] == want and r['router_ips'] == ['10.244.1.1']
    assert any('kept the bad file as %s' % r['kept_aside'] in w for w in warnings(r)), r
    with open(str(path)) as f:
        assert json.load(f) == want
    with open(r['kept_aside'], 'rb') as f:
        assert f.read() == garbage
    assert sorted(os.listdir(str(path.parent))) == ['lease.json', os.path.basename(r['kept_aside'])]
    r = run('ipam_node', {'lease': want, 'path': str(path)})
    assert not r['changed'] and r['kept_aside'] is None and not r.get('warnings')


def test_ipam_node_corrects_a_lease_that_disagrees_with_the_ledger(run, tmp_path):
    path = tmp_path / 'lease.json'
    want = lease(v4=('10.244.1.0/24',))
    drifted = dict(want, cidrs={'ipv4': ['10.244.0.0/24'], 'ipv6': []})
    path.write_text(json.dumps(drifted))
    r = run('ipam_node', {'lease': want, 'path': str(path)}, check=True)
    assert r['changed'] and r['plan'] == [{'action': 'write', 'path': str(path)}] and r['kept_aside'] is None
    assert any('disagreed with the ledger (CIDRs 10.244.0.0/24 -> 10.244.1.0/24); would be corrected' in w
               for w in warnings(r)), r
    assert json.loads(path.read_text()) == drifted
    r = run('ipam_node', {'lease': want, 'path': str(path)})
    assert r['changed'] and json.loads(path.read_text()) == want
    assert any('corrected from the ledger' in w for w in warnings(r))
    # A lease the ledger reallocated since (newer allocated_at) is an update, not drift: no warning.
    newer = dict(want, cidrs={'ipv4': ['10.244.9.0/24'], 'ipv6': []}, allocated_at=7)
    r = run('ipam_node', {'lease': newer, 'path': str(path)})
    assert r['changed'] and not r.get('warnings')


def test_ipam_node_info_reports_lease_and_use_and_never_fails_on_bad_files(run, tmp_path):
    lp, sp = tmp_path / 'lease.json', tmp_path / 'endpoints.json'
    args = {'lease_path': str(lp), 'store_path': str(sp)}
    r = run('ipam_node_info', args)
    assert r == dict(r, changed=False, lease=None, lease_error=None, usage={}, addresses=[], node_used={}, store_error=None)
    lp.write_text(json.dumps(lease()))
    used = {'10.244.1.3': {'owner': 'b'}, '10.244.1.2': {'owner': 'a'}, '10.244.1.10': {'owner': 'c', 'pool': 'gpu'}}
    sp.write_text(json.dumps({'version': 1, 'used': used}))
    r = run('ipam_node_info', args, check=True)
    assert r['lease'] == lease() and r['lease_error'] is None and not r['changed']
    assert r['usage'] == {'default': {'ipv4': 2}, 'gpu': {'ipv4': 1}}
    assert r['addresses'] == ['10.244.1.2', '10.244.1.3', '10.244.1.10']
    assert r['node_used'] == {'10.244.1.2': {'owner': 'a'}, '10.244.1.3': {'owner': 'b'}, '10.244.1.10': {'owner': 'c'}}
    lp.write_bytes(b'\x00garbage')
    sp.write_text('[]')
    r = run('ipam_node_info', args)
    assert not r.get('failed') and r['lease'] is None and 'not valid JSON' in r['lease_error']
    assert str(lp) in r['lease_error'] and 'not an endpoint store' in r['store_error'] and r['usage'] == {}


# ----------------------------------------------------------------------------------------------
# ipam_endpoint


@pytest.fixture
def node(tmp_path):
    d = tmp_path / 'ipam'
    d.mkdir()
    paths = {'lease_path': str(d / 'lease.json'), 'store_path': str(d / 'endpoints.json'), 'update_ledger': False}

    def set_lease(value):
        (d / 'lease.json').write_text(json.dumps(value))

    def store():
        with open(paths['store_path']) as f:
            return json.load(f)
    return paths, set_lease, store


def test_endpoint_allocates_lowest_free_persistently_and_releases(run, node):
    paths, set_lease, store = node
    set_lease(lease(v4=('10.244.1.0/24',), v6=('fd00::100/120',)))
    r = run('ipam_endpoint', dict(paths, endpoint_id='default/a'), check=True)
    assert r['changed'] and r['ips'] == {'ipv4': '10.244.1.2', 'ipv6': 'fd00::102'}
    assert not os.path.exists(paths['store_path'])
    r = run('ipam_endpoint', dict(paths, endpoint_id='default/a'))
    assert r['changed'] and r['ips'] == {'ipv4': '10.244.1.2', 'ipv6': 'fd00::102'} and r['pool'] == 'default'
    r = run('ipam_endpoint', dict(paths, endpoint_id='default/b', family='ipv4'))
    assert r['ips'] == {'ipv4': '10.244.1.3'}
    assert r['usage'] == {'default': {'ipv4': 2, 'ipv6': 1}}
    assert store()['used'] == {'10.244.1.2': {'owner': 'default/a', 'pool': 'default'},
                               'fd00::102': {'owner': 'default/a', 'pool': 'default'},
                               '10.244.1.3': {'owner': 'default/b', 'pool': 'default'}}
    r = run('ipam_endpoint', dict(paths, endpoint_id='default/a'))
    assert not r['changed'] and r['ips'] == {'ipv4': '10.244.1.2', 'ipv6': 'fd00::102'}
    r = run('ipam_endpoint', dict(paths, endpoint_id='default/a', state='absent'))
    assert r['changed'] and sorted(r['released']) == ['10.244.1.2', 'fd00::102'] and r['ips'] == {}
    assert r['diff']['before']['ips'] and r['diff']['after']['ips'] == {}
    r = run('ipam_endpoint', dict(paths, endpoint_id='default/a', state='absent'))
    assert not r['changed']
    r = run('ipam_endpoint', dict(paths, endpoint_id='default/c', family='ipv4'))
    assert r['ips'] == {'ipv4': '10.244.1.2'}          # the released address is the lowest free again
    assert r['node_used'] == {'10.244.1.2': {'owner': 'default/c'}, '10.244.1.3': {'owner': 'default/b'}}


def test_endpoint_multi_pool_label_picks_the_pool(run, node):
    paths, set_lease, store = node
    pools = {'default': {'ipv4': ['10.10.0.0/27'], 'ipv6': []}, 'gpu': {'ipv4': ['10.20.0.0/28'], 'ipv6': []}}
    set_lease(lease(v4=(), mode='multi-pool', pools=pools))
    r = run('ipam_endpoint', dict(paths, endpoint_id='ml/t0', labels={'ipam.podnet.io/ip-pool': 'gpu'}))
    assert r['ips'] == {'ipv4': '10.20.0.2'} and r['pool'] == 'gpu'
    r = run('ipam_endpoint', dict(paths, endpoint_id='web/w0'))
    assert r['ips'] == {'ipv4': '10.10.0.2'} and r['pool'] == 'default'
    assert r['usage'] == {'gpu': {'ipv4': 1}, 'default': {'ipv4': 1}}
    r = run('ipam_endpoint', dict(paths, endpoint_id='ml/t0'))
    assert r['failed'] and "holds 10.20.0.2 from pool 'gpu', not 'default'" in r['msg']
    r = run('ipam_endpoint', dict(paths, endpoint_id='x/y', labels={'ipam.podnet.io/ip-pool': 'tpu'}))
    assert r['failed'] and "pool 'tpu': node node1 holds no blocks of it (it holds: default, gpu)" in r['msg']


def test_endpoint_pool_label_outside_multi_pool_and_missing_lease(run, node):
    paths, set_lease, store = node
    r = run('ipam_endpoint', dict(paths, endpoint_id='a'))
    assert r['failed'] and 'no IPAM lease on this node' in r['msg']
    r = run('ipam_endpoint', dict(paths, endpoint_id='a', state='absent'))
    assert not r.get('failed') and not r['changed']
    set_lease(lease())
    r = run('ipam_endpoint', dict(paths, endpoint_id='a', labels={'ipam.podnet.io/ip-pool': 'gpu'}))
    assert r['failed'] and 'needs podnet_ipam.mode multi-pool' in r['msg']
    r = run('ipam_endpoint', dict(paths, endpoint_id='a', family='ipv6'))
    assert r['failed'] and 'no ipv6 CIDRs' in r['msg']


def test_endpoint_exhaustion_names_pool_size_and_use(run, node):
    paths, set_lease, store = node
    set_lease(lease(v4=('10.98.0.0/29',)))          # .2 - .6: 5 endpoint addresses
    for i in range(5):
        r = run('ipam_endpoint', dict(paths, endpoint_id='e%d' % i))
        assert r['ips'] == {'ipv4': '10.98.0.%d' % (i + 2)}
    r = run('ipam_endpoint', dict(paths, endpoint_id='e5'))
    assert r['failed']
    assert r['msg'] == ("endpoint e5: pool 'default' (10.98.0.0/29: 5 endpoint addresses) is exhausted: 5 of 5 in "
                        "use; cannot allocate an ipv4 address for endpoint e5")
    assert len(store()['used']) == 5


def test_endpoint_store_is_safe_under_8_concurrent_allocators(run, node):
    paths, set_lease, store = node
    set_lease(lease(v4=('10.244.1.0/24',)))
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda i: run('ipam_endpoint', dict(paths, endpoint_id='ep-%d' % i)), range(16)))
    ips = [r['ips']['ipv4'] for r in results]
    assert len(set(ips)) == 16, ips
    used = store()['used']
    assert sorted(used, key=ipaddress.ip_address) == ['10.244.1.%d' % i for i in range(2, 18)]
    assert sorted(rec['owner'] for rec in used.values()) == sorted('ep-%d' % i for i in range(16))


def test_endpoint_refuses_a_torn_store(run, node):
    paths, set_lease, store = node
    set_lease(lease())
    with open(paths['store_path'], 'w') as f:
        f.write('{"used": {"10.244.1.2"')
    r = run('ipam_endpoint', dict(paths, endpoint_id='a'))
    assert r['failed'] and 'not valid JSON' in r['msg']


# ----------------------------------------------------------------------------------------------
# node-side helpers


def test_lease_helpers():
    pools = {'gpu': {'ipv4': ['10.20.0.0/28']}, 'default': {'ipv4': ['10.10.0.0/27'], 'ipv6': ['fd00::/120']}}
    mp = lease(v4=(), mode='multi-pool', pools=pools)
    assert ipam_lease.lease_cidrs(mp) == {'ipv4': ['10.10.0.0/27', '10.20.0.0/28'], 'ipv6': ['fd00::/120']}
    assert ipam_lease.lease_router_ips(mp) == ['10.10.0.1', '10.20.0.1', 'fd00::1']
    assert ipam_lease.lease_router_ips(None) == []
    assert ipam_lease.endpoint_source(mp, {'ipam.podnet.io/ip-pool': 'gpu'}) == ('gpu', {'ipv4': ['10.20.0.0/28'], 'ipv6': []})
    assert ipam_lease.endpoint_source(mp, {})[0] == 'default'
    k8s = lease(mode='kubernetes')
    assert ipam_lease.endpoint_source(k8s, {}) == ('kubernetes', {'ipv4': ['10.244.1.0/24'], 'ipv6': []})
    assert ipam_lease.endpoint_source(k8s, {'ipam.podnet.io/ip-pool': 'kubernetes'})[0] == 'kubernetes'
    with pytest.raises(ipam_cidr.IpamError):
        ipam_lease.endpoint_source(k8s, {'ipam.podnet.io/ip-pool': 'default'})
    store = {'used': {'10.0.0.2': {'owner': 'a', 'pool': 'gpu'}, 'fd00::2': {'owner': 'a', 'pool': 'gpu'},
                      '10.0.1.2': {'owner': 'b'}}}
    assert ipam_endpoints.store_usage(store) == {'gpu': {'ipv4': 1, 'ipv6': 1}, 'default': {'ipv4': 1}}
    assert ipam_endpoints.store_crd_used(store)['fd00::2'] == {'owner': 'a'}
    assert ipam_lease.node_lease({'cluster': 'c', 'nodes': {'n': {'cidrs': {'ipv4': ['10.0.0.0/24']}}}}, 'n',
                                 mode='cluster-pool')['mode'] == 'cluster-pool'
    assert 'mode' not in ipam_lease.node_lease({'nodes': {'n': {}}}, 'n')


# ----------------------------------------------------------------------------------------------
# what the controller records of a node's use (the action plugin half of ipam_endpoint)


def _model(mode, path):
    return {'cluster': {'name': 'lab', 'id': 0}, 'nodes': {'node1': {'node_ip': '192.168.50.11'}},
            'ipam': {'mode': mode, 'ledger': {'backend': 'file', 'path': path}}}


def test_record_use_writes_pools_used_and_heals_from_the_whole_store(tmp_path):
    path = str(tmp_path / 'ledger.json')
    led = ledger.open_ledger({'backend': 'file', 'path': path}, cluster='lab')
    led.update(lambda doc: dict(doc, nodes={'node1': {'ip': '192.168.50.11', 'cidrs': {'ipv4': ['10.0.0.0/24']}}}))
    model = _model('cluster-pool', path)
    rec = ipam_controller.record_use(model, 'node1', {'default': {'ipv4': 2, 'ipv6': 0}}, {})
    assert rec == {'updated': True, 'location': path, 'record': 'pools_used, endpoints'}
    assert led.read()['nodes']['node1']['pools_used'] == {'default': {'ipv4': 2}}
    serial = led.read()['serial']
    assert not ipam_controller.record_use(model, 'node1', {'default': {'ipv4': 2}}, {})['updated']
    assert led.read()['serial'] == serial
    assert ipam_controller.record_use(model, 'node1', {}, {})['updated']
    assert 'pools_used' not in led.read()['nodes']['node1']
    # A node the ledger does not hold gets nothing recorded (and no entry invented for it).
    assert not ipam_controller.record_use(model, 'node9', {'default': {'ipv4': 1}}, {})['updated']
    assert 'node9' not in led.read()['nodes']


def test_record_use_in_crd_mode_writes_status_ipam_used(tmp_path):
    path = str(tmp_path / 'ledger.json')
    led = ledger.open_ledger({'backend': 'file', 'path': path}, cluster='lab')
    led.update_node_doc('node1', lambda d: dict(d, spec={'ipam': {'pool': {'10.1.0.0/28': {}}}}))
    used = {'10.1.0.2': {'owner': 'default/a', 'pool': 'crd'}}
    rec = ipam_controller.record_use(_model('crd', path), 'node1', {'crd': {'ipv4': 1}}, used)
    assert rec['updated'] and rec['record'] == 'status.ipam.used, endpoints' and rec['location'] == led.node_doc_path('node1')
    doc = led.read_node_doc('node1')
    assert doc['status']['ipam']['used'] == {'10.1.0.2': {'owner': 'default/a'}}
    assert doc['spec']['ipam']['pool'] == {'10.1.0.0/28': {}}   # the external allocator's part is kept
    assert not ipam_controller.record_use(_model('crd', path), 'node1', {}, used)['updated']


def test_record_use_records_each_endpoints_name_addresses_identity_and_id(tmp_path):
    from ansible_collections.podnet.fabric.plugins.plugin_utils import identity, inventory
    path = str(tmp_path / 'ledger.json')
    led = ledger.open_ledger({'backend': 'file', 'path': path}, cluster='lab')
    led.update(lambda doc: dict(doc, nodes={'node1': {'ip': '192.168.50.11', 'cidrs': {'ipv4': ['10.0.0.0/24']}}}))
    model = inventory.validate(
        {'podnet_cluster': {'name': 'lab'}, 'podnet_ipam': {'ledger': {'backend': 'file', 'path': path}}},
        {'node1': {'podnet_node_ip': '192.168.50.11',
                   'podnet_endpoints': [{'name': 'web-1', 'labels': {'app': 'web', 'pod-template-hash': 'x1'}}]}})
    used = {'10.0.0.2': {'owner': 'default/web-1'}, '10.0.0.3': {'owner': 'podnet-health'},
            '10.0.0.4': {'owner': 'tools/probe'}}
    rec = ipam_controller.record_use(model, 'node1', {'default': {'ipv4': 3}}, used,
                                     current=('tools/probe', {'role': 'probe'}))
    assert rec['updated'] and rec['record'] == 'pools_used, endpoints'
    doc = led.read()
    table = identity.Table(doc, 0)
    records = identity.endpoint_records(doc['nodes']['node1'])
    assert records['podnet-health'] == {'ep_id': 1, 'identity': identity.HEALTH, 'ips': ['10.0.0.3']}
    assert records['default/web-1']['ips'] == ['10.0.0.2'] and records['default/web-1']['ep_id'] == 2
    # the inventory's labels, filtered (pod-template-hash is not identity-relevant)
    assert table.labels_of[records['default/web-1']['identity']] == (
        'app=web', 'io.cilium.k8s.policy.cluster=lab', 'io.kubernetes.pod.namespace=default')
    # an endpoint the inventory does not list: the task's labels
    assert table.labels_of[records['tools/probe']['identity']] == (
        'io.cilium.k8s.policy.cluster=lab', 'io.kubernetes.pod.namespace=tools', 'role=probe')
    serial = doc['serial']
    assert not ipam_controller.record_use(model, 'node1', {'default': {'ipv4': 3}}, used)['updated']
    assert led.read()['serial'] == serial
    # the endpoint's addresses are released: its record goes, the others keep their ids
    del used['10.0.0.2']
    assert ipam_controller.record_use(model, 'node1', {'default': {'ipv4': 2}}, used)['updated']
    assert sorted(identity.endpoint_records(led.read()['nodes']['node1'])) == ['podnet-health', 'tools/probe']


def test_record_use_in_crd_and_eni_modes_records_endpoints_in_the_ledger(tmp_path):
    from ansible_collections.podnet.fabric.plugins.plugin_utils import identity
    path = str(tmp_path / 'ledger.json')
    led = ledger.open_ledger({'backend': 'file', 'path': path}, cluster='lab')
    led.update(lambda doc: dict(doc, nodes={'node1': {'ip': '192.168.50.11', 'cidrs': {'ipv4': ['10.1.0.0/28']}}}))
    led.update_node_doc('node1', lambda d: dict(d, spec={'ipam': {'pool': {'10.1.0.0/28': {}}}}))
    used = {'10.1.0.2': {'owner': 'podnet-health'}}
    rec = ipam_controller.record_use(_model('crd', path), 'node1', {'crd': {'ipv4': 1}}, used)
    assert rec['updated'] and rec['record'] == 'status.ipam.used, endpoints'
    assert identity.endpoint_records(led.read()['nodes']['node1']) == {
        'podnet-health': {'ep_id': 1, 'identity': identity.HEALTH, 'ips': ['10.1.0.2']}}
    # eni mode: the endpoint records eni_allocate counts as the node's IPs in use, nothing else
    eni_used = {'10.100.1.4': {'owner': 'default/web-1'}}
    rec = ipam_controller.record_use(_model('eni', path), 'node1', {'eni': {'ipv4': 1}}, eni_used)
    assert rec == {'updated': True, 'location': path, 'record': 'endpoints'}
    entry = led.read()['nodes']['node1']
    assert identity.endpoint_records(entry)['default/web-1']['ips'] == ['10.100.1.4'] and 'pools_used' not in entry
    serial = led.read()['serial']
    assert ipam_controller.record_use(_model('eni', path), 'node1', {'eni': {'ipv4': 1}}, eni_used)['updated'] is False
    assert ipam_controller.record_use(_model('eni', path), 'node9', {}, eni_used)['updated'] is False
    assert led.read()['serial'] == serial


# ----------------------------------------------------------------------------------------------
# the report


def _report():
    model = {'cluster': {'name': 'lab', 'id': 0}, 'nodes': {'node1': {'node_ip': '192.168.50.11'}, 'node2': {'node_ip': '192.168.50.12'}},
             'ipam': {'mode': 'multi-pool', 'multi_pool': {
                 'pools': {'default': {'ipv4': {'cidrs': ['10.10.0.0/24'], 'mask_size': 27}, 'ipv6': None},
                           'gpu': {'ipv4': {'cidrs': ['10.20.0.0/28'], 'mask_size': 28}, 'ipv6': None}},
                 'pre_allocation': {'default': 8}}}}
    doc = {'version': 1, 'cluster': 'lab', 'serial': 3, 'identities': {}, 'nodes': {
        'node1': {'ip': '192.168.50.11', 'cidrs': {'ipv4': [], 'ipv6': []},
                  'pools': {'default': {'ipv4': ['10.10.0.0/27'], 'ipv6': []}, 'gpu': {'ipv4': ['10.20.0.0/28'], 'ipv6': []}},
                  'pools_used': {'gpu': {'ipv4': 12}, 'default': {'ipv4': 3}}},
        'node2': {'ip': '192.168.50.12', 'cidrs': {'ipv4': [], 'ipv6': []},
                  'pools': {'default': {'ipv4': ['10.10.0.32/27'], 'ipv6': []}}},
        'gone<3>': {'ip': '192.168.50.13', 'cidrs': {'ipv4': [], 'ipv6': []},
                    'pools': {'default': {'ipv4': ['10.10.0.64/27'], 'ipv6': []}}}}}
    return ipam_plan.utilization(model, doc)


def test_report_text_table():
    lines = report_render.text_table(_report(), location='/x/ledger.json')
    text = '\n'.join(lines)
    assert lines[0] == 'podnet IPAM: cluster lab, mode multi-pool, ledger serial 3 (/x/ledger.json)'
    assert 'gpu      ipv4    10.20.0.0/28  /28   1 of 1 (100.0%)' in text
    assert '12 of 13 (92.3%)' in text and '3 of 8 (37.5%)' in text
    assert 'gone<3> (not in inventory)' in text
    short = report_render.text_table(_report(), max_nodes=1)
    assert short[-1] == '... and 2 more nodes (see the JSON and HTML report)'


def test_report_html_is_self_contained_and_escaped():
    page = report_render.html_page(_report(), location='/x/ledger.json')
    assert page.startswith('<!DOCTYPE html>') and page.rstrip().endswith('</html>')
    assert '<svg' in page and 'http://' not in page.replace('http://www.w3.org', '') and 'https://' not in page
    assert '<script' not in page and '<link' not in page and 'url(' not in page
    assert 'gone&lt;3&gt;' in page and 'gone<3>' not in page
    assert 'Nearly full' in page and '12 of 13 (92.3%)' in page
    # One bar per pool metric and per node row, coloured by how full it is.
    assert page.count('class="bar"') == 2 * 2 + 4 + 1
    assert '#dc2626' in page       # 92.3% is red
