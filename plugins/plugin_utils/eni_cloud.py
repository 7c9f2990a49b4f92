# -*- coding: utf-8 -*-
# Copyright: podnet.fabric contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""AWS ENI IPAM, the EC2 side (controller only): read the fleet's realized state with a few batched
describe calls, and apply eni_plan's actions.

In the style of amazon.aws's module_utils (DESIGN.md 10): one client with botocore's standard retry
mode plus our own full-jitter backoff on throttling (RequestLimitExceeded and friends) on top of it,
one small function per API call, every failure an EniCloudError carrying the operation and the AWS
error code. Deleting what is already gone is success. Messages never carry credentials: they are built
from the operation, the resource ids and AWS's error text, and scrubbed of anything that looks like a
key (_scrub) because an endpoint's error text is not ours to trust.

Reads (read_view), for the whole fleet whatever its size, each paginated (1,000 a page):
- DescribeInstanceTypes, filtered by the fleet's distinct types (an unknown type is simply absent);
- DescribeNetworkInterfaces of the fleet's instances (attachment.instance-id, 200 values a call: the
  EC2 filter limit, so one call up to 200 nodes);
- DescribeNetworkInterfaces of this cluster's detached ENIs (tag and status filters): interrupted
  creates to attach, garbage to collect;
- DescribeSubnets of the instances' VPCs; DescribeSecurityGroups of those VPCs only when security
  groups are chosen by id or tag.
A no-op run costs these 4-5 calls; writes are made per node, and each write is what the plan asked.

Idempotency of a create: the ENI is created with its ownership tags in the same call
(TagSpecifications), so a run killed between CreateNetworkInterface and AttachNetworkInterface leaves
an ENI the next run's read finds (detached, ours, tagged for the node) and attaches instead of
creating another. A ClientToken makes a create whose first answer was lost return the first ENI instead of a
second one: the same on every retry of the request, and on the next run's create for the same node,
instance, device index, subnet and size as long as the ledger's serial is the same (an interrupted run
records nothing). That covers a create the killed run had sent but EC2 had not finished when the next
run read the fleet.
"""
from __future__ import absolute_import, division, print_function

__metaclass__ = type

import hashlib
import os
import random
import re
import threading
import time
import uuid

from ansible_collections.podnet.fabric.plugins.plugin_utils import eni_plan

THROTTLE_CODES = frozenset(('RequestLimitExceeded', 'Throttling', 'ThrottlingException', 'RequestThrottled',
                            'TooManyRequestsException', 'SlowDown'))
FILTER_VALUES_MAX = 200
PAGE = 1000
_KEYLIKE = re.compile(r'\b(?:AKIA|ASIA)[A-Z0-9]{12,}\b')


class EniCloudError(Exception):
    """An EC2 call failed. ``code`` is the AWS error code (or the botocore error's class name)."""

    def __init__(self, message, code=None, operation=None):
        super(EniCloudError, self).__init__(message)
        self.code = code
        self.operation = operation


class InsufficientPrefixes(EniCloudError):
    """InsufficientPrefixesInSubnet: the subnet has no free /28; the caller falls back to single IPs."""

    def __init__(self, message, subnet_id):
        super(InsufficientPrefixes, self).__init__(message, 'InsufficientPrefixesInSubnet')
        self.subnet_id = subnet_id


class ApplyError(EniCloudError):
    """Some nodes' writes failed (``errors``, each an EniCloudError); the others' are ``done``."""

    def __init__(self, errors, done):
        self.errors = list(errors)
        self.done = list(done)
        codes = sorted(set(e.code or 'Unknown' for e in self.errors))
        super(ApplyError, self).__init__('%d node%s failed (%s):\n%s' % (
            len(self.errors), '' if len(self.errors) == 1 else 's', ', '.join(codes),
            '\n'.join('  - %s' % e for e in self.errors)), codes[0] if len(codes) == 1 else 'Multiple')


def _scrub(text):
    text = _KEYLIKE.sub('<redacted>', str(text))
    for var in ('AWS_SECRET_ACCESS_KEY', 'AWS_SESSION_TOKEN', 'AWS_ACCESS_KEY_ID', 'AWS_SECURITY_TOKEN'):
        value = os.environ.get(var)
        if value and len(value) >= 8:
            text = text.replace(value, '<redacted>')
    return text


def _chunks(items, size):
    items = list(items)
    for i in range(0, len(items), size):
        yield items[i:i + size]


class Ec2(object):
    """The EC2 client: retries, call counts, errors with codes.

    calls: {operation: number of calls made} (each retry of botocore's or ours counts as an attempt in
    `attempts`, not a call). attempts: {operation: HTTP requests sent}. throttled: throttling answers
    received; backoff_retries: calls repeated by our backoff after botocore had given up."""

    def __init__(self, region, endpoint_url=None, max_attempts=8, backoff_base=0.2, backoff_cap=5.0,
                 our_retries=6, client=None):
        self.region = region
        self.endpoint_url = endpoint_url
        self.max_attempts = max_attempts
        self.backoff_base = backoff_base
        self.backoff_cap = backoff_cap
        self.our_retries = our_retries
        self.calls = {}
        self.attempts = {}
        self.throttled = 0
        self.backoff_retries = 0
        self._lock = threading.Lock()
        self._client = client
        self._errors = None

    def client(self):
        if self._client is None or self._errors is None:
            try:
                import boto3
                from botocore.config import Config
                from botocore.exceptions import BotoCoreError, ClientError
            except ImportError:
                raise EniCloudError('eni mode needs boto3 and botocore on the controller (pip install boto3)',
                                    'ImportError')
            self._errors = (ClientError, BotoCoreError)
            if self._client is None:
                kwargs = {'region_name': self.region,
                          'config': Config(retries={'mode': 'standard', 'max_attempts': self.max_attempts},
                                           user_agent_extra='podnet.fabric', max_pool_connections=32)}
                if self.endpoint_url:
                    kwargs['endpoint_url'] = self.endpoint_url
                self._client = boto3.client('ec2', **kwargs)
            self._client.meta.events.register('needs-retry.ec2', self._seen)
        return self._client

    def _seen(self, response=None, **_kwargs):
        """needs-retry hook: counts every throttled HTTP answer, those botocore retries too. Decides nothing."""
        parsed = response[1] if isinstance(response, tuple) and len(response) > 1 else None
        if isinstance(parsed, dict) and (parsed.get('Error') or {}).get('Code') in THROTTLE_CODES:
            with self._lock:
                self.throttled += 1
        return None

    def _count(self, op, meta):
        with self._lock:
            self.calls[op] = self.calls.get(op, 0) + 1
            self.attempts[op] = self.attempts.get(op, 0) + 1 + int((meta or {}).get('RetryAttempts') or 0)

    def call(self, op, what, **kwargs):
        """client.<op>(**kwargs) with our jittered backoff on throttling after botocore's own retries;
        `what` names the resource in errors ('node3: AttachNetworkInterface eni-1 to i-2')."""
        client = self.client()
        ClientError, BotoCoreError = self._errors
        method = getattr(client, _snake(op))
        for attempt in range(self.our_retries + 1):
            try:
                resp = method(**kwargs)
                self._count(op, resp.get('ResponseMetadata'))
                return resp
            except ClientError as e:
                resp = getattr(e, 'response', None) or {}
                self._count(op, resp.get('ResponseMetadata'))
                code = str((resp.get('Error') or {}).get('Code') or 'Unknown')
                message = (resp.get('Error') or {}).get('Message') or str(e)
                if code in THROTTLE_CODES:
                    if attempt < self.our_retries:
                        with self._lock:
                            self.backoff_retries += 1
                        cap = min(self.backoff_cap, self.backoff_base * (2 ** attempt))
                        time.sleep(random.uniform(0, cap))     # full jitter: a throttled fleet spreads out
                        continue
                    message = 'still throttled after botocore\'s %d attempts and %d more of ours: %s' % (
                        self.max_attempts, self.our_retries, message)
                raise EniCloudError(_scrub('%s: %s: %s' % (what, code, message)), code, op)
            except BotoCoreError as e:
                raise EniCloudError(_scrub('%s: %s: %s' % (what, type(e).__name__, e)), type(e).__name__, op)
        raise AssertionError('unreachable')   # pragma: no cover

    def paginate(self, op, key, what, **kwargs):
        items = []
        token = None
        while True:
            args = dict(kwargs)
            if token:
                args['NextToken'] = token
            resp = self.call(op, what, **args)
            items.extend(resp.get(key) or [])
            token = resp.get('NextToken')
            if not token:
                return items

    def api_calls(self):
        with self._lock:
            return {'calls': dict(self.calls), 'attempts': dict(self.attempts), 'throttled': self.throttled,
                    'backoff_retries': self.backoff_retries,
                    'describe_calls': sum(n for op, n in self.calls.items() if op.startswith('Describe')),
                    'write_calls': sum(n for op, n in self.calls.items() if not op.startswith('Describe'))}


def _snake(op):
    return re.sub(r'(?<!^)(?=[A-Z])', '_', op).lower()


# ------------------------------------------------------------------------- reading

def _tags(item):
    return dict((t['Key'], t.get('Value', '')) for t in (item.get('TagSet') or item.get('Tags') or []))


def normalize_eni(raw):
    att = raw.get('Attachment') or {}
    attached = att.get('Status') in ('attaching', 'attached') and att.get('InstanceId')
    primary = next((p['PrivateIpAddress'] for p in raw.get('PrivateIpAddresses') or [] if p.get('Primary')),
                   raw.get('PrivateIpAddress'))
    return {'id': raw['NetworkInterfaceId'], 'mac': (raw.get('MacAddress') or '').lower(),
            'subnet_id': raw.get('SubnetId'), 'vpc_id': raw.get('VpcId'), 'az': raw.get('AvailabilityZone'),
            'status': raw.get('Status'), 'instance_id': att.get('InstanceId') if attached else None,
            'device_index': att.get('DeviceIndex') if attached else None,
            'attachment_id': att.get('AttachmentId') if attached else None,
            'delete_on_termination': bool(att.get('DeleteOnTermination')),
            'primary_ip': primary,
            'ips': [p['PrivateIpAddress'] for p in raw.get('PrivateIpAddresses') or []
                    if p.get('PrivateIpAddress') and p['PrivateIpAddress'] != primary],
            'prefixes': [p['Ipv4Prefix'] for p in raw.get('Ipv4Prefixes') or [] if p.get('Ipv4Prefix')],
            'groups': sorted(g['GroupId'] for g in raw.get('Groups') or []),
            'description': raw.get('Description') or '', 'tags': _tags(raw)}


def _needs_groups(cfg, nodes):
    sources = [cfg] + [n.get('eni') or {} for n in nodes.values()]
    return any(s.get('security_group_ids') or s.get('security_group_tags') for s in sources)


def read_view(ec2, cluster, cfg, nodes, limits=None):
    """The realized state eni_plan.plan reads, for the nodes {host: {'instance_id', 'instance_type', 'eni'}}.
    limits: the instance types' limits when already read in this run (they do not change within it)."""
    cfg = eni_plan.config(cfg)
    types = sorted(set(n['instance_type'] for n in nodes.values()))
    raw_types = []
    for chunk in _chunks(types if limits is None else [], FILTER_VALUES_MAX):
        raw_types += ec2.paginate('DescribeInstanceTypes', 'InstanceTypes', 'DescribeInstanceTypes %s' % ', '.join(chunk),
                                  Filters=[{'Name': 'instance-type', 'Values': chunk}])
    enis = {}
    ids = sorted(set(n['instance_id'] for n in nodes.values()))
    for chunk in _chunks(ids, FILTER_VALUES_MAX):
        for raw in ec2.paginate('DescribeNetworkInterfaces', 'NetworkInterfaces',
                                'DescribeNetworkInterfaces of %d instances' % len(chunk),
                                Filters=[{'Name': 'attachment.instance-id', 'Values': chunk}], MaxResults=PAGE):
            enis[raw['NetworkInterfaceId']] = normalize_eni(raw)
    for raw in ec2.paginate('DescribeNetworkInterfaces', 'NetworkInterfaces',
                            'DescribeNetworkInterfaces detached of cluster %s' % cluster,
                            # status first: an endpoint that applies filters in order (moto) narrows to the
                            # few detached ENIs before it looks at tags
                            Filters=[{'Name': 'status', 'Values': ['available']},
                                     {'Name': 'tag:%s' % eni_plan.TAG_CLUSTER, 'Values': [cluster]}], MaxResults=PAGE):
        enis[raw['NetworkInterfaceId']] = normalize_eni(raw)
    view = {'limits': eni_plan.limits_from_instance_types(raw_types) if limits is None else limits, 'enis': enis, 'subnets': {},
            'security_groups': {}}
    read_subnets(ec2, view)
    vpcs = sorted(set(e['vpc_id'] for e in enis.values() if e.get('vpc_id')))
    if vpcs and _needs_groups(cfg, nodes):
        for raw in ec2.paginate('DescribeSecurityGroups', 'SecurityGroups', 'DescribeSecurityGroups of %s' % ', '.join(vpcs),
                                Filters=[{'Name': 'vpc-id', 'Values': vpcs}], MaxResults=PAGE):
            view['security_groups'][raw['GroupId']] = {'id': raw['GroupId'], 'vpc_id': raw.get('VpcId'),
                                                       'tags': _tags(raw)}
    return view


def read_subnets(ec2, view):
    vpcs = sorted(set(e['vpc_id'] for e in view['enis'].values() if e.get('vpc_id')))
    view['subnets'] = {}
    if not vpcs:
        return view
    for raw in ec2.paginate('DescribeSubnets', 'Subnets', 'DescribeSubnets of %s' % ', '.join(vpcs),
                            Filters=[{'Name': 'vpc-id', 'Values': vpcs}], MaxResults=PAGE):
        view['subnets'][raw['SubnetId']] = {'id': raw['SubnetId'], 'cidr': raw.get('CidrBlock'), 'vpc_id': raw.get('VpcId'),
                                            'az': raw.get('AvailabilityZone'),
                                            'available': int(raw.get('AvailableIpAddressCount') or 0),
                                            'tags': _tags(raw)}
    return view


# ------------------------------------------------------------------------- writing

def _tag_spec(tags):
    return [{'ResourceType': 'network-interface',
             'Tags': [{'Key': k, 'Value': v} for k, v in sorted(tags.items())]}]


def client_token(act, run_key):
    """The create's idempotency token (64 characters, EC2's limit)."""
    text = '|'.join(str(x) for x in (act['tags'].get(eni_plan.TAG_CLUSTER), act['node'], act['instance_id'],
                                     act['device_index'], act['subnet_id'], act.get('ip_count') or 0,
                                     act.get('prefix_count') or 0, run_key))
    return hashlib.sha256(text.encode('utf-8')).hexdigest()


def create_and_attach(ec2, act):
    """CreateNetworkInterface (ownership tags in the same call), AttachNetworkInterface, then
    DeleteOnTermination on the attachment. Returns the new ENI's id."""
    what = '%s: CreateNetworkInterface in %s for %s' % (act['node'], act['subnet_id'], act['instance_id'])
    kwargs = {'SubnetId': act['subnet_id'], 'Description': act['description'], 'TagSpecifications': _tag_spec(act['tags']),
              'ClientToken': act.get('client_token') or str(uuid.uuid4())}
    if act['groups']:
        kwargs['Groups'] = list(act['groups'])
    if act.get('prefix_count'):
        kwargs['Ipv4PrefixCount'] = act['prefix_count']
    elif act.get('ip_count'):
        kwargs['SecondaryPrivateIpAddressCount'] = act['ip_count']
    try:
        eni_id = ec2.call('CreateNetworkInterface', what, **kwargs)['NetworkInterface']['NetworkInterfaceId']
    except EniCloudError as e:
        if e.code == 'InsufficientPrefixesInSubnet':
            raise InsufficientPrefixes(str(e), act['subnet_id'])
        raise
    attach(ec2, dict(act, eni_id=eni_id))
    return eni_id


def attach(ec2, act):
    what = '%s: AttachNetworkInterface %s to %s as device %d' % (
        act['node'], act['eni_id'], act['instance_id'], act['device_index'])
    resp = ec2.call('AttachNetworkInterface', what, NetworkInterfaceId=act['eni_id'], InstanceId=act['instance_id'],
                    DeviceIndex=act['device_index'])
    if act.get('unmark'):
        ec2.call('DeleteTags', '%s: DeleteTags %s on %s' % (act['node'], eni_plan.TAG_GC_MARK, act['eni_id']),
                 Resources=[act['eni_id']], Tags=[{'Key': eni_plan.TAG_GC_MARK}])
    if act.get('delete_on_termination', True):
        set_delete_on_termination(ec2, dict(act, attachment_id=resp['AttachmentId']))


def set_delete_on_termination(ec2, act):
    ec2.call('ModifyNetworkInterfaceAttribute', '%s: ModifyNetworkInterfaceAttribute %s DeleteOnTermination'
             % (act['node'], act['eni_id']), NetworkInterfaceId=act['eni_id'],
             Attachment={'AttachmentId': act['attachment_id'], 'DeleteOnTermination': True})


def assign(ec2, act, subnet_id=None):
    what = '%s: AssignPrivateIpAddresses to %s' % (act['node'], act['eni_id'])
    if act.get('prefix_count'):
        try:
            ec2.call('AssignPrivateIpAddresses', what, NetworkInterfaceId=act['eni_id'], Ipv4PrefixCount=act['prefix_count'])
        except EniCloudError as e:
            if e.code == 'InsufficientPrefixesInSubnet':
                raise InsufficientPrefixes(str(e), subnet_id)
            raise
    else:
        ec2.call('AssignPrivateIpAddresses', what, NetworkInterfaceId=act['eni_id'],
                 SecondaryPrivateIpAddressCount=act['ip_count'])


def unassign(ec2, act):
    ec2.call('UnassignPrivateIpAddresses', '%s: UnassignPrivateIpAddresses %s of %s' % (
        act['node'], ', '.join(act['ips']), act['eni_id']), NetworkInterfaceId=act['eni_id'],
        PrivateIpAddresses=list(act['ips']))


def gc_mark(ec2, eni_ids, stamp):
    for chunk in _chunks(eni_ids, 500):
        ec2.call('CreateTags', 'gc: CreateTags %s on %d detached ENIs' % (eni_plan.TAG_GC_MARK, len(chunk)),
                 Resources=chunk, Tags=[{'Key': eni_plan.TAG_GC_MARK, 'Value': stamp}])


def gc_delete(ec2, eni_id):
    """True when deleted (or already gone); False when it was attached again since the read."""
    try:
        ec2.call('DeleteNetworkInterface', 'gc: DeleteNetworkInterface %s' % eni_id, NetworkInterfaceId=eni_id)
    except EniCloudError as e:
        if e.code == 'InvalidNetworkInterfaceID.NotFound':
            return True
        if e.code == 'InvalidNetworkInterface.InUse':
            return False
        raise
    return True


def apply_node(ec2, actions, view):
    """One node's actions, in order. Returns the ids of the ENIs touched."""
    touched = []
    for act in actions:
        kind = act['action']
        if kind == 'create':
            touched.append(create_and_attach(ec2, act))
        elif kind == 'attach':
            attach(ec2, act)
            touched.append(act['eni_id'])
        elif kind == 'delete_on_termination':
            set_delete_on_termination(ec2, act)
            touched.append(act['eni_id'])
        elif kind == 'assign':
            assign(ec2, act, (view['enis'].get(act['eni_id']) or {}).get('subnet_id'))
            touched.append(act['eni_id'])
        elif kind == 'unassign':
            unassign(ec2, act)
            touched.append(act['eni_id'])
        else:
            raise EniCloudError('%s: unknown action %r' % (act.get('node'), kind))
    return touched


def apply(ec2, actions, view, workers=4, stamp=None, run_key=None):
    """Apply a plan: each node's actions in order, nodes on up to `workers` threads (their writes are
    independent; boto3 clients are thread-safe), then garbage collection. Returns {'done': [actions
    done], 'gc_skipped': [...]}. Raises EniCloudError (InsufficientPrefixes for the fallback) after the
    other nodes' work finished: what was done is done, and a re-read sees it."""
    by_node = {}
    for act in actions:
        if act['node'] is not None:
            if act['action'] == 'create' and run_key is not None:
                act = dict(act, client_token=client_token(act, run_key))
            by_node.setdefault(act['node'], []).append(act)
    done, errors = [], []

    def run(node):
        try:
            apply_node(ec2, by_node[node], view)
            return node, None
        except EniCloudError as e:
            return node, e

    order = sorted(by_node, key=eni_plan._natural)
    if workers > 1 and len(order) > 1:
        from concurrent.futures import ThreadPoolExecutor
        with ThreadPoolExecutor(max_workers=workers) as pool:
            results = list(pool.map(run, order))
    else:
        results = [run(n) for n in order]
    for node, err in results:
        if err is None:
            done.extend(by_node[node])
        else:
            errors.append(err)
    if errors:
        raise ApplyError(errors, done)
    skipped = []
    marks = [a['eni_id'] for a in actions if a['action'] == 'gc_mark']
    if marks:
        gc_mark(ec2, marks, stamp or time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime()))
        done.extend(a for a in actions if a['action'] == 'gc_mark')
    for act in actions:
        if act['action'] == 'gc_delete':
            (done if gc_delete(ec2, act['eni_id']) else skipped).append(act)
    return {'done': done, 'gc_skipped': skipped}


# ------------------------------------------------------------------------- read, plan, apply

def converge(ec2, cluster, cfg, nodes, model_nodes=None, check=False, workers=4, max_rounds=3, run_key=None):
    """read_view, eni_plan.plan, apply (unless check), and read again when something was written.
    run_key: what makes the creates' client tokens this run's (the action passes the ledger's serial: see
    client_token); None: a random token per create.

    An InsufficientPrefixesInSubnet answer puts its subnet on the no-prefix list and the whole fleet is
    read and planned again (what was done stays done: the new plan starts from it), at most max_rounds
    times. Raises eni_plan.EniPlanError (nothing written) or EniCloudError / ApplyError.
    Returns {'before': view, 'after': view, 'plan': the first plan, 'done': [actions], 'warnings',
    'no_prefix_subnets': [...], 'gc_skipped': [...]}."""
    no_prefix = set()
    view = read_view(ec2, cluster, cfg, nodes)
    before = view
    first = None
    done, skipped, warnings = [], [], []
    for _round in range(max_rounds):
        result = eni_plan.plan(view, cfg, cluster, nodes, model_nodes, no_prefix_subnets=no_prefix)
        first = first or result
        warnings.extend(w for w in result['warnings'] if w not in warnings)
        if check or not result['actions']:
            break
        try:
            applied = apply(ec2, result['actions'], view, workers=workers,
                            run_key=None if run_key is None else '%s/%d' % (run_key, _round))
        except ApplyError as e:
            done.extend(e.done)
            fallback = [x for x in e.errors if isinstance(x, InsufficientPrefixes)]
            if len(fallback) != len(e.errors):
                raise
            for x in fallback:
                no_prefix.add(x.subnet_id)
                warnings.append('%s: no free /28 prefix (InsufficientPrefixesInSubnet): single IPs from now on in '
                                'this run' % x.subnet_id)
            view = read_view(ec2, cluster, cfg, nodes, limits=view['limits'])
            continue
        done.extend(applied['done'])
        skipped.extend(applied['gc_skipped'])
        view = read_view(ec2, cluster, cfg, nodes, limits=view['limits'])
        break
    else:
        raise EniCloudError('subnets %s refused /28 prefixes in %d rounds in a row: gave up (InsufficientPrefixesInSubnet)'
                            % (', '.join(sorted(no_prefix)), max_rounds), 'InsufficientPrefixesInSubnet')
    return {'before': before, 'after': view, 'plan': first, 'done': done, 'warnings': warnings,
            'no_prefix_subnets': sorted(no_prefix), 'gc_skipped': skipped}
