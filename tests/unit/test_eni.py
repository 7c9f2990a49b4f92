"""Unit tests for plugins/module_utils/eni.py (pure desired state, plan, metadata parsing)."""
import pytest

from ansible_collections.podnet.fabric.plugins.module_utils import eni

ENI1 = {'id': 'eni-0000000000000aaa1', 'mac': '02:AA:00:00:00:01', 'device_index': 1, 'subnet_id': 'subnet-1',
        'subnet_cidr': '10.100.1.0/24', 'primary_ip': '10.100.1.10', 'ips': ['10.100.1.20', '10.100.1.21'],
        'prefixes': []}
ENI2 = {'id': 'eni-0000000000000aaa2', 'mac': '02:aa:00:00:00:02', 'device_index': 2, 'subnet_id': 'subnet-2',
        'subnet_cidr': '10.100.2.0/24', 'primary_ip': '10.100.2.10', 'ips': ['10.100.2.30'],
        'prefixes': ['10.100.2.48/28']}
IFACES = {'02:aa:00:00:00:01': {'device_number': 1, 'subnet_cidr': '10.100.1.0/24', 'link': 'eth1'},
          '02:aa:00:00:00:02': {'device_number': 2, 'subnet_cidr': '10.100.2.0/24', 'link': 'eth2'}}


def desired(pod_ips, enis=(ENI1, ENI2), ifaces=None, mtu=9001, state='present'):
    return eni.desired_state(eni.normalize_enis(list(enis), 'node1'), IFACES if ifaces is None else ifaces,
                             pod_ips, mtu, 'node1', state)


def realize(d):
    """What the kernel holds after a perfect apply (read() shape)."""
    return eni.project(d, {}, [{'action': 'x'}])


def rule(prio, ip, table, to=False):
    return {'priority': prio, 'dst': ip + '/32' if to else None, 'src': None if to else ip + '/32', 'table': table}


def test_tables_routes_and_rules_per_eni_and_pod_ip():
    d = desired(['10.100.1.20', '10.100.2.50'])
    assert d['links'] == {'eth1': {'mac': '02:aa:00:00:00:01', 'mtu': 9001, 'up': True},
                          'eth2': {'mac': '02:aa:00:00:00:02', 'mtu': 9001, 'up': True}}
    assert {'table': 11, 'dst': '10.100.1.1/32', 'gateway': None, 'dev': 'eth1', 'scope': 'link'} in d['routes']
    assert {'table': 11, 'dst': 'default', 'gateway': '10.100.1.1', 'dev': 'eth1', 'scope': 'universe'} in d['routes']
    assert {'table': 12, 'dst': 'default', 'gateway': '10.100.2.1', 'dev': 'eth2', 'scope': 'universe'} in d['routes']
    assert len(d['routes']) == 4
    # 10.100.2.50 is in ENI2's delegated prefix: its egress leaves through eth2 (table 12).
    assert sorted(d['rules'], key=lambda r: (r['priority'], str(r['src']), str(r['dst']))) == [
        rule(20, '10.100.1.20', 254, to=True), rule(20, '10.100.2.50', 254, to=True),
        rule(111, '10.100.1.20', 11), rule(111, '10.100.2.50', 12)]
    assert d['pending'] == []


def test_device_number_and_subnet_come_from_the_metadata():
    ifaces = {'02:aa:00:00:00:01': {'device_number': 3, 'subnet_cidr': '10.100.1.0/25', 'link': 'ens7'}}
    d = desired(['10.100.1.21'], enis=[ENI1], ifaces=ifaces)
    assert rule(111, '10.100.1.21', 13) in d['rules']
    assert {'table': 13, 'dst': 'default', 'gateway': '10.100.1.1', 'dev': 'ens7', 'scope': 'universe'} in d['routes']


def test_without_metadata_the_eni_fields_are_used():
    d = desired(['10.100.1.20'], enis=[ENI1], ifaces={'02:aa:00:00:00:01': {'link': 'eth1'}})
    assert rule(111, '10.100.1.20', 11) in d['rules']


def test_a_pod_ip_of_no_eni_is_an_error_naming_node_and_ip():
    with pytest.raises(eni.EniError) as e:
        desired(['10.100.1.20', '10.100.9.9'])
    msg = str(e.value)
    assert msg.startswith('node1: pod_ips: 10.100.9.9 is not a secondary IP')
    assert 'eni-0000000000000aaa1' in msg


def test_the_primary_ip_is_not_a_pod_ip():
    with pytest.raises(eni.EniError):
        desired(['10.100.1.10'])


def test_bad_macs_and_duplicate_device_numbers_are_errors():
    with pytest.raises(eni.EniError, match=r'enis\[0\] \(eni-0000000000000aaa1\)\.mac'):
        eni.normalize_enis([dict(ENI1, mac='zz')], 'node1')
    with pytest.raises(eni.EniError, match='device number 1'):
        desired([], ifaces={'02:aa:00:00:00:01': {'device_number': 1, 'link': 'eth1'},
                            '02:aa:00:00:00:02': {'device_number': 1, 'link': 'eth2'}})


def test_first_run_plans_every_object_and_second_run_nothing():
    d = desired(['10.100.1.20'])
    have = {'links': {'eth1': {'mac': '02:aa:00:00:00:01', 'mtu': 1500, 'up': False},
                      'eth2': {'mac': '02:aa:00:00:00:02', 'mtu': 9001, 'up': True}}, 'routes': [], 'rules': []}
    actions = eni.plan(d, have)
    kinds = [a['action'] for a in actions]
    assert kinds.count('route_add') == 4 and kinds.count('rule_add') == 2
    assert {'action': 'set_link', 'name': 'eth1', 'mac': '02:aa:00:00:00:01', 'mtu': 9001, 'up': True} in actions
    assert eni.plan(d, realize(d)) == []


def test_a_released_ip_loses_its_rules_and_only_its_rules():
    before = desired(['10.100.1.20', '10.100.1.21'])
    after = desired(['10.100.1.21'])
    actions = eni.plan(after, realize(before))
    assert sorted((a['action'], a['priority']) for a in actions) == [('rule_del', 20), ('rule_del', 111)]
    assert all('10.100.1.20/32' in (a['src'], a['dst']) for a in actions)


def test_a_reused_ip_on_another_eni_keeps_the_new_rules():
    # 10.100.2.50 was ENI2's (table 12); released, it is now a secondary IP of ENI1 (table 11).
    moved = dict(ENI1, ips=ENI1['ips'] + ['10.100.2.50'])
    old = desired(['10.100.2.50'])
    new = desired(['10.100.2.50'], enis=(moved, dict(ENI2, prefixes=[])))
    actions = eni.plan(new, realize(old))
    assert actions == [dict(rule(111, '10.100.2.50', 12), action='rule_del'),
                       dict(rule(111, '10.100.2.50', 11), action='rule_add')]
    # the 'to' rule is the same for the new endpoint: neither deleted nor re-added
    assert not any(a.get('dst') == '10.100.2.50/32' for a in actions)


def test_a_detached_eni_loses_its_table():
    before = desired(['10.100.1.20'])
    after = desired(['10.100.1.20'], enis=[ENI1], ifaces={k: v for k, v in IFACES.items() if v['link'] == 'eth1'})
    actions = eni.plan(after, realize(before))
    assert sorted(a['action'] for a in actions) == ['route_del', 'route_del']
    assert all(a['table'] == 12 for a in actions)


def test_absent_removes_ours():
    d = desired(['10.100.1.20'])
    gone = eni.desired_state([], {}, [], 9001, 'node1', 'absent')
    actions = eni.plan(gone, realize(d))
    assert sorted(a['action'] for a in actions) == ['route_del'] * 4 + ['rule_del'] * 2


def test_a_missing_interface_is_planned_as_awaited():
    ifaces = dict(IFACES)
    ifaces['02:aa:00:00:00:02'] = {'device_number': 2, 'subnet_cidr': '10.100.2.0/24', 'link': None}
    d = desired(['10.100.2.30'], ifaces=ifaces)
    assert d['pending'] == [{'id': 'eni-0000000000000aaa2', 'mac': '02:aa:00:00:00:02'}]
    actions = eni.plan(d, {'links': {'eth1': {'mac': '02:aa:00:00:00:01', 'mtu': 9001, 'up': True}}})
    assert actions[0] == {'action': 'await_link', 'id': 'eni-0000000000000aaa2', 'mac': '02:aa:00:00:00:02'}
    assert 'await the interface of eni-0000000000000aaa2 (02:aa:00:00:00:02)' in eni.summary(actions)


def test_ownership_ranges():
    assert eni.owned_rule_priority(20) and eni.owned_rule_priority(111)
    assert not eni.owned_rule_priority(100) and not eni.owned_rule_priority(32766)
    assert eni.owned_table(10) and eni.owned_table(210)
    assert not eni.owned_table(254) and not eni.owned_table(9) and not eni.owned_table(253)


def test_summary_reads_like_ip():
    d = desired(['10.100.1.20'], enis=[ENI1], ifaces={k: v for k, v in IFACES.items() if v['link'] == 'eth1'})
    lines = eni.summary(eni.plan(d, {'links': {}, 'routes': [], 'rules': []}))
    assert 'route_add 10.100.1.1/32 dev eth1 scope link table 11' in lines
    assert 'route_add default via 10.100.1.1 dev eth1 table 11' in lines
    assert 'rule_add priority 20 to 10.100.1.20/32 lookup main' in lines
    assert 'rule_add priority 111 from 10.100.1.20/32 lookup 11' in lines


def test_metadata_parsing():
    paths = eni.metadata_paths('02:aa:00:00:00:01')
    assert paths['device_number'] == 'latest/meta-data/network/interfaces/macs/02:aa:00:00:00:01/device-number'
    assert eni.parse_metadata('m', {'device_number': '2\n', 'subnet_cidr': '10.100.2.0/24'}, 'n') == \
        {'device_number': 2, 'subnet_cidr': '10.100.2.0/24'}
    assert eni.parse_metadata('m', {'device_number': None, 'subnet_cidr': None}, 'n') == {}
    with pytest.raises(eni.EniError, match='node1: instance metadata: device-number'):
        eni.parse_metadata('m', {'device_number': 'x'}, 'node1')


def test_wait_for_interfaces_is_bounded_and_names_the_eni():
    enis = eni.normalize_enis([ENI1, ENI2], 'node1')
    now = [0.0]
    calls = []

    def lookup(e):
        calls.append(e['id'])
        if e['id'] == ENI1['id'] or now[0] >= 2:
            return {'device_number': e['device_index'], 'link': 'eth%d' % e['device_index']}
        return {'device_number': e['device_index']}

    def sleep(s):
        now[0] += s

    found = eni.wait_for_interfaces(enis, lookup, 10, 'node1', sleep=sleep, clock=lambda: now[0])
    assert set(found) == {'02:aa:00:00:00:01', '02:aa:00:00:00:02'} and now[0] >= 2
    now[0] = 0
    with pytest.raises(eni.EniError, match=r'node1: no interface appeared within 1s for eni-0000000000000aaa2'):
        eni.wait_for_interfaces(enis, lambda e: lookup(e) if e['id'] == ENI1['id'] else None, 1, 'node1',
                                sleep=sleep, clock=lambda: now[0])


def test_an_eni_lease_has_no_router_ips_and_follows_ec2():
    from ansible_collections.podnet.fabric.plugins.module_utils.ipam import lease as ipam_lease
    lease = {'cluster': 'lab', 'node': 'node1', 'ip': '192.168.60.11', 'mode': 'eni', 'pools': {}, 'allocated_at': 0,
             'cidrs': {'ipv4': ['10.100.1.4/32', '10.100.1.5/32', '10.100.1.48/28'], 'ipv6': []}}
    assert ipam_lease.lease_router_ips(lease) == []
    assert ipam_lease.endpoint_source(lease) == ('eni', {'ipv4': lease['cidrs']['ipv4'], 'ipv6': []})
    grown = dict(lease, cidrs={'ipv4': lease['cidrs']['ipv4'] + ['10.100.1.6/32'], 'ipv6': []})
    assert ipam_lease.lease_disagreement(lease, grown) is None
