# -*- coding: utf-8 -*-
# Copyright: podnet.fabric contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The pod-to-pod connectivity probe (as cilium-health's): from inside an endpoint's network
namespace, ICMP echo and a TCP connection to every other node's health endpoint, whose responder
answers ``podnet-health <node>`` on port 4240; one line per pair that failed.

Pure parts first (ICMP packets, reply checks, targets, failure lines), then the probe itself, which
needs root (raw sockets made inside the namespace). No pyroute2: see netns.py.
"""
from __future__ import absolute_import, division, print_function

__metaclass__ = type

import errno
import ipaddress
import os
import select
import socket
import struct
import time

from ansible_collections.podnet.fabric.plugins.module_utils.netns import in_netns, netns_path

# The health endpoint probes run from (module_utils/health.py builds it), the port its responder
# listens on, and how its answer starts (health.RESPONDER_SRC writes `podnet-health <node>`).
DEFAULT_NETNS = 'podnet-health'
DEFAULT_PORT = 4240
REPLY_PREFIX = 'podnet-health'


class ProbeError(Exception):
    """Bad probe input (a target without name or address, a bad port)."""


def checksum(data):
    if len(data) % 2:
        data += b'\0'
    total = sum(struct.unpack('!%dH' % (len(data) // 2), data))
    while total >> 16:
        total = (total & 0xffff) + (total >> 16)
    return ~total & 0xffff


def echo_request(family, ident, seq, payload=b'podnet-health-probe'):
    """An ICMP (or ICMPv6) echo request; the kernel fills in the ICMPv6 checksum itself."""
    kind = 8 if family == socket.AF_INET else 128
    header = struct.pack('!BBHHH', kind, 0, 0, ident, seq)
    if family == socket.AF_INET:
        header = struct.pack('!BBHHH', kind, 0, checksum(header + payload), ident, seq)
    return header + payload


def parse_echo_reply(family, data):
    """(ident, seq) of an echo reply (IPv4 raw sockets see the IP header; ICMPv6 ones don't), else None."""
    if family == socket.AF_INET:
        if len(data) < 20:
            return None
        data = data[(data[0] & 0x0f) * 4:]
    if len(data) < 8:
        return None
    kind, code, _csum, ident, seq = struct.unpack('!BBHHH', data[:8])
    if code != 0 or kind != (0 if family == socket.AF_INET else 129):
        return None
    return ident, seq


def expected_reply(name):
    return '%s %s' % (REPLY_PREFIX, name)


def check_reply(reply, name):
    """None when the responder's line names the expected node, else what is wrong."""
    if reply == expected_reply(name):
        return None
    if not reply:
        return 'closed without a reply'
    if reply.startswith(REPLY_PREFIX + ' '):
        return "answered as %s, expected %s" % (reply[len(REPLY_PREFIX) + 1:], name)
    return 'unexpected reply %r' % reply[:80]


def normalize_targets(targets, default_port):
    out = []
    seen = set()
    for i, t in enumerate(targets or []):
        if not isinstance(t, dict) or not t.get('name') or not t.get('address'):
            raise ProbeError('targets[%d]: needs name and address, got %r' % (i, t))
        try:
            addr = str(ipaddress.ip_address(str(t['address']).split('/', 1)[0]))
        except ValueError:
            raise ProbeError('targets[%d] (%s): address %r is not an IP address' % (i, t['name'], t['address']))
        port = int(t.get('port') or default_port)
        if not 1 <= port <= 65535:
            raise ProbeError('targets[%d] (%s): port %s is not a TCP port' % (i, t['name'], port))
        key = (str(t['name']), addr, port)
        if key in seen:
            continue
        seen.add(key)
        out.append({'name': str(t['name']), 'address': addr, 'port': port})
    return out


def failures(source, results, ping=True, tcp=True):
    """One line per unreachable pair: `node1 -> node3 (10.244.3.5): tcp 4240 timed out`."""
    lines = []
    for r in results:
        head = '%s -> %s (%s)' % (source, r['name'], r['address'])
        if ping and not r['ping']['ok']:
            p = r['ping']
            why = p.get('error') or 'no echo reply (%d of %d)' % (p.get('received', 0), p.get('sent', 0))
            lines.append('%s: ping %s' % (head, why))
        if tcp and not r['tcp']['ok']:
            lines.append('%s: tcp %d %s' % (head, r['port'], r['tcp'].get('error') or 'failed'))
    return lines


def _icmp_probe(sock, family, address, ident, count, interval, timeout):
    sent, rtts, pending = 0, [], {}
    deadline = None
    next_send = time.time()
    while True:
        now = time.time()
        if sent < count and now >= next_send:
            try:
                sock.sendto(echo_request(family, ident, sent), (address, 0))
            except OSError as e:
                return {'ok': False, 'sent': sent, 'received': len(rtts), 'rtt_ms': None,
                        'error': e.strerror or str(e)}
            pending[sent] = now
            sent += 1
            next_send = now + interval
            if sent == count:
                deadline = now + timeout
        if sent == count and (len(rtts) == count or now >= deadline):
            break
        wait = (next_send if sent < count else deadline) - now
        ready = select.select([sock], [], [], max(0.0, wait))[0]
        if not ready:
            continue
        try:
            data, peer = sock.recvfrom(2048)
        except OSError:
            continue
        got = parse_echo_reply(family, data)
        if got and got[0] == ident and got[1] in pending and peer[0] == address:
            rtts.append((time.time() - pending.pop(got[1])) * 1000.0)
    out = {'ok': bool(rtts), 'sent': sent, 'received': len(rtts),
           'rtt_ms': round(sum(rtts) / len(rtts), 3) if rtts else None,
           'rtt_min_ms': round(min(rtts), 3) if rtts else None,
           'rtt_max_ms': round(max(rtts), 3) if rtts else None}
    return out


def _tcp_probe(sock, address, port, name, timeout):
    start = time.time()
    sock.settimeout(timeout)
    # Whether the handshake completed: the packet walk tells a dropped SYN (a timeout before it) from
    # a listener that took the connection but did not answer.
    connected = False
    try:
        sock.connect((address, port))
        connected = True
        data = b''
        while b'\n' not in data and len(data) < 256:
            chunk = sock.recv(256)
            if not chunk:
                break
            data += chunk
    except socket.timeout:
        return {'ok': False, 'reply': None, 'error': 'timed out', 'ms': None, 'connected': connected}
    except OSError as e:
        msg = (e.strerror or str(e)).lower() if e.errno != errno.ECONNREFUSED else 'connection refused'
        return {'ok': False, 'reply': None, 'error': msg, 'ms': None, 'connected': connected}
    finally:
        sock.close()
    reply = data.decode('utf-8', 'replace').split('\n')[0].strip()
    why = check_reply(reply, name)
    return {'ok': why is None, 'reply': reply, 'error': why, 'ms': round((time.time() - start) * 1000.0, 3),
            'connected': True}


def probe(netns, targets, ping=True, tcp=True, ping_count=3, ping_interval=0.2, ping_timeout=2.0,
          tcp_timeout=2.0, workers=16):
    """Probe every target from inside the endpoint's network namespace; one result per target."""
    from concurrent.futures import ThreadPoolExecutor

    path = netns_path(netns)
    socks = []
    with in_netns(path):
        for t in targets:
            fam = socket.AF_INET6 if ':' in t['address'] else socket.AF_INET
            icmp = socket.socket(fam, socket.SOCK_RAW, socket.IPPROTO_ICMP if fam == socket.AF_INET
                                 else socket.IPPROTO_ICMPV6) if ping else None
            stream = socket.socket(fam, socket.SOCK_STREAM) if tcp else None
            socks.append((fam, icmp, stream))
    base = (os.getpid() * 131) & 0xffff

    def one(i):
        t = targets[i]
        fam, icmp, stream = socks[i]
        res = dict(t)
        skipped = {'ok': True, 'skipped': True}
        try:
            res['ping'] = _icmp_probe(icmp, fam, t['address'], (base + i) & 0xffff, ping_count, ping_interval,
                                      ping_timeout) if icmp else skipped
        finally:
            if icmp:
                icmp.close()
        res['tcp'] = _tcp_probe(stream, t['address'], t['port'], t['name'], tcp_timeout) if stream else skipped
        return res

    if not targets:
        return []
    with ThreadPoolExecutor(max_workers=max(1, min(workers, len(targets)))) as pool:
        return list(pool.map(one, range(len(targets))))
