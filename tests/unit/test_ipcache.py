"""plugins/plugin_utils/ipcache.py: one node's cluster-wide ipcache, from the ledger alone."""
from ansible_collections.podnet.fabric.plugins.plugin_utils import identity as ident
from ansible_collections.podnet.fabric.plugins.plugin_utils import ipcache

CIDR_ID = (1 << 24) | 1


def ledger_doc():
    return {
        'version': 1, 'cluster': 'lab', 'serial': 4,
        'identities': {'256': {'labels': ['app=web']}, '257': {'labels': ['app=db']},
                       str(CIDR_ID): {'cidr': '192.0.2.0/24'}},
        'nodes': {
            'node1': {'ip': '192.168.50.11', 'cidrs': {'ipv4': ['10.244.1.0/24'], 'ipv6': ['fd00::100/120']},
                      'endpoints': {'default/web-1': {'ep_id': 1, 'identity': 256, 'ips': ['10.244.1.2', 'fd00::102']},
                                    'podnet-health': {'ep_id': 2, 'identity': 4, 'ips': ['10.244.1.3']}}},
            'node2': {'ip': '192.168.50.12', 'cidrs': {'ipv4': ['10.244.2.0/24'], 'ipv6': []},
                      'endpoints': {'default/db-0': {'ep_id': 1, 'identity': 257, 'ips': ['10.244.2.2']}}},
            # a node of another AWX slice, and one whose entry predates endpoint records
            'node3': {'ip': '192.168.50.13', 'cidrs': {'ipv4': ['10.244.3.0/24'], 'ipv6': []}},
        },
    }


def by_prefix(entries):
    return dict((e['prefix'], e) for e in entries)


def entry(prefix, identity, tunnel_endpoint=None, local=False):
    return {'prefix': prefix, 'identity': identity, 'tunnel_endpoint': tunnel_endpoint, 'local': local}


def test_tunnel_mode_node1():
    entries, warnings = ipcache.node_ipcache(ledger_doc(), 'node1', tunnel=True)
    assert warnings == []
    assert entries == [
        entry('0.0.0.0/0', ident.WORLD),
        entry('10.244.1.1/32', ident.HOST),                                    # own router IP
        entry('10.244.1.2/32', 256, local=True),
        entry('10.244.1.3/32', ident.HEALTH, local=True),
        entry('10.244.2.1/32', ident.REMOTE_NODE, '192.168.50.12'),            # behind the tunnel
        entry('10.244.2.2/32', 257, '192.168.50.12'),
        entry('10.244.3.1/32', ident.REMOTE_NODE, '192.168.50.13'),
        entry('192.0.2.0/24', CIDR_ID),
        entry('192.168.50.11/32', ident.HOST),
        entry('192.168.50.12/32', ident.REMOTE_NODE),                          # the underlay: never tunneled
        entry('192.168.50.13/32', ident.REMOTE_NODE),
        entry('::/0', ident.WORLD),
        entry('fd00::101/128', ident.HOST),
        entry('fd00::102/128', 256, local=True),
    ]


def test_node2_sees_the_same_addresses_from_its_side():
    one = by_prefix(ipcache.node_ipcache(ledger_doc(), 'node1', tunnel=True)[0])
    two = by_prefix(ipcache.node_ipcache(ledger_doc(), 'node2', tunnel=True)[0])
    assert sorted(one) == sorted(two)
    assert two['192.168.50.12/32'] == entry('192.168.50.12/32', ident.HOST)
    assert two['192.168.50.11/32'] == entry('192.168.50.11/32', ident.REMOTE_NODE)
    assert two['10.244.2.2/32'] == entry('10.244.2.2/32', 257, local=True)
    assert two['10.244.1.2/32'] == entry('10.244.1.2/32', 256, '192.168.50.11')
    assert two['fd00::102/128'] == entry('fd00::102/128', 256, '192.168.50.11')
    assert two['10.244.1.3/32']['identity'] == ident.HEALTH and not two['10.244.1.3/32']['local']


def test_native_mode_has_no_tunnel_endpoints():
    entries, _w = ipcache.node_ipcache(ledger_doc(), 'node1', tunnel=False)
    assert all(e['tunnel_endpoint'] is None for e in entries)
    assert by_prefix(entries)['10.244.2.2/32'] == entry('10.244.2.2/32', 257)
    assert by_prefix(entries)['10.244.1.2/32']['local']


def test_a_node_outside_the_ledger_still_gets_the_cluster():
    # a node the ledger does not hold (yet): every address is remote to it
    entries, _w = ipcache.node_ipcache(ledger_doc(), 'node9', tunnel=True)
    assert not any(e['local'] for e in entries)
    assert not any(e['identity'] == ident.HOST for e in entries)


def test_an_old_ledger_without_records_has_nodes_and_world_only():
    doc = ledger_doc()
    for n in doc['nodes'].values():
        n.pop('endpoints', None)
    doc['identities'] = {}
    entries, _w = ipcache.node_ipcache(doc, 'node1', tunnel=True)
    assert set(e['identity'] for e in entries) == {ident.WORLD, ident.HOST, ident.REMOTE_NODE}
    assert len(entries) == 2 + 3 + 3 + 1      # world x2, node IPs, router IPs (v4), node1's v6 router IP


def test_an_address_two_records_claim_is_kept_once_and_named():
    doc = ledger_doc()
    doc['nodes']['node2']['endpoints']['default/stale'] = {'ep_id': 2, 'identity': 257, 'ips': ['10.244.1.2']}
    entries, warnings = ipcache.node_ipcache(doc, 'node2', tunnel=True)
    assert by_prefix(entries)['10.244.1.2/32'] == entry('10.244.1.2/32', 256, '192.168.50.11')
    assert warnings == ["ipcache: 10.244.1.2/32 is node1's endpoint default/web-1 and node2's endpoint default/stale; "
                        "keeping the first"]


def test_multi_pool_blocks_have_router_ips_too():
    doc = ledger_doc()
    doc['nodes']['node2']['pools'] = {'gpu': {'ipv4': ['10.20.0.0/28'], 'ipv6': []}}
    rows, _w = ipcache.cluster_entries(doc, tunnel=True)
    entries = ipcache.node_entries(rows, doc, 'node1')
    assert by_prefix(entries)['10.20.0.1/32'] == entry('10.20.0.1/32', ident.REMOTE_NODE, '192.168.50.12')
