"""AWS ENI mode in a real lab (prefix `pen`, 2 nodes): the lab's moto EC2 on loopback, instance
metadata inside each node, ENIs that appear as ethN when attached, a VPC namespace `penvpc`.

site.yml (eni mode) allocates ENIs and secondary IPs through EC2 (eni_allocate), gives each node's
endpoint (podnet_endpoints: web-1 on node1, client-1 on node2) one of its ENI IPs, and routes them
by source (eni_routing), with the eBPF datapath on its pods. Proven from the kernel and packets: the rules and tables, pod-to-pod
through the VPC with the pod IPs preserved (a capture on the VPC bridge: no SNAT), egress through
the ENI that owns the pod IP (a capture on that ENI's VPC port), a second run and a check run that
change nothing, and a teardown that leaves no namespace, veth, rule, route or daemon.
Traffic stays inside the lab's namespaces; the EC2 endpoint is on 127.0.0.1.
"""
import json
import os
import shutil
import socket
import subprocess
import time

import labutil
import pytest

from labutil import REPO, nsenter, run_ok

from ansible_collections.podnet.fabric.plugins.module_utils import daemon, endpoint, lab_ec2

PREFIX = 'pen'
VPC_NS = lab_ec2.vpc_netns(PREFIX)
NODES = ('node1', 'node2')
UNDERLAY = '192.168.61.0/24'
CREDS = {'AWS_ACCESS_KEY_ID': 'podnet-lab', 'AWS_SECRET_ACCESS_KEY': 'podnet-lab'}

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason='the lab needs root')


def free_port():
    s = socket.socket()
    s.bind(('127.0.0.1', 0))
    port = s.getsockname()[1]
    s.close()
    return port


def write_inventory(directory, port):
    src = os.path.join(REPO, 'inventories', 'lab-eni')
    shutil.copytree(src, directory, dirs_exist_ok=True)
    conf = os.path.join(directory, 'lab.podnet.yml')
    with open(conf) as f:
        text = f.read()
    text = text.replace('prefix: pe\n', 'prefix: %s\n' % PREFIX).replace('192.168.60.0/24', UNDERLAY)
    with open(conf, 'w') as f:
        f.write(text)
    cluster = os.path.join(directory, 'group_vars', 'all', 'cluster.yml')
    with open(cluster) as f:
        text = f.read()
    with open(cluster, 'w') as f:
        f.write(text.replace('port: 5021', 'port: %d' % port))
    return directory


def site(inv, check=False):
    rc, out = labutil.playbook('site.yml', inv, check=check, env_extra=CREDS)
    assert rc == 0, 'site.yml exited %d:\n%s' % (rc, out[-6000:])
    return out


def vpc(*argv, check=True):
    p = subprocess.run(['nsenter', '--net=/run/netns/' + VPC_NS, '--'] + list(argv), stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, universal_newlines=True, check=False)
    if check:
        assert p.returncode == 0, '%s: %s' % (argv, p.stderr)
    return p.stdout


def pod(node, name, *argv, check=True):
    # nsenter --net inside the member keeps the member's mount namespace (never `ip netns exec`).
    return nsenter(PREFIX, node, ['nsenter', '--net=/run/netns/default.' + name, '--'] + list(argv), check=check)


def daemon_pids():
    """The PIDs of this lab's EC2 daemons (lab_ec2.py moto|agent with this lab's config)."""
    cfg = os.path.join(labutil.LAB_ROOT, PREFIX, 'ec2.json')
    out = []
    for entry in os.listdir('/proc'):
        if entry.isdigit():
            argv = daemon.proc_argv(int(entry)) or []
            if len(argv) >= 4 and argv[1].endswith('lab_ec2.py') and argv[3] == cfg:
                out.append(int(entry))
    return out


def purge():
    """What a killed earlier run left: this lab's daemons (by PID, ours by their command line), the
    VPC namespace, then the lab itself."""
    daemon.terminate(daemon_pids(), lambda pid: pid in daemon_pids(), 5.0)
    if VPC_NS in labutil.netns_names():
        subprocess.run(['ip', 'netns', 'del', VPC_NS], check=False)
    labutil.purge(PREFIX)


def ec2(port):
    import boto3
    return boto3.client('ec2', endpoint_url='http://127.0.0.1:%d' % port, region_name='us-east-1',
                        aws_access_key_id='podnet-lab', aws_secret_access_key='podnet-lab')


def store_ips(node):
    store = json.loads(nsenter(PREFIX, node, ['cat', '/var/lib/podnet/ipam/endpoints.json']))
    return dict((rec['owner'], ip) for ip, rec in store['used'].items())


@pytest.fixture(scope='module')
def eni_lab(tmp_path_factory):
    port = free_port()
    inv = write_inventory(str(tmp_path_factory.mktemp('inv')), port)
    purge()
    host_links = set(os.listdir('/sys/class/net'))
    try:
        run_ok('lab_up.yml', inv)
        first = site(inv)
        yield {'inv': inv, 'port': port, 'first': first}
    finally:
        try:
            run_ok('lab_down.yml', inv)
        finally:
            left = daemon_pids()
            purge()
        assert not left, 'lab_down left the EC2 daemons running: %s' % left
        labutil.assert_lab_gone(PREFIX)
        assert VPC_NS not in labutil.netns_names()
        assert set(os.listdir('/sys/class/net')) == host_links
        with socket.socket() as s:
            assert s.connect_ex(('127.0.0.1', port)) != 0, 'the EC2 endpoint still listens'


@pytest.fixture(scope='module')
def pods(eni_lab):
    """{node: (endpoint name, its IP, its ENI as EC2 describes it)}, checked against EC2."""
    client = ec2(eni_lab['port'])
    out = {}
    for node, name in (('node1', 'web-1'), ('node2', 'client-1')):
        ip = store_ips(node)['default/' + name]
        iid = lab_ec2.instance_id(PREFIX, node)
        enis = client.describe_network_interfaces(
            Filters=[{'Name': 'attachment.instance-id', 'Values': [iid]}])['NetworkInterfaces']
        owner = [e for e in enis if ip in [p['PrivateIpAddress'] for p in e['PrivateIpAddresses'] if not p['Primary']]]
        assert len(owner) == 1, '%s: %s is not a secondary IP of one of its ENIs (%s)' % (node, ip, enis)
        assert owner[0]['Attachment']['DeviceIndex'] >= 1
        out[node] = (name, ip, owner[0])
    return out


def test_rules_tables_and_interfaces_from_the_kernel(pods):
    for node, (_name, ip, eni) in pods.items():
        n = eni['Attachment']['DeviceIndex']
        dev, table = 'eth%d' % n, 10 + n
        rules = json.loads(nsenter(PREFIX, node, ['ip', '-j', 'rule', 'show']))
        # protocol 201 is named podnet in the node's /etc/iproute2/rt_protos.d (node_prereqs)
        ours = sorted((r['priority'], r.get('src'), r.get('dst'), r['table']) for r in rules
                      if str(r.get('protocol')) in ('201', 'podnet'))
        assert ours == [(20, 'all', ip, 'main'), (111, ip, None, str(table))], (node, rules)
        routes = json.loads(nsenter(PREFIX, node, ['ip', '-j', 'route', 'show', 'table', str(table)]))
        gw = '10.100.1.1'
        assert sorted((r['dst'], r.get('gateway'), r['dev'], r.get('scope')) for r in routes) == [
            (gw, None, dev, 'link'), ('default', gw, dev, None)], (node, routes)
        link = json.loads(nsenter(PREFIX, node, ['ip', '-j', 'link', 'show', dev]))[0]
        assert link['address'] == eni['MacAddress'] and link['mtu'] == 1500 and 'UP' in link['flags']
        # the metadata the module read, as served inside the node
        url = 'http://169.254.169.254/latest/meta-data/network/interfaces/macs/%s/device-number' % eni['MacAddress']
        got = nsenter(PREFIX, node, ['curl', '-s', '--noproxy', '*', '--max-time', '5', url])
        assert got == str(n)


def vpc_capture(interface, flt):
    """tcpdump in the VPC namespace on one interface."""
    return labutil.Capture(VPC_NS, interface, flt)


def test_pod_to_pod_through_the_vpc_keeps_the_pod_ips(pods):
    web, client = pods['node1'][1], pods['node2'][1]
    cap = vpc_capture(lab_ec2.BRIDGE, 'icmp or tcp port 8080')
    out = pod('node2', 'client-1', 'ping', '-c', '3', '-i', '0.2', '-W', '2', web, check=False)
    probe = ('import socket, sys\ns = socket.socket(); s.settimeout(3)\nprint(s.connect_ex((sys.argv[1], 8080)))')
    tcp = pod('node2', 'client-1', labutil.VENV_BIN + '/python', '-c', probe, web, check=False)
    seen = cap.stop(until=lambda p: sum(1 for s, d, w in p if (s, d) == (web, client) and w.startswith('ICMP echo reply')) >= 6)
    assert ' 0% packet loss' in out, out
    assert tcp.strip() == '111', tcp      # ECONNREFUSED: web-1's kernel answered the SYN with a RST
    requests = [(s, d) for s, d, w in seen if w.startswith('ICMP echo request')]
    replies = [(s, d) for s, d, w in seen if w.startswith('ICMP echo reply')]
    # Each packet crosses the VPC bridge twice (to the router, then to the owning ENI): with the pod IPs.
    assert requests and set(requests) == {(client, web)}, seen
    assert replies and set(replies) == {(web, client)}, seen
    tcp_pairs = set((s, d) for s, d, w in seen if w.startswith('Flags'))
    assert tcp_pairs == {(client, web), (web, client)}, seen
    # No SNAT anywhere: no packet on the VPC carries a node's underlay address.
    assert not [p for p in seen if p[0].startswith('192.168.61.') or p[1].startswith('192.168.61.')]


def test_egress_leaves_through_the_eni_that_owns_the_pod_ip(pods):
    client, client_eni = pods['node2'][1], pods['node2'][2]
    web = pods['node1'][1]
    port = lab_ec2.port_name(client_eni['NetworkInterfaceId'])
    cap = vpc_capture(port, 'icmp')
    # and nothing of it on the lab's underlay (node2's eth0)
    under = subprocess.Popen(['nsenter', '--net=/run/netns/%s-ul' % PREFIX, '--', 'tcpdump', '-n', '-l', '-U',
                              '--immediate-mode', '-i', 'br0', 'icmp'],
                             stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, universal_newlines=True)
    try:
        time.sleep(1.0)
        pod('node2', 'client-1', 'ping', '-c', '2', '-i', '0.2', '-W', '2', web, check=False)
        seen = cap.stop(until=lambda p: sum(1 for s, d, w in p if (s, d) == (client, web)) >= 2)
    finally:
        under.terminate()
        underlay = under.communicate(timeout=10)[0]
    assert len([1 for s, d, w in seen if (s, d) == (client, web) and 'request' in w]) >= 2, seen
    assert client not in underlay and web not in underlay, underlay


def test_the_datapath_runs_in_eni_mode(eni_lab, pods):
    """podnet_datapath.enabled (the default) in eni mode: each pod's lxc device carries from_container
    and to_container, the underlay from_netdev and to_netdev, and each node's ipcache holds both pods
    (the tests above passed through these programs, with eBPF host routing where the kernel has it)."""
    for node, (name, ip, _eni) in pods.items():
        rc, info = labutil.adhoc(eni_lab['inv'], node, 'podnet.fabric.bpf_info', {})
        assert rc == 0, info
        hooks = dict(((a['device'], a['hook']), a['name']) for a in info['attachments'])
        dev = endpoint.device_name('default.' + name)
        assert hooks.get((dev, 'ingress')) == 'from_container' and hooks.get((dev, 'egress')) == 'to_container', hooks
        assert hooks.get(('eth0', 'ingress')) == 'from_netdev' and hooks.get(('eth0', 'egress')) == 'to_netdev', hooks
        maps = dict((m['name'], m) for m in info['maps'])
        # both pods and both nodes' addresses at least
        assert maps['ipcache']['entries'] >= len(pods) + len(NODES), maps['ipcache']
        assert info['host_routing']['mode'] in ('bpf', 'kernel'), info['host_routing']
        assert not [d for d in info['drops'] if d['reason_name'] == 'policy denied'], info['drops']


def test_first_run_allocated_and_converged(eni_lab):
    recap = labutil.recap(eni_lab['first'])
    assert recap['node1']['changed'] > 0 and all(r['failed'] == 0 for r in recap.values())


def test_second_run_and_check_change_nothing(eni_lab, pods):
    before = labutil.lab_snapshot(PREFIX, NODES)
    out = site(eni_lab['inv'])
    assert all(r['changed'] == 0 for r in labutil.recap(out).values()), out[-4000:]
    out = site(eni_lab['inv'], check=True)
    assert all(r['changed'] == 0 for r in labutil.recap(out).values()), out[-4000:]
    assert labutil.lab_snapshot(PREFIX, NODES) == before


def _rules(node):
    return sorted((r['priority'], r.get('src'), r.get('dst'), r['table'])
                  for r in json.loads(nsenter(PREFIX, node, ['ip', '-j', 'rule', 'show']))
                  if str(r.get('protocol')) in ('201', 'podnet'))


def _set_endpoints(inv, node, names):
    with open(os.path.join(inv, 'host_vars', '%s.yml' % node), 'w') as f:
        f.write('---\npodnet_endpoints:\n' + ''.join('  - {name: %s, labels: {app: client}}\n' % n for n in names))


def test_a_reused_ip_keeps_the_new_endpoints_rules_and_a_released_ip_loses_them(eni_lab, pods):
    # Runs last: it changes node2's endpoints (client-1 gives way to client-2, which takes the
    # address client-1 released, then client-2 goes too) and puts them back at the end.
    inv = eni_lab['inv']
    old_ip = pods['node2'][1]
    table = str(10 + pods['node2'][2]['Attachment']['DeviceIndex'])
    foreign = ('ip', 'rule', 'add', 'priority', '20', 'to', old_ip, 'lookup', 'main')
    nsenter(PREFIX, 'node2', list(foreign))      # someone else's rule at our priority: never touched
    try:
        _set_endpoints(inv, 'node2', ['client-2'])
        site(inv)
        new_ip = store_ips('node2')['default/client-2']
        assert new_ip == old_ip, 'client-2 was expected to take the released %s, got %s' % (old_ip, new_ip)
        assert [r for r in _rules('node2') if old_ip in r] == [(20, 'all', old_ip, 'main'), (111, old_ip, None, table)]
        out = pod('node2', 'client-2', 'ping', '-c', '2', '-i', '0.2', '-W', '2', pods['node1'][1], check=False)
        assert ' 0% packet loss' in out, out
        _set_endpoints(inv, 'node2', [])
        site(inv)
        assert 'default/client-2' not in store_ips('node2')
        assert _rules('node2') == []
        foreign_left = [r for r in json.loads(nsenter(PREFIX, 'node2', ['ip', '-j', 'rule', 'show']))
                        if r.get('priority') == 20 and r.get('dst') == old_ip]
        assert len(foreign_left) == 1 and 'protocol' not in foreign_left[0], foreign_left
    finally:
        _set_endpoints(inv, 'node2', ['client-1'])
        nsenter(PREFIX, 'node2', ['ip', 'rule', 'del'] + list(foreign[3:]), check=False)
