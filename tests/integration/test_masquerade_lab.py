"""Masquerade in a real lab (prefix `pms`): podnet.fabric.masquerade run inside node1 by Ansible.

A "pod" is a network namespace inside node1 (10.244.1.10, a veth to node1, default via 10.244.1.1).
Packets are captured on the lab's underlay bridge: pod traffic to the ToR (outside the
native-routing CIDR 10.244.0.0/16) leaves with node1's IP, pod traffic to 10.244.2.1 on node2
(inside the CIDR) keeps the pod IP. The nftables state is read back with `nft -j`; a foreign table
in the same family and hook must stay byte-identical throughout. Traffic stays inside the lab.

Every test stands alone. The module fixture purges what a killed run left of `pms`, builds the lab,
the pod and the foreign tables, records the ruleset before podnet touched it, and tears everything
down whatever happens. Each test then starts from the state it names: `no_table` (our table absent,
the ruleset as recorded) or `with_table` (our table exactly as the module's default inputs want it),
re-established only when the previous test did not leave it so.
"""
import json
import os

import labutil
import pytest

from labutil import REPO, nsenter, playbook, run_ok, write_lab_inventory

from ansible_collections.podnet.fabric.plugins.module_utils import masquerade as m

PREFIX = 'pms'
POD_NS = 'pms-pod1'
HOST_VETH = 'pms-veth1'
POD_IP = '10.244.1.10'
NODE1_IP = '192.168.50.11'
TOR_IP = '192.168.50.1'
REMOTE_POD_IP = '10.244.2.1'   # inside the CIDR, held by node2
PLAY = os.path.join(REPO, 'tests', 'integration', 'playbooks', 'masq_run.yml')
ARGS = {'pod_cidrs': ['10.244.1.0/24'], 'exclude': ['10.244.0.0/16'], 'node_ip': NODE1_IP}
FOREIGN = [('inet', 'pmsforeign'), ('ip', 'pmsnat')]

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason='the lab needs root')


def n1(*argv, check=True):
    return nsenter(PREFIX, 'node1', list(argv), check=check)


def n2(*argv, check=True):
    return nsenter(PREFIX, 'node2', list(argv), check=check)


def pod(*argv, check=True):
    # nsenter --net inside the member keeps node1's mount namespace (never `ip netns exec`).
    return n1('nsenter', '--net=/run/netns/' + POD_NS, '--', *argv, check=check)


def ruleset():
    return n1('nft', 'list', 'ruleset')


def foreign_tables():
    """The foreign tables as nft prints them, handles included (must never change)."""
    return [n1('nft', '-a', '-j', 'list', 'table', fam, name) for fam, name in FOREIGN]


def our_table():
    out = n1('nft', '-j', 'list', 'tables', 'ip')
    if 'podnet' not in [o['table']['name'] for o in json.loads(out)['nftables'] if 'table' in o]:
        return None
    return json.loads(n1('nft', '-j', 'list', 'table', 'ip', 'podnet'))


def rule_counter(listing):
    rules = [o['rule'] for o in listing['nftables'] if 'rule' in o]
    assert len(rules) == 1
    return [e['counter']['packets'] for e in rules[0]['expr'] if 'counter' in e][0]


def desired(**over):
    params = dict(ARGS, state='present', table='podnet', exclude_interfaces=[])
    params.update(over)
    return m.desired_table(m.spec(params))


def underlay_capture():
    """tcpdump on the lab's underlay bridge (in the lab's own namespace), ICMP echo requests only."""
    return labutil.Capture('%s-ul' % PREFIX, 'br0', 'icmp[icmptype] == icmp-echo')


def requests_to(packets, dst):
    """The source addresses of the echo requests to dst among the packets, one per request."""
    return [s for s, d, _what in packets if d == dst]


def sources_seen(dst, count=3):
    """Ping dst from the pod while capturing; the source addresses of the requests on the wire.

    Each of the `count` requests crosses the bridge once, so the capture stops when it has them all.
    """
    cap = underlay_capture()
    pod('ping', '-c', str(count), '-i', '0.2', '-W', '1', dst, check=False)
    out = cap.stop(until=lambda packets: len(requests_to(packets, dst)) >= count)
    return set(requests_to(out, dst))


@pytest.fixture(scope='module')
def lab(tmp_path_factory):
    """The lab's inventory path; the lab has the pod and the foreign tables, the baseline is recorded."""
    inv = write_lab_inventory(str(tmp_path_factory.mktemp('inv')), PREFIX, nodes=2)
    # A killed earlier run's lab (with the pod netns inside node1, which dies with node1's).
    labutil.purge(PREFIX)
    host_links = set(os.listdir('/sys/class/net'))
    try:
        run_ok('lab_up.yml', inv)
        # The pod: a netns inside node1, veth to node1, 10.244.1.1 as its gateway on the host side.
        n1('sysctl', '-qw', 'net.ipv4.ip_forward=1')
        n1('ip', 'netns', 'add', POD_NS)
        n1('ip', 'link', 'add', HOST_VETH, 'type', 'veth', 'peer', 'name', 'eth0', 'netns', POD_NS)
        n1('ip', 'addr', 'add', '10.244.1.1/32', 'dev', HOST_VETH)
        n1('ip', 'link', 'set', HOST_VETH, 'up')
        n1('ip', 'route', 'add', POD_IP + '/32', 'dev', HOST_VETH)
        pod('ip', 'link', 'set', 'lo', 'up')
        pod('ip', 'addr', 'add', POD_IP + '/32', 'dev', 'eth0')
        pod('ip', 'link', 'set', 'eth0', 'up')
        pod('ip', 'route', 'add', '10.244.1.1', 'dev', 'eth0', 'scope', 'link')
        pod('ip', 'route', 'add', 'default', 'via', '10.244.1.1')
        # Native routing between the two nodes' pod CIDRs, by hand (not what is under test).
        n1('ip', 'route', 'add', '10.244.2.0/24', 'via', '192.168.50.12')
        n2('ip', 'addr', 'add', REMOTE_POD_IP + '/32', 'dev', 'lo')
        n2('ip', 'route', 'add', '10.244.1.0/24', 'via', NODE1_IP)
        # Foreign nftables state: another table in the same family, with a nat chain on the same hook.
        n1('nft', 'add table inet pmsforeign; '
                  'add chain inet pmsforeign pmsfwd { type filter hook forward priority 0; policy accept; }; '
                  'add rule inet pmsforeign pmsfwd ip daddr 203.0.113.0/24 accept comment "not podnet\'s"; '
                  'add table ip pmsnat; '
                  'add chain ip pmsnat pmspost { type nat hook postrouting priority 50; policy accept; }; '
                  'add chain ip pmsnat pmsaux; '
                  'add rule ip pmsnat pmspost ip daddr 198.51.100.0/24 masquerade')
        # The node's ruleset before podnet touched it.
        _BASELINE.update(ruleset=ruleset(), foreign=foreign_tables())
        yield inv
    finally:
        _BASELINE.clear()
        try:
            n1('ip', 'netns', 'del', POD_NS, check=False)       # takes the veth pair with it
            n1('nft', 'delete table inet pmsforeign; delete table ip pmsnat', check=False)
            n1('nft', 'delete table ip podnet', check=False)
            n2('ip', 'addr', 'del', REMOTE_POD_IP + '/32', 'dev', 'lo', check=False)
        finally:
            run_ok('lab_down.yml', inv)
        labutil.assert_lab_gone(PREFIX)
        assert set(os.listdir('/sys/class/net')) == host_links


_BASELINE = {}


@pytest.fixture(scope='module')
def baseline(lab):
    """The node's ruleset and foreign tables before podnet touched it (recorded by the lab fixture)."""
    return _BASELINE


@pytest.fixture
def no_table(lab, baseline):
    """Our table absent and the node's ruleset exactly as before podnet ran."""
    if our_table() is not None:
        n1('nft', 'delete', 'table', 'ip', 'podnet')
    assert ruleset() == baseline['ruleset']
    return lab


@pytest.fixture
def with_table(lab, baseline, tmp_path):
    """Our table exactly as the module makes it from ARGS (the module's own run when it is not)."""
    table = our_table()
    if table is None or m.normalize(table, 'ip', 'podnet') != desired():
        rc, out, result = masq(lab, tmp_path, ARGS)
        assert rc == 0 and result is not None, out[-6000:]
    assert m.normalize(our_table(), 'ip', 'podnet') == desired()
    assert foreign_tables() == baseline['foreign']
    return lab


_COUNTER = [0]


def masq(lab, tmp_path, args, check=False):
    _COUNTER[0] += 1
    out = tmp_path / ('result-%d.json' % _COUNTER[0])
    ev = tmp_path / ('vars-%d.json' % _COUNTER[0])
    ev.write_text(json.dumps(dict([('masq_out', str(out))] + [('masq_' + k, v) for k, v in args.items()])))
    rc, text = playbook(PLAY, lab, extra=['-e', '@' + str(ev)] + ([] if check else ['--diff']), check=check)
    result = json.loads(out.read_text()) if out.exists() else None
    return rc, text, result


def test_pod_reaches_both_sides_unmasqueraded_before(lab, baseline, no_table):
    # Control: without the table the pod's own IP is on the wire towards the ToR too.
    assert sources_seen(TOR_IP) == {POD_IP}
    assert '2 received' in pod('ping', '-c', '2', '-i', '0.2', '-W', '1', REMOTE_POD_IP)


@pytest.mark.parametrize('args, error', [
    ({'pod_cidrs': ['10.244.1.0/24', 'fd00::/64']}, "pod_cidrs: 'fd00::/64' is not an IPv4 CIDR"),
    ({'pod_cidrs': []}, 'pod_cidrs: give at least one pod CIDR'),
    ({'node_ip': '192.168.50.0/24'}, "node_ip: '192.168.50.0/24' is not an IPv4 address"),
    ({'node_ip': '192.168.50.12'}, 'node_ip: 192.168.50.12 is not an address of this node'),
    ({'exclude': ['10.244.0.1/16']}, "exclude: '10.244.0.1/16' has host bits set"),
])
def test_bad_input_fails_before_any_change(lab, baseline, no_table, tmp_path, args, error):
    rc, out, result = masq(lab, tmp_path, dict(ARGS, **args))
    assert rc != 0 and result is None, out
    assert error in out, out
    assert ruleset() == baseline['ruleset']


def test_check_mode_changes_nothing(lab, baseline, no_table, tmp_path):
    rc, out, result = masq(lab, tmp_path, ARGS, check=True)
    assert rc == 0, out
    assert result['changed'] and [a['action'] for a in result['plan']] == ['create_table']
    assert result['state']['table'] == desired()          # the projected table
    assert result['diff']['before']['table'] is None
    assert 'snat to 192.168.50.11' in out                  # the diff shows the rule it would add
    assert ruleset() == baseline['ruleset']
    assert our_table() is None


def test_snat_outside_the_cidr_only(lab, baseline, no_table, tmp_path):
    rc, out, result = masq(lab, tmp_path, ARGS)
    assert rc == 0, out
    assert result['changed'] and [a['action'] for a in result['plan']] == ['create_table']
    listing = our_table()
    assert m.normalize(listing, 'ip', 'podnet') == desired() == result['state']['table']
    text = n1('nft', 'list', 'table', 'ip', 'podnet')
    assert 'type nat hook postrouting priority srcnat; policy accept;' in text
    assert 'ip saddr @pod_cidrs ip daddr != @exclude counter packets 0 bytes 0 snat to 192.168.50.11' in text
    assert foreign_tables() == baseline['foreign']

    # Leaving the CIDR: the ToR sees node1's IP, and the pod gets its replies back through conntrack.
    assert sources_seen(TOR_IP) == {NODE1_IP}
    assert '3 received' in pod('ping', '-c', '3', '-i', '0.2', '-W', '1', TOR_IP)
    after_out = rule_counter(our_table())
    assert after_out >= 2   # one per new flow (each ping run is a flow), not per packet
    # Inside the CIDR: node2 sees the pod IP, and the rule did not fire.
    assert sources_seen(REMOTE_POD_IP) == {POD_IP}
    assert '2 received' in pod('ping', '-c', '2', '-i', '0.2', '-W', '1', REMOTE_POD_IP)
    assert rule_counter(our_table()) == after_out
    # node1's own traffic (not from a pod CIDR) is not rewritten either.
    cap = underlay_capture()
    n1('ping', '-c', '1', '-W', '1', '192.168.50.12')
    assert requests_to(cap.stop(until=lambda packets: requests_to(packets, '192.168.50.12')), '192.168.50.12') == [NODE1_IP]

    rc, out, result = masq(lab, tmp_path, ARGS)
    assert rc == 0 and not result['changed'] and result['plan'] == [], out
    assert result['diff']['before'] == result['diff']['after']
    assert foreign_tables() == baseline['foreign']


def test_drift_is_detected_and_repaired(lab, baseline, with_table, tmp_path):
    handles = [o['rule']['handle'] for o in json.loads(n1('nft', '-a', '-j', 'list', 'chain', 'ip', 'podnet',
                                                          'postrouting'))['nftables'] if 'rule' in o]
    n1('nft', 'delete', 'rule', 'ip', 'podnet', 'postrouting', 'handle', str(handles[0]))
    drifted = ruleset()
    rc, out, result = masq(lab, tmp_path, ARGS, check=True)
    assert rc == 0 and result['changed'], out
    assert result['plan'][0]['action'] == 'replace_table' and result['plan'][0]['differences'] == ['rules']
    assert ruleset() == drifted                             # check mode repaired nothing
    assert sources_seen(TOR_IP) == {POD_IP}                 # and without the rule, no SNAT

    rc, out, result = masq(lab, tmp_path, ARGS)
    assert rc == 0 and result['changed'], out
    assert m.normalize(our_table(), 'ip', 'podnet') == desired()
    assert sources_seen(TOR_IP) == {NODE1_IP}

    # A hand-added element is drift too: the table is ours, exactly as desired.
    n1('nft', 'add', 'element', 'ip', 'podnet', 'exclude', '{ 192.168.50.1 }')
    rc, out, result = masq(lab, tmp_path, ARGS)
    assert rc == 0 and result['plan'][0]['differences'] == ['set exclude differs'], out
    assert m.normalize(our_table(), 'ip', 'podnet') == desired()
    rc, out, result = masq(lab, tmp_path, ARGS)
    assert rc == 0 and not result['changed'], out
    assert foreign_tables() == baseline['foreign']


def test_changed_inputs_and_interfaces(lab, baseline, with_table, tmp_path):
    args = dict(ARGS, pod_cidrs=['10.244.1.0/24', '10.244.3.7'], exclude_interfaces=['podnet_vxlan'])
    rc, out, result = masq(lab, tmp_path, args)
    assert rc == 0 and result['changed'], out
    want = desired(pod_cidrs=args['pod_cidrs'], exclude_interfaces=['podnet_vxlan'])
    assert m.normalize(our_table(), 'ip', 'podnet') == want
    text = n1('nft', 'list', 'table', 'ip', 'podnet')
    assert 'oifname != @exclude_ifaces' in text and '10.244.3.7' in text
    rc, out, result = masq(lab, tmp_path, args)
    assert rc == 0 and not result['changed'], out
    # Excluding node1's underlay device stops the SNAT towards the ToR.
    rc, out, result = masq(lab, tmp_path, dict(ARGS, exclude_interfaces=['eth0']))
    assert rc == 0 and result['changed'], out
    assert sources_seen(TOR_IP) == {POD_IP}
    rc, out, result = masq(lab, tmp_path, ARGS)
    assert rc == 0 and result['changed'], out
    assert sources_seen(TOR_IP) == {NODE1_IP}


def test_absent_removes_only_our_table(lab, baseline, with_table, tmp_path):
    rc, out, result = masq(lab, tmp_path, {'state': 'absent'}, check=True)
    assert rc == 0 and result['plan'] == [{'action': 'delete_table', 'family': 'ip', 'table': 'podnet'}], out
    assert our_table() is not None
    rc, out, result = masq(lab, tmp_path, {'state': 'absent'})
    assert rc == 0 and result['changed'] and result['state']['table'] is None, out
    assert our_table() is None
    # Byte-identical to the ruleset before podnet ran: the foreign tables, handles and all.
    assert ruleset() == baseline['ruleset']
    assert foreign_tables() == baseline['foreign']
    assert sources_seen(TOR_IP) == {POD_IP}
    rc, out, result = masq(lab, tmp_path, {'state': 'absent'})
    assert rc == 0 and not result['changed'], out
