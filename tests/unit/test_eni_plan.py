"""plugins/plugin_utils/eni_plan.py: Cilium's ENI sizing against real instance-type limits (as
DescribeInstanceTypes gives them), subnet and security-group selection, excess release and the
two-phase garbage collection. Pure: views are built here as eni_cloud.read_view builds them."""
import pytest

from ansible_collections.podnet.fabric.plugins.plugin_utils import eni_plan as ep

# NetworkInfo of DescribeInstanceTypes (the fields the planner reads), as AWS publishes them.
TYPES = [
    {'InstanceType': 'c5.large', 'NetworkInfo': {'MaximumNetworkInterfaces': 3, 'Ipv4AddressesPerInterface': 10}},
    {'InstanceType': 't3.small', 'NetworkInfo': {'MaximumNetworkInterfaces': 3, 'Ipv4AddressesPerInterface': 4}},
    {'InstanceType': 'm5.large', 'NetworkInfo': {'MaximumNetworkInterfaces': 3, 'Ipv4AddressesPerInterface': 10}},
    {'InstanceType': 'c5.4xlarge', 'NetworkInfo': {'MaximumNetworkInterfaces': 8, 'Ipv4AddressesPerInterface': 30}},
]
LIMITS = ep.limits_from_instance_types(TYPES)
CLUSTER = 'lab'
VPC = 'vpc-1'


def subnet(sid, cidr, free, az='us-east-1a', vpc=VPC, tags=None):
    return {'id': sid, 'cidr': cidr, 'vpc_id': vpc, 'az': az, 'available': free, 'tags': tags or {}}


def eni(eid, iid=None, index=None, ips=(), prefixes=(), subnet_id='subnet-a', tags=None, dot=True,
        primary='10.1.0.%d'):
    n = int(eid.split('-')[1], 16) % 250 + 2
    return {'id': eid, 'mac': '02:00:00:00:00:%02x' % (n % 256), 'subnet_id': subnet_id, 'vpc_id': VPC,
            'az': 'us-east-1a', 'status': 'in-use' if iid else 'available', 'instance_id': iid,
            'device_index': index, 'attachment_id': ('eni-attach-%s' % eid[4:]) if iid else None,
            'delete_on_termination': dot, 'primary_ip': primary % n, 'ips': list(ips), 'prefixes': list(prefixes),
            'groups': ['sg-eth0'], 'tags': dict(tags or {})}


def ours(node):
    return ep.owner_tags(CLUSTER, node)


def view(enis, subnets=None, groups=None):
    return {'limits': LIMITS, 'enis': dict((e['id'], e) for e in enis),
            'subnets': dict((s['id'], s) for s in (subnets or [subnet('subnet-a', '10.1.0.0/24', 200)])),
            'security_groups': dict((g['id'], g) for g in (groups or [{'id': 'sg-eth0', 'vpc_id': VPC, 'tags': {}}]))}


def node(iid, itype, used=(), override=None):
    return {'instance_id': iid, 'instance_type': itype, 'used_ips': list(used), 'eni': override}


def cfg(**kw):
    return ep.config(kw)


def kinds(result):
    return [a['action'] for a in result['actions']]


# ------------------------------------------------------------------ limits and Cilium's formulas

@pytest.mark.parametrize('itype, fii, limit', [
    ('c5.large', 0, 27), ('c5.large', 1, 18),
    ('t3.small', 0, 9), ('t3.small', 1, 6),
    ('m5.large', 0, 27), ('m5.large', 1, 18),
    ('c5.4xlarge', 0, 232), ('c5.4xlarge', 1, 203),
])
def test_node_limit_from_describe_instance_types(itype, fii, limit):
    assert ep.node_limit(LIMITS[itype], fii) == limit
    assert ep.node_limit(LIMITS[itype], fii, prefix_delegation=True) == limit * 16


@pytest.mark.parametrize('available, used, pre, mn, mx, needed', [
    (0, 0, 8, 0, 0, 8),          # a fresh node: pre_allocate
    (8, 3, 8, 0, 0, 3),          # keep 8 free
    (8, 0, 8, 0, 0, 0),
    (0, 0, 8, 20, 0, 20),        # min_allocate wins
    (10, 0, 8, 20, 0, 10),
    (0, 0, 8, 20, 12, 12),       # capped by max_allocate - available
    (14, 14, 8, 0, 12, 0),       # max(max_allocate - available, 0)
    (30, 29, 8, 0, 0, 7),
])
def test_needed_ips_is_ciliums(available, used, pre, mn, mx, needed):
    assert ep.needed_ips(available, used, pre, mn, mx) == needed


@pytest.mark.parametrize('available, used, pre, wm, mn, excess', [
    (20, 2, 8, 0, 0, 10), (20, 2, 8, 4, 0, 6), (10, 10, 8, 0, 0, 0), (10, 0, 8, 0, 10, 0), (14, 0, 8, 4, 10, 0), (30, 0, 8, 0, 10, 22)])
def test_excess_ips(available, used, pre, wm, mn, excess):
    assert ep.excess_ips(available, used, pre, wm, mn) == excess


# ------------------------------------------------------------------ sizing on real limits

@pytest.mark.parametrize('itype', ['c5.large', 'm5.large'])
def test_fresh_node_fii0_fills_the_primary_eni_first(itype):
    v = view([eni('eni-a1', 'i-1', 0)])
    r = ep.plan(v, cfg(), CLUSTER, {'node1': node('i-1', itype)})
    assert r['actions'] == [{'action': 'assign', 'node': 'node1', 'eni_id': 'eni-a1', 'ip_count': 8}]
    assert r['nodes']['node1']['limit'] == 27 and r['nodes']['node1']['needed'] == 8


def test_fresh_node_fii1_creates_an_eni_at_device_1_with_ownership():
    v = view([eni('eni-a1', 'i-1', 0)])
    r = ep.plan(v, cfg(first_interface_index=1, tags={'team': 'net'}), CLUSTER, {'node1': node('i-1', 'c5.large')})
    (act,) = r['actions']
    assert act['action'] == 'create' and act['device_index'] == 1 and act['ip_count'] == 8
    assert act['subnet_id'] == 'subnet-a' and act['groups'] == ['sg-eth0'] and act['instance_id'] == 'i-1'
    assert act['tags'] == {'team': 'net', ep.TAG_CLUSTER: 'lab', ep.TAG_NODE: 'node1', ep.TAG_MANAGED: ep.MANAGED_VALUE}
    assert 'i-1' in act['description'] and act['delete_on_termination'] is True
    assert r['nodes']['node1']['limit'] == 18


def test_watermark_spills_onto_a_new_eni_when_the_primary_is_full():
    v = view([eni('eni-a1', 'i-1', 0)])
    r = ep.plan(v, cfg(max_above_watermark=4), CLUSTER, {'node1': node('i-1', 'c5.large')})
    assert [(a['action'], a.get('ip_count'), a.get('device_index')) for a in r['actions']] == [
        ('assign', 9, None), ('create', 3, 1)]


def test_c5_4xlarge_min_allocate_spreads_over_enis():
    v = view([eni('eni-a1', 'i-1', 0)], [subnet('subnet-a', '10.1.0.0/20', 4000)])
    r = ep.plan(v, cfg(min_allocate=100, first_interface_index=1), CLUSTER, {'node1': node('i-1', 'c5.4xlarge')})
    creates = [a for a in r['actions'] if a['action'] == 'create']
    assert [a['ip_count'] for a in creates] == [29, 29, 29, 13]
    assert [a['device_index'] for a in creates] == [1, 2, 3, 4]


@pytest.mark.parametrize('itype, fii, pre, limit', [
    ('t3.small', 1, 8, 6), ('t3.small', 0, 10, 9), ('c5.large', 1, 19, 18), ('c5.4xlarge', 1, 204, 203)])
def test_over_limit_is_an_error_naming_node_type_and_limit(itype, fii, pre, limit):
    v = view([eni('eni-a1', 'i-1', 0)], [subnet('subnet-a', '10.1.0.0/20', 4000)])
    with pytest.raises(ep.EniPlanError) as e:
        ep.plan(v, cfg(pre_allocate=pre, first_interface_index=fii), CLUSTER, {'node1': node('i-1', itype)})
    (msg,) = e.value.errors
    assert msg.startswith('node1: ') and itype in msg and 'allows %d' % limit in msg, msg


def test_max_allocate_caps_instead_of_failing():
    v = view([eni('eni-a1', 'i-1', 0)])
    r = ep.plan(v, cfg(pre_allocate=8, max_allocate=6, first_interface_index=1), CLUSTER, {'node1': node('i-1', 't3.small')})
    assert [a.get('ip_count') for a in r['actions']] == [3, 3]


def test_every_node_error_is_listed_and_unknown_type_and_instance_are_named():
    v = view([eni('eni-a1', 'i-1', 0)])
    with pytest.raises(ep.EniPlanError) as e:
        ep.plan(v, cfg(), CLUSTER, {'node1': node('i-1', 'x9.huge'), 'node2': node('i-9', 'c5.large')})
    assert len(e.value.errors) == 2
    assert "node1: instance type 'x9.huge'" in e.value.errors[0] and 'InvalidInstanceType' in e.value.errors[0]
    assert e.value.errors[1].startswith('node2: instance i-9 ')


def test_converged_node_plans_nothing_and_used_ips_count():
    ips = ['10.1.0.%d' % i for i in range(100, 109)]
    v = view([eni('eni-a1', 'i-1', 0), eni('eni-a2', 'i-1', 1, ips=ips[:8], tags=ours('node1'))])
    r = ep.plan(v, cfg(first_interface_index=1), CLUSTER, {'node1': node('i-1', 'c5.large')})
    assert r['actions'] == [] and r['nodes']['node1']['available'] == 8
    # 3 in use: 3 more keep pre_allocate free
    r = ep.plan(v, cfg(first_interface_index=1), CLUSTER, {'node1': node('i-1', 'c5.large', used=ips[:3])})
    assert r['actions'] == [{'action': 'assign', 'node': 'node1', 'eni_id': 'eni-a2', 'ip_count': 1},
                            dict(r['actions'][1])] and r['actions'][1]['ip_count'] == 2
    assert r['nodes']['node1']['used'] == 3


def test_foreign_enis_are_not_used_and_keep_their_slot():
    v = view([eni('eni-a1', 'i-1', 0), eni('eni-f1', 'i-1', 1, ips=['10.1.0.50'], tags={'owner': 'else'})])
    r = ep.plan(v, cfg(first_interface_index=1), CLUSTER, {'node1': node('i-1', 'c5.large')})
    assert [(a['action'], a['device_index']) for a in r['actions']] == [('create', 2)]
    assert ep.node_enis(v, 'i-1', 1, CLUSTER) == []


def test_delete_on_termination_is_set_on_our_attached_enis():
    v = view([eni('eni-a1', 'i-1', 0, dot=False),
              eni('eni-a2', 'i-1', 1, ips=['10.1.0.%d' % i for i in range(10, 18)], tags=ours('node1'), dot=False)])
    r = ep.plan(v, cfg(first_interface_index=1), CLUSTER, {'node1': node('i-1', 'c5.large')})
    assert r['actions'] == [{'action': 'delete_on_termination', 'node': 'node1', 'eni_id': 'eni-a2',
                             'attachment_id': 'eni-attach-a2'}]


# ------------------------------------------------------------------ subnets and security groups

SUBNETS = [subnet('subnet-a', '10.1.0.0/24', 200), subnet('subnet-b', '10.1.1.0/24', 240, tags={'pods': 'yes'}),
           subnet('subnet-c', '10.1.2.0/24', 250, az='us-east-1b', tags={'pods': 'yes'}),
           subnet('subnet-d', '10.1.3.0/24', 100, tags={'pods': 'yes', 'pool': 'gpu'})]
GROUPS = [{'id': 'sg-eth0', 'vpc_id': VPC, 'tags': {}}, {'id': 'sg-pods', 'vpc_id': VPC, 'tags': {'pods': 'yes'}},
          {'id': 'sg-gpu', 'vpc_id': VPC, 'tags': {'pool': 'gpu'}}, {'id': 'sg-other', 'vpc_id': 'vpc-2', 'tags': {}}]


def one_create(c, override=None):
    v = view([eni('eni-a1', 'i-1', 0)], SUBNETS, GROUPS)
    r = ep.plan(v, dict(cfg(first_interface_index=1), **c), CLUSTER, {'node1': node('i-1', 'c5.large', override=override)})
    (act,) = [a for a in r['actions'] if a['action'] == 'create']
    return act, r['warnings']


def test_subnet_ids_before_tags_and_same_az_only():
    act, _warnings = one_create({'subnet_ids': ['subnet-c', 'subnet-d'], 'subnet_tags': {'pods': 'yes'}})
    assert act['subnet_id'] == 'subnet-d'          # subnet-c is in another AZ
    act, _warnings = one_create({'subnet_tags': {'pods': 'yes'}})
    assert act['subnet_id'] == 'subnet-b'          # the emptiest matching subnet of the node's AZ
    act, _warnings = one_create({})
    assert act['subnet_id'] == 'subnet-a'          # the node's own


def test_no_matching_subnet_is_an_error():
    with pytest.raises(ep.EniPlanError) as e:
        one_create({'subnet_ids': ['subnet-c']})
    assert e.value.errors[0].startswith('node1: none of subnet_ids subnet-c is in vpc-1 us-east-1a')


def test_security_groups_ids_then_tags_then_primary_with_warning():
    act, w = one_create({'security_group_ids': ['sg-pods']})
    assert act['groups'] == ['sg-pods'] and not w
    act, w = one_create({'security_group_tags': {'pods': 'yes'}})
    assert act['groups'] == ['sg-pods'] and not w
    act, w = one_create({'security_group_tags': {'pods': 'nope'}})
    assert act['groups'] == ['sg-eth0'] and 'no security group of vpc-1 has the tags pods=nope' in w[0]
    with pytest.raises(ep.EniPlanError) as e:
        one_create({'security_group_ids': ['sg-other']})
    assert 'sg-other' in e.value.errors[0]


def test_per_node_override_gives_a_node_pool_its_own_groups_and_subnets():
    over = {'subnet_ids': [], 'subnet_tags': {'pool': 'gpu'}, 'security_group_ids': [],
            'security_group_tags': {'pool': 'gpu'}}
    act, _warnings = one_create({'security_group_ids': ['sg-pods'], 'subnet_tags': {'pods': 'yes'}}, override=over)
    assert act['subnet_id'] == 'subnet-d' and act['groups'] == ['sg-gpu']


def test_subnet_out_of_addresses_is_an_error_before_any_write():
    v = view([eni('eni-a1', 'i-1', 0), eni('eni-b1', 'i-2', 0)], [subnet('subnet-a', '10.1.0.0/28', 12)])
    # node1 takes 9 (8 + primary), node2 would need 9 more of the 3 left: the whole plan fails.
    with pytest.raises(ep.EniPlanError) as e:
        ep.plan(v, cfg(first_interface_index=1), CLUSTER,
                {'node1': node('i-1', 'c5.large'), 'node2': node('i-2', 'c5.large')})
    (msg,) = e.value.errors
    assert msg.startswith('node2: ') and 'InsufficientFreeAddressesInSubnet' in msg and 'subnet-a 3 free' in msg


# ------------------------------------------------------------------ prefix delegation

def test_prefix_delegation_creates_prefixes_and_falls_back_per_subnet():
    v = view([eni('eni-a1', 'i-1', 0)])
    r = ep.plan(v, cfg(prefix_delegation=True, first_interface_index=1), CLUSTER, {'node1': node('i-1', 'c5.large')})
    assert [(a['action'], a.get('prefix_count'), a.get('ip_count')) for a in r['actions']] == [('create', 1, None)]
    r = ep.plan(v, cfg(prefix_delegation=True, first_interface_index=1), CLUSTER, {'node1': node('i-1', 'c5.large')},
                no_prefix_subnets={'subnet-a'})
    assert [(a['action'], a.get('prefix_count'), a.get('ip_count')) for a in r['actions']] == [('create', None, 8)]


def test_prefixes_never_mix_with_secondary_ips_on_one_eni():
    ips = ['10.1.0.%d' % i for i in range(10, 18)]
    v = view([eni('eni-a1', 'i-1', 0), eni('eni-a2', 'i-1', 1, ips=ips, tags=ours('node1'))])
    r = ep.plan(v, cfg(prefix_delegation=True, first_interface_index=1), CLUSTER,
                {'node1': node('i-1', 'c5.large', used=ips[:5])})
    # eni-a2 holds single IPs: it gets single IPs (never a prefix) up to its 9
    assert r['actions'][0] == {'action': 'assign', 'node': 'node1', 'eni_id': 'eni-a2', 'ip_count': 1}
    assert r['actions'][1]['action'] == 'create' and r['actions'][1]['prefix_count'] == 1
    v = view([eni('eni-a1', 'i-1', 0), eni('eni-a2', 'i-1', 1, prefixes=['10.1.0.16/28'], tags=ours('node1'))])
    r = ep.plan(v, cfg(prefix_delegation=True, first_interface_index=1, min_allocate=40), CLUSTER,
                {'node1': node('i-1', 'c5.large')})
    assert r['actions'] == [{'action': 'assign', 'node': 'node1', 'eni_id': 'eni-a2', 'prefix_count': 2}]


# ------------------------------------------------------------------ excess release

def test_release_excess_never_releases_an_ip_in_use():
    ips = ['10.1.0.%d' % i for i in range(10, 19)] + ['10.1.0.%d' % i for i in range(30, 39)]
    v = view([eni('eni-a1', 'i-1', 0), eni('eni-a2', 'i-1', 1, ips=ips[:9], tags=ours('node1')),
              eni('eni-a3', 'i-1', 2, ips=ips[9:], tags=ours('node1'))])
    used = ips[:2] + ips[9:11]
    r = ep.plan(v, cfg(first_interface_index=1, release_excess_ips=True), CLUSTER,
                {'node1': node('i-1', 'c5.large', used=used)})
    released = [ip for a in r['actions'] if a['action'] == 'unassign' for ip in a['ips']]
    assert r['nodes']['node1']['excess'] == 18 - 4 - 8 == len(released)
    assert not set(released) & set(used)
    r = ep.plan(v, cfg(first_interface_index=1), CLUSTER, {'node1': node('i-1', 'c5.large', used=used)})
    assert r['actions'] == []      # release_excess_ips is off by default


# ------------------------------------------------------------------ interrupted runs and garbage collection

def test_an_interrupted_create_is_attached_next_run_not_duplicated():
    v = view([eni('eni-a1', 'i-1', 0), eni('eni-a2', ips=['10.1.0.%d' % i for i in range(10, 18)], tags=ours('node1'))])
    r = ep.plan(v, cfg(first_interface_index=1), CLUSTER, {'node1': node('i-1', 'c5.large')})
    assert r['actions'] == [{'action': 'attach', 'node': 'node1', 'eni_id': 'eni-a2', 'instance_id': 'i-1',
                             'device_index': 1, 'unmark': False}]


def test_gc_two_phase_capped_never_another_cluster_nor_an_unrun_node():
    enis = [eni('eni-a1', 'i-1', 0)]
    enis += [eni('eni-%x' % (0x100 + i), tags=ours('gone')) for i in range(30)]
    enis += [eni('eni-%x' % (0x200 + i), tags=dict(ours('gone'), **{ep.TAG_GC_MARK: 'serial'})) for i in range(30)]
    enis += [eni('eni-c1', tags=ep.owner_tags('other', 'gone')), eni('eni-c2', tags={'Name': 'user'}),
             eni('eni-c3', tags=ours('node2'))]
    r = ep.plan(view(enis), cfg(first_interface_index=1, pre_allocate=0), CLUSTER, {'node1': node('i-1', 'c5.large')},
                model_nodes=['node1', 'node2'])
    marks = [a['eni_id'] for a in r['actions'] if a['action'] == 'gc_mark']
    deletes = [a['eni_id'] for a in r['actions'] if a['action'] == 'gc_delete']
    assert len(marks) == ep.GC_MAX_PER_RUN == len(deletes)
    assert all(int(e[4:], 16) in range(0x100, 0x11e) for e in marks)
    assert all(int(e[4:], 16) in range(0x200, 0x21e) for e in deletes)
    touched = set(marks) | set(deletes)
    assert not touched & {'eni-c1', 'eni-c2', 'eni-c3'}


def test_marked_orphan_of_a_run_node_is_reused_and_unmarked():
    v = view([eni('eni-a1', 'i-1', 0), eni('eni-a2', tags=dict(ours('node1'), **{ep.TAG_GC_MARK: '1'}))])
    r = ep.plan(v, cfg(first_interface_index=1, pre_allocate=0), CLUSTER, {'node1': node('i-1', 'c5.large')})
    assert r['actions'] == [{'action': 'attach', 'node': 'node1', 'eni_id': 'eni-a2', 'instance_id': 'i-1',
                             'device_index': 1, 'unmark': True}]


def test_node_enis_is_the_contract_shape():
    v = view([eni('eni-a1', 'i-1', 0, ips=['10.1.0.9']),
              eni('eni-a2', 'i-1', 1, ips=['10.1.0.20', '10.1.0.3'], tags=ours('node1'))])
    v['enis']['eni-a2']['mac'] = '02:AB:00:00:00:01'
    out = ep.node_enis(v, 'i-1', 1, CLUSTER)
    assert out == [{'id': 'eni-a2', 'mac': '02:ab:00:00:00:01', 'device_index': 1, 'subnet_id': 'subnet-a',
                    'subnet_cidr': '10.1.0.0/24', 'primary_ip': v['enis']['eni-a2']['primary_ip'],
                    'ips': ['10.1.0.3', '10.1.0.20'], 'prefixes': []}]
    assert [e['id'] for e in ep.node_enis(v, 'i-1', 0, CLUSTER)] == ['eni-a1', 'eni-a2']
