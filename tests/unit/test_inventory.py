"""plugins/plugin_utils/inventory.py: the bad/good inventory corpus plus focused tests.

Corpus files (tests/inventories/{bad,good}/*.yml) are overlays on the lab inventory:
`cluster` keys replace the lab's cluster-level keys (like extra vars), `hosts` keys replace a
base host's keys or add a host. Each case is validated twice: as a plain caller would pass it
(cluster keys only in cluster_vars) and as an Ansible play sees it (every host carries every
cluster-level key, extra vars win, cluster_vars is the first host's view); both must give the
same, exact error list.
"""

import ast
import copy
import glob
import importlib.util
import ipaddress
import os
import random

import pytest
import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MODULE = os.path.join(ROOT, 'plugins', 'plugin_utils', 'inventory.py')
CORPUS = os.path.join(ROOT, 'tests', 'inventories')
LAB_CLUSTER = os.path.join(ROOT, 'inventories', 'lab', 'group_vars', 'all', 'cluster.yml')
LAB_LEDGER = '/run/podnet-lab/pnt/ledger.json'   # the test lab's prefix is pnt


def _import():
    spec = importlib.util.spec_from_file_location('podnet_inventory', MODULE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


inventory = _import()


_LAB = []


def load_base():
    """(cluster_vars, nodes) of the lab inventory with 3 nodes, Jinja resolved for prefix pnt."""
    if not _LAB:
        with open(LAB_CLUSTER) as f:
            _LAB.append(yaml.safe_load(f))
    cluster = copy.deepcopy(_LAB[0])
    cluster['podnet_ipam']['ledger']['path'] = LAB_LEDGER
    nodes = dict(('node%d' % i, {'podnet_node_ip': '192.168.50.%d' % (10 + i)})
                 for i in (1, 2, 3))
    return cluster, nodes


def load_case(path):
    with open(path) as f:
        case = yaml.safe_load(f)
    assert set(case) <= {'description', 'expect', 'cluster', 'hosts'}, path
    assert case.get('description'), path
    return case


def plain_view(case):
    cluster, nodes = load_base()
    cluster.update(copy.deepcopy(case.get('cluster') or {}))
    for host, overrides in (case.get('hosts') or {}).items():
        nodes.setdefault(host, {}).update(copy.deepcopy(overrides or {}))
    return cluster, nodes


def ansible_view(case):
    """What the controller-side action sees when the lab runs the same overlay."""
    group_vars, base_nodes = load_base()
    hosts = dict((h, {}) for h in base_nodes)
    hosts.update(case.get('hosts') or {})
    nodes = {}
    for host, overrides in hosts.items():
        view = copy.deepcopy(group_vars)                      # group_vars/all
        view.update(copy.deepcopy(base_nodes.get(host, {})))  # the lab inventory plugin
        view.update(copy.deepcopy(overrides or {}))           # the host overlay
        view.update(copy.deepcopy(case.get('cluster') or {}))  # -e @file wins over everything
        nodes[host] = view
    first = sorted(nodes, key=inventory._natural)[0]
    cluster = dict((k, nodes[first][k]) for k in inventory.CLUSTER_KEYS if k in nodes[first])
    return cluster, nodes


def errors_of(cluster, nodes):
    with pytest.raises(inventory.InventoryError) as info:
        inventory.validate(cluster, nodes)
    return info.value.errors


def corpus(kind):
    paths = sorted(glob.glob(os.path.join(CORPUS, kind, '*.yml')))
    return [pytest.param(p, id=os.path.basename(p)[:-4]) for p in paths]


# ---------------------------------------------------------------------------------------------
# the corpus

def test_corpus_is_big_enough():
    assert len(corpus('bad')) >= 26
    assert len(corpus('good')) >= 3


@pytest.mark.parametrize('view', [plain_view, ansible_view])
@pytest.mark.parametrize('path', corpus('bad'))
def test_bad_inventory(path, view):
    case = load_case(path)
    assert case['expect'], path
    assert errors_of(*view(case)) == case['expect']


@pytest.mark.parametrize('view', [plain_view, ansible_view])
@pytest.mark.parametrize('path', corpus('good'))
def test_good_inventory(path, view):
    case = load_case(path)
    assert 'expect' not in case
    model = inventory.validate(*view(case))
    assert model == inventory.validate(*plain_view(case))
    assert sorted(model['nodes']) == sorted(plain_view(case)[1])


def good(name):
    return inventory.validate(*plain_view(load_case(os.path.join(CORPUS, 'good', name))))


def test_good_dual_stack_is_canonical():
    model = good('dual_stack.yml')
    pool = model['ipam']['cluster_pool']
    assert pool['ipv4'] == {'cidrs': ['10.244.0.0/16'], 'mask_size': 24}
    assert pool['ipv6'] == {'cidrs': ['fd00:10:244::/104'], 'mask_size': 120}


def test_good_kubernetes_pod_cidrs():
    model = good('kubernetes_pod_cidrs.yml')
    assert model['ipam']['mode'] == 'kubernetes'
    assert model['nodes']['node2']['pod_cidrs'] == ['10.244.2.0/24', 'fd00:10:244:2::/64']
    assert model['ipam']['kubernetes']['cluster_cidrs'] == ['10.244.0.0/16', 'fd00:10:244::/56']


def _random_nets(rng, count):
    """Networks that often nest, repeat and mix families (what the overlap checks must sort out)."""
    nets = []
    for _i in range(count):
        if rng.random() < 0.7:
            plen = rng.choice([21, 22, 23, 24, 24, 25, 26, 32])
            base = '10.0.%d.%d' % (rng.randrange(8), rng.randrange(256))
        else:
            plen = rng.choice([61, 62, 63, 64, 128])
            base = 'fd00:0:0:%x::%x' % (rng.randrange(8), rng.randrange(4))
        nets.append(ipaddress.ip_network('%s/%d' % (base, plen), strict=False))
    return nets


@pytest.mark.parametrize('seed', range(20))
def test_overlapping_pairs_is_every_pair_compared(seed):
    """The sorted sweep (a 5,000-node kubernetes inventory: seconds, not a minute) finds exactly the
    pairs that comparing every pair finds, in the same order."""
    rng = random.Random(seed)
    nets = _random_nets(rng, rng.randrange(0, 60))
    every = [(a, b) for a in range(len(nets)) for b in range(a + 1, len(nets)) if nets[a].overlaps(nets[b])]
    assert inventory._overlapping_pairs(nets) == every


@pytest.mark.parametrize('seed', range(20))
def test_containing_is_a_scan_of_every_network(seed):
    rng = random.Random(seed)
    nets = _random_nets(rng, rng.randrange(0, 60))
    holding = inventory._containing(nets)
    for _probe in range(50):
        address = ipaddress.ip_address(rng.choice(['10.0.%d.%d' % (rng.randrange(9), rng.randrange(256)),
                                                   'fd00:0:0:%x::%x' % (rng.randrange(9), rng.randrange(5))]))
        assert holding(address) == [k for k, net in enumerate(nets) if address in net]


def test_good_multi_pool_defaults():
    model = good('multi_pool.yml')
    pools = model['ipam']['multi_pool']['pools']
    assert pools['default'] == {'ipv4': {'cidrs': ['10.244.0.0/16'], 'mask_size': 27},
                                'ipv6': None}
    assert pools['gpu']['ipv4']['mask_size'] == 24   # defaulted
    assert model['ipam']['multi_pool']['pre_allocation'] == {'default': 16, 'gpu': 0}


def test_good_native_bgp_defaults():
    model = good('native_bgp.yml')
    routing = model['routing']
    assert routing['mode'] == 'native'
    assert routing['native'] == {
        'ipv4_cidr': '10.244.0.0/16', 'auto_direct_node_routes': True, 'skip_unreachable': False,
        'bgp': {'local_asn': 65001, 'peers': [{'address': '192.168.50.1', 'asn': 65000}],
                'speaker': 'bird', 'hold_time': None}}
    assert routing['tunnel'] == {'protocol': 'vxlan', 'port': 8472, 'vni': 2}
    assert routing['overhead'] == 0            # derived once: what the pod MTU gives up (native: nothing)
    assert routing['bgp'] == routing['native']['bgp'] and routing['link_kinds'] == [] and routing['routes']


def test_good_eni_defaults():
    model = good('eni.yml')
    assert model['eni'] == {
        'region': 'us-east-1', 'endpoint_url': 'http://127.0.0.1:5000',
        'metadata_url': None, 'pre_allocate': 8, 'min_allocate': 0, 'max_above_watermark': 0,
        'first_interface_index': 1, 'mtu': 9001, 'subnet_ids': ['subnet-0a1b2c3d'], 'subnet_tags': {},
        'security_group_ids': [], 'security_group_tags': {}, 'tags': {'team': 'net'},
        'max_allocate': 0, 'prefix_delegation': False, 'release_excess_ips': False,
        'delete_on_termination': True}
    assert model['nodes']['node1']['instance'] == {'id': 'i-0123456789abcdef0',
                                                   'type': 'c5.large'}


# ---------------------------------------------------------------------------------------------
# normalization and defaults

NODES = {'node1': {'podnet_node_ip': '192.168.50.11'}}


def test_lab_base_model():
    model = inventory.validate(*load_base())
    assert model == {
        'cluster': {'name': 'lab', 'id': 0},
        'ipam': {
            'mode': 'cluster-pool',
            'ledger': {'backend': 'file', 'path': LAB_LEDGER, 'bucket': None, 'key': None,
                       'endpoint_url': None, 'region': None},
            'cluster_pool': {'ipv4': {'cidrs': ['10.244.0.0/16'], 'mask_size': 24},
                             'ipv6': None},
            'multi_pool': {'pools': {}, 'pre_allocation': {}},
            'kubernetes': {'cluster_cidrs': []},
        },
        'routing': {'mode': 'tunnel', 'tunnel': {'protocol': 'vxlan', 'port': 8472, 'vni': 2},
                    'native': {'ipv4_cidr': None, 'auto_direct_node_routes': False,
                               'skip_unreachable': False, 'bgp': None},
                    'mtu': 0, 'masquerade': True,
                    # derived once, for the roles: see inventory._derive_routing
                    'routes': True, 'link_kinds': ['vxlan'], 'bgp': None, 'overhead': 50},
        'eni': None,
        'policy': {'rules': []},
        'datapath': {'enabled': True, 'host_routing': 'bpf',
                     'label_filter': list(inventory.DEFAULT_LABEL_FILTER)},
        'nodes': dict(('node%d' % i, {'node_ip': '192.168.50.%d' % (10 + i), 'node_device': None,
                                      'labels': {}, 'pod_cidrs': [], 'instance': None, 'endpoints': [],
                                      'eni': None})
                      for i in (1, 2, 3)),
    }


def test_everything_missing_gets_cilium_defaults():
    model = inventory.validate({}, NODES)
    assert model['cluster'] == {'name': 'default', 'id': 0}
    assert model['ipam']['mode'] == 'cluster-pool'
    assert model['ipam']['ledger']['path'] == '/var/lib/podnet/ledger/default.json'
    assert model['ipam']['cluster_pool']['ipv4'] == {'cidrs': ['10.0.0.0/8'], 'mask_size': 24}
    assert model['routing']['tunnel'] == {'protocol': 'vxlan', 'port': 8472, 'vni': 2}


def test_null_sections_mean_defaults():
    cluster = dict((k, None) for k in inventory.CLUSTER_KEYS)
    assert inventory.validate(cluster, NODES) == inventory.validate({}, NODES)


def test_empty_ipv6_block_gets_default_pool():
    model = inventory.validate({'podnet_ipam': {'cluster_pool': {'ipv6': {}}}}, NODES)
    assert model['ipam']['cluster_pool']['ipv6'] == {'cidrs': ['fd00::/104'], 'mask_size': 120}


def test_ledger_defaults_follow_cluster_name():
    file_ledger = inventory.validate({'podnet_cluster': {'name': 'prod'}}, NODES)
    assert file_ledger['ipam']['ledger']['path'] == '/var/lib/podnet/ledger/prod.json'
    s3 = inventory.validate({'podnet_cluster': {'name': 'prod'},
                             'podnet_ipam': {'ledger': {'backend': 's3', 'bucket': 'b'}}}, NODES)
    assert s3['ipam']['ledger'] == {'backend': 's3', 'path': None, 'bucket': 'b',
                                    'key': 'podnet/prod/ledger.json', 'endpoint_url': None,
                                    'region': None}


def test_geneve_default_port():
    model = inventory.validate({'podnet_routing': {'tunnel': {'protocol': 'geneve'}}}, NODES)
    assert model['routing']['tunnel'] == {'protocol': 'geneve', 'port': 6081, 'vni': 2}


def test_strings_become_ints_and_bools():
    model = inventory.validate({
        'podnet_cluster': {'name': 'lab', 'id': '7'},
        'podnet_ipam': {'cluster_pool': {'ipv4': {'cidrs': ['10.244.0.0/16'],
                                                  'mask_size': '26'}}},
        'podnet_routing': {'mtu': '1450', 'masquerade': 'no',
                           'tunnel': {'port': '4789'}},
    }, NODES)
    assert model['cluster']['id'] == 7
    assert model['ipam']['cluster_pool']['ipv4']['mask_size'] == 26
    assert model['routing']['mtu'] == 1450
    assert model['routing']['masquerade'] is False
    assert model['routing']['tunnel']['port'] == 4789


def test_cidrs_and_addresses_are_canonical():
    model = inventory.validate(
        {'podnet_ipam': {'cluster_pool': {'ipv6': {'cidrs': ['FD00:0:0:0::/104']}}}},
        {'node1': {'podnet_node_ip': ' 192.168.50.11 ', 'podnet_node_device': 'eth1',
                   'podnet_node_labels': {'topology.kubernetes.io/zone': 'a'}}})
    assert model['ipam']['cluster_pool']['ipv6']['cidrs'] == ['fd00::/104']
    assert model['nodes']['node1'] == {
        'node_ip': '192.168.50.11', 'node_device': 'eth1', 'labels': {'topology.kubernetes.io/zone': 'a'},
        'pod_cidrs': [], 'instance': None, 'endpoints': [], 'eni': None}


def test_policy_rules_are_normalized():
    rules = [{'name': 'web', 'endpoint_selector': {'app': 'web'},
              'ingress': [{'from_endpoints': [{'app': 'client'}], 'to_ports': [{'port': '80', 'protocol': 'TCP'}]}],
              'egress_deny': [{'to_cidrs': ['192.0.2.0/24'], 'icmps': [{'type': 8}]}]}]
    model = inventory.validate({'podnet_policy': {'rules': rules}}, NODES)
    assert model['policy'] == {'rules': [{
        'name': 'web', 'endpoint_selector': {'app': 'web'},
        'ingress': [{'from_endpoints': [{'app': 'client'}], 'from_entities': [], 'from_cidrs': [],
                     'to_ports': [{'port': 80, 'end_port': None, 'protocol': 'tcp'}], 'icmps': []}],
        'ingress_deny': [], 'egress': [],
        'egress_deny': [{'to_endpoints': [], 'to_entities': [], 'to_cidrs': ['192.0.2.0/24'], 'to_ports': [],
                         'icmps': [{'type': 8, 'family': 4}]}]}]}


def test_endpoints_and_datapath_defaults():
    nodes = {'node1': {'podnet_node_ip': '192.168.50.11',
                       'podnet_endpoints': [{'name': 'web-1', 'labels': {'app': 'web'}},
                                            {'name': 'db-0', 'namespace': 'data'}]}}
    model = inventory.validate({'podnet_datapath': {'host_routing': 'kernel', 'label_filter': ['!build-id']}}, nodes)
    assert model['nodes']['node1']['endpoints'] == [
        {'name': 'web-1', 'namespace': 'default', 'labels': {'app': 'web'}},
        {'name': 'db-0', 'namespace': 'data', 'labels': {}}]
    assert model['datapath'] == {'enabled': True, 'host_routing': 'kernel', 'label_filter': ['!build-id']}


def test_endpoints_fill_the_node_cidr_but_the_router_and_health_endpoint():
    cluster = {'podnet_ipam': {'cluster_pool': {'ipv4': {'cidrs': ['10.244.0.0/16'], 'mask_size': 28}}}}
    nodes = {'node1': {'podnet_node_ip': '192.168.50.11',
                       'podnet_endpoints': [{'name': 'e%d' % i} for i in range(12)]}}
    inventory.validate(cluster, nodes)    # /28: 16 - network, broadcast, router = 13; 12 + health
    nodes['node1']['podnet_endpoints'].append({'name': 'one-more'})
    assert errors_of(cluster, nodes) == [
        "node1: podnet_endpoints: 13 endpoints do not fit the node's IPv4 pod CIDR (mask_size 28: 13 endpoint "
        "addresses, one of them the health endpoint's): at most 12"]


def test_eni_is_none_outside_eni_mode():
    model = inventory.validate({'podnet_eni': {'region': 'us-east-1'}}, NODES)
    assert model['eni'] is None


def test_returned_model_is_plain_and_independent():
    cluster, nodes = load_base()
    model = inventory.validate(cluster, nodes)
    model['ipam']['cluster_pool']['ipv4']['cidrs'].append('x')
    assert cluster['podnet_ipam']['cluster_pool']['ipv4']['cidrs'] == ['10.244.0.0/16']


# ---------------------------------------------------------------------------------------------
# errors

def test_no_nodes():
    assert errors_of(load_base()[0], {}) == ['all: podnet_nodes: the inventory has no nodes']


def test_all_errors_are_collected_and_sorted_naturally():
    nodes = dict(('node%d' % i, {'podnet_node_ip': 'bad%d' % i}) for i in (10, 2, 1))
    errors = errors_of({'podnet_cluster': {'id': -1}, 'podnet_routing': {'mode': 'x'}}, nodes)
    assert errors == [
        'all: podnet_cluster.id: -1 is out of range (0..255)',
        "all: podnet_routing.mode: 'x' is not one of: tunnel, native, eni",
        "node1: podnet_node_ip: 'bad1' is not an IPv4 address",
        "node2: podnet_node_ip: 'bad2' is not an IPv4 address",
        "node10: podnet_node_ip: 'bad10' is not an IPv4 address",
    ]


def test_error_string_lists_every_error():
    with pytest.raises(inventory.InventoryError) as info:
        inventory.validate({}, {'a': {}, 'b': {}})
    assert str(info.value) == ('the inventory has 2 errors:\n'
                               '  - a: podnet_node_ip: is required\n'
                               '  - b: podnet_node_ip: is required')


@pytest.mark.parametrize('value,message', [
    (True, 'true is not an integer'),
    (2.5, '2.5 is not an integer'),
    ('x', "'x' is not an integer"),
    ([24], 'expected an integer, got a list'),
])
def test_type_error_messages(value, message):
    errors = errors_of({'podnet_cluster': {'id': value}}, NODES)
    assert errors == ['all: podnet_cluster.id: ' + message]


def test_typo_of_a_top_level_key_is_an_error_but_other_vars_are_ignored():
    errors = errors_of({'podnet_ipan': {}, 'podnet_lab_prefix': 'pnt', 'ansible_user': 'root'},
                       {'node1': {'podnet_node_ip': '192.168.50.11', 'podnet_node_ips': []}})
    assert errors == [
        "all: podnet_ipan: unknown key 'podnet_ipan' (did you mean 'podnet_ipam'?)",
        "node1: podnet_node_ips: unknown key 'podnet_node_ips' (did you mean 'podnet_node_ip'?)",
    ]


def test_non_mapping_inputs():
    assert errors_of({}, ['node1']) == [
        'all: podnet_nodes: expected a mapping of host name to variables, got a list']
    assert errors_of({'podnet_ipam': 'cluster-pool'}, NODES) == [
        "all: podnet_ipam: 'cluster-pool' is not a mapping"]


def test_cluster_key_consistency_majority_wins():
    cluster, nodes = load_base()
    other = copy.deepcopy(cluster['podnet_routing'])
    other['mtu'] = 1400
    # node1 (the first host) is the odd one out: it is named, not the two that agree
    for host in nodes:
        nodes[host]['podnet_routing'] = other if host == 'node1' else cluster['podnet_routing']
    assert errors_of(cluster, nodes) == [
        "node1: podnet_routing: differs from the other nodes' value; cluster-wide keys must be "
        "the same on every node (set them in group_vars/all)"]


def test_cluster_key_consistency_tie_goes_to_the_first_host():
    cluster = {'podnet_cluster': {'name': 'a'}}
    nodes = {'node1': {'podnet_node_ip': '192.168.50.11', 'podnet_cluster': {'name': 'a'}},
             'node2': {'podnet_node_ip': '192.168.50.12', 'podnet_cluster': {'name': 'b'}}}
    assert errors_of(cluster, nodes) == [
        "node2: podnet_cluster: differs from the other nodes' value; cluster-wide keys must be "
        "the same on every node (set them in group_vars/all)"]


def test_cluster_key_set_on_one_host_only_is_named():
    cluster, nodes = load_base()
    nodes['node3']['podnet_eni'] = {'region': 'us-east-1'}
    assert errors_of(cluster, nodes) == [
        "node3: podnet_eni: differs from the other nodes' value; cluster-wide keys must be "
        "the same on every node (set them in group_vars/all)"]


# ---------------------------------------------------------------------------------------------
# the controller's validation: plain Python that needs nothing but the standard library (and the
# tunnel facts it shares with the nodes' routing), as old as the oldest Python ansible-core runs on

def test_module_is_python38_compatible():
    with open(MODULE) as f:
        source = f.read()
    assert source.startswith('# -*- coding: utf-8 -*-\n')
    assert 'from __future__ import absolute_import, division, print_function' in source
    assert '\n__metaclass__ = type\n' in source
    tree = ast.parse(source, feature_version=(3, 8))
    for node in ast.walk(tree):
        assert type(node).__name__ != 'Match'
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.BitOr):
            pytest.fail('no X | Y (type unions or dict merges) on line %d' % node.lineno)
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            names = [node.module] if isinstance(node, ast.ImportFrom) else [
                a.name for a in node.names]
            for name in names:
                assert name in ('__future__', 'difflib', 'ipaddress', 're',
                                'ansible_collections.podnet.fabric.plugins.module_utils',
                                'ansible_collections.podnet.fabric.plugins.module_utils.ipam'), name
            if isinstance(node, ast.ImportFrom) and node.module.startswith('ansible_collections'):
                assert [a.name for a in node.names] in (['tunnel'], ['cidr']), \
                    'only the tunnel facts and the CIDR sizes, which import only the standard library'


# ---------------------------------------------------------------------------------------------
# robustness: garbage anywhere gives InventoryError, never a crash

GARBAGE = [None, 'x', '', -1, 0, 99999999999, True, 1.5, [], [None], ['x'], {}, {'x': None}]


def _schema_paths(schema, prefix=()):
    """Every key path the schema knows, with list items as index 0 and map entries as 'default'."""
    for key, child in schema.items():
        path = prefix + (key,)
        yield path
        yield from _child_paths(child, path)


def _child_paths(child, path):
    if child['type'] == 'dict':
        yield from _schema_paths(child['children'], path)
    elif child['type'] == 'list':
        yield path + (0,)
        yield from _child_paths(child['elements'], path + (0,))
    elif child['type'] == 'map':
        yield path + ('default',)
        yield from _child_paths(child['values'], path + ('default',))


def _put(tree, path, value):
    """Set tree[path] = value, creating mappings and lists on the way."""
    for step, following in zip(path, path[1:]):
        empty = [] if isinstance(following, int) else {}
        if isinstance(tree, list):
            while len(tree) <= step:
                tree.append(None)
        current = tree[step] if isinstance(tree, list) else tree.get(step)
        if not isinstance(current, type(empty)):
            tree[step] = current = empty
        tree = current
    if isinstance(tree, list):
        while len(tree) <= path[-1]:
            tree.append(None)
    tree[path[-1]] = value


def _garbage_cases():
    for schema, where in ((inventory.CLUSTER_SCHEMA, 'cluster'), (inventory.NODE_SCHEMA, 'node')):
        for path in _schema_paths(schema):
            yield where, path


@pytest.mark.parametrize('where,path', list(_garbage_cases()),
                         ids=lambda p: '.'.join(map(str, p)) if isinstance(p, tuple) else p)
def test_garbage_never_crashes(where, path):
    for mode in ('cluster-pool', 'kubernetes', 'multi-pool', 'eni'):
        for value in GARBAGE:
            cluster, nodes = load_base()
            cluster['podnet_ipam']['mode'] = mode
            cluster['podnet_routing']['mode'] = 'native' if mode == 'eni' else 'tunnel'
            _put(cluster if where == 'cluster' else nodes['node2'], path, copy.deepcopy(value))
            try:
                inventory.validate(cluster, nodes)
            except inventory.InventoryError as e:
                assert e.errors and all(': ' in line for line in e.errors)
