# -*- coding: utf-8 -*-
# Copyright: podnet.fabric contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Security identities (DESIGN.md 5 and 7; the datapath contract of issue 10).

An endpoint's identity is a number derived from its identity-relevant labels: the same filtered
label set gets the same number on every run and every node, because the controller allocates it
in the ledger (the ledger's ``identities`` section, under the same lock or conditional write as
the IPAM allocation). Numbers:

- reserved: 0 unknown, 1 host, 2 world, 3 unmanaged, 4 health, 5 init, 6 remote-node,
  7 kube-apiserver, 8 ingress (never stored);
- cluster-local: cluster id N uses (N << 16) + 256 .. ((N + 1) << 16) - 1, lowest free first;
- CIDR (local scope): (1 << 24) | n, n from 1, one per CIDR a policy rule names.

The ledger section, one entry per line::

    "identities": {"256": {"labels": ["app=web", "io.cilium.k8s.policy.cluster=lab",
                                      "io.kubernetes.pod.namespace=default"]},
                   "16777217": {"cidr": "192.0.2.0/24"}}

Which endpoint holds which identity, addresses and endpoint id is recorded per node, in the node's
ledger entry (``nodes.<node>.endpoints``), from the node's endpoint store after each change
(``ipam_controller.record_use``)::

    "endpoints": {"default/web-1": {"ep_id": 1, "identity": 256, "ips": ["10.244.1.2"]},
                  "podnet-health": {"ep_id": 2, "identity": 4, "ips": ["10.244.1.3"]}}

The key is the endpoint's IPAM owner id: ``<namespace>/<name>`` (endpoint_key) for the endpoints
of ``podnet_endpoints``, the health role's ``health_endpoint_id`` (podnet-health) for the health
endpoint. A ledger written before this existed reads as having no records (a missing field reads
as empty: no addresses, identity 0 unknown).

Functions that change a document edit the one they are given: call them on the private copy
that ``Ledger.update`` hands its function (or a deep copy in check mode).
"""
from __future__ import absolute_import, division, print_function

__metaclass__ = type

import ipaddress
import re

from ansible_collections.podnet.fabric.plugins.module_utils.ipam.cidr import natural_key
from ansible_collections.podnet.fabric.plugins.plugin_utils import inventory

RESERVED = {'unknown': 0, 'host': 1, 'world': 2, 'unmanaged': 3, 'health': 4, 'init': 5,
            'remote-node': 6, 'kube-apiserver': 7, 'ingress': 8}
UNKNOWN, HOST, WORLD, HEALTH, REMOTE_NODE = 0, 1, 2, 4, 6
MAX_RESERVED = 8
FIRST_LOCAL = 256
CIDR_SCOPE = 1 << 24
CIDR_LAST = CIDR_SCOPE | 0xFFFFFF
# Cilium's endpoint ids are 1..4095 (pkg/endpoint/id: MaxEndpointID); the endpoints map holds 4096.
MAX_EP_ID = 4095
HEALTH_ENDPOINT = 'podnet-health'

NAMESPACE_LABEL = inventory.NAMESPACE_LABEL
CLUSTER_LABEL = inventory.CLUSTER_LABEL

# Cilium adds these includes itself once a user adds one of their own ("Limiting
# Identity-Relevant Labels"): they do not make the filter an allow-list; any other include does.
_DEFAULT_INCLUDES = frozenset(p for p in inventory.DEFAULT_LABEL_FILTER if not p.startswith('!'))


class IdentityError(Exception):
    """An identity cannot be allocated (range exhausted) or the ledger's section is malformed."""


# --------------------------------------------------------------------------------------------
# labels


class LabelFilter(object):
    """Which label keys are identity-relevant, as Cilium's filterLabels() decides: each pattern
    matches at the start of the key (the leftmost match must start at 0); a key is kept when no
    exclusion matches it, or when the longest matching inclusion is longer than the shortest
    matching exclusion. Once the list holds an inclusion that is not one of Cilium's default ones,
    a key must match an inclusion to be kept (Cilium's --labels)."""

    def __init__(self, patterns=None):
        patterns = list(inventory.DEFAULT_LABEL_FILTER if patterns is None else patterns)
        self.patterns = patterns
        self._rules = []
        for text in patterns:
            exclude = text.startswith('!')
            self._rules.append((exclude, re.compile(text[1:] if exclude else text)))
        self.allow_list = any(not p.startswith('!') and p not in _DEFAULT_INCLUDES for p in patterns)
        self._cache = {}

    def relevant(self, key):
        kept = self._cache.get(key)
        if kept is None:
            kept = self._cache[key] = self._decide(key)
        return kept

    def _decide(self, key):
        included = ignored = 0
        for exclude, regex in self._rules:
            m = regex.search(key)
            if m is None or m.start() != 0:
                continue
            length = m.end()
            if exclude:
                if ignored == 0 or length < ignored:
                    ignored = length
            elif length > included:
                included = length
        return (not self.allow_list and ignored == 0) or included > ignored


def label_filter(model):
    return LabelFilter(((model.get('datapath') or {}).get('label_filter')))


def endpoint_key(namespace, name):
    """The endpoint's id in IPAM (the node's store owner) and in the ledger's records."""
    return '%s/%s' % (namespace or inventory.DEFAULT_NAMESPACE, name)


def namespace_of(key):
    return key.split('/', 1)[0] if '/' in key else inventory.DEFAULT_NAMESPACE


def identity_labels(labels, namespace, cluster_name, flt):
    """The identity-relevant label set of an endpoint: its labels plus the two podnet sets (as
    Cilium does for every pod), filtered, as sorted "key=value" strings (a tuple)."""
    full = dict(labels or {})
    full[NAMESPACE_LABEL] = namespace or inventory.DEFAULT_NAMESPACE
    full[CLUSTER_LABEL] = cluster_name
    return tuple(sorted('%s=%s' % (k, v) for k, v in full.items() if flt.relevant(k)))


def labels_dict(label_set):
    return dict(item.split('=', 1) for item in label_set)


def model_endpoint_labels(model, nodes=None):
    """{node: {endpoint key: identity label set}} of the model's endpoints (of `nodes`, else all)."""
    flt = label_filter(model)
    cluster = model['cluster']['name']
    out = {}
    for node in (model['nodes'] if nodes is None else nodes):
        eps = (model['nodes'].get(node) or {}).get('endpoints') or []
        out[node] = dict((endpoint_key(ep.get('namespace'), ep['name']),
                          identity_labels(ep.get('labels'), ep.get('namespace'), cluster, flt)) for ep in eps)
    return out


# --------------------------------------------------------------------------------------------
# the ledger's identities section


def local_range(cluster_id):
    base = int(cluster_id) << 16
    return base + FIRST_LOCAL, base + 0xFFFF


def is_cidr_identity(ident):
    return CIDR_SCOPE < ident <= CIDR_LAST


class Table(object):
    """The identities section read: label sets and CIDRs by number and back. Entries of another
    cluster id's range (the cluster id changed) are left out: they are not this cluster's."""

    def __init__(self, doc, cluster_id):
        self.lo, self.hi = local_range(cluster_id)
        self.labels_of = {}
        self.by_labels = {}
        self.cidr_of = {}
        self.by_cidr = {}
        self.stale = []
        section = (doc or {}).get('identities') or {}
        if not isinstance(section, dict):
            raise IdentityError('identities: expected an object, got %s' % type(section).__name__)
        for text, entry in section.items():
            where = 'identities.%s' % text
            try:
                ident = int(text)
            except ValueError:
                raise IdentityError('%s: the key is not an identity number' % where)
            if not isinstance(entry, dict):
                raise IdentityError('%s: expected an object' % where)
            if 'cidr' in entry:
                if not is_cidr_identity(ident):
                    raise IdentityError('%s: %d is not a CIDR identity ((1 << 24) | n)' % (where, ident))
                cidr = str(entry['cidr'])
                self.cidr_of[ident] = cidr
                self.by_cidr[cidr] = ident
            elif isinstance(entry.get('labels'), list):
                if not self.lo <= ident <= self.hi:
                    self.stale.append(ident)
                    continue
                label_set = tuple(sorted(str(x) for x in entry['labels']))
                self.labels_of[ident] = label_set
                self.by_labels[label_set] = ident
            else:
                raise IdentityError('%s: expected {"labels": [...]} or {"cidr": "..."}' % where)

    def local_ids(self):
        return sorted(self.labels_of)


def _section(doc):
    section = doc.get('identities')
    if not isinstance(section, dict):
        section = doc['identities'] = {}
    return section


def _describe(label_set):
    return '{%s}' % ', '.join(label_set)


def allocate(doc, cluster_id, label_sets=(), cidrs=(), cluster_name=None):
    """Give every label set and CIDR an identity in doc (edited in place): existing ones keep
    theirs, new ones take the lowest free number, label sets in sorted order so that the same
    ledger and input always give the same numbers. Label entries outside the cluster id's range
    are removed (the cluster id changed: they were another range's).

    Returns (by_labels, by_cidr, changes): {label set: id}, {cidr: id} for every one asked for,
    and [{'action': allocated | released, 'identity', 'labels' or 'cidr', 'msg'}].
    Raises IdentityError when a range is exhausted."""
    table = Table(doc, cluster_id)
    section = _section(doc)
    changes = []
    for ident in sorted(table.stale):
        labels = section.pop(str(ident)).get('labels')
        changes.append({'action': 'released', 'identity': ident, 'labels': labels,
                        'msg': 'identity %d %s released: outside cluster id %s\'s range %d..%d'
                               % (ident, _describe(labels), cluster_id, table.lo, table.hi)})
    by_labels = {}
    wanted = sorted(set(tuple(s) for s in label_sets))
    missing = [s for s in wanted if s not in table.by_labels]
    if missing:
        free = _free(set(table.labels_of), table.lo, table.hi)
        for n, label_set in enumerate(missing):
            ident = next(free, None)
            if ident is None:
                size = table.hi - table.lo + 1
                raise IdentityError(
                    'cluster %s (id %s): the identity range %d..%d is exhausted: %d of %d in use; cannot '
                    'allocate an identity for %s%s' % (
                        cluster_name or '?', cluster_id, table.lo, table.hi, size, size, _describe(label_set),
                        ' and %d more label sets' % (len(missing) - n - 1) if len(missing) > n + 1 else ''))
            section[str(ident)] = {'labels': list(label_set)}
            table.by_labels[label_set] = ident
            table.labels_of[ident] = label_set
            changes.append({'action': 'allocated', 'identity': ident, 'labels': list(label_set),
                            'msg': 'identity %d allocated for %s' % (ident, _describe(label_set))})
    for label_set in wanted:
        by_labels[label_set] = table.by_labels[label_set]
    by_cidr = {}
    wanted_cidrs = sorted(set(str(ipaddress.ip_network(c)) for c in cidrs), key=_cidr_order)
    missing = [c for c in wanted_cidrs if c not in table.by_cidr]
    if missing:
        free = _free(set(table.cidr_of), CIDR_SCOPE + 1, CIDR_LAST)
        for cidr in missing:
            ident = next(free, None)
            if ident is None:
                raise IdentityError('the CIDR identity range %d..%d is exhausted; cannot allocate an identity '
                                    'for %s' % (CIDR_SCOPE + 1, CIDR_LAST, cidr))
            section[str(ident)] = {'cidr': cidr}
            table.by_cidr[cidr] = ident
            table.cidr_of[ident] = cidr
            changes.append({'action': 'allocated', 'identity': ident, 'cidr': cidr,
                            'msg': 'identity %d allocated for CIDR %s' % (ident, cidr)})
    for cidr in wanted_cidrs:
        by_cidr[cidr] = table.by_cidr[cidr]
    return by_labels, by_cidr, changes


def _free(used, lo, hi):
    ident = lo
    while ident <= hi:
        if ident not in used:
            yield ident
        ident += 1


def _cidr_order(cidr):
    net = ipaddress.ip_network(cidr)
    return (net.version, int(net.network_address), net.prefixlen)


def prune(doc, cluster_id, keep_ids, keep_cidrs):
    """Release (in place) the label identities whose number is not in keep_ids and the CIDR
    identities whose CIDR is not in keep_cidrs. Returns the changes."""
    table = Table(doc, cluster_id)
    section = _section(doc)
    keep_ids = set(keep_ids)
    keep_cidrs = set(str(ipaddress.ip_network(c)) for c in keep_cidrs)
    changes = []
    for ident in sorted(table.labels_of):
        if ident not in keep_ids:
            del section[str(ident)]
            changes.append({'action': 'released', 'identity': ident, 'labels': list(table.labels_of[ident]),
                            'msg': 'identity %d %s released: no endpoint uses it (prune)'
                                   % (ident, _describe(table.labels_of[ident]))})
    for ident in sorted(table.cidr_of):
        if table.cidr_of[ident] not in keep_cidrs:
            del section[str(ident)]
            changes.append({'action': 'released', 'identity': ident, 'cidr': table.cidr_of[ident],
                            'msg': 'identity %d for CIDR %s released: no rule names it (prune)'
                                   % (ident, table.cidr_of[ident])})
    return changes


# --------------------------------------------------------------------------------------------
# the nodes' endpoint records


def _int(value):
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 0


def endpoint_records(entry):
    """A ledger node entry's endpoint records, leniently: {key: {'ep_id', 'identity', 'ips'}};
    a ledger without them (older than this) or a missing field reads as empty / 0."""
    raw = (entry or {}).get('endpoints')
    out = {}
    if not isinstance(raw, dict):
        return out
    for key, rec in raw.items():
        rec = rec if isinstance(rec, dict) else {}
        ips = rec.get('ips')
        out[str(key)] = {'ep_id': _int(rec.get('ep_id')), 'identity': _int(rec.get('identity')),
                         'ips': [str(ip) for ip in ips] if isinstance(ips, list) else []}
    return out


def _ip_order(ip):
    address = ipaddress.ip_address(ip)
    return (address.version, int(address))


def record_endpoints(doc, node, node_used, cluster_id, cluster_name, flt, desired=None, health=HEALTH_ENDPOINT):
    """Rewrite (in place) the endpoint records of `node` from its whole endpoint store.

    node_used: {ip: {'owner': key}} (the store's CiliumNode-style status.ipam.used); desired:
    {key: identity label set} for the endpoints whose labels are known (the inventory's, the
    task's). Each owner's identity: 4 for the health endpoint; else its desired label set's
    (allocated here when new); else the identity its record had, while the ledger still holds it;
    else that of an endpoint with no labels in its namespace. Endpoint ids are kept; a new
    endpoint takes the node's lowest free one (the health endpoint's first when several are new). Returns the identity allocation's changes (None
    when the ledger has no entry for the node: nothing to record against)."""
    entry = (doc.get('nodes') or {}).get(node)
    if entry is None:
        return None
    desired = desired or {}
    owners = {}
    for ip, rec in (node_used or {}).items():
        owner = (rec or {}).get('owner')
        if owner:
            owners.setdefault(str(owner), []).append(str(ip))
    old = endpoint_records(entry)
    table = Table(doc, cluster_id)
    label_sets = {}
    for key in owners:
        if key == health:
            continue
        prev = old.get(key, {}).get('identity', 0)
        if key in desired:
            label_sets[key] = tuple(desired[key])
        elif not (prev in table.labels_of or 0 < prev <= MAX_RESERVED):
            label_sets[key] = identity_labels({}, namespace_of(key), cluster_name, flt)
    by_labels, _cidrs, changes = allocate(doc, cluster_id, label_sets.values(), cluster_name=cluster_name)
    # New endpoints take ids in this order: the health endpoint first, as site.yml creates it
    # before any workload, so that a rebuild from the nodes' stores gives back the usual ids.
    ep_ids = _endpoint_ids(node, sorted(owners, key=lambda k: (k != health, natural_key(k))), old)
    records = {}
    for key in sorted(owners, key=natural_key):
        if key == health:
            ident = HEALTH
        elif key in label_sets:
            ident = by_labels[label_sets[key]]
        else:
            ident = old[key]['identity']
        records[key] = {'ep_id': ep_ids[key], 'identity': ident, 'ips': sorted(owners[key], key=_ip_order)}
    if records:
        entry['endpoints'] = records
    else:
        entry.pop('endpoints', None)
    return changes


def _endpoint_ids(node, keys, old):
    """Stable endpoint ids: an endpoint keeps its recorded id (the first of two claiming one),
    a new one takes the lowest free id."""
    ids = {}
    taken = set()
    for key in keys:
        ep_id = old.get(key, {}).get('ep_id', 0)
        if 0 < ep_id <= MAX_EP_ID and ep_id not in taken:
            ids[key] = ep_id
            taken.add(ep_id)
    free = _free(taken, 1, MAX_EP_ID)
    for key in keys:
        if key not in ids:
            ep_id = next(free, None)
            if ep_id is None:
                raise IdentityError('%s: more than %d endpoints; no endpoint id left for %s' % (node, MAX_EP_ID, key))
            ids[key] = ep_id
    return ids


def used_identities(doc):
    """The identity numbers the ledger's endpoint records use, across every node."""
    used = set()
    for entry in ((doc or {}).get('nodes') or {}).values():
        for rec in endpoint_records(entry).values():
            used.add(rec['identity'])
    return used
