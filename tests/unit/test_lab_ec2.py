"""Unit tests for plugins/module_utils/lab_ec2.py: the ENI lab's pure parts (names, addresses,
instance metadata, the attach watcher's and the VPC namespace's plans)."""
import pytest

from ansible_collections.podnet.fabric.plugins.module_utils import lab_ec2

INSTANCE = {'InstanceId': 'i-0123456789abcdef0', 'InstanceType': 'c5.large', 'PrivateIpAddress': '10.100.1.11',
            'Placement': {'AvailabilityZone': 'us-east-1a'}}
PRIMARY = {'NetworkInterfaceId': 'eni-00000000000000001', 'MacAddress': '02:00:00:00:00:01', 'SubnetId': 'subnet-1',
           'VpcId': 'vpc-1', 'Groups': [{'GroupId': 'sg-1', 'GroupName': 'default'}],
           'PrivateIpAddresses': [{'PrivateIpAddress': '10.100.1.11', 'Primary': True}],
           'Attachment': {'InstanceId': 'i-0123456789abcdef0', 'DeviceIndex': 0, 'Status': 'attached'}}
SECOND = {'NetworkInterfaceId': 'eni-00000000000000002', 'MacAddress': '02:00:00:00:00:02', 'SubnetId': 'subnet-1',
          'VpcId': 'vpc-1', 'Groups': [],
          'PrivateIpAddresses': [{'PrivateIpAddress': '10.100.1.5', 'Primary': False},
                                 {'PrivateIpAddress': '10.100.1.4', 'Primary': True}],
          'Attachment': {'InstanceId': 'i-0123456789abcdef0', 'DeviceIndex': 1, 'Status': 'attached'}}
SUBNETS = {'subnet-1': {'SubnetId': 'subnet-1', 'CidrBlock': '10.100.1.0/24'}}
VPCS = {'vpc-1': {'VpcId': 'vpc-1', 'CidrBlock': '10.100.0.0/16',
                  'CidrBlockAssociationSet': [{'CidrBlock': '10.100.0.0/16'}]}}


def tree():
    return lab_ec2.metadata_tree(INSTANCE, [PRIMARY, SECOND], SUBNETS, VPCS, 'us-east-1')


def test_names():
    assert lab_ec2.vpc_netns('pen') == 'penvpc'
    assert lab_ec2.instance_id('pen', 'node1') == lab_ec2.instance_id('pen', 'node1')
    assert lab_ec2.instance_id('pen', 'node1') != lab_ec2.instance_id('pen', 'node2')
    assert lab_ec2.instance_id('pen', 'node1').startswith('i-') and len(lab_ec2.instance_id('pen', 'node1')) == 19
    assert len(lab_ec2.port_name('eni-0123456789abcdef0')) <= 15
    eni = {'id': 'eni-2', 'node': 'node1', 'device_index': 3, 'mac': '02:00:00:00:00:02'}
    assert lab_ec2.parse_alias(lab_ec2.alias(eni)) == eni
    assert lab_ec2.parse_alias('something else') is None and lab_ec2.parse_alias(None) is None


def test_addresses_skip_the_aws_reserves():
    assert lab_ec2.reserved('10.100.1.0/24') == {'10.100.1.0', '10.100.1.1', '10.100.1.2', '10.100.1.3',
                                                 '10.100.1.255'}
    assert lab_ec2.next_free_ip('10.100.1.0/24', []) == '10.100.1.4'
    assert lab_ec2.next_free_ip('10.100.1.0/24', ['10.100.1.4', '10.100.1.6']) == '10.100.1.5'
    with pytest.raises(lab_ec2.LabEc2Error, match='no free address'):
        lab_ec2.next_free_ip('10.100.1.0/29', ['10.100.1.4', '10.100.1.5', '10.100.1.6'])
    assert lab_ec2.node_ip('10.100.1.0/24', 1) == '10.100.1.11'


def test_metadata_serves_the_interfaces_as_aws_does():
    t = tree()
    assert lab_ec2.metadata_lookup(t, '/latest/meta-data/instance-id') == (200, 'i-0123456789abcdef0')
    assert lab_ec2.metadata_lookup(t, '/latest/meta-data/mac') == (200, '02:00:00:00:00:01')
    status, listing = lab_ec2.metadata_lookup(t, '/latest/meta-data/network/interfaces/macs/')
    assert status == 200 and listing.split('\n') == ['02:00:00:00:00:01/', '02:00:00:00:00:02/']
    base = '/latest/meta-data/network/interfaces/macs/02:00:00:00:00:02/'
    assert lab_ec2.metadata_lookup(t, base + 'device-number') == (200, '1')
    assert lab_ec2.metadata_lookup(t, base + 'subnet-ipv4-cidr-block') == (200, '10.100.1.0/24')
    # the primary IP first, as AWS lists them
    assert lab_ec2.metadata_lookup(t, base + 'local-ipv4s') == (200, '10.100.1.4\n10.100.1.5')
    assert lab_ec2.metadata_lookup(t, base + 'interface-id') == (200, 'eni-00000000000000002')
    assert lab_ec2.metadata_lookup(t, base + 'vpc-ipv4-cidr-blocks') == (200, '10.100.0.0/16')
    assert 'device-number' in lab_ec2.metadata_lookup(t, base)[1].split('\n')
    assert lab_ec2.metadata_lookup(t, '/latest/meta-data/network/interfaces/macs/02:00:00:00:00:09/')[0] == 404
    assert lab_ec2.metadata_lookup(t, '/latest/meta-data/nope')[0] == 404


def test_a_detached_eni_leaves_the_metadata():
    detached = dict(SECOND, Attachment={'InstanceId': 'i-0123456789abcdef0', 'DeviceIndex': 1, 'Status': 'detached'})
    t = lab_ec2.metadata_tree(INSTANCE, [PRIMARY, detached], SUBNETS, VPCS, 'us-east-1')
    assert lab_ec2.metadata_lookup(t, '/latest/meta-data/network/interfaces/macs/')[1] == '02:00:00:00:00:01/'


def test_watcher_attaches_secondary_enis_only():
    nodes = {'i-0123456789abcdef0': 'node1'}
    elsewhere = {'InstanceId': 'i-someone-else', 'DeviceIndex': 1, 'Status': 'attached'}
    other = dict(SECOND, NetworkInterfaceId='eni-3', Attachment=elsewhere)
    want = lab_ec2.desired_ports(nodes, [PRIMARY, SECOND, other])
    assert list(want) == ['eni-00000000000000002']
    assert want['eni-00000000000000002'] == {'id': 'eni-00000000000000002', 'node': 'node1', 'device_index': 1,
                                             'mac': '02:00:00:00:00:02', 'ips': ['10.100.1.4', '10.100.1.5']}
    actions = lab_ec2.plan_ports(want, {'ports': {}, 'neighbours': {}})
    assert actions[0] == {'action': 'add_port', 'id': 'eni-00000000000000002', 'node': 'node1', 'device_index': 1,
                          'mac': '02:00:00:00:00:02'}
    assert [a['ip'] for a in actions if a['action'] == 'add_neigh'] == ['10.100.1.4', '10.100.1.5']
    port = dict((k, v) for k, v in actions[0].items() if k != 'action')
    realized = {'ports': {'eni-00000000000000002': port},
                'neighbours': {'10.100.1.4': '02:00:00:00:00:02', '10.100.1.5': '02:00:00:00:00:02'}}
    assert lab_ec2.plan_ports(want, realized) == []
    # detached: the port and its addresses go
    gone = lab_ec2.plan_ports({}, realized)
    assert [a['action'] for a in gone] == ['del_port', 'del_neigh', 'del_neigh']
    # moved to another device index: re-made
    moved = {'eni-00000000000000002': dict(want['eni-00000000000000002'], device_index=2)}
    assert [a['action'] for a in lab_ec2.plan_ports(moved, realized)] == ['del_port', 'add_port']


def test_vpc_namespace_plan():
    d = lab_ec2.vpc_desired('pen', ['10.100.2.0/24', '10.100.1.0/24'])
    assert d == {'netns': 'penvpc', 'bridge': 'vpc0', 'addresses': ['10.100.1.1/24', '10.100.2.1/24'], 'forwarding': True}
    fresh = {'netns': 'penvpc', 'exists': False, 'bridge_up': False, 'addresses': [], 'forwarding': False}
    assert [a['action'] for a in lab_ec2.vpc_plan(d, fresh)] == [
        'create_vpc', 'bridge_up', 'add_address', 'add_address', 'forwarding']
    done = dict(fresh, exists=True, bridge_up=True, addresses=d['addresses'], forwarding=True)
    assert lab_ec2.vpc_plan(d, done) == []
    assert lab_ec2.vpc_plan(None, done) == [{'action': 'remove_vpc', 'netns': 'penvpc'}]
    assert lab_ec2.vpc_plan(None, fresh) == []
