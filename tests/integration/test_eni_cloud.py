"""eni_allocate against a real EC2 endpoint: moto in server mode on 127.0.0.1 (plugins/plugin_utils/
ec2_emulator.py, a child process on a free port, ended by its PID), the action run by ansible-playbook on
localhost. Every assertion reads the EC2 API's state (and the emulator's request counts), not the task's
result alone.

Faults are injected by the emulator, in the server: moto has no throttling, and the action runs in an
ansible-playbook process (and in our kill test, one that is killed), so a botocore event hook in the test
process would not reach it; a hook inside the client would also skip botocore's own retry handling,
which is half of what is tested. The server answers chosen requests with RequestLimitExceeded (503) or
InsufficientFreeAddressesInSubnet / InsufficientPrefixesInSubnet, or holds a request while the test
kills the client.

Names: the cluster is `pef` (this file's lab prefix); nothing outside the emulator's memory and pytest's
tmp_path is created, and the emulator process is ended in `finally`.
"""
import ctypes
import json
import os
import random
import select
import signal
import subprocess
import time
import urllib.request

import pytest

boto3 = pytest.importorskip('boto3')
pytest.importorskip('moto')

from ansible_collections.podnet.fabric.plugins.plugin_utils import ec2_emulator, eni_plan, inventory  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BIN = os.path.join(REPO, '.venv', 'bin')
EMULATOR = os.path.join(REPO, 'plugins', 'plugin_utils', 'ec2_emulator.py')
PREFIX = 'pef'
REGION = 'us-east-1'
AWS_ENV = {'AWS_ACCESS_KEY_ID': 'testing', 'AWS_SECRET_ACCESS_KEY': 'testing', 'AWS_DEFAULT_REGION': REGION,
           'AWS_EC2_METADATA_DISABLED': 'true', 'NO_PROXY': '127.0.0.1', 'no_proxy': '127.0.0.1'}
PLAY = '''- hosts: localhost
  gather_facts: false
  tasks:
    - name: ENIs
      podnet.fabric.eni_allocate:
        model: "{{ eni_model }}"
        workers: "{{ eni_workers | default(4) }}"
      register: eni
'''


def _die_with_parent():
    ctypes.CDLL('libc.so.6', use_errno=True).prctl(1, signal.SIGTERM)


@pytest.fixture(scope='module')
def endpoint():
    env = dict(os.environ, **AWS_ENV)
    for k in ('HTTP_PROXY', 'HTTPS_PROXY', 'http_proxy', 'https_proxy', 'AWS_PROFILE'):
        env.pop(k, None)
    proc = subprocess.Popen([os.path.join(BIN, 'python'), EMULATOR, '--port', '0'], stdout=subprocess.PIPE,
                            universal_newlines=True, env=env, preexec_fn=_die_with_parent)
    try:
        ready, _w, _x = select.select([proc.stdout], [], [], 60)
        line = proc.stdout.readline() if ready else ''
        assert line, 'the EC2 emulator did not start (rc %s)' % proc.poll()
        yield 'http://127.0.0.1:%d' % json.loads(line)['port']
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait()


@pytest.fixture(autouse=True)
def aws_env(monkeypatch):
    for k, v in AWS_ENV.items():
        monkeypatch.setenv(k, v)
    for k in ('HTTP_PROXY', 'HTTPS_PROXY', 'http_proxy', 'https_proxy', 'AWS_PROFILE', 'AWS_SESSION_TOKEN'):
        monkeypatch.delenv(k, raising=False)


def post(url, path, doc=None):
    req = urllib.request.Request(url + path, data=json.dumps(doc).encode() if doc is not None else b'', method='POST')
    return json.loads(urllib.request.urlopen(req, timeout=30).read() or b'{}')


def stats(url):
    return json.loads(urllib.request.urlopen(url + '/podnet-emulator/stats', timeout=30).read())


def writes(st):
    return dict((k, v) for k, v in st['requests'].items() if not k.startswith('Describe'))


class Lab(object):
    """A fresh EC2 state (moto reset), a VPC with the given subnets and one instance per node, and a
    validated eni-mode model (cluster pef, file ledger under tmp_path)."""

    def __init__(self, url, tmp_path, types, subnets=None, eni=None, cluster=PREFIX):
        post(url, '/moto-api/reset')
        post(url, '/podnet-emulator/faults', [])
        self.url, self.tmp = url, tmp_path
        self.ec2 = boto3.client('ec2', region_name=REGION, endpoint_url=url)
        self.seed = ec2_emulator.seed(self.ec2, types, subnets=subnets)
        post(url, '/podnet-emulator/stats/reset')     # count the runs' requests only
        self.types = types
        self.cluster = cluster
        self.set_eni(eni or {})

    def set_workers(self, workers):
        doc = json.loads((self.tmp / 'vars.json').read_text())
        doc['eni_workers'] = workers
        (self.tmp / 'vars.json').write_text(json.dumps(doc))

    def set_eni(self, eni, types=None):
        types = types or self.types
        cv = {'podnet_cluster': {'name': self.cluster, 'id': 7},
              'podnet_ipam': {'mode': 'eni', 'ledger': {'backend': 'file', 'path': str(self.tmp / 'ledger' / 'pef.json')}},
              'podnet_routing': {'mode': 'eni'},
              'podnet_eni': dict({'region': REGION, 'endpoint_url': self.url}, **eni)}
        hosts = dict((h, {'podnet_node_ip': '192.168.77.%d' % (10 + i),
                          'podnet_instance': {'id': self.seed['instances'][h], 'type': types[h]}})
                     for i, h in enumerate(sorted(self.types, key=eni_plan._natural)))
        self.model = inventory.validate(cv, hosts)
        (self.tmp / 'vars.json').write_text(json.dumps({'eni_model': self.model}))
        (self.tmp / 'hosts.yml').write_text('all:\n  children:\n    podnet_nodes:\n      hosts:\n%s' % ''.join(
            '        %s: {ansible_connection: local, ansible_python_interpreter: %s}\n' % (h, os.path.join(BIN, 'python'))
            for h in sorted(self.types)))
        (self.tmp / 'play.yml').write_text(PLAY)

    def argv(self, check=False):
        argv = [os.path.join(BIN, 'ansible-playbook'), str(self.tmp / 'play.yml'), '-i', str(self.tmp / 'hosts.yml'),
                '-e', '@' + str(self.tmp / 'vars.json')]
        return argv + (['--check', '--diff'] if check else [])

    def env(self):
        return dict(os.environ, ANSIBLE_CONFIG=os.path.join(REPO, 'ansible.cfg'), ANSIBLE_LOAD_CALLBACK_PLUGINS='1',
                    ANSIBLE_STDOUT_CALLBACK='json', ANSIBLE_PYTHON_INTERPRETER=os.path.join(BIN, 'python'),
                    ANSIBLE_LOCALHOST_WARNING='false', ANSIBLE_INVENTORY_UNPARSED_WARNING='false')

    def run(self, check=False, timeout=300):
        p = subprocess.run(self.argv(check), cwd=REPO, env=self.env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           universal_newlines=True, timeout=timeout, check=False)
        try:
            out = json.loads(p.stdout)
        except ValueError:
            raise AssertionError('not JSON (rc %d): %s\n%s' % (p.returncode, p.stdout[-3000:], p.stderr[-3000:]))
        return out['plays'][0]['tasks'][0]['hosts']['localhost']

    def enis(self):
        return self.ec2.describe_network_interfaces()['NetworkInterfaces']

    def ours(self):
        return [e for e in self.enis() if {'Key': eni_plan.TAG_CLUSTER, 'Value': self.cluster} in e.get('TagSet', [])]

    def by_node(self):
        out = {}
        for e in self.ours():
            tags = dict((t['Key'], t['Value']) for t in e['TagSet'])
            out.setdefault(tags[eni_plan.TAG_NODE], []).append(e)
        return out

    def primaries_only(self):
        return all((e.get('Attachment') or {}).get('DeviceIndex') == 0 for e in self.enis())


def test_first_run_converges_then_noop_with_ownership_and_ledger(endpoint, tmp_path):
    lab = Lab(endpoint, tmp_path, {'node1': 'c5.large', 'node2': 'm5.large', 'node3': 't3.small'},
              eni={'first_interface_index': 0, 'tags': {'team': 'net'}})
    res = lab.run()
    assert res['changed'] and not res.get('failed'), res
    # first_interface_index 0: the primary ENI takes secondary IPs first (9 on a c5.large / m5.large, so
    # those need no ENI of ours); a t3.small's primary holds 3, then ENIs of ours take the other 5 (3 + 2)
    by_node = lab.by_node()
    assert sorted(by_node) == ['node3'] and len(by_node['node3']) == 2
    for node in ('node1', 'node2', 'node3'):
        iid = lab.seed['instances'][node]
        held = sum(len(e['PrivateIpAddresses']) - 1 for e in lab.enis() if (e.get('Attachment') or {}).get('InstanceId') == iid)
        assert held == 8, (node, held)                     # pre_allocate
        for e in by_node.get(node, []):
            tags = dict((t['Key'], t['Value']) for t in e['TagSet'])
            assert tags[eni_plan.TAG_MANAGED] == 'podnet.fabric' and tags['team'] == 'net'
            assert e['Attachment']['InstanceId'] == iid and e['Attachment']['DeleteOnTermination'] is True
            assert e['Attachment']['DeviceIndex'] >= 1 and iid in e['Description']
    got = res['eni_nodes']['node1']['enis']
    api = dict((e['NetworkInterfaceId'], e) for e in lab.enis())
    for e in got:
        raw = api[e['id']]
        assert e['mac'] == raw['MacAddress'].lower() and e['subnet_cidr'] == '10.20.0.0/20'
        assert sorted(e['ips']) == sorted(p['PrivateIpAddress'] for p in raw['PrivateIpAddresses'] if not p['Primary'])
    assert [e['device_index'] for e in got] == [0] and [e['device_index'] for e in res['eni_nodes']['node3']['enis']] == [0, 1, 2]
    led = json.loads((tmp_path / 'ledger' / 'pef.json').read_text())
    assert led['nodes']['node1']['eni']['enis'] == got and led['nodes']['node1']['eni']['limit'] == 27
    post(endpoint, '/podnet-emulator/stats/reset')
    res = lab.run()
    assert not res['changed'] and not res.get('failed'), res
    st = stats(endpoint)
    assert writes(st) == {} and sum(st['requests'].values()) == res['api_calls']['describe_calls'] == 4, st


@pytest.fixture
def three(endpoint, tmp_path):
    return Lab(endpoint, tmp_path, {'node1': 'c5.large', 'node2': 'm5.large', 'node3': 'c5.4xlarge'},
               eni={'first_interface_index': 1})


def test_check_mode_plans_without_a_write(three, endpoint):
    res = three.run(check=True)
    assert res['changed'] and len(res['plan']) == 3 and res['diff']['after']['node1'], res
    assert writes(stats(endpoint)) == {} and three.ours() == []


def test_throttling_is_retried_and_the_run_converges(three, endpoint):
    post(endpoint, '/podnet-emulator/faults', [
        {'action': 'DescribeNetworkInterfaces', 'code': 'RequestLimitExceeded', 'times': 2},
        {'action': 'CreateNetworkInterface', 'code': 'RequestLimitExceeded', 'times': 4},
        {'action': 'AttachNetworkInterface', 'code': 'RequestLimitExceeded', 'times': 3, 'skip': 1}])
    res = three.run()
    assert res['changed'] and not res.get('failed'), res
    st = stats(endpoint)
    assert st['faults'] == {'DescribeNetworkInterfaces': 2, 'CreateNetworkInterface': 4, 'AttachNetworkInterface': 3}
    assert res['api_calls']['throttled'] == 9
    assert st['requests']['CreateNetworkInterface'] == 3       # answered creates: one per node, no duplicate
    assert dict((n, len(e)) for n, e in three.by_node().items()) == {'node1': 1, 'node2': 1, 'node3': 1}


def test_unknown_instance_type_fails_before_any_write(endpoint, tmp_path):
    lab = Lab(endpoint, tmp_path, {'node1': 'c5.large', 'node2': 'c5.large'})
    lab.set_eni({'first_interface_index': 1}, types={'node1': 'c5.large', 'node2': 'x9.huge'})
    res = lab.run()
    assert res.get('failed') and res['errors'] == [
        "node2: instance type 'x9.huge' of %s is unknown to DescribeInstanceTypes (InvalidInstanceType)"
        % lab.seed['instances']['node2']], res
    assert writes(stats(endpoint)) == {} and lab.primaries_only()


def test_over_limit_fails_naming_node_type_limit_before_any_write(endpoint, tmp_path):
    lab = Lab(endpoint, tmp_path, {'node1': 'c5.large', 'node2': 't3.small'}, eni={'first_interface_index': 1})
    res = lab.run()
    assert res.get('failed'), res
    (msg,) = res['errors']
    assert msg.startswith('node2: ') and 't3.small allows 6' in msg and '(3 ENIs - first_interface_index 1)' in msg
    # node1 alone was possible; nothing at all was written
    assert writes(stats(endpoint)) == {} and lab.primaries_only() and lab.ours() == []


def test_subnet_out_of_addresses(endpoint, tmp_path):
    # a /27 for the instances' primaries and a /28 (11 usable) for pods: two nodes need 2 x 9
    lab = Lab(endpoint, tmp_path, {'node1': 'c5.large', 'node2': 'c5.large'},
              subnets=[{'cidr': '10.20.0.0/27'}, {'cidr': '10.20.1.0/28', 'tags': {'pods': 'small'}}],
              eni={'first_interface_index': 1, 'subnet_tags': {'pods': 'small'}})
    res = lab.run()
    assert res.get('failed'), res
    (msg,) = res['errors']
    assert msg.startswith('node2: ') and 'InsufficientFreeAddressesInSubnet' in msg and '2 free' in msg, msg
    assert writes(stats(endpoint)) == {} and lab.ours() == []
    # EC2 refusing a create itself (another writer took the addresses): that node fails with the code, the
    # other node's work is whole, and nothing is left detached; the next run converges without duplicates
    lab.set_eni({'first_interface_index': 1})
    post(endpoint, '/podnet-emulator/faults', [{'action': 'CreateNetworkInterface', 'code': 'InsufficientFreeAddressesInSubnet',
                                                'skip': 1, 'times': 1}])
    res = lab.run()
    assert res.get('failed') and res['aws_error_code'] == 'InsufficientFreeAddressesInSubnet', res
    assert 'CreateNetworkInterface in subnet-' in res['msg']
    assert len(lab.ours()) == 1 and all(e['Status'] == 'in-use' for e in lab.ours())
    post(endpoint, '/podnet-emulator/faults', [])
    res = lab.run()
    assert res['changed'] and not res.get('failed'), res
    assert dict((n, len(e)) for n, e in lab.by_node().items()) == {'node1': 1, 'node2': 1}


def test_prefix_delegation_falls_back_to_single_ips(endpoint, tmp_path):
    lab = Lab(endpoint, tmp_path, {'node1': 'c5.large'}, eni={'first_interface_index': 1, 'prefix_delegation': True})
    post(endpoint, '/podnet-emulator/faults', [{'action': 'CreateNetworkInterface', 'code': 'InsufficientPrefixesInSubnet',
                                                'param': 'Ipv4PrefixCount', 'times': 100}])
    res = lab.run()
    assert res['changed'] and not res.get('failed'), res
    assert any('InsufficientPrefixesInSubnet' in w for w in res.get('warnings', [])), res
    (e,) = lab.ours()
    assert len(e['PrivateIpAddresses']) == 9 and not e.get('Ipv4Prefixes')


def test_gc_two_phase_never_another_clusters_eni(endpoint, tmp_path):
    lab = Lab(endpoint, tmp_path, {'node1': 'c5.large'}, eni={'first_interface_index': 1})
    subnet = lab.seed['subnets'][0]

    def make(tags):
        return lab.ec2.create_network_interface(SubnetId=subnet, TagSpecifications=[{
            'ResourceType': 'network-interface', 'Tags': [{'Key': k, 'Value': v} for k, v in tags.items()]}])[
                'NetworkInterface']['NetworkInterfaceId']
    gone = make(eni_plan.owner_tags(PREFIX, 'node-removed'))
    other = make(eni_plan.owner_tags('another-cluster', 'node-removed'))
    users = make({'Name': 'not podnet'})
    res = lab.run()
    assert [a['eni_id'] for a in res['gc'] if a['action'] == 'gc_mark'] == [gone], res
    tags = dict((t['Key'], t['Value']) for t in lab.ec2.describe_network_interfaces(NetworkInterfaceIds=[gone])[
        'NetworkInterfaces'][0]['TagSet'])
    assert eni_plan.TAG_GC_MARK in tags
    res = lab.run()
    assert [a['eni_id'] for a in res['gc'] if a['action'] == 'gc_delete'] == [gone], res
    left = set(e['NetworkInterfaceId'] for e in lab.enis())
    assert gone not in left and {other, users} <= left
    assert not lab.run()['changed']


def quiet(url, still=0.5, timeout=30):
    deadline = time.monotonic() + timeout
    last = stats(url)
    while time.monotonic() < deadline:
        time.sleep(still)
        now = stats(url)
        if now == last:
            return now
        last = now
    raise AssertionError('the EC2 emulator kept answering requests for %d s after the kill' % timeout)


def _children():
    out = {}
    for pid in os.listdir('/proc'):
        if pid.isdigit():
            try:
                with open('/proc/%s/stat' % pid) as f:
                    ppid = int(f.read().rsplit(')', 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            out.setdefault(ppid, []).append(int(pid))
    return out


def kill_tree(root):
    """SIGKILL a process and all its descendants. Ansible's workers call setsid(), so a process group
    kill would miss the one running the action: the tree is frozen (SIGSTOP) from the top down until
    no new process appears, then killed."""
    frozen = set()
    while True:
        tree, todo = [], [root]
        kids = _children()
        while todo:
            pid = todo.pop()
            tree.append(pid)
            todo.extend(kids.get(pid, []))
        new = [p for p in tree if p not in frozen]
        if not new:
            break
        for pid in new:
            try:
                os.kill(pid, signal.SIGSTOP)
            except ProcessLookupError:
                pass
            frozen.add(pid)
    for pid in frozen:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def test_kill_9_between_create_and_attach_at_5_random_points(endpoint, tmp_path):
    """The run is killed (SIGKILL to ansible-playbook and every process under it) while an attach request waits in the server after
    k of the fleet's creates were answered (k and a further delay random); the waiting request is dropped
    (it never reaches EC2). The next run attaches the detached ENIs it finds by their tags: no duplicate."""
    seed = int(os.environ.get('PODNET_KILL_SEED', time.time()))
    rng = random.Random(seed)
    nodes = dict(('node%d' % i, 'c5.large') for i in range(1, 7))
    for point in range(5):
        lab = Lab(endpoint, tmp_path, nodes, eni={'first_interface_index': 1})
        k = rng.randint(1, len(nodes))
        workers = rng.choice([1, 2, 4])       # 1: the k-th node's attach is cut; 4: up to 4 nodes' at once
        lab.set_workers(workers)
        post(endpoint, '/podnet-emulator/faults', [{'action': 'AttachNetworkInterface', 'hold': 120, 'drop': True,
                                                    'after': {'action': 'CreateNetworkInterface', 'count': k}}])
        proc = subprocess.Popen(lab.argv(), cwd=REPO, env=lab.env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                start_new_session=True)
        try:
            deadline = time.monotonic() + 120
            while stats(endpoint)['held'] < 1:
                assert proc.poll() is None and time.monotonic() < deadline, 'seed %d point %d: no attach was held' % (seed, point)
                time.sleep(0.05)
            time.sleep(rng.uniform(0, 0.3))
        finally:
            kill_tree(proc.pid)
            proc.wait()
        post(endpoint, '/podnet-emulator/faults', [])
        quiet(endpoint)     # requests the killed run had sent are answered (to no one) before we look
        created = stats(endpoint)['requests'].get('CreateNetworkInterface', 0)
        detached = [e for e in lab.ours() if e['Status'] == 'available']
        assert created >= k and detached, 'seed %d point %d: k=%d created=%d, nothing left detached' % (seed, point, k, created)
        res = lab.run()
        assert res['changed'] and not res.get('failed'), (seed, point, res)
        attached = [a for a in res['plan'] if a['action'] == 'attach']
        assert len(attached) == len(detached), (seed, point, res['plan'])
        by_node = lab.by_node()
        assert dict((n, len(e)) for n, e in by_node.items()) == dict((n, 1) for n in nodes), (seed, point, by_node)
        assert all(e['Status'] == 'in-use' and e['Attachment']['DeleteOnTermination'] for e in lab.ours())
        assert not lab.run()['changed']
        print('kill point %d (seed %d): %d workers, after %d creates, %d detached ENIs reattached'
              % (point, seed, workers, created, len(detached)))


@pytest.mark.parametrize('count', [3, 40])
def test_noop_describe_calls_do_not_grow_with_the_fleet(endpoint, tmp_path, count):
    lab = Lab(endpoint, tmp_path, dict(('node%d' % i, 'c5.large') for i in range(1, count + 1)),
              eni={'first_interface_index': 1})
    assert lab.run()['changed']
    post(endpoint, '/podnet-emulator/stats/reset')
    res = lab.run()
    assert not res['changed'], res
    st = stats(endpoint)
    assert writes(st) == {} and st['requests'] == {'DescribeInstanceTypes': 1, 'DescribeNetworkInterfaces': 2,
                                                   'DescribeSubnets': 1}, st
