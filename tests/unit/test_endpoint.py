"""Unit tests for plugins/module_utils/endpoint.py: a workload endpoint's names, desired state, plan
and projection (the health endpoint's responder on top of it is test_health.py's)."""
import copy

import pytest

from ansible_collections.podnet.fabric.plugins.module_utils import endpoint

EndpointError = endpoint.EndpointError


def want(**kw):
    args = dict(netns='web-1', device=endpoint.device_name('web-1'), addresses=['10.244.1.9'],
                router_ips=['10.244.1.1'], mtu=1450, state='present')
    args.update(kw)
    return endpoint.desired_state(**args)


def kinds(actions):
    return [a['action'] for a in actions]


def test_device_names_are_lxc_and_a_hash_of_the_name_within_the_kernel_limit():
    names = [endpoint.device_name(n) for n in ('web-1', 'web-2', 'a' * 200)]
    assert all(n.startswith('lxc') and len(n) == 15 for n in names)
    assert len(set(names)) == 3 and endpoint.device_name('web-1') == names[0]   # stable, distinct


@pytest.mark.parametrize('netns,device,match', [
    ('', 'lxc1', 'netns'), ('a/b', 'lxc1', 'netns'), ('..', 'lxc1', 'netns'),
    ('web-1', 'lxc0123456789abcd', 'device'), ('web-1', '', 'device'), ('web-1', 'lx c', 'device'),
])
def test_bad_names_are_refused_before_anything_is_read(netns, device, match):
    with pytest.raises(EndpointError, match=match):
        endpoint.desired_state(netns, device, ['10.244.1.9'], ['10.244.1.1'], 1450, 'present')
    with pytest.raises(EndpointError, match=match):
        endpoint.desired_state(netns, device, None, None, 0, 'absent')


def test_a_new_endpoint_is_namespace_pair_links_addresses_and_routes_without_a_responder():
    d = want()
    acts = endpoint.plan(d, endpoint.empty_realized('web-1'))
    assert kinds(acts) == ['create_netns', 'create_veth', 'up', 'up', 'up', 'add_address',
                           'add_route', 'add_route', 'add_route']
    assert acts[1]['name'] == endpoint.device_name('web-1') and acts[1]['peer'] == 'eth0'
    after = endpoint.project(d, endpoint.empty_realized('web-1'), acts)
    assert endpoint.plan(d, after) == []
    assert 'responder' not in after
    assert endpoint.addresses_by_family(after, d) == {'ipv4': '10.244.1.9'}


def test_absent_removes_the_pair_and_the_namespace_and_nothing_when_gone():
    d = endpoint.desired_state('web-1', 'lxcweb', None, None, 0, 'absent')
    present = want(device='lxcweb')
    r = endpoint.project(present, endpoint.empty_realized('web-1'),
                         endpoint.plan(present, endpoint.empty_realized('web-1')))
    r['device'] = dict(r['device'], index=9)
    before = copy.deepcopy(r)
    assert endpoint.plan(d, r) == [{'action': 'delete_link', 'name': 'lxcweb'},
                                   {'action': 'delete_netns', 'name': 'web-1'}]
    assert r == before
    assert endpoint.plan(d, endpoint.empty_realized('web-1')) == []


def test_dual_stack_endpoint_proxies_its_ipv6_router():
    d = want(addresses=['10.244.1.9', 'fd00::109'], router_ips=['10.244.1.1', 'fd00::101'])
    acts = endpoint.plan(d, endpoint.empty_realized('web-1'))
    assert [a for a in acts if a['action'] == 'add_proxy'] == [
        {'action': 'add_proxy', 'address': 'fd00::101', 'name': endpoint.device_name('web-1')}]
    assert endpoint.addresses_by_family(endpoint.project(d, endpoint.empty_realized('web-1'), acts), d) == {
        'ipv4': '10.244.1.9', 'ipv6': 'fd00::109'}
