# -*- coding: utf-8 -*-
# Copyright: podnet.fabric contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The controller's datapath plan (the datapath_plan action): identities allocated in the ledger
and, per node, the contract's symbolic endpoint, ipcache and policy entries. Pure.

``update(model, doc)`` is the ledger update (run it in ``Ledger.update``, or on a deep copy in
check mode): identities for every endpoint of the model's nodes (their inventory labels) and for
every CIDR a rule names; those nodes' endpoint records follow their inventory labels (a label
change moves an endpoint to another identity); with prune, identities that no endpoint record or
inventory endpoint holds and CIDR identities no rule names are released.

``outputs(model, doc, run)`` reads the result: for each node of the run, from the ledger alone
(every node's endpoints, whichever slice or run recorded them):

- ``endpoints``: one entry per endpoint address of the node, ``{name, address, ep_id, identity,
  enforce_ingress, enforce_egress}`` (the node side adds the device, ifindex and MACs);
- ``ipcache``: ipcache.node_entries;
- ``policy``: policy.endpoint_entries of each of the node's endpoints.
"""
from __future__ import absolute_import, division, print_function

__metaclass__ = type

from ansible_collections.podnet.fabric.plugins.module_utils.ipam.cidr import natural_key
from ansible_collections.podnet.fabric.plugins.plugin_utils import identity as ident
from ansible_collections.podnet.fabric.plugins.plugin_utils import ipcache
from ansible_collections.podnet.fabric.plugins.plugin_utils import policy


def _rules(model):
    return (model.get('policy') or {}).get('rules') or []


def _cluster(model):
    cluster = model.get('cluster') or {}
    return cluster.get('id', 0), cluster.get('name')


def update(model, doc, prune=False, health=ident.HEALTH_ENDPOINT):
    """Edit doc (the ledger's private copy) in place for every node of the model (the whole
    inventory, also under --limit; a slice's own nodes under AWX slicing); returns the changes."""
    cluster_id, cluster_name = _cluster(model)
    flt = ident.label_filter(model)
    run = sorted(model['nodes'], key=natural_key)
    wanted = ident.model_endpoint_labels(model, run)
    sets = [labels for node in run for labels in wanted[node].values()]
    cidrs = policy.rule_cidrs(_rules(model))
    _l, _c, changes = ident.allocate(doc, cluster_id, sets, cidrs, cluster_name=cluster_name)
    nodes = doc.get('nodes') or {}
    for node in run:
        if node not in nodes:
            continue
        records = ident.endpoint_records(nodes[node])
        used = dict((ip, {'owner': key}) for key, rec in records.items() for ip in rec['ips'])
        before = dict((key, rec['identity']) for key, rec in records.items())
        ident.record_endpoints(doc, node, used, cluster_id, cluster_name, flt, wanted[node], health)
        after = ident.endpoint_records(nodes[node])
        for key in sorted(after, key=natural_key):
            if key in before and before[key] != after[key]['identity']:
                changes.append({'action': 'moved', 'node': node, 'endpoint': key, 'identity': after[key]['identity'],
                                'msg': '%s: endpoint %s moved from identity %d to %d (its labels changed)'
                                       % (node, key, before[key], after[key]['identity'])})
    if prune:
        table = ident.Table(doc, cluster_id)
        keep = ident.used_identities(doc) | set(table.by_labels[s] for s in sets)
        changes.extend(ident.prune(doc, cluster_id, keep, cidrs))
    return changes


def held_identities(model, doc):
    """The cluster-local identities endpoints hold: every endpoint record's, and those of the
    model's endpoints that have no addresses yet."""
    cluster_id, _name = _cluster(model)
    table = ident.Table(doc, cluster_id)
    held = ident.used_identities(doc)
    for node, labels in ident.model_endpoint_labels(model).items():
        held.update(table.by_labels[s] for s in labels.values() if s in table.by_labels)
    return held


def outputs(model, doc, run):
    """{node: {'endpoints', 'ipcache', 'policy'}} for the run's nodes, and the ipcache warnings."""
    cluster_id, _name = _cluster(model)
    table = ident.Table(doc, cluster_id)
    compiled = policy.compile_policy(_rules(model), table, only=held_identities(model, doc))
    tunnel = ((model.get('routing') or {}).get('mode') or 'tunnel') == 'tunnel'
    rows, warnings = ipcache.cluster_entries(doc, tunnel, cluster_id)
    nodes = doc.get('nodes') or {}
    out = {}
    for node in run:
        records = ident.endpoint_records(nodes.get(node))
        endpoints = []
        entries = []
        for key in sorted(records, key=natural_key):
            rec = records[key]
            if not rec['ep_id']:
                continue
            flags = policy.enforcement(compiled, rec['identity'])
            for ip in rec['ips']:
                endpoint = {'name': key, 'address': ip, 'ep_id': rec['ep_id'], 'identity': rec['identity']}
                endpoint.update(flags)
                endpoints.append(endpoint)
            entries.extend(policy.endpoint_entries(compiled, rec['ep_id'], rec['identity']))
        out[node] = {'endpoints': endpoints, 'ipcache': ipcache.node_entries(rows, doc, node), 'policy': entries}
    return out, warnings


def identities_view(model, doc):
    """The identities section as the result shows it: {id: {'labels': [...]} | {'cidr': ...}}."""
    table = ident.Table(doc, _cluster(model)[0])
    out = dict((i, {'labels': list(labels)}) for i, labels in table.labels_of.items())
    out.update((i, {'cidr': cidr}) for i, cidr in table.cidr_of.items())
    return dict(sorted(out.items()))


def endpoint_netns(key, health=ident.HEALTH_ENDPOINT, health_netns='podnet-health'):
    """The network namespace of an endpoint by its IPAM name, as the datapath and health roles name
    it: <namespace>.<name> for <namespace>/<name> (a namespace is a DNS label: no dot), the health
    role's namespace for the health endpoint, None for an endpoint that is neither."""
    if key == health:
        return health_netns
    if '/' in key:
        return key.replace('/', '.', 1)
    return None


def walk(model, doc, run, ports, health=ident.HEALTH_ENDPOINT, health_netns='podnet-health', health_port=4240):
    """The packet walk's matrix: for every endpoint of a node of the run (the source, probed from its
    namespace on its node) and every endpoint of the cluster (the destination, every address of a
    family the source has), a TCP connection to each of `ports` (and the health responder's port for
    a health endpoint), with the verdict the datapath gives it (policy.verdict over the compiled
    policy: the source's egress, then the destination's ingress).

    Returns {source node: [{src, src_node, netns, dst, dst_node, address, port, verdict, rule}]},
    sorted; rule is the deciding rule's number, 'default deny', or None (no policy decided)."""
    cluster_id, _name = _cluster(model)
    table = ident.Table(doc, cluster_id)
    compiled = policy.compile_policy(_rules(model), table, only=held_identities(model, doc))
    nodes = doc.get('nodes') or {}
    everyone = []
    for node in sorted(nodes, key=natural_key):
        for key, rec in sorted(ident.endpoint_records(nodes[node]).items()):
            if rec['ips'] and endpoint_netns(key, health, health_netns):
                everyone.append((node, key, rec))
    out = {}
    for src_node, src, srec in everyone:
        if src_node not in run:
            continue
        families = set(':' in ip for ip in srec['ips'])
        rows = out.setdefault(src_node, [])
        for dst_node, dst, drec in everyone:
            if (src_node, src) == (dst_node, dst):
                continue
            dst_ports = sorted(set(ports) | (set([health_port]) if dst == health else set()))
            for ip in drec['ips']:
                if (':' in ip) not in families:
                    continue
                for port in dst_ports:
                    v, rule = policy.verdict(compiled, srec['identity'], drec['identity'], 'tcp', port)
                    rows.append({'src': src, 'src_node': src_node, 'netns': endpoint_netns(src, health, health_netns),
                                 'dst': dst, 'dst_node': dst_node, 'address': ip, 'port': port,
                                 'verdict': v, 'rule': rule})
    return out
