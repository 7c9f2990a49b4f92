"""Unit tests for plugins/module_utils/ipam/ (blocks, leases, endpoint IPs) and plugins/plugin_utils/ipam_plan.py (the planners)."""
import copy
import ipaddress

import pytest


from ansible_collections.podnet.fabric.plugins.module_utils.ipam import cidr as ipam_cidr
from ansible_collections.podnet.fabric.plugins.module_utils.ipam import endpoints as ipam_endpoints
from ansible_collections.podnet.fabric.plugins.module_utils.ipam import lease as ipam_lease
from ansible_collections.podnet.fabric.plugins.plugin_utils import ipam_plan
IpamError = ipam_cidr.IpamError


def empty_doc():
    return {'version': 1, 'cluster': None, 'serial': 0, 'nodes': {}, 'identities': {}}


def make_model(names, mode='cluster-pool', v4=('10.244.0.0/16',), mask=24, v6=None, v6mask=120,
               pools=None, pre=None, pod_cidrs=None, labels=None, cluster_cidrs=()):
    nodes = {}
    for i, n in enumerate(names):
        nodes[n] = {'node_ip': '192.168.50.%d' % (10 + i), 'node_device': None,
                    'labels': dict((labels or {}).get(n, {})),
                    'pod_cidrs': list((pod_cidrs or {}).get(n, [])), 'instance': None}
    return {
        'cluster': {'name': 'lab', 'id': 0},
        'ipam': {
            'mode': mode,
            'ledger': {'backend': 'file', 'path': '/tmp/x.json'},
            'cluster_pool': {'ipv4': {'cidrs': list(v4), 'mask_size': mask},
                             'ipv6': {'cidrs': list(v6), 'mask_size': v6mask} if v6 else None},
            'multi_pool': {'pools': pools or {'default': {'ipv4': {'cidrs': ['10.10.0.0/16'], 'mask_size': 27},
                                                          'ipv6': None}},
                           'pre_allocation': {'default': 8} if pre is None else pre},
            'kubernetes': {'cluster_cidrs': list(cluster_cidrs)},
        },
        'routing': {},
        'eni': None,
        'policy': {},
        'nodes': nodes,
    }


def names(n, prefix='node'):
    return ['%s%d' % (prefix, i) for i in range(1, n + 1)]


def cidr_of(doc, node, fam='ipv4'):
    return doc['nodes'][node]['cidrs'][fam]


def all_cidrs(doc):
    out = []
    for entry in doc['nodes'].values():
        for fam in ('ipv4', 'ipv6'):
            out.extend(entry['cidrs'].get(fam) or [])
        for pool in (entry.get('pools') or {}).values():
            for fam in ('ipv4', 'ipv6'):
                out.extend(pool.get(fam) or [])
    return out


def assert_disjoint(cidrs):
    nets = sorted((ipaddress.ip_network(c) for c in cidrs), key=lambda n: (n.version, n.network_address))
    for a, b in zip(nets, nets[1:]):
        assert not (a.version == b.version and a.overlaps(b)), (a, b)


# ------------------------------------------------------------------------------------------
# cluster-pool


def test_cluster_pool_allocates_lowest_free_in_natural_order():
    model = make_model(['node10', 'node2', 'node1'])
    doc, changes = ipam_plan.plan_cluster(model, empty_doc(), ['node10', 'node2', 'node1'])
    assert cidr_of(doc, 'node1') == ['10.244.0.0/24']
    assert cidr_of(doc, 'node2') == ['10.244.1.0/24']
    assert cidr_of(doc, 'node10') == ['10.244.2.0/24']
    assert doc['serial'] == 1 and doc['cluster'] == 'lab'
    assert all(doc['nodes'][n]['allocated_at'] == 1 for n in doc['nodes'])
    allocated = [c for c in changes if c['action'] == 'allocated']
    assert [c['node'] for c in allocated] == ['node1', 'node2', 'node10']
    assert allocated[0]['msg'] == 'node1: allocated ipv4 10.244.0.0/24'
    assert allocated[0]['cidrs'] == ['10.244.0.0/24'] and allocated[0]['family'] == 'ipv4'


def test_plan_does_not_mutate_its_input():
    model = make_model(names(3))
    doc0 = empty_doc()
    doc1 = ipam_plan.plan_cluster(model, doc0, names(2))[0]
    snap = copy.deepcopy(doc1)
    doc2 = ipam_plan.plan_cluster(model, doc1, names(3))[0]
    assert doc0 == empty_doc()
    assert doc1 == snap
    assert doc2 != doc1


def test_noop_plan_returns_identical_doc():
    model = make_model(names(50), v6=['fd00::/104'])
    doc = ipam_plan.plan_cluster(model, empty_doc(), names(50))[0]
    again, changes = ipam_plan.plan_cluster(model, doc, names(50))
    assert again is doc
    assert changes == []
    # a slice of the fleet is a no-op too
    again, changes = ipam_plan.plan_cluster(model, doc, names(50)[10:20])
    assert again is doc and changes == []


def test_insert_node_in_middle_of_inventory_moves_nothing():
    before = ['a1', 'a2', 'a3', 'a4', 'a5']
    model = make_model(before)
    doc = ipam_plan.plan_cluster(model, empty_doc(), before)[0]
    old = dict((n, cidr_of(doc, n)) for n in before)
    after = ['a1', 'a2', 'a2b', 'a3', 'a4', 'a5']           # inserted in the middle
    model2 = make_model(after)
    doc2, changes = ipam_plan.plan_cluster(model2, doc, after)
    for n in before:
        assert cidr_of(doc2, n) == old[n]
    assert cidr_of(doc2, 'a2b') == ['10.244.5.0/24']
    assert [c['node'] for c in changes if c['action'] == 'allocated'] == ['a2b']
    assert_disjoint(all_cidrs(doc2))


def test_limit_subset_allocates_only_run_nodes():
    model = make_model(names(6))
    doc = ipam_plan.plan_cluster(model, empty_doc(), ['node4', 'node5'])[0]
    assert sorted(doc['nodes']) == ['node4', 'node5']
    doc2 = ipam_plan.plan_cluster(model, doc, ['node1'])[0]
    assert cidr_of(doc2, 'node4') == ['10.244.0.0/24']
    assert cidr_of(doc2, 'node1') == ['10.244.2.0/24']


def test_removed_node_kept_without_prune_and_released_with_prune():
    model = make_model(names(3))
    doc = ipam_plan.plan_cluster(model, empty_doc(), names(3))[0]
    assert cidr_of(doc, 'node2') == ['10.244.1.0/24']
    # node2 leaves the inventory, node4 joins
    model2 = make_model(['node1', 'node3', 'node4'])
    kept, changes = ipam_plan.plan_cluster(model2, doc, ['node1', 'node3', 'node4'])
    assert cidr_of(kept, 'node2') == ['10.244.1.0/24']       # kept: no prune
    assert cidr_of(kept, 'node4') == ['10.244.3.0/24']
    assert not [c for c in changes if c['action'] == 'released']
    # with prune: node2's block is released, and the next new node gets it
    pruned, changes = ipam_plan.plan_cluster(model2, doc, ['node1', 'node3', 'node4'], prune=True)
    assert 'node2' not in pruned['nodes']
    rel = [c for c in changes if c['action'] == 'released']
    assert rel == [{'action': 'released', 'node': 'node2', 'cidrs': ['10.244.1.0/24'],
                    'msg': 'node2: released 10.244.1.0/24 (not in the inventory; prune)'}]
    assert cidr_of(pruned, 'node4') == ['10.244.1.0/24']      # reused
    assert cidr_of(pruned, 'node1') == ['10.244.0.0/24'] and cidr_of(pruned, 'node3') == ['10.244.2.0/24']


def test_prune_alone_then_reuse():
    model = make_model(names(3))
    doc = ipam_plan.plan_cluster(model, empty_doc(), names(3))[0]
    model2 = make_model(['node1', 'node3'])
    pruned = ipam_plan.plan_cluster(model2, doc, [], prune=True)[0]
    assert sorted(pruned['nodes']) == ['node1', 'node3'] and pruned['serial'] == 2
    model3 = make_model(['node1', 'node3', 'node9'])
    doc3 = ipam_plan.plan_cluster(model3, pruned, ['node9'])[0]
    assert cidr_of(doc3, 'node9') == ['10.244.1.0/24']


def test_dual_stack():
    model = make_model(names(3), v6=['fd00::/104'], v6mask=120)
    doc, changes = ipam_plan.plan_cluster(model, empty_doc(), names(3))
    assert doc['nodes']['node1']['cidrs'] == {'ipv4': ['10.244.0.0/24'], 'ipv6': ['fd00::/120']}
    assert doc['nodes']['node3']['cidrs'] == {'ipv4': ['10.244.2.0/24'], 'ipv6': ['fd00::200/120']}
    assert len([c for c in changes if c['action'] == 'allocated']) == 6
    assert_disjoint(all_cidrs(doc))


def test_adding_ipv6_later_keeps_ipv4():
    model = make_model(names(2))
    doc = ipam_plan.plan_cluster(model, empty_doc(), names(2))[0]
    model6 = make_model(names(2), v6=['fd00::/104'])
    doc6, changes = ipam_plan.plan_cluster(model6, doc, names(2))
    assert cidr_of(doc6, 'node1') == ['10.244.0.0/24'] and cidr_of(doc6, 'node1', 'ipv6') == ['fd00::/120']
    assert {c['family'] for c in changes if c['action'] == 'allocated'} == {'ipv6'}


def test_multiple_cidrs_used_in_order():
    model = make_model(names(3), v4=('10.1.0.0/24', '10.0.0.0/25'), mask=25)
    doc = ipam_plan.plan_cluster(model, empty_doc(), names(3))[0]
    assert [cidr_of(doc, n)[0] for n in names(3)] == ['10.1.0.0/25', '10.1.0.128/25', '10.0.0.0/25']


def test_exhaustion_message():
    model = make_model(names(258))
    with pytest.raises(IpamError) as e:
        ipam_plan.plan_cluster(model, empty_doc(), names(258))
    assert str(e.value) == ("pool 'default' (10.244.0.0/16, mask 24: 256 blocks) is exhausted: "
                            "256 of 256 blocks in use; cannot allocate for node257 (and 1 more node)")


def test_exhaustion_counts_existing_allocations():
    model = make_model(names(5), v4=('10.0.0.0/23',), mask=24)
    doc = ipam_plan.plan_cluster(model, empty_doc(), names(2))[0]
    with pytest.raises(IpamError) as e:
        ipam_plan.plan_cluster(model, doc, ['node3'])
    assert str(e.value) == ("pool 'default' (10.0.0.0/23, mask 24: 2 blocks) is exhausted: "
                            "2 of 2 blocks in use; cannot allocate for node3")


@pytest.mark.parametrize('v4,mask,msg', [
    (('10.0.0.0/26',), 24, "10.0.0.0/26 is smaller than one mask_size 24 block"),
    (('10.0.0.0/8',), 33, "mask_size 33 is larger than ipv4 allows (32)"),
    (('10.0.0.0/8',), 32, "mask_size 32 leaves no addresses for endpoints"),
    (('10.0.0.1/24',), 26, "is not a valid CIDR"),
    (('fd00::/104',), 24, "is not an ipv4 CIDR"),
])
def test_bad_pool_config(v4, mask, msg):
    model = make_model(names(1), v4=v4, mask=mask)
    with pytest.raises(IpamError) as e:
        ipam_plan.plan_cluster(model, empty_doc(), names(1))
    assert msg in str(e.value)


def test_ipv6_mask_too_large():
    model = make_model(names(1), v6=['fd00::/104'], v6mask=129)
    with pytest.raises(IpamError, match=r'mask_size 129 is larger than ipv6 allows \(128\)'):
        ipam_plan.plan_cluster(model, empty_doc(), names(1))


def test_run_node_not_in_model_and_foreign_cluster():
    model = make_model(names(2))
    with pytest.raises(IpamError, match='ghost: in this run but not in the inventory model'):
        ipam_plan.plan_cluster(model, empty_doc(), ['ghost'])
    doc = empty_doc()
    doc['cluster'] = 'prod'
    with pytest.raises(IpamError, match="belongs to cluster 'prod'"):
        ipam_plan.plan_cluster(model, doc, names(2))


def test_existing_odd_allocations_are_avoided():
    """A block recorded by an earlier mode or mask (a /23 here) is never handed out again."""
    model = make_model(names(3))
    doc = empty_doc()
    doc['nodes']['old'] = {'ip': None, 'cidrs': {'ipv4': ['10.244.0.0/23'], 'ipv6': []}, 'pools': {},
                           'allocated_at': 0}
    new = ipam_plan.plan_cluster(model, doc, names(3))[0]
    assert [cidr_of(new, n)[0] for n in names(3)] == ['10.244.2.0/24', '10.244.3.0/24', '10.244.4.0/24']


def test_node_ip_change_is_recorded():
    model = make_model(names(2))
    doc = ipam_plan.plan_cluster(model, empty_doc(), names(2))[0]
    model['nodes']['node1']['node_ip'] = '192.168.50.99'
    new, changes = ipam_plan.plan_cluster(model, doc, names(2))
    assert new['nodes']['node1']['ip'] == '192.168.50.99'
    assert cidr_of(new, 'node1') == cidr_of(doc, 'node1')
    assert [c['action'] for c in changes] == ['updated']


# ------------------------------------------------------------------------------------------
# kubernetes (host-scope)


def test_kubernetes_records_pod_cidrs():
    pc = {'node1': ['10.244.1.0/24', 'fd00:1::/64'], 'node2': ['10.244.2.0/24']}
    model = make_model(names(2), mode='kubernetes', pod_cidrs=pc, cluster_cidrs=['10.244.0.0/16'])
    doc, changes = ipam_plan.plan_cluster(model, empty_doc(), names(2))
    assert doc['nodes']['node1']['cidrs'] == {'ipv4': ['10.244.1.0/24'], 'ipv6': ['fd00:1::/64']}
    assert doc['nodes']['node2']['cidrs'] == {'ipv4': ['10.244.2.0/24'], 'ipv6': []}
    assert [c['action'] for c in changes] == ['recorded', 'recorded']
    again, changes = ipam_plan.plan_cluster(model, doc, names(2))
    assert again is doc and changes == []


def test_kubernetes_overlap_conflict_names_both_nodes():
    pc = {'node1': ['10.244.1.0/24'], 'node2': ['10.244.1.128/25']}
    model = make_model(names(2), mode='kubernetes', pod_cidrs=pc)
    with pytest.raises(IpamError) as e:
        ipam_plan.plan_cluster(model, empty_doc(), names(2))
    assert str(e.value) == ('podnet_pod_cidrs conflict: node2 claims 10.244.1.128/25, '
                            'which overlaps 10.244.1.0/24 held by node1')


def test_kubernetes_conflict_with_ledger_node_outside_run():
    pc = {'node1': ['10.244.1.0/24'], 'node2': ['10.244.1.0/24']}
    model = make_model(names(2), mode='kubernetes', pod_cidrs=pc)
    doc = ipam_plan.plan_cluster(model, empty_doc(), ['node1'])[0]
    with pytest.raises(IpamError) as e:
        ipam_plan.plan_cluster(model, doc, ['node2'])                # --limit node2
    assert str(e.value) == 'podnet_pod_cidrs conflict: node1 and node2 both claim 10.244.1.0/24'


def test_kubernetes_outside_cluster_cidr_and_empty():
    model = make_model(names(1), mode='kubernetes', pod_cidrs={'node1': ['10.245.0.0/24']},
                       cluster_cidrs=['10.244.0.0/16'])
    with pytest.raises(IpamError, match=r'node1: podnet_pod_cidrs: 10.245.0.0/24 is outside the cluster '
                                        r'CIDRs \(10.244.0.0/16\)'):
        ipam_plan.plan_cluster(model, empty_doc(), names(1))
    model = make_model(names(1), mode='kubernetes')
    with pytest.raises(IpamError, match='node1: podnet_pod_cidrs: empty'):
        ipam_plan.plan_cluster(model, empty_doc(), names(1))


def test_kubernetes_pod_cidr_change_is_recorded_as_is():
    model = make_model(names(1), mode='kubernetes', pod_cidrs={'node1': ['10.244.1.0/24']})
    doc = ipam_plan.plan_cluster(model, empty_doc(), names(1))[0]
    model['nodes']['node1']['pod_cidrs'] = ['10.244.7.0/24']
    new, changes = ipam_plan.plan_cluster(model, doc, names(1))
    assert cidr_of(new, 'node1') == ['10.244.7.0/24']
    assert changes[0]['msg'] == 'node1: pod CIDRs 10.244.1.0/24 -> 10.244.7.0/24'


# ------------------------------------------------------------------------------------------
# multi-pool

POOLS = {'default': {'ipv4': {'cidrs': ['10.10.0.0/24'], 'mask_size': 27}, 'ipv6': None},
         'gpu': {'ipv4': {'cidrs': ['10.20.0.0/24'], 'mask_size': 28},
                 'ipv6': {'cidrs': ['fd00:20::/112'], 'mask_size': 120}},
         'batch': {'ipv4': {'cidrs': ['10.30.0.0/24'], 'mask_size': 28}, 'ipv6': None}}


def pools_of(doc, node):
    return doc['nodes'][node]['pools']


def test_multi_pool_pre_allocation():
    # default /27 = 29 endpoint addresses; gpu /28 = 13 (v4), /120 = 254 (v6)
    model = make_model(names(2), mode='multi-pool', pools=POOLS, pre={'default': 8, 'gpu': 20})
    doc, changes = ipam_plan.plan_cluster(model, empty_doc(), names(2))
    p1 = pools_of(doc, 'node1')
    assert sorted(p1) == ['default', 'gpu']                         # batch: no pre_allocation, no label
    assert p1['default'] == {'ipv4': ['10.10.0.0/27'], 'ipv6': []}
    assert p1['gpu']['ipv4'] == ['10.20.0.0/28', '10.20.0.16/28']   # 20 free needs 2 x 13
    assert p1['gpu']['ipv6'] == ['fd00:20::/120']                   # 254 >= 20
    assert pools_of(doc, 'node2')['gpu']['ipv4'] == ['10.20.0.32/28', '10.20.0.48/28']
    assert doc['nodes']['node1']['cidrs'] == {'ipv4': [], 'ipv6': []}
    assert any(c['msg'] == 'node1: allocated ipv4 10.20.0.0/28, 10.20.0.16/28 from pool gpu' for c in changes)
    again, changes = ipam_plan.plan_cluster(model, doc, names(2))
    assert again is doc and changes == []
    assert_disjoint(all_cidrs(doc))


def test_multi_pool_grows_with_reported_use_and_never_shrinks():
    model = make_model(names(1), mode='multi-pool', pools=POOLS, pre={'default': 8})
    doc = ipam_plan.plan_cluster(model, empty_doc(), names(1))[0]
    assert pools_of(doc, 'node1')['default']['ipv4'] == ['10.10.0.0/27']
    doc = copy.deepcopy(doc)
    doc['nodes']['node1']['pools_used'] = {'default': 25}           # 29 - 25 = 4 free < 8
    grown, changes = ipam_plan.plan_cluster(model, doc, names(1))
    assert pools_of(grown, 'node1')['default']['ipv4'] == ['10.10.0.0/27', '10.10.0.32/27']
    doc = copy.deepcopy(grown)
    doc['nodes']['node1']['pools_used'] = {'default': 0}
    same, changes = ipam_plan.plan_cluster(model, doc, names(1))
    assert same is doc and changes == []                            # stable: no shrink


def test_multi_pool_node_label_selects_pool_and_unknown_pool_is_an_error():
    labels = {'node2': {ipam_cidr.NODE_POOLS_LABEL: 'batch'}}
    model = make_model(names(2), mode='multi-pool', pools=POOLS, pre={'default': 8}, labels=labels)
    doc = ipam_plan.plan_cluster(model, empty_doc(), names(2))[0]
    assert sorted(pools_of(doc, 'node1')) == ['default']
    assert sorted(pools_of(doc, 'node2')) == ['batch', 'default']
    assert pools_of(doc, 'node2')['batch']['ipv4'] == ['10.30.0.0/28']   # at least one block
    labels = {'node1': {ipam_cidr.NODE_POOLS_LABEL: 'tpu'}}
    model = make_model(names(1), mode='multi-pool', pools=POOLS, labels=labels)
    with pytest.raises(IpamError, match=r"node1: podnet_node_labels.ipam.podnet.io/ip-pools: unknown pool 'tpu'"):
        ipam_plan.plan_cluster(model, empty_doc(), names(1))
    model = make_model(names(1), mode='multi-pool', pools=POOLS, pre={'tpu': 4})
    with pytest.raises(IpamError, match=r"pre_allocation: unknown pool 'tpu' \(pools: batch, default, gpu\)"):
        ipam_plan.plan_cluster(model, empty_doc(), names(1))


def test_multi_pool_exhaustion():
    pools = {'default': {'ipv4': {'cidrs': ['10.10.0.0/26'], 'mask_size': 27}, 'ipv6': None}}
    model = make_model(names(3), mode='multi-pool', pools=pools, pre={'default': 8})
    with pytest.raises(IpamError) as e:
        ipam_plan.plan_cluster(model, empty_doc(), names(3))
    assert str(e.value) == ("pool 'default' (10.10.0.0/26, mask 27: 2 blocks) is exhausted: "
                            "2 of 2 blocks in use; cannot allocate for node3")


# ------------------------------------------------------------------------------------------
# crd and eni


def node_doc(node, pool, used=None):
    return {'version': 1, 'node': node, 'serial': 1, 'spec': {'ipam': {'pool': dict((p, {}) for p in pool)}},
            'status': {'ipam': {'used': dict((ip, {'owner': o}) for ip, o in (used or {}).items())}}}


def test_crd_records_external_pools():
    docs = {'node1': node_doc('node1', ['10.1.0.0/28', '10.1.0.77'], {'10.1.0.2': 'default/a'}),
            'node2': node_doc('node2', ['10.1.0.16/28'])}
    model = make_model(names(3), mode='crd')
    doc, changes = ipam_plan.plan_cluster(model, empty_doc(), names(3), node_docs=docs)
    assert doc['nodes']['node1']['cidrs'] == {'ipv4': ['10.1.0.0/28', '10.1.0.77/32'], 'ipv6': []}
    assert doc['nodes']['node2']['cidrs']['ipv4'] == ['10.1.0.16/28']
    assert 'node3' not in doc['nodes']
    assert any(c['action'] == 'note' and c['node'] == 'node3' for c in changes)
    again, changes2 = ipam_plan.plan_cluster(model, doc, names(3), node_docs=docs)
    assert again is doc
    assert [c['action'] for c in changes2] == ['note']
    report = ipam_plan.utilization(model, doc, node_docs=docs)
    assert report['nodes']['node1']['pools']['crd']['ipv4']['endpoints']['used'] == 1
    # the allocator hands node2 a CIDR that overlaps node1's: loud
    docs['node2'] = node_doc('node2', ['10.1.0.0/27'])
    with pytest.raises(IpamError, match='CRD pool conflict: node2 claims 10.1.0.0/27, which overlaps '
                                        '10.1.0.0/28 held by node1'):
        ipam_plan.plan_cluster(model, doc, names(3), node_docs=docs)


def test_crd_used_outside_pool_warns():
    docs = {'node1': node_doc('node1', ['10.1.0.0/28'], {'10.9.9.9': 'default/x'})}
    model = make_model(names(1), mode='crd')
    _doc, changes = ipam_plan.plan_cluster(model, empty_doc(), names(1), node_docs=docs)
    assert any(c['action'] == 'warning' and '10.9.9.9' in c['msg'] for c in changes)


def test_eni_records_nothing():
    model = make_model(names(2), mode='eni')
    doc0 = empty_doc()
    doc, changes = ipam_plan.plan_cluster(model, doc0, names(2))
    assert doc is doc0
    assert len(changes) == 1 and changes[0]['action'] == 'note' and 'eni mode' in changes[0]['msg']


# ------------------------------------------------------------------------------------------
# rebuild, leases, utilization


def test_rebuild_from_leases_roundtrip():
    model = make_model(names(4), v6=['fd00::/104'])
    doc = ipam_plan.plan_cluster(model, empty_doc(), names(4))[0]
    leases = dict((n, ipam_lease.node_lease(doc, n)) for n in names(4))
    assert leases['node1'] == {'cluster': 'lab', 'node': 'node1', 'ip': '192.168.50.10',
                               'cidrs': {'ipv4': ['10.244.0.0/24'], 'ipv6': ['fd00::/120']},
                               'pools': {}, 'allocated_at': 1}
    rebuilt = ipam_plan.rebuild_from_leases(model, leases)
    assert rebuilt == doc
    # and it allocates on from there without collisions
    model5 = make_model(names(5), v6=['fd00::/104'])
    doc5 = ipam_plan.plan_cluster(model5, rebuilt, names(5))[0]
    assert cidr_of(doc5, 'node5') == ['10.244.4.0/24']


def test_rebuild_restores_endpoint_records_from_the_nodes_stores():
    from ansible_collections.podnet.fabric.plugins.plugin_utils import identity
    model = make_model(names(2))
    model['nodes']['node1']['endpoints'] = [{'name': 'web-1', 'namespace': 'default', 'labels': {'app': 'web'}}]
    doc = copy.deepcopy(ipam_plan.plan_cluster(model, empty_doc(), names(2))[0])
    # what ipam_endpoint recorded, one endpoint at a time: the health endpoints first (site.yml), then the rest
    stores = {'node1': {'10.244.0.2': {'owner': 'podnet-health'}},
              'node2': {'10.244.1.2': {'owner': 'podnet-health'}}}
    flt = identity.label_filter(model)
    for n in names(2):
        identity.record_endpoints(doc, n, stores[n], 0, 'lab', flt)
    stores['node1']['10.244.0.3'] = {'owner': 'default/web-1'}
    stores['node2']['10.244.1.3'] = {'owner': 'default/b'}
    stores['node2']['10.244.1.4'] = {'owner': 'default/a'}
    for n in names(2):
        identity.record_endpoints(doc, n, stores[n], 0, 'lab', flt, identity.model_endpoint_labels(model, [n])[n])
    leases = dict((n, ipam_lease.node_lease(doc, n)) for n in names(2))
    # a lost ledger: the records come back from the stores (ids: the health endpoint first, then by name)
    rebuilt = ipam_plan.rebuild_from_leases(model, leases, node_used=stores)
    assert identity.endpoint_records(rebuilt['nodes']['node1']) == identity.endpoint_records(doc['nodes']['node1'])
    assert {k: r['ep_id'] for k, r in identity.endpoint_records(rebuilt['nodes']['node2']).items()} == {
        'podnet-health': 1, 'default/a': 2, 'default/b': 3}
    assert identity.Table(rebuilt, 0).by_labels == identity.Table(doc, 0).by_labels
    # seeded with a ledger that agrees, the rebuild is that ledger: nothing to write
    seeded = ipam_plan.rebuild_from_leases(model, leases, node_used=stores, seed=doc)
    assert seeded['nodes'] == doc['nodes'] and seeded['identities'] == doc['identities']
    assert ipam_plan.plan_rebuild({'state': 'valid', 'doc': doc, 'error': None}, seeded) is None
    # a node whose report has no node_used (an older ipam_node_info) keeps the seed's records
    partial = ipam_plan.rebuild_from_leases(model, leases, node_used={'node1': stores['node1']}, seed=doc)
    assert partial['nodes']['node2']['endpoints'] == doc['nodes']['node2']['endpoints']


def test_rebuild_conflict_names_both_nodes_and_cidr():
    leases = {'node1': {'cluster': 'lab', 'node': 'node1', 'ip': '192.168.50.10',
                        'cidrs': {'ipv4': ['10.244.1.0/24'], 'ipv6': []}, 'pools': {}},
              'node2': {'cluster': 'lab', 'node': 'node2', 'ip': '192.168.50.11',
                        'cidrs': {'ipv4': ['10.244.1.0/24'], 'ipv6': []}, 'pools': {}}}
    with pytest.raises(IpamError) as e:
        ipam_plan.rebuild_from_leases(make_model(names(2)), leases)
    assert str(e.value) == 'lease conflict: node1 and node2 both claim 10.244.1.0/24'
    leases['node2']['cidrs']['ipv4'] = []
    leases['node2']['pools'] = {'gpu': {'ipv4': ['10.244.1.64/26']}}
    with pytest.raises(IpamError) as e:
        ipam_plan.rebuild_from_leases(make_model(names(2)), leases)
    assert str(e.value) == ('lease conflict: node2 claims 10.244.1.64/26, which overlaps '
                            '10.244.1.0/24 held by node1')


def test_rebuild_rejects_foreign_lease():
    leases = {'node1': {'cluster': 'prod', 'node': 'node1', 'cidrs': {}, 'pools': {}}}
    with pytest.raises(IpamError, match="node1: the lease is for cluster 'prod', not 'lab'"):
        ipam_plan.rebuild_from_leases(make_model(names(1)), leases)


def _reports(doc, usage=None, mode=None):
    """What ipam_node_info returns on each node of a ledger (its lease; its endpoint use)."""
    return dict((n, {'changed': False, 'lease': ipam_lease.node_lease(doc, n, mode=mode), 'lease_error': None,
                     'usage': (usage or {}).get(n, {}), 'addresses': [], 'store_error': None})
                for n in doc['nodes'])


def test_rebuild_keeps_pools_used_and_the_leases_block_order():
    pools = {'default': {'ipv4': {'cidrs': ['10.10.0.0/16'], 'mask_size': 27}, 'ipv6': None},
             'gpu': {'ipv4': {'cidrs': ['10.20.0.0/16'], 'mask_size': 28}, 'ipv6': None}}
    model = make_model(names(3), mode='multi-pool', pools=pools, pre={'default': 8},
                       labels={'node2': {ipam_cidr.NODE_POOLS_LABEL: 'gpu'}})
    doc = ipam_plan.plan_cluster(model, empty_doc(), names(3))[0]
    # node1 fills its block; the next run gives it a second one after node3's: blocks out of order
    doc = copy.deepcopy(doc)
    doc['nodes']['node1']['pools_used'] = {'default': {'ipv4': 29}}
    doc['nodes']['node2']['pools_used'] = {'gpu': {'ipv4': 1}, 'default': {'ipv4': 2}}
    doc = ipam_plan.plan_cluster(model, doc, names(3))[0]
    blocks = doc['nodes']['node1']['pools']['default']['ipv4']
    assert blocks == ['10.10.0.0/27', '10.10.0.96/27']
    doc['nodes']['node1']['pools'] = {'default': {'ipv4': ['10.10.0.96/27', '10.10.0.0/27'], 'ipv6': []}}
    usage = dict((n, doc['nodes'][n].get('pools_used', {})) for n in names(3))
    reports = _reports(doc, usage, mode='multi-pool')
    leases, use, warnings = ipam_plan.rebuild_inputs(model, reports)
    assert not warnings
    rebuilt = ipam_plan.rebuild_from_leases(model, leases, use)
    assert rebuilt['nodes'] == doc['nodes']          # every entry, pools_used and block order included
    assert rebuilt['nodes']['node1']['pools']['default']['ipv4'] == ['10.10.0.96/27', '10.10.0.0/27']
    assert 'pools_used' not in rebuilt['nodes']['node3']
    assert rebuilt['serial'] == max(e['allocated_at'] for e in doc['nodes'].values())
    # the leases the rebuilt ledger hands out are the ones the nodes hold
    assert all(ipam_lease.node_lease(rebuilt, n, 'multi-pool') == leases[n] for n in names(3))
    # crd keeps its use in the node documents, not in pools_used
    crd = make_model(names(3), mode='crd')
    assert all('pools_used' not in e for e in ipam_plan.rebuild_from_leases(crd, leases, use)['nodes'].values())


def test_pools_used_record_drops_zero_counts():
    assert ipam_lease.pools_used_record({'default': {'ipv4': 0, 'ipv6': 2}, 'gpu': {'ipv4': 0}}) == {'default': {'ipv6': 2}}
    assert ipam_lease.pools_used_record(None) == {}


def test_rebuild_inputs_names_every_node_it_cannot_rebuild_from():
    model = make_model(names(6))
    doc = ipam_plan.plan_cluster(model, empty_doc(), names(6))[0]
    reports = _reports(doc)
    reports['node2'] = False                                   # did not run (unreachable, --limit)
    reports['node3'] = {'failed': True, 'msg': 'nsenter: no such file'}
    reports['node4'] = dict(reports['node4'], lease=None, lease_error='/l.json: not valid JSON (x)')
    reports['node5'] = dict(reports['node5'], lease=None, addresses=['10.244.4.2', '10.244.4.3'])
    reports['node6'] = dict(reports['node6'], lease=None)      # never provisioned
    reports['node1'] = dict(reports['node1'], store_error='/e.json: not valid JSON (y)')
    with pytest.raises(IpamError) as e:
        ipam_plan.rebuild_inputs(model, reports)
    msg = str(e.value)
    for part in ('node2: did not report its lease', 'node3: did not report its lease (nsenter: no such file)',
                 'node4: /l.json: not valid JSON (x)',
                 'node5: no lease, but its endpoint store holds 2 addresses (10.244.4.2, 10.244.4.3): its CIDR is unknown',
                 'ledger_rebuild_allow_missing=true'):
        assert part in msg, msg
    assert 'node6' not in msg and 'node1' not in msg
    leases, usage, warnings = ipam_plan.rebuild_inputs(model, reports, allow_missing=True)
    assert sorted(leases) == ['node1']
    assert len(warnings) == 6 and any(w.startswith('node6: no lease (never provisioned)') for w in warnings)
    assert any(w.startswith('node1: /e.json: not valid JSON (y); its pools_used is not rebuilt') for w in warnings)
    assert any(w.startswith('node5: no lease') and w.endswith('left out (allow_missing)') for w in warnings)


def test_plan_rebuild_missing_torn_valid():
    model = make_model(names(2))
    doc = ipam_plan.plan_cluster(model, empty_doc(), names(2))[0]
    rebuilt = ipam_plan.rebuild_from_leases(model, dict((n, ipam_lease.node_lease(doc, n)) for n in names(2)))
    assert ipam_plan.plan_rebuild({'state': 'missing', 'doc': None, 'error': None}, rebuilt) is rebuilt
    assert ipam_plan.plan_rebuild({'state': 'torn', 'doc': None, 'error': 'x'}, rebuilt) is rebuilt
    # a readable ledger that holds what the leases hold (serial aside) is left alone
    same = dict(doc, serial=9)
    assert ipam_plan.plan_rebuild({'state': 'valid', 'doc': same, 'error': None}, rebuilt) is None
    other = copy.deepcopy(doc)
    other['nodes']['node2']['cidrs']['ipv4'] = ['10.244.7.0/24']
    other['serial'] = 9
    other['identities'] = {'k': 1}
    with pytest.raises(IpamError, match=r'differs from the nodes\' leases for node2; .*ledger_rebuild_force=true'):
        ipam_plan.plan_rebuild({'state': 'valid', 'doc': other, 'error': None}, rebuilt)
    # the ledger being replaced seeds the rebuild: its identities stay
    seeded = ipam_plan.rebuild_from_leases(model, dict((n, ipam_lease.node_lease(doc, n)) for n in names(2)), seed=other)
    forced = ipam_plan.plan_rebuild({'state': 'valid', 'doc': other, 'error': None}, seeded, force=True)
    assert forced['nodes'] == rebuilt['nodes'] and forced['serial'] == 10 and forced['identities'] == {'k': 1}
    with pytest.raises(IpamError, match='no node holds a lease'):
        ipam_plan.plan_rebuild({'state': 'missing', 'doc': None, 'error': None}, dict(rebuilt, nodes={}))


def test_lease_problem_and_disagreement():
    good = {'cluster': 'lab', 'node': 'node1', 'ip': '192.168.50.10', 'allocated_at': 3,
            'cidrs': {'ipv4': ['10.244.0.0/24'], 'ipv6': []}, 'pools': {}}
    assert ipam_lease.lease_problem(good) is None
    assert ipam_lease.lease_problem([1]) == 'not a lease (a JSON list, not an object)'
    assert ipam_lease.lease_problem({'node': 'x'}) == 'not a lease (no cidrs key)'
    assert ipam_lease.lease_problem({'node': 'x', 'cidrs': []}) == 'not a lease (cidrs and pools must be objects)'
    assert ipam_lease.lease_disagreement(good, dict(good, mode='cluster-pool')) is None   # same claims
    moved = dict(good, cidrs={'ipv4': ['10.244.5.0/24'], 'ipv6': []})
    assert ipam_lease.lease_disagreement(moved, good) == 'CIDRs 10.244.5.0/24 -> 10.244.0.0/24'
    assert ipam_lease.lease_disagreement(dict(good, node='node9'), good) == 'node node9 -> node1'
    assert ipam_lease.lease_disagreement(dict(moved, allocated_at=2), dict(good, allocated_at=3)) is None  # reallocated
    assert ipam_lease.lease_disagreement(None, good) is None and ipam_lease.lease_disagreement([1], good) is None


def test_plan_lease():
    want = {'node': 'node1', 'cidrs': {'ipv4': ['10.244.0.0/24']}}
    p = '/v/lease.json'
    assert ipam_lease.plan_lease(want, {'lease': want}, p) == []
    assert ipam_lease.plan_lease(want, {'lease': None}, p) == [{'action': 'write', 'path': p}]
    assert ipam_lease.plan_lease(want, {'lease': None, 'unreadable': 'bad'}, p, aside=p + '.corrupt-T') == [
        {'action': 'keep_aside', 'path': p, 'to': p + '.corrupt-T', 'error': 'bad'}, {'action': 'write', 'path': p}]
    assert ipam_lease.plan_lease(None, {'lease': None, 'unreadable': 'bad'}, p) == [{'action': 'remove', 'path': p}]
    assert ipam_lease.plan_lease(None, {'lease': None}, p) == []


def test_utilization():
    model = make_model(names(3), v4=('10.244.0.0/22',), mask=24)
    doc = ipam_plan.plan_cluster(model, empty_doc(), names(3))[0]
    doc = copy.deepcopy(doc)
    doc['nodes']['node1']['pools_used'] = {'default': 100}
    report = ipam_plan.utilization(model, doc)
    row = report['pools']['default']['ipv4']
    assert row['blocks'] == {'size': 4, 'used': 3, 'free': 1, 'percent': 75.0}
    assert row['addresses'] == {'size': 1024, 'used': 768, 'free': 256, 'percent': 75.0}
    assert row['endpoints'] == {'size': 3 * 253, 'used': 100, 'free': 3 * 253 - 100, 'percent': 13.2}
    n1 = report['nodes']['node1']
    assert n1['in_inventory'] is True
    assert n1['pools']['default']['ipv4'] == {'cidrs': ['10.244.0.0/24'], 'addresses': 256,
                                              'endpoints': {'size': 253, 'used': 100, 'free': 153,
                                                            'percent': 39.5}}


def test_utilization_multi_pool():
    model = make_model(names(2), mode='multi-pool', pools=POOLS, pre={'default': 8, 'gpu': 1})
    doc = ipam_plan.plan_cluster(model, empty_doc(), names(2))[0]
    report = ipam_plan.utilization(model, doc)
    assert report['pools']['gpu']['ipv4']['blocks'] == {'size': 16, 'used': 2, 'free': 14, 'percent': 12.5}
    assert report['pools']['batch']['ipv4']['blocks']['used'] == 0
    assert sorted(report['nodes']['node2']['pools']) == ['default', 'gpu']


# ------------------------------------------------------------------------------------------
# node side: endpoint IPs


def test_router_ip():
    assert ipam_cidr.router_ip('10.244.1.0/24') == '10.244.1.1'
    assert ipam_cidr.router_ip('fd00::100/120') == 'fd00::101'
    assert ipam_cidr.router_ip('10.1.0.77/32') is None


def test_endpoint_ip_allocation_and_release():
    store = ipam_endpoints.empty_store()
    cidrs = ['10.244.1.0/24']
    s1, ip1 = ipam_endpoints.plan_endpoint_ip(store, cidrs, 'default/a', 'ipv4')
    assert ip1 == '10.244.1.2'                          # .0 network, .1 router
    assert store == ipam_endpoints.empty_store()                  # not mutated
    s2, ip2 = ipam_endpoints.plan_endpoint_ip(s1, cidrs, 'default/b', 'ipv4')
    assert ip2 == '10.244.1.3'
    same, ip = ipam_endpoints.plan_endpoint_ip(s2, cidrs, 'default/a', 'ipv4')   # idempotent
    assert same is s2 and ip == ip1
    s3, gone = ipam_endpoints.release_endpoint_ip(s2, 'default/a')
    assert gone == ['10.244.1.2'] and '10.244.1.2' not in s3['used']
    s4, gone = ipam_endpoints.release_endpoint_ip(s3, 'default/a')                # idempotent
    assert s4 is s3 and gone == []
    s5, ip5 = ipam_endpoints.plan_endpoint_ip(s4, cidrs, 'default/c', 'ipv4')
    assert ip5 == '10.244.1.2'                                           # lowest free again
    assert s5['used'][ip5] == {'owner': 'default/c'}


def test_endpoint_ip_outside_a_changed_lease_is_reallocated():
    s1, ip1 = ipam_endpoints.plan_endpoint_ip(ipam_endpoints.empty_store(), ['10.244.1.0/24'], 'podnet-health', 'ipv4')
    s1, other = ipam_endpoints.plan_endpoint_ip(s1, ['10.244.1.0/24'], 'default/b', 'ipv4')
    # The node's lease moved to another CIDR (a new ledger): the stale address is dropped.
    s2, ip2 = ipam_endpoints.plan_endpoint_ip(s1, ['10.98.0.0/30'], 'podnet-health', 'ipv4')
    assert (ip1, ip2) == ('10.244.1.2', '10.98.0.2')
    assert s2['used'] == {'10.98.0.2': {'owner': 'podnet-health'}, other: {'owner': 'default/b'}}
    same, ip = ipam_endpoints.plan_endpoint_ip(s2, ['10.98.0.0/30'], 'podnet-health', 'ipv4')
    assert same is s2 and ip == ip2


def test_endpoint_ip_dual_stack_pool_and_crd_pool():
    store = ipam_endpoints.empty_store()
    cidrs = ['10.244.1.0/24', 'fd00::100/120']
    store, v4 = ipam_endpoints.plan_endpoint_ip(store, cidrs, 'ep1', 'ipv4', pool='default')
    store, v6 = ipam_endpoints.plan_endpoint_ip(store, cidrs, 'ep1', 'ipv6', pool='default')
    assert (v4, v6) == ('10.244.1.2', 'fd00::102')
    assert store['used'][v6] == {'owner': 'ep1', 'pool': 'default'}
    store, gone = ipam_endpoints.release_endpoint_ip(store, 'ep1', family='ipv6')
    assert gone == ['fd00::102'] and v4 in store['used']
    crd_pool = {'10.1.0.77': {}, '10.1.0.76': {}}                        # single IPs are all usable
    s, ip = ipam_endpoints.plan_endpoint_ip(ipam_endpoints.empty_store(), crd_pool, 'ep9', 'ipv4')
    assert ip == '10.1.0.76'


def test_endpoint_ip_exhaustion():
    store = ipam_endpoints.empty_store()
    cidrs = ['10.244.1.0/29']                            # 8 - network - router - broadcast = 5
    got = []
    for i in range(5):
        store, ip = ipam_endpoints.plan_endpoint_ip(store, cidrs, 'ep%d' % i, 'ipv4', pool='default')
        got.append(ip)
    assert got == ['10.244.1.%d' % i for i in range(2, 7)]
    with pytest.raises(IpamError) as e:
        ipam_endpoints.plan_endpoint_ip(store, cidrs, 'ep5', 'ipv4', pool='default')
    assert str(e.value) == ("pool 'default' (10.244.1.0/29: 5 endpoint addresses) is exhausted: 5 of 5 "
                            "in use; cannot allocate an ipv4 address for endpoint ep5")
    with pytest.raises(IpamError, match='no ipv6 CIDRs'):
        ipam_endpoints.plan_endpoint_ip(store, cidrs, 'ep5', 'ipv6')


def test_big_cluster_is_disjoint():
    model = make_model(names(2000), v4=('10.0.0.0/8',), v6=['fd00::/104'])
    doc = ipam_plan.plan_cluster(model, empty_doc(), names(2000))[0]
    cidrs = all_cidrs(doc)
    assert len(cidrs) == len(set(cidrs)) == 4000
    assert_disjoint(cidrs)


def test_cluster_pod_cidrs_is_every_cidr_of_the_map_once_sorted():
    nodes = {'node2': {'node_ip': '192.168.50.12', 'pod_cidrs': {'ipv4': ['10.244.9.0/24', '10.244.10.0/24'], 'ipv6': []}},
             'node1': {'node_ip': '192.168.50.11', 'pod_cidrs': {'ipv4': ['10.244.10.0/24'], 'ipv6': ['fd00::/120']}},
             'node3': {'node_ip': '192.168.50.13', 'pod_cidrs': {'ipv4': [], 'ipv6': []}}}
    # sorted as text, as the routing role's Jinja sort did when each node gathered them itself
    assert ipam_lease.cluster_pod_cidrs(nodes) == {'ipv4': ['10.244.10.0/24', '10.244.9.0/24'], 'ipv6': ['fd00::/120']}
    assert ipam_lease.cluster_pod_cidrs({}) == {'ipv4': [], 'ipv6': []}
