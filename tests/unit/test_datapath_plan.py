"""plugins/plugin_utils/datapath.py (pure) and the datapath_plan action plugin run by ansible itself
(ad-hoc, on localhost, no lab): identities through the ledger, per node endpoint, ipcache and policy
entries from the ledger alone, label changes, prune, check mode."""
import copy
import json
import os
import subprocess

import pytest

from ansible_collections.podnet.fabric.plugins.plugin_utils import datapath
from ansible_collections.podnet.fabric.plugins.plugin_utils import identity as ident
from ansible_collections.podnet.fabric.plugins.plugin_utils import inventory
from ansible_collections.podnet.fabric.plugins.plugin_utils import ipam_controller
from ansible_collections.podnet.fabric.plugins.plugin_utils import ipam_plan
from ansible_collections.podnet.fabric.plugins.plugin_utils import ledger
from ansible_collections.podnet.fabric.plugins.plugin_utils import policy

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BIN = os.path.join(ROOT, '.venv', 'bin')
NODES = ('node1', 'node2', 'node3')

RULES = [
    {'name': 'web', 'endpoint_selector': {'app': 'web'},
     'ingress': [{'from_endpoints': [{'app': 'client'}], 'to_ports': [{'port': 80, 'protocol': 'tcp'}]},
                 {'from_cidrs': ['192.0.2.0/24']}]},
]


def make_model(path, web_labels=None, rules=None, enabled=True):
    cluster = {'podnet_cluster': {'name': 'lab', 'id': 0},
               'podnet_ipam': {'mode': 'cluster-pool', 'ledger': {'backend': 'file', 'path': path},
                               'cluster_pool': {'ipv4': {'cidrs': ['10.244.0.0/16'], 'mask_size': 24}}},
               'podnet_routing': {'mode': 'tunnel'},
               'podnet_datapath': {'enabled': enabled},
               'podnet_policy': {'rules': RULES if rules is None else rules}}
    endpoints = {'node1': [{'name': 'web-1', 'labels': web_labels or {'app': 'web'}}],
                 'node2': [{'name': 'client-1', 'labels': {'app': 'client'}}],
                 'node3': [{'name': 'db-0', 'namespace': 'data', 'labels': {'app': 'db'}}]}
    nodes = dict((n, {'podnet_node_ip': '192.168.50.%d' % (11 + i), 'podnet_endpoints': endpoints[n]})
                 for i, n in enumerate(NODES))
    return inventory.validate(cluster, nodes)


def provision(model):
    """What site.yml does before the datapath plan: the ledger allocates the nodes' CIDRs, each node
    allocates its endpoints' addresses (and its health endpoint's), ipam_endpoint records them."""
    led = ledger.open_ledger(model['ipam']['ledger'], cluster='lab')
    led.update(lambda doc: ipam_plan.plan_cluster(model, doc, list(NODES))[0])
    doc = led.read()
    for n in NODES:
        cidr = doc['nodes'][n]['cidrs']['ipv4'][0]
        prefix = cidr.rsplit('.', 1)[0]
        used = {prefix + '.2': {'owner': 'podnet-health'}}
        for i, ep in enumerate(model['nodes'][n]['endpoints']):
            used['%s.%d' % (prefix, 3 + i)] = {'owner': ident.endpoint_key(ep['namespace'], ep['name'])}
        ipam_controller.record_use(model, n, {'default': {'ipv4': len(used)}}, used)
    return led


@pytest.fixture
def ledger_path(tmp_path):
    return str(tmp_path / 'ledger' / 'lab.json')


# ---------------------------------------------------------------------------------------------
# the pure plan


def test_every_node_gets_its_entries_from_the_ledger(ledger_path):
    model = make_model(ledger_path)
    led = provision(model)
    doc = copy.deepcopy(led.read())
    changes = datapath.update(model, doc)
    assert [c['action'] for c in changes] == ['allocated']        # the rule's CIDR; endpoints have theirs
    out, warnings = datapath.outputs(model, doc, list(NODES))
    assert warnings == []
    table = ident.Table(doc, 0)
    web = table.by_labels[('app=web', 'io.cilium.k8s.policy.cluster=lab', 'io.kubernetes.pod.namespace=default')]
    client = table.by_labels[('app=client', 'io.cilium.k8s.policy.cluster=lab', 'io.kubernetes.pod.namespace=default')]
    assert out['node1']['endpoints'] == [
        {'name': 'default/web-1', 'address': '10.244.0.3', 'ep_id': 2, 'identity': web,
         'enforce_ingress': True, 'enforce_egress': False},
        {'name': 'podnet-health', 'address': '10.244.0.2', 'ep_id': 1, 'identity': ident.HEALTH,
         'enforce_ingress': False, 'enforce_egress': False}]
    assert out['node1']['policy'] == [
        {'ep_id': 2, 'direction': 'ingress', 'identity': client, 'protocol': 'tcp', 'port': 80, 'verdict': 'allow', 'rule': 1},
        {'ep_id': 2, 'direction': 'ingress', 'identity': (1 << 24) | 1, 'protocol': 'any', 'verdict': 'allow', 'rule': 1}]
    assert out['node2']['policy'] == [] and out['node3']['endpoints'][0]['name'] == 'data/db-0'
    ipc = dict((e['prefix'], e) for e in out['node1']['ipcache'])
    assert ipc['10.244.1.3/32'] == {'prefix': '10.244.1.3/32', 'identity': client, 'tunnel_endpoint': '192.168.50.12',
                                    'local': False}
    assert ipc['10.244.0.3/32']['local'] and ipc['192.0.2.0/24']['identity'] == (1 << 24) | 1
    # the entries decide as the rules say
    c = policy.compile_policy(model['policy']['rules'], table)
    assert policy.verdict(c, client, web, 'tcp', 80) == ('allow', 1)
    assert policy.verdict(c, client, web, 'tcp', 22) == ('deny', 'default deny')
    assert policy.verdict(c, '192.0.2.7', web, 'udp', 53) == ('allow', 1)


def test_the_packet_walk_matrix(ledger_path):
    """Every endpoint of the run's nodes to every other endpoint of the cluster, from its namespace,
    on the walk's ports (and 4240 to a health endpoint), with the verdict the rules give it."""
    model = make_model(ledger_path)
    led = provision(model)
    doc = copy.deepcopy(led.read())
    datapath.update(model, doc)
    walk = datapath.walk(model, doc, ['node2'], [80])
    assert list(walk) == ['node2']
    rows = walk['node2']
    assert set(r['src_node'] for r in rows) == {'node2'}
    assert set((r['src'], r['netns']) for r in rows) == {
        ('default/client-1', 'default.client-1'), ('podnet-health', 'podnet-health')}
    # 2 sources x (5 other endpoints on port 80, and 4240 to the 3 health endpoints, or 2 from a health endpoint)
    assert len(rows) == (5 + 3) + (5 + 2)
    by = dict(((r['src'], r['dst_node'], r['dst'], r['port']), r) for r in rows)
    web, db = by[('default/client-1', 'node1', 'default/web-1', 80)], by[('default/client-1', 'node3', 'data/db-0', 80)]
    assert (web['address'], web['verdict'], web['rule']) == ('10.244.0.3', 'allow', 1)
    assert (db['verdict'], db['rule']) == ('allow', None)
    health = by[('podnet-health', 'node1', 'default/web-1', 80)]
    assert (health['verdict'], health['rule']) == ('deny', 'default deny')
    assert sorted(r['dst_node'] for r in rows if r['port'] == 4240 and r['src'] == 'default/client-1') == [
        'node1', 'node2', 'node3']
    # The same verdicts the rules give when read directly (policy.model_verdict).
    table = ident.Table(doc, 0)
    view = policy.table_peers(table)
    records = dict(((n, k), r) for n, e in doc['nodes'].items() for k, r in ident.endpoint_records(e).items())
    for r in rows:
        src = records[(r['src_node'], r['src'])]['identity']
        dst = records[(r['dst_node'], r['dst'])]['identity']
        assert policy.model_verdict(model['policy']['rules'], view, src, dst, 'tcp', r['port']) == (r['verdict'], r['rule'])
    assert datapath.endpoint_netns('prod/db.0') == 'prod.db.0' and datapath.endpoint_netns('other') is None


def test_a_slice_sees_the_whole_cluster(ledger_path):
    model = make_model(ledger_path)
    led = provision(model)
    doc = copy.deepcopy(led.read())
    # an AWX slice: its model holds its own nodes only; the others are in the ledger
    sliced = dict(model, nodes={'node2': model['nodes']['node2']})
    before = copy.deepcopy(doc)
    assert [c['action'] for c in datapath.update(sliced, doc)] == ['allocated']     # the rule's CIDR
    assert doc['nodes'] == before['nodes']              # the other slices' records are as they were
    out, _w = datapath.outputs(sliced, doc, ['node2'])
    assert list(out) == ['node2']
    prefixes = set(e['prefix'] for e in out['node2']['ipcache'])
    assert {'10.244.0.3/32', '10.244.2.3/32', '192.168.50.13/32'} <= prefixes


def test_a_label_change_moves_the_endpoint_and_prune_releases_the_old_identity(ledger_path):
    model = make_model(ledger_path)
    led = provision(model)
    doc = copy.deepcopy(led.read())
    datapath.update(model, doc)
    old = ident.endpoint_records(doc['nodes']['node1'])['default/web-1']['identity']
    moved = make_model(ledger_path, web_labels={'app': 'web', 'tier': 'front'})
    changes = datapath.update(moved, doc)
    assert [c['action'] for c in changes] == ['allocated', 'moved']
    new = ident.endpoint_records(doc['nodes']['node1'])['default/web-1']['identity']
    assert new != old and str(old) in doc['identities']               # kept until a prune
    out, _w = datapath.outputs(moved, doc, ['node1'])
    assert out['node1']['endpoints'][0]['identity'] == new and out['node1']['policy'][0]['ep_id'] == 2
    changes = datapath.update(moved, doc, prune=True)
    assert [(c['action'], c['identity']) for c in changes] == [('released', old)]
    assert str(old) not in doc['identities']


def test_prune_keeps_what_other_nodes_and_endpoints_without_addresses_hold(ledger_path):
    model = make_model(ledger_path)
    led = provision(model)
    doc = copy.deepcopy(led.read())
    # an inventory endpoint that has no address yet still holds its identity
    model['nodes']['node1']['endpoints'].append({'name': 'web-2', 'namespace': 'default', 'labels': {'app': 'cache'}})
    datapath.update(model, doc)
    assert datapath.update(model, doc, prune=True) == []
    # a rule no longer naming a CIDR: its identity goes
    model['policy']['rules'][0]['ingress'].pop()
    changes = datapath.update(model, doc, prune=True)
    assert [(c['action'], c.get('cidr')) for c in changes] == [('released', '192.0.2.0/24')]


# ---------------------------------------------------------------------------------------------
# the action, run by ansible


def run_action(args, check=False, extra=None):
    argv = [os.path.join(BIN, 'ansible'), 'localhost', '-i', 'localhost,', '-c', 'local',
            '-m', 'podnet.fabric.datapath_plan', '-a', json.dumps(args)]
    if extra:
        argv += ['-e', json.dumps(extra)]
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


def test_the_action_check_mode_then_real_then_no_op(ledger_path):
    model = make_model(ledger_path)
    led = provision(model)
    serial = led.read()['serial']
    args = {'model': model, 'nodes': list(NODES)}
    r = run_action(args, check=True)
    assert not r.get('failed'), r
    assert r['changed'] and 'check mode: nothing written' in r['msg']
    assert r['diff']['after'] == {str((1 << 24) | 1): {'cidr': '192.0.2.0/24'}} and r['diff']['before'] == {str((1 << 24) | 1): None}
    assert led.read()['serial'] == serial
    r = run_action(args)
    assert r['changed'] and r['ledger']['serial'] == serial + 1, r
    assert r['counts']['node1'] == {'endpoints': 2, 'ipcache': 2 + 1 + 3 + 3 + 6, 'policy': 2}
    assert r['datapath']['node1']['endpoints'][0]['name'] == 'default/web-1'
    assert r['identities'][str((1 << 24) | 1)] == {'cidr': '192.0.2.0/24'}
    again = run_action(args)
    assert not again['changed'] and again['datapath'] == r['datapath'], again
    assert again['msg'].startswith('datapath: 3 nodes, 4 identities; no identity change; ledger ')


def test_the_action_needs_a_model_and_plans_nothing_when_off(ledger_path):
    r = run_action({'nodes': ['node1']})
    assert r['failed'] and 'podnet_model is not set' in r['msg']
    off = make_model(ledger_path, enabled=False)
    r = run_action({'model': off, 'nodes': list(NODES)})
    assert not r['changed'] and r['datapath'] == {} and 'datapath: off' in r['msg']
    assert not os.path.exists(ledger_path)
    r = run_action({'model': make_model(ledger_path), 'prune': True}, extra={'job_slice': 2})
    assert r['failed'] and r['msg'].startswith('all: prune: refused, this run is slice 2 of an AWX sliced job'), r
    assert not os.path.exists(ledger_path)
