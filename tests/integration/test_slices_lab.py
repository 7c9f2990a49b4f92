"""AWX job slicing on the lab (prefix `psl`): slices are separate jobs, each with an inventory that
holds only its own hosts (as AWX writes it), sharing one ledger.

The worst case runs: slice 1 converges before slice 2 allocates, so slice 1's nodes do not know
slice 2's node. Each slice's own site.yml (with verify) passes; verify.yml over the whole inventory
then fails naming the missing peer; playbooks/peers.yml closes the gap (timed: routes and the
datapath's maps), and verify.yml passes, pod to pod across every pair, under a cluster-only policy. A slice may not prune: refused before any node is touched.
"""
import json
import os
import subprocess
import time

import labutil
import pytest
import yaml

from labutil import LAB_ROOT, VENV_BIN, REPO, nsenter, playbook, run_ok

from ansible_collections.podnet.fabric.plugins.module_utils import lab as lab_utils

PREFIX = 'psl'
NODES = ['node1', 'node2', 'node3']
SLICES = 2

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason='the lab needs root')


def awx_slices(lab_inv, directory, count):
    """The slice inventories AWX writes for the jobs of a sliced job template (lab_utils.awx_slices)."""
    p = subprocess.run([os.path.join(VENV_BIN, 'ansible-inventory'), '-i', lab_inv, '--list'], cwd=REPO,
                       env=labutil.env(), stdout=subprocess.PIPE, universal_newlines=True, check=True)
    out = []
    for n, hosts, doc in lab_utils.awx_slices(json.loads(p.stdout), 'podnet_nodes', count):
        path = os.path.join(directory, 'slice%d.yml' % n)
        with open(path, 'w') as f:
            yaml.safe_dump(doc, f)
        out.append((n, hosts, path))
    return out


def ledger_cidrs(prefix):
    with open(os.path.join(LAB_ROOT, prefix, 'ledger.json')) as f:
        doc = json.load(f)
    return dict((n, e['cidrs']['ipv4']) for n, e in doc['nodes'].items())


def fdb_peers(node):
    """The underlay addresses this node's VXLAN device sends to (its FDB), from the kernel."""
    out = nsenter(PREFIX, node, ['bridge', '-j', 'fdb', 'show', 'dev', 'podnet_vxlan'])
    return sorted(set(e['dst'] for e in json.loads(out or '[]') if e.get('dst')))


# Every endpoint (the health endpoints) takes traffic from the cluster only: a node whose ipcache does
# not hold a peer's endpoints judges them as world and drops them, so the walk after peers.yml fails
# unless peers.yml synced the datapath's maps too.
POLICY = {'podnet_policy': {'rules': [{'name': 'cluster-only', 'endpoint_selector': {},
                                       'ingress': [{'from_entities': ['cluster']}]}]}}


@pytest.fixture(scope='module')
def lab(tmp_path_factory):
    with labutil.own_lab(PREFIX, str(tmp_path_factory.mktemp('psl') / 'inv'), nodes=len(NODES)) as inv:
        with open(os.path.join(inv, 'group_vars', 'all', 'policy.yml'), 'w') as f:
            yaml.safe_dump(POLICY, f)
        yield inv


def test_slices_converge_with_the_peers_pass(lab, tmp_path):
    slices = awx_slices(lab, str(tmp_path), SLICES)
    assert [s[1] for s in slices] == [['node1', 'node3'], ['node2']]

    # A slice may not prune: refused in the validation play, before any node is touched.
    n, _hosts, inv = slices[0]
    rc, out = playbook('site.yml', inv, extra=('-e', 'ipam_prune=true', '-e', 'job_slice=%d' % n))
    assert rc != 0
    assert 'all: ipam_prune: refused, this run is slice 1 of an AWX sliced job (job_slice)' in out, out[-3000:]
    assert not os.path.exists(os.path.join(LAB_ROOT, PREFIX, 'ledger.json'))
    assert 'podnet_host' not in nsenter(PREFIX, 'node1', ['ip', '-o', 'link', 'show'])

    # The slices one after the other (the widest gap concurrent slices can leave), each with verify:
    # each passes against the map it routed by.
    for n, hosts, inv in slices:
        run_ok('site.yml', inv, extra=('-e', 'podnet_site_verify=true', '-e', 'job_slice=%d' % n))
    cidrs = ledger_cidrs(PREFIX)
    assert sorted(cidrs) == NODES
    assert len(set(c for v in cidrs.values() for c in v)) == len(NODES)    # distinct
    assert fdb_peers('node1') == ['192.168.50.13']                          # node2 came later
    assert fdb_peers('node2') == ['192.168.50.11', '192.168.50.13']

    # Over the whole inventory, verify names the node that misses a peer.
    rc, out = playbook('verify.yml', lab)
    assert rc != 0 and 'node1: routing (tunnel) is not as the node map says' in out, out[-3000:]

    start = time.monotonic()
    run_ok('peers.yml', lab)
    print('peers.yml on the 3-node lab: %.1f s' % (time.monotonic() - start))
    for node, peers in (('node1', ['192.168.50.12', '192.168.50.13']), ('node2', ['192.168.50.11', '192.168.50.13']),
                        ('node3', ['192.168.50.11', '192.168.50.12'])):
        assert fdb_peers(node) == peers, node

    # verify.yml probes pod to pod between every pair of health endpoints, checks every route, and
    # walks every pair under the policy (each node's ipcache holds every node's health endpoint).
    out = run_ok('verify.yml', lab)
    assert 'pending, allocated after' not in out
    assert 'packet walk: 4 connections as the policy says' in out, out[-3000:]
