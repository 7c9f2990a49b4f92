"""ipam_report in eni mode (plugin_utils/ipam_report.eni_utilization and its table): ENI use per node
from eni_allocate's ledger records and the endpoint records, free addresses per subnet, and the
warning before a subnet runs out."""
from ansible_collections.podnet.fabric.plugins.plugin_utils import ipam_report

DOC = {'serial': 3, 'nodes': {
    'node1': {'ip': '192.168.70.10', 'eni': {'instance_id': 'i-1', 'instance_type': 'c5.large', 'limit': 18, 'enis': [
        {'id': 'eni-1', 'device_index': 1, 'ips': ['10.1.0.%d' % i for i in range(10, 19)], 'prefixes': []},
        {'id': 'eni-2', 'device_index': 2, 'ips': ['10.1.0.30'], 'prefixes': []}]},
        'endpoints': {'default/web-1': {'ips': ['10.1.0.10']}, 'podnet-health': {'ips': ['10.1.0.11']},
                      'default/elsewhere': {'ips': ['10.9.9.9']}}},
    'node2': {'ip': '192.168.70.11', 'cidrs': {}}},
    'eni_subnets': {'subnet-a': {'cidr': '10.1.0.0/24', 'az': 'us-east-1a', 'size': 251, 'available': 20},
                    'subnet-b': {'cidr': '10.1.1.0/24', 'az': 'us-east-1a', 'size': 251, 'available': 200}}}
MODEL = {'nodes': {'node1': {}, 'node2': {}}}


def test_eni_use_per_node_and_free_per_subnet():
    eni = ipam_report.eni_utilization(MODEL, DOC)
    assert eni['nodes'] == {'node1': {'instance_id': 'i-1', 'instance_type': 'c5.large', 'enis': 2, 'addresses': 10,
                                      'used': 2, 'free': 8, 'limit': 18, 'percent': 55.6, 'in_inventory': True}}
    assert eni['subnets']['subnet-a'] == {'cidr': '10.1.0.0/24', 'az': 'us-east-1a', 'size': 251, 'available': 20,
                                          'used': 231, 'percent': 92.0}
    assert eni['warnings'] == ['subnet subnet-a (10.1.0.0/24) is running out of addresses: 20 of 251 free (less than 10%)']


def test_the_table_and_page_show_it():
    report = {'cluster': 'lab', 'mode': 'eni', 'serial': 3, 'pools': {}, 'nodes': {},
              'eni': ipam_report.eni_utilization(MODEL, DOC)}
    lines = ipam_report.text_table(report)
    assert any(line.split()[:5] == ['node1', 'i-1', 'c5.large', '2', '10'] for line in lines), lines
    assert any(line.startswith('subnet-a') and '20' in line for line in lines)
    assert lines[-1].startswith('WARNING: subnet subnet-a')
    page = ipam_report.html_page(report)
    assert 'ENIs per node' in page and 'subnet-b' in page and 'running out' in page
