# -*- coding: utf-8 -*-
# Copyright: podnet.fabric contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Controller-side helpers shared by the ipam_* and datapath_plan action plugins.

The model comes from the fact ``podnet_model`` that ``podnet.fabric.validate`` sets on
``localhost``; it is the only host variable these plugins read besides the task's own host:
cluster-wide allocation goes through the ledger, never through other hosts' hostvars (AWX slices).
"""
from __future__ import annotations

from ansible.errors import AnsibleActionFail
from ansible.module_utils.parsing.convert_bool import boolean
from ansible.plugins.action import ActionBase

from ansible_collections.podnet.fabric.plugins.plugin_utils import identity
from ansible_collections.podnet.fabric.plugins.plugin_utils import ledger
from ansible_collections.podnet.fabric.plugins.module_utils.ipam import cidr as ipam_cidr
from ansible_collections.podnet.fabric.plugins.module_utils.ipam import lease as ipam_lease
from ansible_collections.podnet.fabric.plugins.plugin_utils.templated import plain


def slice_of(task_vars):
    """What makes this run a slice that sees only part of the inventory, or None. AWX gives each
    job of a sliced job template the extra variable job_slice (the slice's number, from the
    workflow's ancestor artifacts: awx/main/models/workflow.py); podnet_sliced=true says the same for
    other schedulers. --limit is no slice: the model still holds the whole inventory."""
    if task_vars.get('job_slice') not in (None, ''):
        return 'slice %s of an AWX sliced job (job_slice)' % task_vars['job_slice']
    if boolean(task_vars.get('podnet_sliced', False), strict=False):
        return 'a slice of the inventory (podnet_sliced=true)'
    return None


def sliced_prune_error(task_vars, prune, members, group):
    """The error for a prune from a run that sees only part of the inventory (slice_of), or None."""
    why = slice_of(task_vars) if prune else None
    if why is None:
        return None
    return ('all: ipam_prune: refused, this run is %s and sees %d node%s of group %s, not the whole '
            'inventory; every node outside it would look removed and lose its CIDRs. Prune from a run '
            'over the whole inventory. Nothing was changed' % (why, len(members), '' if len(members) == 1 else 's', group))


class IpamAction(ActionBase):
    """Base of the controller-only IPAM actions: they never connect to a node, support check mode,
    and implement ``_run(result, args, task_vars)``; an IpamError, LedgerError or AnsibleActionFail
    it raises becomes a failed result with the error's message."""

    TRANSFERS_FILES = False
    _requires_connection = False
    _supports_check_mode = True

    def run(self, tmp=None, task_vars=None):
        result = super(IpamAction, self).run(tmp, task_vars)
        try:
            return self._run(result, self._task.args, task_vars or {})
        except (ipam_cidr.IpamError, ledger.LedgerError, identity.IdentityError) as e:
            result.update(failed=True, changed=False, msg=str(e))
        except AnsibleActionFail as e:
            result.update(failed=True, changed=False, msg=e.message)
        return result

    def _run(self, result, args, task_vars):
        raise NotImplementedError


def get_model(task_vars, explicit=None):
    """The validated model: the task's ``model`` argument, else localhost's ``podnet_model`` fact.
    None when neither exists."""
    if explicit:
        return plain(explicit)
    hostvars = task_vars.get('hostvars') or {}
    try:
        local = hostvars['localhost']
        model = local.get('podnet_model') if hasattr(local, 'get') else None
    except KeyError:
        model = None
    if model is None:
        model = task_vars.get('podnet_model')
    return plain(model) if model else None


def require_model(task_vars, explicit=None):
    model = get_model(task_vars, explicit)
    if not model:
        raise AnsibleActionFail('podnet_model is not set: run podnet.fabric.validate on localhost first '
                                '(playbooks/site.yml does), or pass model')
    return model


def open_ledger(model):
    try:
        return ledger.open_ledger(model['ipam']['ledger'], cluster=model['cluster']['name'])
    except ledger.LedgerError as e:
        raise AnsibleActionFail(str(e))


def _endpoints_recorder(model, node, node_used, current):
    """The ledger update step that rewrites the node's endpoint records (identity.py) from its
    whole store: names, addresses, the identity of the labels the inventory gives each endpoint
    (or the task's, for an endpoint the inventory does not list), stable endpoint ids."""
    cluster = model.get('cluster') or {}
    desired = identity.model_endpoint_labels(model, [node]).get(node, {}) if node in (model.get('nodes') or {}) else {}
    flt = identity.label_filter(model)
    if current and current[0] and current[0] not in desired and current[0] != identity.HEALTH_ENDPOINT:
        key, labels = current
        desired = dict(desired)
        desired[key] = identity.identity_labels(labels, identity.namespace_of(key), cluster.get('name'), flt)

    def record(doc):
        identity.record_endpoints(doc, node, node_used, cluster.get('id', 0), cluster.get('name'), flt, desired)
    return record


def record_use(model, node, usage, node_used, current=None):
    """Record one node's endpoint use on the controller. crd mode: the node document's
    status.ipam.used (what the external allocator must not take back); other modes: the ledger
    entry's pools_used (utilization report, multi-pool pre_allocation); eni mode: the endpoint
    records only (eni_allocate counts them as the node's IPs in use). Every mode rewrites the entry's
    endpoint records (identity.py: name, addresses, identity, endpoint id), in the same ledger update. current: (endpoint id, labels)
    of the task's endpoint. Returns {'updated', 'location', 'record'}. Raises LedgerError or
    identity.IdentityError."""
    mode = model['ipam']['mode']
    led = ledger.open_ledger(model['ipam']['ledger'], cluster=model['cluster']['name'])
    record_endpoints = _endpoints_recorder(model, node, node_used, current)
    if mode == 'eni':
        # The entry eni_allocate made for the node (none yet: nothing to record against). Its
        # endpoint records are the pod IPs in use that eni_allocate sizes the node's ENIs by and
        # never releases.
        def set_endpoints_eni(doc):
            record_endpoints(doc)
            return doc
        _doc, changed = led.update(set_endpoints_eni)
        return {'updated': changed, 'location': led.location, 'record': 'endpoints'}
    if mode == 'crd':
        used = dict((ip, {'owner': (rec or {}).get('owner')}) for ip, rec in (node_used or {}).items())

        def set_status(doc):
            status = doc.setdefault('status', {})
            status.setdefault('ipam', {})['used'] = used
            return doc
        _doc, changed = led.update_node_doc(node, set_status)

        def set_endpoints(doc):
            record_endpoints(doc)
            return doc
        _doc, recorded = led.update(set_endpoints)
        where = led.node_doc_path(node) if hasattr(led, 'node_doc_path') else 's3://%s/%s' % (
            led.bucket, led.node_doc_key(node))
        return {'updated': changed or recorded, 'location': where, 'record': 'status.ipam.used, endpoints'}

    counts = ipam_lease.pools_used_record(usage)

    def set_pools_used(doc):
        entry = doc['nodes'].get(node)
        if entry is None:
            return doc          # not allocated by this ledger: nothing to record against
        if counts:
            entry['pools_used'] = counts
        else:
            entry.pop('pools_used', None)
        record_endpoints(doc)
        return doc
    _doc, changed = led.update(set_pools_used)
    return {'updated': changed, 'location': led.location, 'record': 'pools_used, endpoints'}


def lease_of(doc, node, mode):
    return ipam_lease.node_lease(doc, node, mode=mode)
