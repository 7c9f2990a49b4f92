# -*- coding: utf-8 -*-
# Copyright: podnet.fabric contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The datapath's pinned maps: the one Python copy of their layouts (bpf/lib/maps.h is the C copy).

- ``MAPS``: each map's pin name (versioned: bcc reuses a pinned map without comparing its
  definition, so a layout change takes a new suffix here and in maps.h), kernel name, type, sizes
  and flags, with ctypes structures for its key and value.
- Symbolic entries (what podnet.fabric.bpf_map takes and returns) to and from key/value bytes:
  ``normalize(name, entries)`` validates and canonicalizes, ``encode`` / ``decode`` convert one
  canonical entry. A policy entry's port range (``port`` .. ``end_port``) is decomposed HERE into
  aligned LPM prefix blocks, one map key each; the controller sends ranges as the inventory says.
- ``PinnedMap``: open, create and pin, iterate, look up, update and delete through libbcc (bcc's
  library and the libbpf it links), never with hand-made syscalls; ``obj_get`` / ``obj_pin`` /
  ``prog_info`` for pinned programs (bpf.py).

Everything above ``PinnedMap`` is pure (unit-tested without root or bcc).
"""
from __future__ import absolute_import, division, print_function

__metaclass__ = type

import ctypes as ct
import errno
import ipaddress
import os
import re

DEFAULT_PIN_ROOT = '/sys/fs/bpf/podnet'

# enum bpf_map_type
MAP_HASH = 1
MAP_PERCPU_HASH = 5
MAP_LRU_HASH = 9
MAP_LPM_TRIE = 11
BPF_F_NO_PREALLOC = 1
BPF_ANY = 0

FAMILY = {4: 'ipv4', 6: 'ipv6'}
DIRECTIONS = ('ingress', 'egress')
VERDICTS = {1: 'allow', 2: 'deny'}
PROTOCOLS = {'any': 0, 'icmp': 1, 'tcp': 6, 'udp': 17, 'icmpv6': 58, 'sctp': 132}
PROTOCOL_NAMES = dict((v, k) for k, v in PROTOCOLS.items())
PORT_PROTOCOLS = ('tcp', 'udp', 'sctp')
ICMP_PROTOCOLS = ('icmp', 'icmpv6')
REASONS = {0: 'forwarded', 130: 'invalid source', 131: 'policy denied', 132: 'policy default deny',
           133: 'no endpoint or ipcache entry', 134: 'unsupported L3/L4'}
# ep_id + direction + pad + identity: every policy key matches these 64 bits.
POLICY_BASE_BITS = 64
MAC_RE = re.compile(r'^[0-9a-f]{2}(:[0-9a-f]{2}){5}$')
ZERO_MAC = '00:00:00:00:00:00'


class BpfMapError(Exception):
    pass


# ------------------------------------------------------------------------------ layouts

class IpcacheKey(ct.Structure):
    _fields_ = [('prefixlen', ct.c_uint32), ('family', ct.c_uint8), ('pad', ct.c_uint8 * 3),
                ('addr', ct.c_uint8 * 16)]


class IpcacheValue(ct.Structure):
    _fields_ = [('identity', ct.c_uint32), ('tunnel_endpoint', ct.c_uint8 * 4), ('flags', ct.c_uint8),
                ('pad', ct.c_uint8 * 3)]


class EndpointKey(ct.Structure):
    _fields_ = [('family', ct.c_uint8), ('pad', ct.c_uint8 * 3), ('addr', ct.c_uint8 * 16)]


class EndpointValue(ct.Structure):
    _fields_ = [('ifindex', ct.c_uint32), ('ep_id', ct.c_uint16), ('flags', ct.c_uint8), ('pad', ct.c_uint8),
                ('identity', ct.c_uint32), ('mac', ct.c_uint8 * 6), ('node_mac', ct.c_uint8 * 6)]


class PolicyKey(ct.Structure):
    # Packed like the C struct: the LPM prefix runs over consecutive bytes.
    _pack_ = 1
    _fields_ = [('prefixlen', ct.c_uint32), ('ep_id', ct.c_uint16), ('direction', ct.c_uint8), ('pad', ct.c_uint8),
                ('identity', ct.c_uint32), ('protocol', ct.c_uint8), ('dport', ct.c_uint8 * 2), ('pad2', ct.c_uint8)]


class PolicyValue(ct.Structure):
    _fields_ = [('verdict', ct.c_uint8), ('pad', ct.c_uint8), ('rule_id', ct.c_uint16)]


class CtKey(ct.Structure):
    _fields_ = [('family', ct.c_uint8), ('protocol', ct.c_uint8), ('sport', ct.c_uint8 * 2), ('dport', ct.c_uint8 * 2),
                ('direction', ct.c_uint8), ('pad', ct.c_uint8), ('saddr', ct.c_uint8 * 16), ('daddr', ct.c_uint8 * 16)]


class CtValue(ct.Structure):
    _fields_ = [('created_ns', ct.c_uint64), ('last_seen_ns', ct.c_uint64), ('flags', ct.c_uint32),
                ('rule_id', ct.c_uint32)]


class MetricsKey(ct.Structure):
    _fields_ = [('reason', ct.c_uint8), ('direction', ct.c_uint8), ('rule_id', ct.c_uint16)]


class MetricsValue(ct.Structure):
    _fields_ = [('packets', ct.c_uint64), ('bytes', ct.c_uint64)]


class MapSpec(object):
    def __init__(self, name, pin, kernel_name, map_type, key, value, max_entries, flags=0, percpu=False):
        self.name, self.pin, self.kernel_name = name, pin, kernel_name
        self.map_type, self.key, self.value = map_type, key, value
        self.max_entries, self.flags, self.percpu = max_entries, flags, percpu

    @property
    def key_size(self):
        return ct.sizeof(self.key)

    @property
    def value_size(self):
        return ct.sizeof(self.value)

    def path(self, pin_root):
        return os.path.join(pin_root, self.pin)


# kernel_name: what bcc names the map (the C variable in maps.h), so a map created here and one
# created by a compile look the same in `bpftool map show`.
MAPS = dict((s.name, s) for s in (
    MapSpec('ipcache', 'podnet_ipcache_v1', 'pn_ipcache', MAP_LPM_TRIE, IpcacheKey, IpcacheValue, 65536, BPF_F_NO_PREALLOC),
    MapSpec('endpoints', 'podnet_endpoints_v1', 'pn_endpoints', MAP_HASH, EndpointKey, EndpointValue, 4096),
    MapSpec('policy', 'podnet_policy_v1', 'pn_policy', MAP_LPM_TRIE, PolicyKey, PolicyValue, 65536, BPF_F_NO_PREALLOC),
    MapSpec('ct', 'podnet_ct_v1', 'pn_ct', MAP_LRU_HASH, CtKey, CtValue, 65536),
    MapSpec('metrics', 'podnet_metrics_v1', 'pn_metrics', MAP_PERCPU_HASH, MetricsKey, MetricsValue, 4096, percpu=True),
))
# The maps a playbook fills with entries; ct and metrics are the datapath's own (flush only).
SYNCED = ('ipcache', 'endpoints', 'policy')


def layout_problems(spec, info):
    """Pure: how a pinned map's info (type, key_size, value_size, max_entries, map_flags) differs
    from the layout this podnet expects; [] when it matches."""
    out = []
    for field, want in (('type', spec.map_type), ('key_size', spec.key_size), ('value_size', spec.value_size),
                        ('max_entries', spec.max_entries), ('map_flags', spec.flags)):
        if info.get(field) != want:
            out.append('%s %s (expected %s)' % (field, info.get(field), want))
    return out


# ------------------------------------------------------------------------------ small converters

def _bytes(arr):
    return bytes(bytearray(arr))


def _set(arr, data):
    ct.memmove(arr, data, len(data))


def _family(addr):
    return 4 if addr.version == 4 else 6


def _addr16(addr):
    return addr.packed + b'\0' * (16 - len(addr.packed))


def _addr_from(family, raw):
    return ipaddress.ip_address(raw[:4] if family == 4 else raw[:16])


def _port_bytes(port):
    return bytes(bytearray(((port >> 8) & 0xFF, port & 0xFF)))


def _port_from(raw):
    raw = bytearray(raw)
    return (raw[0] << 8) | raw[1]


def _mac_bytes(mac):
    return bytes(bytearray(int(x, 16) for x in mac.split(':')))


def _mac_text(raw):
    return ':'.join('%02x' % b for b in bytearray(raw))


def _int(value, where, lo, hi):
    if isinstance(value, bool) or value is None:
        raise BpfMapError('%s: %r is not an integer' % (where, value))
    try:
        n = int(value)
    except (TypeError, ValueError):
        raise BpfMapError('%s: %r is not an integer' % (where, value))
    if isinstance(value, float) and value != n:
        raise BpfMapError('%s: %r is not an integer' % (where, value))
    if not lo <= n <= hi:
        raise BpfMapError('%s: %d is out of range (%d..%d)' % (where, n, lo, hi))
    return n


def _bool(value, where):
    if isinstance(value, bool):
        return value
    if value in (None, ''):
        return False
    text = str(value).strip().lower()
    if text in ('yes', 'true', 'on', '1'):
        return True
    if text in ('no', 'false', 'off', '0'):
        return False
    raise BpfMapError('%s: %r is not a boolean' % (where, value))


def _mac(value, where):
    text = str(value).strip().lower().replace('-', ':')
    if not MAC_RE.match(text):
        raise BpfMapError('%s: %r is not a MAC address (aa:bb:cc:dd:ee:ff)' % (where, value))
    return text


def _check_keys(entry, allowed, where):
    if not isinstance(entry, dict):
        raise BpfMapError('%s: %r is not a dict' % (where, entry))
    unknown = sorted(set(entry) - set(allowed))
    if unknown:
        raise BpfMapError('%s: unknown key%s %s (known: %s)' % (where, 's' if len(unknown) > 1 else '',
                                                                ', '.join(unknown), ', '.join(sorted(allowed))))


def _required(entry, key, where):
    if entry.get(key) is None:
        raise BpfMapError('%s.%s: required' % (where, key))
    return entry[key]


# ------------------------------------------------------------------------------ port ranges

def port_blocks(lo, hi):
    """Pure: the port range lo..hi as aligned prefix blocks [(start, end, prefix bits)], fewest first
    to last: 80..95 -> [(80, 95, 12)]; 1..65535 -> 16 blocks; 0..65535 -> [(0, 65535, 0)]."""
    if not 0 <= lo <= hi <= 0xFFFF:
        raise ValueError('bad port range %r..%r' % (lo, hi))
    out = []
    while lo <= hi:
        size = (lo & -lo) if lo else 0x10000
        while size > hi - lo + 1:
            size >>= 1
        out.append((lo, lo + size - 1, 16 - (size.bit_length() - 1)))
        lo += size
    return out


# ------------------------------------------------------------------------------ ipcache

def _norm_ipcache(entry, where):
    _check_keys(entry, ('prefix', 'identity', 'tunnel_endpoint', 'local'), where)
    text = str(_required(entry, 'prefix', where)).strip()
    try:
        net = ipaddress.ip_network(text if '/' in text else text + ('/128' if ':' in text else '/32'), strict=True)
    except ValueError as e:
        raise BpfMapError('%s.prefix: %r is not a CIDR (%s)' % (where, entry['prefix'], e))
    tep = entry.get('tunnel_endpoint')
    if tep in (None, '', '0.0.0.0'):
        tep = None
    else:
        try:
            tep = str(ipaddress.IPv4Address(str(tep).strip()))
        except ValueError:
            raise BpfMapError('%s.tunnel_endpoint: %r is not an IPv4 address' % (where, entry['tunnel_endpoint']))
    return {'prefix': str(net), 'identity': _int(_required(entry, 'identity', where), where + '.identity', 0, 0xFFFFFFFF),
            'tunnel_endpoint': tep, 'local': _bool(entry.get('local'), where + '.local')}


def _enc_ipcache(e):
    net = ipaddress.ip_network(e['prefix'])
    k = IpcacheKey()
    k.prefixlen = 32 + net.prefixlen
    k.family = _family(net)
    _set(k.addr, _addr16(net.network_address))
    v = IpcacheValue()
    v.identity = e['identity']
    if e['tunnel_endpoint']:
        _set(v.tunnel_endpoint, ipaddress.IPv4Address(e['tunnel_endpoint']).packed)
    v.flags = 1 if e['local'] else 0
    return k, v


def _dec_ipcache(k, v):
    if k.family not in FAMILY:
        raise BpfMapError('ipcache key with family %d' % k.family)
    addr = _addr_from(k.family, _bytes(k.addr))
    net = ipaddress.ip_network('%s/%d' % (addr, k.prefixlen - 32), strict=False)
    tep = _bytes(v.tunnel_endpoint)
    return {'prefix': str(net), 'identity': v.identity,
            'tunnel_endpoint': str(ipaddress.IPv4Address(tep)) if tep != b'\0' * 4 else None,
            'local': bool(v.flags & 1)}


# ------------------------------------------------------------------------------ endpoints

def _norm_endpoint(entry, where, resolve_device):
    # `name` (the endpoint's, as datapath_plan gives it) only names the entry in messages: the map
    # has no room for it.
    _check_keys(entry, ('name', 'address', 'ifindex', 'device', 'ep_id', 'identity', 'mac', 'node_mac',
                        'enforce_ingress', 'enforce_egress'), where)
    if entry.get('name'):
        where = '%s (%s)' % (where, entry['name'])
    try:
        addr = ipaddress.ip_address(str(_required(entry, 'address', where)).strip())
    except ValueError:
        raise BpfMapError('%s.address: %r is not an IP address' % (where, entry['address']))
    device_mac = None
    if entry.get('device') is not None and entry.get('ifindex') is not None:
        raise BpfMapError('%s: give ifindex or device, not both' % where)
    if entry.get('device') is not None:
        if resolve_device is None:
            raise BpfMapError('%s.device: cannot resolve device names here' % where)
        found = resolve_device(str(entry['device']))
        if found is None:
            raise BpfMapError('%s.device: %s does not exist on this node' % (where, entry['device']))
        ifindex, device_mac = found
    elif entry.get('ifindex') is not None:
        ifindex = _int(entry['ifindex'], where + '.ifindex', 1, 0xFFFFFFFF)
    else:
        raise BpfMapError('%s: give ifindex or device (the host side of the endpoint\'s veth)' % where)
    node_mac = entry.get('node_mac')
    return {
        'address': str(addr),
        'ifindex': ifindex,
        'ep_id': _int(_required(entry, 'ep_id', where), where + '.ep_id', 1, 0xFFFF),
        'identity': _int(_required(entry, 'identity', where), where + '.identity', 0, 0xFFFFFFFF),
        'mac': _mac(entry['mac'], where + '.mac') if entry.get('mac') else ZERO_MAC,
        # The host side's MAC is the device's own when the entry names the device.
        'node_mac': _mac(node_mac, where + '.node_mac') if node_mac else _mac(device_mac or ZERO_MAC, where + '.node_mac'),
        'enforce_ingress': _bool(entry.get('enforce_ingress'), where + '.enforce_ingress'),
        'enforce_egress': _bool(entry.get('enforce_egress'), where + '.enforce_egress'),
    }


def _enc_endpoint(e):
    addr = ipaddress.ip_address(e['address'])
    k = EndpointKey()
    k.family = _family(addr)
    _set(k.addr, _addr16(addr))
    v = EndpointValue()
    v.ifindex = e['ifindex']
    v.ep_id = e['ep_id']
    v.flags = (1 if e['enforce_ingress'] else 0) | (2 if e['enforce_egress'] else 0)
    v.identity = e['identity']
    _set(v.mac, _mac_bytes(e['mac']))
    _set(v.node_mac, _mac_bytes(e['node_mac']))
    return k, v


def _dec_endpoint(k, v):
    if k.family not in FAMILY:
        raise BpfMapError('endpoints key with family %d' % k.family)
    return {'address': str(_addr_from(k.family, _bytes(k.addr))), 'ifindex': v.ifindex, 'ep_id': v.ep_id,
            'identity': v.identity, 'mac': _mac_text(v.mac), 'node_mac': _mac_text(v.node_mac),
            'enforce_ingress': bool(v.flags & 1), 'enforce_egress': bool(v.flags & 2)}


# ------------------------------------------------------------------------------ policy

def _protocol(value, where):
    if isinstance(value, int) and not isinstance(value, bool):
        if value in PROTOCOL_NAMES:
            return PROTOCOL_NAMES[value]
        raise BpfMapError('%s: protocol number %d is not one of %s' % (where, value, ', '.join(sorted(PROTOCOLS))))
    text = str(value if value is not None else 'any').strip().lower()
    if text not in PROTOCOLS:
        raise BpfMapError('%s: %r is not one of %s' % (where, value, ', '.join(sorted(PROTOCOLS))))
    return text


def _norm_policy(entry, where):
    """One symbolic policy entry -> its canonical per-key entries (a port range gives several)."""
    _check_keys(entry, ('ep_id', 'direction', 'identity', 'protocol', 'port', 'end_port', 'icmp_type',
                        'verdict', 'rule'), where)
    direction = str(_required(entry, 'direction', where)).strip().lower()
    if direction not in DIRECTIONS:
        raise BpfMapError('%s.direction: %r is not ingress or egress' % (where, entry['direction']))
    verdict = str(_required(entry, 'verdict', where)).strip().lower()
    if verdict not in VERDICTS.values():
        raise BpfMapError('%s.verdict: %r is not allow or deny' % (where, entry['verdict']))
    protocol = _protocol(entry.get('protocol'), where + '.protocol')
    base = {
        'ep_id': _int(_required(entry, 'ep_id', where), where + '.ep_id', 1, 0xFFFF),
        'direction': direction,
        'identity': _int(entry.get('identity', 0), where + '.identity', 0, 0xFFFFFFFF),
        'protocol': protocol,
        'port': None, 'end_port': None, 'icmp_type': None,
        'verdict': verdict,
        'rule': _int(entry.get('rule', 0), where + '.rule', 0, 0xFFFF),
    }
    port, end_port, icmp_type = entry.get('port'), entry.get('end_port'), entry.get('icmp_type')
    if protocol not in PORT_PROTOCOLS and (port or end_port):
        raise BpfMapError('%s.port: protocol %s has no ports' % (where, protocol))
    if protocol not in ICMP_PROTOCOLS and icmp_type is not None:
        raise BpfMapError('%s.icmp_type: only for icmp and icmpv6, not %s' % (where, protocol))
    if protocol in ICMP_PROTOCOLS:
        if icmp_type is not None:
            base['icmp_type'] = _int(icmp_type, where + '.icmp_type', 0, 255)
        return [base]
    if protocol not in PORT_PROTOCOLS:
        return [base]
    if end_port is not None and not port:
        raise BpfMapError('%s.end_port: needs a port to start from' % where)
    if not port:
        return [base]            # port 0 / no port: every port
    lo = _int(port, where + '.port', 1, 0xFFFF)
    hi = _int(end_port, where + '.end_port', lo, 0xFFFF) if end_port is not None else lo
    out = []
    for start, end, _bits in port_blocks(lo, hi):
        e = dict(base)
        e['port'], e['end_port'] = start, end
        out.append(e)
    return out


def policy_prefixlen(e):
    """Pure: the LPM prefix length of a canonical policy entry."""
    if e['protocol'] == 'any':
        return POLICY_BASE_BITS
    if e['icmp_type'] is not None:
        return POLICY_BASE_BITS + 8 + 8
    if e['port'] is None:
        return POLICY_BASE_BITS + 8
    size = e['end_port'] - e['port'] + 1
    return POLICY_BASE_BITS + 8 + 16 - (size.bit_length() - 1)


def _enc_policy(e):
    k = PolicyKey()
    k.prefixlen = policy_prefixlen(e)
    k.ep_id = e['ep_id']
    k.direction = DIRECTIONS.index(e['direction'])
    k.identity = e['identity']
    k.protocol = PROTOCOLS[e['protocol']]
    if e['icmp_type'] is not None:
        _set(k.dport, _port_bytes(e['icmp_type'] << 8))
    elif e['port'] is not None:
        _set(k.dport, _port_bytes(e['port']))
    v = PolicyValue()
    v.verdict = 1 if e['verdict'] == 'allow' else 2
    v.rule_id = e['rule']
    return k, v


def _dec_policy(k, v):
    bits = k.prefixlen - POLICY_BASE_BITS
    if k.direction > 1 or bits not in (0,) + tuple(range(8, 25)) or v.verdict not in VERDICTS:
        raise BpfMapError('policy key ep_id %d: prefix length %d, direction %d, verdict %d is not an entry podnet '
                          'writes' % (k.ep_id, k.prefixlen, k.direction, v.verdict))
    protocol = PROTOCOL_NAMES.get(k.protocol, k.protocol) if bits else 'any'
    e = {'ep_id': k.ep_id, 'direction': DIRECTIONS[k.direction], 'identity': k.identity, 'protocol': protocol,
         'port': None, 'end_port': None, 'icmp_type': None, 'verdict': VERDICTS[v.verdict], 'rule': v.rule_id}
    port_bits = bits - 8
    if port_bits > 0:
        dport = _port_from(k.dport)
        if protocol in ICMP_PROTOCOLS:
            e['icmp_type'] = dport >> 8
        else:
            size = 1 << (16 - port_bits)
            e['port'] = dport & ~(size - 1) & 0xFFFF
            e['end_port'] = e['port'] + size - 1
    return e


# ------------------------------------------------------------------------------ ct, metrics (read only)

def _dec_ct(k, v):
    fam = k.family if k.family in FAMILY else 4
    return {'family': FAMILY.get(k.family, k.family), 'protocol': PROTOCOL_NAMES.get(k.protocol, k.protocol),
            'saddr': str(_addr_from(fam, _bytes(k.saddr))), 'daddr': str(_addr_from(fam, _bytes(k.daddr))),
            'sport': _port_from(k.sport), 'dport': _port_from(k.dport), 'direction': DIRECTIONS[k.direction & 1],
            'created_ns': v.created_ns, 'last_seen_ns': v.last_seen_ns, 'rule': v.rule_id}


def _dec_metrics(k, values):
    return {'reason': k.reason, 'reason_name': REASONS.get(k.reason, 'reason %d' % k.reason),
            'direction': DIRECTIONS[k.direction & 1], 'rule': k.rule_id,
            'packets': sum(v.packets for v in values), 'bytes': sum(v.bytes for v in values)}


# ------------------------------------------------------------------------------ entries: the public pure API

def entry_id(name, e):
    """Pure: the text naming a canonical entry's map key (diffs, messages, the module's lists)."""
    if name == 'ipcache':
        return e['prefix']
    if name == 'endpoints':
        return e['address']
    if name == 'policy':
        tail = e['protocol']
        if e['icmp_type'] is not None:
            tail += ' type %d' % e['icmp_type']
        elif e['port'] is not None:
            tail += ' %d' % e['port'] if e['port'] == e['end_port'] else ' %d-%d' % (e['port'], e['end_port'])
        return 'ep %d %s identity %d %s' % (e['ep_id'], e['direction'], e['identity'], tail)
    if name == 'ct':
        return '%s %s %s:%d -> %s:%d' % (e['direction'], e['protocol'], e['saddr'], e['sport'], e['daddr'], e['dport'])
    if name == 'metrics':
        return '%s %s rule %d' % (e['reason_name'], e['direction'], e['rule'])
    raise BpfMapError('unknown map %r' % name)


def normalize(name, entries, resolve_device=None):
    """Pure (given resolve_device): symbolic entries -> {entry_id: canonical entry}.

    resolve_device(name) -> (ifindex, mac) or None, for endpoints entries that name their device.
    Errors name the entry (``entries[3].port: ...``). Two entries that write the same map key with
    different values are an error; the same entry twice is not.
    """
    if name not in SYNCED:
        if entries:
            raise BpfMapError('entries: the %s map is the datapath\'s own: it takes no entries (prune flushes it)' % name)
        return {}
    out, origin = {}, {}
    for i, entry in enumerate(entries or []):
        where = 'entries[%d]' % i
        if name == 'ipcache':
            canon = [_norm_ipcache(entry, where)]
        elif name == 'endpoints':
            canon = [_norm_endpoint(entry, where, resolve_device)]
        else:
            canon = _norm_policy(entry, where)
        for e in canon:
            eid = entry_id(name, e)
            if eid in out and out[eid] != e:
                raise BpfMapError('%s: writes %s, as %s does, with another value' % (where, eid, origin[eid]))
            out[eid] = e
            origin.setdefault(eid, where)
    return out


_CODECS = {
    'ipcache': (_enc_ipcache, _dec_ipcache),
    'endpoints': (_enc_endpoint, _dec_endpoint),
    'policy': (_enc_policy, _dec_policy),
}


def encode(name, entry):
    """Pure: a canonical entry -> (key bytes, value bytes)."""
    k, v = _CODECS[name][0](entry)
    return ct.string_at(ct.addressof(k), ct.sizeof(k)), ct.string_at(ct.addressof(v), ct.sizeof(v))


def decode(name, key, value):
    """Pure: (key bytes, value bytes) -> a canonical entry. For the per-CPU metrics map `value`
    holds every possible CPU's value (each rounded up to 8 bytes), summed here."""
    spec = MAPS[name]
    k = spec.key.from_buffer_copy(key)
    if name == 'metrics':
        step = (spec.value_size + 7) & ~7
        values = [spec.value.from_buffer_copy(value[i:i + spec.value_size]) for i in range(0, len(value), step)]
        return _dec_metrics(k, values)
    v = spec.value.from_buffer_copy(value)
    if name == 'ct':
        return _dec_ct(k, v)
    return _CODECS[name][1](k, v)


def plan(name, desired, realized, prune, state='present'):
    """Pure: the actions turning the realized map into the desired one.

    desired: {entry_id: canonical} (normalize()); realized: {'exists': bool, 'count': int,
    'entries': {entry_id: canonical}} (entries of the synced maps only). Entries are written before
    any is removed, so a policy change never passes through a state with neither the old nor the
    new entry. The datapath's own maps (ct, metrics) take no entries: prune flushes them."""
    if state == 'absent':
        return [{'action': 'unpin_map', 'map': name}] if realized['exists'] else []
    actions = []
    if not realized['exists']:
        actions.append({'action': 'create_map', 'map': name})
    if name not in SYNCED:
        if prune and realized['exists'] and realized['count']:
            actions.append({'action': 'flush', 'map': name, 'count': realized['count']})
        return actions
    have = realized['entries'] if realized['exists'] else {}
    for eid in sorted(desired):
        if eid not in have:
            actions.append({'action': 'add', 'map': name, 'id': eid, 'entry': desired[eid]})
        elif have[eid] != desired[eid]:
            actions.append({'action': 'change', 'map': name, 'id': eid, 'entry': desired[eid], 'before': have[eid]})
    if prune:
        for eid in sorted(set(have) - set(desired)):
            actions.append({'action': 'remove', 'map': name, 'id': eid, 'entry': have[eid]})
    return actions


def project(realized, actions):
    """Pure: the realized state the actions would leave (check mode)."""
    exists = realized['exists']
    entries = dict(realized['entries']) if exists else {}
    count = realized['count'] if exists else 0
    for a in actions:
        kind = a['action']
        if kind == 'unpin_map':
            exists, entries, count = False, {}, 0
        elif kind == 'create_map':
            exists = True
        elif kind == 'flush':
            count = 0
        elif kind == 'add':
            entries[a['id']] = a['entry']
            count += 1
        elif kind == 'change':
            entries[a['id']] = a['entry']
        elif kind == 'remove':
            entries.pop(a['id'], None)
            count -= 1
    return {'exists': exists, 'count': count, 'entries': entries}


def touched(realized, actions):
    """Pure: the entries the actions touch, as the realized state holds them ({id: entry}): what
    the diff shows, instead of whole maps of thousands of entries."""
    ids = set(a['id'] for a in actions if 'id' in a)
    return dict((i, e) for i, e in realized['entries'].items() if i in ids)


# ------------------------------------------------------------------------------ libbcc: pinned objects

class _MapInfo(ct.Structure):
    # The head of struct bpf_map_info; the kernel fills as much as info_len asks for.
    _fields_ = [('type', ct.c_uint32), ('id', ct.c_uint32), ('key_size', ct.c_uint32), ('value_size', ct.c_uint32),
                ('max_entries', ct.c_uint32), ('map_flags', ct.c_uint32), ('name', ct.c_char * 16)]


class _ProgInfo(ct.Structure):
    # The head of struct bpf_prog_info, up to its name (the insns pointers stay 0: not asked for).
    _fields_ = [('type', ct.c_uint32), ('id', ct.c_uint32), ('tag', ct.c_uint8 * 8), ('jited_prog_len', ct.c_uint32),
                ('xlated_prog_len', ct.c_uint32), ('jited_prog_insns', ct.c_uint64), ('xlated_prog_insns', ct.c_uint64),
                ('load_time', ct.c_uint64), ('created_by_uid', ct.c_uint32), ('nr_map_ids', ct.c_uint32),
                ('map_ids', ct.c_uint64), ('name', ct.c_char * 16)]


_LIB = []


def libbcc():
    """bcc's library (libbcc.so.0, from python3-bpfcc's libbpfcc), with the libbpf calls it links
    (bpf_obj_get, bpf_obj_pin) reachable through it. Loaded on first use: the pure code above needs
    neither."""
    if not _LIB:
        try:
            lib = ct.CDLL('libbcc.so.0', use_errno=True)
        except OSError as e:
            raise BpfMapError('cannot load libbcc.so.0 (Debian package libbpfcc, with python3-bpfcc): %s' % e)
        sig = (
            ('bpf_obj_get', ct.c_int, [ct.c_char_p]),
            ('bpf_obj_pin', ct.c_int, [ct.c_int, ct.c_char_p]),
            ('bpf_obj_get_info', ct.c_int, [ct.c_int, ct.c_void_p, ct.POINTER(ct.c_uint32)]),
            ('bcc_create_map', ct.c_int, [ct.c_int, ct.c_char_p, ct.c_int, ct.c_int, ct.c_int, ct.c_int]),
            ('bpf_get_first_key', ct.c_int, [ct.c_int, ct.c_void_p, ct.c_size_t]),
            ('bpf_get_next_key', ct.c_int, [ct.c_int, ct.c_void_p, ct.c_void_p]),
            ('bpf_lookup_elem', ct.c_int, [ct.c_int, ct.c_void_p, ct.c_void_p]),
            ('bpf_update_elem', ct.c_int, [ct.c_int, ct.c_void_p, ct.c_void_p, ct.c_ulonglong]),
            ('bpf_delete_elem', ct.c_int, [ct.c_int, ct.c_void_p]),
            # (prog_type, name, insns, insns bytes, license, kern_version, log_level, log_buf, log_buf_size)
            ('bcc_prog_load', ct.c_int, [ct.c_int, ct.c_char_p, ct.c_void_p, ct.c_int, ct.c_char_p, ct.c_uint,
                                         ct.c_int, ct.c_char_p, ct.c_uint]),
        )
        for fname, restype, argtypes in sig:
            fn = getattr(lib, fname)
            fn.restype, fn.argtypes = restype, argtypes
        _LIB.append(lib)
    return _LIB[0]


def _oserror(what, path):
    err = ct.get_errno() or errno.EIO
    return OSError(err, '%s: %s' % (what, os.strerror(err)), path)


def obj_get(path):
    """An fd for a pinned object, or None when nothing is pinned at path."""
    fd = libbcc().bpf_obj_get(path.encode('utf-8'))
    if fd < 0:
        if ct.get_errno() == errno.ENOENT:
            return None
        raise _oserror('cannot open the pinned object', path)
    return fd


def obj_pin(fd, path):
    """Pin fd at path, replacing what is pinned there in one rename (bpffs names take no dots)."""
    tmp = path + '_new'
    if os.path.exists(tmp):
        os.unlink(tmp)
    if libbcc().bpf_obj_pin(fd, tmp.encode('utf-8')) < 0:
        raise _oserror('cannot pin', tmp)
    os.rename(tmp, path)


def unpin(path):
    """Remove a pin; one that is already gone is success (False)."""
    try:
        os.unlink(path)
    except OSError as e:
        if e.errno != errno.ENOENT:
            raise
        return False
    return True


def _info(fd, cls, path):
    info = cls()
    size = ct.c_uint32(ct.sizeof(info))
    if libbcc().bpf_obj_get_info(fd, ct.byref(info), ct.byref(size)) < 0:
        raise _oserror('cannot read the object\'s info', path)
    return info


def map_info(fd, path=''):
    i = _info(fd, _MapInfo, path)
    return {'type': i.type, 'id': i.id, 'key_size': i.key_size, 'value_size': i.value_size,
            'max_entries': i.max_entries, 'map_flags': i.map_flags, 'name': i.name.decode('utf-8', 'replace')}


def prog_info(fd, path=''):
    i = _info(fd, _ProgInfo, path)
    return {'type': i.type, 'id': i.id, 'tag': _bytes(i.tag).hex(),
            'name': i.name.decode('utf-8', 'replace')}


def possible_cpus():
    """How many CPUs a per-CPU map holds a value for (/sys/devices/system/cpu/possible, '0-3,5')."""
    with open('/sys/devices/system/cpu/possible') as f:
        text = f.read().strip()
    n = 0
    for part in text.split(','):
        lo, _sep, hi = part.partition('-')
        n += (int(hi) if hi else int(lo)) - int(lo) + 1
    return n


class PinnedMap(object):
    """One of MAPS, pinned under a pin root. Use open() / create(); close() when done."""

    def __init__(self, spec, path, fd):
        self.spec, self.path, self.fd = spec, path, fd
        step = (spec.value_size + 7) & ~7
        self.value_bytes = step * possible_cpus() if spec.percpu else spec.value_size

    @classmethod
    def open(cls, name, pin_root=DEFAULT_PIN_ROOT, check=True):
        """The pinned map, or None when it is not pinned. With check, a map whose layout is not
        MAPS[name]'s is an error (bcc would reuse it silently)."""
        spec = MAPS[name]
        path = spec.path(pin_root)
        fd = obj_get(path)
        if fd is None:
            return None
        m = cls(spec, path, fd)
        if check:
            problems = layout_problems(spec, m.info())
            if problems:
                m.close()
                raise BpfMapError('%s: the pinned map has %s: it was made by another podnet version; a layout '
                                  'change needs a new version suffix' % (path, ', '.join(problems)))
        return m

    @classmethod
    def create(cls, name, pin_root=DEFAULT_PIN_ROOT):
        """Create the map as a compile would and pin it (the pin root is made if missing)."""
        spec = MAPS[name]
        path = spec.path(pin_root)
        os.makedirs(pin_root, mode=0o700, exist_ok=True)
        fd = libbcc().bcc_create_map(spec.map_type, spec.kernel_name.encode('utf-8'), spec.key_size,
                                     spec.value_size, spec.max_entries, spec.flags)
        if fd < 0:
            raise _oserror('cannot create the map', path)
        m = cls(spec, path, fd)
        try:
            obj_pin(fd, path)
        except Exception:
            m.close()
            raise
        return m

    def close(self):
        if self.fd is not None and self.fd >= 0:
            os.close(self.fd)
        self.fd = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def info(self):
        return map_info(self.fd, self.path)

    def keys(self):
        lib = libbcc()
        key = ct.create_string_buffer(self.spec.key_size)
        nxt = ct.create_string_buffer(self.spec.key_size)
        if lib.bpf_get_first_key(self.fd, key, self.spec.key_size) < 0:
            if ct.get_errno() == errno.ENOENT:
                return
            raise _oserror('cannot iterate', self.path)
        while True:
            yield key.raw
            if lib.bpf_get_next_key(self.fd, key, nxt) < 0:
                if ct.get_errno() == errno.ENOENT:
                    return
                raise _oserror('cannot iterate', self.path)
            ct.memmove(key, nxt, self.spec.key_size)

    def lookup(self, key):
        value = ct.create_string_buffer(self.value_bytes)
        if libbcc().bpf_lookup_elem(self.fd, ct.create_string_buffer(key, len(key)), value) < 0:
            if ct.get_errno() == errno.ENOENT:
                return None
            raise _oserror('cannot look up', self.path)
        return value.raw

    def items(self):
        """(key bytes, value bytes) pairs; a key deleted while iterating is skipped."""
        for key in list(self.keys()):
            value = self.lookup(key)
            if value is not None:
                yield key, value

    def update(self, key, value):
        if libbcc().bpf_update_elem(self.fd, ct.create_string_buffer(key, len(key)),
                                    ct.create_string_buffer(value, len(value)), BPF_ANY) < 0:
            raise _oserror('cannot update', self.path)

    def delete(self, key):
        """Delete one key; one that is already gone is success."""
        if libbcc().bpf_delete_elem(self.fd, ct.create_string_buffer(key, len(key))) < 0:
            if ct.get_errno() == errno.ENOENT:
                return False
            raise _oserror('cannot delete', self.path)
        return True

    def entries(self):
        """{entry_id: canonical entry} of everything in the map."""
        name = self.spec.name
        out = {}
        for k, v in self.items():
            e = decode(name, k, v)
            out[entry_id(name, e)] = e
        return out

    def count(self):
        return sum(1 for _k in self.keys())

    def flush(self):
        for key in list(self.keys()):
            self.delete(key)


def read(name, pin_root):
    """The realized state of a map (plan()'s `realized`); entries are decoded for the synced maps."""
    m = PinnedMap.open(name, pin_root)
    if m is None:
        return {'exists': False, 'count': 0, 'entries': {}}
    with m:
        if name in SYNCED:
            entries = m.entries()
            return {'exists': True, 'count': len(entries), 'entries': entries}
        return {'exists': True, 'count': m.count(), 'entries': {}}


def remove_empty_dirs(pin_root, subdirs=('programs',)):
    """Sub-directories of the pin root, then the pin root, go with their last pin (all podnet's)."""
    for d in [os.path.join(pin_root, s) for s in subdirs] + [pin_root]:
        try:
            os.rmdir(d)
        except OSError:
            pass


class Syncer(object):
    """Applies bpf_map's actions, holding the map open between them."""

    def __init__(self, name, pin_root):
        self.name, self.pin_root = name, pin_root
        self.map = None

    def close(self):
        if self.map is not None:
            self.map.close()
            self.map = None

    def _open(self):
        if self.map is None:
            self.map = PinnedMap.open(self.name, self.pin_root)
            if self.map is None:
                raise BpfMapError('%s: not pinned' % MAPS[self.name].path(self.pin_root))
        return self.map

    def apply(self, action):
        kind = action['action']
        if kind == 'create_map':
            self.close()
            self.map = PinnedMap.create(self.name, self.pin_root)
        elif kind in ('add', 'change'):
            self._open().update(*encode(self.name, action['entry']))
        elif kind == 'remove':
            self._open().delete(encode(self.name, action['entry'])[0])
        elif kind == 'flush':
            self._open().flush()
        elif kind == 'unpin_map':
            self.close()
            unpin(MAPS[self.name].path(self.pin_root))
            remove_empty_dirs(self.pin_root)
        else:
            raise BpfMapError('unknown action %r' % kind)
