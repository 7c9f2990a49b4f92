"""plugins/plugin_utils/eni_cloud.py without a server (botocore's Stubber): throttling retried with our
backoff after botocore's, AWS error codes in every failure, no credentials in messages, a create with
its ownership tags and a client token, ENIs normalized as the planner reads them. The same code against
a moto server: tests/integration/test_eni_cloud.py."""
import os

import pytest

boto3 = pytest.importorskip('boto3')
from botocore.stub import ANY, Stubber  # noqa: E402

from ansible_collections.podnet.fabric.plugins.plugin_utils import eni_cloud, eni_plan  # noqa: E402


@pytest.fixture
def stubbed(monkeypatch):
    monkeypatch.setenv('AWS_ACCESS_KEY_ID', 'AKIAIOSFODNN7EXAMPLE')
    monkeypatch.setenv('AWS_SECRET_ACCESS_KEY', 'wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY')
    client = boto3.client('ec2', region_name='us-east-1')
    stub = Stubber(client)
    ec2 = eni_cloud.Ec2('us-east-1', client=client, backoff_base=0.0, our_retries=3)
    ec2._errors = None
    with stub:
        yield ec2, stub


def test_throttling_is_retried_with_our_backoff_then_succeeds(stubbed):
    ec2, stub = stubbed
    for _attempt in range(3):
        stub.add_client_error('describe_subnets', service_error_code='RequestLimitExceeded', http_status_code=503)
    stub.add_response('describe_subnets', {'Subnets': []})
    assert ec2.call('DescribeSubnets', 'DescribeSubnets')['Subnets'] == []
    calls = ec2.api_calls()
    assert calls['backoff_retries'] == 3 and calls['calls']['DescribeSubnets'] == 4


def test_still_throttled_fails_with_the_code(stubbed):
    ec2, stub = stubbed
    for _attempt in range(4):
        stub.add_client_error('attach_network_interface', service_error_code='RequestLimitExceeded', http_status_code=503)
    with pytest.raises(eni_cloud.EniCloudError) as e:
        ec2.call('AttachNetworkInterface', 'node1: AttachNetworkInterface eni-1', NetworkInterfaceId='eni-1',
                 InstanceId='i-1', DeviceIndex=1)
    assert e.value.code == 'RequestLimitExceeded' and str(e.value).startswith('node1: AttachNetworkInterface eni-1: '
                                                                              'RequestLimitExceeded: still throttled')


def test_errors_carry_the_code_and_never_credentials(stubbed):
    ec2, stub = stubbed
    stub.add_client_error('create_network_interface', service_error_code='InsufficientFreeAddressesInSubnet',
                          service_message='no room; signed with AKIAIOSFODNN7EXAMPLE and '
                                          'wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY')
    act = {'node': 'node1', 'subnet_id': 'subnet-1', 'instance_id': 'i-1', 'groups': [], 'ip_count': 3,
           'description': 'd', 'tags': eni_plan.owner_tags('lab', 'node1'), 'device_index': 1}
    with pytest.raises(eni_cloud.EniCloudError) as e:
        eni_cloud.create_and_attach(ec2, act)
    text = str(e.value)
    assert e.value.code == 'InsufficientFreeAddressesInSubnet' and 'InsufficientFreeAddressesInSubnet' in text
    assert 'node1: CreateNetworkInterface in subnet-1 for i-1' in text
    assert os.environ['AWS_SECRET_ACCESS_KEY'] not in text and 'AKIAIOSFODNN7EXAMPLE' not in text


def test_prefix_shortage_becomes_the_fallback_signal(stubbed):
    ec2, stub = stubbed
    stub.add_client_error('create_network_interface', service_error_code='InsufficientPrefixesInSubnet')
    act = {'node': 'node1', 'subnet_id': 'subnet-1', 'instance_id': 'i-1', 'groups': [], 'prefix_count': 1,
           'description': 'd', 'tags': {}, 'device_index': 1}
    with pytest.raises(eni_cloud.InsufficientPrefixes) as e:
        eni_cloud.create_and_attach(ec2, act)
    assert e.value.subnet_id == 'subnet-1'


def test_create_tags_in_the_same_call_with_a_client_token_then_attach(stubbed):
    ec2, stub = stubbed
    tags = eni_plan.owner_tags('lab', 'node1', {'team': 'net'})
    stub.add_response('create_network_interface', {'NetworkInterface': {'NetworkInterfaceId': 'eni-9'}}, {
        'SubnetId': 'subnet-1', 'Description': 'desc', 'Groups': ['sg-1'], 'SecondaryPrivateIpAddressCount': 8,
        'ClientToken': 'tok', 'TagSpecifications': [{'ResourceType': 'network-interface', 'Tags': [
            {'Key': k, 'Value': v} for k, v in sorted(tags.items())]}]})
    stub.add_response('attach_network_interface', {'AttachmentId': 'eni-attach-9'},
                      {'NetworkInterfaceId': 'eni-9', 'InstanceId': 'i-1', 'DeviceIndex': 1})
    stub.add_response('modify_network_interface_attribute', {}, {
        'NetworkInterfaceId': 'eni-9', 'Attachment': {'AttachmentId': 'eni-attach-9', 'DeleteOnTermination': True}})
    act = {'node': 'node1', 'subnet_id': 'subnet-1', 'instance_id': 'i-1', 'groups': ['sg-1'], 'ip_count': 8,
           'description': 'desc', 'tags': tags, 'device_index': 1, 'client_token': 'tok'}
    assert eni_cloud.create_and_attach(ec2, act) == 'eni-9'
    stub.assert_no_pending_responses()


def test_gc_delete_of_a_gone_eni_is_success(stubbed):
    ec2, stub = stubbed
    stub.add_client_error('delete_network_interface', service_error_code='InvalidNetworkInterfaceID.NotFound')
    stub.add_client_error('delete_network_interface', service_error_code='InvalidNetworkInterface.InUse')
    assert eni_cloud.gc_delete(ec2, 'eni-1') is True
    assert eni_cloud.gc_delete(ec2, 'eni-2') is False


def test_read_view_is_a_fixed_number_of_describes(stubbed):
    ec2, stub = stubbed
    stub.add_response('describe_instance_types', {'InstanceTypes': [
        {'InstanceType': 'c5.large', 'NetworkInfo': {'MaximumNetworkInterfaces': 3, 'Ipv4AddressesPerInterface': 10}}]},
        {'Filters': [{'Name': 'instance-type', 'Values': ['c5.large']}]})
    stub.add_response('describe_network_interfaces', {'NetworkInterfaces': [{
        'NetworkInterfaceId': 'eni-1', 'MacAddress': '02:AA:00:00:00:01', 'SubnetId': 'subnet-1', 'VpcId': 'vpc-1',
        'AvailabilityZone': 'us-east-1a', 'Status': 'in-use', 'PrivateIpAddress': '10.0.0.5',
        'PrivateIpAddresses': [{'PrivateIpAddress': '10.0.0.5', 'Primary': True},
                               {'PrivateIpAddress': '10.0.0.6', 'Primary': False}],
        'Groups': [{'GroupId': 'sg-1'}], 'TagSet': [],
        'Attachment': {'InstanceId': 'i-1', 'DeviceIndex': 0, 'Status': 'attached', 'AttachmentId': 'a-1',
                       'DeleteOnTermination': True}}]},
        {'Filters': [{'Name': 'attachment.instance-id', 'Values': ['i-1', 'i-2']}], 'MaxResults': 1000})
    stub.add_response('describe_network_interfaces', {'NetworkInterfaces': []}, {
        'Filters': [{'Name': 'status', 'Values': ['available']}, {'Name': 'tag:podnet.io/cluster', 'Values': ['lab']}],
        'MaxResults': 1000})
    stub.add_response('describe_subnets', {'Subnets': [{'SubnetId': 'subnet-1', 'CidrBlock': '10.0.0.0/24', 'VpcId': 'vpc-1',
                                                        'AvailabilityZone': 'us-east-1a', 'AvailableIpAddressCount': 200}]},
                      {'Filters': [{'Name': 'vpc-id', 'Values': ['vpc-1']}], 'MaxResults': ANY})
    nodes = {'node1': {'instance_id': 'i-1', 'instance_type': 'c5.large'},
             'node2': {'instance_id': 'i-2', 'instance_type': 'c5.large'}}
    view = eni_cloud.read_view(ec2, 'lab', {}, nodes)
    assert view['enis']['eni-1'] == {
        'id': 'eni-1', 'mac': '02:aa:00:00:00:01', 'subnet_id': 'subnet-1', 'vpc_id': 'vpc-1', 'az': 'us-east-1a',
        'status': 'in-use', 'instance_id': 'i-1', 'device_index': 0, 'attachment_id': 'a-1',
        'delete_on_termination': True, 'primary_ip': '10.0.0.5', 'ips': ['10.0.0.6'], 'prefixes': [],
        'groups': ['sg-1'], 'description': '', 'tags': {}}
    assert view['limits'] == {'c5.large': {'max_enis': 3, 'ipv4_per_eni': 10}}
    assert ec2.api_calls()['describe_calls'] == 4


def test_client_token_is_stable_across_an_interrupted_run_and_changes_with_the_ledger():
    act = {'node': 'node1', 'subnet_id': 'subnet-1', 'instance_id': 'i-1', 'device_index': 1, 'ip_count': 8,
           'tags': eni_plan.owner_tags('lab', 'node1')}
    token = eni_cloud.client_token(act, 'ledger@3/0')
    assert len(token) == 64 and token == eni_cloud.client_token(dict(act), 'ledger@3/0')
    assert token != eni_cloud.client_token(act, 'ledger@4/0')
    assert token != eni_cloud.client_token(dict(act, device_index=2), 'ledger@3/0')
