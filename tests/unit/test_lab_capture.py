"""Unit tests for the tcpdump parsing behind lab_capture (plugins/module_utils/lab.py)."""
from ansible_collections.podnet.fabric.plugins.module_utils import lab as lab_capture

LINES = """20:06:43.545713 IP 192.168.60.11.51418 > 192.168.60.12.8472: VXLAN, flags [I] (0x08), vni 2
IP 10.244.1.1 > 10.244.2.1: ICMP echo request, id 6713, seq 1, length 64
20:06:43.658382 IP 192.168.60.11.36901 > 192.168.60.12.8472: VXLAN, flags [I] (0x08), vni 2
IP 10.244.1.5.58600 > 10.244.2.1.4240: Flags [S], seq 452541329, win 64860, length 0
20:06:44.000001 IP 10.244.1.5 > 10.244.2.7: ICMP echo request, id 7, seq 1, length 64
20:06:44.000002 IP 10.244.1.5.40000 > 10.244.2.7.4240: Flags [S.], seq 1, ack 2, win 5, length 0
20:06:44.000003 ARP, Request who-has 192.168.50.1 tell 192.168.50.11, length 28
""".splitlines()


def test_vxlan_packets_carry_inner_addresses():
    pkts = lab_capture.parse(LINES)
    assert pkts[0] == {'src': '192.168.60.11', 'dst': '192.168.60.12', 'proto': 'udp', 'dport': 8472, 'vni': 2,
                       'inner_src': '10.244.1.1', 'inner_dst': '10.244.2.1', 'inner_proto': 'icmp',
                       'inner_dport': None}
    assert pkts[1]['inner_proto'] == 'tcp' and pkts[1]['inner_dport'] == 4240


def test_plain_packets_and_non_ip_lines():
    pkts = lab_capture.parse(LINES)
    assert len(pkts) == 4
    assert pkts[2] == {'src': '10.244.1.5', 'dst': '10.244.2.7', 'proto': 'icmp', 'dport': None}
    assert pkts[3]['proto'] == 'tcp' and pkts[3]['dport'] == 4240 and 'vni' not in pkts[3]


def test_vxlan_decoding_only_on_the_vxlan_port():
    pkts = lab_capture.parse(LINES[:2], vxlan_port=4789)
    assert 'vni' not in pkts[0]
    assert len(pkts) == 2
