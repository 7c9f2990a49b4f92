# -*- coding: utf-8 -*-
# Copyright: podnet.fabric contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The one-machine lab: each member (node or router) is a network + mount + UTS namespace set.

Layout for a lab with prefix P (everything we create carries P, so two labs coexist):

- ``/run/netns/P-<member>``: the member's network namespace (``ip netns`` compatible);
- ``/run/netns/P-ul``: the underlay segment, a bridge ``br0`` with one veth port per member;
- ``/run/podnet-lab/P/``: a private bind mount holding each member's mount and UTS namespace
  files (``<member>/mnt``, ``<member>/uts``) and its ``/etc`` and ``/var/lib`` overlay layers.

Inside a member's mount namespace: ``/sys`` is a sysfs of its own network namespace, with its own
bpffs at ``/sys/fs/bpf``; ``/etc`` and ``/var/lib`` are overlays over the host's (writes stay in the
member); ``/run`` is a fresh tmpfs. The host's ``/run/netns`` and ``/run/podnet-lab`` mounts are
detached there first, so a member never pins another lab's namespaces.
"""
from __future__ import absolute_import, division, print_function

__metaclass__ = type

import ipaddress
import os
import re
import select
import shutil
import signal
import subprocess
import time

from ansible_collections.podnet.fabric.plugins.module_utils import daemon

LAB_ROOT = '/run/podnet-lab'
NETNS_DIR = '/run/netns'
PREFIX_RE = re.compile(r'^[a-z][a-z0-9]{1,5}$')
MEMBER_RE = re.compile(r'^[a-z][a-z0-9-]{0,14}$')
UNDERLAY = 'ul'
BRIDGE = 'br0'
NODE_DEV = 'eth0'

# Run inside the new mount namespace (as argv to /bin/sh -c) right after unshare.
MEMBER_SETUP = r'''
set -e
hostname "$1"
mount -t sysfs -o nosuid,nodev,noexec sysfs /sys
mount -t bpf -o mode=0700 bpf /sys/fs/bpf
mount -t overlay overlay -o "lowerdir=/etc,upperdir=$2/etc.upper,workdir=$2/etc.work" /etc
mount -t overlay overlay -o "lowerdir=/var/lib,upperdir=$2/varlib.upper,workdir=$2/varlib.work" /var/lib
# Detach every mount below /run (other namespaces' nsfs files among them), then a private /run.
awk '$5 ~ "^/run/" {print $5}' /proc/self/mountinfo | sort -r | while read -r m; do
  umount -l "$m" 2>/dev/null || true
done
mount -t tmpfs -o mode=0755,size=64m tmpfs /run
mkdir -p /var/lib/podnet /run/podnet
'''


class LabError(Exception):
    pass


def lab_dir(prefix):
    return os.path.join(LAB_ROOT, prefix)


def member_dir(prefix, name):
    return os.path.join(lab_dir(prefix), name)


def netns_name(prefix, name):
    return '%s-%s' % (prefix, name)


def ns_files(prefix, name):
    """The paths nsenter needs to enter a member."""
    d = member_dir(prefix, name)
    return {
        'net': os.path.join(NETNS_DIR, netns_name(prefix, name)),
        'mnt': os.path.join(d, 'mnt'),
        'uts': os.path.join(d, 'uts'),
    }


# The variables that pick a lab when an inventory leaves its prefix or node count unset.
LAB_ENV = ('PODNET_LAB_PREFIX', 'PODNET_LAB_NODES')


def checkout_env(root, base=None):
    """The environment for ansible-playbook run from the checkout at `root` (its venv, ansible.cfg
    and no colour), without LAB_ENV: the tests and benchmarks name their lab in the inventory they
    pass, and a developer's PODNET_LAB_PREFIX must not redirect them."""
    venv_bin = os.path.join(root, '.venv', 'bin')
    e = dict(os.environ if base is None else base)
    e['PATH'] = venv_bin + ':' + e.get('PATH', '')
    e['ANSIBLE_CONFIG'] = os.path.join(root, 'ansible.cfg')
    e['ANSIBLE_PYTHON_INTERPRETER'] = os.path.join(venv_bin, 'python')
    e['ANSIBLE_FORCE_COLOR'] = '0'
    e['ANSIBLE_NOCOLOR'] = '1'
    for name in LAB_ENV:
        e.pop(name, None)
    return e


def nsenter_argv(prefix, name, argv):
    f = ns_files(prefix, name)
    return ['nsenter', '--net=' + f['net'], '--mount=' + f['mnt'], '--uts=' + f['uts'], '--'] + list(argv)


def _bare(obj):
    """ansible-inventory --list marks strings {'__ansible_unsafe': ...}; a static inventory holds them bare."""
    if isinstance(obj, dict):
        if set(obj) == {'__ansible_unsafe'}:
            return obj['__ansible_unsafe']
        return dict((k, _bare(v)) for k, v in obj.items())
    if isinstance(obj, list):
        return [_bare(v) for v in obj]
    return obj


def awx_slices(listed, group, count):
    """The inventories AWX gives the jobs of a job template sliced `count` ways, from
    `ansible-inventory --list` output: slice n holds hosts[n-1::count] of `group`, in order
    (awx/main/models/inventory.py get_sliced_hosts), each host with its variables, in `group`.
    Returns [(n, hosts, inventory document)] for static YAML inventories. (The tests and the fleet
    bench run AWX job slicing on the lab with these.)"""
    hostvars = listed.get('_meta', {}).get('hostvars', {})
    hosts = list(listed.get(group, {}).get('hosts', []))
    out = []
    for n in range(1, count + 1):
        mine = hosts[n - 1::count]
        doc = {'all': {'children': {group: {'hosts': dict((h, _bare(hostvars.get(h, {}))) for h in mine)}}}}
        out.append((n, mine, doc))
    return out


# ---------------------------------------------------------------- desired state (pure)

def normalize(prefix, underlay_cidr, members, mtu=1500):
    """Validate the lab description; return the desired state or raise LabError."""
    errors = []
    if not isinstance(prefix, str) or not PREFIX_RE.match(prefix):
        errors.append("prefix: %r must be 2-6 lowercase letters/digits starting with a letter" % (prefix,))
    try:
        net = ipaddress.ip_network(underlay_cidr, strict=True)
        if net.version != 4:
            raise ValueError('not IPv4')
    except ValueError as e:
        errors.append('underlay_cidr: %r is not an IPv4 network (%s)' % (underlay_cidr, e))
        net = None
    out, seen_ip, seen_name = [], {}, set()
    for i, m in enumerate(members or []):
        where = 'members[%d]' % i
        name, ip, role = m.get('name'), m.get('ip'), m.get('role', 'node')
        if not isinstance(name, str) or not MEMBER_RE.match(name) or name == UNDERLAY:
            errors.append('%s.name: %r is not a valid lab member name' % (where, name))
            continue
        if name in seen_name:
            errors.append('%s.name: %r appears twice' % (where, name))
        seen_name.add(name)
        if role not in ('node', 'router'):
            errors.append("%s.role: %r must be 'node' or 'router'" % (where, role))
        try:
            addr = ipaddress.ip_address(ip)
        except ValueError:
            errors.append('%s.ip: %r is not an IP address' % (where, ip))
            continue
        if net is not None and (addr not in net or addr in (net.network_address, net.broadcast_address)):
            errors.append('%s.ip: %s is not a host address of the underlay %s' % (where, addr, net))
        if str(addr) in seen_ip:
            errors.append('%s.ip: %s is also %s' % (where, addr, seen_ip[str(addr)]))
        seen_ip[str(addr)] = name
        out.append({'name': name, 'ip': str(addr), 'role': role})
    if errors:
        raise LabError('; '.join(errors))
    return {
        'prefix': prefix,
        'underlay_cidr': str(net),
        'mtu': int(mtu),
        'members': sorted(out, key=lambda m: m['name']),
    }


def plan(desired, realized):
    """Compare desired and realized lab state; return a list of actions (pure)."""
    actions = []
    want = dict((m['name'], m) for m in desired['members']) if desired else {}
    have = realized['members']
    for name in sorted(have):
        if name not in want:
            actions.append({'action': 'remove_member', 'name': name})
    if desired is None:
        if realized['underlay']:
            actions.append({'action': 'remove_underlay'})
        if realized['lab_mount']:
            actions.append({'action': 'remove_lab_dir'})
        return actions
    if not realized['lab_mount']:
        actions.append({'action': 'create_lab_dir'})
    if not realized['underlay']:
        actions.append({'action': 'create_underlay'})
    plen = ipaddress.ip_network(desired['underlay_cidr']).prefixlen
    for name in sorted(want):
        m = want[name]
        cur = have.get(name)
        if cur is None or not cur['complete']:
            if cur is not None:
                actions.append({'action': 'remove_member', 'name': name})
            actions.append({'action': 'create_member', 'name': name, 'role': m['role']})
            cur = None
        if cur is None or not cur['port']:
            actions.append({'action': 'create_port', 'name': name})
        want_addr = '%s/%d' % (m['ip'], plen)
        cur_addrs = cur['addresses'] if cur else []
        if cur is None or cur_addrs != [want_addr] or not cur['up'] or cur['mtu'] != desired['mtu']:
            actions.append({'action': 'set_address', 'name': name, 'address': want_addr,
                            'mtu': desired['mtu'], 'stale': [a for a in cur_addrs if a != want_addr]})
    return actions


def summarize(state):
    """A stable, diff-friendly view of a realized or desired lab."""
    if state is None:
        return {}
    if 'lab_mount' in state:
        return {
            'members': dict((n, {'addresses': m['addresses'], 'complete': m['complete'], 'port': m['port']})
                            for n, m in sorted(state['members'].items())),
            'underlay': state['underlay'],
        }
    plen = ipaddress.ip_network(state['underlay_cidr']).prefixlen
    return {
        'members': dict((m['name'], {'addresses': ['%s/%d' % (m['ip'], plen)], 'complete': True, 'port': True})
                        for m in state['members']),
        'underlay': True,
    }


# ---------------------------------------------------------------- realized state (reads the kernel)

def _mounts():
    with open('/proc/self/mountinfo') as f:
        return set(line.split()[4] for line in f)


def _list_netns():
    try:
        return set(os.listdir(NETNS_DIR))
    except OSError:
        return set()


def read(prefix):
    from pyroute2 import NetNS  # imported late: the pure functions above need no pyroute2

    mounts = _mounts()
    netns = _list_netns()
    names = set()
    p = prefix + '-'
    for ns in netns:
        if ns.startswith(p) and ns != netns_name(prefix, UNDERLAY):
            names.add(ns[len(p):])
    d = lab_dir(prefix)
    if os.path.isdir(d):
        for n in os.listdir(d):
            if os.path.isdir(os.path.join(d, n)):
                names.add(n)
    ports = set()
    ul = netns_name(prefix, UNDERLAY)
    if ul in netns:
        with NetNS(ul) as ipr:
            for link in ipr.get_links():
                alias = link.get_attr('IFLA_IFALIAS')
                if alias and link.get_attr('IFLA_MASTER'):
                    ports.add(alias)
    members = {}
    for n in names:
        f = ns_files(prefix, n)
        complete = netns_name(prefix, n) in netns and f['mnt'] in mounts and f['uts'] in mounts
        addrs, up, mtu = [], False, None
        if netns_name(prefix, n) in netns:
            with NetNS(netns_name(prefix, n)) as ipr:
                idx = ipr.link_lookup(ifname=NODE_DEV)
                if idx:
                    link = ipr.get_links(idx[0])[0]
                    up = bool(link['flags'] & 1)
                    mtu = link.get_attr('IFLA_MTU')
                    addrs = sorted('%s/%d' % (a.get_attr('IFA_ADDRESS'), a['prefixlen'])
                                   for a in ipr.get_addr(index=idx[0], family=2))
        members[n] = {'complete': complete, 'port': n in ports, 'addresses': addrs, 'up': up, 'mtu': mtu}
    return {
        'prefix': prefix,
        'lab_mount': d in mounts,
        'underlay': ul in netns,
        'members': members,
    }


# ---------------------------------------------------------------- apply

def _run(argv, **kw):
    p = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True, check=False, **kw)
    if p.returncode != 0:
        raise LabError('%s failed (rc=%d): %s' % (' '.join(argv), p.returncode, p.stderr.strip()))
    return p.stdout


def _netns_inode(path):
    try:
        return os.stat(path).st_ino
    except OSError:
        return None


def member_pids(prefix, name):
    """PIDs of processes living in a member's network or mount namespace (ours: we made it)."""
    f = ns_files(prefix, name)
    inodes = set(i for i in (_netns_inode(f['net']), _netns_inode(f['mnt'])) if i)
    pids = []
    if not inodes:
        return pids
    for pid in os.listdir('/proc'):
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        for kind in ('net', 'mnt'):
            try:
                if os.stat('/proc/%s/ns/%s' % (pid, kind)).st_ino in inodes:
                    pids.append(int(pid))
                    break
            except OSError:
                pass
    return pids


def _stop_pids(pids, grace=3.0):
    # Every process in a member's namespaces is ours (the lab made the namespaces).
    daemon.terminate(pids, daemon.alive, grace)


def _umount(path):
    if path in _mounts():
        _run(['umount', path])


def _create_lab_dir(prefix):
    d = lab_dir(prefix)
    os.makedirs(d, exist_ok=True)
    if d not in _mounts():
        # nsfs files of mount namespaces can only be bind-mounted below a private mount.
        _run(['mount', '--bind', d, d])
        _run(['mount', '--make-private', d])


def _remove_lab_dir(prefix):
    d = lab_dir(prefix)
    _umount(d)
    shutil.rmtree(d, ignore_errors=True)
    try:
        os.rmdir(LAB_ROOT)
    except OSError:
        pass


def _create_member(prefix, name, role):
    from pyroute2 import netns as pnetns

    d = member_dir(prefix, name)
    for sub in ('etc.upper', 'etc.work', 'varlib.upper', 'varlib.work'):
        os.makedirs(os.path.join(d, sub), exist_ok=True)
    f = ns_files(prefix, name)
    for k in ('mnt', 'uts'):
        open(f[k], 'a').close()
    if netns_name(prefix, name) not in _list_netns():
        pnetns.create(netns_name(prefix, name))
    _run(['nsenter', '--net=' + f['net'], 'unshare', '--mount=' + f['mnt'], '--uts=' + f['uts'],
          '--propagation', 'private', '/bin/sh', '-c', MEMBER_SETUP, 'podnet-lab-setup', name, d])
    with _ns(prefix, name) as ipr:
        ipr.link('set', index=ipr.link_lookup(ifname='lo')[0], state='up')
    if role == 'router':
        # /proc/sys/net is per network namespace: this only affects the router member.
        _run(nsenter_argv(prefix, name, ['sysctl', '-qw', 'net.ipv4.ip_forward=1']))


def _remove_member(prefix, name):
    from pyroute2 import netns as pnetns

    _stop_pids(member_pids(prefix, name))
    f = ns_files(prefix, name)
    for k in ('mnt', 'uts'):
        _umount(f[k])
    if netns_name(prefix, name) in _list_netns():
        pnetns.remove(netns_name(prefix, name))
    shutil.rmtree(member_dir(prefix, name), ignore_errors=True)


def _ns(prefix, name):
    from pyroute2 import NetNS

    return NetNS(netns_name(prefix, name))


def _create_underlay(prefix):
    from pyroute2 import netns as pnetns

    ul = netns_name(prefix, UNDERLAY)
    if ul not in _list_netns():
        pnetns.create(ul)
    with _ns(prefix, UNDERLAY) as ipr:
        ipr.link('set', index=ipr.link_lookup(ifname='lo')[0], state='up')
        if not ipr.link_lookup(ifname=BRIDGE):
            ipr.link('add', ifname=BRIDGE, kind='bridge')
        ipr.link('set', index=ipr.link_lookup(ifname=BRIDGE)[0], state='up')


def _remove_underlay(prefix):
    from pyroute2 import netns as pnetns

    ul = netns_name(prefix, UNDERLAY)
    if ul in _list_netns():
        pnetns.remove(ul)


def _port_name(name):
    # Bridge ports live in the lab's own underlay namespace; the member name is kept in ifalias.
    return ('p-' + name)[:15]


def _create_port(prefix, name, mtu):
    with _ns(prefix, UNDERLAY) as ipr:
        port = _port_name(name)
        old = ipr.link_lookup(ifname=port)
        if old:
            ipr.link('del', index=old[0])
        with _ns(prefix, name) as nipr:
            old = nipr.link_lookup(ifname=NODE_DEV)
            if old:
                nipr.link('del', index=old[0])
        ipr.link('add', ifname=port, kind='veth', mtu=mtu,
                 peer={'ifname': NODE_DEV, 'net_ns_fd': ns_files(prefix, name)['net'], 'mtu': mtu})
        idx = ipr.link_lookup(ifname=port)[0]
        ipr.link('set', index=idx, ifalias=name)
        ipr.link('set', index=idx, master=ipr.link_lookup(ifname=BRIDGE)[0], state='up')


def _set_address(prefix, name, address, mtu, stale):
    ip, plen = address.split('/')
    with _ns(prefix, name) as ipr:
        idx = ipr.link_lookup(ifname=NODE_DEV)[0]
        for s in stale:
            sip, splen = s.split('/')
            ipr.addr('del', index=idx, address=sip, prefixlen=int(splen))
        if not any(a.get_attr('IFA_ADDRESS') == ip for a in ipr.get_addr(index=idx, family=2)):
            ipr.addr('add', index=idx, address=ip, prefixlen=int(plen))
        ipr.link('set', index=idx, mtu=mtu, state='up')


def apply(prefix, desired, actions):
    mtu = desired['mtu'] if desired else 1500
    for a in actions:
        kind = a['action']
        if kind == 'create_lab_dir':
            _create_lab_dir(prefix)
        elif kind == 'remove_lab_dir':
            _remove_lab_dir(prefix)
        elif kind == 'create_underlay':
            _create_underlay(prefix)
        elif kind == 'remove_underlay':
            _remove_underlay(prefix)
        elif kind == 'create_member':
            _create_member(prefix, a['name'], a['role'])
        elif kind == 'remove_member':
            _remove_member(prefix, a['name'])
        elif kind == 'create_port':
            _create_port(prefix, a['name'], mtu)
        elif kind == 'set_address':
            _set_address(prefix, a['name'], a['address'], a['mtu'], a['stale'])
        else:  # pragma: no cover - plan() only emits the kinds above
            raise LabError('unknown lab action %r' % kind)


# ---------------------------------------------------------------- capture on the underlay

_IP_LINE = re.compile(r'^(?:[\d:.]+ )?IP6? (?P<src>\S+) > (?P<dst>\S+): (?P<rest>.*)$')


def _endpoint(token):
    """'10.0.0.1.4240' -> ('10.0.0.1', 4240); 'fd00::1.53' -> ('fd00::1', 53); no port -> None."""
    if ':' in token:
        addr, sep, port = token.rpartition('.')
        return (addr, int(port)) if sep and port.isdigit() else (token, None)
    parts = token.split('.')
    if len(parts) == 5:
        return '.'.join(parts[:4]), int(parts[4])
    return token, None


def _proto(rest):
    if rest.startswith('ICMP'):
        return 'icmp'
    if rest.startswith('Flags ['):
        return 'tcp'
    if rest.startswith('UDP') or rest.startswith('VXLAN'):
        return 'udp'
    return 'other'


def parse(lines, vxlan_port=8472):
    """Pure: tcpdump -nn -T vxlan lines to packet dicts (a VXLAN packet spans two lines)."""
    packets = []
    for line in lines:
        line = line.rstrip()
        m = _IP_LINE.match(line)
        if not m:
            continue
        rest = m.group('rest')
        src = _endpoint(m.group('src'))[0]
        dst, dport = _endpoint(m.group('dst'))
        pkt = {'src': src, 'dst': dst, 'proto': _proto(rest), 'dport': dport}
        if packets and packets[-1].get('vni') is not None and 'inner_src' not in packets[-1] \
                and not re.match(r'^[\d:.]+ ', line):
            packets[-1].update(inner_src=pkt['src'], inner_dst=pkt['dst'], inner_proto=pkt['proto'],
                               inner_dport=pkt['dport'])
            continue
        vni = re.search(r'VXLAN, flags \[[^\]]*\] \([^)]*\), vni (\d+)', rest)
        if vni and pkt['dport'] == vxlan_port:
            pkt['vni'] = int(vni.group(1))
        packets.append(pkt)
    return packets


def capture(prefix, traffic, interface='br0', pcap_filter='', vxlan_port=8472, settle=0.5, tcpdump='tcpdump',
            before_stop=None, segment_netns=None):
    """Run tcpdump on the lab's underlay (or, segment_netns, another namespace of the lab's own:
    an ENI lab's VPC) while the traffic commands run inside members.

    traffic: [{'member', 'netns' (optional, inside the member), 'argv'}]; before_stop: a callable run
    after them, still capturing (tests drive traffic from Python). Returns
    {'lines', 'packets' (see parse), 'traffic': [{member, netns, argv, rc, stdout, stderr}]}.
    Raises LabError when the lab or tcpdump is missing. The capture is a process started and
    ended here (by its PID), whatever happens.
    """
    ul = os.path.join(NETNS_DIR, segment_netns or netns_name(prefix, 'ul'))
    if not os.path.exists(ul):
        raise LabError('prefix: no lab %r on this machine (%s is missing)' % (prefix, ul))
    # -T vxlan decodes the UDP packets the filter selects as VXLAN: keep other UDP out of the filter.
    argv = ['nsenter', '--net=' + ul, '--', tcpdump, '-i', interface, '-nn', '-l', '-U',
            '-T', 'vxlan'] + (pcap_filter.split() if pcap_filter else [])
    cap = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True)
    results = []
    try:
        deadline = time.time() + 10
        ready = ''
        # Unbuffered reads: a buffered readline could swallow the 'listening' line select never sees.
        fd = cap.stderr.fileno()
        while 'listening on' not in ready and time.time() < deadline:
            if select.select([fd], [], [], 0.2)[0]:
                chunk = os.read(fd, 4096)
                if not chunk:
                    break
                ready += chunk.decode('utf-8', 'replace')
            elif cap.poll() is not None:
                break
        if 'listening on' not in ready:
            raise LabError('tcpdump did not start: %s' % ready.strip())
        for t in traffic:
            cmd = list(t['argv'])
            if t.get('netns'):
                cmd = ['nsenter', '--net=/run/netns/%s' % t['netns'], '--'] + cmd
            run = subprocess.run(nsenter_argv(prefix, t['member'], cmd), stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, universal_newlines=True, timeout=60, check=False)
            results.append({'member': t['member'], 'netns': t.get('netns'), 'argv': t['argv'],
                            'rc': run.returncode, 'stdout': run.stdout, 'stderr': run.stderr})
        if before_stop is not None:
            before_stop()
        time.sleep(settle)
    finally:
        if cap.poll() is None:
            cap.send_signal(signal.SIGINT)
        try:
            out = cap.communicate(timeout=5)[0]
        except subprocess.TimeoutExpired:
            cap.kill()
            out = cap.communicate()[0]
    lines = out.splitlines()
    return {'lines': lines, 'packets': parse(lines, vxlan_port), 'traffic': results}
