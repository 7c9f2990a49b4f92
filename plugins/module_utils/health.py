# -*- coding: utf-8 -*-
# Copyright: podnet.fabric contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The node's health endpoint (as Cilium's cilium-health); the probe that uses it is probe.py.

Every node gets one endpoint: a network namespace (``podnet-health``) with a veth pair to the node
(``lxc_health`` on the node, ``eth0`` inside), an address from the node's pod CIDR, and a tiny TCP
responder inside it that answers ``podnet-health <node>``. Probing every other node's endpoint from
this one exercises exactly the path pod traffic takes (veth, the node's routing, the underlay or the
tunnel, the remote node's routing, its veth), not the node-to-node path.

Inside the endpoint: ``eth0`` holds the address as /32 (/128) with ``<router> dev eth0 scope link``
and ``default via <router>``, the router being the node's router IP on podnet_host. The node
answers ARP for the router IP on lxc_health because the address is local to the node and Linux's
default arp_ignore=0 answers for any local address on any interface; with arp_ignore >= 1 it would
not (the module warns). IPv6 neighbour discovery answers only for addresses of the receiving
interface, so for an IPv6 endpoint the node proxies the router IP on lxc_health (proxy_ndp=1, a
proxy neighbour entry, proxy_delay=0 so the first packet is not held back). On the node,
``<endpoint>/32 dev lxc_health scope link proto podnet`` (and ``<endpoint>/128 dev lxc_health``).

The responder is a child of the module's interpreter (``sys.executable -c RESPONDER_SRC ...``)
that enters the endpoint's network namespace with setns() before it binds, and keeps the node's
mount namespace, so anything that ends a node by its mount namespace (the lab's teardown) ends it.
It is "running" only when its pidfile's PID is alive, its command line is the one this code would
start, and its network namespace is the endpoint's (same nsfs inode).

Layout: pure functions (normalize, plan, project) first; then the readers and appliers that need
root. Network namespace helpers are in netns.py.
"""
from __future__ import absolute_import, division, print_function

__metaclass__ = type

import errno
import hashlib
import ipaddress
import os
import select
import socket
import subprocess
import time

from ansible_collections.podnet.fabric.plugins.module_utils import daemon, netlink, sysctl
from ansible_collections.podnet.fabric.plugins.module_utils.netns import inode, netns_exists, netns_path
from ansible_collections.podnet.fabric.plugins.module_utils.reconcile import list_diff
from ansible_collections.podnet.fabric.plugins.module_utils.netlink import NTF_PROXY, RTPROT_PODNET

SCOPE_LINK = 253
IFA_F_NODAD = 0x02

DEFAULT_DEVICE = 'lxc_health'
PEER = 'eth0'
PID_DIR = '/run/podnet'
MARK = 'podnet-health-responder'

# The responder. It runs as `python -c RESPONDER_SRC MARK VERSION NSPATH PORT NODE PIDFILE`; the
# module reads the command line back to tell whether the running one is the one it would start.
RESPONDER_SRC = r'''
import ctypes, os, signal, socket, sys
mark, version, nspath, port, node, pidfile = sys.argv[1:7]
libc = ctypes.CDLL(None, use_errno=True)
fd = os.open(nspath, os.O_RDONLY)
if libc.setns(fd, 0x40000000) != 0:
    raise OSError(ctypes.get_errno(), 'setns(%s) failed' % nspath)
os.close(fd)
try:
    srv = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    srv.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    addr = ('::', int(port))
except OSError:
    srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    addr = ('0.0.0.0', int(port))
srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(addr)
srv.listen(128)


def stop(signum, frame):
    try:
        with open(pidfile) as f:
            mine = f.read().strip() == str(os.getpid())
        if mine:
            os.unlink(pidfile)
    except OSError:
        pass
    os._exit(0)


signal.signal(signal.SIGTERM, stop)
signal.signal(signal.SIGINT, stop)
tmp = '%s.%d' % (pidfile, os.getpid())
with open(tmp, 'w') as f:
    f.write('%d\n' % os.getpid())
os.rename(tmp, pidfile)
line = ('podnet-health %s\n' % node).encode()
sys.stdout.write('ready\n')
sys.stdout.flush()
null = os.open(os.devnull, os.O_RDWR)
for n in (0, 1, 2):
    os.dup2(null, n)
while True:
    try:
        conn = srv.accept()[0]
    except OSError:
        continue
    try:
        conn.settimeout(2)
        conn.sendall(line)
        conn.shutdown(socket.SHUT_WR)
    except OSError:
        pass
    finally:
        conn.close()
'''
RESPONDER_VERSION = hashlib.sha1(RESPONDER_SRC.encode('utf-8')).hexdigest()[:12]


class HealthError(Exception):
    pass


# ---------------------------------------------------------------------------------------------
# Pure: input normalization, desired state, plan, projection
# ---------------------------------------------------------------------------------------------

def normalize_addresses(addresses):
    """{'ipv4': 'a.b.c.d/32', 'ipv6': 'x::y/128'} from a list of addresses (bare or host prefixes).

    At most one address per family, always a host prefix: the endpoint owns one address, its
    neighbours are reached through the router.
    """
    out = {}
    for a in addresses or []:
        try:
            iface = ipaddress.ip_interface(str(a).strip())
        except ValueError:
            raise HealthError('addresses: %r is not an IP address' % (a,))
        if '/' in str(a) and iface.network.prefixlen != iface.max_prefixlen:
            raise HealthError('addresses: %s: the endpoint holds a host address (/%d), not a network'
                              % (a, iface.max_prefixlen))
        fam = 'ipv%d' % iface.version
        if fam in out:
            raise HealthError('addresses: more than one %s address (%s, %s)' % (fam, out[fam], a))
        out[fam] = '%s/%d' % (iface.ip, iface.max_prefixlen)
    if 'ipv4' not in out and 'ipv6' not in out:
        raise HealthError('addresses: the endpoint needs an address')
    return out


def normalize_router(router, family):
    if router in (None, ''):
        return None
    text = str(router).split('/', 1)[0].strip()
    try:
        addr = ipaddress.ip_address(text)
    except ValueError:
        raise HealthError('router%s: %r is not an IP address' % ('_ipv6' if family == 'ipv6' else '', router))
    if 'ipv%d' % addr.version != family:
        raise HealthError('router%s: %s is not an %s address' % ('_ipv6' if family == 'ipv6' else '', router, family))
    return str(addr)


def pidfile_path(name, pid_dir=PID_DIR):
    return os.path.join(pid_dir, 'health-%s.pid' % name)


def responder_args(netns, port, node_name, pidfile):
    """The command line after `python -c SRC` (what identifies a responder's configuration)."""
    return [MARK, RESPONDER_VERSION, netns_path(netns), str(port), node_name, pidfile]


def responder_argv(python, netns, port, node_name, pidfile):
    return [python, '-c', RESPONDER_SRC] + responder_args(netns, port, node_name, pidfile)


def desired_state(netns, device, addresses, router, router_ipv6, mtu, port, node_name, state,
                  pid_dir=PID_DIR):
    """Validate and normalize everything the plan compares (raises HealthError)."""
    if state == 'absent':
        return {'state': 'absent', 'netns': netns, 'device': device, 'pidfile': pidfile_path(netns, pid_dir)}
    addrs = normalize_addresses(addresses)
    routers = {'ipv4': normalize_router(router, 'ipv4'), 'ipv6': normalize_router(router_ipv6, 'ipv6')}
    for fam in ('ipv4', 'ipv6'):
        if fam in addrs and not routers[fam]:
            raise HealthError('%s: the endpoint has an %s address (%s) but no %s router IP to route through'
                              % ('router' if fam == 'ipv4' else 'router_ipv6', fam, addrs[fam], fam))
    if not 68 <= int(mtu) <= 65535:
        raise HealthError('mtu: %s is not a valid MTU' % mtu)
    if not 1 <= int(port) <= 65535:
        raise HealthError('port: %s is not a TCP port' % port)
    if not node_name or any(c.isspace() for c in node_name):
        raise HealthError('node_name: %r must be a non-empty word' % (node_name,))
    routes, node_routes = [], []
    for fam in ('ipv4', 'ipv6'):
        if fam not in addrs:
            continue
        host = '/32' if fam == 'ipv4' else '/128'
        routes.append({'dst': routers[fam] + host, 'gateway': None, 'dev': PEER})
        routes.append({'dst': 'default' if fam == 'ipv4' else 'default6', 'gateway': routers[fam], 'dev': PEER})
        node_routes.append({'dst': addrs[fam], 'gateway': None, 'dev': device})
    pidfile = pidfile_path(netns, pid_dir)
    return {
        'state': 'present',
        'proxy_ndp': [routers['ipv6']] if 'ipv6' in addrs else [],
        'netns': netns,
        'device': device,
        'mtu': int(mtu),
        'port': int(port),
        'node_name': node_name,
        'addresses': sorted(addrs.values()),
        'routes': sort_routes(routes),
        'node_routes': sort_routes(node_routes),
        'pidfile': pidfile,
        'responder_args': responder_args(netns, port, node_name, pidfile),
    }


def sort_routes(routes):
    return sorted(routes, key=lambda r: (r['dst'], r['gateway'] or '', r['dev'] or ''))


def _route_diff(want, have):
    """Like list_diff, ordered so that a gateway's link route is added before and removed after it."""
    add, remove = list_diff(want, have)
    return (sorted(add, key=lambda r: r['gateway'] is not None),
            sorted(remove, key=lambda r: r['gateway'] is None))


def _pair_ok(dev, peer):
    return (dev is not None and peer is not None and dev.get('kind') == 'veth' and peer.get('kind') == 'veth'
            and dev.get('link') == peer.get('index') and peer.get('link') == dev.get('index'))


PROXY_SYSCTLS = {'net.ipv6.conf.%s.proxy_ndp': 1, 'net.ipv6.neigh.%s.proxy_delay': 0}


def responder_ok(desired, realized):
    r = realized.get('responder') or {}
    ns = realized.get('netns') or {}
    return bool(r.get('running') and r.get('args') == desired['responder_args']
                and ns.get('inode') and r.get('netns_inode') == ns.get('inode'))


def plan(desired, realized):
    """Pure: the actions that turn `realized` into `desired` (see read() for the realized shape)."""
    ns = realized['netns']
    dev, peer = realized['device'], realized['peer']
    resp = realized['responder']
    actions = []
    stop = [p for p in ([resp.get('pid')] if resp.get('ours') else []) + list(resp.get('strays') or []) if p]

    if desired['state'] == 'absent':
        if stop or resp.get('pidfile_exists'):
            actions.append({'action': 'stop_responder', 'pids': stop, 'pidfile': desired['pidfile']})
        if dev is not None:
            actions.append({'action': 'delete_link', 'name': desired['device']})
        if ns['exists']:
            actions.append({'action': 'delete_netns', 'name': desired['netns']})
        return actions

    new_ns = not ns['exists']
    if new_ns:
        actions.append({'action': 'create_netns', 'name': desired['netns']})
        peer = None
    if not _pair_ok(dev, peer):
        if dev is not None:
            actions.append({'action': 'delete_link', 'name': desired['device']})
        if peer is not None and (dev is None or dev.get('link') != peer.get('index')):
            actions.append({'action': 'delete_peer', 'name': PEER, 'netns': desired['netns']})
        actions.append({'action': 'create_veth', 'name': desired['device'], 'peer': PEER,
                        'netns': desired['netns'], 'mtu': desired['mtu']})
        dev = peer = None
    for side, name, link in (('node', desired['device'], dev), ('endpoint', PEER, peer)):
        if link is not None and link['mtu'] != desired['mtu']:
            actions.append({'action': 'set_mtu', 'side': side, 'name': name, 'mtu': desired['mtu']})
        if link is None or not link['up']:
            actions.append({'action': 'up', 'side': side, 'name': name})
    if new_ns or not realized.get('lo_up'):
        actions.append({'action': 'up', 'side': 'endpoint', 'name': 'lo'})

    # New addresses before old ones go: removing a device's last IPv4 address flushes its routes.
    add, remove = list_diff(desired['addresses'], peer['addresses'] if peer else [])
    actions += [{'action': 'add_address', 'address': a} for a in add]
    actions += [{'action': 'del_address', 'address': a} for a in remove]

    # Routes go with their device: a recreated pair starts with none.
    add, remove = _route_diff(desired['routes'], realized['routes'] if peer else [])
    actions += [dict(r, action='del_route', side='endpoint') for r in remove]
    actions += [dict(r, action='add_route', side='endpoint') for r in add]
    add, remove = _route_diff(desired['node_routes'], realized['node_routes'] if dev else [])
    actions += [dict(r, action='del_route', side='node') for r in remove]
    actions += [dict(r, action='add_route', side='node') for r in add]

    # IPv6: the node answers neighbour solicitations for the router IP on the device (see top).
    recreated = dev is None
    have = [] if recreated else realized.get('proxy_ndp') or []
    if desired['proxy_ndp']:
        sysctls = {} if recreated else realized.get('sysctls') or {}
        for key, value in sorted(PROXY_SYSCTLS.items()):
            if sysctls.get(key % desired['device']) != value:
                actions.append({'action': 'set_sysctl', 'key': key % desired['device'], 'value': value})
    add, remove = list_diff(desired['proxy_ndp'], have)
    actions += [{'action': 'del_proxy', 'address': a, 'name': desired['device']} for a in remove]
    actions += [{'action': 'add_proxy', 'address': a, 'name': desired['device']} for a in add]

    if new_ns or not responder_ok(desired, realized):
        actions.append({'action': 'start_responder', 'stop': stop, 'pidfile': desired['pidfile'],
                        'netns': desired['netns'], 'port': desired['port'], 'node_name': desired['node_name']})
    elif resp.get('strays'):
        actions.append({'action': 'stop_responder', 'pids': list(resp['strays']), 'pidfile': None})
    return actions


def project(desired, realized, actions):
    """Pure: the realized view after `actions` (the check-mode 'after' of the diff)."""
    if desired['state'] == 'absent':
        return empty_realized(desired['netns'])
    if not actions:
        return realized
    out = dict(realized)
    out['netns'] = dict(realized['netns'], exists=True, path=netns_path(desired['netns']))
    recreated = any(a['action'] == 'create_veth' for a in actions)
    for key, name, kind in (('device', desired['device'], 'veth'), ('peer', PEER, 'veth')):
        cur = dict((None if recreated else realized[key]) or {'name': name, 'kind': kind, 'addresses': []})
        cur.update({'mtu': desired['mtu'], 'up': True})
        if key == 'peer':
            cur['addresses'] = list(desired['addresses'])
        out[key] = cur
    out['lo_up'] = True
    out['routes'] = list(desired['routes'])
    out['node_routes'] = list(desired['node_routes'])
    out['proxy_ndp'] = list(desired['proxy_ndp'])
    if desired['proxy_ndp']:
        out['sysctls'] = dict((key % desired['device'], value) for key, value in PROXY_SYSCTLS.items())
    if any(a['action'] == 'start_responder' for a in actions):
        out['responder'] = {'pid': None, 'running': True, 'ours': True, 'args': desired['responder_args'],
                            'netns_inode': None, 'pidfile': desired['pidfile'], 'pidfile_exists': True,
                            'strays': []}
    elif any(a['action'] == 'stop_responder' for a in actions):
        out['responder'] = dict(realized['responder'], strays=[])
    return out


def empty_realized(netns, pidfile=None):
    return {
        'netns': {'name': netns, 'exists': False, 'inode': None, 'path': netns_path(netns)},
        'device': None,
        'peer': None,
        'lo_up': None,
        'routes': [],
        'node_routes': [],
        'proxy_ndp': [],
        'sysctls': {},
        'responder': {'pid': None, 'running': False, 'ours': False, 'args': None, 'netns_inode': None,
                      'pidfile': pidfile, 'pidfile_exists': False, 'strays': []},
    }


# ---------------------------------------------------------------------------------------------
# Root: namespaces, the responder, reading and applying
# ---------------------------------------------------------------------------------------------

def _is_responder(cmdline):
    return bool(cmdline) and len(cmdline) >= 4 and cmdline[1] == '-c' and cmdline[3] == MARK


def read_responder(netns, pidfile):
    pid = daemon.read_pidfile(pidfile)
    out = {'pid': None, 'running': False, 'ours': False, 'args': None, 'netns_inode': None,
           'pidfile': pidfile, 'pidfile_exists': os.path.exists(pidfile), 'strays': []}
    if pid:
        cmd = daemon.proc_argv(pid)
        if _is_responder(cmd):
            out.update(pid=pid, ours=True, args=cmd[3:], netns_inode=inode('/proc/%d/ns/net' % pid))
            ns_ino = inode(netns_path(netns))
            out['running'] = bool(ns_ino) and out['netns_inode'] == ns_ino
    # Responders for this endpoint that the pidfile lost track of (same netns path, same mount
    # namespace: on a lab machine every node has its own /run and its own responder).
    my_mnt = inode('/proc/self/ns/mnt')
    for entry in os.listdir('/proc'):
        if not entry.isdigit() or int(entry) in (out['pid'], os.getpid()):
            continue
        cmd = daemon.proc_argv(int(entry))     # None: gone, or a zombie
        if (_is_responder(cmd) and len(cmd) >= 6 and cmd[5] == netns_path(netns)
                and inode('/proc/%s/ns/mnt' % entry) == my_mnt):
            out['strays'].append(int(entry))
    out['strays'].sort()
    return out


def _route_view(r, dev_name):
    dst = r.get_attr('RTA_DST')
    if dst:
        dst = '%s/%d' % (dst, r['dst_len'])
    else:
        dst = 'default' if r['family'] == socket.AF_INET else 'default6'
    return {'dst': dst, 'gateway': r.get_attr('RTA_GATEWAY'), 'dev': dev_name}


def _routes(ipr, dev_name):
    """Our (proto podnet) routes through `dev_name` in the main table, both families."""
    idx = ipr.link_lookup(ifname=dev_name)
    if not idx:
        return []
    return sort_routes([_route_view(r, dev_name) for fam in (socket.AF_INET, socket.AF_INET6)
                        for r in ipr.get_routes(family=fam, table=254, proto=RTPROT_PODNET)
                        if r.get_attr('RTA_OIF') == idx[0]])


def read_sysctl(key):
    """A sysctl as an int (None when missing or not a number)."""
    value = sysctl.read(key)
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def arp_ignore(device):
    vals = [v for v in (read_sysctl('net.ipv4.conf.%s.arp_ignore' % conf) for conf in ('all', device)) if v is not None]
    return max(vals) if vals else None


def read(ipr_factory, netns, device, pidfile):
    """The realized state. ipr_factory(netns_name or None) opens an IPRoute (node or endpoint)."""
    out = empty_realized(netns, pidfile)
    with ipr_factory(None) as ipr:
        out['device'] = netlink.get_link(ipr, device)
        out['node_routes'] = _routes(ipr, device)
    if out['device'] is not None:
        out['proxy_ndp'] = netlink.proxy_neighbours(out['device']['index'])
        out['sysctls'] = dict((key % device, read_sysctl(key % device)) for key in PROXY_SYSCTLS)
    if netns_exists(netns):
        out['netns'].update(exists=True, inode=inode(netns_path(netns)))
        with ipr_factory(netns) as nipr:
            out['peer'] = netlink.get_link(nipr, PEER)
            lo = netlink.get_link(nipr, 'lo')
            out['lo_up'] = bool(lo and lo['up'])
            out['routes'] = _routes(nipr, PEER)
    out['responder'] = read_responder(netns, pidfile)
    return out


def stop_pids(pids, grace=3.0):
    """Stop responders (a PID that no longer runs a responder is never signalled)."""
    daemon.terminate(pids, lambda pid: _is_responder(daemon.proc_argv(pid)), grace)


def start_responder(python, netns, port, node_name, pidfile, timeout=10.0):
    """Start the responder and wait until it listens; its PID."""
    pid_dir = os.path.dirname(pidfile)
    if not os.path.isdir(pid_dir):
        os.makedirs(pid_dir, 0o755)
    argv = responder_argv(python, netns, port, node_name, pidfile)
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            cwd='/', close_fds=True, start_new_session=True)
    line = b''
    deadline = time.time() + timeout
    while time.time() < deadline and not line.endswith(b'\n'):
        ready = select.select([proc.stdout], [], [], max(0.0, deadline - time.time()))[0]
        if not ready:
            break
        chunk = os.read(proc.stdout.fileno(), 64)
        if not chunk:
            break
        line += chunk
    proc.stdout.close()
    if line != b'ready\n':
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        err = proc.stderr.read().decode('utf-8', 'replace').strip().splitlines()
        proc.stderr.close()
        raise HealthError('the health responder did not start (exit %s): %s'
                          % (proc.returncode, err[-1] if err else 'no output within %gs' % timeout))
    proc.stderr.close()
    # The responder outlives this process; it is reparented to init. Forget it without a warning.
    proc.returncode = 0
    return proc.pid


def apply_action(ipr_factory, python, netns, a):
    """Carry out one plan() action; endpoint-side ones run in the network namespace `netns`.

    Deleting what is already gone is success; deletes go by what the kernel reports (netlink).
    """
    kind = a['action']
    if kind == 'create_netns':
        from pyroute2 import netns as pnetns
        path = netns_path(a['name'])
        if os.path.lexists(path) and not netns_exists(a['name']):
            # The empty mount point a create killed before its bind mount leaves behind:
            # pyroute2 creates it with O_EXCL and would fail on it for good.
            os.unlink(path)
        pnetns.create(a['name'])
    elif kind == 'delete_netns':
        from pyroute2 import netns as pnetns
        pnetns.remove(a['name'])
    elif kind == 'stop_responder':
        stop_pids(a['pids'])
        if a.get('pidfile'):
            try:
                os.unlink(a['pidfile'])
            except OSError as e:
                if e.errno != errno.ENOENT:
                    raise
    elif kind == 'start_responder':
        stop_pids(a['stop'])
        start_responder(python, a['netns'], a['port'], a['node_name'], a['pidfile'])
    elif kind == 'create_veth':
        with ipr_factory(None) as ipr:
            ipr.link('add', ifname=a['name'], kind='veth', mtu=a['mtu'],
                     peer={'ifname': a['peer'], 'mtu': a['mtu'], 'net_ns_fd': netns_path(a['netns'])})
    elif kind in ('delete_link', 'delete_peer'):
        with ipr_factory(a['netns'] if kind == 'delete_peer' else None) as ipr:
            netlink.delete_link(ipr, a['name'])
    elif kind == 'set_sysctl':
        sysctl.write(a['key'], a['value'])
    elif kind in ('add_proxy', 'del_proxy'):
        with ipr_factory(None) as ipr:
            idx = ipr.link_lookup(ifname=a['name'])
            if kind == 'add_proxy':
                ipr.neigh('add', dst=a['address'], ifindex=idx[0], flags=NTF_PROXY, family=socket.AF_INET6)
            elif idx:   # a proxy entry goes with its link
                netlink.delete(ipr, 'neigh', {'family': socket.AF_INET6, 'ifindex': idx[0], 'flags': NTF_PROXY,
                                              'NDA_DST': a['address']})
    else:
        _apply_in(ipr_factory, netns, a)


def _apply_in(ipr_factory, netns, a):
    """Link, address and route actions, on the node (side 'node') or in the endpoint."""
    kind = a['action']
    side = a.get('side', 'endpoint')
    ns = None if side == 'node' else netns
    with ipr_factory(ns) as ipr:
        if kind in ('set_mtu', 'up'):
            idx = ipr.link_lookup(ifname=a['name'])[0]
            if kind == 'set_mtu':
                ipr.link('set', index=idx, mtu=a['mtu'])
            else:
                ipr.link('set', index=idx, state='up')
        elif kind == 'add_address':
            idx = ipr.link_lookup(ifname=PEER)[0]
            ip, plen = a['address'].split('/')
            kw = {'flags': IFA_F_NODAD} if ':' in ip else {}   # a /128 of our own: no duplicate detection delay
            ipr.addr('add', index=idx, address=ip, prefixlen=int(plen), **kw)
        elif kind == 'del_address':
            idx = ipr.link_lookup(ifname=PEER)
            if idx:
                netlink.delete_address(ipr, idx[0], a['address'])
        elif kind == 'add_route':
            ipr.route('replace', **route_spec(ipr, a))
        elif kind == 'del_route':
            # The kernel flushes a device's IPv4 routes with its last address: gone is success.
            idx = ipr.link_lookup(ifname=a['dev'])
            target = dict((k, a[k]) for k in ('dst', 'gateway', 'dev'))
            if idx:
                netlink.delete_matching(
                    ipr, 'route', lambda r: r.get_attr('RTA_OIF') == idx[0] and _route_view(r, a['dev']) == target,
                    family=socket.AF_INET6 if ':' in a['dst'] or a['dst'] == 'default6' else socket.AF_INET,
                    table=254, proto=RTPROT_PODNET)
        else:  # pragma: no cover - plan() only emits the kinds above
            raise HealthError('unknown health action %r' % kind)


def route_spec(ipr, r):
    idx = ipr.link_lookup(ifname=r['dev'])[0]
    if r['dst'] in ('default', 'default6'):
        fam = socket.AF_INET if r['dst'] == 'default' else socket.AF_INET6
        dst = '0.0.0.0/0' if fam == socket.AF_INET else '::/0'
    else:
        fam = socket.AF_INET6 if ':' in r['dst'] else socket.AF_INET
        dst = r['dst']
    spec = {'dst': dst, 'oif': idx, 'family': fam, 'table': 254, 'proto': RTPROT_PODNET}
    if r.get('gateway'):
        spec['gateway'] = r['gateway']
    elif fam == socket.AF_INET:
        spec['scope'] = SCOPE_LINK
    return spec
