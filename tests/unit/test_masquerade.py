"""Masquerade: the pure side (input validation, the normalized table, plan, nft JSON batch, text).

The realized listings below are what libnftables 1.0.6 prints (``nft -j list table ip podnet``,
stateless and not) for a table this module wrote; the lab test checks the same round trip live.
"""
import copy
import json

import pytest

from ansible_collections.podnet.fabric.plugins.module_utils import masquerade as m

PARAMS = {'state': 'present', 'table': 'podnet', 'pod_cidrs': ['10.244.1.0/24'], 'exclude': ['10.244.0.0/16'],
          'node_ip': '192.168.50.11', 'exclude_interfaces': []}


def meta():
    return {'metainfo': {'version': '1.0.6', 'release_name': 'Lester Gooch #5', 'json_schema_version': 1}}


def listing(counter=None, extra=(), pod_cidrs=({'prefix': {'addr': '10.244.1.0', 'len': 24}},)):
    """A listing as libnftables returns it, handles and all."""
    loc = {'family': 'ip', 'table': 'podnet'}
    return {'nftables': [
        meta(),
        {'table': {'family': 'ip', 'name': 'podnet', 'handle': 7}},
        {'set': dict(loc, name='pod_cidrs', type='ipv4_addr', handle=2, flags=['interval'], elem=list(pod_cidrs))},
        {'set': dict(loc, name='exclude', type='ipv4_addr', handle=3, flags=['interval'],
                     elem=[{'prefix': {'addr': '10.244.0.0', 'len': 16}}])},
        {'chain': dict(loc, name='postrouting', handle=1, type='nat', hook='postrouting', prio=100, policy='accept')},
        {'rule': dict(loc, chain='postrouting', handle=5, comment=m.COMMENT, expr=[
            {'match': {'op': '==', 'left': {'payload': {'protocol': 'ip', 'field': 'saddr'}}, 'right': '@pod_cidrs'}},
            {'match': {'op': '!=', 'left': {'payload': {'protocol': 'ip', 'field': 'daddr'}}, 'right': '@exclude'}},
            {'counter': counter},
            {'snat': {'addr': '192.168.50.11'}}])},
    ] + list(extra)}


def desired(**over):
    p = dict(PARAMS, **over)
    return m.desired_table(m.spec(p))


# --- input -------------------------------------------------------------------------------------

def test_cidrs_are_canonical_sorted_and_collapsed():
    assert m.canonical_cidrs('pod_cidrs', ['10.244.1.0/24', '10.244.0.0/24', '10.9.9.9', ' 10.244.1.0/25 ']) == [
        '10.9.9.9/32', '10.244.0.0/23']
    assert m.canonical_cidrs('x', []) == [] and m.canonical_cidrs('x', None) == []


@pytest.mark.parametrize('value, error', [
    ('10.244.1.5/24', "pod_cidrs: '10.244.1.5/24' has host bits set (did you mean 10.244.1.0/24?)"),
    ('fd00::/64', "pod_cidrs: 'fd00::/64' is not an IPv4 CIDR"),
    ('bogus', "pod_cidrs: 'bogus' is not an IPv4 CIDR"),
    ('10.0.0.0/33', "pod_cidrs: '10.0.0.0/33' is not an IPv4 CIDR"),
])
def test_bad_cidr(value, error):
    with pytest.raises(m.MasqueradeError) as e:
        m.spec(dict(PARAMS, pod_cidrs=[value]))
    assert str(e.value).startswith(error)


@pytest.mark.parametrize('over, error', [
    ({'pod_cidrs': []}, 'pod_cidrs: give at least one pod CIDR'),
    ({'exclude': []}, 'exclude: give the native-routing CIDR'),
    ({'exclude': ['10.244.0.0/16', '2001:db8::/32']}, "exclude: '2001:db8::/32' is not an IPv4 CIDR"),
    ({'node_ip': None}, 'node_ip: required'),
    ({'node_ip': '10.0.0.0/8'}, "node_ip: '10.0.0.0/8' is not an IPv4 address"),
    ({'node_ip': 'fd00::1'}, "node_ip: 'fd00::1' is not an IPv4 address"),
    ({'node_ip': '0.0.0.0'}, 'node_ip: 0.0.0.0 cannot be a source address'),
    ({'table': 'bad name'}, "table: 'bad name' is not a valid nftables table name"),
    ({'exclude_interfaces': ['a' * 16]}, 'exclude_interfaces: '),
])
def test_bad_input(over, error):
    with pytest.raises(m.MasqueradeError) as e:
        m.spec(dict(PARAMS, **over))
    assert str(e.value).startswith(error)


def test_absent_needs_only_the_table():
    assert m.spec({'state': 'absent', 'table': 'podnet', 'pod_cidrs': [], 'node_ip': 'junk'}) == {
        'state': 'absent', 'table': 'podnet'}
    assert m.desired_table(m.spec({'state': 'absent'})) is None


# --- normalization -----------------------------------------------------------------------------

def test_realized_listing_normalizes_to_desired():
    want = desired()
    assert m.normalize(listing(counter=None), 'ip', 'podnet') == want          # stateless listing
    assert m.normalize(listing(counter={'packets': 9, 'bytes': 756}), 'ip', 'podnet') == want  # counter values
    assert m.plan(want, m.normalize(listing(), 'ip', 'podnet')) == []


def test_normalized_form_is_plain_and_exact():
    want = desired(exclude_interfaces=['podnet_vxlan', 'lo'])
    assert json.loads(json.dumps(want)) == want
    assert [s['name'] for s in want['sets']] == ['exclude', 'exclude_ifaces', 'pod_cidrs']
    assert want['sets'][1] == {'name': 'exclude_ifaces', 'type': 'ifname', 'elem': ['lo', 'podnet_vxlan']}
    assert want['rules'][0]['expr'][2] == {'match': {'op': '!=', 'left': {'meta': {'key': 'oifname'}},
                                                     'right': '@exclude_ifaces'}}


def test_element_forms_normalize_alike():
    # A /32 is printed as a bare address, a non-aligned interval as a range.
    got = m.normalize(listing(pod_cidrs=['10.9.9.9', {'prefix': {'addr': '10.244.1.0', 'len': 24}}]), 'ip', 'podnet')
    assert got == desired(pod_cidrs=['10.244.1.0/24', '10.9.9.9'])
    ranged = m.normalize(listing(pod_cidrs=[{'range': ['10.244.1.0', '10.244.2.127']}]), 'ip', 'podnet')
    assert ranged['sets'][1]['elem'] == ['10.244.1.0/24', '10.244.2.0/25']


def test_element_with_options_is_state():
    got = m.normalize(listing(pod_cidrs=[{'elem': {'val': {'prefix': {'addr': '10.244.1.0', 'len': 24}},
                                                   'comment': 'hand-made'}}]), 'ip', 'podnet')
    assert got['sets'][1]['elem'] == [{'elem': {'val': '10.244.1.0/24', 'comment': 'hand-made'}}]
    assert m.plan(desired(), got)[0]['differences'] == ['set pod_cidrs differs']


def test_other_tables_are_ignored():
    foreign = [{'table': {'family': 'inet', 'name': 'podnet', 'handle': 1}},
               {'table': {'family': 'ip', 'name': 'filter', 'handle': 2}},
               {'chain': {'family': 'ip', 'table': 'filter', 'name': 'input', 'handle': 1}},
               {'rule': {'family': 'inet', 'table': 'podnet', 'chain': 'x', 'handle': 3, 'expr': [{'accept': None}]}}]
    assert m.normalize(listing(extra=foreign), 'ip', 'podnet') == desired()
    assert m.normalize({'nftables': [meta()] + foreign}, 'ip', 'podnet') is None


def test_missing_table_is_none():
    assert m.normalize({'nftables': [meta()]}, 'ip', 'podnet') is None


# --- plan --------------------------------------------------------------------------------------

def test_plan_create_replace_delete():
    want = desired()
    create = m.plan(want, None)
    assert [a['action'] for a in create] == ['create_table'] and create[0]['differences'] == ['table missing']
    assert create[0]['rules'] == ['postrouting: ip saddr @pod_cidrs ip daddr != @exclude counter '
                                  'snat to 192.168.50.11 comment "%s"' % m.COMMENT]
    assert m.plan(None, None) == []
    assert m.plan(None, want) == [{'action': 'delete_table', 'family': 'ip', 'table': 'podnet'}]


@pytest.mark.parametrize('drift, label', [
    (lambda t: t['rules'].pop(), 'rules'),
    (lambda t: t['rules'].append(copy.deepcopy(t['rules'][0])), 'rules'),
    (lambda t: t['sets'][1]['elem'].append('10.244.9.0/24'), 'set pod_cidrs differs'),
    (lambda t: t['sets'].pop(0), 'set exclude missing'),
    (lambda t: t['chains'][0].update(prio=0), 'chain postrouting differs'),
    (lambda t: t['chains'].append({'name': 'extra'}), 'chain extra unexpected'),
    (lambda t: t['other'].append({'counter': {'name': 'c'}}), 'other'),
    (lambda t: t.update(flags=['dormant']), 'flags'),
])
def test_any_drift_in_our_table_is_replaced(drift, label):
    want = desired()
    realized = copy.deepcopy(want)
    drift(realized)
    actions = m.plan(want, realized)
    assert [a['action'] for a in actions] == ['replace_table']
    assert label in actions[0]['differences']


def test_plan_is_idempotent_on_its_own_projection():
    for want in (desired(), desired(pod_cidrs=['10.244.1.0/24', '10.244.7.7'], exclude_interfaces=['podnet_vxlan']), None):
        for realized in (None, desired(node_ip='192.168.50.12')):
            actions = m.plan(want, realized)
            assert m.plan(want, m.project(want, realized, actions)) == []


def test_changed_param_changes_the_table():
    assert m.plan(desired(node_ip='192.168.50.12'), desired())[0]['differences'] == ['rules']
    assert m.plan(desired(exclude=['10.0.0.0/8']), desired())[0]['differences'] == ['set exclude differs']


# --- the nft transaction -----------------------------------------------------------------------

def test_batch_recreates_the_table_in_one_transaction():
    want = desired(pod_cidrs=['10.244.1.0/24', '10.9.9.9'])
    cmds = m.batch(m.plan(want, None), want)['nftables']
    ref = {'family': 'ip', 'name': 'podnet'}
    assert cmds[:3] == [{'add': {'table': ref}}, {'delete': {'table': ref}}, {'add': {'table': ref}}]
    kinds = [list(c['add'])[0] for c in cmds[3:]]
    assert kinds == ['set', 'set', 'chain', 'rule']
    pod_cidrs = cmds[4]['add']['set']
    assert pod_cidrs == {'family': 'ip', 'table': 'podnet', 'name': 'pod_cidrs', 'type': 'ipv4_addr',
                         'flags': ['interval'], 'elem': ['10.9.9.9', {'prefix': {'addr': '10.244.1.0', 'len': 24}}]}
    assert cmds[6]['add']['rule']['expr'][-1] == {'snat': {'addr': '192.168.50.11'}}
    # Written then listed, the batch's objects normalize back to the desired table.
    written = [{k: dict(v, handle=1)} for c in cmds[2:] for k, v in c['add'].items()]
    assert m.normalize({'nftables': written}, 'ip', 'podnet') == want


def test_batch_delete_touches_only_our_table():
    cmds = m.batch(m.plan(None, desired(table='pn2')), None)['nftables']
    ref = {'family': 'ip', 'name': 'pn2'}
    assert cmds == [{'add': {'table': ref}}, {'delete': {'table': ref}}]


def test_render():
    text = m.render(desired(pod_cidrs=['10.244.1.0/24', '10.9.9.9']))
    assert text['table'] == 'ip podnet'
    assert text['sets'][1] == 'set pod_cidrs { type ipv4_addr; flags interval; elements = { 10.9.9.9, 10.244.1.0/24 } }'
    assert text['chains'] == ['chain postrouting { type nat hook postrouting priority 100; policy accept; }']
    assert m.render(None) == {'table': None, 'sets': [], 'chains': [], 'rules': []}
    odd = {'match': {'op': '==', 'left': {'payload': {'protocol': 'ip', 'field': 'daddr'}},
                     'right': {'set': ['10.0.0.1', {'prefix': {'addr': '10.1.0.0', 'len': 16}}]}}}
    assert m._render_expr(odd) == 'ip daddr { 10.0.0.1, 10.1.0.0/16 }'
    assert m._render_expr({'jump': {'target': 'x'}}) == '{"jump": {"target": "x"}}'


def test_missing_binding_is_named(monkeypatch):
    monkeypatch.setattr(m, 'HAS_NFTABLES', False)
    with pytest.raises(m.MasqueradeError) as e:
        m.new_context()
    assert 'python3-nftables' in str(e.value)
