"""netlink.delete / delete_matching against real kernel objects of every shape (namespaces `pnx-*`).

Each test builds its objects with iproute2 (ip, bridge) in a fresh network namespace, deletes them one
at a time through the shared helper, by the identity a pyroute2 dump reports, and checks with
iproute2's JSON output that exactly that object went and every other one stayed, and that deleting
it again is success (False: already gone).
"""
import collections
import itertools
import json
import os
import subprocess

import pytest

from ansible_collections.podnet.fabric.plugins.module_utils import netlink

PREFIX = 'pnx-'
NS = PREFIX + 'del'
PROTO = 201

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason='network namespaces need root')


def run(*argv):
    p = subprocess.run(list(argv), stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True,
                       check=False)
    assert p.returncode == 0, '%s: %s' % (' '.join(argv), p.stderr)
    return p.stdout


def sh(*argv):
    """iproute2 (ip, bridge, sysctl) inside the test namespace."""
    return run('ip', 'netns', 'exec', NS, *argv)


def sh_json(*argv):
    return json.loads(sh(*argv) or '[]')


def purge():
    for name in os.listdir('/run/netns') if os.path.isdir('/run/netns') else ():
        if name.startswith(PREFIX):
            run('ip', 'netns', 'del', name)


@pytest.fixture
def ipr():
    purge()
    run('ip', 'netns', 'add', NS)
    try:
        for cmd in ('ip link set lo up',
                    'ip link add r0 type veth peer name r1', 'ip link set r0 up', 'ip link set r1 up',
                    'ip addr add 192.0.2.1/24 dev r0', 'ip -6 addr add 2001:db8::1/64 dev r0 nodad',
                    'ip link add a0 type veth peer name a1', 'ip link set a0 up',
                    'ip link add vx0 type vxlan id 42 dstport 8472 nolearning', 'ip link set vx0 up',
                    'ip link add vx6 type vxlan id 43 dstport 8472 local 2001:db8::1 nolearning',
                    'ip link set vx6 up',
                    'ip link add br0 type bridge', 'ip link add p0 type veth peer name p1',
                    'ip link set p0 master br0', 'ip link set br0 up', 'ip link set p0 up'):
            sh(*cmd.split())
        with netlink.IPRoute(netns=NS, flags=0) as handle:
            yield handle
    finally:
        purge()


def delete_each(ipr, kind, targets, snapshot):
    """Delete targets one at a time; after each, exactly one entry of snapshot() is gone."""
    assert targets, 'nothing to delete: the shapes were not created'
    for ident in targets:
        before = snapshot()
        assert netlink.delete(ipr, kind, ident) is True, ident
        after = snapshot()
        gone, new = collections.Counter(before) - collections.Counter(after), collections.Counter(after) - collections.Counter(before)
        assert sum(gone.values()) == 1 and not new, (ident, gone, new)
        assert netlink.delete(ipr, kind, ident) is False, 'a second delete of %s is success' % ident
        assert snapshot() == after


# --- routes ----------------------------------------------------------------------------------------

ROUTE_KINDS = {
    4: ('dev', 'host', 'via', 'onlink', 'blackhole', 'unreachable', 'prohibit'),
    6: ('dev', 'via', 'onlink', 'blackhole', 'unreachable', 'prohibit'),
}
TABLES = (None, '100', '1000')
METRICS = (None, '50')


def route_argv(family, kind, dst):
    gw = {4: ('192.0.2.9', '198.18.0.9'), 6: ('2001:db8::9', '2001:db8:ffff::9')}[family]
    return {
        'dev': ['%s' % dst, 'dev', 'r0'],
        'host': ['%s' % dst, 'dev', 'r0', 'scope', 'host'],
        'via': ['%s' % dst, 'via', gw[0], 'dev', 'r0'],
        'onlink': ['%s' % dst, 'via', gw[1], 'dev', 'r0', 'onlink'],
        'blackhole': ['blackhole', dst],
        'unreachable': ['unreachable', dst],
        'prohibit': ['prohibit', dst],
    }[kind]


def route_shapes():
    """Every (family, kind, table, metric); the table and metric variants of a kind share one dst,
    so a delete that matched too loosely would take a sibling with it."""
    out = []
    for family in (4, 6):
        for i, kind in enumerate(ROUTE_KINDS[family]):
            dst = '10.200.%d.0/24' % i if family == 4 else 'fd00:200:%d::/64' % i
            for table, metric in itertools.product(TABLES, METRICS):
                argv = ['ip', '-%d' % family, 'route', 'add'] + route_argv(family, kind, dst)
                argv += ['proto', str(PROTO)]
                if table:
                    argv += ['table', table]
                if metric:
                    argv += ['metric', metric]
                out.append(argv)
    # Same destination, two TOS values (IPv4 only).
    for tos in ('0', '0x10'):
        out.append(['ip', 'route', 'add', '10.201.0.0/24', 'dev', 'r0', 'tos', tos, 'proto', str(PROTO)])
    return out


def route_snapshot():
    out = []
    for fam in ('-4', '-6'):
        for r in sh_json('ip', fam, '-j', '-d', 'route', 'show', 'table', 'all', 'proto', str(PROTO)):
            r.pop('expires', None)
            out.append(json.dumps(r, sort_keys=True))
    return sorted(out)


def our_routes(ipr):
    return [m for fam in (netlink.AF_INET, netlink.AF_INET6) for m in ipr.route('dump', family=fam)
            if m['proto'] == PROTO]


def test_routes_of_every_shape(ipr):
    shapes = route_shapes()
    for argv in shapes:
        sh(*argv)
    assert len(route_snapshot()) == len(shapes)
    targets = [netlink.identity('route', m) for m in our_routes(ipr)]
    assert len(targets) == len(shapes)
    delete_each(ipr, 'route', targets, route_snapshot)
    assert route_snapshot() == []


def test_a_link_scope_route_needs_scope_nowhere(ipr):
    """The bug this helper fixes: a delete at the default scope does not find a link-scope route."""
    sh('ip', 'route', 'add', '10.251.0.0/24', 'dev', 'r0', 'proto', str(PROTO))
    idx = ipr.link_lookup(ifname='r0')[0]
    with pytest.raises(Exception) as err:
        ipr.route('del', dst='10.251.0.0/24', oif=idx, proto=PROTO)
    assert netlink.is_gone(err.value)   # ESRCH: "No such process", though the route is there
    assert len(route_snapshot()) == 1
    assert [netlink.identity('route', m)['dst_len'] for m in our_routes(ipr)] == [24]
    assert len(netlink.delete_matching(ipr, 'route', lambda m: m['proto'] == PROTO, family=netlink.AF_INET)) == 1
    assert route_snapshot() == []


def test_delete_matching_takes_what_matches_and_nothing_else(ipr):
    for argv in route_shapes():
        sh(*argv)
    before = route_snapshot()

    def via_table_100(m):
        return m['proto'] == PROTO and m.get_attr('RTA_TABLE') == 100

    deleted = netlink.delete_matching(ipr, 'route', via_table_100, family=netlink.AF_INET)
    assert len(deleted) == len(ROUTE_KINDS[4]) * len(METRICS)
    assert all(d['RTA_TABLE'] == 100 and d['family'] == netlink.AF_INET for d in deleted)
    after = route_snapshot()
    assert len(before) - len(after) == len(deleted) and all(e in before for e in after)
    assert netlink.delete_matching(ipr, 'route', via_table_100, family=netlink.AF_INET) == []


# --- rules -----------------------------------------------------------------------------------------

RULES = [
    'from 10.0.0.0/24 lookup 100', 'to 10.1.0.0/16 lookup 100', 'iif r0 lookup 100', 'oif r0 lookup 100',
    'fwmark 0x10/0xff lookup 100', 'tos 0x10 lookup 100', 'lookup 1000', 'lookup main', 'blackhole',
    'unreachable', 'prohibit', 'from 10.0.0.0/24 lookup 200', 'lookup main suppress_prefixlength 0',
    'goto 3100',
]


def rule_snapshot():
    return sorted(json.dumps(dict(r, family=fam), sort_keys=True) for fam in ('-4', '-6')
                  for r in sh_json('ip', fam, '-j', '-d', 'rule', 'show') if r.get('protocol') == str(PROTO))


def test_rules_of_every_shape(ipr):
    count = 0
    for family in (4, 6):
        for i, spec in enumerate(RULES):
            spec = spec.replace('10.0.0.0/24', 'fd00::/64' if family == 6 else '10.0.0.0/24')
            spec = spec.replace('10.1.0.0/16', 'fd01::/32' if family == 6 else '10.1.0.0/16')
            # Two shapes share each priority: only the table or action tells them apart.
            sh('ip', '-%d' % family, 'rule', 'add', 'priority', str(3000 + i // 2 * 10), *spec.split(),
               'protocol', str(PROTO))
            count += 1
    assert len(rule_snapshot()) == count
    targets = [netlink.identity('rule', m) for fam in (netlink.AF_INET, netlink.AF_INET6)
               for m in ipr.rule('dump', family=fam) if m.get_attr('FRA_PROTOCOL') == PROTO]
    assert len(targets) == count
    delete_each(ipr, 'rule', targets, rule_snapshot)
    assert rule_snapshot() == []


# --- addresses -------------------------------------------------------------------------------------

ADDRESSES = [
    '198.51.100.1/24', '198.51.100.1/32', '198.51.101.7/32', '203.0.113.5 peer 203.0.113.6/32',
    '192.0.2.200/28 label a0:pnx', '2001:db8:a::1/64 nodad', '2001:db8:a::2/128 nodad',
    '2001:db8:c::1 peer 2001:db8:c::2/128 nodad',
]


def addr_snapshot():
    out = []
    for link in sh_json('ip', '-j', 'addr', 'show', 'dev', 'a0'):
        for a in link.get('addr_info', []):
            if not a.get('local', '').startswith('fe80'):
                out.append(json.dumps(dict((k, v) for k, v in a.items() if not k.endswith('life_time')),
                                      sort_keys=True))
    return sorted(out)


def test_addresses_of_every_shape(ipr):
    for spec in ADDRESSES:
        family = '-6' if ':' in spec.split()[0] else '-4'
        sh('ip', family, 'addr', 'add', *spec.split(), 'dev', 'a0')
    assert len(addr_snapshot()) == len(ADDRESSES)
    idx = ipr.link_lookup(ifname='a0')[0]
    targets = [netlink.identity('addr', m) for m in ipr.addr('dump', index=idx)
               if not m.get_attr('IFA_ADDRESS').startswith('fe80')]
    assert len(targets) == len(ADDRESSES)
    delete_each(ipr, 'addr', targets, addr_snapshot)
    assert addr_snapshot() == []


# --- neighbours, proxies and FDB entries -----------------------------------------------------------

NEIGHBOURS = [
    ('192.0.2.50', 'r0', 'permanent'), ('192.0.2.51', 'r0', 'noarp'), ('192.0.2.52', 'r0', 'reachable'),
    ('2001:db8::50', 'r0', 'permanent'), ('192.0.2.50', 'vx0', 'permanent'), ('10.99.0.1', 'vx0', 'permanent'),
    ('fd00:99::1', 'vx0', 'permanent'),
]


def neigh_snapshot(proxy=False):
    argv = ['ip', '-j', 'neigh', 'show'] + (['proxy'] if proxy else ['nud', 'all'])
    out = []
    for fam in ('-4', '-6'):
        for n in sh_json(argv[0], fam, *argv[1:]):
            if proxy or n.get('dst') in set(d for d, _dev, _nud in NEIGHBOURS):
                n.pop('state', None)   # reachable ages into stale: not what this test is about
                out.append(json.dumps(n, sort_keys=True))
    return sorted(out)


def test_neighbours_of_every_shape(ipr):
    for i, (dst, dev, nud) in enumerate(NEIGHBOURS):
        sh('ip', 'neigh', 'add', dst, 'lladdr', '02:00:00:00:00:%02x' % i, 'dev', dev, 'nud', nud)
    assert len(neigh_snapshot()) == len(NEIGHBOURS)
    ours = set((dst, ipr.link_lookup(ifname=dev)[0]) for dst, dev, _nud in NEIGHBOURS)
    targets = [netlink.identity('neigh', m) for fam in (netlink.AF_INET, netlink.AF_INET6)
               for m in ipr.neigh('dump', family=fam) if (m.get_attr('NDA_DST'), m['ifindex']) in ours]
    assert len(targets) == len(NEIGHBOURS)
    delete_each(ipr, 'neigh', targets, neigh_snapshot)
    assert neigh_snapshot() == []


def test_proxy_neighbours(ipr):
    """Proxy entries are not in a plain neighbour dump: they are deleted by a built identity."""
    proxies = [('192.0.2.99', netlink.AF_INET), ('2001:db8::99', netlink.AF_INET6), ('2001:db8::98', netlink.AF_INET6)]
    for dst, _fam in proxies:
        sh('ip', 'neigh', 'add', 'proxy', dst, 'dev', 'r0')
    # A plain entry with the same address must survive the proxy's delete.
    sh('ip', 'neigh', 'add', '192.0.2.99', 'lladdr', '02:00:00:00:00:99', 'dev', 'r0', 'nud', 'permanent')
    idx = ipr.link_lookup(ifname='r0')[0]
    targets = [{'family': fam, 'ifindex': idx, 'flags': netlink.NTF_PROXY, 'NDA_DST': dst} for dst, fam in proxies]
    delete_each(ipr, 'neigh', targets, lambda: neigh_snapshot(proxy=True))
    assert neigh_snapshot(proxy=True) == []
    assert [n['dst'] for n in sh_json('ip', '-j', 'neigh', 'show', 'dev', 'r0', 'nud', 'permanent')] == ['192.0.2.99']


FDB = [
    'bridge fdb append 0e:70:0a:00:00:01 dev vx0 dst 192.168.77.1 self permanent',
    'bridge fdb append 01:00:5e:00:00:05 dev vx0 dst 192.168.77.2 self permanent',
    'bridge fdb append 01:00:5e:00:00:05 dev vx0 dst 192.168.77.7 self permanent',
    'bridge fdb append 00:00:00:00:00:00 dev vx0 dst 192.168.77.3 self permanent',
    'bridge fdb append 00:00:00:00:00:00 dev vx0 dst 192.168.77.4 self permanent',
    'bridge fdb append 0e:70:0a:00:00:02 dev vx0 dst 192.168.77.5 port 4789 self permanent',
    'bridge fdb append 0e:70:0a:00:00:03 dev vx0 dst 192.168.77.6 vni 99 self permanent',
    'bridge fdb append 0e:70:0a:00:00:04 dev vx6 dst 2001:db8::77 self permanent',
    'bridge fdb add 02:00:00:00:00:60 dev p0 master static',
    'bridge fdb add 02:00:00:00:00:61 dev p0 master permanent',
]
FDB_MACS = set(line.split()[3] for line in FDB)


def fdb_snapshot():
    return sorted(json.dumps(e, sort_keys=True) for e in sh_json('bridge', '-j', 'fdb', 'show')
                  if e.get('mac') in FDB_MACS and e.get('ifname') in ('vx0', 'vx6', 'p0'))


def test_fdb_entries_of_every_shape(ipr):
    for line in FDB:
        sh(*line.split())
    assert len(fdb_snapshot()) == len(FDB)
    devs = set(ipr.link_lookup(ifname=d)[0] for d in ('vx0', 'vx6', 'p0'))
    targets = [netlink.identity('fdb', m) for m in ipr.fdb('dump')
               if m['ifindex'] in devs and m.get_attr('NDA_LLADDR') in FDB_MACS]
    assert len(targets) == len(FDB)
    delete_each(ipr, 'fdb', targets, fdb_snapshot)
    assert fdb_snapshot() == []


# --- links -----------------------------------------------------------------------------------------

def test_links(ipr):
    assert netlink.delete_link(ipr, 'a0') is True
    assert not ipr.link_lookup(ifname='a0') and not ipr.link_lookup(ifname='a1')
    assert netlink.delete_link(ipr, 'a0') is False
    idx = ipr.link_lookup(ifname='vx6')[0]
    assert netlink.delete(ipr, 'link', {'index': idx}) is True
    assert netlink.delete(ipr, 'link', {'index': idx}) is False


def test_shapes_are_distinct():
    """The route shapes really are many: two families, every kind, table and metric."""
    shapes = route_shapes()
    assert len(shapes) == len(set(tuple(s) for s in shapes)) >= 70
