# -*- coding: utf-8 -*-
# Copyright: podnet.fabric contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The durable, cluster-wide ledger (DESIGN.md section 6).

The ledger is the one record of cluster-wide allocations (pod CIDRs, security identities).
It lives outside any playbook run because AWX runs every job in a throwaway container, and it
must never hand one CIDR to two nodes, also when two jobs or two AWX slices run at once.

Backends
- ``file`` (default): an exclusive ``fcntl.flock`` on a sidecar ``<path>.lock`` serializes
  writers; the new document goes to a temp file in the same directory, is fsynced, then
  ``os.replace``-d over the ledger and the directory is fsynced. A crash at any point leaves
  either the old or the new complete document. A torn or invalid ledger is a loud error,
  never silently reset (resetting would re-hand out every CIDR); ``playbooks/ledger_rebuild.yml``
  rebuilds it from the nodes' leases through ``rebuild(build)``, which keeps the torn document
  beside the new one (``<path>.torn-<UTC time>``).
- ``s3``: optimistic concurrency with conditional writes: GET (remember the ETag), apply,
  PUT with ``IfMatch=<etag>`` (``IfNoneMatch='*'`` when creating); on 412/409 the whole
  read-apply-write is retried with jittered backoff. boto3 is imported lazily.

The document::

    {"version": 1, "cluster": "lab", "serial": 7,
     "nodes": {"node1": {"ip": "192.168.50.11",
                         "cidrs": {"ipv4": ["10.0.0.0/24"], "ipv6": []},
                         "pools": {}, "allocated_at": 3}},
     "identities": {}}

``identities`` (security identities) and each node entry's ``endpoints`` (which endpoint holds
which addresses, identity and endpoint id) are identity.py's; a ledger without them reads as empty.

``serial`` is owned by the ledger: ``update`` bumps it by one whenever the content changes and
writes nothing when it does not, so a no-op run leaves the file (and its mtime) alone.

Per-node documents (CRD mode, modelled on Cilium's CiliumNode) live next to the ledger:
``<dir>/<stem>.d/nodes/<node>.json`` (file) or ``<key stem>.d/nodes/<node>.json`` (s3), with the
same atomicity::

    {"version": 1, "node": "node1", "serial": 2,
     "spec": {"ipam": {"pool": {"10.1.0.0/28": {}, "10.1.0.77": {}}}},
     "status": {"ipam": {"used": {"10.1.0.2": {"owner": "default/pod-a"}}}}}
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import contextlib
import copy
import gc
import json
import os
import random
import re
import time

from ansible_collections.podnet.fabric.plugins.module_utils import statefile

SCHEMA_VERSION = 1
DEFAULT_LOCK_TIMEOUT = 600.0
DEFAULT_S3_ATTEMPTS = 30
# Keys whose (dict) values get one entry per line in the file: readable, grep- and diff-friendly,
# and still serialized by the C encoder (indent=... would force the ~3x slower pure-Python one).
_LINE_PER_ENTRY_KEYS = ('nodes', 'identities')
_NODE_NAME_RE = re.compile(r'^[A-Za-z0-9_][A-Za-z0-9_.:@+-]*$')
_S3_CONFLICT_CODES = frozenset(['PreconditionFailed', 'ConditionalRequestConflict', '412', '409',
                                'OperationAborted'])
_S3_MISSING_CODES = frozenset(['NoSuchKey', '404', 'NotFound'])


class LedgerError(Exception):
    """Any ledger failure: unreadable/invalid document, lock timeout, lost write races, S3 errors."""


class TornLedgerError(LedgerError):
    """The stored ledger is not a ledger document (not JSON, truncated, wrong shape): the one case
    ``rebuild`` replaces. An unsupported version or another cluster's ledger is not torn."""


# What the torn-ledger errors say to do; README "Recovery" explains the playbook.
REBUILD_HINT = ('Rebuild it from the nodes\' leases: ansible-playbook -i <inventory> playbooks/ledger_rebuild.yml '
                '(README "Recovery"; the torn file is kept beside the new one), or restore it from a backup.')


def empty_doc(cluster=None):
    return {'version': SCHEMA_VERSION, 'cluster': cluster, 'serial': 0, 'nodes': {}, 'identities': {}}


def empty_node_doc(node):
    return {'version': SCHEMA_VERSION, 'node': node, 'serial': 0,
            'spec': {'ipam': {'pool': {}}}, 'status': {'ipam': {'used': {}}}}


def dumps(doc):
    """Canonical serialization: sorted keys, compact, one node/identity per line, trailing newline."""
    enc = json.JSONEncoder(sort_keys=True, separators=(',', ':'), ensure_ascii=False)
    parts = []
    for key in sorted(doc):
        value = doc[key]
        if key in _LINE_PER_ENTRY_KEYS and isinstance(value, dict) and value:
            inner = ',\n'.join('%s:%s' % (enc.encode(k), enc.encode(value[k])) for k in sorted(value))
            parts.append('%s:{\n%s\n}' % (enc.encode(key), inner))
        else:
            parts.append('%s:%s' % (enc.encode(key), enc.encode(value)))
    return ('{' + ',\n'.join(parts) + '}\n').encode('utf-8')


def _parse_json(data):
    # json builds no reference cycles, but the many dicts it creates trigger full cyclic-GC
    # passes over the whole heap: pausing the collector makes a 10k-node parse ~2-5x faster.
    enabled = gc.isenabled()
    gc.disable()
    try:
        return json.loads(data.decode('utf-8'))
    finally:
        if enabled:
            gc.enable()


def _loads(data, where):
    try:
        doc = _parse_json(data)
    except (ValueError, UnicodeDecodeError) as e:
        raise TornLedgerError('%s: the ledger is not valid JSON (%s); refusing to reset it. %s' % (where, e, REBUILD_HINT))
    return doc


def validate_doc(doc, where, cluster=None):
    """Structural check of a ledger document. Raises LedgerError naming the location
    (TornLedgerError when the document is not a ledger at all)."""
    def torn(msg):
        return TornLedgerError('%s: %s; refusing to use it. %s' % (where, msg, REBUILD_HINT))
    if not isinstance(doc, dict):
        raise torn('the ledger is not a JSON object')
    if doc.get('version') is None:
        raise torn('the ledger has no version')
    if doc.get('version') != SCHEMA_VERSION:
        raise LedgerError('%s: unsupported ledger version %r (this podnet.fabric reads version %d)'
                          % (where, doc.get('version'), SCHEMA_VERSION))
    serial = doc.get('serial')
    if not isinstance(serial, int) or isinstance(serial, bool) or serial < 0:
        raise torn('serial: %r is not a non-negative integer' % (serial,))
    for key in ('nodes', 'identities'):
        if not isinstance(doc.get(key), dict):
            raise torn('%s: expected an object, got %r' % (key, type(doc.get(key)).__name__))
    for name, entry in doc['nodes'].items():
        if not isinstance(entry, dict):
            raise torn('nodes.%s: expected an object' % name)
    if cluster is not None and doc.get('cluster') not in (None, cluster):
        raise LedgerError('%s: this ledger belongs to cluster %r, not %r' % (where, doc.get('cluster'), cluster))
    return doc


def validate_node_doc(doc, where, node):
    if not isinstance(doc, dict):
        raise LedgerError('%s: the node document is not a JSON object' % where)
    if doc.get('version') != SCHEMA_VERSION:
        raise LedgerError('%s: unsupported node document version %r' % (where, doc.get('version')))
    if doc.get('node') != node:
        raise LedgerError('%s: the node document is for %r, not %r' % (where, doc.get('node'), node))
    serial = doc.get('serial')
    if not isinstance(serial, int) or isinstance(serial, bool) or serial < 0:
        raise LedgerError('%s: serial: %r is not a non-negative integer' % (where, serial))
    return doc


def _check_node_name(node):
    if not isinstance(node, str) or not _NODE_NAME_RE.match(node) or node in ('.', '..'):
        raise LedgerError('%r is not a usable node name for a ledger document' % (node,))
    return node


def _apply(fn, old, data, validate):
    """Run fn on a private copy of old; return (new, changed). serial is the ledger's to bump.

    fn gets its own copy (parsed again from the stored bytes: ~5x faster than deepcopy) so an fn
    that edits in place cannot hide its change from the comparison with old.
    """
    work = copy.deepcopy(old) if data is None else _parse_json(data)
    new = fn(work)
    if new is None:
        raise LedgerError('ledger update function returned None (it must return the new document)')
    base = dict(new)
    base['serial'] = old['serial']
    if base == old:
        return old, False
    base['serial'] = old['serial'] + 1
    validate(base)
    return base, True


def _inspect(data, where, cluster):
    """The stored bytes as {'state': 'missing' | 'torn' | 'valid', 'doc', 'error'} (see rebuild).
    Another cluster's ledger or an unsupported version still raises: that is not torn."""
    if data is None:
        return {'state': 'missing', 'doc': None, 'error': None}
    try:
        doc = validate_doc(_loads(data, where), where, cluster)
    except TornLedgerError as e:
        return {'state': 'torn', 'doc': None, 'error': str(e)}
    return {'state': 'valid', 'doc': doc, 'error': None}


def _aside_tag(current):
    return 'torn' if current['state'] == 'torn' else 'replaced'


# --------------------------------------------------------------------------------------------
# file backend


class _FileDoc:
    """One JSON document on a local filesystem, updated under an exclusive flock."""

    def __init__(self, path, validate, empty, lock_timeout):
        self.path = os.path.abspath(path)
        self.dir = os.path.dirname(self.path)
        self.base = os.path.basename(self.path)
        self.lock_path = self.path + '.lock'
        self._validate = validate
        self._empty = empty
        self.lock_timeout = lock_timeout

    def _read_bytes(self):
        try:
            return statefile.read_bytes(self.path)
        except statefile.StateFileError as e:
            raise LedgerError(str(e))

    def _read(self):
        data = self._read_bytes()
        if data is None:
            return self._empty(), None
        return self._validate(_loads(data, self.path)), data

    def read(self):
        # No lock needed: os.replace is atomic, a reader sees the old or the new document.
        return self._read()[0]

    def _clean_temps(self):
        # Under the exclusive lock no other writer exists: leftovers are from crashed writers.
        prefix = '.' + self.base + '.'
        try:
            names = os.listdir(self.dir)
        except OSError:
            return
        for name in names:
            if name.startswith(prefix) and name.endswith('.tmp'):
                try:
                    os.unlink(os.path.join(self.dir, name))
                except OSError:
                    pass

    def _write(self, doc):
        try:
            mode = os.stat(self.path).st_mode & 0o7777
        except OSError:
            mode = 0o644
        try:
            statefile.write_bytes(self.path, dumps(doc), mode)
        except statefile.StateFileError as e:
            raise LedgerError(str(e))

    @contextlib.contextmanager
    def _locked(self):
        """The ledger's exclusive lock (statefile's one lock-wait loop), its errors as LedgerError."""
        try:
            with statefile.lock_file(self.lock_path, timeout=self.lock_timeout,
                                     what='the ledger lock (another run holds it)'):
                yield
        except statefile.StateFileError as e:
            raise LedgerError(str(e))

    def update(self, fn):
        with self._locked():
            self._clean_temps()
            old, data = self._read()
            new, changed = _apply(fn, old, data, self._validate)
            if changed:
                self._write(new)
            return new, changed

    def inspect(self, inspect):
        return inspect(self._read_bytes())

    def replace(self, build, inspect):
        """Under the lock: current = inspect(stored bytes); new = build(current); when new is not
        None, keep the stored file aside (hard link) and write new. (current, new, aside path)."""
        with self._locked():
            self._clean_temps()
            current = inspect(self._read_bytes())
            new = build(current)
            aside = None
            if new is not None:
                self._validate(new)
                if current['state'] != 'missing':
                    try:
                        aside = statefile.keep_aside(self.path, _aside_tag(current))
                    except statefile.StateFileError as e:
                        raise LedgerError(str(e))
                self._write(new)
            return current, new, aside


class _Ledger(object):
    """What both backends offer on top of their document store: subclasses set ``self._doc``,
    ``self.location`` and ``self.cluster``, and build one node's store in ``_node(node)``."""

    def _validate(self, doc):
        return validate_doc(doc, self.location, self.cluster)

    def read(self):
        return self._doc.read()

    def update(self, fn):
        return self._doc.update(fn)

    def _inspect(self, data):
        return _inspect(data, self.location, self.cluster)

    def inspect(self):
        """The stored ledger, leniently: {'state': 'missing' | 'torn' | 'valid', 'doc', 'error'}.
        Another cluster's ledger or an unsupported version raises LedgerError."""
        return self._doc.inspect(self._inspect)

    def rebuild(self, build):
        """Replace the ledger with build(current) (current as inspect() returns it) under the lock
        (file) or with a conditional write (s3); build returns None to write nothing. A torn or
        replaced document is kept beside the new one as ``<path or key>.torn-<UTC time>`` (or
        ``.replaced-<UTC time>``), never deleted. Returns (current, written document or None,
        where the old one was kept or None)."""
        return self._doc.replace(build, self._inspect)

    def read_node_doc(self, node):
        return self._node(node).read()

    def update_node_doc(self, node, fn):
        return self._node(node).update(fn)


class FileLedger(_Ledger):
    backend = 'file'

    def __init__(self, path, cluster=None, lock_timeout=DEFAULT_LOCK_TIMEOUT):
        if not path:
            raise LedgerError('ipam.ledger.path: the file backend needs a path')
        self.cluster = cluster
        self.lock_timeout = lock_timeout
        self._doc = _FileDoc(path, self._validate, lambda: empty_doc(cluster), lock_timeout)
        self.path = self._doc.path
        stem = os.path.splitext(os.path.basename(self.path))[0]
        self.nodes_dir = os.path.join(os.path.dirname(self.path), stem + '.d', 'nodes')
        self.location = self.path

    def node_doc_path(self, node):
        return os.path.join(self.nodes_dir, _check_node_name(node) + '.json')

    def _node(self, node):
        path = self.node_doc_path(node)
        return _FileDoc(path, lambda d: validate_node_doc(d, path, node), lambda: empty_node_doc(node),
                        self.lock_timeout)

    def list_node_docs(self):
        try:
            names = os.listdir(self.nodes_dir)
        except OSError:
            return []
        return sorted(n[:-5] for n in names if n.endswith('.json') and not n.startswith('.'))


# --------------------------------------------------------------------------------------------
# s3 backend


def _s3_error_code(exc):
    resp = getattr(exc, 'response', None) or {}
    code = str((resp.get('Error') or {}).get('Code') or '')
    status = (resp.get('ResponseMetadata') or {}).get('HTTPStatusCode')
    return code, status


class _S3Doc:
    def __init__(self, ledger, key, validate, empty):
        self.ledger = ledger
        self.key = key
        self.where = 's3://%s/%s' % (ledger.bucket, key)
        self._validate = validate
        self._empty = empty

    def _get_bytes(self):
        """(data, etag), or (None, None) when the object does not exist."""
        client = self.ledger.client()
        ClientError, BotoCoreError = self.ledger.errors()
        try:
            resp = client.get_object(Bucket=self.ledger.bucket, Key=self.key)
            return resp['Body'].read(), resp['ETag']
        except ClientError as e:
            code, status = _s3_error_code(e)
            if code in _S3_MISSING_CODES or (status == 404 and code != 'NoSuchBucket'):
                return None, None
            raise LedgerError('%s: cannot read: %s (%s)' % (self.where, code or status, e))
        except BotoCoreError as e:
            raise LedgerError('%s: cannot read: %s' % (self.where, e))

    def _get(self):
        data, etag = self._get_bytes()
        if data is None:
            return self._empty(), None, None
        return self._validate(_loads(data, self.where)), data, etag

    def read(self):
        return self._get()[0]

    def _put(self, new, etag):
        """Conditional PUT: True when written, False when another writer got there first."""
        client = self.ledger.client()
        ClientError, BotoCoreError = self.ledger.errors()
        kwargs = {'Bucket': self.ledger.bucket, 'Key': self.key, 'Body': dumps(new),
                  'ContentType': 'application/json'}
        if etag is None:
            kwargs['IfNoneMatch'] = '*'
        else:
            kwargs['IfMatch'] = etag
        try:
            client.put_object(**kwargs)
            return True
        except ClientError as e:
            code, status = _s3_error_code(e)
            # 412: someone wrote since our GET. 409: a concurrent conditional write is in
            # flight. 404 on IfMatch: the object was deleted since our GET. All: start over.
            if not (code in _S3_CONFLICT_CODES or status in (409, 412)
                    or (etag is not None and (code in _S3_MISSING_CODES or status == 404))):
                raise LedgerError('%s: cannot write: %s (%s)' % (self.where, code or status, e))
        except BotoCoreError as e:
            raise LedgerError('%s: cannot write: %s' % (self.where, e))
        return False

    def _retry(self, attempt):
        """Count a lost conditional write and sleep before the next attempt."""
        self.ledger.conflicts += 1
        cap = min(self.ledger.backoff_cap, self.ledger.backoff_base * (2 ** attempt))
        time.sleep(random.uniform(0, cap))  # full jitter: contenders spread out

    def _gave_up(self, attempts):
        return LedgerError('%s: gave up after %d attempts: other writers kept changing the ledger between '
                           'our read and our conditional write' % (self.where, attempts))

    def update(self, fn):
        attempts = self.ledger.max_attempts
        for attempt in range(attempts):
            old, data, etag = self._get()
            new, changed = _apply(fn, old, data, self._validate)
            if not changed:
                return new, False
            if self._put(new, etag):
                return new, True
            self._retry(attempt)
        raise self._gave_up(attempts)

    def inspect(self, inspect):
        return inspect(self._get_bytes()[0])

    def replace(self, build, inspect):
        """As _FileDoc.replace; the old object is copied aside before the conditional PUT."""
        client = self.ledger.client()
        ClientError, BotoCoreError = self.ledger.errors()
        attempts = self.ledger.max_attempts
        for attempt in range(attempts):
            data, etag = self._get_bytes()
            current = inspect(data)
            new = build(current)
            if new is None:
                return current, None, None
            self._validate(new)
            aside = None
            if data is not None:
                aside = statefile.aside_path(self.key, _aside_tag(current)) + ('.%d' % (attempt + 1) if attempt else '')
                try:
                    client.put_object(Bucket=self.ledger.bucket, Key=aside, Body=data, IfNoneMatch='*')
                except (ClientError, BotoCoreError) as e:
                    raise LedgerError('%s: cannot keep the old ledger aside as %s: %s' % (self.where, aside, e))
                aside = 's3://%s/%s' % (self.ledger.bucket, aside)
            if self._put(new, etag):
                return current, new, aside
            self._retry(attempt)
        raise self._gave_up(attempts)


class S3Ledger(_Ledger):
    backend = 's3'

    def __init__(self, bucket, key, endpoint_url=None, region=None, cluster=None,
                 max_attempts=DEFAULT_S3_ATTEMPTS, backoff_base=0.05, backoff_cap=2.0):
        if not bucket:
            raise LedgerError('ipam.ledger.bucket: the s3 backend needs a bucket')
        if not key:
            raise LedgerError('ipam.ledger.key: the s3 backend needs a key')
        self.bucket = bucket
        self.key = key.lstrip('/')
        self.endpoint_url = endpoint_url
        self.region = region
        self.cluster = cluster
        self.max_attempts = max_attempts
        self.backoff_base = backoff_base
        self.backoff_cap = backoff_cap
        self.conflicts = 0   # conditional-write conflicts retried (diagnostics, tests)
        self._client = None
        self._errors = None
        stem = self.key[:-5] if self.key.endswith('.json') else self.key
        self.nodes_prefix = stem + '.d/nodes/'
        self.location = 's3://%s/%s' % (bucket, self.key)
        self._doc = _S3Doc(self, self.key, self._validate, lambda: empty_doc(cluster))

    def errors(self):
        self.client()
        return self._errors

    def client(self):
        if self._client is None:
            try:
                import boto3
                from botocore.config import Config
                from botocore.exceptions import BotoCoreError, ClientError
            except ImportError:
                raise LedgerError('the s3 ledger backend needs boto3 and botocore on the controller '
                                  '(pip install boto3)')
            kwargs = {'config': Config(retries={'mode': 'standard', 'max_attempts': 10})}
            if self.endpoint_url:
                kwargs['endpoint_url'] = self.endpoint_url
            if self.region:
                kwargs['region_name'] = self.region
            self._client = boto3.client('s3', **kwargs)
            self._errors = (ClientError, BotoCoreError)
        return self._client

    def node_doc_key(self, node):
        return self.nodes_prefix + _check_node_name(node) + '.json'

    def _node(self, node):
        key = self.node_doc_key(node)
        where = 's3://%s/%s' % (self.bucket, key)
        return _S3Doc(self, key, lambda d: validate_node_doc(d, where, node), lambda: empty_node_doc(node))

    def list_node_docs(self):
        client = self.client()
        names = []
        for page in client.get_paginator('list_objects_v2').paginate(Bucket=self.bucket, Prefix=self.nodes_prefix):
            for obj in page.get('Contents') or []:
                rest = obj['Key'][len(self.nodes_prefix):]
                if rest.endswith('.json') and '/' not in rest:
                    names.append(rest[:-5])
        return sorted(names)


def open_ledger(cfg, cluster=None, lock_timeout=DEFAULT_LOCK_TIMEOUT):
    """Open the ledger described by the normalized ``ipam.ledger`` dict.

    cluster: when given, a ledger that belongs to another cluster is refused, and an absent
    ledger reads as an empty document for this cluster.
    """
    cfg = cfg or {}
    backend = cfg.get('backend') or 'file'
    if backend == 'file':
        return FileLedger(cfg.get('path'), cluster=cluster, lock_timeout=lock_timeout)
    if backend == 's3':
        return S3Ledger(cfg.get('bucket'), cfg.get('key'), endpoint_url=cfg.get('endpoint_url'),
                        region=cfg.get('region'), cluster=cluster)
    raise LedgerError('ipam.ledger.backend: unknown backend %r (expected file or s3)' % (backend,))
