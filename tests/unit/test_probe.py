"""The connectivity probe's pure parts (module_utils/probe.py): ICMP packets, reply checks, targets
and failure lines; and that the health responder answers what the probe expects."""
import socket

import pytest

from ansible_collections.podnet.fabric.plugins.module_utils import health, probe


def test_icmp_echo_request_has_a_valid_checksum_and_replies_parse():
    pkt = probe.echo_request(socket.AF_INET, 0x1234, 7)
    assert pkt[0] == 8 and probe.checksum(pkt) == 0
    reply = bytearray(pkt)
    reply[0] = 0
    ip_header = bytes([0x45]) + bytes(19)
    assert probe.parse_echo_reply(socket.AF_INET, ip_header + bytes(reply)) == (0x1234, 7)
    assert probe.parse_echo_reply(socket.AF_INET, ip_header + pkt) is None     # our own request
    v6 = probe.echo_request(socket.AF_INET6, 9, 1)
    assert v6[0] == 128 and v6[2:4] == b'\0\0'     # the kernel fills the ICMPv6 checksum
    assert probe.parse_echo_reply(socket.AF_INET6, bytes([129]) + v6[1:]) == (9, 1)
    assert probe.parse_echo_reply(socket.AF_INET6, b'\x81') is None


def test_reply_must_name_the_expected_node():
    assert probe.check_reply('podnet-health node3', 'node3') is None
    assert probe.check_reply('podnet-health node2', 'node3') == 'answered as node2, expected node3'
    assert probe.check_reply('', 'node3') == 'closed without a reply'
    assert 'unexpected reply' in probe.check_reply('SSH-2.0-OpenSSH', 'node3')


def test_targets_are_validated_and_deduplicated():
    t = probe.normalize_targets([{'name': 'node2', 'address': '10.244.1.7/32'},
                                 {'name': 'node2', 'address': '10.244.1.7'},
                                 {'name': 'node3', 'address': 'fd00::7', 'port': 5000}], 4240)
    assert t == [{'name': 'node2', 'address': '10.244.1.7', 'port': 4240},
                 {'name': 'node3', 'address': 'fd00::7', 'port': 5000}]
    with pytest.raises(probe.ProbeError, match=r'targets\[0\]: needs name and address'):
        probe.normalize_targets([{'address': '10.0.0.1'}], 4240)
    with pytest.raises(probe.ProbeError, match=r'targets\[0\] \(n\): address'):
        probe.normalize_targets([{'name': 'n', 'address': 'nope'}], 4240)


def test_failures_list_every_unreachable_pair():
    ok = {'ok': True}
    results = [
        {'name': 'node2', 'address': '10.244.1.7', 'port': 4240, 'ping': dict(ok, sent=3, received=3),
         'tcp': dict(ok, reply='podnet-health node2')},
        {'name': 'node3', 'address': '10.244.2.5', 'port': 4240, 'ping': {'ok': False, 'sent': 3, 'received': 0},
         'tcp': {'ok': False, 'error': 'timed out'}},
        {'name': 'node4', 'address': '10.244.3.5', 'port': 4240, 'ping': {'ok': False, 'error': 'network is unreachable'},
         'tcp': {'ok': False, 'error': 'answered as node5, expected node4'}},
    ]
    assert probe.failures('node1', results) == [
        'node1 -> node3 (10.244.2.5): ping no echo reply (0 of 3)',
        'node1 -> node3 (10.244.2.5): tcp 4240 timed out',
        'node1 -> node4 (10.244.3.5): ping network is unreachable',
        'node1 -> node4 (10.244.3.5): tcp 4240 answered as node5, expected node4',
    ]
    assert probe.failures('node1', results, ping=False) == [
        'node1 -> node3 (10.244.2.5): tcp 4240 timed out',
        'node1 -> node4 (10.244.3.5): tcp 4240 answered as node5, expected node4']


def test_the_responder_answers_with_the_prefix_the_probe_checks():
    assert "'%s %%s\\n' %% node" % probe.REPLY_PREFIX in health.RESPONDER_SRC
    assert probe.check_reply(probe.expected_reply('node2'), 'node2') is None
