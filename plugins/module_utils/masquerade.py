# -*- coding: utf-8 -*-
# Copyright: podnet.fabric contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Masquerade: SNAT pod traffic that leaves the native-routing CIDR to the node IP, with nftables.

Ownership: podnet owns exactly one nftables table (``ip podnet`` by default) and nothing else in
the ruleset. The table is compared as a whole: the desired table and the realized one (read back
with libnftables' JSON output) are both normalized to plain dicts and lists, so "in sync" is an
exact equality and anything else in our table (a deleted rule, an extra element, a foreign rule
someone added to it) is drift that the next run repairs.

Apply is one nftables transaction: ``add table; delete table; add table, sets, chain, rule``. The
kernel commits a batch atomically, so there is never a moment without the rule and never a
half-written table; ``add table`` first makes the ``delete`` valid when the table does not exist yet.
Removal deletes our table and only our table.

The table holds:

- named interval sets ``pod_cidrs`` (this node's pod CIDRs) and ``exclude`` (destinations never
  masqueraded: the native-routing CIDR), and ``exclude_ifaces`` (output interfaces never
  masqueraded) when given. Named sets rather than anonymous ones: nft rewrites an anonymous set of
  one element into a plain prefix match and a /32 into an address, so what is read back would
  depend on the number of CIDRs; named sets read back exactly as written, and an operator can see
  them with ``nft list set ip podnet exclude``.
- a base chain ``postrouting`` (``type nat hook postrouting priority srcnat``, policy accept);
- one rule ``ip saddr @pod_cidrs ip daddr != @exclude [oifname != @exclude_ifaces] counter
  snat to <node IP>``. ``snat to`` the node IP rather than ``masquerade``: the address is the node's
  underlay IP, known and stable, and the rule does not depend on the egress device's primary address.
"""
from __future__ import absolute_import, division, print_function

__metaclass__ = type

import ipaddress
import json
import re
import socket
import traceback

try:
    import nftables
    HAS_NFTABLES = True
    NFTABLES_IMPORT_ERROR = None
except ImportError:
    nftables = None
    HAS_NFTABLES = False
    NFTABLES_IMPORT_ERROR = traceback.format_exc()

FAMILY = 'ip'
CHAIN = 'postrouting'
SRCNAT_PRIO = 100  # the 'srcnat' priority of the nat postrouting hook
SET_POD_CIDRS = 'pod_cidrs'
SET_EXCLUDE = 'exclude'
SET_EXCLUDE_IFACES = 'exclude_ifaces'
COMMENT = 'podnet: SNAT pod traffic leaving the native-routing CIDR'
PACKAGE_HINT = ('the libnftables Python binding: install the python3-nftables package (Debian, Ubuntu, '
                'Fedora; it is not on PyPI) and run the module with an interpreter that sees it (a venv '
                'made with --system-site-packages)')

# nft identifiers: a letter or underscore, then letters, digits, '_', '.', '/', '-'.
_NAME_RE = re.compile(r'^[A-Za-z_][A-Za-z0-9_./-]{0,63}$')
# Identity of the listing objects: these keys say where an object is, not what it is.
_LOCATION_KEYS = ('family', 'table', 'handle')


class MasqueradeError(Exception):
    """Bad input, or nftables refused a command; the message is meant for the user."""


# ---------------------------------------------------------------------------------------------
# Input: pure validation and canonical form
# ---------------------------------------------------------------------------------------------

def canonical_cidrs(field, values):
    """Sorted, collapsed IPv4 networks as 'a.b.c.d/n' strings; MasqueradeError naming `field`."""
    nets = []
    for v in values or []:
        text = str(v).strip()
        try:
            net = ipaddress.ip_network(text, strict=True)
        except ValueError as e:
            if '/' in text:
                try:
                    ipaddress.ip_network(text, strict=False)
                except ValueError:
                    raise MasqueradeError('%s: %r is not an IPv4 CIDR (%s)' % (field, v, e))
                raise MasqueradeError('%s: %r has host bits set (did you mean %s?)'
                                      % (field, v, ipaddress.ip_network(text, strict=False)))
            raise MasqueradeError('%s: %r is not an IPv4 CIDR (%s)' % (field, v, e))
        if net.version != 4:
            raise MasqueradeError('%s: %r is not an IPv4 CIDR (the podnet table is family ip)' % (field, v))
        nets.append(net)
    return [str(n) for n in sorted(ipaddress.collapse_addresses(nets))]


def canonical_address(field, value):
    try:
        addr = ipaddress.ip_address(str(value).strip())
    except ValueError:
        raise MasqueradeError('%s: %r is not an IPv4 address' % (field, value))
    if addr.version != 4:
        raise MasqueradeError('%s: %r is not an IPv4 address' % (field, value))
    if addr.is_unspecified or addr.is_multicast or addr.is_loopback or str(addr) == '255.255.255.255':
        raise MasqueradeError('%s: %s cannot be a source address for SNAT' % (field, addr))
    return str(addr)


def canonical_ifnames(field, values):
    out = set()
    for v in values or []:
        name = str(v)
        if not name or len(name) > 15 or '/' in name or any(c.isspace() for c in name) or '"' in name:
            raise MasqueradeError('%s: %r is not a valid interface name' % (field, v))
        out.add(name)
    return sorted(out)


def spec(params):
    """The desired configuration from module params (pure; MasqueradeError on bad input).

    params: state, table, pod_cidrs, exclude, node_ip, exclude_interfaces
    """
    table = params.get('table') or 'podnet'
    if not _NAME_RE.match(table):
        raise MasqueradeError('table: %r is not a valid nftables table name' % (table,))
    out = {'state': params.get('state') or 'present', 'table': table}
    if out['state'] == 'absent':
        return out
    pod_cidrs = canonical_cidrs('pod_cidrs', params.get('pod_cidrs'))
    if not pod_cidrs:
        raise MasqueradeError('pod_cidrs: give at least one pod CIDR of this node when state is present')
    exclude = canonical_cidrs('exclude', params.get('exclude'))
    if not exclude:
        raise MasqueradeError('exclude: give the native-routing CIDR (the destinations that are not '
                              'masqueraded); without it pod-to-pod traffic would be SNATed too')
    if params.get('node_ip') in (None, ''):
        raise MasqueradeError('node_ip: required when state is present (the address SNAT rewrites to)')
    out.update(pod_cidrs=pod_cidrs, exclude=exclude,
               node_ip=canonical_address('node_ip', params['node_ip']),
               exclude_interfaces=canonical_ifnames('exclude_interfaces', params.get('exclude_interfaces')))
    return out


# ---------------------------------------------------------------------------------------------
# The normalized table: desired and realized in one shape
# ---------------------------------------------------------------------------------------------

def _elem_key(e):
    """Sort order for set elements: IPv4 networks numerically, anything else by its JSON."""
    if isinstance(e, str):
        try:
            net = ipaddress.ip_network(e)
            return (0, int(net.network_address), net.prefixlen, '')
        except ValueError:
            pass
    return (1, 0, 0, json.dumps(e, sort_keys=True))


def _payload(field):
    return {'payload': {'protocol': 'ip', 'field': field}}


def desired_table(sp):
    """The normalized table for a spec(), or None when state is absent (pure)."""
    if sp['state'] == 'absent':
        return None
    sets = [
        {'name': SET_EXCLUDE, 'type': 'ipv4_addr', 'flags': ['interval'], 'elem': list(sp['exclude'])},
        {'name': SET_POD_CIDRS, 'type': 'ipv4_addr', 'flags': ['interval'], 'elem': list(sp['pod_cidrs'])},
    ]
    expr = [
        {'match': {'op': '==', 'left': _payload('saddr'), 'right': '@' + SET_POD_CIDRS}},
        {'match': {'op': '!=', 'left': _payload('daddr'), 'right': '@' + SET_EXCLUDE}},
    ]
    if sp['exclude_interfaces']:
        sets.append({'name': SET_EXCLUDE_IFACES, 'type': 'ifname', 'elem': list(sp['exclude_interfaces'])})
        expr.append({'match': {'op': '!=', 'left': {'meta': {'key': 'oifname'}}, 'right': '@' + SET_EXCLUDE_IFACES}})
    expr += [{'counter': None}, {'snat': {'addr': sp['node_ip']}}]
    for s in sets:
        s['elem'].sort(key=_elem_key)
    return {
        'family': FAMILY,
        'name': sp['table'],
        'sets': sorted(sets, key=lambda s: s['name']),
        'chains': [{'name': CHAIN, 'type': 'nat', 'hook': 'postrouting', 'prio': SRCNAT_PRIO, 'policy': 'accept'}],
        'rules': [{'chain': CHAIN, 'comment': COMMENT, 'expr': expr}],
        'other': [],
    }


def _strip(obj):
    return dict((k, v) for k, v in obj.items() if k not in _LOCATION_KEYS)


def _norm_value(v):
    """A set element / match value from nft JSON as a plain string where it is an IPv4 network."""
    if isinstance(v, dict) and 'prefix' in v and isinstance(v['prefix'], dict):
        return '%s/%s' % (v['prefix'].get('addr'), v['prefix'].get('len'))
    if isinstance(v, str):
        try:
            addr = ipaddress.ip_address(v)
            if addr.version == 4:
                return '%s/32' % addr
        except ValueError:
            pass
    return v


def _norm_elems(elems):
    out = []
    for e in elems or []:
        if isinstance(e, dict) and 'range' in e and isinstance(e['range'], list) and len(e['range']) == 2:
            try:
                lo, hi = (ipaddress.IPv4Address(x) for x in e['range'])
                out.extend(str(n) for n in ipaddress.summarize_address_range(lo, hi))
                continue
            except (ValueError, TypeError):
                pass
        if isinstance(e, dict) and 'elem' in e and isinstance(e['elem'], dict):
            # An element with options (timeout, counter, comment...): keep them, they are state.
            inner = dict(e['elem'])
            inner['val'] = _norm_value(inner.get('val'))
            out.append({'elem': inner})
            continue
        out.append(_norm_value(e))
    return sorted(out, key=_elem_key)


def _norm_expr(obj):
    """A rule's expressions without run-time state (counter values)."""
    if isinstance(obj, list):
        return [_norm_expr(x) for x in obj]
    if isinstance(obj, dict):
        out = {}
        for k, v in obj.items():
            if k == 'counter' and (v is None or (isinstance(v, dict) and set(v) <= {'packets', 'bytes'})):
                out[k] = None
            else:
                out[k] = _norm_expr(v)
        return out
    return obj


def normalize(listing, family, name):
    """The normalized table from a libnftables JSON listing (``list table``), or None (pure).

    listing: the decoded JSON ({'nftables': [...]} or the list itself). Objects of other tables
    are ignored, so a whole-ruleset listing works too.
    """
    objs = listing.get('nftables', []) if isinstance(listing, dict) else (listing or [])
    table = None
    sets, chains, rules, other = [], [], [], []
    for o in objs:
        if not isinstance(o, dict) or len(o) != 1:
            continue
        kind, body = list(o.items())[0]
        if kind == 'metainfo' or not isinstance(body, dict) or body.get('family') != family:
            continue
        if kind == 'table':
            if body.get('name') == name:
                table = _strip(body)
                table.pop('name', None)
            continue
        if body.get('table') != name:
            continue
        if kind == 'set':
            s = _strip(body)
            s['elem'] = _norm_elems(s.get('elem'))
            if 'flags' in s:
                s['flags'] = sorted(s['flags']) if isinstance(s['flags'], list) else [s['flags']]
            sets.append(s)
        elif kind == 'chain':
            chains.append(_strip(body))
        elif kind == 'rule':
            r = _strip(body)
            r['expr'] = _norm_expr(r.get('expr', []))
            rules.append(r)
        else:
            other.append({kind: _norm_expr(_strip(body))})
    if table is None:
        return None
    out = {'family': family, 'name': name}
    out.update(table)  # table flags (dormant...) are state too
    chain_order = dict((c['name'], i) for i, c in enumerate(sorted(chains, key=lambda c: c['name'])))
    out.update(
        sets=sorted(sets, key=lambda s: s['name']),
        chains=sorted(chains, key=lambda c: c['name']),
        # Rule order within a chain matters and is kept; chains are ordered by name.
        rules=sorted(rules, key=lambda r: chain_order.get(r.get('chain'), -1)),
        other=sorted(other, key=lambda x: json.dumps(x, sort_keys=True)),
    )
    return out


def differences(desired, realized):
    """What differs between two normalized tables, as short labels (for the plan)."""
    if realized is None:
        return ['table missing']
    out = []
    for key in sorted(set(desired) | set(realized)):
        if key in ('sets', 'chains'):
            d = dict((x['name'], x) for x in desired.get(key, []))
            r = dict((x['name'], x) for x in realized.get(key, []))
            for n in sorted(set(d) | set(r)):
                if d.get(n) != r.get(n):
                    out.append('%s %s %s' % (key[:-1], n, 'missing' if n not in r else
                                             'unexpected' if n not in d else 'differs'))
        elif desired.get(key) != realized.get(key):
            out.append(key)
    return out


# ---------------------------------------------------------------------------------------------
# Plan, projection, readable text
# ---------------------------------------------------------------------------------------------

def plan(desired, realized):
    """Pure: actions turning the realized table into the desired one (both normalized or None)."""
    if desired is None:
        if realized is None:
            return []
        return [{'action': 'delete_table', 'family': realized['family'], 'table': realized['name']}]
    if realized == desired:
        return []
    return [{
        'action': 'create_table' if realized is None else 'replace_table',
        'family': desired['family'],
        'table': desired['name'],
        'differences': differences(desired, realized),
        'rules': render(desired)['rules'],
    }]


def project(desired, realized, actions):
    """Pure: the table after `actions` (the check-mode 'after')."""
    return desired if actions else realized


def _render_value(v):
    if isinstance(v, dict) and 'set' in v:
        return '{ %s }' % ', '.join(_render_value(_norm_value(x)) for x in v['set'])
    if isinstance(v, dict) and 'prefix' in v:
        return _norm_value(v)
    if isinstance(v, str):
        return v[:-3] if v.endswith('/32') else v
    return json.dumps(v, sort_keys=True)


def _render_expr(e):
    if not isinstance(e, dict) or len(e) != 1:
        return json.dumps(e, sort_keys=True)
    kind, body = list(e.items())[0]
    if kind == 'match' and isinstance(body, dict):
        left = body.get('left')
        if isinstance(left, dict) and 'payload' in left:
            lhs = '%s %s' % (left['payload'].get('protocol'), left['payload'].get('field'))
        elif isinstance(left, dict) and 'meta' in left:
            lhs = left['meta'].get('key')
        else:
            lhs = json.dumps(left, sort_keys=True)
        op = body.get('op')
        return '%s %s%s' % (lhs, '' if op in ('==', 'in') else op + ' ', _render_value(body.get('right')))
    if kind == 'counter' and body is None:
        return 'counter'
    if kind == 'snat' and isinstance(body, dict) and set(body) == {'addr'}:
        return 'snat to %s' % body['addr']
    if kind in ('masquerade', 'accept', 'drop', 'return') and body is None:
        return kind
    return json.dumps(e, sort_keys=True)


def render(table):
    """Readable text of a normalized table, one line per object (for plans and diffs)."""
    if table is None:
        return {'table': None, 'sets': [], 'chains': [], 'rules': []}
    sets = []
    for s in table.get('sets', []):
        flags = ' flags %s;' % ','.join(s['flags']) if s.get('flags') else ''
        sets.append('set %s { type %s;%s elements = { %s } }' % (
            s['name'], s.get('type'), flags, ', '.join(_render_value(x) for x in s.get('elem', []))))
    chains = []
    for c in table.get('chains', []):
        if 'hook' in c:
            chains.append('chain %s { type %s hook %s priority %s; policy %s; }' % (
                c['name'], c.get('type'), c['hook'], c.get('prio'), c.get('policy')))
        else:
            chains.append('chain %s' % c['name'])
    rules = []
    for r in table.get('rules', []):
        text = ' '.join(_render_expr(e) for e in r.get('expr', []))
        if r.get('comment'):
            text += ' comment "%s"' % r['comment']
        rules.append('%s: %s' % (r.get('chain'), text))
    return {'table': '%s %s' % (table['family'], table['name']), 'sets': sets, 'chains': chains, 'rules': rules}


# ---------------------------------------------------------------------------------------------
# nft JSON commands (pure) and the libnftables side (read/apply)
# ---------------------------------------------------------------------------------------------

def _elem_out(e):
    """A normalized element back to nft JSON: a prefix, or a bare address for a /32."""
    if isinstance(e, str) and '/' in e:
        addr, plen = e.split('/', 1)
        if plen == '32':
            return addr
        return {'prefix': {'addr': addr, 'len': int(plen)}}
    return e


def batch(actions, desired):
    """Pure: the one nftables JSON transaction carrying out `actions`."""
    cmds = []
    for a in actions:
        ref = {'family': a['family'], 'name': a['table']}
        # 'add table' first: it makes the 'delete' valid when the table is not there.
        cmds += [{'add': {'table': dict(ref)}}, {'delete': {'table': dict(ref)}}]
        if a['action'] == 'delete_table':
            continue
        cmds.append({'add': {'table': dict(ref)}})
        loc = {'family': desired['family'], 'table': desired['name']}
        for s in desired['sets']:
            body = dict(loc, **dict((k, v) for k, v in s.items() if k != 'elem'))
            if s['elem']:
                body['elem'] = [_elem_out(e) for e in s['elem']]
            cmds.append({'add': {'set': body}})
        for c in desired['chains']:
            cmds.append({'add': {'chain': dict(loc, **c)}})
        for r in desired['rules']:
            cmds.append({'add': {'rule': dict(loc, **r)}})
    return {'nftables': cmds}


def new_context(dry_run=False):
    """A libnftables context with JSON, stateless output (no counter values in listings)."""
    if not HAS_NFTABLES:
        raise MasqueradeError('the Python module nftables is missing: ' + PACKAGE_HINT)
    try:
        nft = nftables.Nftables()
    except OSError as e:  # the binding is there but libnftables.so.1 is not
        raise MasqueradeError('libnftables could not be loaded (%s): install the nftables and '
                              'python3-nftables packages' % e)
    nft.set_json_output(True)
    nft.set_stateless_output(True)
    nft.set_handle_output(False)
    if dry_run:
        nft.set_dry_run(True)
    return nft


def _cmd(nft, cmd):
    rc, out, err = nft.json_cmd(cmd)
    if rc != 0:
        raise MasqueradeError('nftables refused %s: %s' % (json.dumps(cmd, sort_keys=True), (err or '').strip()))
    return out


def read(nft, family, name):
    """The realized table, normalized, or None when it does not exist."""
    tables = _cmd(nft, {'nftables': [{'list': {'tables': {'family': family}}}]})
    names = [o['table']['name'] for o in (tables or {}).get('nftables', []) if 'table' in o]
    if name not in names:
        return None
    return normalize(_cmd(nft, {'nftables': [{'list': {'table': {'family': family, 'name': name}}}]}),
                     family, name)


def apply(nft, actions, desired):
    """Carry out the plan in one transaction (MasqueradeError if nftables refuses it)."""
    if actions:
        _cmd(nft, batch(actions, desired))


def is_local_address(address):
    """Whether `address` is one of this host's (this network namespace's) addresses."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        s.bind((address, 0))
        return True
    except OSError:
        return False
    finally:
        s.close()
