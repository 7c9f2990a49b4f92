"""Recovery on a real lab (prefix `prx`): stale routes of ours of any shape are removed by a run
(a link-scope one used to stop every node with ESRCH), and a module whose action the kernel refuses
after others were done says so in one line, with changed=true and what it did.
"""
import json
import os

import labutil
import pytest

from labutil import nsenter, recap, run_ok

PREFIX = 'prx'
RTPROT = '201'

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason='the lab needs root')

# Stale routes of ours (protocol 201, main table) in shapes the delete used to miss or could miss.
STALE = [
    ['ip', 'route', 'add', '10.251.0.0/24', 'dev', 'podnet_vxlan', 'proto', RTPROT],            # the report
    ['ip', 'route', 'add', 'blackhole', '10.252.0.0/24', 'proto', RTPROT],
    ['ip', 'route', 'add', '10.253.0.0/24', 'via', '10.244.99.1', 'dev', 'podnet_vxlan', 'onlink', 'proto', RTPROT,
     'metric', '7'],
    ['ip', 'route', 'add', '10.254.0.0/24', 'dev', 'podnet_vxlan', 'scope', 'host', 'proto', RTPROT],
    ['ip', '-6', 'route', 'add', 'unreachable', 'fd00:251::/64', 'proto', RTPROT],
]
FOREIGN = ['ip', 'route', 'add', '10.250.0.0/24', 'dev', 'podnet_vxlan', 'proto', 'static']


@pytest.fixture(scope='module')
def lab(tmp_path_factory):
    with labutil.own_lab(PREFIX, str(tmp_path_factory.mktemp('prx') / 'inv'), nodes=2, provision=True) as inv:
        yield inv


def routes(node, *argv):
    out = []
    for fam in ('-4', '-6'):
        out += [r['dst'] for r in json.loads(nsenter(PREFIX, node, ['ip', fam, '-j'] + list(argv)) or '[]')]
    return out


def test_stale_routes_of_ours_of_any_shape_are_removed_and_foreign_ones_stay(lab):
    for argv in STALE + [FOREIGN]:
        nsenter(PREFIX, 'node1', argv)
    ours_before = routes('node1', 'route', 'show', 'proto', RTPROT)
    assert set(['10.251.0.0/24', '10.252.0.0/24', '10.253.0.0/24', '10.254.0.0/24', 'fd00:251::/64']) <= set(ours_before)

    out = run_ok('site.yml', lab, extra=['--limit', 'node1'])
    assert 'No such process' not in out and 'Traceback' not in out
    assert recap(out)['node1']['changed'] >= 1, out[-3000:]
    ours = routes('node1', 'route', 'show', 'proto', RTPROT)
    stale = set(['10.251.0.0/24', '10.252.0.0/24', '10.253.0.0/24', '10.254.0.0/24', 'fd00:251::/64'])
    assert not stale & set(ours)
    assert set(ours) == set(ours_before) - stale
    assert '10.250.0.0/24' in routes('node1', 'route', 'show', 'proto', 'static')   # not ours: left alone

    out = run_ok('site.yml', lab, extra=['--limit', 'node1'])
    assert recap(out)['node1']['changed'] == 0, out[-3000:]
    nsenter(PREFIX, 'node1', ['ip', 'route', 'del', '10.250.0.0/24', 'dev', 'podnet_vxlan', 'proto', 'static'])


def test_an_action_the_kernel_refuses_fails_in_one_line_with_changed_and_what_was_done(lab):
    """IPv6 disabled for new devices: host_device creates the pair, brings it up, adds the IPv4
    address, and the kernel refuses the IPv6 one (EACCES)."""
    nsenter(PREFIX, 'node2', ['sysctl', '-qw', 'net.ipv6.conf.default.disable_ipv6=1'])
    args = {'name': 'prxfail0', 'peer': 'prxfail1', 'mtu': 1400, 'addresses': ['10.99.0.1/32', 'fd00:99::1/128']}
    try:
        rc, res = labutil.adhoc(lab, 'node2', 'podnet.fabric.host_device', args)
        assert rc != 0 and res['failed'] and res['changed'] is True, res
        assert [a['action'] for a in res['done']] == ['create', 'up', 'up', 'add_address'], res['done']
        assert res['failed_action'] == {'action': 'add_address', 'name': 'prxfail0', 'address': 'fd00:99::1/128'}
        msg = res['msg']
        assert msg.startswith('host_device prxfail0: add_address address=fd00:99::1/128 name=prxfail0: '), msg
        assert '(EACCES, errno 13)' in msg and '4 of 5 planned actions were done before it' in msg, msg
        assert '\n' not in msg and 'NetlinkError' not in msg, msg
        assert 'Traceback' not in str(res.get('exception', '')), res['exception']   # 2.19 adds a placeholder
        # What was done is there: the pair and its IPv4 address.
        addrs = json.loads(nsenter(PREFIX, 'node2', ['ip', '-j', 'addr', 'show', 'dev', 'prxfail0']))
        assert [a['local'] for a in addrs[0]['addr_info']] == ['10.99.0.1']
    finally:
        nsenter(PREFIX, 'node2', ['sysctl', '-qw', 'net.ipv6.conf.default.disable_ipv6=0'])
        rc, res = labutil.adhoc(lab, 'node2', 'podnet.fabric.host_device',
                                {'name': 'prxfail0', 'peer': 'prxfail1', 'state': 'absent'})
        assert rc == 0 and res['changed'], res
    rc, res = labutil.adhoc(lab, 'node2', 'podnet.fabric.host_device',
                            {'name': 'prxfail0', 'peer': 'prxfail1', 'state': 'absent'})
    assert rc == 0 and not res['changed'], res   # removing what is gone is success
