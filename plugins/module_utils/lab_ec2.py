# -*- coding: utf-8 -*-
# Copyright: podnet.fabric contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The lab's AWS: an EC2 API on loopback, instance metadata in every node, and ENIs that appear as
interfaces in the nodes when they are attached (DESIGN.md section 8).

Layout for a lab with prefix P (see lab.py for the nodes):

- ``P + 'vpc'`` (``/run/netns/Pvpc``): the VPC. A bridge ``vpc0`` holds the first host of every
  lab subnet (the VPC router's address on AWS) and forwards between them. The name has no dash,
  so lab.py never takes it for a member.
- ``moto`` (this file run as ``lab_ec2.py moto CONFIG``): moto's EC2 in server mode on
  127.0.0.1:<port> (plugin_utils/ec2_emulator.py's app), seeded with the lab VPC, its subnets and one
  instance per node whose id is the node's ``podnet_instance.id``. Two things moto does unlike AWS are corrected in that process:
  instance ids are random (the seed sets them), and private IPs are drawn at random from the whole
  subnet, network, router and broadcast addresses included, and may repeat across ENIs (here the
  lowest address no ENI of the subnet holds, skipping the five AWS reserves).
- ``agent`` (``lab_ec2.py agent CONFIG``): for every node, an instance metadata service at
  169.254.169.254:80 -- a listening socket opened inside the node's network namespace, on the
  node's own loopback, answered from moto as AWS answers (IMDSv1 and v2) -- and the attach watcher:
  it polls moto, and for every ENI attached to a node's instance at device index N >= 1 it makes a
  veth appear in the node named ``ethN`` with the ENI's MAC, its peer a port of ``vpc0``; a
  detached ENI's veth goes away. Attaching is asynchronous, as on AWS. The VPC's router knows
  every attached ENI's private IPs as permanent neighbour entries (the VPC fabric delivers to the
  ENI that holds an IP; nobody ARPs for pod IPs). On exit the agent removes its veths, entries and
  metadata addresses.

The two daemons run in the machine's own network namespace (moto on loopback; the agent reaches it
there), started and stopped by PID through podnet.fabric.lab_daemon (playbooks/lab_up.yml,
lab_down.yml). 169.254.169.254 only ever exists on the nodes' loopbacks.

This file is also a script: it imports nothing from the collection, so it runs as a plain file.
"""
from __future__ import absolute_import, division, print_function

__metaclass__ = type

import ctypes
import ctypes.util
import errno
import hashlib
import ipaddress
import json
import os
import signal
import socket
import sys
import threading
import time
import traceback

METADATA_IP = '169.254.169.254'
METADATA_PORT = 80
BRIDGE = 'vpc0'
PORT_PREFIX = 've'
ALIAS_TAG = 'podnet-lab-eni'
NETNS_DIR = '/run/netns'
CLONE_NEWNET = 0x40000000
NUD_PERMANENT = 0x80
LAB_CREDENTIALS = {'aws_access_key_id': 'podnet-lab', 'aws_secret_access_key': 'podnet-lab'}
OWNER_ID = '123456789012'


class LabEc2Error(Exception):
    pass


# ---------------------------------------------------------------- names (pure)

def vpc_netns(prefix):
    return '%svpc' % prefix


def instance_id(prefix, node):
    """The lab instance id of a node: stable for a prefix and node name (the inventory plugin sets
    it as podnet_instance.id, the moto process gives the instance that id)."""
    return 'i-' + hashlib.sha1(('podnet-lab/%s/%s' % (prefix, node)).encode('utf-8')).hexdigest()[:17]


def port_name(eni_id):
    """The VPC-side name of an ENI's veth (15 characters at most)."""
    return PORT_PREFIX + eni_id.split('-', 1)[-1][-13:]


def alias(eni):
    return '%s %s %s %d %s' % (ALIAS_TAG, eni['id'], eni['node'], eni['device_index'], eni['mac'])


def parse_alias(text):
    parts = (text or '').split()
    if len(parts) != 5 or parts[0] != ALIAS_TAG or not parts[3].isdigit():
        return None
    return {'id': parts[1], 'node': parts[2], 'device_index': int(parts[3]), 'mac': parts[4]}


def reserved(cidr):
    """The addresses AWS keeps in every subnet: network, router (+1), DNS (+2), future (+3), broadcast."""
    net = ipaddress.IPv4Network(cidr)
    return set(str(net.network_address + i) for i in range(4)) | {str(net.broadcast_address)}


def next_free_ip(cidr, used):
    """The lowest address of cidr that is neither reserved nor used."""
    skip = reserved(cidr) | set(used)
    for ip in ipaddress.IPv4Network(cidr).hosts():
        if str(ip) not in skip:
            return str(ip)
    raise LabEc2Error('subnet %s has no free address' % cidr)


def node_ip(cidr, index):
    """The lab instance's primary IP: host 10 + index (from 1) of its subnet."""
    return str(ipaddress.IPv4Network(cidr).network_address + 10 + index)


# ---------------------------------------------------------------- metadata (pure)

def metadata_tree(instance, interfaces, subnets, vpcs, region):
    """The instance metadata of one instance, as AWS serves it (the part podnet and common tools read).

    instance: DescribeInstances' instance; interfaces: DescribeNetworkInterfaces' ENIs attached to it;
    subnets / vpcs: {id: DescribeSubnets' / DescribeVpcs' entry}. Returns nested dicts, leaves are text.
    """
    macs = {}
    primary_mac = None
    for eni in interfaces:
        att = eni.get('Attachment') or {}
        if att.get('Status') not in ('attached', 'attaching'):
            continue
        mac = eni['MacAddress'].lower()
        if att.get('DeviceIndex') == 0:
            primary_mac = mac
        subnet = subnets.get(eni.get('SubnetId')) or {}
        vpc = vpcs.get(eni.get('VpcId')) or {}
        ips = [p['PrivateIpAddress'] for p in sorted(eni.get('PrivateIpAddresses') or (),
                                                     key=lambda p: not p.get('Primary'))]
        entry = {
            'device-number': str(att.get('DeviceIndex', 0)),
            'interface-id': eni['NetworkInterfaceId'],
            'local-ipv4s': '\n'.join(ips),
            'mac': mac,
            'owner-id': eni.get('OwnerId') or OWNER_ID,
            'security-group-ids': '\n'.join(g['GroupId'] for g in eni.get('Groups') or ()),
            'security-groups': '\n'.join(g['GroupName'] for g in eni.get('Groups') or ()),
            'subnet-id': eni.get('SubnetId') or '',
            'subnet-ipv4-cidr-block': subnet.get('CidrBlock') or '',
            'vpc-id': eni.get('VpcId') or '',
            'vpc-ipv4-cidr-block': vpc.get('CidrBlock') or '',
            'vpc-ipv4-cidr-blocks': '\n'.join(a['CidrBlock'] for a in vpc.get('CidrBlockAssociationSet') or ()
                                              if a.get('CidrBlock')) or vpc.get('CidrBlock') or '',
        }
        prefixes = [p['Ipv4Prefix'] for p in eni.get('Ipv4Prefixes') or () if p.get('Ipv4Prefix')]
        if prefixes:
            entry['ipv4-prefix'] = '\n'.join(prefixes)
        if ips:
            entry['local-hostname'] = 'ip-%s.ec2.internal' % ips[0].replace('.', '-')
        macs[mac] = entry
    placement = instance.get('Placement') or {}
    meta = {
        'instance-id': instance['InstanceId'],
        'instance-type': instance.get('InstanceType') or '',
        'local-ipv4': instance.get('PrivateIpAddress') or '',
        'placement': {'availability-zone': placement.get('AvailabilityZone') or '', 'region': region},
        'network': {'interfaces': {'macs': macs}},
    }
    if primary_mac:
        meta['mac'] = primary_mac
    return {'latest': {'meta-data': meta}}


def metadata_lookup(tree, path):
    """(status, text) for a GET of path: a leaf's text, a directory's listing (sub-directories
    with a trailing slash), or 404."""
    node = tree
    for part in [p for p in path.split('?', 1)[0].split('/') if p]:
        if not isinstance(node, dict) or part not in node:
            return 404, 'Not Found'
        node = node[part]
    if isinstance(node, dict):
        return 200, '\n'.join(k + '/' if isinstance(v, dict) else k for k, v in sorted(node.items()))
    return 200, node


# ---------------------------------------------------------------- the attach watcher (pure)

def desired_ports(nodes, enis):
    """{eni id: {id, node, device_index, mac, ips}} for the ENIs attached to a node's instance at
    device index >= 1 (index 0, the primary ENI, is the node's eth0 on AWS; in the lab eth0 is the
    underlay). nodes: {instance id: node name}; enis: DescribeNetworkInterfaces' list."""
    out = {}
    for eni in enis:
        att = eni.get('Attachment') or {}
        node = nodes.get(att.get('InstanceId'))
        if node is None or att.get('Status') not in ('attached', 'attaching') or not att.get('DeviceIndex'):
            continue
        out[eni['NetworkInterfaceId']] = {
            'id': eni['NetworkInterfaceId'], 'node': node, 'device_index': int(att['DeviceIndex']),
            'mac': eni['MacAddress'].lower(),
            'ips': sorted(p['PrivateIpAddress'] for p in eni.get('PrivateIpAddresses') or ()),
        }
    return out


def plan_ports(desired, realized):
    """Pure: the actions that make the VPC's ports and neighbour entries match the attached ENIs.

    realized: {'ports': {eni id: {id, node, device_index, mac}}, 'neighbours': {ip: mac}}.
    """
    actions = []
    have = realized.get('ports') or {}
    for eni_id in sorted(have):
        want = desired.get(eni_id)
        if want is None or any(want[k] != have[eni_id][k] for k in ('node', 'device_index', 'mac')):
            actions.append(dict(have[eni_id], action='del_port'))
    for eni_id in sorted(desired):
        want = desired[eni_id]
        cur = have.get(eni_id)
        if cur is None or any(want[k] != cur[k] for k in ('node', 'device_index', 'mac')):
            actions.append(dict(((k, want[k]) for k in ('id', 'node', 'device_index', 'mac')), action='add_port'))
    want_neigh = {}
    for eni in desired.values():
        for ip in eni['ips']:
            want_neigh[ip] = eni['mac']
    have_neigh = realized.get('neighbours') or {}
    for ip in sorted(have_neigh):
        if want_neigh.get(ip) != have_neigh[ip]:
            actions.append({'action': 'del_neigh', 'ip': ip, 'mac': have_neigh[ip]})
    for ip in sorted(want_neigh):
        if have_neigh.get(ip) != want_neigh[ip]:
            actions.append({'action': 'add_neigh', 'ip': ip, 'mac': want_neigh[ip]})
    return actions


# ---------------------------------------------------------------- the VPC namespace (pure)

def vpc_desired(prefix, subnets):
    """The VPC namespace: its name and the router's addresses (first host/prefixlen of each subnet)."""
    addresses = []
    for cidr in subnets:
        net = ipaddress.IPv4Network(cidr)
        addresses.append('%s/%d' % (net.network_address + 1, net.prefixlen))
    return {'netns': vpc_netns(prefix), 'bridge': BRIDGE, 'addresses': sorted(addresses), 'forwarding': True}


def vpc_plan(desired, realized):
    """Pure: actions for the VPC namespace (desired None: remove it)."""
    if desired is None:
        return [{'action': 'remove_vpc', 'netns': realized['netns']}] if realized['exists'] else []
    actions = []
    if not realized['exists']:
        actions.append({'action': 'create_vpc', 'netns': desired['netns']})
    if not realized.get('bridge_up'):
        actions.append({'action': 'bridge_up', 'bridge': desired['bridge']})
    have = realized.get('addresses') or []
    for a in have:
        if a not in desired['addresses']:
            actions.append({'action': 'del_address', 'address': a})
    for a in desired['addresses']:
        if a not in have:
            actions.append({'action': 'add_address', 'address': a})
    if not realized.get('forwarding'):
        actions.append({'action': 'forwarding'})
    return actions


def vpc_view(state):
    if state is None or not state.get('exists', True):
        return {}
    return {'netns': state['netns'], 'addresses': state['addresses'], 'forwarding': state['forwarding']}


# ---------------------------------------------------------------- the VPC namespace (kernel)

# The VPC router's sysctls (in its own namespace). It forwards; it sends no ICMP redirects (pods of
# one subnet talk through it, as their tables send everything to it, and the VPC would not tell
# them to go direct; a device sends them when all OR the device says so); and it takes packets from
# addresses it has no route back to (a node asks for the router's MAC from whatever address it has).
VPC_SYSCTLS = (
    ('net.ipv4.ip_forward', '1'),
    ('net.ipv4.conf.all.send_redirects', '0'),
    ('net.ipv4.conf.default.send_redirects', '0'),
    ('net.ipv4.conf.%s.send_redirects' % BRIDGE, '0'),
    ('net.ipv4.conf.all.rp_filter', '0'),
    ('net.ipv4.conf.default.rp_filter', '0'),
    ('net.ipv4.conf.%s.rp_filter' % BRIDGE, '0'),
)


def _netns_list():
    try:
        return set(os.listdir(NETNS_DIR))
    except OSError:
        return set()


def _sysctl_path(key):
    return '/proc/sys/' + key.replace('.', '/')


def _in_netns(name, fn):
    """Run fn() in a thread that entered network namespace `name` (the caller's stays as it is)."""
    box = {}

    def run():
        try:
            fd = os.open(os.path.join(NETNS_DIR, name), os.O_RDONLY)
            try:
                if _libc().setns(fd, CLONE_NEWNET) != 0:
                    raise OSError(ctypes.get_errno(), 'setns %s: %s' % (name, os.strerror(ctypes.get_errno())))
            finally:
                os.close(fd)
            box['value'] = fn()
        except Exception as e:   # handed to the caller
            box['error'] = e
    t = threading.Thread(target=run)
    t.start()
    t.join()
    if 'error' in box:
        raise box['error']
    return box.get('value')


def _libc():
    return ctypes.CDLL(ctypes.util.find_library('c') or 'libc.so.6', use_errno=True)


def _read_sysctl(key):
    with open(_sysctl_path(key)) as f:
        return f.read().strip()


def _write_sysctl(key, value):
    with open(_sysctl_path(key), 'w') as f:
        f.write(value)


def vpc_read(prefix):
    from pyroute2 import NetNS

    name = vpc_netns(prefix)
    state = {'netns': name, 'exists': name in _netns_list(), 'bridge_up': False, 'addresses': [], 'forwarding': False}
    if not state['exists']:
        return state
    with NetNS(name) as ipr:
        idx = ipr.link_lookup(ifname=BRIDGE)
        if idx:
            link = ipr.get_links(idx[0])[0]
            state['bridge_up'] = bool(link['flags'] & 1)
            state['addresses'] = sorted('%s/%d' % (a.get_attr('IFA_ADDRESS'), a['prefixlen'])
                                        for a in ipr.get_addr(index=idx[0], family=socket.AF_INET))
    # /proc/sys/net is the reading thread's network namespace's.
    state['forwarding'] = state['bridge_up'] and _in_netns(
        name, lambda: all(_read_sysctl(k) == v for k, v in VPC_SYSCTLS))
    return state


def vpc_apply(prefix, action):
    from pyroute2 import NetNS
    from pyroute2 import netns as pnetns

    name = vpc_netns(prefix)
    kind = action['action']
    if kind == 'create_vpc':
        if name not in _netns_list():
            pnetns.create(name)
        with NetNS(name) as ipr:
            ipr.link('set', index=ipr.link_lookup(ifname='lo')[0], state='up')
    elif kind == 'remove_vpc':
        if name in _netns_list():
            pnetns.remove(name)
    elif kind == 'bridge_up':
        with NetNS(name) as ipr:
            if not ipr.link_lookup(ifname=BRIDGE):
                ipr.link('add', ifname=BRIDGE, kind='bridge')
            ipr.link('set', index=ipr.link_lookup(ifname=BRIDGE)[0], state='up')
    elif kind in ('add_address', 'del_address'):
        ip, plen = action['address'].split('/')
        with NetNS(name) as ipr:
            ipr.addr('add' if kind == 'add_address' else 'del', index=ipr.link_lookup(ifname=BRIDGE)[0],
                     address=ip, prefixlen=int(plen))
    elif kind == 'forwarding':
        def enable():
            for key, value in VPC_SYSCTLS:
                _write_sysctl(key, value)
        _in_netns(name, enable)
    else:  # pragma: no cover - vpc_plan() only emits the kinds above
        raise LabEc2Error('unknown vpc action %r' % kind)


# ---------------------------------------------------------------- the daemons

def ec2_client(cfg):
    import boto3

    return boto3.client('ec2', endpoint_url=cfg['endpoint_url'], region_name=cfg['region'], **LAB_CREDENTIALS)


def _log(msg):
    sys.stderr.write('%s %s\n' % (time.strftime('%Y-%m-%dT%H:%M:%S'), msg))
    sys.stderr.flush()


def _wait_for_term():
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    while not stop.wait(1.0):
        pass


def _write_ready(path, data):
    tmp = path + '.tmp'
    with open(tmp, 'w') as f:
        json.dump(data, f, indent=1, sort_keys=True)
    os.rename(tmp, path)


def _patch_moto(instance_ids):
    """Give the lab's instances their ids, and hand out private IPs as AWS does (see the docstring)."""
    import moto.ec2.models.elastic_network_interfaces as moto_enis
    import moto.ec2.models.instances as moto_instances
    from moto.ec2.models import ec2_backends

    random_instance_id = moto_instances.random_instance_id
    random_private_ip = moto_enis.random_private_ip
    lock = threading.Lock()

    def instance_id_for_seed():
        return instance_ids.pop(0) if instance_ids else random_instance_id()

    def used_ips(cidr):
        net = ipaddress.IPv4Network(cidr)
        out = set()
        for regions in list(ec2_backends.values()):
            for backend in list(regions.values()):
                for eni in list(getattr(backend, 'enis', {}).values()):
                    for p in eni.private_ip_addresses or ():
                        ip = p.get('PrivateIpAddress') if isinstance(p, dict) else None
                        if ip and ipaddress.IPv4Address(ip) in net:
                            out.add(ip)
        return out

    # Handed out but maybe not on an ENI yet: moto draws all of a new ENI's addresses before it
    # stores any. Dropped once moto holds them, so a released address is free again.
    handed = set()

    def private_ip(cidr=None, ipv6=False):
        if ipv6 or not cidr:
            return random_private_ip(cidr, ipv6)
        with lock:
            held = used_ips(cidr)
            handed.difference_update(held)
            ip = next_free_ip(cidr, held | handed)
            handed.add(ip)
            return ip

    moto_instances.random_instance_id = instance_id_for_seed
    moto_enis.random_private_ip = private_ip


def _emulator():
    """plugin_utils/ec2_emulator.py, the collection's moto server (requests one at a time, so the
    agent's polls never race eni_allocate's writes; DeleteOnTermination; fault injection), imported
    by path: this file runs as a plain script."""
    here = os.path.dirname(os.path.abspath(__file__))
    sys.path.insert(0, os.path.join(os.path.dirname(here), 'plugin_utils'))
    import ec2_emulator
    return ec2_emulator


def serve_moto(cfg):
    """moto's EC2 on 127.0.0.1:<port>, seeded; writes cfg['moto_ready'] (the seeded ids) when up."""
    import logging
    from werkzeug.serving import make_server
    from moto.moto_server.werkzeug_app import MotoRequestHandler

    logging.getLogger('werkzeug').setLevel(logging.ERROR)
    pending = []
    _patch_moto(pending)
    server = make_server('127.0.0.1', int(cfg['port']), _emulator().make_app(), threaded=True,
                         request_handler=MotoRequestHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    client = ec2_client(cfg)
    tags = [{'Key': 'podnet-lab', 'Value': cfg['prefix']}]
    vpc = client.create_vpc(CidrBlock=cfg['vpc']['cidr'],
                            TagSpecifications=[{'ResourceType': 'vpc', 'Tags': tags}])['Vpc']
    subnets = {}
    cidrs = [str(ipaddress.IPv4Network(c)) for c in cfg['vpc']['subnets']]
    for cidr in cidrs:
        subnets[cidr] = client.create_subnet(
            VpcId=vpc['VpcId'], CidrBlock=cidr,
            TagSpecifications=[{'ResourceType': 'subnet', 'Tags': tags}])['Subnet']['SubnetId']
    image = client.describe_images()['Images'][0]['ImageId']
    instances = {}
    for index, n in enumerate(cfg['nodes'], 1):
        pending.append(n['instance_id'])
        got = client.run_instances(
            ImageId=image, MinCount=1, MaxCount=1, InstanceType=n['instance_type'], SubnetId=subnets[cidrs[0]],
            PrivateIpAddress=node_ip(cidrs[0], index),
            TagSpecifications=[{'ResourceType': 'instance', 'Tags': tags + [{'Key': 'Name', 'Value': n['name']}]}],
        )['Instances'][0]['InstanceId']
        if got != n['instance_id']:
            raise LabEc2Error('moto gave %s the id %s, not %s' % (n['name'], got, n['instance_id']))
        instances[n['name']] = got
    _write_ready(cfg['moto_ready'], {'vpc_id': vpc['VpcId'], 'subnet_ids': subnets, 'instances': instances})
    _log('moto: EC2 on 127.0.0.1:%s, %d instances' % (cfg['port'], len(instances)))
    _wait_for_term()


class _Metadata(object):
    """One node's metadata, read from moto on each request (a few requests per module run)."""

    def __init__(self, cfg, instance):
        self.cfg = cfg
        self.instance = instance
        self.client = ec2_client(cfg)
        self.lock = threading.Lock()

    def tree(self):
        with self.lock:
            inst = self.client.describe_instances(InstanceIds=[self.instance])['Reservations'][0]['Instances'][0]
            enis = self.client.describe_network_interfaces(
                Filters=[{'Name': 'attachment.instance-id', 'Values': [self.instance]}])['NetworkInterfaces']
            subnet_ids = sorted(set(e['SubnetId'] for e in enis if e.get('SubnetId')))
            vpc_ids = sorted(set(e['VpcId'] for e in enis if e.get('VpcId')))
            subnets = dict((s['SubnetId'], s) for s in self.client.describe_subnets(SubnetIds=subnet_ids)['Subnets']) \
                if subnet_ids else {}
            vpcs = dict((v['VpcId'], v) for v in self.client.describe_vpcs(VpcIds=vpc_ids)['Vpcs']) if vpc_ids else {}
        return metadata_tree(inst, enis, subnets, vpcs, self.cfg['region'])


def _metadata_server(sock, source):
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Handler(BaseHTTPRequestHandler):
        server_version = 'EC2ws'

        def _send(self, status, text):
            body = text.encode('utf-8')
            self.send_response(status)
            self.send_header('Content-Type', 'text/plain')
            self.send_header('Content-Length', str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_PUT(self):
            if self.path.rstrip('/') != '/latest/api/token' or not self.headers.get('X-aws-ec2-metadata-token-ttl-seconds'):
                return self._send(400 if self.path.rstrip('/') == '/latest/api/token' else 404, 'Bad Request')
            return self._send(200, hashlib.sha1(os.urandom(16)).hexdigest())

        def do_GET(self):
            try:
                status, text = metadata_lookup(source.tree(), self.path)
            except Exception as e:
                status, text = 500, 'metadata: %s' % e
            self._send(status, text)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(sock.getsockname(), Handler, bind_and_activate=False)
    server.socket.close()
    server.socket = sock
    server.daemon_threads = True
    return server


def _listen_in_netns(netns, address, port):
    def make():
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((address, port))
        s.listen(64)
        return s
    return _in_netns(netns, make)


def _node_netns(cfg, node):
    return '%s-%s' % (cfg['prefix'], node)


def _set_metadata_address(netns, present):
    from pyroute2 import NetNS

    with NetNS(netns) as ipr:
        lo = ipr.link_lookup(ifname='lo')[0]
        have = any(a.get_attr('IFA_ADDRESS') == METADATA_IP for a in ipr.get_addr(index=lo, family=socket.AF_INET))
        if present and not have:
            ipr.addr('add', index=lo, address=METADATA_IP, prefixlen=32)
        elif not present and have:
            ipr.addr('del', index=lo, address=METADATA_IP, prefixlen=32)


def read_ports(ipr):
    """The realized watcher state in the VPC namespace: our ports (by alias) and neighbour entries."""
    ports = {}
    bridge = ipr.link_lookup(ifname=BRIDGE)
    for link in ipr.get_links():
        info = parse_alias(link.get_attr('IFLA_IFALIAS'))
        if info is not None:
            ports[info['id']] = info
    neighbours = {}
    if bridge:
        for n in ipr.get_neighbours(family=socket.AF_INET, ifindex=bridge[0]):
            if n['state'] & NUD_PERMANENT:
                neighbours[n.get_attr('NDA_DST')] = (n.get_attr('NDA_LLADDR') or '').lower()
    return {'ports': ports, 'neighbours': neighbours}


def apply_port(cfg, ipr, a):
    """One watcher action inside the VPC namespace (ipr: a NetNS of it)."""
    from pyroute2 import NetNS

    kind = a['action']
    bridge = ipr.link_lookup(ifname=BRIDGE)[0]
    if kind == 'del_port':
        idx = ipr.link_lookup(ifname=port_name(a['id']))
        if idx:
            ipr.link('del', index=idx[0])      # its peer, the node's ethN, goes with it
    elif kind == 'add_port':
        node_ns = _node_netns(cfg, a['node'])
        dev = 'eth%d' % a['device_index']
        with NetNS(node_ns) as nipr:
            old = nipr.link_lookup(ifname=dev)
            if old:
                nipr.link('del', index=old[0])   # a leftover of an ENI detached while we were away
        name = port_name(a['id'])
        old = ipr.link_lookup(ifname=name)
        if old:
            ipr.link('del', index=old[0])
        mtu = int(cfg.get('mtu') or 9001)
        ipr.link('add', ifname=name, kind='veth', mtu=mtu,
                 peer={'ifname': dev, 'address': a['mac'], 'mtu': mtu,
                       'net_ns_fd': os.path.join(NETNS_DIR, node_ns)})
        idx = ipr.link_lookup(ifname=name)[0]
        ipr.link('set', index=idx, ifalias=alias(a))
        ipr.link('set', index=idx, master=bridge, state='up')
    elif kind == 'add_neigh':
        ipr.neigh('replace', dst=a['ip'], lladdr=a['mac'], ifindex=bridge, state=NUD_PERMANENT)
    elif kind == 'del_neigh':
        try:
            ipr.neigh('del', dst=a['ip'], ifindex=bridge)
        except Exception as e:   # NetlinkError: the kernel flushed it with the bridge's carrier
            if getattr(e, 'code', None) != errno.ENOENT:
                raise
    else:  # pragma: no cover - plan_ports() only emits the kinds above
        raise LabEc2Error('unknown watcher action %r' % kind)


def _watch_once(cfg, client, ipr, nodes):
    enis = client.describe_network_interfaces(
        Filters=[{'Name': 'attachment.instance-id', 'Values': sorted(nodes)}])['NetworkInterfaces']
    actions = plan_ports(desired_ports(nodes, enis), read_ports(ipr))
    for a in actions:
        apply_port(cfg, ipr, a)
        _log('watcher: %s' % ' '.join('%s=%s' % (k, v) for k, v in sorted(a.items())))
    return actions


def serve_agent(cfg):
    """Metadata on every node and the attach watcher; cleans up after itself on SIGTERM."""
    from pyroute2 import NetNS

    nodes = dict((n['instance_id'], n['name']) for n in cfg['nodes'])
    servers = []
    for n in cfg['nodes']:
        netns = _node_netns(cfg, n['name'])
        _set_metadata_address(netns, True)
        sock = _listen_in_netns(netns, METADATA_IP, METADATA_PORT)
        server = _metadata_server(sock, _Metadata(cfg, n['instance_id']))
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append((netns, server))
    client = ec2_client(cfg)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    poll = float(cfg.get('poll') or 0.5)
    ready = False
    with NetNS(vpc_netns(cfg['prefix'])) as ipr:
        while not stop.is_set():
            try:
                _watch_once(cfg, client, ipr, nodes)
                if not ready:
                    _write_ready(cfg['agent_ready'], {'nodes': sorted(nodes.values())})
                    ready = True
                    _log('agent: metadata on %d nodes, watching' % len(servers))
            except Exception:
                _log('watcher: %s' % traceback.format_exc().strip().replace('\n', ' | '))
            stop.wait(poll)
        for a in plan_ports({}, read_ports(ipr)):
            try:
                apply_port(cfg, ipr, a)
            except Exception:
                _log('cleanup: %s' % traceback.format_exc().strip().replace('\n', ' | '))
    for netns, server in servers:
        server.shutdown()
        server.server_close()
        try:
            _set_metadata_address(netns, False)
        except Exception:   # the node is being torn down already
            pass
    _log('agent: stopped')


def main(argv):
    if len(argv) != 2 or argv[0] not in ('moto', 'agent'):
        sys.stderr.write('usage: lab_ec2.py moto|agent CONFIG.json\n')
        return 2
    with open(argv[1]) as f:
        cfg = json.load(f)
    if argv[0] == 'moto':
        serve_moto(cfg)
    else:
        serve_agent(cfg)
    return 0


if __name__ == '__main__':
    raise SystemExit(main(sys.argv[1:]))
