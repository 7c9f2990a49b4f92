"""The pure part of netlink deletes: an object's identity from a dump, the delete request built from
it, when the kernel's answer needs a presence check, and which errors mean "already gone".
(tests/integration/test_netlink_deletes.py runs them against real kernel objects.)"""
import errno

import pytest

from ansible_collections.podnet.fabric.plugins.module_utils import netlink


class Msg(dict):
    """What identity() needs of a pyroute2 message: header fields by key, attributes by name."""

    def __init__(self, fields, attrs):
        super(Msg, self).__init__(fields)
        self.attrs = dict(attrs)

    def get_attr(self, name):
        return self.attrs.get(name)


def route(**attrs):
    fields = {'family': 2, 'dst_len': 24, 'src_len': 0, 'tos': 0, 'table': 254, 'proto': 201, 'type': 1,
              'scope': 253, 'flags': 4}
    fields.update((k, attrs.pop(k)) for k in list(attrs) if k in fields)
    return Msg(fields, attrs)


def test_a_route_is_deleted_at_scope_nowhere_by_what_the_kernel_reported():
    msg = route(RTA_TABLE=254, RTA_DST='10.251.0.0', RTA_OIF=7, RTA_CACHEINFO={'x': 1})
    ident = netlink.identity('route', msg)
    # scope and flags (onlink) are not part of it: the kernel does not match on them
    assert ident == {'family': 2, 'dst_len': 24, 'src_len': 0, 'tos': 0, 'table': 254, 'proto': 201, 'type': 1,
                     'RTA_TABLE': 254, 'RTA_DST': '10.251.0.0', 'RTA_OIF': 7}
    assert netlink.delete_request('route', ident) == {
        'family': 2, 'dst_len': 24, 'src_len': 0, 'tos': 0, 'table': 254, 'proto': 201, 'type': 1,
        'dst': '10.251.0.0', 'oif': 7, 'scope': netlink.RT_SCOPE_NOWHERE}


def test_route_table_above_255_comes_from_the_attribute_and_metric_and_gateway_are_kept():
    ident = netlink.identity('route', route(table=252, RTA_TABLE=1000, RTA_DST='10.0.0.0', RTA_PRIORITY=50,
                                            RTA_GATEWAY='192.0.2.9', RTA_OIF=3))
    req = netlink.delete_request('route', ident)
    assert req['table'] == 1000 and req['priority'] == 50 and req['gateway'] == '192.0.2.9'


def test_blackhole_and_ipv6_routes():
    bh = netlink.identity('route', route(type=6, scope=0, RTA_TABLE=254, RTA_DST='10.252.0.0'))
    assert netlink.delete_request('route', bh)['type'] == 6 and 'oif' not in netlink.delete_request('route', bh)
    v6 = netlink.identity('route', route(family=10, dst_len=64, type=7, RTA_TABLE=254, RTA_DST='fd00::',
                                         RTA_PRIORITY=1024, RTA_OIF=1))
    assert netlink.delete_request('route', v6)['priority'] == 1024


def test_default_route_has_no_dst():
    ident = netlink.identity('route', route(dst_len=0, RTA_TABLE=254, RTA_GATEWAY='192.0.2.1'))
    assert 'dst' not in netlink.delete_request('route', ident)


def test_presence_check_where_the_kernel_reads_a_wildcard():
    v4_metric0 = netlink.identity('route', route(RTA_TABLE=254, RTA_DST='10.0.0.0'))
    v4_metric50 = netlink.identity('route', route(RTA_TABLE=254, RTA_DST='10.0.0.0', RTA_PRIORITY=50))
    v6 = netlink.identity('route', route(family=10, RTA_TABLE=254, RTA_DST='fd00::', RTA_PRIORITY=1024))
    assert netlink.needs_presence_check('route', v4_metric0)
    assert not netlink.needs_presence_check('route', v4_metric50)
    assert not netlink.needs_presence_check('route', v6)
    assert netlink.needs_presence_check('rule', {'family': 2})
    assert netlink.needs_presence_check('fdb', {'family': 7})
    assert not netlink.needs_presence_check('addr', {'family': 2})
    assert not netlink.needs_presence_check('neigh', {'family': 2})


def test_rule_request_maps_fra_attributes():
    msg = Msg({'family': 2, 'dst_len': 0, 'src_len': 24, 'tos': 0, 'table': 252, 'action': 1, 'flags': 0},
              {'FRA_TABLE': 1000, 'FRA_PRIORITY': 111, 'FRA_SRC': '10.0.0.0', 'FRA_PROTOCOL': 201,
               'FRA_SUPPRESS_PREFIXLEN': 0, 'FRA_IIFNAME': 'eth1'})
    req = netlink.delete_request('rule', netlink.identity('rule', msg))
    assert req == {'family': 2, 'dst_len': 0, 'src_len': 24, 'tos': 0, 'table': 1000, 'action': 1,
                   'priority': 111, 'src': '10.0.0.0', 'iifname': 'eth1', 'suppress_prefixlen': 0,
                   'protocol': 201}


def test_neighbour_and_fdb_flags_keep_only_what_identifies_them():
    n = Msg({'family': 10, 'ifindex': 4, 'flags': netlink.NTF_PROXY | 0x80, 'state': 0x80},
            {'NDA_DST': 'fd00::1', 'NDA_LLADDR': None})
    assert netlink.identity('neigh', n) == {'family': 10, 'ifindex': 4, 'flags': netlink.NTF_PROXY,
                                            'NDA_DST': 'fd00::1'}
    vxlan = Msg({'family': 7, 'ifindex': 5, 'flags': netlink.NTF_SELF, 'state': 0x80},
                {'NDA_LLADDR': '0e:70:c0:a8:32:0c', 'NDA_DST': '192.168.50.12', 'NDA_VNI': 99})
    assert netlink.delete_request('fdb', netlink.identity('fdb', vxlan)) == {
        'family': 7, 'ifindex': 5, 'flags': netlink.NTF_SELF, 'lladdr': '0e:70:c0:a8:32:0c',
        'dst': '192.168.50.12', 'vni': 99}
    # A bridge reports its own entries with neither SELF nor MASTER: the delete must say MASTER.
    bridge = Msg({'family': 7, 'ifindex': 6, 'flags': 0, 'state': 0x80},
                 {'NDA_LLADDR': '02:00:00:00:00:60', 'NDA_MASTER': 3})
    assert netlink.identity('fdb', bridge)['flags'] == netlink.NTF_MASTER


def test_address_identity_keeps_local_peer_and_label():
    a = Msg({'family': 2, 'prefixlen': 32, 'index': 3, 'flags': 0x80, 'scope': 0},
            {'IFA_LOCAL': '203.0.113.5', 'IFA_ADDRESS': '203.0.113.6', 'IFA_LABEL': 'a0'})
    assert netlink.delete_request('addr', netlink.identity('addr', a)) == {
        'family': 2, 'prefixlen': 32, 'index': 3, 'local': '203.0.113.5', 'address': '203.0.113.6', 'label': 'a0'}
    assert netlink.address_text(a) == '203.0.113.6/32'


@pytest.mark.parametrize('code, gone', [(errno.ESRCH, True), (errno.ENOENT, True), (errno.EADDRNOTAVAIL, True),
                                        (errno.ENODEV, True), (errno.EEXIST, False), (errno.EPERM, False),
                                        (errno.EINVAL, False)])
def test_which_errors_mean_already_gone(code, gone):
    class NetlinkError(Exception):
        def __init__(self, c):
            super(NetlinkError, self).__init__(c, 'x')
            self.code = c

    assert netlink.is_gone(NetlinkError(code)) is gone
    assert netlink.is_gone(OSError(code, 'x')) is gone
    assert netlink.is_gone(ValueError('x')) is False


def test_pyroute2_waits_long_enough_for_its_namespace_helper_on_a_busy_node():
    # A Debian VM under qemu emulation missed pyroute2's 2 s for netns.create's child every time.
    from pyroute2 import config
    assert config.default_communicate_timeout >= netlink.NETNS_CHILD_TIMEOUT == 60
    assert config.default_create_socket_timeout >= 60
