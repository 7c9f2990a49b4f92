"""plugins/plugin_utils/policy.py: podnet_policy compiled into the contract's policy entries, and
the verdicts they give (the datapath's walk over the entries, held to the rules read directly)."""
import random
import time

import pytest

from ansible_collections.podnet.fabric.plugins.plugin_utils import identity as ident
from ansible_collections.podnet.fabric.plugins.plugin_utils import inventory
from ansible_collections.podnet.fabric.plugins.plugin_utils import policy

WEB, CLIENT, DB, TEST_CLIENT = 256, 257, 258, 259
LOCAL = {WEB: {'app': 'web'}, CLIENT: {'app': 'client'}, DB: {'app': 'db', 'tier': 'data'},
         TEST_CLIENT: {'app': 'client', 'env': 'test'}}
NET8, NET16, DOC = (1 << 24) | 1, (1 << 24) | 2, (1 << 24) | 3
CIDRS = {NET8: '10.0.0.0/8', NET16: '10.1.0.0/16', DOC: '192.0.2.0/24'}


def rules_of(*rules):
    """The rules as validation normalizes them (every key filled in)."""
    model = inventory.validate({'podnet_policy': {'rules': list(rules)}}, {'n1': {'podnet_node_ip': '192.168.50.11'}})
    return model['policy']['rules']


PEERS = policy.Peers(LOCAL, CIDRS)


def make(rules):
    return policy.Compiled(rules, PEERS)


def compiled(*rules):
    return make(rules_of(*rules))


def both(rules, src, dst, protocol='tcp', port=None, icmp_type=None):
    """verdict() over the compiled entries, checked against model_verdict() over the rules."""
    got = policy.verdict(make(rules), src, dst, protocol, port, icmp_type)
    assert got == policy.model_verdict(rules, PEERS, src, dst, protocol, port, icmp_type)
    return got


def web_ingress(*items, **extra):
    return dict({'endpoint_selector': {'app': 'web'}, 'ingress': list(items)}, **extra)


def test_unselected_endpoints_allow_everything():
    assert both([], CLIENT, WEB, 'tcp', 80) == ('allow', None)
    assert both([], 'world', WEB, 'udp', 53) == ('allow', None)
    c = compiled(web_ingress({'from_endpoints': [{'app': 'client'}]}))
    assert policy.enforcement(c, DB) == {'enforce_ingress': False, 'enforce_egress': False}
    assert policy.endpoint_entries(c, 9, DB) == []


def test_selected_direction_is_default_deny():
    rules = rules_of(web_ingress({'from_endpoints': [{'app': 'client'}], 'to_ports': [{'port': 80, 'protocol': 'tcp'}]}))
    assert both(rules, CLIENT, WEB, 'tcp', 80) == ('allow', 1)
    assert both(rules, CLIENT, WEB, 'tcp', 81) == ('deny', 'default deny')
    assert both(rules, CLIENT, WEB, 'udp', 80) == ('deny', 'default deny')
    assert both(rules, DB, WEB, 'tcp', 80) == ('deny', 'default deny')
    assert both(rules, TEST_CLIENT, WEB, 'tcp', 80) == ('allow', 1)    # matchLabels: a superset matches
    # the other direction is not enforced: web may open connections (replies are conntrack's)
    assert both(rules, WEB, CLIENT, 'tcp', 80) == ('allow', None)
    c = make(rules)
    assert policy.enforcement(c, WEB) == {'enforce_ingress': True, 'enforce_egress': False}
    assert policy.endpoint_entries(c, 7, WEB) == [
        {'ep_id': 7, 'direction': 'ingress', 'identity': CLIENT, 'protocol': 'tcp', 'port': 80, 'verdict': 'allow', 'rule': 1},
        {'ep_id': 7, 'direction': 'ingress', 'identity': TEST_CLIENT, 'protocol': 'tcp', 'port': 80, 'verdict': 'allow',
         'rule': 1}]


def test_an_empty_item_allows_nothing_but_selects():
    rules = rules_of(web_ingress({}))
    assert both(rules, CLIENT, WEB, 'tcp', 80) == ('deny', 'default deny')
    assert policy.endpoint_entries(make(rules), 1, WEB) == []


def test_ports_without_peers_allow_every_peer():
    rules = rules_of(web_ingress({'to_ports': [{'port': 443, 'protocol': 'tcp'}]}))
    for peer in (CLIENT, 'world', 'host', '192.0.2.9', 'remote-node'):
        assert both(rules, peer, WEB, 'tcp', 443) == ('allow', 1)
        assert both(rules, peer, WEB, 'tcp', 80) == ('deny', 'default deny')
    entries = policy.endpoint_entries(make(rules), 1, WEB)
    assert [(e['identity'], e['protocol'], e['port']) for e in entries] == [(0, 'tcp', 443)]


def test_deny_beats_allow_and_a_narrower_allow_inside_a_wider_deny_is_emitted_as_deny():
    rules = rules_of(
        web_ingress({'from_endpoints': [{'app': 'client'}], 'to_ports': [{'port': 1, 'end_port': 1000, 'protocol': 'tcp'}]},
                    ingress_deny=[{'from_endpoints': [{'app': 'client'}],
                                   'to_ports': [{'port': 1, 'end_port': 1000, 'protocol': 'tcp'}]}]),
        web_ingress({'from_endpoints': [{'app': 'client'}], 'to_ports': [{'port': 80, 'protocol': 'tcp'}]}))
    assert both(rules, CLIENT, WEB, 'tcp', 80) == ('deny', 1)
    assert both(rules, CLIENT, WEB, 'tcp', 1001) == ('deny', 'default deny')
    c = make(rules)
    mine = [e for e in policy.endpoint_entries(c, 1, WEB) if e['identity'] == CLIENT]
    assert mine == [{'ep_id': 1, 'direction': 'ingress', 'identity': CLIENT, 'protocol': 'tcp', 'port': 1, 'end_port': 1000,
                     'verdict': 'deny', 'rule': 1}]


def test_an_any_protocol_deny_covers_a_port_allow_of_the_same_peer():
    rules = rules_of(web_ingress({'from_endpoints': [{'app': 'client'}], 'to_ports': [{'port': 80, 'protocol': 'tcp'}]}),
                     web_ingress(ingress_deny=[{'from_endpoints': [{'app': 'client', 'env': 'test'}]}]))
    assert both(rules, TEST_CLIENT, WEB, 'tcp', 80) == ('deny', 2)
    assert both(rules, CLIENT, WEB, 'tcp', 80) == ('allow', 1)
    entries = [e for e in policy.endpoint_entries(make(rules), 1, WEB) if e['identity'] == TEST_CLIENT]
    # no narrower entry says otherwise: the allowed port folds into the deny, which then needs no entry of its own
    assert [(e['protocol'], e.get('port'), e['verdict'], e['rule']) for e in entries] == [('any', None, 'deny', 2)]


def test_a_wildcard_deny_wins_over_an_exact_allow():
    rules = rules_of(web_ingress({'from_endpoints': [{'app': 'client'}]},
                                 ingress_deny=[{'from_entities': ['all'], 'to_ports': [{'port': 22, 'protocol': 'tcp'}]}]))
    assert both(rules, CLIENT, WEB, 'tcp', 22) == ('deny', 1)
    assert both(rules, CLIENT, WEB, 'tcp', 23) == ('allow', 1)
    assert both(rules, 'world', WEB, 'tcp', 22) == ('deny', 1)
    entries = policy.endpoint_entries(make(rules), 1, WEB)
    assert [(e['identity'], e['protocol'], e.get('port'), e['verdict']) for e in entries] == [
        (0, 'tcp', 22, 'deny'), (CLIENT, 'any', None, 'allow'), (TEST_CLIENT, 'any', None, 'allow')]


def test_when_both_lookups_deny_the_lower_rule_is_reported():
    rules = rules_of(web_ingress(ingress_deny=[{'from_entities': ['all'], 'to_ports': [{'port': 22, 'protocol': 'tcp'}]}]),
                     web_ingress(ingress_deny=[{'from_endpoints': [{'app': 'client'}]}]))
    assert both(rules, CLIENT, WEB, 'tcp', 22) == ('deny', 1)
    rules = list(reversed(rules))
    assert both(rules, CLIENT, WEB, 'tcp', 22) == ('deny', 1)


def test_port_ranges():
    rules = rules_of(web_ingress({'from_endpoints': [{'app': 'client'}], 'to_ports': [{'port': 8000, 'end_port': 8099, 'protocol': 'tcp'}]},
                                 ingress_deny=[{'from_endpoints': [{'app': 'client'}],
                                                'to_ports': [{'port': 8050, 'end_port': 8060}]}]))
    for port, want in ((7999, ('deny', 'default deny')), (8000, ('allow', 1)), (8049, ('allow', 1)), (8050, ('deny', 1)),
                       (8060, ('deny', 1)), (8061, ('allow', 1)), (8099, ('allow', 1)), (8100, ('deny', 'default deny'))):
        assert both(rules, CLIENT, WEB, 'tcp', port) == want, port
    assert both(rules, CLIENT, WEB, 'udp', 8055) == ('deny', 1)      # protocol any: tcp and udp
    assert both(rules, CLIENT, WEB, 'udp', 8000) == ('deny', 'default deny')
    entries = [e for e in policy.endpoint_entries(make(rules), 1, WEB) if e['identity'] == CLIENT]
    assert [(e['protocol'], e['port'], e.get('end_port'), e['verdict']) for e in entries] == [
        ('tcp', 8000, 8049, 'allow'), ('tcp', 8050, 8060, 'deny'), ('tcp', 8061, 8099, 'allow'),
        ('udp', 8050, 8060, 'deny')]


def test_icmp():
    rules = rules_of(web_ingress({'from_endpoints': [{'app': 'client'}], 'icmps': [{'type': 8}, {'type': 128, 'family': 6}]}))
    assert both(rules, CLIENT, WEB, 'icmp', icmp_type=8) == ('allow', 1)
    assert both(rules, CLIENT, WEB, 'icmp', icmp_type=0) == ('deny', 'default deny')
    assert both(rules, CLIENT, WEB, 'icmpv6', icmp_type=128) == ('allow', 1)
    assert both(rules, CLIENT, WEB, 'icmpv6', icmp_type=8) == ('deny', 'default deny')
    assert both(rules, CLIENT, WEB, 'tcp', 8) == ('deny', 'default deny')
    entries = policy.endpoint_entries(make(rules), 3, WEB)
    assert entries[0] == {'ep_id': 3, 'direction': 'ingress', 'identity': CLIENT, 'protocol': 'icmp', 'icmp_type': 8,
                          'verdict': 'allow', 'rule': 1}


def test_entities():
    rules = rules_of(web_ingress({'from_entities': ['host']}), web_ingress({'from_entities': ['remote-node', 'health']}))
    assert both(rules, 'host', WEB, 'tcp', 80) == ('allow', 1)
    assert both(rules, ident.REMOTE_NODE, WEB, 'tcp', 80) == ('allow', 2)
    assert both(rules, 'health', WEB, 'tcp', 80) == ('allow', 2)
    assert both(rules, 'world', WEB, 'tcp', 80) == ('deny', 'default deny')
    assert both(rules, CLIENT, WEB, 'tcp', 80) == ('deny', 'default deny')
    cluster = rules_of(web_ingress({'from_entities': ['cluster']}))
    for peer in (CLIENT, DB, 'host', 'remote-node', 'health'):
        assert both(cluster, peer, WEB, 'tcp', 80) == ('allow', 1), peer
    for peer in ('world', '192.0.2.1', '10.1.2.3'):
        assert both(cluster, peer, WEB, 'tcp', 80) == ('deny', 'default deny'), peer
    world = rules_of(web_ingress({'from_entities': ['world']}))
    for peer in ('world', '192.0.2.1', '10.1.2.3', '203.0.113.1'):     # CIDR identities are world too
        assert both(world, peer, WEB, 'tcp', 80) == ('allow', 1), peer
    assert both(world, CLIENT, WEB, 'tcp', 80) == ('deny', 'default deny')
    everything = rules_of(web_ingress({'from_entities': ['all']}))
    assert [e['identity'] for e in policy.endpoint_entries(make(everything), 1, WEB)] == [0]
    for peer in (CLIENT, 'world', 'host', '10.9.9.9'):
        assert both(everything, peer, WEB, 'udp', 1) == ('allow', 1)


def test_cidrs():
    rules = rules_of(web_ingress({'from_cidrs': ['10.0.0.0/8']}),
                     web_ingress(ingress_deny=[{'from_cidrs': ['10.1.0.0/16'], 'to_ports': [{'port': 22}]}]))
    assert both(rules, '10.200.0.1', WEB, 'tcp', 22) == ('allow', 1)
    assert both(rules, '10.1.2.3', WEB, 'tcp', 80) == ('allow', 1)     # the /16's identity is inside the /8
    assert both(rules, '10.1.2.3', WEB, 'tcp', 22) == ('deny', 2)
    assert both(rules, '192.0.2.1', WEB, 'tcp', 80) == ('deny', 'default deny')
    assert both(rules, '203.0.113.1', WEB, 'tcp', 80) == ('deny', 'default deny')
    # an endpoint is never a CIDR peer (its own identity is a longer ipcache prefix)
    assert both(rules, CLIENT, WEB, 'tcp', 80) == ('deny', 'default deny')
    zero = rules_of(web_ingress({'from_cidrs': ['0.0.0.0/0']}))
    assert both(zero, 'world', WEB, 'tcp', 80) == ('allow', 1)
    assert both(zero, '192.0.2.1', WEB, 'tcp', 80) == ('allow', 1)
    assert policy.rule_cidrs(rules + zero) == {'10.0.0.0/8', '10.1.0.0/16'}


def test_egress():
    rules = rules_of({'endpoint_selector': {'app': 'web'},
                      'egress': [{'to_endpoints': [{'tier': 'data'}], 'to_ports': [{'port': 5432, 'protocol': 'tcp'}]},
                                 {'to_ports': [{'port': 53, 'protocol': 'udp'}]}],
                      'egress_deny': [{'to_cidrs': ['192.0.2.0/24']}]})
    assert both(rules, WEB, DB, 'tcp', 5432) == ('allow', 1)
    assert both(rules, WEB, DB, 'tcp', 5433) == ('deny', 'default deny')
    assert both(rules, WEB, '192.0.2.53', 'udp', 53) == ('deny', 1)
    assert both(rules, WEB, '198.51.100.53', 'udp', 53) == ('allow', 1)
    assert both(rules, WEB, 'world', 'tcp', 443) == ('deny', 'default deny')
    # a connection needs the source's egress and the destination's ingress
    both_ways = rules + rules_of({'endpoint_selector': {'app': 'db'}, 'ingress': [{'from_endpoints': [{'app': 'client'}]}]})
    assert both(both_ways, WEB, DB, 'tcp', 5432) == ('deny', 'default deny')
    assert both(both_ways, CLIENT, DB, 'tcp', 5432) == ('allow', 2)


def test_the_health_endpoint_is_an_endpoint_an_empty_selector_selects():
    rules = rules_of({'endpoint_selector': {}, 'ingress': [{'from_entities': ['remote-node', 'host']}]})
    assert both(rules, 'remote-node', 'health', 'tcp', 4240) == ('allow', 1)
    assert both(rules, CLIENT, 'health', 'tcp', 4240) == ('deny', 'default deny')
    assert both(rules, CLIENT, WEB, 'tcp', 80) == ('deny', 'default deny')


def test_a_label_change_moves_the_endpoint_and_the_policy_follows():
    doc = {'version': 1, 'cluster': 'lab', 'serial': 0, 'identities': {},
           'nodes': {'node1': {'ip': '192.168.50.11', 'cidrs': {'ipv4': ['10.244.1.0/24']}}}}
    flt = ident.LabelFilter()
    used = {'10.244.1.2': {'owner': 'default/web-1'}, '10.244.1.3': {'owner': 'default/client-1'}}
    rules = rules_of(web_ingress({'from_endpoints': [{'app': 'client'}], 'to_ports': [{'port': 80, 'protocol': 'tcp'}]}))

    def state(client_labels):
        desired = {'default/web-1': ident.identity_labels({'app': 'web'}, 'default', 'lab', flt),
                   'default/client-1': ident.identity_labels(client_labels, 'default', 'lab', flt)}
        ident.record_endpoints(doc, 'node1', used, 0, 'lab', flt, desired)
        recs = ident.endpoint_records(doc['nodes']['node1'])
        table = ident.Table(doc, 0)
        return policy.compile_policy(rules, table, only=ident.used_identities(doc)), recs
    c, recs = state({'app': 'client'})
    web, client = recs['default/web-1']['identity'], recs['default/client-1']['identity']
    assert policy.verdict(c, client, web, 'tcp', 80) == ('allow', 1)
    c, recs = state({'app': 'batch'})
    moved = recs['default/client-1']['identity']
    assert moved != client and recs['default/client-1']['ep_id'] == 1
    assert policy.verdict(c, moved, recs['default/web-1']['identity'], 'tcp', 80) == ('deny', 'default deny')
    # web's entries no longer name the client's old identity
    assert all(e['identity'] != client for e in policy.endpoint_entries(c, 2, recs['default/web-1']['identity']))


def test_unknown_protocol_is_an_error():
    with pytest.raises(ValueError):
        policy.verdict(compiled(web_ingress({})), CLIENT, WEB, 'sctp', 1)


# ---------------------------------------------------------------------------------------------
# the compiled entries agree with the rules on random policies


def _random_rule(rng):
    def peers(side):
        item = {}
        if rng.random() < 0.5:
            item[side + '_endpoints'] = [rng.choice([{'app': 'client'}, {'app': 'web'}, {'tier': 'data'}, {}, {'env': 'test'}])]
        if rng.random() < 0.3:
            item[side + '_entities'] = [rng.choice(inventory.ENTITIES)]
        if rng.random() < 0.3:
            item[side + '_cidrs'] = [rng.choice(['10.0.0.0/8', '10.1.0.0/16', '192.0.2.0/24', '0.0.0.0/0'])]
        if rng.random() < 0.6:
            ports = []
            for _n in range(rng.randint(1, 3)):
                lo = rng.randint(1, 30)
                ports.append({'port': lo, 'end_port': lo + rng.choice([0, 0, 3, 10]), 'protocol': rng.choice(['tcp', 'udp', 'any'])})
            item['to_ports'] = ports
        if rng.random() < 0.2:
            item['icmps'] = [{'type': rng.choice([0, 8]), 'family': 4}]
        return item
    rule = {'endpoint_selector': rng.choice([{}, {'app': 'web'}, {'app': 'client'}, {'tier': 'data'}])}
    for key, side in (('ingress', 'from'), ('egress', 'to'), ('ingress_deny', 'from'), ('egress_deny', 'to')):
        if rng.random() < 0.4:
            rule[key] = [peers(side) for _n in range(rng.randint(1, 2))]
    if len(rule) == 1:
        rule['ingress'] = [peers('from')]
    return rule


def test_compiled_entries_give_the_rules_verdicts():
    rng = random.Random(10)
    peers = [WEB, CLIENT, DB, TEST_CLIENT, 'host', 'remote-node', 'health', 'world', '10.1.2.3', '10.9.0.1', '192.0.2.5']
    probes = [('tcp', p, None) for p in (1, 2, 5, 9, 13, 25, 31, 40)] + [('udp', p, None) for p in (3, 12, 33)] + \
             [('icmp', None, 8), ('icmp', None, 0), ('icmpv6', None, 8)]
    checked = 0
    for _case in range(60):
        rules = rules_of(*[_random_rule(rng) for _n in range(rng.randint(1, 5))])
        c = make(rules)
        for src in peers:
            for dst in peers:
                for proto, port, icmp_type in probes:
                    got = policy.verdict(c, src, dst, proto, port, icmp_type)
                    want = policy.model_verdict(rules, PEERS, src, dst, proto, port, icmp_type)
                    assert got == want, (rules, src, dst, proto, port, icmp_type)
                    checked += 1
    assert checked > 100000


def test_entries_are_disjoint_per_protocol():
    rng = random.Random(3)
    for _case in range(100):
        rules = rules_of(*[_random_rule(rng) for _n in range(4)])
        c = make(rules)
        for subject in list(LOCAL) + [ident.HEALTH]:
            seen = {}
            for e in policy.endpoint_entries(c, 1, subject):
                key = (e['direction'], e['identity'], e['protocol'])
                lo = e.get('port', e.get('icmp_type', 0))
                hi = e.get('end_port', lo)
                for other_lo, other_hi in seen.get(key, []):
                    assert hi < other_lo or lo > other_hi, e
                seen.setdefault(key, []).append((lo, hi))


# ---------------------------------------------------------------------------------------------
# scale


def scale_case(n_rules=1000, n_endpoints=1000, apps=1000):
    """n_endpoints endpoints of `apps` apps (one identity each) in 10 namespaces; n_rules rules,
    each selecting one app, allowing two other apps on a port range and a CIDR, denying one port."""
    local = dict((256 + i, {'app': 'app%d' % (i % apps), 'io.kubernetes.pod.namespace': 'ns%d' % (i % 10)})
                 for i in range(n_endpoints))
    cidrs = dict(((1 << 24) | (i + 1), '10.%d.0.0/16' % i) for i in range(50))
    raw = []
    for r in range(n_rules):
        raw.append({'name': 'r%d' % r, 'endpoint_selector': {'app': 'app%d' % (r % apps)},
                    'ingress': [{'from_endpoints': [{'app': 'app%d' % ((r + 1) % apps)}, {'app': 'app%d' % ((r + 7) % apps)}],
                                 'to_ports': [{'port': 8000 + r % 50, 'end_port': 8100, 'protocol': 'tcp'}]},
                                {'from_cidrs': ['10.%d.0.0/16' % (r % 50)], 'to_ports': [{'port': 443, 'protocol': 'tcp'}]}],
                    'ingress_deny': [{'from_entities': ['world'], 'to_ports': [{'port': 22}]}],
                    'egress': [{'to_entities': ['cluster']}]})
    return rules_of(*raw), local, cidrs


def test_compile_1000_rules_by_1000_endpoints_is_not_quadratic():
    rules, local, cidrs = scale_case()
    started = time.perf_counter()
    c = policy.Compiled(rules, policy.Peers(local, cidrs))
    entries = [e for i, subject in enumerate(local) for e in policy.endpoint_entries(c, i + 1, subject)]
    elapsed = time.perf_counter() - started
    assert len(entries) > 1000 * 1000      # the cluster entity: every identity, per endpoint
    # About 1 s on the 2-CPU development machine (1.1M entries); the bound only catches a blow-up.
    assert elapsed < 60, elapsed
