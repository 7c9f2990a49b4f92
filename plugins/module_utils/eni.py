# -*- coding: utf-8 -*-
# Copyright: podnet.fabric contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""ENI routing on the node (DESIGN.md sections 4, 5): source-based routing of pod IPs that are
secondary IPs of the node's ENIs, as Cilium's ENI datapath does it.

For every ENI the node uses for pods (device number N, interface found by its MAC):

- the interface has the ENI MTU and is up;
- table ``10 + N`` holds ``gw/32 dev ethN scope link`` and ``default via gw dev ethN``, gw being
  the first host of the ENI's subnet (the VPC router's address, as on AWS);
- per pod IP in use, two rules: priority 20 ``to podIP lookup main`` (traffic to a local pod is
  delivered through the main table's endpoint route, whichever ENI it came in on) and priority 111
  ``from podIP lookup 10+N`` (a pod's egress leaves through the ENI that owns its IP: the VPC
  drops a packet whose source IP is not one of the sending ENI's).

Ownership: our rules and routes carry protocol ``netlink.RTPROT_PODNET`` (201). Rules are ours when
they carry it and have priority 20 or 111; routes when they carry it in a table from 10 to
10 + MAX_DEVICE_NUMBER (210). A rule of the same priority without our protocol (someone else's) is never
touched. Stale rules (a released IP, an IP that moved to another ENI) are removed by exactly their
identity, so a reused IP never loses the rules just planned for its new endpoint.

The ENI interfaces themselves are the cloud's: we set MTU and up, never create or delete them.
"""
from __future__ import absolute_import, division, print_function

__metaclass__ = type

import ipaddress
import json
import re
import time

from ansible_collections.podnet.fabric.plugins.module_utils import netlink
from ansible_collections.podnet.fabric.plugins.module_utils.netlink import IFF_UP, RTPROT_PODNET

TABLE_BASE = 10
# The largest EC2 instances have well under 200 interfaces; the cap keeps tables 10+N below the
# kernel's reserved tables (253 default, 254 main, 255 local).
MAX_DEVICE_NUMBER = 200
PRIO_TO = 20
PRIO_FROM = 111
MAIN_TABLE = 254
RT_SCOPE_LINK = 253
RT_SCOPE_UNIVERSE = 0
DEFAULT_METADATA_URL = 'http://169.254.169.254/'
DEFAULT_MTU = 9001
MAC_RE = re.compile(r'^[0-9a-f]{2}(:[0-9a-f]{2}){5}$')


class EniError(Exception):
    """Bad input or an ENI the node cannot use; the message names the node and the key at fault."""


def table_of(device_number):
    return TABLE_BASE + int(device_number)


def owned_table(table):
    return TABLE_BASE <= table <= TABLE_BASE + MAX_DEVICE_NUMBER


def owned_rule_priority(priority):
    return priority in (PRIO_TO, PRIO_FROM)


def gateway(cidr):
    """The VPC router of a subnet: its first host (AWS reserves .1 of every subnet for it)."""
    net = ipaddress.ip_network(cidr, strict=False)
    return str(net.network_address + 1)


def _mac(value, where):
    mac = str(value or '').strip().lower()
    if not MAC_RE.match(mac):
        raise EniError('%s: %r is not a MAC address' % (where, value))
    return mac


def normalize_enis(enis, node):
    """The ENIs the node uses for pods (eni_allocate's ``eni_nodes[node].enis``), normalized:
    [{id, mac, device_index, subnet_cidr, ips: [a.b.c.d], prefixes: [cidr]}], sorted by device index."""
    out, seen = [], {}
    for i, e in enumerate(enis or ()):
        where = '%s: enis[%d]' % (node, i)
        if not isinstance(e, dict) or not e.get('id'):
            raise EniError('%s: an ENI needs an id' % where)
        where = '%s: enis[%d] (%s)' % (node, i, e['id'])
        mac = _mac(e.get('mac'), where + '.mac')
        if mac in seen:
            raise EniError('%s.mac: %s is also the MAC of %s' % (where, mac, seen[mac]))
        seen[mac] = e['id']
        try:
            ips = sorted(set(str(ipaddress.IPv4Address(str(ip).split('/', maxsplit=1)[0])) for ip in e.get('ips') or ()),
                         key=ipaddress.IPv4Address)
            prefixes = sorted(set(str(ipaddress.IPv4Network(str(p), strict=False)) for p in e.get('prefixes') or ()))
            subnet = str(ipaddress.IPv4Network(str(e['subnet_cidr']), strict=False)) if e.get('subnet_cidr') else None
        except ValueError as err:
            raise EniError('%s: %s' % (where, err))
        index = e.get('device_index')
        out.append({'id': str(e['id']), 'mac': mac, 'device_index': None if index is None else int(index),
                    'subnet_cidr': subnet, 'ips': ips, 'prefixes': prefixes})
    return sorted(out, key=lambda e: (e['device_index'] is None, e['device_index'] or 0, e['id']))


def owner_of(enis, pod_ips, node):
    """{pod IP: ENI id}: each pod IP belongs to the ENI whose secondary IPs or prefixes hold it.
    An IP that no ENI holds is an error naming it (the pod would send from an address its ENI does
    not have, and the VPC would drop it)."""
    out, missing = {}, []
    for text in pod_ips or ():
        try:
            ip = ipaddress.IPv4Address(str(text).split('/', maxsplit=1)[0])
        except ValueError:
            raise EniError('%s: pod_ips: %r is not an IPv4 address' % (node, text))
        owner = None
        for e in enis:
            if str(ip) in e['ips'] or any(ip in ipaddress.IPv4Network(p) for p in e['prefixes']):
                owner = e['id']
                break
        if owner is None:
            missing.append(str(ip))
        else:
            out[str(ip)] = owner
    if missing:
        raise EniError('%s: pod_ips: %s %s not a secondary IP or prefix of any of the node\'s ENIs (%s)' % (
            node, ', '.join(sorted(set(missing), key=ipaddress.IPv4Address)), 'is' if len(set(missing)) == 1 else 'are',
            ', '.join(e['id'] for e in enis) or 'none'))
    return out


def desired_state(enis, interfaces, pod_ips, mtu, node, state='present'):
    """The links, routes and rules the node should have.

    enis: normalize_enis(...). interfaces: {mac: {'device_number': N, 'subnet_cidr': cidr,
    'link': kernel link name or None}} (instance metadata + the kernel). Returns
    {'links': {name: {mac, mtu, up}}, 'routes': [...], 'rules': [...], 'pending': [{id, mac}]}:
    pending lists the ENIs whose interface is not in the kernel yet (check mode plans them as
    awaited; outside check mode the module waits for them before planning).
    """
    desired = {'links': {}, 'routes': [], 'rules': [], 'pending': []}
    if state != 'present':
        return desired
    owners = owner_of(enis, pod_ips, node)
    table = {}
    seen_numbers = {}
    for e in enis:
        facts = interfaces.get(e['mac']) or {}
        number = facts.get('device_number', e['device_index'])
        subnet = facts.get('subnet_cidr') or e['subnet_cidr']
        if number is None:
            raise EniError('%s: ENI %s (%s): no device number in the instance metadata or the ENI' % (node, e['id'], e['mac']))
        if not 0 <= int(number) <= MAX_DEVICE_NUMBER:
            raise EniError('%s: ENI %s: device number %s is out of range 0..%d' % (node, e['id'], number, MAX_DEVICE_NUMBER))
        if int(number) in seen_numbers:
            raise EniError('%s: ENI %s and %s both have device number %s' % (node, seen_numbers[int(number)], e['id'], number))
        seen_numbers[int(number)] = e['id']
        if not subnet:
            raise EniError('%s: ENI %s (%s): no subnet CIDR in the instance metadata or the ENI' % (node, e['id'], e['mac']))
        t = table_of(number)
        table[e['id']] = t
        link = facts.get('link')
        if link is None:
            desired['pending'].append({'id': e['id'], 'mac': e['mac']})
            link = '<%s>' % e['mac']   # stands for the interface until it appears (check mode)
        desired['links'][link] = {'mac': e['mac'], 'mtu': int(mtu), 'up': True}
        gw = gateway(subnet)
        desired['routes'].append({'table': t, 'dst': '%s/32' % gw, 'gateway': None, 'dev': link, 'scope': 'link'})
        desired['routes'].append({'table': t, 'dst': 'default', 'gateway': gw, 'dev': link, 'scope': 'universe'})
    for ip, eni_id in owners.items():
        desired['rules'].append({'priority': PRIO_TO, 'dst': '%s/32' % ip, 'src': None, 'table': MAIN_TABLE})
        desired['rules'].append({'priority': PRIO_FROM, 'dst': None, 'src': '%s/32' % ip, 'table': table[eni_id]})
    desired['routes'] = _sorted(desired['routes'])
    desired['rules'] = _sorted(desired['rules'])
    return desired


def _key(obj):
    return tuple(sorted((k, str(v)) for k, v in obj.items()))


def _sorted(items):
    return sorted(items, key=_key)


def plan(desired, realized):
    """Pure: the actions turning realized into desired.

    realized: {'links': {name: {mac, mtu, up}} (the ENI interfaces found by MAC), 'routes': [...],
    'rules': [...]} -- only what is ours. Deletes come before adds, so a rule that moves to another
    table (a reused IP on another ENI) is removed by its old identity before the new one is added.
    """
    actions = []
    for e in desired.get('pending') or ():
        actions.append({'action': 'await_link', 'id': e['id'], 'mac': e['mac']})
    have_links = realized.get('links') or {}
    for name in sorted(desired['links']):
        want = desired['links'][name]
        have = have_links.get(name)
        if have is None:
            continue   # pending: awaited above
        change = {}
        if have.get('mtu') != want['mtu']:
            change['mtu'] = want['mtu']
        if not have.get('up'):
            change['up'] = True
        if change:
            actions.append(dict(change, action='set_link', name=name, mac=want['mac']))
    for key, add, delete in (('rules', 'rule_add', 'rule_del'), ('routes', 'route_add', 'route_del')):
        have = realized.get(key) or []
        have_keys = set(_key(o) for o in have)
        want_keys = set(_key(o) for o in desired[key])
        for o in have:
            if _key(o) not in want_keys:
                actions.append(dict(o, action=delete))
    for key, add in (('routes', 'route_add'), ('rules', 'rule_add')):
        have_keys = set(_key(o) for o in realized.get(key) or [])
        for o in desired[key]:
            if _key(o) not in have_keys:
                actions.append(dict(o, action=add))
    return actions


def project(desired, realized, actions):
    """Pure: the realized view after actions (check mode's 'after')."""
    if not actions:
        return realized
    return {'links': dict((n, dict(v)) for n, v in desired['links'].items()),
            'routes': list(desired['routes']), 'rules': list(desired['rules'])}


def summary(actions):
    """One line per action, as ``ip`` would show the object."""
    out = []
    for a in actions:
        kind = a['action']
        if kind == 'await_link':
            out.append('await the interface of %s (%s)' % (a['id'], a['mac']))
        elif kind == 'set_link':
            fields = ', '.join('%s=%s' % (k, a[k]) for k in ('mtu', 'up') if k in a)
            out.append('set %s (%s) %s' % (a['name'], a['mac'], fields))
        elif kind.startswith('rule'):
            sel = ('to %s' % a['dst']) if a.get('dst') else ('from %s' % a['src'])
            out.append('%s priority %d %s lookup %s' % (kind, a['priority'], sel,
                                                        'main' if a['table'] == MAIN_TABLE else a['table']))
        else:
            via = (' via %s' % a['gateway']) if a.get('gateway') else ''
            scope = ' scope link' if a.get('scope') == 'link' else ''
            out.append('%s %s%s dev %s%s table %d' % (kind, a['dst'], via, a['dev'], scope, a['table']))
    return out


# --- instance metadata ------------------------------------------------------------------------------

def metadata_paths(mac):
    """The metadata paths of one interface the module reads (as AWS serves them)."""
    base = 'latest/meta-data/network/interfaces/macs/%s/' % mac
    return {'device_number': base + 'device-number', 'subnet_cidr': base + 'subnet-ipv4-cidr-block'}


def parse_metadata(mac, values, node):
    """Pure: {'device_number', 'subnet_cidr'} from the texts fetched at metadata_paths(mac)
    (None where the metadata has no such entry yet)."""
    out = {}
    number = values.get('device_number')
    if number is not None:
        number = number.strip()
        if not number.isdigit():
            raise EniError('%s: instance metadata: device-number of %s is %r, not a number' % (node, mac, number))
        out['device_number'] = int(number)
    subnet = values.get('subnet_cidr')
    if subnet is not None:
        try:
            out['subnet_cidr'] = str(ipaddress.IPv4Network(subnet.strip(), strict=False))
        except ValueError:
            raise EniError('%s: instance metadata: subnet-ipv4-cidr-block of %s is %r, not a CIDR' % (node, mac, subnet))
    return out


class Metadata(object):
    """An instance metadata client (IMDSv2 with a session token, falling back to IMDSv1).

    Proxies are ignored on purpose: the metadata service is link-local to the instance, and a proxy
    from the environment must never receive (or answer) these requests.
    """

    TOKEN_TTL = '21600'

    def __init__(self, url, timeout=2.0):
        from urllib import request as urlrequest

        self.url = url if url.endswith('/') else url + '/'
        self.timeout = timeout
        self._request = urlrequest
        self._opener = urlrequest.build_opener(urlrequest.ProxyHandler({}))
        self._token = None
        self._token_tried = False

    def _open(self, path, method='GET', headers=None):
        req = self._request.Request(self.url + path, method=method, headers=headers or {})
        return self._opener.open(req, timeout=self.timeout)

    def _headers(self):
        if not self._token_tried:
            self._token_tried = True
            try:
                with self._open('latest/api/token', 'PUT', {'X-aws-ec2-metadata-token-ttl-seconds': self.TOKEN_TTL}) as r:
                    self._token = r.read().decode('utf-8').strip()
            except Exception:   # IMDSv1 only (or no token endpoint): plain GETs
                self._token = None
        return {'X-aws-ec2-metadata-token': self._token} if self._token else {}

    def get(self, path):
        """The text at path, or None when the service answers 404 (not there, yet)."""
        from urllib.error import HTTPError

        try:
            with self._open(path, headers=self._headers()) as r:
                return r.read().decode('utf-8')
        except HTTPError as e:
            if e.code == 404:
                return None
            raise EniError('instance metadata %s%s: HTTP %d' % (self.url, path, e.code))
        except (IOError, OSError) as e:
            raise EniError('instance metadata %s%s: %s' % (self.url, path, getattr(e, 'reason', e)))

    def interface(self, mac, node):
        paths = metadata_paths(mac)
        return parse_metadata(mac, dict((k, self.get(p)) for k, p in paths.items()), node)


# --- netlink side (pyroute2): read what is ours, apply a plan ----------------------------------------

def links_by_mac(ipr):
    """{mac: link name} of the node's links (the first one for a MAC a bridge or VLAN shares: the
    lowest index, which is the physical interface the others were stacked on)."""
    out = {}
    for link in sorted(ipr.get_links(), key=lambda m: m['index']):
        mac = (link.get_attr('IFLA_ADDRESS') or '').lower()
        if mac and mac not in out:
            out[mac] = link.get_attr('IFLA_IFNAME')
    return out


def _rule_view(r):
    table = r.get_attr('FRA_TABLE') or r['table']
    dst, src = r.get_attr('FRA_DST'), r.get_attr('FRA_SRC')
    return {'priority': r.get_attr('FRA_PRIORITY') or 0,
            'dst': '%s/%d' % (dst, r['dst_len']) if dst else None,
            'src': '%s/%d' % (src, r['src_len']) if src else None,
            'table': table}


def owned_rule(r):
    return r.get_attr('FRA_PROTOCOL') == RTPROT_PODNET and owned_rule_priority(r.get_attr('FRA_PRIORITY') or 0)


def _route_view(r, names):
    dst = r.get_attr('RTA_DST')
    return {'table': r.get_attr('RTA_TABLE') or r['table'],
            'dst': '%s/%d' % (dst, r['dst_len']) if dst else 'default',
            'gateway': r.get_attr('RTA_GATEWAY'),
            'dev': names.get(r.get_attr('RTA_OIF')),
            'scope': 'link' if r['scope'] == RT_SCOPE_LINK else 'universe'}


def owned_route(r):
    return r['proto'] == RTPROT_PODNET and owned_table(r.get_attr('RTA_TABLE') or r['table'])


def read(ipr, macs):
    """The realized state in the plan's shape: the links holding `macs`, our rules and routes."""
    by_mac = links_by_mac(ipr)
    links = {}
    for mac in macs:
        name = by_mac.get(mac)
        if name is None:
            continue
        link = ipr.get_links(ipr.link_lookup(ifname=name)[0])[0]
        links[name] = {'mac': mac, 'mtu': link.get_attr('IFLA_MTU'), 'up': bool(link['flags'] & IFF_UP)}
    names = dict((link['index'], link.get_attr('IFLA_IFNAME')) for link in ipr.get_links())
    rules = [_rule_view(r) for r in ipr.get_rules(family=netlink.AF_INET) if owned_rule(r)]
    routes = [_route_view(r, names) for r in ipr.get_routes(family=netlink.AF_INET, proto=RTPROT_PODNET)
              if owned_route(r)]
    return {'links': links, 'routes': _sorted(routes), 'rules': _sorted(rules)}


def wait_for_interfaces(enis, lookup, timeout, node, sleep=time.sleep, clock=time.time):
    """Wait (up to timeout s) until every ENI has its interface: lookup(eni) -> facts with 'link' or
    None. Returns {mac: facts}. An ENI still without its interface is an error naming it."""
    deadline = clock() + timeout
    while True:
        found, missing = {}, []
        for e in enis:
            facts = lookup(e)
            if facts and facts.get('link'):
                found[e['mac']] = facts
            else:
                missing.append(e)
        if not missing or clock() >= deadline:
            break
        sleep(0.25)
    if missing:
        raise EniError('%s: no interface appeared within %ss for %s (the ENI is attached but the kernel has no '
                       'link with its MAC%s)' % (
                           node, timeout, ', '.join('%s (%s)' % (e['id'], e['mac']) for e in missing),
                           ', nor the instance metadata its device number' if any(
                               'device_number' not in (lookup(e) or {}) for e in missing) else ''))
    return found


def apply_action(ipr, a):
    """Carry out one plan action. Deletes remove exactly the kernel object read() showed."""
    kind = a['action']
    if kind == 'await_link':   # check mode only plans it; outside it the module waited already
        return
    if kind == 'set_link':
        idx = ipr.link_lookup(ifname=a['name'])
        change = {}
        if 'mtu' in a:
            change['mtu'] = a['mtu']
        if a.get('up'):
            change['state'] = 'up'
        ipr.link('set', index=idx[0], **change)
    elif kind == 'route_add':
        idx = ipr.link_lookup(ifname=a['dev'])[0]
        if a['dst'] == 'default':
            ipr.route('replace', table=a['table'], dst='0.0.0.0', dst_len=0, gateway=a['gateway'], oif=idx,
                      proto=RTPROT_PODNET)
        else:
            ip, plen = a['dst'].split('/')
            ipr.route('replace', table=a['table'], dst=ip, dst_len=int(plen), oif=idx,
                      scope=RT_SCOPE_LINK if a['scope'] == 'link' else RT_SCOPE_UNIVERSE, proto=RTPROT_PODNET)
    elif kind == 'route_del':
        names = dict((link['index'], link.get_attr('IFLA_IFNAME')) for link in ipr.get_links())
        target = dict((k, v) for k, v in a.items() if k != 'action')
        netlink.delete_matching(ipr, 'route', lambda r: owned_route(r) and _route_view(r, names) == target,
                                family=netlink.AF_INET, table=a['table'], proto=RTPROT_PODNET)
    elif kind == 'rule_add':
        spec = {'priority': a['priority'], 'table': a['table'], 'protocol': RTPROT_PODNET, 'family': netlink.AF_INET}
        for k in ('dst', 'src'):
            if a.get(k):
                ip, plen = a[k].split('/')
                spec[k] = ip
                spec[k + '_len'] = int(plen)
        ipr.rule('add', **spec)
    elif kind == 'rule_del':
        target = dict((k, v) for k, v in a.items() if k != 'action')
        netlink.delete_matching(ipr, 'rule', lambda r: owned_rule(r) and _rule_view(r) == target,
                                family=netlink.AF_INET)
    else:  # pragma: no cover - plan() only emits the kinds above
        raise EniError('unknown eni action %r' % kind)


def view(realized):
    """The diff's view: a JSON round trip keeps it plain."""
    return json.loads(json.dumps(realized, sort_keys=True))
