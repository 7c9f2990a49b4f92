"""Pod routing on a real lab (prefix `prl`): the VXLAN overlay, native direct routes, reconcile when
nodes join and leave, a foreign route left alone, switching tunnel <-> native, Geneve refused before
anything changes, off-link nodes, masquerade.

Assertions are on kernel state read with nsenter, on packets captured on the underlay bridge and on
pings and TCP connections between the nodes' health endpoints (pods). The tests run in file order and
build on each other's lab state.
"""
import json
import os
import re

import labutil
import pytest
import yaml

from ansible_collections.podnet.fabric.plugins.module_utils import lab as lab_utils
from labutil import LAB_ROOT, REPO, netns_names, nsenter, playbook, recap, write_lab_inventory

PREFIX = 'prl'
LEDGER = os.path.join(LAB_ROOT, PREFIX, 'ledger.json')
HEALTH = 'podnet-health'
RTPROT = '201'

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason='the lab needs root')


def cluster_vars(base, name, routing):
    doc = {
        'podnet_cluster': {'name': 'routing', 'id': 0},
        'podnet_ipam': {'mode': 'cluster-pool',
                        'ledger': {'backend': 'file', 'path': '/run/podnet-lab/{{ podnet_lab_prefix }}/ledger.json'},
                        'cluster_pool': {'ipv4': {'cidrs': ['10.244.0.0/16'], 'mask_size': 24}}},
        'podnet_routing': dict({'mtu': 0, 'masquerade': True}, **routing),
    }
    path = os.path.join(str(base), name + '.yml')
    with open(path, 'w') as f:
        yaml.safe_dump(doc, f)
    return path


TUNNEL = {'mode': 'tunnel', 'tunnel': {'protocol': 'vxlan', 'port': 8472, 'vni': 2}}
NATIVE = {'mode': 'native', 'native': {'ipv4_cidr': '10.244.0.0/16', 'auto_direct_node_routes': True}}
GENEVE = {'mode': 'tunnel', 'tunnel': {'protocol': 'geneve'}}


@pytest.fixture(scope='module')
def lab(tmp_path_factory):
    base = tmp_path_factory.mktemp('routing')
    invs = {}
    for name, routing in (('tunnel', TUNNEL), ('native', NATIVE), ('geneve', GENEVE)):
        for n in (3, 4):
            invs['%s%d' % (name, n)] = write_lab_inventory(str(base / ('%s%d' % (name, n))), PREFIX, nodes=n,
                                                           cluster_vars=cluster_vars(base, name, routing))
    host_links = set(os.listdir('/sys/class/net'))
    rc, out = playbook('lab_up.yml', invs['tunnel3'])
    assert rc == 0, out
    yield {'base': base, 'inv': invs}
    playbook('lab_down.yml', invs['tunnel4'])
    assert set(os.listdir('/sys/class/net')) == host_links


def ip_json(node, *argv):
    return json.loads(nsenter(PREFIX, node, ['ip', '-j'] + list(argv)) or '[]')


def our_routes(node):
    return sorted((r['dst'], r.get('gateway'), r.get('dev')) for r in ip_json(node, 'route', 'show', 'proto', RTPROT)
                  if not r.get('dev', '').startswith('lxc'))


def ledger():
    with open(LEDGER) as f:
        return json.load(f)['nodes']


def health_ip(node):
    out = nsenter(PREFIX, node, ['nsenter', '--net=/run/netns/' + HEALTH, 'ip', '-4', '-o', 'addr', 'show', 'dev', 'eth0'])
    return re.search(r'inet (\S+)/', out).group(1)


def in_pod(node, argv, check=False):
    return nsenter(PREFIX, node, ['nsenter', '--net=/run/netns/' + HEALTH, '--'] + argv, check=check)


def pod_ping(src, dst_ip):
    out = in_pod(src, ['ping', '-c', '2', '-i', '0.2', '-W', '2', dst_ip])
    return ' 0% packet loss' in out


def pod_tcp(src, dst_ip, port=4240):
    code = ('import socket,sys; s=socket.create_connection((sys.argv[1], %d), timeout=3); '
            'print(s.recv(200).decode().strip())' % port)
    return in_pod(src, [os.path.join(REPO, '.venv', 'bin', 'python'), '-c', code, dst_ip]).strip()


def capture(prefix, traffic, flt='udp port 8472 or icmp or tcp port 4240', iface='br0'):
    """Capture on the underlay while traffic() runs: packets as lab_capture returns them."""
    return lab_utils.capture(prefix, [], interface=iface, pcap_filter=flt, before_stop=traffic)['packets']


def all_pairs(nodes):
    ips = dict((n, health_ip(n)) for n in nodes)
    bad = []
    for a in nodes:
        for b in nodes:
            if a == b:
                continue
            if not pod_ping(a, ips[b]):
                bad.append('%s -> %s ping' % (a, b))
            reply = pod_tcp(a, ips[b])
            if reply != 'podnet-health %s' % b:
                bad.append('%s -> %s tcp: %r' % (a, b, reply))
    return ips, bad


def pairs_captured(nodes):
    """all_pairs while capturing on the underlay: (pod IPs, failures, packets)."""
    ips, bad = {}, []

    def traffic():
        found, failed = all_pairs(nodes)
        ips.update(found)
        bad.extend(failed)
    pkts = capture(PREFIX, traffic)
    return ips, bad, pkts


def test_geneve_on_a_kernel_without_geneve_stops_before_anything_changes(lab):
    nodes = ['node1', 'node2', 'node3']
    before = labutil.lab_snapshot(PREFIX, nodes)
    rc, out = playbook('site.yml', lab['inv']['geneve3'])
    assert rc != 0
    assert re.search(r'node\d: podnet_routing.tunnel.protocol: geneve: this kernel \(\S+\) cannot create geneve '
                     r'devices \(no geneve driver\). Nothing was changed on any node', out), out[-3000:]
    assert not os.path.exists(LEDGER)          # not even the ledger was written
    assert labutil.lab_snapshot(PREFIX, nodes) == before


def test_tunnel_mode_builds_the_overlay_and_pods_talk_over_vxlan(lab):
    rc, out = playbook('site.yml', lab['inv']['tunnel3'])
    assert rc == 0, out[-4000:]
    led = ledger()
    for n in ('node1', 'node2', 'node3'):
        dev = ip_json(n, '-d', 'link', 'show', 'podnet_vxlan')[0]
        info = dev['linkinfo']['info_data']
        assert (info['id'], info['port'], info['learning'], info['local']) == (2, 8472, False, led[n]['ip'])
        assert dev['mtu'] == 1450 and dev['address'] == '0e:70:c0:a8:32:%02x' % int(led[n]['ip'].split('.')[-1])
        peers = sorted(p for p in led if p != n)
        want = sorted((led[p]['cidrs']['ipv4'][0], led[p]['cidrs']['ipv4'][0].replace('.0/24', '.1'), 'podnet_vxlan')
                      for p in peers)
        assert our_routes(n) == want
        fdb = nsenter(PREFIX, n, ['bridge', 'fdb', 'show', 'dev', 'podnet_vxlan'])
        for p in peers:
            assert 'dst %s self permanent' % led[p]['ip'] in fdb
    ips, bad, pkts = pairs_captured(['node1', 'node2', 'node3'])
    assert bad == []
    vx = [p for p in pkts if p.get('vni') == 2]
    assert vx, pkts
    assert all(p['dport'] == 8472 for p in vx)
    pod_ips = set(ips.values())
    assert any(p['inner_src'] in pod_ips and p['inner_dst'] in pod_ips and p['inner_proto'] == 'icmp' for p in vx)
    assert any(p['inner_proto'] == 'tcp' and p['inner_dport'] == 4240 for p in vx)
    # no pod address crosses the underlay unencapsulated
    assert not [p for p in pkts if 'vni' not in p and (p['src'] in pod_ips or p['dst'] in pod_ips)]


def test_second_run_changes_nothing(lab):
    rc, out = playbook('site.yml', lab['inv']['tunnel3'])
    assert rc == 0, out[-3000:]
    assert all(r['changed'] == 0 for r in recap(out).values()), recap(out)


def test_masquerade_snats_traffic_leaving_the_cluster_only(lab):
    tables = json.loads(nsenter(PREFIX, 'node1', ['nft', '-j', 'list', 'table', 'ip', 'podnet']))
    rules = [x['rule'] for x in tables['nftables'] if 'rule' in x]
    assert len(rules) == 1 and 'snat' in json.dumps(rules[0])
    ip1 = health_ip('node1')
    pkts = capture(PREFIX, lambda: in_pod('node1', ['ping', '-c', '1', '-W', '2', '192.168.50.1'], check=True), flt='icmp')
    assert [p['src'] for p in pkts if p['dst'] == '192.168.50.1'] == ['192.168.50.11']
    assert ip1 not in [p['src'] for p in pkts]


def test_foreign_route_survives_and_a_stale_route_of_ours_goes(lab):
    nsenter(PREFIX, 'node1', ['ip', 'route', 'add', '10.250.0.0/24', 'via', '192.168.50.1', 'proto', 'static'])
    nsenter(PREFIX, 'node1', ['ip', 'route', 'add', '10.251.0.0/24', 'via', '192.168.50.1', 'proto', RTPROT])
    rc, out = playbook('site.yml', lab['inv']['tunnel3'], check=True)
    assert rc == 0 and '10.251.0.0/24' in out
    assert '10.251.0.0/24' in nsenter(PREFIX, 'node1', ['ip', 'route'])     # check mode changed nothing
    rc, out = playbook('site.yml', lab['inv']['tunnel3'])
    assert rc == 0, out[-3000:]
    routes = nsenter(PREFIX, 'node1', ['ip', 'route'])
    assert '10.250.0.0/24 via 192.168.50.1 dev eth0 proto static' in routes
    assert '10.251.0.0/24' not in routes


def test_a_node_joining_gets_routes_everywhere_and_leaving_removes_them(lab):
    rc, out = playbook('lab_up.yml', lab['inv']['tunnel4'])
    assert rc == 0, out
    rc, out = playbook('site.yml', lab['inv']['tunnel4'])
    assert rc == 0, out[-3000:]
    led = ledger()
    cidr4 = led['node4']['cidrs']['ipv4'][0]
    for n in ('node1', 'node2', 'node3'):
        assert cidr4 in [r[0] for r in our_routes(n)]
    assert all_pairs(['node1', 'node4'])[1] == []
    # node4 leaves: out of the inventory, pruned from the ledger; its routes, FDB and neighbour go
    rc, out = playbook('site.yml', lab['inv']['tunnel3'], extra=['-e', 'ipam_prune=true'])
    assert rc == 0, out[-3000:]
    assert 'node4' not in ledger()
    for n in ('node1', 'node2', 'node3'):
        assert cidr4 not in [r[0] for r in our_routes(n)]
        assert '192.168.50.14' not in nsenter(PREFIX, n, ['bridge', 'fdb', 'show', 'dev', 'podnet_vxlan'])
        assert cidr4.replace('.0/24', '.1') not in nsenter(PREFIX, n, ['ip', 'neigh', 'show', 'dev', 'podnet_vxlan'])
    assert '10.250.0.0/24' in nsenter(PREFIX, 'node1', ['ip', 'route'])
    rc, out = playbook('lab_up.yml', lab['inv']['tunnel3'])
    assert rc == 0, out


def test_switch_to_native_leaves_no_tunnel_state_and_pods_talk_plain_ip(lab):
    rc, out = playbook('site.yml', lab['inv']['native3'])
    assert rc == 0, out[-3000:]
    led = ledger()
    for n in ('node1', 'node2', 'node3'):
        assert 'podnet_vxlan' not in nsenter(PREFIX, n, ['ip', 'link'])
        want = sorted((led[p]['cidrs']['ipv4'][0], led[p]['ip'], 'eth0') for p in led if p != n)
        assert our_routes(n) == want
    ips, bad, pkts = pairs_captured(['node1', 'node2', 'node3'])
    assert bad == []
    pod_ips = set(ips.values())
    assert not [p for p in pkts if 'vni' in p or p['dport'] == 8472]
    assert any(p['src'] in pod_ips and p['dst'] in pod_ips and p['proto'] == 'icmp' for p in pkts)
    assert any(p['src'] in pod_ips and p['dst'] in pod_ips and p['proto'] == 'tcp' for p in pkts)
    assert '10.250.0.0/24 via 192.168.50.1 dev eth0 proto static' in nsenter(PREFIX, 'node1', ['ip', 'route'])
    rc, out = playbook('site.yml', lab['inv']['native3'])
    assert all(r['changed'] == 0 for r in recap(out).values()), recap(out)


def test_native_off_link_node_fails_clearly_unless_skip_unreachable(lab):
    # A node on another network (recorded in the ledger by a run of another slice).
    with open(LEDGER) as f:
        doc = json.load(f)
    doc['nodes']['far1'] = {'ip': '10.9.9.9', 'cidrs': {'ipv4': ['10.244.200.0/24'], 'ipv6': []}, 'pools': {},
                            'allocated_at': doc['serial']}
    with open(LEDGER, 'w') as f:
        json.dump(doc, f)
    before = our_routes('node1')
    rc, out = playbook('site.yml', lab['inv']['native3'])
    assert rc != 0
    assert re.search(r"node1: podnet_routing.native.auto_direct_node_routes: far1's IP 10.9.9.9 is not on-link "
                     r"on eth0 \(192.168.50.0/24\)", out), out[-3000:]
    assert our_routes('node1') == before
    skip = cluster_vars(lab['base'], 'native-skip', {'mode': 'native', 'native': {
        'ipv4_cidr': '10.244.0.0/16', 'auto_direct_node_routes': True, 'skip_unreachable': True}})
    inv = write_lab_inventory(str(lab['base'] / 'skip3'), PREFIX, nodes=3, cluster_vars=skip)
    rc, out = playbook('site.yml', inv)
    assert rc == 0, out[-3000:]
    assert "far1's IP 10.9.9.9 is not on-link" in out and 'skipped (skip_unreachable)' in out
    assert our_routes('node1') == before
    doc['nodes'].pop('far1')
    with open(LEDGER, 'w') as f:
        json.dump(doc, f)


def test_switch_back_to_tunnel_converges(lab):
    rc, out = playbook('site.yml', lab['inv']['tunnel3'])
    assert rc == 0, out[-3000:]
    for n in ('node1', 'node2', 'node3'):
        assert all(r[2] == 'podnet_vxlan' for r in our_routes(n)) and len(our_routes(n)) == 2
    assert all_pairs(['node1', 'node2', 'node3'])[1] == []
    rc, out = playbook('site.yml', lab['inv']['tunnel3'])
    assert all(r['changed'] == 0 for r in recap(out).values()), recap(out)


def test_zz_lab_down_leaves_nothing(lab):
    rc, out = playbook('lab_down.yml', lab['inv']['tunnel4'])
    assert rc == 0, out
    assert not [n for n in netns_names() if n.startswith(PREFIX + '-')]
    assert not os.path.exists(os.path.join(LAB_ROOT, PREFIX))
