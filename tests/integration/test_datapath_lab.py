"""site.yml with workload endpoints and a policy on a real 2-node lab (prefix `pdp`, vxlan tunnel
mode): the datapath role makes the endpoints, the controller plans identities and entries, every
node syncs its maps and attaches its programs, and the policy is enforced on real packets.

Endpoints (podnet_endpoints): node1 web-1 {app: web}, client-1 {app: client}; node2 client-2
{app: client}, other-2 {app: other}. Policy, one rule (rule 1, as drops and the walk name it) selecting web:
  ingress allow from {app: client} tcp 8080; ingress_deny from {app: other}
The test runs an echo server on 8080 in web-1 (the endpoint has no responder of its own). Assertions
are on packets (TCP connects from the endpoints' namespaces), on tc and bpffs inside the nodes, and
on what bpf_info counts; never on a task's ok.

The tests share one lab and run in file order (each builds on the inventory the one before left).
"""
import json
import os
import re
import subprocess
import sys
import time

import labutil
import pytest
import yaml

from labutil import adhoc, nsenter, recap, run_ok, write_lab_inventory

from ansible_collections.podnet.fabric.plugins.module_utils import lab

PREFIX = 'pdp'
NODES = ['node1', 'node2']
PIN_ROOT = '/sys/fs/bpf/podnet'

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason='the lab needs root')

ENDPOINTS = {
    'node1': [{'name': 'web-1', 'labels': {'app': 'web'}}, {'name': 'client-1', 'labels': {'app': 'client'}}],
    'node2': [{'name': 'client-2', 'labels': {'app': 'client'}}, {'name': 'other-2', 'labels': {'app': 'other'}}],
}
WHERE = dict((ep['name'], n) for n, eps in ENDPOINTS.items() for ep in eps)
POLICY = {'rules': [
    {'name': 'web', 'endpoint_selector': {'app': 'web'},
     'ingress': [{'from_endpoints': [{'app': 'client'}], 'to_ports': [{'port': 8080, 'protocol': 'tcp'}]}],
     'ingress_deny': [{'from_endpoints': [{'app': 'other'}]}]},
]}


def netns(ep):
    return 'default.' + ep


def node(n, *argv, check=True):
    return nsenter(PREFIX, n, [str(a) for a in argv], check=check)


def in_ep(ep, *argv, check=True):
    return node(WHERE[ep], 'nsenter', '--net=/run/netns/' + netns(ep), '--', *argv, check=check)


def address(ep):
    addrs = json.loads(in_ep(ep, 'ip', '-4', '-j', 'addr', 'show', 'dev', 'eth0'))
    return addrs[0]['addr_info'][0]['local']


def tcp(src, dst, port=8080):
    return in_ep(src, sys.executable, '-c', labutil.TCP_ONE_SHOT, address(dst), port).strip() == 'ok'


def tc_filters(n, dev, hook):
    out = node(n, 'tc', 'filter', 'show', 'dev', dev, hook, check=False)
    return [(int(m.group(1)), m.group(2), int(m.group(3)))
            for m in re.finditer(r'pref (\d+) bpf chain \d+ handle (\S+) .* id (\d+)', out)]


def lxc_devices(n):
    return sorted(link['ifname'] for link in json.loads(node(n, 'ip', '-j', 'link', 'show'))
                  if link['ifname'].startswith('lxc'))


def bpffs(n):
    return sorted(p for p in node(n, 'find', '/sys/fs/bpf').split() if not p.endswith('.debug') and p != '/sys/fs/bpf')


def bpf_info(inv, n):
    rc, res = adhoc(inv, n, 'podnet.fabric.bpf_info', {})
    assert rc == 0 and not res.get('failed'), res
    return res


def drops(inv, n):
    return dict(((d['reason'], d['direction'], d['rule']), d['packets']) for d in bpf_info(inv, n)['drops'])


class Lab:
    def __init__(self, base):
        self.base = base
        self.inv = write_lab_inventory(str(base / 'inv'), PREFIX, nodes=len(NODES))
        os.makedirs(os.path.join(self.inv, 'host_vars'), exist_ok=True)
        self.server = None

    def write(self, endpoints=None, policy=None, enabled=True):
        for n in NODES:
            with open(os.path.join(self.inv, 'host_vars', n + '.yml'), 'w') as f:
                yaml.safe_dump({'podnet_endpoints': (endpoints or ENDPOINTS).get(n, [])}, f)
        with open(os.path.join(self.inv, 'group_vars', 'all', 'datapath.yml'), 'w') as f:
            yaml.safe_dump({'podnet_policy': POLICY if policy is None else policy,
                            'podnet_datapath': {'enabled': enabled}}, f)

    def site(self, **kw):
        return run_ok('site.yml', self.inv, **kw)

    def start_server(self, ep='web-1', port=8080):
        argv = lab.nsenter_argv(PREFIX, WHERE[ep], ['nsenter', '--net=/run/netns/' + netns(ep), '--',
                                                    sys.executable, '-c', labutil.ECHO_SERVER, '0.0.0.0', str(port)])
        self.server = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, universal_newlines=True)
        assert self.server.stdout.readline().strip() == 'ready'

    def stop_server(self):
        if self.server is not None:
            self.server.terminate()      # our own echo server, by its handle
            self.server.wait(timeout=10)
            self.server = None


@pytest.fixture(scope='module')
def pdp(tmp_path_factory):
    labutil.fresh(PREFIX)
    host_links = set(os.listdir('/sys/class/net'))
    lb = Lab(tmp_path_factory.mktemp('datapath'))
    try:
        run_ok('lab_up.yml', lb.inv)
        yield lb
    finally:
        try:
            lb.stop_server()
            run_ok('lab_down.yml', lb.inv)
            labutil.assert_lab_gone(PREFIX)
        finally:
            labutil.fresh(PREFIX)
    assert set(os.listdir('/sys/class/net')) == host_links


RESULT = {}


def test_site_enforces_the_policy(pdp):
    pdp.write()
    RESULT['first'] = pdp.site()
    pdp.start_server()
    # One filter per hook: every endpoint's lxc device (the health endpoint's too), the underlay,
    # the tunnel device.
    for n in NODES:
        devs = lxc_devices(n)
        assert len(devs) == 3 and 'lxc_health' in devs, devs
        hooks = [(d, h) for d in devs for h in ('ingress', 'egress')] + [('eth0', 'ingress'), ('eth0', 'egress'),
                                                                         ('podnet_vxlan', 'ingress')]
        for dev, hook in hooks:
            f = tc_filters(n, dev, hook)
            assert len(f) == 1 and f[0][:2] == (1, '0x1'), (n, dev, hook, f)
    # Allowed: clients on the same node and across nodes.
    assert tcp('client-1', 'web-1')
    assert tcp('client-2', 'web-1')
    # Denied by the rule's ingress_deny, counted on node1 with the rule (1; to_container, ingress).
    before = drops(pdp.inv, 'node1')
    assert not tcp('other-2', 'web-1')
    after = drops(pdp.inv, 'node1')
    assert after.get((131, 'ingress', 1), 0) > before.get((131, 'ingress', 1), 0), after
    # A port rule 1 does not allow: default deny (rule 0).
    assert not tcp('client-1', 'web-1', port=9090)
    assert drops(pdp.inv, 'node1').get((132, 'ingress', 0), 0) > before.get((132, 'ingress', 0), 0)
    # Nothing selects the clients: web-1 reaches them (no listener: a refusal, i.e. a RST came back).
    # The health endpoints still reach each other (verify's pod-to-pod probe).
    rc, res = adhoc(pdp.inv, 'node1', 'podnet.fabric.connectivity',
                    {'netns': 'podnet-health', 'targets': [{'name': 'node2', 'address': _health(pdp, 'node2')}],
                     'port': 4240, 'node_name': 'node1'})
    assert rc == 0 and not res.get('failed'), res


def _health(pdp, n):
    out = node(n, 'nsenter', '--net=/run/netns/podnet-health', '--', 'ip', '-4', '-j', 'addr', 'show', 'dev', 'eth0')
    return json.loads(out)[0]['addr_info'][0]['local']


def test_second_run_changes_nothing_and_compiles_nothing(pdp):
    ids = dict((n, sorted(p['id'] for p in bpf_info(pdp.inv, n)['programs'])) for n in NODES)
    out = pdp.site()
    r = recap(out)
    assert all(r[n]['changed'] == 0 for n in NODES), out[-4000:]
    assert ids == dict((n, sorted(p['id'] for p in bpf_info(pdp.inv, n)['programs'])) for n in NODES)
    # A check run reports no change either.
    out = pdp.site(check=True)
    assert all(recap(out)[n]['changed'] == 0 for n in NODES), out[-4000:]


def test_verify_walks_every_pair_against_the_policy(pdp):
    out = run_ok('verify.yml', pdp.inv)
    # Per node: 3 endpoints x 5 others on 8080, + 4240 to the other health endpoints (1 from the
    # health endpoint, 2 from each workload endpoint).
    walked = re.findall(r'packet walk: (\d+) connections as the policy says', out)
    assert sorted(int(n) for n in walked) == [20, 20], out[-3000:]


def test_a_label_change_moves_the_endpoint_and_the_policy_follows(pdp):
    # other-2 takes the clients' label: the inventory now allows it to reach web-1.
    eps = dict(ENDPOINTS, node2=[ENDPOINTS['node2'][0], {'name': 'other-2', 'labels': {'app': 'client'}}])
    pdp.write(endpoints=eps)
    # Before the site run the datapath still holds other-2's old identity: the walk says where and why.
    rc, out = labutil.playbook('verify.yml', pdp.inv)
    assert rc != 0
    text = ' '.join(out.split())
    assert ('node2 default/other-2 -> node1 default/web-1 (%s) tcp 8080: policy allow (rule 1), observed dropped (timed out); '
            'drops: ' % address('web-1')) in text and 'node1 policy denied (ingress, rule 1)' in text, out[-4000:]
    # The site run moves other-2 to the clients' identity, and node1's policy follows: no restart.
    before = bpf_info(pdp.inv, 'node1')['programs']
    pdp.site()
    assert tcp('other-2', 'web-1')
    assert tcp('client-1', 'web-1')
    assert sorted(p['id'] for p in bpf_info(pdp.inv, 'node1')['programs']) == sorted(p['id'] for p in before)


def test_the_policy_pass_enforces_rule_and_label_changes_with_maps_alone(pdp):
    # The rule's allow moves from 8080 to 9090, and other-2 takes back its own label.
    moved = {'rules': [dict(POLICY['rules'][0], ingress=[{'from_endpoints': [{'app': 'client'}],
                                                          'to_ports': [{'port': 9090, 'protocol': 'tcp'}]}])]}
    ids = dict((n, sorted(p['id'] for p in bpf_info(pdp.inv, n)['programs'])) for n in NODES)
    pdp.write(policy=moved)
    t0 = time.monotonic()
    out = run_ok('policy.yml', pdp.inv)
    seconds = time.monotonic() - t0
    assert not tcp('client-1', 'web-1') and not tcp('client-2', 'web-1')
    assert not tcp('other-2', 'web-1')
    # Maps alone: the same programs (nothing compiled or attached).
    assert ids == dict((n, sorted(p['id'] for p in bpf_info(pdp.inv, n)['programs'])) for n in NODES)
    assert 'Reconcile the endpoints' not in out
    pdp.write()
    run_ok('policy.yml', pdp.inv)
    assert tcp('client-1', 'web-1') and tcp('client-2', 'web-1')
    assert not tcp('other-2', 'web-1')
    # Nothing left to change.
    assert all(recap(run_ok('policy.yml', pdp.inv))[n]['changed'] == 0 for n in NODES)
    print('\npolicy.yml, a rule and a label change on 2 nodes: %.1f s' % seconds)


def test_disabled_leaves_no_pin_or_filter_and_removed_endpoints_go(pdp):
    pdp.write(enabled=False)
    pdp.site()
    for n in NODES:
        assert bpffs(n) == [], n
        for dev in lxc_devices(n) + ['eth0', 'podnet_vxlan']:
            assert tc_filters(n, dev, 'ingress') == [] and tc_filters(n, dev, 'egress') == [], (n, dev)
        # The endpoints stay (pods without enforcement).
        assert len(lxc_devices(n)) == 3
    assert tcp('other-2', 'web-1')
    # Endpoints the inventory no longer lists are removed, their IPs released.
    pdp.stop_server()
    pdp.write(endpoints={'node1': [], 'node2': []}, enabled=False)
    pdp.site()
    for n in NODES:
        assert lxc_devices(n) == ['lxc_health'], n
        store = json.loads(node(n, 'cat', '/var/lib/podnet/ipam/endpoints.json'))
        assert [r['owner'] for r in store['used'].values()] == ['podnet-health'], store
