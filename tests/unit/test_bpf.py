"""The eBPF datapath's pure side: map layouts and entries (bpf_maps), the loader's sources, hash and
plan (bpf), and bpf_info's summaries. The lab test (tests/integration/test_bpf_lab.py) runs the
same code against the kernel."""
import ctypes
import os
import re

import pytest

from ansible_collections.podnet.fabric.plugins.module_utils import bpf, bpf_info, bpf_maps as bm

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SOURCES = bpf.read_sources(os.path.join(REPO, 'bpf'))


# ---------------------------------------------------------------- layouts

@pytest.mark.parametrize('name, key, value', [
    ('ipcache', 24, 12), ('endpoints', 20, 24), ('policy', 16, 4), ('ct', 40, 24), ('metrics', 4, 16)])
def test_layout_sizes_are_the_contracts(name, key, value):
    spec = bm.MAPS[name]
    assert (spec.key_size, spec.value_size) == (key, value)


def test_policy_key_is_packed_so_the_prefix_runs_over_consecutive_bytes():
    assert bm.PolicyKey.protocol.offset == 12 and bm.PolicyKey.dport.offset == 13


def test_pin_names_are_versioned_and_match_maps_h():
    maps_h = SOURCES['lib/maps.h']
    for spec in bm.MAPS.values():
        assert re.search(r'_v\d+$', spec.pin)
        # The C declaration names the same kernel name and pin.
        assert re.search(r'%s, \d+,\s*PIN\("%s"\)' % (spec.kernel_name, spec.pin), maps_h), spec.name
        assert '%d,\n' % spec.max_entries in maps_h or ', %d,' % spec.max_entries in maps_h


def test_layout_problems():
    spec = bm.MAPS['policy']
    good = {'type': bm.MAP_LPM_TRIE, 'key_size': 16, 'value_size': 4, 'max_entries': 65536, 'map_flags': 1}
    assert bm.layout_problems(spec, good) == []
    assert bm.layout_problems(spec, dict(good, key_size=20)) == ['key_size 20 (expected 16)']


# ---------------------------------------------------------------- port ranges

@pytest.mark.parametrize('lo, hi, blocks', [
    (80, 80, [(80, 80, 16)]),
    (80, 95, [(80, 95, 12)]),
    (8080, 8090, [(8080, 8087, 13), (8088, 8089, 15), (8090, 8090, 16)]),
    (0, 65535, [(0, 65535, 0)]),
    (1, 3, [(1, 1, 16), (2, 3, 15)]),
    (32768, 65535, [(32768, 65535, 1)]),
])
def test_port_blocks(lo, hi, blocks):
    assert bm.port_blocks(lo, hi) == blocks


@pytest.mark.parametrize('lo, hi', [(1, 65535), (1000, 2000), (3, 3), (65534, 65535), (1023, 1025)])
def test_port_blocks_cover_the_range_exactly_with_aligned_blocks(lo, hi):
    blocks = bm.port_blocks(lo, hi)
    covered = []
    for start, end, bits in blocks:
        size = end - start + 1
        assert size == 1 << (16 - bits) and start % size == 0
        covered.extend(range(start, end + 1))
    assert covered == list(range(lo, hi + 1))
    assert len(blocks) <= 30


# ---------------------------------------------------------------- normalize / encode / decode

def one(entries):
    assert len(entries) == 1, entries
    return list(entries.values())[0]


def policy(**kw):
    e = {'ep_id': 7, 'direction': 'ingress', 'identity': 261, 'protocol': 'tcp', 'port': 80, 'verdict': 'allow', 'rule': 3}
    e.update(kw)
    return e


def test_policy_range_becomes_one_entry_per_prefix_block():
    out = bm.normalize('policy', [policy(port=8080, end_port=8090)])
    assert sorted((e['port'], e['end_port']) for e in out.values()) == [(8080, 8087), (8088, 8089), (8090, 8090)]
    assert sorted(bm.policy_prefixlen(e) for e in out.values()) == [64 + 8 + 13, 64 + 8 + 15, 64 + 8 + 16]


@pytest.mark.parametrize('entry, prefixlen, dport', [
    (policy(), 88, b'\x00\x50'),
    (policy(port=None), 72, b'\x00\x00'),
    (policy(port=0), 72, b'\x00\x00'),
    (policy(protocol='any', port=None), 64, b'\x00\x00'),
    (policy(protocol='icmp', port=None, icmp_type=8), 80, b'\x08\x00'),
    (policy(protocol='icmpv6', port=None), 72, b'\x00\x00'),
])
def test_policy_key_bytes(entry, prefixlen, dport):
    canon = one(bm.normalize('policy', [entry]))
    key, value = bm.encode('policy', canon)
    assert len(key) == 16 and len(value) == 4
    k = bm.PolicyKey.from_buffer_copy(key)
    assert k.prefixlen == prefixlen
    assert key[13:15] == dport
    assert key[4:6] == (7).to_bytes(2, 'little') and key[8:12] == (261).to_bytes(4, 'little')
    assert value == b'\x01\x00' + (3).to_bytes(2, 'little')


ROUND_TRIP = [
    ('ipcache', {'prefix': '10.244.1.5', 'identity': 260, 'local': True}),
    ('ipcache', {'prefix': '10.244.2.0/24', 'identity': 6, 'tunnel_endpoint': '192.168.50.12'}),
    ('ipcache', {'prefix': '0.0.0.0/0', 'identity': 2}),
    ('ipcache', {'prefix': 'fd00:10:244::/64', 'identity': 65536 + 300}),
    ('endpoints', {'address': '10.244.1.5', 'ifindex': 12, 'ep_id': 7, 'identity': 260, 'mac': 'AA:BB:cc:dd:ee:01',
                   'enforce_ingress': True}),
    ('endpoints', {'address': 'fd00::5', 'ifindex': 12, 'ep_id': 7, 'identity': 260, 'enforce_egress': 'yes'}),
    ('policy', policy()),
    ('policy', policy(port=1, end_port=65535, verdict='deny', identity=0)),
    ('policy', policy(protocol='udp', port=53, direction='egress')),
    ('policy', policy(protocol='any', port=None, identity=(1 << 24) | 5)),
    ('policy', policy(protocol='icmp', port=None, icmp_type=0)),
    ('policy', policy(protocol='icmpv6', port=None, icmp_type=128)),
]


@pytest.mark.parametrize('name, entry', ROUND_TRIP)
def test_round_trip(name, entry):
    canon = bm.normalize(name, [entry])
    for eid, e in canon.items():
        key, value = bm.encode(name, e)
        back = bm.decode(name, key, value)
        assert back == e
        assert bm.entry_id(name, back) == eid


def test_normalize_is_canonical():
    e = one(bm.normalize('ipcache', [{'prefix': '10.244.1.5', 'identity': 260}]))
    assert e == {'prefix': '10.244.1.5/32', 'identity': 260, 'tunnel_endpoint': None, 'local': False}
    e = one(bm.normalize('endpoints', [{'address': '10.244.1.5', 'ifindex': 3, 'ep_id': 1, 'identity': 260}]))
    assert e['mac'] == e['node_mac'] == '00:00:00:00:00:00' and e['enforce_ingress'] is False


def test_endpoint_device_resolution():
    def resolve(name):
        return (9, '02:00:00:00:00:09') if name == 'lxcabc' else None
    e = one(bm.normalize('endpoints', [{'address': '10.0.0.9', 'device': 'lxcabc', 'ep_id': 3, 'identity': 300}], resolve))
    assert e['ifindex'] == 9 and e['node_mac'] == '02:00:00:00:00:09'
    with pytest.raises(bm.BpfMapError, match=r'entries\[0\]\.device: lxcnope does not exist on this node'):
        bm.normalize('endpoints', [{'address': '10.0.0.9', 'device': 'lxcnope', 'ep_id': 3, 'identity': 300}], resolve)
    # datapath_plan's endpoint entries carry the endpoint's name: it names the entry, nothing more.
    named = {'name': 'web-1', 'address': '10.0.0.9', 'device': 'lxcabc', 'ep_id': 3, 'identity': 300}
    assert one(bm.normalize('endpoints', [named], resolve)) == e
    with pytest.raises(bm.BpfMapError, match=r'entries\[0\] \(web-1\)\.device: lxcnope does not exist'):
        bm.normalize('endpoints', [dict(named, device='lxcnope')], resolve)


@pytest.mark.parametrize('name, entries, error', [
    ('ipcache', [{'prefix': '10.0.0.1/24', 'identity': 2}], r"entries\[0\]\.prefix: '10.0.0.1/24' is not a CIDR"),
    ('ipcache', [{'prefix': '10.0.0.0/24'}], r'entries\[0\]\.identity: required'),
    ('ipcache', [{'prefix': '10.0.0.0/24', 'identity': 2, 'tunnel_endpoint': 'fd00::1'}], r'tunnel_endpoint'),
    ('ipcache', [{'prefix': '10.0.0.0/24', 'identity': 2, 'typo': 1}], r'entries\[0\]: unknown key typo'),
    ('endpoints', [{'address': '10.0.0.1', 'ep_id': 1, 'identity': 2}], r'give ifindex or device'),
    ('endpoints', [{'address': '10.0.0.1', 'ifindex': 2, 'ep_id': 0, 'identity': 2}], r'ep_id: 0 is out of range'),
    ('endpoints', [{'address': '10.0.0.1', 'ifindex': 2, 'ep_id': 1, 'identity': 2, 'mac': 'zz'}], r'not a MAC'),
    ('policy', [policy(port=90, end_port=80)], r'entries\[0\]\.end_port: 80 is out of range \(90\.\.65535\)'),
    ('policy', [policy(port=70000)], r'entries\[0\]\.port: 70000 is out of range'),
    ('policy', [policy(protocol='icmp', port=80)], r'protocol icmp has no ports'),
    ('policy', [policy(icmp_type=8)], r'icmp_type: only for icmp and icmpv6'),
    ('policy', [policy(protocol='gre')], r"'gre' is not one of"),
    ('policy', [policy(direction='inbound')], r"direction: 'inbound' is not ingress or egress"),
    ('policy', [policy(verdict='maybe')], r'verdict'),
    ('policy', [policy(port=None, end_port=90)], r'end_port: needs a port'),
    ('policy', [policy(), policy(verdict='deny')], r'entries\[1\]: writes ep 7 ingress identity 261 tcp 80, as entries\[0\] does'),
    ('ct', [{'anything': 1}], r'takes no entries'),
])
def test_bad_entries_name_the_entry_and_key(name, entries, error):
    with pytest.raises(bm.BpfMapError, match=error):
        bm.normalize(name, entries)


def test_the_same_entry_twice_is_one_entry():
    assert len(bm.normalize('policy', [policy(), policy()])) == 1


def test_metrics_decode_sums_per_cpu_values():
    k = bm.MetricsKey(reason=131, direction=0, rule_id=2)
    vals = (bm.MetricsValue * 3)(bm.MetricsValue(1, 100), bm.MetricsValue(2, 200), bm.MetricsValue(0, 0))
    e = bm.decode('metrics', bytes(k), ctypes.string_at(ctypes.addressof(vals), ctypes.sizeof(vals)))
    assert e == {'reason': 131, 'reason_name': 'policy denied', 'direction': 'ingress', 'rule': 2, 'packets': 3, 'bytes': 300}
    assert bm.entry_id('metrics', e) == 'policy denied ingress rule 2'


# ---------------------------------------------------------------- map plan

def realized(entries=None, exists=True):
    entries = entries or {}
    return {'exists': exists, 'count': len(entries), 'entries': entries}


def test_map_plan_adds_changes_and_prunes_in_that_order():
    have = bm.normalize('ipcache', [{'prefix': '10.0.0.1', 'identity': 260}, {'prefix': '10.0.0.2', 'identity': 261},
                                    {'prefix': '10.0.0.3', 'identity': 262}])
    want = bm.normalize('ipcache', [{'prefix': '10.0.0.1', 'identity': 260}, {'prefix': '10.0.0.2', 'identity': 300},
                                    {'prefix': '10.0.0.4', 'identity': 263}])
    actions = bm.plan('ipcache', want, realized(have), prune=True)
    assert [(a['action'], a['id']) for a in actions] == [
        ('change', '10.0.0.2/32'), ('add', '10.0.0.4/32'), ('remove', '10.0.0.3/32')]
    assert actions[0]['before']['identity'] == 261
    assert [a['action'] for a in bm.plan('ipcache', want, realized(have), prune=False)] == ['change', 'add']
    after = bm.project(realized(have), actions)
    assert after['entries'] == want and after['count'] == 3
    assert bm.plan('ipcache', want, after, prune=True) == []
    assert bm.touched(realized(have), actions) == {'10.0.0.2/32': have['10.0.0.2/32'], '10.0.0.3/32': have['10.0.0.3/32']}


def test_map_plan_creates_a_missing_map_and_absent_unpins():
    want = bm.normalize('endpoints', [{'address': '10.0.0.1', 'ifindex': 2, 'ep_id': 1, 'identity': 260}])
    assert [a['action'] for a in bm.plan('endpoints', want, realized(exists=False), prune=True)] == ['create_map', 'add']
    assert bm.plan('endpoints', {}, realized(want), prune=False, state='absent') == [{'action': 'unpin_map', 'map': 'endpoints'}]
    assert bm.plan('endpoints', {}, realized(exists=False), prune=False, state='absent') == []


def test_datapath_maps_flush_on_prune_only():
    assert bm.plan('ct', {}, {'exists': True, 'count': 5, 'entries': {}}, prune=False) == []
    assert bm.plan('ct', {}, {'exists': True, 'count': 5, 'entries': {}}, prune=True) == [
        {'action': 'flush', 'map': 'ct', 'count': 5}]
    assert bm.plan('metrics', {}, {'exists': True, 'count': 0, 'entries': {}}, prune=True) == []


# ---------------------------------------------------------------- loader: sources and hash

def test_expand_inlines_our_headers_once_with_line_markers():
    text = bpf.expand(SOURCES, 'bpf_lxc.c')
    assert not re.search(r'^#include "lib/', text, re.M)
    assert text.count('#define PODNET_MAPS_H') == 1
    assert '#line 1 "bpf/lib/conntrack.h"' in text and text.startswith('#line 1 "bpf/bpf_lxc.c"')
    assert '#include <uapi/linux/bpf.h>' in text


def test_expand_names_a_missing_include():
    with pytest.raises(bpf.BpfError, match=r'bpf/x.c line 2 includes "lib/nope.h"'):
        bpf.expand({'x.c': 'int a;\n#include "lib/nope.h"\n'}, 'x.c')


def test_every_program_is_a_function_of_its_file():
    for program, filename in bpf.PROGRAMS.items():
        assert re.search(r'^int %s\(struct __sk_buff \*skb\)$' % program, SOURCES[filename], re.M), program


def test_the_hash_follows_text_defines_and_pin_root_only():
    t = bpf.expand(SOURCES, 'bpf_netdev.c')
    h = bpf.unit_hash(t, {}, '/sys/fs/bpf/podnet')
    assert h == bpf.unit_hash(t, {}, '/sys/fs/bpf/podnet')
    assert h != bpf.unit_hash(t, {'CT_LIFETIME_NONTCP': '30'}, '/sys/fs/bpf/podnet')
    assert h != bpf.unit_hash(t, {}, '/sys/fs/bpf/other')
    assert h != bpf.unit_hash(t + '\n', {}, '/sys/fs/bpf/podnet')
    # A header bpf_netdev.c does not include does not change its hash.
    extra = dict(SOURCES, **{'lib/extra.h': '/* x */\n', 'x.c': '#include "lib/extra.h"\n'})
    changed = dict(extra, **{'lib/extra.h': '/* y */\n'})
    assert bpf.unit_hash(bpf.expand(changed, 'bpf_netdev.c'), {}, '/sys/fs/bpf/podnet') == h
    assert bpf.expand(changed, 'x.c') != bpf.expand(extra, 'x.c')


@pytest.mark.parametrize('defines, error', [
    ({'lower': 1}, 'not a macro name'),
    ({'PODNET_PIN_ROOT': 'x'}, 'set by the loader'),
    ({'X': 'two words'}, 'defines.X'),
    ({'X': '"quoted"'}, 'defines.X'),
])
def test_bad_defines(defines, error):
    with pytest.raises(bpf.BpfError, match=error):
        bpf.normalize_defines(defines)


def test_defines_become_cflags():
    d = bpf.normalize_defines({'CT_LIFETIME_NONTCP': 30, 'B': True})
    assert bpf.cflags(d, '/sys/fs/bpf/podnet') == ['-DPODNET_PIN_ROOT="/sys/fs/bpf/podnet"', '-DB=1', '-DCT_LIFETIME_NONTCP=30']


PARAMS = {'device': 'lxc1', 'hook': 'ingress', 'program': 'from_container', 'defines': {}, 'state': 'present',
          'pin_root': '/sys/fs/bpf/podnet', 'host_routing': 'bpf'}
SUPPORTED = dict((h, True) for h, _id in bpf.HOST_ROUTING_HELPERS)


def desired(support='all', **kw):
    """support: the probe's result ('all': every helper; None: not probed)."""
    return bpf.desired_state(dict(PARAMS, **kw), SOURCES, SUPPORTED if support == 'all' else support)


# ---------------------------------------------------------------- host routing

def test_host_routing_bpf_where_the_kernel_has_the_helpers():
    d = desired()
    assert d['host_routing'] == {'requested': 'bpf', 'mode': 'bpf', 'missing': []}
    assert d['compile_defines'] == {'PODNET_HOST_ROUTING': '1'} and d['defines'] == {}


def test_host_routing_falls_back_to_kernel_and_says_why():
    d = desired(support=dict(SUPPORTED, bpf_redirect_peer='invalid func unknown#155'))
    assert d['host_routing'] == {'requested': 'bpf', 'mode': 'kernel',
                                 'missing': ['bpf_redirect_peer (invalid func unknown#155)']}
    assert d['compile_defines'] == {'PODNET_HOST_ROUTING': '0'}
    # The same programs as host_routing kernel: the same hash, no recompile between the two.
    assert d['hash'] == desired(host_routing='kernel', support=None)['hash']
    assert d['hash'] != desired()['hash']


def test_host_routing_kernel_needs_no_probe_and_bpf_does():
    assert desired(host_routing='kernel', support=None)['host_routing']['mode'] == 'kernel'
    with pytest.raises(bpf.BpfError, match='probed'):
        desired(support=None)
    with pytest.raises(bpf.BpfError, match="host_routing: 'xdp'"):
        desired(host_routing='xdp')
    with pytest.raises(bpf.BpfError, match='set by the loader'):
        desired(defines={'PODNET_HOST_ROUTING': 1})


def test_probe_programs_call_the_helper_and_return_zero():
    for _name, helper in bpf.HOST_ROUTING_HELPERS:
        insns = bpf.probe_program(helper)
        assert len(insns) % 8 == 0
        code = [insns[i] for i in range(0, len(insns), 8)]
        assert code[-3:] == [0x85, 0xb7, 0x95]
        assert int.from_bytes(insns[-24 + 4:-16], 'little') == helper


@pytest.mark.parametrize('params, error', [
    ({'program': 'from_space'}, "program: 'from_space'"),
    ({'pin_root': '/tmp/x'}, 'pin_root: /tmp/x must be a directory under /sys/fs/bpf'),
    ({'pin_root': '/sys/fs/bpf/a.b'}, 'no dots'),
    ({'device': 'x' * 16}, 'device'),
])
def test_bad_params(params, error):
    with pytest.raises(bpf.BpfError, match=re.escape(error)):
        desired(**params)


def test_present_needs_the_sources():
    with pytest.raises(bpf.BpfError, match='sources: none given'):
        bpf.desired_state(PARAMS, None)
    assert bpf.desired_state(dict(PARAMS, state='absent'), None)['hash'] is None


# ---------------------------------------------------------------- loader: plan

def pin(i):
    return {'id': i, 'tag': 't%d' % i, 'name': 'x'}


def world(d, filters=(), clsact=True, pins=None, record='fresh', users=(), device=True):
    pins = pins if pins is not None else {'from_container': pin(10), 'to_container': pin(11)}
    if record == 'fresh':
        record = {'hash': d['hash'], 'ids': {'from_container': 10, 'to_container': 11}}
    return {'device': {'name': d['device'], 'ifindex': 5} if device else None, 'clsact': clsact,
            'filters': [{'prio': 1, 'handle': h, 'prog_id': i, 'name': 'from_container', 'tag': None} for h, i in filters],
            'pins': pins, 'record': record, 'users': list(users)}


def kinds(actions):
    return [a['action'] for a in actions]


def test_noop_when_the_recorded_program_is_attached():
    d = desired()
    assert bpf.plan(d, world(d, filters=[(1, 10)])) == []


def test_first_run_compiles_adds_clsact_and_attaches():
    d = desired()
    r = world(d, clsact=False, pins={'from_container': None, 'to_container': None}, record=None)
    actions = bpf.plan(d, r)
    assert kinds(actions) == ['compile', 'add_clsact', 'attach']
    assert actions[0]['programs'] == ['from_container', 'to_container'] and actions[0]['reason'] == 'not pinned'
    assert actions[2]['prio'] == 1 and actions[2]['handle'] == 1
    after = bpf.project(d, r, actions)
    assert bpf.view(d, after)['filter']['handle'] == 1 and after['record']['hash'] == d['hash']


@pytest.mark.parametrize('change, reason', [
    (lambda d, r: r.update(record=dict(r['record'], hash='0' * 64)), 'sources or defines changed'),
    (lambda d, r: r.update(record=None), 'no record of the pinned programs'),
    (lambda d, r: r['pins'].update(to_container=pin(99)), 'the pinned programs are not the recorded ones'),
    (lambda d, r: r['pins'].update(to_container=None), 'not pinned'),
])
def test_a_stale_or_foreign_pin_recompiles(change, reason):
    d = desired()
    r = world(d, filters=[(1, 10)])
    change(d, r)
    actions = bpf.plan(d, r)
    assert kinds(actions) == ['compile', 'attach'] and actions[0]['reason'] == reason


def test_changed_defines_recompile_and_replace_in_place():
    old = desired()
    new = desired(defines={'CT_LIFETIME_NONTCP': 30})
    actions = bpf.plan(new, world(old, filters=[(1, 10)]))
    assert kinds(actions) == ['compile', 'attach']


def test_another_device_attaches_the_pinned_program_without_compiling():
    d = desired(device='lxc2')
    assert kinds(bpf.plan(d, world(d, clsact=False))) == ['add_clsact', 'attach']


def test_an_older_program_on_the_hook_is_replaced_without_compiling():
    d = desired()
    actions = bpf.plan(d, world(d, filters=[(1, 7)]))
    assert kinds(actions) == ['attach']


def test_extra_filters_at_our_priority_are_removed():
    d = desired()
    actions = bpf.plan(d, world(d, filters=[(1, 10), (2, 10), (3, 8)]))
    assert [(a['action'], a.get('handle')) for a in actions] == [('detach', 2), ('detach', 3)]


def test_a_missing_device_is_an_error_naming_it():
    d = desired()
    with pytest.raises(bpf.BpfError, match='device: lxc1 does not exist on this node'):
        bpf.plan(d, world(d, device=False))


def test_absent_detaches_and_unpins_when_nothing_else_runs_it():
    d = desired(state='absent')
    r = world(d, filters=[(1, 10)], users=[{'device': 'lxc1', 'hook': 'ingress', 'prog_id': 10}])
    actions = bpf.plan(d, r)
    assert kinds(actions) == ['detach', 'unpin']
    assert actions[1]['pin'] == '/sys/fs/bpf/podnet/programs/from_container'
    after = bpf.project(d, r, actions)
    assert bpf.view(d, after) == {'device': 'lxc1', 'hook': 'ingress', 'filter': None, 'other_filters': [], 'program': None}


def test_absent_keeps_the_pin_while_another_device_runs_it():
    d = desired(state='absent')
    r = world(d, filters=[(1, 10)], users=[{'device': 'lxc1', 'hook': 'ingress', 'prog_id': 10},
                                           {'device': 'lxc2', 'hook': 'ingress', 'prog_id': 10}])
    assert kinds(bpf.plan(d, r)) == ['detach']
    # Gone already: nothing to do.
    assert bpf.plan(d, world(d, pins={'from_container': None, 'to_container': None})) == []


# ---------------------------------------------------------------- bpf_info

NET = [{'xdp': [], 'tc': [{'devname': 'lxc1', 'ifindex': 4, 'kind': 'clsact/ingress', 'name': 'from_container', 'id': 177},
                          {'devname': 'lxc2', 'ifindex': 6, 'kind': 'clsact/ingress', 'name': 'from_container', 'id': 150},
                          {'devname': 'eth9', 'ifindex': 9, 'kind': 'clsact/egress', 'name': 'theirs', 'id': 5}],
        'flow_dissector': []}]
PROGS = [{'id': 177, 'name': 'from_container', 'tag': 'e0', 'pinned': ['/sys/fs/bpf/podnet/programs/from_container']},
         {'id': 150, 'name': 'from_container', 'tag': 'aa'},
         {'id': 5, 'name': 'theirs', 'tag': 'bb'}]


def test_info_programs_and_attachments():
    att = bpf_info.attachments(NET)
    assert [a['hook'] for a in att] == ['egress', 'ingress', 'ingress']
    progs = bpf_info.programs(PROGS, att, '/sys/fs/bpf/podnet')
    assert [(p['id'], p['current'], p['attached']) for p in progs] == [
        (150, False, [{'device': 'lxc2', 'hook': 'ingress'}]),
        (177, True, [{'device': 'lxc1', 'hook': 'ingress'}])]


def test_info_maps_and_drops():
    maps = bpf_info.maps([{'id': 3, 'type': 'lpm_trie', 'bytes_key': 16, 'bytes_value': 4, 'max_entries': 65536,
                           'pinned': ['/sys/fs/bpf/podnet/podnet_policy_v1']},
                          {'id': 4, 'type': 'hash', 'pinned': ['/sys/fs/bpf/other/x']}],
                         '/sys/fs/bpf/podnet', {'/sys/fs/bpf/podnet/podnet_policy_v1': 12})
    assert maps == [{'name': 'policy', 'pin': '/sys/fs/bpf/podnet/podnet_policy_v1', 'id': 3, 'type': 'lpm_trie',
                     'key_size': 16, 'value_size': 4, 'max_entries': 65536, 'entries': 12}]
    m = {'a': {'reason': 0, 'direction': 'egress', 'rule': 0, 'packets': 9},
         'b': {'reason': 131, 'direction': 'ingress', 'rule': 2, 'packets': 1},
         'c': {'reason': 130, 'direction': 'egress', 'rule': 0, 'packets': 4}}
    drops, fwd = bpf_info.drops(m)
    assert [d['reason'] for d in drops] == [130, 131] and [f['packets'] for f in fwd] == [9]


def test_the_action_plugin_reads_the_repo_bpf_directory():
    from ansible_collections.podnet.fabric.plugins.action import bpf_program as action
    assert os.path.samefile(action.BPF_DIR, os.path.join(REPO, 'bpf'))
    assert bpf.read_sources(action.BPF_DIR) == SOURCES
    assert set(SOURCES) == {'bpf_lxc.c', 'bpf_netdev.c', 'bpf_overlay.c', 'lib/common.h', 'lib/conntrack.h',
                            'lib/host_routing.h', 'lib/ingress.h', 'lib/ipcache.h', 'lib/maps.h', 'lib/metrics.h',
                            'lib/policy.h'}


# ---------------------------------------------------------------- the contract, end to end (pure)
# The controller's compiled entries (plugin_utils.policy), through this encoder, looked up the way
# bpf/lib/policy.h does (longest prefix over the key's bytes, the peer's identity and 0, deny first,
# the lower rule) give the controller's own verdicts.

def _lpm(table, key):
    data, best = key[4:], None
    for k, v in table:
        plen = int.from_bytes(k[:4], 'little')
        whole, bits = divmod(plen, 8)
        if k[4:4 + whole] != data[:whole]:
            continue
        if bits and (k[4 + whole] ^ data[whole]) >> (8 - bits):
            continue
        if best is None or plen > best[0]:
            best = (plen, bm.PolicyValue.from_buffer_copy(v))
    return best[1] if best else None


def _datapath(table, ep_id, direction, peer, protocol, port, icmp_type, enforced):
    k = bm.PolicyKey(prefixlen=88, ep_id=ep_id, direction=bm.DIRECTIONS.index(direction), identity=peer,
                     protocol=bm.PROTOCOLS[protocol])
    ctypes.memmove(k.dport, bm._port_bytes((icmp_type << 8) if protocol in bm.ICMP_PROTOCOLS else port), 2)
    found = [_lpm(table, bytes(k))]
    k.identity = 0
    found.append(_lpm(table, bytes(k)))
    for verdict, name in ((2, 'deny'), (1, 'allow')):
        rules = [v.rule_id for v in found if v is not None and v.verdict == verdict]
        if rules:
            return name, min(rules)
    return ('deny', 'default deny') if enforced else ('allow', None)


def test_controller_entries_encoded_here_give_the_controllers_verdicts():
    from ansible_collections.podnet.fabric.plugins.plugin_utils import inventory, policy

    web, client, db = 256, 257, 258
    peers = policy.Peers({web: {'app': 'web'}, client: {'app': 'client'}, db: {'app': 'db'}}, {(1 << 24) | 1: '10.0.0.0/8'})
    raw = [
        {'endpoint_selector': {'app': 'web'},
         'ingress': [{'from_endpoints': [{'app': 'client'}], 'to_ports': [{'port': 8080, 'end_port': 8090, 'protocol': 'tcp'},
                                                                          {'port': 53}]},
                     {'from_entities': ['all'], 'to_ports': [{'port': 9000, 'end_port': 9999, 'protocol': 'tcp'}]},
                     {'from_endpoints': [{'app': 'client'}], 'icmps': [{'type': 8}]}],
         'ingress_deny': [{'from_endpoints': [{'app': 'client'}], 'to_ports': [{'port': 9090, 'protocol': 'tcp'}]}]},
        {'endpoint_selector': {'app': 'client'}, 'egress': [{'to_endpoints': [{'app': 'web'}]}, {'to_cidrs': ['10.0.0.0/8']}],
         'egress_deny': [{'to_entities': ['world'], 'to_ports': [{'port': 1, 'end_port': 1023}]}]},
        {'endpoint_selector': {'app': 'db'}, 'ingress': [{'from_entities': ['cluster'], 'to_ports': [{'port': 5432, 'protocol': 'tcp'}]}]},
    ]
    rules = inventory.validate({'podnet_policy': {'rules': raw}}, {'n1': {'podnet_node_ip': '192.168.50.11'}})['policy']['rules']
    compiled = policy.Compiled(rules, peers)
    probes = [('tcp', p, None) for p in (1, 22, 53, 80, 1023, 1024, 5432, 8079, 8080, 8085, 8090, 8091, 9000, 9090, 9999, 65535)] + \
             [('udp', p, None) for p in (53, 54, 1000)] + [('icmp', None, t) for t in (0, 8, 3)] + [('icmpv6', None, 128)]
    seen = set()
    for ep_id, subject in enumerate((web, client, db), 1):
        entries = policy.endpoint_entries(compiled, ep_id, subject)
        enforce = policy.enforcement(compiled, subject)
        table = [bm.encode('policy', e) for e in bm.normalize('policy', entries).values()]
        for direction in bm.DIRECTIONS:
            for peer in (web, client, db, 1, 2, 6, (1 << 24) | 1):
                for protocol, port, icmp_type in probes:
                    want = policy.check(compiled, subject, direction, peer, protocol, port, icmp_type)
                    got = _datapath(table, ep_id, direction, peer, protocol, port, icmp_type, enforce['enforce_' + direction])
                    assert got == want, (subject, direction, peer, protocol, port, icmp_type)
                    seen.add(got if got[1] in (None, 'default deny') else got[0])
    # Not vacuous: allows, denies, default denies and unenforced directions all came up.
    assert seen == {'allow', 'deny', ('deny', 'default deny'), ('allow', None)}


def test_bpf_info_reports_the_mode_per_file_and_the_kernels_support():
    from ansible_collections.podnet.fabric.plugins.module_utils import bpf_info
    root = '/sys/fs/bpf/podnet'
    records = {root: {'bpf_lxc.c': {'host_routing': 'bpf'}, 'bpf_netdev.c': {'host_routing': 'bpf'}},
               '/sys/fs/bpf/other': {'bpf_lxc.c': {'host_routing': 'kernel'}}}
    assert bpf_info.host_routing(records, root, SUPPORTED) == {
        'mode': 'bpf', 'files': {'bpf_lxc.c': 'bpf', 'bpf_netdev.c': 'bpf'}, 'kernel_supports_bpf': True, 'missing': []}
    # A record from before host routing existed was compiled for the kernel's.
    records[root]['bpf_overlay.c'] = {}
    got = bpf_info.host_routing(records, root, dict(SUPPORTED, bpf_fib_lookup='invalid func unknown#69'))
    assert got['mode'] == 'mixed' and got['files']['bpf_overlay.c'] == 'kernel'
    assert got['kernel_supports_bpf'] is False and got['missing'] == ['bpf_fib_lookup (invalid func unknown#69)']
    assert bpf_info.host_routing({}, root, SUPPORTED)['mode'] is None
