"""Unit tests for plugins/module_utils/routing.py (pure desired state and plan)."""
import pytest

from ansible_collections.podnet.fabric.plugins.module_utils import routing
from ansible_collections.podnet.fabric.plugins.module_utils.ipam import lease as ipam_lease

UNDERLAY = {'dev': 'eth0', 'mtu': 1500, 'networks': ['192.168.50.0/24']}


def node_map(n=3, v6=False):
    out = {}
    for i in range(1, n + 1):
        out['node%d' % i] = {'node_ip': '192.168.50.%d' % (10 + i),
                             'pod_cidrs': {'ipv4': ['10.244.%d.0/24' % i],
                                           'ipv6': ['fd00::%x00/120' % i] if v6 else []}}
    return out


def params(mode='tunnel', node='node1', clus=None, **kw):
    p = {'mode': mode, 'node': node, 'node_ip': (clus or node_map())[node]['node_ip'] if node in (clus or node_map()) else '192.168.50.11',
         'nodes': clus if clus is not None else node_map(), 'tunnel': {'protocol': 'vxlan', 'port': 8472, 'vni': 2},
         'native': {'auto_direct_node_routes': True, 'skip_unreachable': False}, 'mtu': 0, 'state': 'present'}
    p.update(kw)
    return p


def realize(desired):
    """What the kernel holds after a perfect apply (read() shape)."""
    return routing.project(desired, {}, [{'action': 'x'}])


def test_node_mac_is_locally_administered_unicast_and_stable():
    mac = routing.node_mac('192.168.50.12')
    assert mac == '0e:70:c0:a8:32:0c'
    first = int(mac.split(':', maxsplit=1)[0], 16)
    assert first & 2 and not first & 1


def test_vxlan_desired_state_routes_every_other_node():
    d, warnings = routing.desired_state(params(), UNDERLAY, 'node1')
    assert warnings == []
    dev = d['devices'][routing.VXLAN_DEVICE]
    assert dev['kind'] == 'vxlan' and dev['id'] == 2 and dev['port'] == 8472
    assert dev['mtu'] == 1450 and dev['local'] == '192.168.50.11' and dev['link'] == 'eth0'
    assert dev['learning'] is False and dev['mac'] == routing.node_mac('192.168.50.11')
    assert d['routes'] == [
        {'dst': '10.244.2.0/24', 'gateway': '10.244.2.1', 'dev': 'podnet_vxlan', 'onlink': True},
        {'dst': '10.244.3.0/24', 'gateway': '10.244.3.1', 'dev': 'podnet_vxlan', 'onlink': True}]
    assert {'dev': 'podnet_vxlan', 'mac': routing.node_mac('192.168.50.13'), 'dst': '192.168.50.13'} in d['fdb']
    assert {'dev': 'podnet_vxlan', 'dst': '10.244.2.1', 'mac': routing.node_mac('192.168.50.12')} in d['neighbours']
    assert len(d['fdb']) == 2 and len(d['neighbours']) == 2


def test_vni_port_and_mtu_are_configurable():
    d = routing.desired_state(params(tunnel={'protocol': 'vxlan', 'port': 4789, 'vni': 77}, mtu=1400),
                              UNDERLAY, 'node1')[0]
    dev = d['devices']['podnet_vxlan']
    assert (dev['port'], dev['id'], dev['mtu']) == (4789, 77, 1400)


def test_ipv6_cidrs_cross_the_tunnel():
    d = routing.desired_state(params(clus=node_map(2, v6=True)), UNDERLAY, 'node1')[0]
    assert {'dst': 'fd00::200/120', 'gateway': 'fd00::201', 'dev': 'podnet_vxlan', 'onlink': True} in d['routes']
    assert {'dev': 'podnet_vxlan', 'dst': 'fd00::201', 'mac': routing.node_mac('192.168.50.12')} in d['neighbours']


def test_geneve_is_one_device_per_peer():
    d = routing.desired_state(params(tunnel={'protocol': 'geneve', 'port': None, 'vni': 5}), UNDERLAY, 'node1')[0]
    assert sorted(d['devices']) == ['podnet_ga8320c', 'podnet_ga8320d']
    dev = d['devices']['podnet_ga8320c']
    assert dev['kind'] == 'geneve' and dev['port'] == 6081 and dev['remote'] == '192.168.50.12'
    assert d['fdb'] == []
    assert {'dst': '10.244.2.0/24', 'gateway': '10.244.2.1', 'dev': 'podnet_ga8320c', 'onlink': True} in d['routes']


def test_geneve_name_clash_is_an_error():
    clus = node_map(1)
    clus['node2'] = {'node_ip': '10.168.50.12', 'pod_cidrs': {'ipv4': ['10.244.2.0/24'], 'ipv6': []}}
    clus['node3'] = {'node_ip': '11.168.50.12', 'pod_cidrs': {'ipv4': ['10.244.3.0/24'], 'ipv6': []}}
    with pytest.raises(routing.RoutingError, match='podnet_ga8320c is shared by node2 and node3'):
        routing.desired_state(params(clus=clus, tunnel={'protocol': 'geneve', 'port': None, 'vni': 5}),
                              UNDERLAY, 'node1')


def test_native_direct_routes():
    d = routing.desired_state(params('native'), UNDERLAY, 'node1')[0]
    assert d['devices'] == {} and d['fdb'] == [] and d['neighbours'] == []
    assert d['routes'] == [
        {'dst': '10.244.2.0/24', 'gateway': '192.168.50.12', 'dev': 'eth0', 'onlink': False},
        {'dst': '10.244.3.0/24', 'gateway': '192.168.50.13', 'dev': 'eth0', 'onlink': False}]


def test_native_without_direct_routes_keeps_no_routes():
    d = routing.desired_state(params('native', native={'auto_direct_node_routes': False}), UNDERLAY, 'node1')[0]
    assert d['routes'] == [] and d['devices'] == {}


def test_native_off_link_node_is_an_error_naming_it():
    clus = node_map(2)
    clus['node3'] = {'node_ip': '10.9.9.9', 'pod_cidrs': {'ipv4': ['10.244.3.0/24'], 'ipv6': []}}
    with pytest.raises(routing.RoutingError) as e:
        routing.desired_state(params('native', clus=clus), UNDERLAY, 'node1')
    msg = str(e.value)
    assert msg.startswith('node1: podnet_routing.native.auto_direct_node_routes: node3')
    assert '10.9.9.9 is not on-link on eth0 (192.168.50.0/24)' in msg and 'skip_unreachable' in msg


def test_native_skip_unreachable_warns_and_skips():
    clus = node_map(2)
    clus['node3'] = {'node_ip': '10.9.9.9', 'pod_cidrs': {'ipv4': ['10.244.3.0/24'], 'ipv6': []}}
    d, warnings = routing.desired_state(
        params('native', clus=clus, native={'auto_direct_node_routes': True, 'skip_unreachable': True}),
        UNDERLAY, 'node1')
    assert [r['dst'] for r in d['routes']] == ['10.244.2.0/24']
    assert len(warnings) == 1 and 'node3' in warnings[0] and 'skipped' in warnings[0]


def test_missing_underlay_is_an_error():
    with pytest.raises(routing.RoutingError, match='node1: podnet_node_ip: 192.168.50.11 is not on any device'):
        routing.desired_state(params(), None, 'node1')
    with pytest.raises(routing.RoutingError, match='node1: podnet_node_device: bond7 is not a device of this node'):
        routing.desired_state(dict(params(), node_device='bond7'), None, 'node1')


def test_absent_wants_nothing():
    d = routing.desired_state(params(state='absent'), None, 'node1')[0]
    assert d == {'mode': 'none', 'devices': {}, 'routes': [], 'neighbours': [], 'fdb': []}


def test_plan_from_empty_creates_device_then_entries():
    d = routing.desired_state(params(), UNDERLAY, 'node1')[0]
    acts = routing.plan(d, {'devices': {}, 'routes': [], 'neighbours': [], 'fdb': []})
    kinds = [a['action'] for a in acts]
    assert kinds[0] == 'create_device'
    assert kinds.count('fdb_add') == 2 and kinds.count('neigh_add') == 2 and kinds.count('route_add') == 2


def test_plan_is_empty_when_realized_matches():
    d = routing.desired_state(params(), UNDERLAY, 'node1')[0]
    assert routing.plan(d, realize(d)) == []


def test_node_removed_drops_its_route_fdb_and_neighbour_only():
    before = routing.desired_state(params(), UNDERLAY, 'node1')[0]
    clus = node_map()
    del clus['node3']
    after = routing.desired_state(params(clus=clus), UNDERLAY, 'node1')[0]
    acts = routing.plan(after, realize(before))
    assert sorted(a['action'] for a in acts) == ['fdb_del', 'neigh_del', 'route_del']
    assert all(a['dev'] == 'podnet_vxlan' for a in acts)
    assert {a.get('dst') for a in acts} == {'192.168.50.13', '10.244.3.1', '10.244.3.0/24'}


def test_node_added_adds_only_its_objects():
    before = routing.desired_state(params(clus=node_map(2)), UNDERLAY, 'node1')[0]
    after = routing.desired_state(params(clus=node_map(3)), UNDERLAY, 'node1')[0]
    acts = routing.plan(after, realize(before))
    assert sorted(a['action'] for a in acts) == ['fdb_add', 'neigh_add', 'route_add']


def test_vni_change_recreates_device_and_readds_entries():
    before = routing.desired_state(params(), UNDERLAY, 'node1')[0]
    after = routing.desired_state(params(tunnel={'protocol': 'vxlan', 'port': 8472, 'vni': 9}), UNDERLAY, 'node1')[0]
    acts = routing.plan(after, realize(before))
    assert [a['action'] for a in acts[:2]] == ['delete_device', 'create_device']
    assert sum(a['action'] == 'route_add' for a in acts) == 2
    assert not any(a['action'].endswith('_del') for a in acts)   # they went with the device


def test_mtu_change_is_set_in_place():
    before = routing.desired_state(params(), UNDERLAY, 'node1')[0]
    after = routing.desired_state(params(mtu=1400), UNDERLAY, 'node1')[0]
    assert routing.plan(after, realize(before)) == [{'action': 'set_device', 'name': 'podnet_vxlan', 'mtu': 1400}]


def test_switch_tunnel_to_native_removes_the_device_and_adds_direct_routes():
    tunnel = routing.desired_state(params(), UNDERLAY, 'node1')[0]
    native = routing.desired_state(params('native'), UNDERLAY, 'node1')[0]
    acts = routing.plan(native, realize(tunnel))
    assert acts[0] == {'action': 'delete_device', 'name': 'podnet_vxlan'}
    # entries and routes on the deleted device go with it: no separate deletes
    assert [a['action'] for a in acts[1:]] == ['route_add', 'route_add']
    back = routing.plan(tunnel, realize(native))
    assert sorted(a['action'] for a in back).count('route_del') == 2
    assert back[0]['action'] == 'create_device'


def test_stale_objects_of_ours_are_removed():
    d = routing.desired_state(params(clus=node_map(2)), UNDERLAY, 'node1')[0]
    real = realize(d)
    real['routes'].append({'dst': '10.99.0.0/24', 'gateway': '10.99.0.1', 'dev': 'podnet_vxlan', 'onlink': True})
    real['devices']['podnet_ga8320e'] = dict(real['devices']['podnet_vxlan'], kind='geneve')
    acts = routing.plan(d, real)
    assert {'action': 'delete_device', 'name': 'podnet_ga8320e'} in acts
    assert any(a['action'] == 'route_del' and a['dst'] == '10.99.0.0/24' for a in acts)


def test_ownership_filters():
    assert routing.owned_route({'dst': '10.244.1.5/32', 'dev': 'lxc_health'}) is False
    assert routing.owned_route({'dst': '10.244.2.0/24', 'dev': 'eth0'}) is True
    assert routing.owned_device('podnet_vxlan') and routing.owned_device('podnet_ga8320c')
    assert not routing.owned_device('podnet_host') and not routing.owned_device('vxlan0')


def test_peers_from_the_ledger_node_map():
    doc = {'nodes': {'node2': {'ip': '192.168.50.12', 'cidrs': {'ipv4': ['10.244.2.0/24'], 'ipv6': []}},
                     'node1': {'ip': '192.168.50.11', 'cidrs': {'ipv4': ['10.244.1.0/24'], 'ipv6': []}},
                     'node10': {'ip': '192.168.50.20', 'cidrs': {'ipv4': [], 'ipv6': []},
                                'pools': {'default': {'ipv4': ['10.1.0.0/27', '10.1.0.32/27']}}}}}
    clus = ipam_lease.node_map(doc)
    assert list(clus) == ['node1', 'node2', 'node10']
    assert clus['node10']['pod_cidrs']['ipv4'] == ['10.1.0.0/27', '10.1.0.32/27']
    names = [p['name'] for p in routing.peers(clus, 'node1')]
    assert names == ['node10', 'node2']
    d = routing.desired_state(params(clus=clus, node='node1', node_ip='192.168.50.11'), UNDERLAY, 'node1')[0]
    # every block of a multi-pool node goes to it, through one gateway
    assert {'dst': '10.1.0.32/27', 'gateway': '10.1.0.1', 'dev': 'podnet_vxlan', 'onlink': True} in d['routes']


def test_summary_lines():
    d = routing.desired_state(params(clus=node_map(2)), UNDERLAY, 'node1')[0]
    lines = routing.summary(routing.plan(d, {'devices': {}, 'routes': [], 'neighbours': [], 'fdb': []}))
    assert lines[0] == 'create podnet_vxlan'
    assert 'route_add 10.244.2.0/24 via 10.244.2.1 dev podnet_vxlan' in lines
