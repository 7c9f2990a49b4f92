"""Pod routing on a real lab (prefix `prl`): the VXLAN overlay, native direct routes, reconcile when
nodes join and leave, a foreign route left alone, switching tunnel <-> native, Geneve (refused before
anything changes on a kernel without the driver, converged where the kernel has one), off-link
nodes, masquerade.

Assertions are on kernel state read with nsenter, on packets captured on the underlay bridge and on
pings and TCP connections between the nodes' health endpoints (pods).

Every test stands alone. The module fixture purges what a killed run left of `prl`, brings up a bare
2-node lab and tears it down (checking that nothing is left) whatever happens. Each test starts by
asking `ensure()` for the state it needs (a bare lab, or the lab converged in tunnel or native
mode). `ensure()` remembers what the last converge left, so a file run in order converges no more
often than the tests need; a test that changes the lab marks the state unknown until it has
re-established a known one, so a failed test costs the next one a re-converge, never a wrong start.
"""
import json
import os
import re

import labutil
import pytest
import yaml

from ansible_collections.podnet.fabric.plugins.module_utils import lab as lab_utils
from ansible_collections.podnet.fabric.plugins.module_utils import netlink
from ansible_collections.podnet.fabric.plugins.module_utils import routing as routing_utils
from labutil import LAB_ROOT, REPO, nsenter, playbook, recap, run_ok, write_lab_inventory

PREFIX = 'prl'
LEDGER = os.path.join(LAB_ROOT, PREFIX, 'ledger.json')
HEALTH = 'podnet-health'
RTPROT = '201'
NODES = ['node1', 'node2']
FOREIGN = '10.250.0.0/24 via 192.168.50.1 dev eth0 proto static'

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
        for n in (2, 3):
            invs['%s%d' % (name, n)] = write_lab_inventory(str(base / ('%s%d' % (name, n))), PREFIX, nodes=n,
                                                           cluster_vars=cluster_vars(base, name, routing))
    # A killed earlier run may have left the lab (and with it the ledger, which lives in the lab dir).
    labutil.purge(PREFIX)
    host_links = set(os.listdir('/sys/class/net'))
    try:
        run_ok('lab_up.yml', invs['tunnel2'])
        yield {'base': base, 'inv': invs, 'mode': 'bare'}
    finally:
        # tunnel3: also node3, should a test have died with it up.
        run_ok('lab_down.yml', invs['tunnel3'])
        labutil.assert_lab_gone(PREFIX)
        assert set(os.listdir('/sys/class/net')) == host_links


def ensure(lab, want):
    """Bring the lab to `want` ('bare', 'tunnel2', 'native2') unless the last converge left it there."""
    if lab['mode'] == want:
        return
    unknown = lab['mode'] is None
    lab['mode'] = None
    if want == 'bare':
        # A fresh lab: no ledger, no lease, nothing of ours on any node.
        labutil.purge(PREFIX)
        run_ok('lab_up.yml', lab['inv']['tunnel2'])
    else:
        if unknown:
            # After a failed test: back to 2 nodes, and node3 (if it joined) out of the ledger.
            run_ok('lab_up.yml', lab['inv']['tunnel2'])
        run_ok('site.yml', lab['inv'][want], extra=['-e', 'ipam_prune=true'] if unknown else [])
    lab['mode'] = want


def changing(lab):
    """The test is about to change the lab: its state is unknown until the test says otherwise."""
    lab['mode'] = None


def ip_json(node, *argv):
    return json.loads(nsenter(PREFIX, node, ['ip', '-j'] + list(argv)) or '[]')


def our_routes(node):
    return sorted((r['dst'], r.get('gateway'), r.get('dev')) for r in ip_json(node, 'route', 'show', 'proto', RTPROT)
                  if not r.get('dev', '').startswith('lxc'))


def ledger():
    with open(LEDGER) as f:
        return json.load(f)['nodes']


def ledger_bytes():
    """The ledger file's content, or None while there is none."""
    try:
        with open(LEDGER, 'rb') as f:
            return f.read()
    except FileNotFoundError:
        return None


def add_foreign_route():
    """A route on node1 that is not ours (proto static): every converge must leave it alone."""
    nsenter(PREFIX, 'node1', ['ip', 'route', 'replace'] + FOREIGN.split())


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


def capture(prefix, traffic, flt='udp port 8472 or icmp or tcp port 4240', iface='br0', port=8472):
    """Capture on the underlay while traffic() runs: packets as lab_capture returns them.

    lab_capture decodes the UDP the filter selects as VXLAN (tcpdump -T vxlan). A Geneve header
    without options (the kernel's geneve device adds none) has the VNI at the same offset and is
    followed by the inner Ethernet frame too, so port=6081 reads Geneve packets the same way.
    """
    return lab_utils.capture(prefix, [], interface=iface, pcap_filter=flt, vxlan_port=port,
                             before_stop=traffic)['packets']


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


def pairs_captured(nodes, **kw):
    """all_pairs while capturing on the underlay: (pod IPs, failures, packets)."""
    ips, bad = {}, []

    def traffic():
        found, failed = all_pairs(nodes)
        ips.update(found)
        bad.extend(failed)
    pkts = capture(PREFIX, traffic, **kw)
    return ips, bad, pkts


def assert_second_run_changes_nothing(inv):
    out = run_ok('site.yml', inv)
    assert all(r['changed'] == 0 for r in recap(out).values()), recap(out)


def test_geneve_is_refused_before_anything_changes_unless_the_kernel_has_the_driver(lab):
    # Both from a bare lab: with no ledger yet, "the refused run wrote no ledger" is exact.
    ensure(lab, 'bare')
    if netlink.link_kind_supported('geneve'):
        geneve_converges_and_pods_talk(lab)
        return
    before = labutil.lab_snapshot(PREFIX, NODES)
    rc, out = playbook('site.yml', lab['inv']['geneve2'])
    assert rc != 0, out[-3000:]
    assert re.search(r'node\d: podnet_routing.tunnel.protocol: geneve: this kernel \(\S+\) cannot create geneve '
                     r'devices \(no geneve driver\). Nothing was changed on any node', out), out[-3000:]
    assert ledger_bytes() is None               # not even the ledger was written
    assert labutil.lab_snapshot(PREFIX, NODES) == before


def geneve_converges_and_pods_talk(lab):
    """Where the kernel has a geneve driver: one Geneve device per peer, pods talk over UDP 6081."""
    changing(lab)
    run_ok('site.yml', lab['inv']['geneve2'])
    led = ledger()
    for n in NODES:
        peers = sorted(p for p in led if p != n)
        devs = dict((d['ifname'], d) for d in ip_json(n, '-d', 'link', 'show', 'type', 'geneve'))
        assert sorted(devs) == sorted(routing_utils.geneve_device(led[p]['ip']) for p in peers), devs
        for p in peers:
            dev = devs[routing_utils.geneve_device(led[p]['ip'])]
            info = dev['linkinfo']['info_data']
            assert (info['id'], info['remote'], info['port']) == (2, led[p]['ip'], 6081), info
            assert dev['mtu'] == 1450 and dev['address'] == '0e:70:c0:a8:32:%02x' % int(led[n]['ip'].split('.')[-1])
        assert 'podnet_vxlan' not in nsenter(PREFIX, n, ['ip', 'link'])
        want = sorted((led[p]['cidrs']['ipv4'][0], led[p]['cidrs']['ipv4'][0].replace('.0/24', '.1'),
                       routing_utils.geneve_device(led[p]['ip'])) for p in peers)
        assert our_routes(n) == want
    ips, bad, pkts = pairs_captured(NODES, flt='udp port 6081 or icmp or tcp port 4240', port=6081)
    assert bad == []
    gen = [p for p in pkts if p.get('vni') == 2]
    assert gen, pkts
    assert all(p['dport'] == 6081 for p in gen)
    pod_ips = set(ips.values())
    assert any(p['inner_src'] in pod_ips and p['inner_dst'] in pod_ips and p['inner_proto'] == 'icmp' for p in gen)
    assert any(p['inner_proto'] == 'tcp' and p['inner_dport'] == 4240 for p in gen)
    # no pod address crosses the underlay unencapsulated, and nothing goes over VXLAN
    assert not [p for p in pkts if 'vni' not in p and (p['src'] in pod_ips or p['dst'] in pod_ips)]
    assert not [p for p in pkts if p['dport'] == 8472]
    assert_second_run_changes_nothing(lab['inv']['geneve2'])
    lab['mode'] = 'geneve2'


def test_tunnel_mode_builds_the_overlay_and_pods_talk_over_vxlan(lab):
    ensure(lab, 'tunnel2')
    led = ledger()
    for n in NODES:
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
    ips, bad, pkts = pairs_captured(NODES)
    assert bad == []
    vx = [p for p in pkts if p.get('vni') == 2]
    assert vx, pkts
    assert all(p['dport'] == 8472 for p in vx)
    pod_ips = set(ips.values())
    assert any(p['inner_src'] in pod_ips and p['inner_dst'] in pod_ips and p['inner_proto'] == 'icmp' for p in vx)
    assert any(p['inner_proto'] == 'tcp' and p['inner_dport'] == 4240 for p in vx)
    # no pod address crosses the underlay unencapsulated
    assert not [p for p in pkts if 'vni' not in p and (p['src'] in pod_ips or p['dst'] in pod_ips)]


def test_masquerade_snats_traffic_leaving_the_cluster_only(lab):
    ensure(lab, 'tunnel2')
    tables = json.loads(nsenter(PREFIX, 'node1', ['nft', '-j', 'list', 'table', 'ip', 'podnet']))
    rules = [x['rule'] for x in tables['nftables'] if 'rule' in x]
    assert len(rules) == 1 and 'snat' in json.dumps(rules[0])
    ip1 = health_ip('node1')
    pkts = capture(PREFIX, lambda: in_pod('node1', ['ping', '-c', '1', '-W', '2', '192.168.50.1'], check=True), flt='icmp')
    assert [p['src'] for p in pkts if p['dst'] == '192.168.50.1'] == ['192.168.50.11']
    assert ip1 not in [p['src'] for p in pkts]


def test_foreign_route_survives_and_a_stale_route_of_ours_goes(lab):
    ensure(lab, 'tunnel2')
    changing(lab)
    add_foreign_route()
    nsenter(PREFIX, 'node1', ['ip', 'route', 'add', '10.251.0.0/24', 'via', '192.168.50.1', 'proto', RTPROT])
    out = run_ok('site.yml', lab['inv']['tunnel2'], check=True)
    assert '10.251.0.0/24' in out
    assert '10.251.0.0/24' in nsenter(PREFIX, 'node1', ['ip', 'route'])     # check mode changed nothing
    run_ok('site.yml', lab['inv']['tunnel2'])
    routes = nsenter(PREFIX, 'node1', ['ip', 'route'])
    assert FOREIGN in routes
    assert '10.251.0.0/24' not in routes
    lab['mode'] = 'tunnel2'


def test_a_node_joining_gets_routes_everywhere_and_leaving_removes_them(lab):
    ensure(lab, 'tunnel2')
    changing(lab)
    add_foreign_route()
    try:
        run_ok('lab_up.yml', lab['inv']['tunnel3'])
        run_ok('site.yml', lab['inv']['tunnel3'])
        led = ledger()
        cidr4 = led['node3']['cidrs']['ipv4'][0]
        for n in NODES:
            assert cidr4 in [r[0] for r in our_routes(n)]
        assert all_pairs(['node1', 'node3'])[1] == []
        # node3 leaves: out of the inventory, pruned from the ledger; its routes, FDB and neighbour go
        run_ok('site.yml', lab['inv']['tunnel2'], extra=['-e', 'ipam_prune=true'])
        assert 'node3' not in ledger()
        for n in NODES:
            assert cidr4 not in [r[0] for r in our_routes(n)]
            assert '192.168.50.13' not in nsenter(PREFIX, n, ['bridge', 'fdb', 'show', 'dev', 'podnet_vxlan'])
            assert cidr4.replace('.0/24', '.1') not in nsenter(PREFIX, n, ['ip', 'neigh', 'show', 'dev', 'podnet_vxlan'])
        assert FOREIGN in nsenter(PREFIX, 'node1', ['ip', 'route'])
        lab['mode'] = 'tunnel2'
    finally:
        run_ok('lab_up.yml', lab['inv']['tunnel2'])     # node3's namespaces go


def test_switch_to_native_leaves_no_tunnel_state_and_pods_talk_plain_ip(lab):
    ensure(lab, 'tunnel2')
    changing(lab)
    add_foreign_route()
    run_ok('site.yml', lab['inv']['native2'])
    led = ledger()
    for n in NODES:
        assert 'podnet_vxlan' not in nsenter(PREFIX, n, ['ip', 'link'])
        want = sorted((led[p]['cidrs']['ipv4'][0], led[p]['ip'], 'eth0') for p in led if p != n)
        assert our_routes(n) == want
    ips, bad, pkts = pairs_captured(NODES)
    assert bad == []
    pod_ips = set(ips.values())
    assert not [p for p in pkts if 'vni' in p or p['dport'] == 8472]
    assert any(p['src'] in pod_ips and p['dst'] in pod_ips and p['proto'] == 'icmp' for p in pkts)
    assert any(p['src'] in pod_ips and p['dst'] in pod_ips and p['proto'] == 'tcp' for p in pkts)
    assert FOREIGN in nsenter(PREFIX, 'node1', ['ip', 'route'])
    assert_second_run_changes_nothing(lab['inv']['native2'])
    lab['mode'] = 'native2'


def test_native_off_link_node_fails_clearly_unless_skip_unreachable(lab):
    ensure(lab, 'native2')
    changing(lab)
    # A node on another network (recorded in the ledger by a run of another slice).
    with open(LEDGER) as f:
        doc = json.load(f)
    doc['nodes']['far1'] = {'ip': '10.9.9.9', 'cidrs': {'ipv4': ['10.244.200.0/24'], 'ipv6': []}, 'pools': {},
                            'allocated_at': doc['serial']}
    with open(LEDGER, 'w') as f:
        json.dump(doc, f)
    try:
        before = our_routes('node1')
        rc, out = playbook('site.yml', lab['inv']['native2'])
        assert rc != 0, out[-3000:]
        assert re.search(r"node1: podnet_routing.native.auto_direct_node_routes: far1's IP 10.9.9.9 is not on-link "
                         r"on eth0 \(192.168.50.0/24\)", out), out[-3000:]
        assert our_routes('node1') == before
        skip = cluster_vars(lab['base'], 'native-skip', {'mode': 'native', 'native': {
            'ipv4_cidr': '10.244.0.0/16', 'auto_direct_node_routes': True, 'skip_unreachable': True}})
        inv = write_lab_inventory(str(lab['base'] / 'skip2'), PREFIX, nodes=2, cluster_vars=skip)
        out = run_ok('site.yml', inv)
        assert "far1's IP 10.9.9.9 is not on-link" in out and 'skipped (skip_unreachable)' in out
        assert our_routes('node1') == before
    finally:
        # far1 leaves the ledger again, whatever the runs above wrote to it meanwhile.
        with open(LEDGER) as f:
            doc = json.load(f)
        doc['nodes'].pop('far1', None)
        with open(LEDGER, 'w') as f:
            json.dump(doc, f)
    # The skip run converged the nodes as native3 would (far1 skipped, the same routes as before).
    lab['mode'] = 'native2'


def test_switch_back_to_tunnel_converges(lab):
    ensure(lab, 'native2')
    changing(lab)
    run_ok('site.yml', lab['inv']['tunnel2'])
    for n in NODES:
        assert all(r[2] == 'podnet_vxlan' for r in our_routes(n)) and len(our_routes(n)) == 1
    assert all_pairs(NODES)[1] == []
    assert_second_run_changes_nothing(lab['inv']['tunnel2'])
    lab['mode'] = 'tunnel2'
