"""The lab, the connection plugin, validation before change, check mode, idempotence and teardown.

Everything here runs ansible-playbook against a real lab (prefix `pti`; a second lab `ptj` for
coexistence) and asserts on kernel state read with nsenter, never on a task's status alone. Traffic
stays inside the lab's namespaces. The tests share the pti lab and each asks it for the state it
needs (`pti.need(...)`); the fixture's teardown checks that lab_down leaves nothing.
"""
import os
import subprocess
import time

import labutil
import pytest
import yaml

from labutil import (LAB_ROOT, REPO, lab_snapshot, mountpoints, netns_names, nsenter, playbook, recap, run_ok,
                     write_lab_inventory)

PREFIX = 'pti'
OTHER = 'ptj'
NODES = ['node1', 'node2']
# tests/unit/test_inventory.py checks every case of tests/inventories/bad/ for its exact errors,
# without a lab. These few also run on the lab, through site.yml: one of each kind of failure.
BAD = [
    'node_ip_not_an_address',          # one host's key
    'node_ip_missing',                 # a host the lab doesn't have, missing a required key
    'unknown_ipam_key',                # a cluster-wide key (extra vars), an unknown key
    'cluster_key_differs_on_a_node',   # a cluster-wide key set differently on one host
    'duplicate_node_ip',               # a conflict between two hosts
    'eni_bad_values',                  # many errors at once, cluster-wide and per host
]

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason='the lab needs root')


class Lab(labutil.LabState):
    """The pti lab. States: 'fresh' (lab_up only), 'converged' (site.yml has run on it)."""

    def __init__(self, inv):
        labutil.LabState.__init__(self, self._build)
        self.inv = inv

    def _build(self, state, current):
        labutil.fresh(PREFIX)
        run_ok('lab_up.yml', self.inv)
        if state == 'converged':
            run_ok('site.yml', self.inv)


@pytest.fixture(scope='module')
def pti(tmp_path_factory):
    labutil.fresh(PREFIX)                           # whatever a killed earlier run left
    labutil.fresh(OTHER)
    host_links = set(os.listdir('/sys/class/net'))
    lab = Lab(write_lab_inventory(str(tmp_path_factory.mktemp('inv')), PREFIX, nodes=len(NODES)))
    try:
        yield lab
    finally:
        try:
            run_ok('lab_down.yml', lab.inv)         # lab_down leaves nothing of the lab
            labutil.assert_lab_gone(PREFIX)
        finally:
            labutil.fresh(PREFIX)
            labutil.fresh(OTHER)
    # Whatever the tests did, the host's own network namespace gained no link.
    assert set(os.listdir('/sys/class/net')) == host_links


def test_members_are_separate_machines(pti):
    pti.need('fresh', 'converged')
    for i, node in enumerate(NODES):
        assert nsenter(PREFIX, node, ['hostname']).strip() == node
        assert ' /sys/fs/bpf ' in nsenter(PREFIX, node, ['cat', '/proc/self/mountinfo'])
        addrs = nsenter(PREFIX, node, ['ip', '-4', '-o', 'addr', 'show', 'dev', 'eth0'])
        assert '192.168.50.%d/24' % (11 + i) in addrs
    # Packets cross the underlay between every pair of nodes and to the ToR.
    for src in NODES:
        for dst in ['192.168.50.%d' % (11 + i) for i in range(len(NODES))] + ['192.168.50.1']:
            out = nsenter(PREFIX, src, ['ping', '-c', '1', '-W', '2', dst])
            assert '1 received' in out
    # Each node's bpffs is its own: a pin in one is not seen in another.
    nsenter(PREFIX, 'node1', ['mkdir', '/sys/fs/bpf/pti-probe'])
    try:
        assert 'pti-probe' not in nsenter(PREFIX, 'node2', ['ls', '/sys/fs/bpf'])
    finally:
        nsenter(PREFIX, 'node1', ['rmdir', '/sys/fs/bpf/pti-probe'])
    pti.keep()


def test_lab_up_is_idempotent(pti):
    pti.need('fresh', 'converged')
    out = run_ok('lab_up.yml', pti.inv)
    assert recap(out)['localhost']['changed'] == 0, out
    pti.keep()


def test_connection_plugin_runs_ordinary_tasks(pti, tmp_path):
    pti.need('fresh', 'converged')
    play = tmp_path / 'conn.yml'
    fetched = tmp_path / 'fetched'
    play.write_text(yaml.safe_dump([{
        'name': 'connection plugin', 'hosts': 'node2', 'gather_facts': True, 'gather_subset': ['min'],
        'tasks': [
            {'name': 'command', 'ansible.builtin.command': 'hostname', 'register': 'h', 'changed_when': False},
            {'name': 'copy', 'ansible.builtin.copy': {'dest': '/etc/pti-copied', 'content': 'copied\n', 'mode': '0644'}},
            {'name': 'template', 'ansible.builtin.template': {'src': str(tmp_path / 't.j2'), 'dest': '/var/lib/podnet/pti-templated', 'mode': '0644'}},
            {'name': 'fetch', 'ansible.builtin.fetch': {'src': '/etc/pti-copied', 'dest': str(fetched), 'flat': True}},
            {'name': 'our module', 'podnet.fabric.node_info': {}, 'register': 'info'},
            {'name': 'report', 'ansible.builtin.copy': {
                'dest': str(tmp_path / 'report'), 'mode': '0644',
                'content': '{{ h.stdout }} {{ info.hostname }} {{ ansible_facts.hostname }} {{ info.links.eth0.addresses[0] }}'},
             'delegate_to': 'localhost'},
        ]}]))
    (tmp_path / 't.j2').write_text('node={{ inventory_hostname }} ip={{ podnet_node_ip }}\n')
    try:
        run_ok(str(play), pti.inv)
        assert (tmp_path / 'report').read_text() == 'node2 node2 node2 192.168.50.12/24'
        assert nsenter(PREFIX, 'node2', ['cat', '/etc/pti-copied']) == 'copied\n'
        assert nsenter(PREFIX, 'node2', ['cat', '/var/lib/podnet/pti-templated']) == 'node=node2 ip=192.168.50.12\n'
        assert fetched.read_text() == 'copied\n'
        # The writes stayed in node2: not on the host, not on node1.
        assert not os.path.exists('/etc/pti-copied')
        assert not os.path.exists('/var/lib/podnet/pti-templated')
        assert nsenter(PREFIX, 'node1', ['test', '-e', '/etc/pti-copied'], check=False) == ''
        assert subprocess.run(['nsenter', '--net=/run/netns/pti-node1', '--mount=%s/pti/node1/mnt' % LAB_ROOT,
                               'test', '-e', '/etc/pti-copied'], check=False).returncode == 1
    finally:
        nsenter(PREFIX, 'node2', ['rm', '-f', '/etc/pti-copied', '/var/lib/podnet/pti-templated'])
    pti.keep()


def _overlay(case, tmp_path):
    """Turn a corpus case into an extra-vars file (cluster keys) and an inventory overlay (hosts)."""
    with open(case) as f:
        spec = yaml.safe_load(f)
    extra = []
    if spec.get('cluster'):
        ev = tmp_path / 'cluster.yml'
        ev.write_text(yaml.safe_dump(spec['cluster']))
        extra = ['-e', '@' + str(ev)]
    hosts = dict(spec.get('hosts') or {})
    for name in hosts:
        if name not in NODES:  # a node the lab plugin doesn't know: give it the lab's own vars
            hosts[name] = dict({'podnet_lab_prefix': PREFIX}, **(hosts[name] or {}))
    overlay = tmp_path / 'hosts.yml'
    overlay.write_text(yaml.safe_dump({'podnet_nodes': {'hosts': hosts}}))
    return spec, str(overlay), extra


@pytest.mark.parametrize('case', BAD)
def test_bad_inventory_fails_before_any_change(pti, case, tmp_path):
    pti.need('fresh', 'converged')
    spec, overlay, extra = _overlay(os.path.join(REPO, 'tests', 'inventories', 'bad', case + '.yml'), tmp_path)
    before = lab_snapshot(PREFIX, NODES)
    rc, out = playbook('site.yml', pti.inv, overlay, extra=extra)
    assert rc != 0, out
    flat = ' '.join(out.split())
    for err in spec['expect']:
        assert ' '.join(err.split()) in flat, 'expected error missing: %s\n%s' % (err, out)
    # The run stopped in the controller play: no node was contacted, and no node changed.
    for node in NODES:
        assert 'ok: [%s]' % node not in out and 'changed: [%s]' % node not in out
    assert lab_snapshot(PREFIX, NODES) == before
    pti.keep()


def test_check_mode_changes_nothing_then_converge_is_idempotent(pti):
    pti.need('fresh')
    before = lab_snapshot(PREFIX, NODES)
    out = run_ok('site.yml', pti.inv, check=True)
    assert all(recap(out)[n]['changed'] > 0 for n in NODES), out
    assert '+        name: podnet_host' in out  # the diff shows the device it would create
    assert lab_snapshot(PREFIX, NODES) == before

    # The product's default run: site.yml ends with verify.yml (labutil leaves it out elsewhere).
    out = run_ok('site.yml', pti.inv, extra=['-e', 'podnet_site_verify=true'])
    assert 'Probe the health endpoints from this node' in out
    for n in NODES:
        host = nsenter(PREFIX, n, ['ip', '-d', 'link', 'show', 'podnet_host'])
        assert 'veth' in host and 'mtu 1450' in host and 'UP' in host
        assert nsenter(PREFIX, n, ['sysctl', '-n', 'net.ipv4.ip_forward']).strip() == '1'
    out = run_ok('site.yml', pti.inv)
    assert all(recap(out)[n]['changed'] == 0 for n in NODES), out

    # Drift: delete a node's host device; the check run reports it, the real run repairs it (both
    # limited to that node: test_drift_lab.py shows the other nodes are reported clean).
    nsenter(PREFIX, 'node2', ['ip', 'link', 'del', 'podnet_host'])
    out = run_ok('site.yml', pti.inv, check=True, extra=['--limit', 'node2'])
    assert recap(out)['node2']['changed'] == 1 and 'node1' not in recap(out), out
    assert nsenter(PREFIX, 'node2', ['ip', 'link', 'show', 'podnet_host'], check=False) == ''
    out = run_ok('site.yml', pti.inv, extra=['--limit', 'node2'])
    assert recap(out)['node2']['changed'] == 1, out
    assert 'podnet_host' in nsenter(PREFIX, 'node2', ['ip', 'link', 'show', 'podnet_host'])
    pti.left('converged')


def test_node_device_names_the_underlay_and_a_missing_one_stops_the_run_in_preflight(pti, tmp_path):
    """podnet_node_device: the underlay device whose MTU the host device and the tunnel take. One the
    node does not have fails every node in the routing preflight, before anything changes."""
    pti.need('converged')
    overlay = tmp_path / 'hosts.yml'
    overlay.write_text(yaml.safe_dump({'podnet_nodes': {'hosts': {'node2': {'podnet_node_device': 'pti_nosuch0'}}}}))
    before = lab_snapshot(PREFIX, NODES)
    rc, out = playbook('site.yml', pti.inv, str(overlay))
    assert rc != 0 and 'node2: podnet_node_device: pti_nosuch0 is not a device of this node' in out, out
    assert lab_snapshot(PREFIX, NODES) == before
    # Naming the device the node IP is on changes nothing on a converged node.
    overlay.write_text(yaml.safe_dump({'podnet_nodes': {'hosts': {'node2': {'podnet_node_device': 'eth0'}}}}))
    out = run_ok('site.yml', pti.inv, str(overlay), extra=['--limit', 'node2'])
    assert recap(out)['node2']['changed'] == 0, out
    pti.keep()


def _in_netns(pid, path):
    try:
        return os.stat('/proc/%d/ns/net' % pid).st_ino == os.stat(path).st_ino
    except OSError:
        return False


def test_two_labs_coexist_and_teardown_leaves_nothing(pti, tmp_path):
    pti.need('fresh', 'converged')
    other = write_lab_inventory(str(tmp_path / OTHER), OTHER, nodes=2)
    labutil.fresh(OTHER)
    sleeper = None
    try:
        run_ok('lab_up.yml', other)
        assert {'ptj-node1', 'ptj-node2', 'ptj-tor', 'ptj-ul', 'pti-node1'} <= netns_names()
        # Same underlay addresses, separate segments: each lab reaches only its own nodes.
        assert '1 received' in nsenter(OTHER, 'node1', ['ping', '-c', '1', '-W', '2', '192.168.50.12'])
        assert nsenter(OTHER, 'node1', ['ping', '-c', '1', '-W', '1', '192.168.50.13'], check=False).count('1 received') == 0

        # A process left running inside a node must be ended by the teardown (we started it).
        d = os.path.join(LAB_ROOT, OTHER, 'node1')
        sleeper = subprocess.Popen(['nsenter', '--net=/run/netns/ptj-node1', '--mount=%s/mnt' % d,
                                    '--uts=%s/uts' % d, '--', 'sleep', '600'])
        deadline = time.monotonic() + 10
        while not _in_netns(sleeper.pid, '/run/netns/ptj-node1') and time.monotonic() < deadline:
            time.sleep(0.02)
        assert _in_netns(sleeper.pid, '/run/netns/ptj-node1')
        ino = os.stat('/run/netns/ptj-node1').st_ino

        run_ok('lab_down.yml', other)
        assert sleeper.wait(timeout=10) is not None
        assert not [n for n in netns_names() if n.startswith('ptj-')]
        assert not [m for m in mountpoints() if m.startswith('/run/podnet-lab/ptj')]
        assert not os.path.exists('/run/podnet-lab/ptj')
        for pid in os.listdir('/proc'):
            if pid.isdigit():
                try:
                    assert os.stat('/proc/%s/ns/net' % pid).st_ino != ino, 'process %s still in ptj-node1' % pid
                except OSError:
                    pass
        # The other lab is untouched.
        assert '1 received' in nsenter(PREFIX, 'node1', ['ping', '-c', '1', '-W', '2', '192.168.50.12'])
        out = run_ok('lab_down.yml', other)
        assert recap(out)['localhost']['changed'] == 0, out
    finally:
        if sleeper is not None and sleeper.poll() is None:
            sleeper.kill()                          # ours, by PID
            sleeper.wait()
        labutil.fresh(OTHER)
    pti.keep()
