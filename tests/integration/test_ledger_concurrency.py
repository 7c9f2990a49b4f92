"""The ledger under concurrency and crashes, with real OS processes.

- 8 processes allocate at once against ONE ledger, each for its own slice of the fleet (like AWX
  job slices / --limit runs), for the file backend and for the s3 backend against moto in server
  mode on 127.0.0.1: every node gets a CIDR and no CIDR is handed out twice.
- kill -9 in the middle of ledger writes leaves a readable, valid ledger.

This file is also the worker script: `python test_ledger_concurrency.py worker|writer ...`.
"""
import ipaddress
import json
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
WORKERS = 8
NODES = 192                   # 24 per worker
BATCH = 6                     # each worker runs 4 ledger updates, so slices really interleave
KILL_NODES = 20000            # ~2 MB ledger: a write takes long enough to be hit by kill -9


# Workers run this file as a script, without tests/conftest.py: put the checkout's collection on the path.
sys.path.insert(0, os.path.join(ROOT, 'build', 'collections'))
from ansible_collections.podnet.fabric.plugins.plugin_utils import ledger  # noqa: E402 pylint: disable=wrong-import-position
from ansible_collections.podnet.fabric.plugins.plugin_utils import ipam_plan


def node_names(n=NODES):
    return ['node%03d' % i for i in range(1, n + 1)]


def make_model(ledger_cfg, n=NODES):
    # 10.244.0.0/16 mask 24 = 256 blocks for 192 nodes: tight enough that a lost update shows
    # up as a duplicate, not as a lucky miss.
    return {'cluster': {'name': 'lab', 'id': 0},
            'ipam': {'mode': 'cluster-pool', 'ledger': ledger_cfg,
                     'cluster_pool': {'ipv4': {'cidrs': ['10.244.0.0/16'], 'mask_size': 24},
                                      'ipv6': {'cidrs': ['fd00::/104'], 'mask_size': 120}}},
            'nodes': dict((n_, {'node_ip': None, 'labels': {}, 'pod_cidrs': []}) for n_ in node_names(n))}


# ------------------------------------------------------------------------------------------
# child processes


def worker_main(cfg_json, index, workers, go_file):
    cfg = json.loads(cfg_json)
    index, workers = int(index), int(workers)
    led = ledger.open_ledger(cfg, cluster='lab')
    model = make_model(cfg)
    mine = node_names()[index::workers]                 # an AWX-style slice
    sys.stdout.write('ready\n')
    sys.stdout.flush()
    while not os.path.exists(go_file):
        time.sleep(0.001)
    changed_updates = 0
    for i in range(0, len(mine), BATCH):
        batch = mine[i:i + BATCH]
        _doc, changed = led.update(lambda d, b=batch: ipam_plan.plan_cluster(model, d, b)[0])
        changed_updates += int(changed)
    sys.stdout.write(json.dumps({'worker': index, 'updates': changed_updates,
                                 'conflicts': getattr(led, 'conflicts', 0)}) + '\n')
    sys.stdout.flush()


def writer_main(path, crash):
    """Rewrite a big ledger forever (each update changes it). crash: none | mid-write | before-replace."""
    led = ledger.open_ledger({'backend': 'file', 'path': path})
    if crash == 'mid-write':
        real_write = os.write

        def half_write(fd, data):
            real_write(fd, bytes(data[:len(data) // 2]))
            os.kill(os.getpid(), signal.SIGKILL)
        os.write = half_write
    elif crash == 'before-replace':
        def die(*_a):
            os.kill(os.getpid(), signal.SIGKILL)
        os.replace = die

    def fn(doc):
        if not doc['nodes']:
            doc['cluster'] = 'lab'
            for i in range(KILL_NODES):
                doc['nodes']['node%05d' % i] = {
                    'ip': '192.168.%d.%d' % (i // 256, i % 256),
                    'cidrs': {'ipv4': ['10.%d.%d.0/24' % (i // 256, i % 256)], 'ipv6': []},
                    'pools': {}, 'allocated_at': 1}
        doc['identities']['counter'] = doc['identities'].get('counter', 0) + 1
        return doc
    while True:
        led.update(fn)
        sys.stdout.write('w\n')
        sys.stdout.flush()


# ------------------------------------------------------------------------------------------
# helpers for the tests


def _spawn(*args):
    return subprocess.Popen([sys.executable, os.path.abspath(__file__)] + [str(a) for a in args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _reap(procs):
    """End the children a failed test left running (ours, by PID)."""
    for p in procs:
        if p.poll() is None:
            p.kill()
            p.wait()
        for pipe in (p.stdout, p.stderr):
            pipe.close()


def run_slices(cfg, tmp_path):
    go = str(tmp_path / 'go')
    procs = []
    try:
        for i in range(WORKERS):
            procs.append(_spawn('worker', json.dumps(cfg), i, WORKERS, go))
        for p in procs:
            line = p.stdout.readline()
            assert line == 'ready\n', (line, p.stderr.read() if p.poll() is not None else '')
        open(go, 'w').close()                              # all 8 start at once
        results = []
        for p in procs:
            out, err = p.communicate(timeout=120)
            assert p.returncode == 0, err
            results.append(json.loads(out.strip().splitlines()[-1]))
        return results
    finally:
        _reap(procs)


def check_allocations(doc):
    assert sorted(doc['nodes']) == node_names(), 'every node got an allocation'
    seen = {}
    for fam in ('ipv4', 'ipv6'):
        for n, entry in doc['nodes'].items():
            cidrs = entry['cidrs'][fam]
            assert len(cidrs) == 1, (n, fam, cidrs)
            assert cidrs[0] not in seen, 'duplicate %s: %s and %s' % (cidrs[0], seen.get(cidrs[0]), n)
            seen[cidrs[0]] = n
    nets = sorted(ipaddress.ip_network(c) for c in seen if ':' not in c)
    assert all(not a.overlaps(b) for a, b in zip(nets, nets[1:]))
    assert nets[0] == ipaddress.ip_network('10.244.0.0/24')
    # the pool is used densely from the bottom: nothing lost, nothing skipped
    assert nets[-1] == ipaddress.ip_network('10.244.%d.0/24' % (NODES - 1))


# ------------------------------------------------------------------------------------------
# concurrency: file backend


def test_file_backend_8_processes_no_duplicates(tmp_path):
    cfg = {'backend': 'file', 'path': str(tmp_path / 'ledger' / 'lab.json'),
           'bucket': None, 'key': None, 'endpoint_url': None}
    results = run_slices(cfg, tmp_path)
    doc = ledger.open_ledger(cfg, cluster='lab').read()
    check_allocations(doc)
    assert doc['serial'] == sum(r['updates'] for r in results) == WORKERS * (NODES // WORKERS // BATCH)


# ------------------------------------------------------------------------------------------
# concurrency: s3 backend against moto in server mode


def _free_port():
    s = socket.socket()
    s.bind(('127.0.0.1', 0))
    port = s.getsockname()[1]
    s.close()
    return port


class _Linearizable:
    """WSGI wrapper that runs one request at a time.

    moto (5.2) does check If-Match / If-None-Match (412 PreconditionFailed), but as a plain
    check-then-put inside a threaded server: two PUTs carrying the same ETag can both pass the
    check and the second silently overwrites the first. Real S3 makes the conditional write
    atomic; serializing requests gives moto that same guarantee, so this test checks OUR
    protocol, not moto's thread safety.
    """

    def __init__(self, app):
        self.app = app
        self.lock = threading.Lock()

    def __call__(self, environ, start_response):
        with self.lock:
            return list(self.app(environ, start_response))


def start_moto(linearizable=True):
    from werkzeug.serving import make_server
    from moto.moto_server.werkzeug_app import (DomainDispatcherApplication, MotoRequestHandler,
                                               create_backend_app)
    app = DomainDispatcherApplication(create_backend_app)
    if linearizable:
        app = _Linearizable(app)
    port = _free_port()
    server = make_server('127.0.0.1', port, app, threaded=True, request_handler=MotoRequestHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    return server, 'http://127.0.0.1:%d' % port


def test_s3_backend_8_processes_no_duplicates(tmp_path, monkeypatch):
    import boto3
    for k, v in (('AWS_ACCESS_KEY_ID', 'testing'), ('AWS_SECRET_ACCESS_KEY', 'testing'),
                 ('AWS_DEFAULT_REGION', 'us-east-1')):
        monkeypatch.setenv(k, v)
    monkeypatch.delenv('AWS_PROFILE', raising=False)
    for k in ('HTTP_PROXY', 'HTTPS_PROXY', 'http_proxy', 'https_proxy'):
        monkeypatch.delenv(k, raising=False)              # loopback only
    server, url = start_moto()
    try:
        # moto keeps its state per process: start from a clean slate whatever ran before
        urllib.request.urlopen(urllib.request.Request(url + '/moto-api/reset', method='POST'),
                               timeout=10).read()
        s3 = boto3.client('s3', endpoint_url=url, region_name='us-east-1')
        s3.create_bucket(Bucket='podnet-ledger')
        cfg = {'backend': 's3', 'path': None, 'bucket': 'podnet-ledger', 'key': 'clusters/lab.json',
               'endpoint_url': url, 'region': 'us-east-1'}
        results = run_slices(cfg, tmp_path)
        doc = ledger.open_ledger(cfg, cluster='lab').read()
        check_allocations(doc)
        assert doc['serial'] == sum(r['updates'] for r in results) == WORKERS * (NODES // WORKERS // BATCH)
        conflicts = sum(r['conflicts'] for r in results)
        # the conditional-write path really was exercised (workers collided and retried)
        assert conflicts > 0, results
        print('s3: %d conditional-write conflicts retried by 8 workers' % conflicts)
    finally:
        server.shutdown()


# ------------------------------------------------------------------------------------------
# kill -9 during writes


def _read_valid(path):
    doc = ledger.open_ledger({'backend': 'file', 'path': path}, cluster='lab').read()
    assert len(doc['nodes']) == KILL_NODES
    with open(path) as f:
        assert json.load(f) == doc
    return doc


def _temps(path):
    d, base = os.path.split(path)
    return [n for n in os.listdir(d) if n.startswith('.' + base + '.') and n.endswith('.tmp')]


def test_kill_9_at_random_moments_leaves_a_valid_ledger(tmp_path):
    path = str(tmp_path / 'lab.json')
    rng = random.Random()
    counters = []
    torn = 0
    for _round in range(8):
        p = _spawn('writer', path, 'none')
        try:
            assert p.stdout.readline() == 'w\n', p.stderr.read()    # at least one full write done
            time.sleep(rng.uniform(0.0, 0.4))
            os.kill(p.pid, signal.SIGKILL)
            p.wait()
        finally:
            _reap([p])
        assert p.returncode == -signal.SIGKILL
        torn += bool(_temps(path))                               # killed with a write in flight
        doc = _read_valid(path)
        counters.append(doc['identities']['counter'])
    assert counters == sorted(counters) and counters[-1] > counters[0]
    # the next writer cleans up after the dead ones, and the lock is not stuck
    led = ledger.open_ledger({'backend': 'file', 'path': path})
    doc, changed = led.update(lambda d: dict(d, identities={'counter': -1}))
    assert changed and _temps(path) == []
    print('kill -9: %d of 8 kills landed while a temp file was being written' % torn)


def test_kill_9_mid_write_and_before_replace_keeps_previous_ledger(tmp_path):
    path = str(tmp_path / 'lab.json')
    p = _spawn('writer', path, 'none')
    try:
        assert p.stdout.readline() == 'w\n'
        os.kill(p.pid, signal.SIGKILL)
        p.wait()
    finally:
        _reap([p])
    before = open(path, 'rb').read()
    for crash in ('mid-write', 'before-replace'):
        p = _spawn('writer', path, crash)
        try:
            out, err = p.communicate(timeout=60)
        finally:
            _reap([p])
        assert p.returncode == -signal.SIGKILL, err
        assert out == ''                                         # it never completed a write
        assert len(_temps(path)) == 1                            # the crash left its temp file ...
        assert open(path, 'rb').read() == before                 # ... and the ledger untouched
        _read_valid(path)
    led = ledger.open_ledger({'backend': 'file', 'path': path})
    led.update(lambda d: d)
    assert _temps(path) == []


if __name__ == '__main__':
    if sys.argv[1] == 'worker':
        worker_main(*sys.argv[2:])
    elif sys.argv[1] == 'writer':
        writer_main(*sys.argv[2:])
    else:
        raise SystemExit('usage: %s worker|writer ...' % sys.argv[0])
