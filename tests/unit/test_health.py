"""Unit tests for plugins/module_utils/health.py: the health endpoint's pure plan and projection (an
endpoint, test_endpoint.py, plus its responder) and the responder itself (on loopback, in this
process's own network namespace)."""
import copy
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from ansible_collections.podnet.fabric.plugins.module_utils import daemon, endpoint, health, netns

HealthError = endpoint.EndpointError
PIDFILE = '/run/podnet/health-podnet-health.pid'


def want(**kw):
    args = dict(netns='podnet-health', device='lxc_health', addresses=['10.244.1.7'],
                router_ips=['10.244.1.1'], mtu=1450, port=4240, node_name='node2', state='present')
    args.update(kw)
    return health.desired_state(**args)


def converged(d, inode=4026532999, pid=4242):
    """The realized view of a healthy endpoint matching desired `d`."""
    r = health.empty_realized(d['netns'], d['pidfile'])
    r['netns'].update(exists=True, inode=inode)
    r['device'] = {'name': d['device'], 'index': 7, 'kind': 'veth', 'mtu': d['mtu'], 'up': True, 'link': 2,
                   'addresses': []}
    r['peer'] = {'name': 'eth0', 'index': 2, 'kind': 'veth', 'mtu': d['mtu'], 'up': True, 'link': 7,
                 'addresses': list(d['addresses'])}
    r['lo_up'] = True
    r['routes'] = list(d['routes'])
    r['node_routes'] = list(d['node_routes'])
    r['proxy_ndp'] = list(d['proxy_ndp'])
    r['sysctls'] = dict((k % d['device'], v) for k, v in endpoint.PROXY_SYSCTLS.items()) if d['proxy_ndp'] else {}
    r['responder'].update(pid=pid, running=True, ours=True, args=list(d['responder_args']), netns_inode=inode,
                          pidfile_exists=True)
    return r


def kinds(actions):
    return [a['action'] for a in actions]


# --- normalization -------------------------------------------------------------------------

def test_addresses_are_normalized_to_host_prefixes_one_per_family():
    assert endpoint.normalize_addresses(['10.244.1.7']) == {'ipv4': '10.244.1.7/32'}
    assert endpoint.normalize_addresses(['10.244.1.7/32', 'FD00:0::7']) == {
        'ipv4': '10.244.1.7/32', 'ipv6': 'fd00::7/128'}
    with pytest.raises(HealthError, match='more than one ipv4'):
        endpoint.normalize_addresses(['10.244.1.7', '10.244.1.8'])
    with pytest.raises(HealthError, match='host address'):
        endpoint.normalize_addresses(['10.244.1.0/24'])
    with pytest.raises(HealthError, match='not an IP address'):
        endpoint.normalize_addresses(['10.244.1.300'])
    with pytest.raises(HealthError, match='needs an address'):
        endpoint.normalize_addresses([])


def test_desired_state_checks_routers_mtu_port_and_name():
    d = want()
    assert d['addresses'] == ['10.244.1.7/32']
    assert d['routes'] == [{'dst': '10.244.1.1/32', 'gateway': None, 'dev': 'eth0'},
                           {'dst': 'default', 'gateway': '10.244.1.1', 'dev': 'eth0'}]
    assert d['node_routes'] == [{'dst': '10.244.1.7/32', 'gateway': None, 'dev': 'lxc_health'}]
    assert d['responder_args'] == [health.MARK, health.RESPONDER_VERSION, '/run/netns/podnet-health', '4240',
                                   'node2', PIDFILE]
    assert want(router_ips=['10.244.1.1/32'])['routes'][1]['gateway'] == '10.244.1.1'
    # The first router IP of each family the endpoint has an address of; the others are left alone.
    assert want(router_ips=['fd00::101', '10.244.1.254', '10.244.1.1'])['routes'][1]['gateway'] == '10.244.1.254'
    with pytest.raises(HealthError, match='router_ips: the endpoint has an ipv6 address .* no ipv6 router'):
        want(addresses=['10.244.1.7', 'fd00::7'])
    with pytest.raises(HealthError, match='no ipv4 router'):
        want(router_ips=[])
    with pytest.raises(HealthError, match='no ipv6 router'):
        want(addresses=['fd00::7'], router_ips=['10.0.0.1'])
    with pytest.raises(HealthError, match="router_ips: 'bogus' is not an IP address"):
        want(router_ips=['bogus'])
    with pytest.raises(HealthError, match='mtu'):
        want(mtu=40)
    with pytest.raises(HealthError, match='port'):
        want(port=70000)
    with pytest.raises(HealthError, match='node_name'):
        want(node_name='node 2')
    dual = want(addresses=['10.244.1.7', 'fd00::107'], router_ips=['10.244.1.1', 'fd00::101'])
    assert {'dst': 'default6', 'gateway': 'fd00::101', 'dev': 'eth0'} in dual['routes']
    assert {'dst': 'fd00::107/128', 'gateway': None, 'dev': 'lxc_health'} in dual['node_routes']


# --- plan -------------------------------------------------------------------------------------

def test_fresh_node_gets_everything_in_order():
    d = want(addresses=['10.244.1.7', 'fd00::107'], router_ips=['10.244.1.1', 'fd00::101'])
    acts = health.plan(d, health.empty_realized('podnet-health', PIDFILE))
    assert kinds(acts) == ['create_netns', 'create_veth', 'up', 'up', 'up', 'add_address', 'add_address',
                           'add_route', 'add_route', 'add_route', 'add_route', 'add_route', 'add_route',
                           'set_sysctl', 'set_sysctl', 'add_proxy', 'start_responder']
    assert acts[1] == {'action': 'create_veth', 'name': 'lxc_health', 'peer': 'eth0', 'netns': 'podnet-health',
                       'mtu': 1450}
    ep_routes = [a for a in acts if a['action'] == 'add_route' and a['side'] == 'endpoint']
    # Every gateway is reachable when its route is added: link routes come first, per family too.
    first_gw = min(i for i, r in enumerate(ep_routes) if r['gateway'])
    assert all(r['gateway'] is None for r in ep_routes[:first_gw]) and len(ep_routes[:first_gw]) == 2
    node = [a for a in acts if a['action'] == 'add_route' and a['side'] == 'node']
    assert sorted(a['dst'] for a in node) == ['10.244.1.7/32', 'fd00::107/128']
    assert acts[-1]['stop'] == [] and acts[-1]['node_name'] == 'node2'


def test_converged_endpoint_plans_nothing():
    d = want()
    assert health.plan(d, converged(d)) == []


def test_ipv6_router_is_proxied_on_the_node_device():
    d = want(addresses=['10.244.1.7', 'fd00::107'], router_ips=['10.244.1.1', 'fd00::101'])
    assert d['proxy_ndp'] == ['fd00::101']
    assert health.plan(d, converged(d)) == []
    r = converged(d)
    r['sysctls'] = {'net.ipv6.conf.lxc_health.proxy_ndp': 0, 'net.ipv6.neigh.lxc_health.proxy_delay': 80}
    r['proxy_ndp'] = ['fd00::1']
    assert health.plan(d, r) == [
        {'action': 'set_sysctl', 'key': 'net.ipv6.conf.lxc_health.proxy_ndp', 'value': 1},
        {'action': 'set_sysctl', 'key': 'net.ipv6.neigh.lxc_health.proxy_delay', 'value': 0},
        {'action': 'del_proxy', 'address': 'fd00::1', 'name': 'lxc_health'},
        {'action': 'add_proxy', 'address': 'fd00::101', 'name': 'lxc_health'}]
    # Back to IPv4 only: the proxy entry goes, the sysctls stay (harmless, and reset with the device).
    v4 = want()
    acts = health.plan(v4, converged(d))
    assert {'action': 'del_proxy', 'address': 'fd00::101', 'name': 'lxc_health'} in acts
    assert 'set_sysctl' not in kinds(acts)


def test_mtu_and_down_links_are_repaired_in_place():
    d = want()
    r = converged(d)
    r['device']['mtu'] = 1500
    r['peer']['up'] = False
    r['lo_up'] = False
    acts = health.plan(d, r)
    assert acts == [{'action': 'set_mtu', 'side': 'node', 'name': 'lxc_health', 'mtu': 1450},
                    {'action': 'up', 'side': 'endpoint', 'name': 'eth0'},
                    {'action': 'up', 'side': 'endpoint', 'name': 'lo'}]


def test_new_address_is_added_before_the_old_one_goes_and_routes_follow():
    d = want(addresses=['10.244.1.9'])
    r = converged(want())
    acts = health.plan(d, r)
    assert kinds(acts) == ['add_address', 'del_address', 'del_route', 'add_route']
    assert acts[0]['address'] == '10.244.1.9/32' and acts[1]['address'] == '10.244.1.7/32'
    assert acts[2]['dst'] == '10.244.1.7/32' and acts[2]['side'] == 'node'
    assert acts[3]['dst'] == '10.244.1.9/32' and acts[3]['side'] == 'node'


def test_new_router_replaces_the_endpoint_routes_gateway_first_out_link_route_first_in():
    d = want(router_ips=['10.244.1.254'])
    acts = health.plan(d, converged(want()))
    assert [(a['action'], a['dst']) for a in acts] == [
        ('del_route', 'default'), ('del_route', '10.244.1.1/32'),
        ('add_route', '10.244.1.254/32'), ('add_route', 'default')]


def test_broken_pair_is_recreated_and_its_addresses_and_routes_readded():
    d = want()
    r = converged(d)
    r['device']['link'] = 99           # lxc_health's peer is something else
    acts = health.plan(d, r)
    assert kinds(acts)[:3] == ['delete_link', 'delete_peer', 'create_veth']
    assert 'add_address' in kinds(acts) and kinds(acts).count('add_route') == 3
    assert 'start_responder' not in kinds(acts)   # same namespace: the responder keeps listening


def test_node_device_that_is_not_a_veth_is_replaced():
    d = want()
    r = converged(d)
    r['device'] = dict(r['device'], kind='bridge', link=None)
    r['peer'] = None
    acts = health.plan(d, r)
    assert kinds(acts)[:2] == ['delete_link', 'create_veth']


def test_recreated_namespace_restarts_the_responder():
    d = want()
    r = health.empty_realized('podnet-health', PIDFILE)
    r['responder'].update(pid=4242, running=False, ours=True, args=list(d['responder_args']),
                          netns_inode=111, pidfile_exists=True)
    acts = health.plan(d, r)
    assert acts[0]['action'] == 'create_netns'
    assert acts[-1]['action'] == 'start_responder' and acts[-1]['stop'] == [4242]


@pytest.mark.parametrize('change', ['args', 'inode', 'dead', 'foreign'])
def test_responder_that_is_not_the_wanted_one_is_restarted(change):
    d = want()
    r = converged(d)
    if change == 'args':
        r['responder']['args'] = health.responder_args('podnet-health', 4241, 'node2', PIDFILE)
    elif change == 'inode':
        r['responder']['netns_inode'] = 1
        r['responder']['running'] = False
    elif change == 'dead':
        r['responder'].update(pid=None, running=False, ours=False, args=None, netns_inode=None)
    else:   # the pidfile's PID now belongs to some other program: never signal it
        r['responder'].update(pid=None, running=False, ours=False, args=None)
    acts = health.plan(d, r)
    assert kinds(acts) == ['start_responder']
    assert acts[0]['stop'] == ([4242] if change in ('args', 'inode') else [])


def test_stray_responders_are_stopped():
    d = want()
    r = converged(d)
    r['responder']['strays'] = [5001]
    assert health.plan(d, r) == [{'action': 'stop_responder', 'pids': [5001], 'pidfile': None}]
    r['responder']['running'] = False
    acts = health.plan(d, r)
    assert kinds(acts) == ['start_responder'] and acts[0]['stop'] == [4242, 5001]


def test_routes_that_are_not_wanted_are_removed():
    d = want()
    r = converged(d)
    r['routes'] = r['routes'] + [{'dst': '10.9.0.0/16', 'gateway': '10.244.1.1', 'dev': 'eth0'}]
    r['node_routes'] = r['node_routes'] + [{'dst': '10.244.1.8/32', 'gateway': None, 'dev': 'lxc_health'}]
    acts = health.plan(d, r)
    assert [(a['action'], a['side'], a['dst']) for a in acts] == [
        ('del_route', 'endpoint', '10.9.0.0/16'), ('del_route', 'node', '10.244.1.8/32')]


def test_absent_removes_responder_link_and_namespace():
    d = health.desired_state('podnet-health', 'lxc_health', None, None, 0, 4240, 'node2', 'absent')
    r = converged(want())
    r['responder']['strays'] = [5001]
    assert health.plan(d, r) == [
        {'action': 'stop_responder', 'pids': [4242, 5001], 'pidfile': PIDFILE},
        {'action': 'delete_link', 'name': 'lxc_health'},
        {'action': 'delete_netns', 'name': 'podnet-health'}]
    assert health.plan(d, health.empty_realized('podnet-health', PIDFILE)) == []
    # A stale pidfile alone is still removed.
    r = health.empty_realized('podnet-health', PIDFILE)
    r['responder']['pidfile_exists'] = True
    assert kinds(health.plan(d, r)) == ['stop_responder']


@pytest.mark.parametrize('realized', ['empty', 'converged', 'broken', 'moved'])
def test_projection_is_a_fixed_point_of_the_plan(realized):
    d = want(addresses=['10.244.1.9', 'fd00::109'], router_ips=['10.244.1.1', 'fd00::101'], mtu=1400)
    r = {'empty': lambda: health.empty_realized('podnet-health', PIDFILE),
         'converged': lambda: converged(d),
         'broken': lambda: dict(converged(d), peer=None, lo_up=False),
         'moved': lambda: converged(want())}[realized]()
    before = copy.deepcopy(r)
    acts = health.plan(d, r)
    after = health.project(d, r, acts)
    assert r == before                     # pure
    projected_again = health.plan(d, dict(after, responder=dict(after['responder'], netns_inode=1),
                                          netns=dict(after['netns'], inode=1)))
    assert projected_again == []
    absent = health.desired_state('podnet-health', 'lxc_health', None, None, 0, 4240, 'x', 'absent')
    gone = health.project(absent, r, health.plan(absent, r))
    assert health.plan(absent, gone) == []


# --- the responder, for real, on loopback ------------------------------------------------------

def test_responder_source_compiles():
    compile(health.RESPONDER_SRC, 'responder', 'exec')


@pytest.mark.skipif(os.geteuid() != 0, reason='setns needs root')
def test_responder_answers_one_line_and_removes_its_pidfile_on_sigterm(tmp_path):
    # Enter our own network namespace (allowed, changes nothing) and listen on a free port;
    # connect over loopback only.
    probe = socket.socket()
    probe.bind(('127.0.0.1', 0))
    port = probe.getsockname()[1]
    probe.close()
    pidfile = str(tmp_path / 'r.pid')
    argv = [sys.executable, '-c', health.RESPONDER_SRC, health.MARK, health.RESPONDER_VERSION,
            '/proc/self/ns/net', str(port), 'nodeX', pidfile]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert proc.stdout.readline() == b'ready\n'
        with open(pidfile) as f:
            assert int(f.read()) == proc.pid
        for attempt in range(3):
            with socket.create_connection(('127.0.0.1', port), timeout=2) as s:
                data = b''
                while True:
                    chunk = s.recv(64)
                    if not chunk:
                        break
                    data += chunk
            assert data == b'podnet-health nodeX\n'
        cmd = daemon.proc_argv(proc.pid)
        assert health._is_responder(cmd) and cmd[3:] == argv[3:]
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=5) == 0
        assert not os.path.exists(pidfile)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()
        proc.stderr.close()


@pytest.mark.skipif(os.geteuid() != 0, reason='setns needs root')
def test_start_responder_reports_why_it_did_not_start(tmp_path, monkeypatch):
    monkeypatch.setattr(netns, 'NETNS_DIR', str(tmp_path))
    t0 = time.time()
    with pytest.raises(HealthError, match='did not start.*No such file'):
        health.start_responder(sys.executable, 'missing', 4240, 'nodeX', str(tmp_path / 'p' / 'r.pid'))
    assert time.time() - t0 < 5
