"""The eni_allocate action's pure helpers: the node's used IPs from its ledger endpoint records, the
check-mode diff's predicted side, the subnet report and its warning. The action itself, run by
ansible against a moto server: tests/integration/test_eni_cloud.py."""
from ansible_collections.podnet.fabric.plugins.action import eni_allocate


def test_used_ips_are_the_endpoint_records_addresses():
    doc = {'nodes': {'node1': {'endpoints': {'default/web-1': {'ep_id': 2, 'identity': 300, 'ips': ['10.1.0.9']},
                                             'podnet-health': {'ep_id': 1, 'identity': 4, 'ips': ['10.1.0.12']}}}}}
    assert eni_allocate.used_ips(doc, 'node1') == ['10.1.0.9', '10.1.0.12']
    assert eni_allocate.used_ips(doc, 'node2') == []


def test_check_mode_diff_predicts_the_plan():
    before = {'node1': {'eni-1 (device 1, subnet-a)': 8}}
    after = eni_allocate._predicted(before, [
        {'action': 'assign', 'node': 'node1', 'eni_id': 'eni-1', 'ip_count': 1},
        {'action': 'create', 'node': 'node1', 'device_index': 2, 'subnet_id': 'subnet-b', 'ip_count': 3},
        {'action': 'gc_mark', 'node': None, 'eni_id': 'eni-9'}])
    assert after == {'node1': {'eni-1 (device 1, subnet-a)': 9, '(new ENI) (device 2, subnet-b)': 3}}
    assert before == {'node1': {'eni-1 (device 1, subnet-a)': 8}}


def test_subnet_report_warns_before_a_subnet_runs_out():
    view = {'enis': {'eni-1': {'subnet_id': 'subnet-a', 'instance_id': 'i-1'},
                     'eni-2': {'subnet_id': 'subnet-b', 'instance_id': 'i-1'},
                     'eni-3': {'subnet_id': 'subnet-c', 'instance_id': None}},
            'subnets': {'subnet-a': {'cidr': '10.1.0.0/24', 'vpc_id': 'vpc-1', 'az': 'a', 'available': 20},
                        'subnet-b': {'cidr': '10.1.1.0/24', 'vpc_id': 'vpc-1', 'az': 'a', 'available': 200},
                        'subnet-c': {'cidr': '10.1.2.0/24', 'vpc_id': 'vpc-1', 'az': 'a', 'available': 1}}}
    subnets, warnings = eni_allocate.subnet_report(view)
    assert sorted(subnets) == ['subnet-a', 'subnet-b'] and subnets['subnet-a']['size'] == 251
    assert warnings == ['subnet subnet-a (10.1.0.0/24) is running out of addresses: 20 of 251 free']
