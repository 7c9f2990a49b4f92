"""The lab inventory plugin's prefix and node count: the file, else PODNET_LAB_PREFIX/NODES, else
pnd/3 (Ansible's precedence for plugin options), and the demo inventory leaves both to the
environment. Runs ansible-inventory itself: no lab, no root."""
import json
import os
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BIN = os.path.join(ROOT, '.venv', 'bin')
DEMO = os.path.join(ROOT, 'inventories', 'lab', 'lab.podnet.yml')


def listing(path, **env_vars):
    env = dict(os.environ, ANSIBLE_CONFIG=os.path.join(ROOT, 'ansible.cfg'))
    env.pop('PODNET_LAB_PREFIX', None)
    env.pop('PODNET_LAB_NODES', None)
    env.update(env_vars)
    p = subprocess.run([os.path.join(BIN, 'ansible-inventory'), '-i', path, '--list'], cwd=ROOT, env=env,
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True, check=False)
    assert p.returncode == 0, p.stderr
    inv = json.loads(p.stdout)
    hostvars = inv['_meta']['hostvars']
    nodes = sorted(inv['podnet_nodes']['hosts'])
    prefixes = sorted(set(hostvars[h]['podnet_lab_prefix'] for h in hostvars))
    return prefixes, nodes


@pytest.fixture
def files(tmp_path):
    bare = tmp_path / 'bare.podnet.yml'
    bare.write_text('plugin: podnet.fabric.lab\n')
    pinned = tmp_path / 'pinned.podnet.yml'
    pinned.write_text('plugin: podnet.fabric.lab\nprefix: ptx\nnodes: 4\n')
    return str(bare), str(pinned)


def test_defaults_without_file_values_or_environment(files):
    assert listing(files[0]) == (['pnd'], ['node1', 'node2', 'node3'])


def test_environment_is_used_when_the_file_leaves_the_values_unset(files):
    assert listing(files[0], PODNET_LAB_PREFIX='prp', PODNET_LAB_NODES='2') == (['prp'], ['node1', 'node2'])


def test_a_value_set_in_the_file_wins_over_the_environment(files):
    assert listing(files[1], PODNET_LAB_PREFIX='prp', PODNET_LAB_NODES='2') == (['ptx'], ['node1', 'node2', 'node3', 'node4'])


def test_the_demo_inventory_leaves_prefix_and_node_count_to_the_environment():
    assert listing(DEMO) == (['pnd'], ['node1', 'node2', 'node3'])
    assert listing(DEMO, PODNET_LAB_PREFIX='prp', PODNET_LAB_NODES='5') == (['prp'], ['node%d' % i for i in range(1, 6)])


def test_awx_slices_split_like_awx_and_unwrap_unsafe_strings():
    from ansible_collections.podnet.fabric.plugins.module_utils import lab as lab_utils
    hostvars = dict(('node%d' % i, {'podnet_node_ip': {'__ansible_unsafe': '192.168.50.%d' % (10 + i)},
                                    'podnet_cluster': {'name': 'lab', 'id': 0}}) for i in range(1, 6))
    listed = {'_meta': {'hostvars': hostvars},
              'podnet_nodes': {'hosts': ['node1', 'node2', 'node3', 'node4', 'node5']},
              'podnet_lab_routers': {'hosts': ['tor']}}
    slices = lab_utils.awx_slices(listed, 'podnet_nodes', 2)
    assert [(n, hosts) for n, hosts, _doc in slices] == [(1, ['node1', 'node3', 'node5']), (2, ['node2', 'node4'])]
    doc = slices[1][2]
    assert doc == {'all': {'children': {'podnet_nodes': {'hosts': {
        'node2': {'podnet_node_ip': '192.168.50.12', 'podnet_cluster': {'name': 'lab', 'id': 0}},
        'node4': {'podnet_node_ip': '192.168.50.14', 'podnet_cluster': {'name': 'lab', 'id': 0}}}}}}}
