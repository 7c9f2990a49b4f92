# -*- coding: utf-8 -*-
# Copyright: podnet.fabric contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""podnet_policy compiled into per-endpoint policy entries (DESIGN.md 5 and 7; the datapath
contract's symbolic policy entries), and the verdict a packet gets.

Semantics (Cilium's, for a cluster-wide policy):
- A rule applies to the endpoints whose identity labels its ``endpoint_selector`` matches (every
  key=value in it; ``{}`` selects every endpoint, the health endpoint included).
- Once a rule that selects an endpoint has ``ingress`` or ``ingress_deny`` items, the endpoint's
  ingress is default-deny (the same for egress); an endpoint no rule selects allows everything.
- An item allows (or, in ``*_deny``, denies) its peers AND its ports: peers are the union of
  ``*_endpoints`` (label selectors), ``*_entities`` and ``*_cidrs``; ports the union of ``to_ports``
  and ``icmps``. No ports: every protocol and port. No peers but ports: every peer. Neither
  (``ingress: [{}]``): nothing, but the rule still makes the direction default-deny.
- Deny beats allow. The rule reported is the lowest-numbered one (1-based) of the winning kind.
- Entities: host 1, remote-node 6, health 4, world 2 plus every CIDR identity, cluster = every
  cluster-local identity plus host, remote-node and health, all = the wildcard identity 0.
- A CIDR selects the CIDR identities of the CIDRs inside it (itself included): an address gets
  the identity of the longest CIDR holding it (the ipcache), and endpoints and nodes keep their
  own identities, so CIDR rules never match them (Cilium's default). ``0.0.0.0/0`` and ``::/0``
  are the entity world.

Compiled entries: per subject identity, direction and peer identity (0 = any), entries that a
longest-prefix lookup already resolves right: a protocol/port entry carries the verdict of every
atom that covers it, the ``any`` protocol ones included (a narrower allow inside a wider deny is
emitted as deny), and port ranges of one protocol never overlap. The datapath looks up the peer's
identity and 0; a deny from either wins, else an allow; the lower rule number is reported when
both give the same verdict (the contract), which makes ``verdict`` (the datapath's walk over the
compiled entries) and ``model_verdict`` (the rules read directly) agree exactly.

Cost: selectors are matched through an index of label -> identities, once per distinct selector;
entries are compiled once per subject identity that has an endpoint (endpoints sharing an identity
share the work), so the time grows with the entries produced, not with rules x endpoints x
identities.
"""
from __future__ import absolute_import, division, print_function

__metaclass__ = type

import heapq
import ipaddress

from ansible_collections.podnet.fabric.plugins.plugin_utils import identity as ident

DIRECTIONS = ('ingress', 'egress')
ALLOW, DENY = 'allow', 'deny'
DEFAULT_DENY = 'default deny'
ANY = 'any'
PORT_PROTOCOLS = ('tcp', 'udp')
ICMP = {4: 'icmp', 6: 'icmpv6'}
_FULL = (0, 0xFFFF)
_ENTITY_FIXED = {'host': (ident.HOST,), 'remote-node': (ident.REMOTE_NODE,), 'health': (ident.HEALTH,)}


def _combine(atoms):
    """(verdict, rule) of the atoms that match: deny beats allow, the lowest rule of the kind."""
    deny = allow = None
    for _lo, _hi, verdict, rule in atoms:
        if verdict == DENY:
            deny = rule if deny is None else min(deny, rule)
        else:
            allow = rule if allow is None else min(allow, rule)
    if deny is not None:
        return DENY, deny
    return (ALLOW, allow) if allow is not None else None


class Peers(object):
    """The identities a policy is compiled against, and what selectors, entities, CIDRs and
    addresses resolve to among them.

    local: {identity: labels dict} of the cluster-local identities (the ledger's table); cidrs:
    {identity: cidr} of the CIDR identities. The health endpoint (identity 4) is an endpoint
    with no labels: only the empty selector selects it."""

    def __init__(self, local, cidrs):
        self.local = dict(local)
        self.cidrs = dict(cidrs)
        self._cidr_nets = sorted(((ipaddress.ip_network(c), i) for i, c in self.cidrs.items()),
                                 key=lambda p: (p[0].version, p[0].prefixlen))
        self._index = {}
        for i, labels in self.local.items():
            for k, v in labels.items():
                self._index.setdefault((k, v), set()).add(i)
        self._all_endpoints = frozenset(self.local) | frozenset([ident.HEALTH])
        self._selected = {}
        self._cidr_peers = {}
        self._addresses = {}
        world = frozenset([ident.WORLD]) | frozenset(self.cidrs)
        self._entities = dict((name, frozenset(ids)) for name, ids in _ENTITY_FIXED.items())
        self._entities.update(world=world, all=frozenset([0]),
                              cluster=frozenset(self.local) | frozenset([ident.HOST, ident.REMOTE_NODE, ident.HEALTH]))

    def select(self, selector):
        """The endpoint identities a label selector matches (through the label index)."""
        key = frozenset(selector.items())
        found = self._selected.get(key)
        if found is None:
            if not key:
                found = self._all_endpoints
            else:
                sets = sorted((self._index.get(kv, frozenset()) for kv in key), key=len)
                found = frozenset(sets[0]).intersection(*sets[1:])
            self._selected[key] = found
        return found

    def entity(self, name):
        return self._entities[name]

    def cidr_peers(self, cidr):
        """The CIDR identities inside `cidr` (itself included); /0 is the entity world."""
        net = ipaddress.ip_network(cidr)
        if net.prefixlen == 0:
            return self._entities['world']
        found = self._cidr_peers.get(net)
        if found is None:
            found = self._cidr_peers[net] = frozenset(
                i for n, i in self._cidr_nets if n.version == net.version and n.subnet_of(net))
        return found

    def identity(self, peer):
        """An identity number, {'identity': n}, an entity name (host, world, ...), or an address
        (the identity of the longest CIDR identity holding it, as the ipcache gives it, else world)."""
        if isinstance(peer, int) and not isinstance(peer, bool):
            return peer
        if isinstance(peer, dict) and 'identity' in peer:
            return int(peer['identity'])
        text = str(peer)
        if text in ident.RESERVED:
            return ident.RESERVED[text]
        found = self._addresses.get(text)
        if found is None:
            net = ipaddress.ip_network(text, strict=False)
            found = ident.WORLD
            for n, i in self._cidr_nets:        # by prefix length: the last holding it is the longest
                if n.version == net.version and net.subnet_of(n):
                    found = i
            self._addresses[text] = found
        return found

    def is_endpoint(self, identity):
        return identity in self.local or identity == ident.HEALTH


class Compiled(object):
    """The compiled policy: per subject identity, enforcement per direction and folded entries."""

    def __init__(self, rules, peers):
        self.rules = list(rules or [])
        self.peers = peers
        self._items = []           # per rule: [(direction, peers, atoms, item number)]
        self._atoms = []           # per item number: its atoms
        self._enforces = []        # per rule: set of directions it makes default-deny
        self._by_subject = {}      # subject identity -> [rule index (0-based)]
        for r, rule in enumerate(self.rules):
            items = []
            enforces = set()
            for direction in DIRECTIONS:
                side = 'from' if direction == 'ingress' else 'to'
                for key, verdict in ((direction, ALLOW), (direction + '_deny', DENY)):
                    for item in rule.get(key) or []:
                        enforces.add(direction)
                        selected, atoms = self._item(item, side, verdict, r + 1)
                        if selected and atoms:
                            items.append((direction, selected, atoms, len(self._atoms)))
                            self._atoms.append(atoms)
            self._items.append(items)
            self._enforces.append(enforces)
            if enforces:
                for subject in peers.select(rule.get('endpoint_selector') or {}):
                    self._by_subject.setdefault(subject, []).append(r)
        self._subjects = {}
        self._by_rules = {}        # subjects that the same rules select share one compile
        self._folds = {}
        self._templates = {}       # id(folded entries, kept alive in _folds) -> their contract dicts

    def _item(self, item, peer, verdict, rule):
        peers = set()
        for selector in item.get(peer + '_endpoints') or []:
            peers |= self.peers.select(selector)
        for entity in item.get(peer + '_entities') or []:
            peers |= self.peers.entity(entity)
        for cidr in item.get(peer + '_cidrs') or []:
            peers |= self.peers.cidr_peers(cidr)
        atoms = []
        for port in item.get('to_ports') or []:
            lo = port['port']
            hi = port.get('end_port') or lo
            for proto in (PORT_PROTOCOLS if port.get('protocol', ANY) == ANY else (port['protocol'],)):
                atoms.append((proto, lo, hi, verdict, rule))
        for icmp in item.get('icmps') or []:
            atoms.append((ICMP[icmp.get('family', 4)], icmp['type'], icmp['type'], verdict, rule))
        unrestricted_l3 = not (item.get(peer + '_endpoints') or item.get(peer + '_entities')
                               or item.get(peer + '_cidrs'))
        if unrestricted_l3:
            peers = set([0]) if atoms else set()
        if not atoms:
            atoms = [(ANY, _FULL[0], _FULL[1], verdict, rule)]
        # Identity 0 matches every peer: a peer listed beside it adds nothing.
        return (frozenset([0]) if 0 in peers else frozenset(peers)), tuple(atoms)

    # ---- per subject

    def subject(self, subject):
        """{'enforce': {direction: bool}, 'entries': {direction: {peer: [(proto, lo, hi, verdict, rule)]}}}
        for one subject identity, compiled once."""
        done = self._subjects.get(subject)
        if done is not None:
            return done
        rules = tuple(self._by_subject.get(subject, ()))
        done = self._by_rules.get(rules)
        if done is not None:
            self._subjects[subject] = done
            return done
        enforce = dict((d, False) for d in DIRECTIONS)
        keys = dict((d, {}) for d in DIRECTIONS)      # direction -> {peer: numbers of the items naming it}
        for r in rules:
            for direction in self._enforces[r]:
                enforce[direction] = True
            for direction, peers, _atoms, number in self._items[r]:
                by_peer = keys[direction]
                if not by_peer:
                    by_peer.update(dict.fromkeys(peers, (number,)))
                else:
                    for peer in peers:
                        by_peer[peer] = by_peer.get(peer, ()) + (number,)
        # Peers that the same items name fold the same: once (a 'cluster' peer list is long).
        entries = {}
        for direction in DIRECTIONS:
            folds = {}
            for key in set(keys[direction].values()):
                folded = self._folds.get(key)
                if folded is None:
                    folded = self._folds[key] = _fold([a for n in key for a in self._atoms[n]])
                folds[key] = folded
            entries[direction] = dict((peer, folds[key]) for peer, key in keys[direction].items())
        done = self._subjects[subject] = self._by_rules[rules] = {'enforce': enforce, 'entries': entries}
        return done


def _fold(atoms):
    """One peer's atoms -> entries resolved for a longest-prefix lookup: an ``any`` protocol
    entry with the verdict of the any-protocol atoms, and per protocol disjoint ranges, each with
    the verdict of every atom covering it (any-protocol ones included), left out where that is
    what the any entry already says. A sweep over the range ends: O(atoms log atoms)."""
    any_atoms = [(lo, hi, v, r) for proto, lo, hi, v, r in atoms if proto == ANY]
    fallback = _combine(any_atoms)
    out = []
    if fallback:
        out.append((ANY, _FULL[0], _FULL[1], fallback[0], fallback[1]))
    by_proto = {}
    for proto, lo, hi, v, r in atoms:
        if proto != ANY:
            by_proto.setdefault(proto, []).append((lo, hi, v, r))
    for proto in sorted(by_proto):
        for lo, hi, verdict, rule in _sweep(by_proto[proto], any_atoms):
            if (verdict, rule) != fallback:
                out.append((proto, lo, hi, verdict, rule))
    return out


class _Active(object):
    """The rules of the ranges covering the sweep's position: the lowest one per verdict
    (heaps with lazy removal)."""

    def __init__(self, base):
        self.heaps = {ALLOW: [], DENY: []}
        self.count = {}
        for _lo, _hi, verdict, rule in base:
            self.add(verdict, rule)

    def add(self, verdict, rule):
        key = (verdict, rule)
        self.count[key] = self.count.get(key, 0) + 1
        heapq.heappush(self.heaps[verdict], rule)

    def remove(self, verdict, rule):
        self.count[(verdict, rule)] -= 1

    def lowest(self, verdict):
        heap = self.heaps[verdict]
        while heap and not self.count.get((verdict, heap[0])):
            heapq.heappop(heap)
        return heap[0] if heap else None

    def result(self):
        deny = self.lowest(DENY)
        if deny is not None:
            return DENY, deny
        allow = self.lowest(ALLOW)
        return (ALLOW, allow) if allow is not None else None


def _sweep(ranges, any_atoms):
    """Disjoint (lo, hi, verdict, rule) covering where `ranges` cover, adjacent equal ones merged."""
    events = []
    for lo, hi, verdict, rule in ranges:
        events.append((lo, 1, verdict, rule))
        events.append((hi + 1, -1, verdict, rule))
    events.sort(key=lambda e: (e[0], e[1]))
    active = _Active(any_atoms)
    covering = 0
    merged = []
    i = 0
    while i < len(events):
        at = events[i][0]
        while i < len(events) and events[i][0] == at:
            _at, step, verdict, rule = events[i]
            if step > 0:
                active.add(verdict, rule)
            else:
                active.remove(verdict, rule)
            covering += step
            i += 1
        if covering == 0 or i == len(events):
            continue
        end = events[i][0] - 1
        result = active.result()
        if merged and merged[-1][1] == at - 1 and merged[-1][2:] == result:
            merged[-1] = (merged[-1][0], end) + result
        else:
            merged.append((at, end) + result)
    return merged


def table_peers(table, only=None):
    """Peers of the ledger's identities (identity.Table); `only`: just these cluster-local ones
    (those an endpoint holds: an identity nobody holds needs no entries)."""
    local = dict((i, ident.labels_dict(labels)) for i, labels in table.labels_of.items()
                 if only is None or i in only)
    return Peers(local, table.cidr_of)


def compile_policy(rules, table, only=None):
    """Compile the normalized podnet_policy rules against the ledger's identities (identity.Table)."""
    return Compiled(rules, table_peers(table, only))


def rule_cidrs(rules):
    """Every CIDR the rules name (the controller gives each a CIDR identity); /0 is world."""
    found = set()
    for rule in rules or []:
        for direction in DIRECTIONS:
            peer = 'from' if direction == 'ingress' else 'to'
            for key in (direction, direction + '_deny'):
                for item in rule.get(key) or []:
                    for cidr in item.get(peer + '_cidrs') or []:
                        if ipaddress.ip_network(cidr).prefixlen:
                            found.add(str(ipaddress.ip_network(cidr)))
    return found


# --------------------------------------------------------------------------------------------
# symbolic entries (the contract's)


def _template(entry):
    """The contract's entry without its endpoint, direction and peer."""
    proto, lo, hi, verdict, rule = entry
    out = {'protocol': proto, 'verdict': verdict, 'rule': rule}
    if proto in PORT_PROTOCOLS:
        out['port'] = lo
        if hi != lo:
            out['end_port'] = hi
    elif proto in ICMP.values():
        out['icmp_type'] = lo
    return out


def endpoint_entries(compiled, ep_id, subject):
    """The contract's policy entries of one endpoint (its ep_id and identity), sorted by
    direction, peer identity, protocol and port."""
    compiled_subject = compiled.subject(subject)
    templates = compiled._templates
    out = []
    append = out.append
    for direction in DIRECTIONS:
        by_peer = compiled_subject['entries'][direction]
        for peer in sorted(by_peer):
            folded = by_peer[peer]
            made = templates.get(id(folded))
            if made is None:
                made = templates[id(folded)] = [_template(e) for e in folded]
            for t in made:
                append(dict(t, ep_id=ep_id, direction=direction, identity=peer))
    return out


def enforcement(compiled, subject):
    enforce = compiled.subject(subject)['enforce']
    return {'enforce_ingress': enforce['ingress'], 'enforce_egress': enforce['egress']}


# --------------------------------------------------------------------------------------------
# verdicts


def _lookup(entries, proto, port):
    """The longest-prefix match among one peer's folded entries: the protocol's range holding the
    port, else the any-protocol entry. (verdict, rule) or None."""
    fallback = None
    for e_proto, lo, hi, verdict, rule in entries or ():
        if e_proto == proto and lo <= port <= hi:
            return verdict, rule
        if e_proto == ANY:
            fallback = (verdict, rule)
    return fallback


def _decide(results, enforced):
    for kind in (DENY, ALLOW):
        rules = [r for v, r in results if v == kind]
        if rules:
            return kind, min(rules)
    return (DENY, DEFAULT_DENY) if enforced else (ALLOW, None)


def _l4(protocol, port, icmp_type):
    protocol = (protocol or ANY).lower()
    if protocol in ('icmp', 'icmpv6'):
        return protocol, int(icmp_type or 0)
    if protocol not in PORT_PROTOCOLS:
        raise ValueError('protocol %r: expected tcp, udp, icmp or icmpv6' % (protocol,))
    return protocol, int(port or 0)


def _connection(decided):
    """A connection's verdict from its (source egress, destination ingress) verdicts: the first
    deny; else the allow the last enforcing side gave; else allowed by no policy."""
    for result in decided:
        if result[0] == DENY:
            return result
    for result in reversed(decided):
        if result[1] is not None:
            return result
    return ALLOW, None


def check(compiled, subject, direction, peer, protocol, port=None, icmp_type=None):
    """One endpoint's verdict for one direction as the datapath gives it: (verdict, rule), rule
    being the deciding rule's number, 'default deny', or None (allowed: not enforced)."""
    proto, value = _l4(protocol, port, icmp_type)
    compiled_subject = compiled.subject(subject)
    by_peer = compiled_subject['entries'][direction]
    results = [r for r in (_lookup(by_peer.get(peer), proto, value), _lookup(by_peer.get(0), proto, value)) if r]
    return _decide(results, compiled_subject['enforce'][direction])


def verdict(compiled, src, dst, protocol='tcp', port=None, icmp_type=None):
    """The verdict for a new connection from src to dst, as the datapath decides it from the
    compiled entries: the source endpoint's egress, then the destination endpoint's ingress (a
    side that is not an endpoint, such as world, a CIDR or a node, has no policy of its own).

    src, dst: an identity number, {'identity': n}, an entity name, or an address (its CIDR
    identity or world). Returns (allow | deny, rule number | 'default deny' | None), None when
    no policy decided (an allowed direction that is not enforced)."""
    s = compiled.peers.identity(src)
    d = compiled.peers.identity(dst)
    decided = []
    if compiled.peers.is_endpoint(s):
        decided.append(check(compiled, s, 'egress', d, protocol, port, icmp_type))
    if compiled.peers.is_endpoint(d):
        decided.append(check(compiled, d, 'ingress', s, protocol, port, icmp_type))
    return _connection(decided)


def model_verdict(rules, view, src, dst, protocol='tcp', port=None, icmp_type=None):
    """The same verdict read from the rules directly, without folding (the reference that tests
    and the packet walk hold ``verdict`` to); view: the Peers the rules are read against."""
    s = view.identity(src)
    d = view.identity(dst)
    proto, value = _l4(protocol, port, icmp_type)

    def one(subject, direction, peer):
        side = 'from' if direction == 'ingress' else 'to'
        enforced = False
        results = []
        for r, rule in enumerate(rules or []):
            if subject not in view.select(rule.get('endpoint_selector') or {}):
                continue
            for key, kind in ((direction, ALLOW), (direction + '_deny', DENY)):
                for item in rule.get(key) or []:
                    enforced = True
                    if _item_matches(view, item, side, peer, proto, value):
                        results.append((kind, r + 1))
        return _decide(results, enforced)

    decided = []
    if view.is_endpoint(s):
        decided.append(one(s, 'egress', d))
    if view.is_endpoint(d):
        decided.append(one(d, 'ingress', s))
    return _connection(decided)


def _item_matches(view, item, side, peer, proto, value):
    selectors = item.get(side + '_endpoints') or []
    entities = item.get(side + '_entities') or []
    cidrs = item.get(side + '_cidrs') or []
    ports = item.get('to_ports') or []
    icmps = item.get('icmps') or []
    if not (selectors or entities or cidrs):
        if not (ports or icmps):
            return False
        peer_ok = True
    else:
        peer_ok = (any(peer in view.select(s) for s in selectors)
                   or 'all' in entities
                   or any(peer in view.entity(e) for e in entities)
                   or any(peer in view.cidr_peers(c) for c in cidrs))
    if not peer_ok:
        return False
    if not (ports or icmps):
        return True
    for p in ports:
        protos = PORT_PROTOCOLS if p.get('protocol', ANY) == ANY else (p['protocol'],)
        if proto in protos and p['port'] <= value <= (p.get('end_port') or p['port']):
            return True
    return any(ICMP[i.get('family', 4)] == proto and i['type'] == value for i in icmps)
