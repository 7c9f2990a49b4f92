"""Fleet benchmark: the controller side of a site run for 10 to 5,000 nodes, whole and in 4 AWX job
slices against one ledger (file and s3), and the same plays through ansible-playbook beside it.

Run: .venv/bin/python bench/fleet.py [--sizes 10,100,1000,5000] [--rounds 5] [--big-rounds R]
                                     [--ansible-sizes 10,100,1000] | --quick
Writes bench/results/fleet.json and prints the tables with the targets (issue 13, item 5), judged on the
controller pass below: its per-node cost flat within 2x from 10 to 5,000 nodes, and a 1,000-node pass
under 10 s. --quick (CI: proves the benchmark still runs, its figures mean nothing): 100 nodes, one
round, one configuration of each kind (QUICK), written to build/bench/fleet.quick.json. Exits non-zero
when something breaks (a child, the moto server, a failed action, a ledger that does not hold N
distinct non-overlapping CIDRs: exit 2) or, in real runs, when a target is missed (exit 1).

What one controller pass is (in-process, `pass` below), per run:
- validation: podnet.fabric.validate's ActionModule.run() itself, with the run's groups and hostvars
  (each host carries podnet_node_ip and, as group_vars/all gives them, the cluster keys);
- allocation: podnet.fabric.ipam_allocate's ActionModule.run() with the arguments roles/ipam passes
  (group, model: every node of the group the run sees), which opens the ledger, plans
  (plugin_utils/ipam_plan) under the ledger's lock or conditional write, and builds every node's lease
  and the node map;
- the cluster map: the same action in check mode, as roles/ipam tasks_from cluster_map reads the
  ledger again right before routing (a slice learns the peers other slices allocated meanwhile);
- the per-node parameter sets: what each node's modules get from those results in site.yml
  (ipam_node's lease, the routing module's arguments with the node map, the masquerade's), built in
  `node_params` below after the roles' Jinja. The node map is one object shared by every node's set,
  as Ansible's registered result is.
The action plugins run with a real Task and no connection (they never contact a node). The figure is
the controller's own cost: no inventory parsing, templating or forking (the ansible-playbook pass has
those). boto3 is imported before the pass starts (Ansible imports it in each worker the first time).

Beside the pass, not in it and not judged, per node (the same for every node of a run, so sampled):
- `payload`: the JSON of the node's module arguments (what Ansible ships to it), on up to --sample
  nodes. It holds the whole node map, so it grows with N per node (N^2 for the fleet) by nature: every
  node routes to every other node;
- `templating`: Ansible's own templating of those arguments on --template-sample nodes: the node tasks
  that take cluster-wide data (NODE_TASKS: ipam_node, routing, masquerade), as roles/ and site.yml
  write them, templated by ansible-core's Templar with the variables the node sees (role defaults, its
  host vars, site.yml's role vars, the registered ipam_allocation and ipam_cluster_map, localhost's
  podnet_model; hostvars is a plain dict here, not Ansible's lazy HostVars), after one untimed pass
  that compiles the templates. In a site run Ansible does this for every node, in its worker
  processes on the controller (and the role's argument validation renders routing_nodes once more).
  The routing module's argument is the node map itself, so this grows with N per node too; the
  figure says what Ansible spends on it (the fleet's CPU: N x per node).

Configurations, each in fresh processes (children of this script), interleaved in every round:
- whole/file, whole/s3: one process sees every host (cluster-pool IPAM, 10.0.0.0/8 mask 24, VXLAN);
- sliced/file, sliced/s3: 4 processes at once, each seeing only its slice's hosts as AWX job slicing
  gives them (module_utils/lab.awx_slices: slice n takes hosts[n-1::4]), all against ONE ledger. The
  processes import and build their inputs first, then start together; the wall time runs from that
  start to the last one's end. Afterwards the ledger must hold N distinct, non-overlapping CIDRs, each slice's leases
  must be what the ledger holds, and each slice reports how many nodes its node map held (the peers
  allocated before it: item 1 of the issue closes that gap with a peers pass);
- whole/file/kubernetes, sliced/file/kubernetes: kubernetes (host-scope) IPAM, each node's own
  podnet_pod_cidrs: validation compares every node's pod CIDRs and node IP with the others', and the
  masquerade's exclusion is every node's CIDRs;
- ansible/file, ansible/s3 (--ansible-sizes): `ansible-playbook` of a play on localhost with the same
  controller tasks as site.yml (validate; ipam_allocate, then the cluster map read, each with
  delegate_to localhost and run_once) over a generated inventory whose podnet_nodes hosts are never
  contacted; wall time and the process tree's peak RSS and CPU (wait4).
s3 is moto in server mode on 127.0.0.1, a child process of this script (ended by its PID), serving one
request at a time (see _Linearizable); each run uses its own key, each file run its own directory.

Per-node figures are the run's figure divided by N: wall time, CPU time (all processes of the run),
the Python heap peak (tracemalloc, in a second untimed pass of the same code against a private file
ledger: tracing slows the code down) and the growth of peak RSS during the timed pass. Every figure is
the median over the rounds, with min-max. "Flat within 2x": for every pair of sizes N1 < N2 the per-node
wall time at N2 is at most twice that at N1 (fixed costs make small fleets dearer per node, which
is not growth; `spread` is max/min over all sizes for the record).
"""
from __future__ import print_function

import argparse
import ctypes
import importlib
import ipaddress
import json
import os
import platform
import resource
import select
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import tracemalloc
import types

import _common  # first: makes ansible_collections.podnet.fabric importable (here and in each child)
from _common import BenchError

from ansible_collections.podnet.fabric.plugins.plugin_utils import ledger

GROUP = 'podnet_nodes'
CLUSTER = 'fleet'
POOL = '10.0.0.0/8'
MASK = 24
SLICES = 4
BUCKET = 'pfl-fleet'        # the lead's prefix for this bench: pfl
TMP_PREFIX = 'pfl-fleet-'
SIZES = (10, 100, 1000, 5000)
ANSIBLE_SIZES = (10, 100, 1000)
TARGET_FLAT = 2.0
TARGET_PASS_S = 10.0
TARGET_PASS_N = 1000
# One size, one round, and one configuration of each kind of run: whole and sliced, file and s3, both IPAM
# modes, ansible-playbook.
QUICK = {'sizes': (100,), 'ansible_sizes': (100,), 'rounds': 1,
         'configs': ('whole/file', 'sliced/s3', 'sliced/file/kubernetes', 'ansible/file')}
# <kind>/<backend>[/<ipam mode>]; cluster-pool unless named. kubernetes (host-scope) mode validates each
# node's own podnet_pod_cidrs against every other node's: file ledger only (the backend changes nothing there).
CONFIGS = ('whole/file', 'whole/s3', 'sliced/file', 'sliced/s3', 'whole/file/kubernetes', 'sliced/file/kubernetes')
ANSIBLE_CONFIGS = ('ansible/file', 'ansible/s3')
PLAY = """---
# bench/fleet.py: the controller half of playbooks/site.yml, no node contacted.
- name: Controller side of a site run
  hosts: localhost
  gather_facts: false
  tasks:
    - name: Validate and normalize the inventory
      podnet.fabric.validate:
        group: %(group)s

    - name: Allocate pod CIDRs in the ledger (as roles/ipam does)
      podnet.fabric.ipam_allocate:
        prune: false
        group: %(group)s
        model: "{{ podnet_model }}"
      delegate_to: localhost
      run_once: true
      register: ipam_allocation

    - name: Read the cluster map from the ledger (as roles/ipam tasks_from cluster_map does)
      podnet.fabric.ipam_allocate:
        group: %(group)s
        model: "{{ podnet_model }}"
      delegate_to: localhost
      run_once: true
      check_mode: true
      register: ipam_cluster_map
"""


# ---------------------------------------------------------------- the fleet's inventory

def host_names(n):
    return ['node%d' % i for i in range(1, n + 1)]


def node_ip(i):
    """Underlay addresses outside the pod pool: 172.16.0.1 .. (250 a /24)."""
    return '172.16.%d.%d' % ((i - 1) // 250, (i - 1) % 250 + 1)


def slice_hosts(hosts, k, count=SLICES):
    """The hosts of slice k (0-based) of an AWX job sliced `count` ways (lab.awx_slices, which the slices
    lab test uses too), from the inventory as `ansible-inventory --list` gives it."""
    listed = {'_meta': {'hostvars': dict((h, {}) for h in hosts)}, GROUP: {'hosts': list(hosts)}}
    return _common.lab_utils.awx_slices(listed, GROUP, count)[k][1]


def pod_cidr(i):
    """kubernetes mode: node i's own pod CIDR (podnet_pod_cidrs), a /MASK of POOL."""
    return '10.%d.%d.0/%d' % ((i - 1) // 256, (i - 1) % 256, MASK)


def config_of(name):
    """(kind, backend, ipam mode) of a configuration name."""
    parts = name.split('/')
    return parts[0], parts[1], parts[2] if len(parts) > 2 else 'cluster-pool'


def cluster_vars(ledger_cfg, mode='cluster-pool'):
    ipam = {'mode': mode, 'ledger': dict(ledger_cfg)}
    if mode == 'kubernetes':
        ipam['kubernetes'] = {'cluster_cidrs': [POOL]}
    else:
        ipam['cluster_pool'] = {'ipv4': {'cidrs': [POOL], 'mask_size': MASK}}
    return {'podnet_cluster': {'name': CLUSTER, 'id': 0}, 'podnet_ipam': ipam,
            'podnet_routing': {'mode': 'tunnel', 'tunnel': {'protocol': 'vxlan'}}}


def own_vars(host, mode):
    i = int(host[4:])
    out = {'podnet_node_ip': node_ip(i)}
    if mode == 'kubernetes':
        out['podnet_pod_cidrs'] = [pod_cidr(i)]
    return out


def hostvars_for(hosts, ledger_cfg, mode):
    """What the validate action reads from hostvars: each host's own keys plus group_vars/all."""
    cvars = cluster_vars(ledger_cfg, mode)
    return dict((h, dict(cvars, **own_vars(h, mode))) for h in hosts)


def ledger_cfg(backend, where, url=None):
    if backend == 'file':
        return {'backend': 'file', 'path': os.path.join(where, 'ledger.json')}
    return {'backend': 's3', 'bucket': BUCKET, 'key': where, 'endpoint_url': url, 'region': 'us-east-1'}


# ---------------------------------------------------------------- one controller pass (child side)

def _action(cls, args, check=False):
    """An action plugin as Ansible's TaskExecutor builds it, for a task that never connects."""
    from ansible.playbook.task import Task
    task = Task()
    task.args = args
    task.check_mode = check
    conn = types.SimpleNamespace(_shell=types.SimpleNamespace(tmpdir=None))
    return cls(task, conn, None, None, None, None)


def node_params(model, alloc, cmap, node):
    """The arguments node `node`'s modules receive from the controller's results in site.yml, after
    the roles' Jinja: roles/ipam (ipam_node, the lease from the allocation), roles/routing routes.yml
    (routing, with the node map site.yml passes as routing_nodes: the cluster map's) and masquerade.yml."""
    routing = model['routing']
    nodes = cmap['nodes']
    me = model['nodes'][node]
    params = {'ipam_node': {'lease': alloc['allocations'][node], 'path': '/var/lib/podnet/ipam/lease.json'}}
    if routing['routes']:
        params['routing'] = {
            'mode': routing['mode'], 'node': node, 'node_ip': me['node_ip'], 'node_device': me['node_device'],
            'nodes': nodes, 'tunnel': routing['tunnel'],
            'native': {'auto_direct_node_routes': routing['native']['auto_direct_node_routes'],
                       'skip_unreachable': routing['native']['skip_unreachable']},
            'mtu': routing['mtu']}
        own = (nodes.get(node) or {'pod_cidrs': {'ipv4': []}})['pod_cidrs']['ipv4']
        ipam = model['ipam']
        if routing['native']['ipv4_cidr']:
            exclude = [routing['native']['ipv4_cidr']]
        elif ipam['mode'] == 'cluster-pool' and ipam['cluster_pool']['ipv4']:
            exclude = ipam['cluster_pool']['ipv4']['cidrs']
        else:       # site.yml passes the cluster map's cluster_pod_cidrs (built once by ipam_allocate)
            exclude = cmap['cluster_pod_cidrs']['ipv4']
        params['masquerade'] = {'state': 'present' if routing['masquerade'] and own else 'absent',
                                'table': 'podnet', 'pod_cidrs': own, 'exclude': exclude,
                                'node_ip': me['node_ip']}
    return params


def controller_pass(hosts, hostvars):
    """validate -> ipam_allocate -> the cluster map -> every node's parameter sets;
    (model, alloc, cluster map, params, seconds)."""
    from ansible_collections.podnet.fabric.plugins.action import ipam_allocate, validate
    t0 = time.perf_counter()
    res = _action(validate.ActionModule, {'group': GROUP}).run(
        task_vars={'groups': {GROUP: list(hosts)}, 'hostvars': hostvars})
    if res.get('failed'):
        raise BenchError('validate: %s' % res.get('msg'))
    model = res['model']
    t1 = time.perf_counter()
    task_vars = {'groups': {GROUP: list(hosts)}, 'ansible_play_hosts_all': list(hosts),
                 'hostvars': {'localhost': {'podnet_model': model}}}
    alloc = _action(ipam_allocate.ActionModule, {'prune': False, 'group': GROUP, 'model': model}).run(
        task_vars=task_vars)
    if alloc.get('failed'):
        raise BenchError('ipam_allocate: %s' % alloc.get('msg'))
    t2 = time.perf_counter()
    cmap = _action(ipam_allocate.ActionModule, {'group': GROUP, 'model': model}, check=True).run(task_vars=task_vars)
    if cmap.get('failed') or cmap.get('changed'):
        raise BenchError('the cluster map read: %s' % cmap.get('msg'))
    t3 = time.perf_counter()
    params = dict((n, node_params(model, alloc, cmap, n)) for n in hosts)
    t4 = time.perf_counter()
    return model, alloc, cmap, params, {'validate_s': t1 - t0, 'allocate_s': t2 - t1, 'cluster_map_s': t3 - t2,
                                        'params_s': t4 - t3, 'pass_s': t4 - t0}


# The node tasks that take cluster-wide data: (role, tasks file, module).
NODE_TASKS = (('ipam', 'main.yml', 'podnet.fabric.ipam_node'),
              ('routing', 'routes.yml', 'podnet.fabric.routing'),
              ('routing', 'masquerade.yml', 'podnet.fabric.masquerade'))


def _find_task(items, module, scope):
    """(module arguments, variables of the enclosing blocks and the task) of the first task calling
    `module` in a task list, or None."""
    for item in items or []:
        inner = dict(scope)
        inner.update(item.get('vars') or {})
        if module in item:
            return item[module], inner
        found = _find_task(item.get('block'), module, inner)
        if found:
            return found
    return None


class RoleTemplating(object):
    """The NODE_TASKS' arguments as written in roles/ and playbooks/site.yml, templated per node with
    ansible-core's Templar (as its TaskExecutor templates a task's arguments for each host)."""

    def __init__(self):
        from ansible.parsing.dataloader import DataLoader
        self.loader = DataLoader()

        def load(rel):      # trusted: these files are the playbook's own, as Ansible trusts them
            return self.loader.load_from_file(os.path.join(_common.ROOT, rel), trusted_as_template=True)
        self.base = {}
        for role in sorted(set(t[0] for t in NODE_TASKS)):
            self.base.update(load('roles/%s/defaults/main.yml' % role) or {})
        roles = ['podnet.fabric.' + t[0] for t in NODE_TASKS]
        for play in load('playbooks/site.yml'):       # the vars site.yml gives these roles
            for entry in play.get('tasks') or []:
                if (entry.get('ansible.builtin.import_role') or {}).get('name') in roles:
                    self.base.update(entry.get('vars') or {})
        self.tasks = []
        for role, name, module in NODE_TASKS:
            found = _find_task(load('roles/%s/tasks/%s' % (role, name)), module, {})
            if found is None:
                raise BenchError('roles/%s/tasks/%s: no %s task' % (role, name, module))
            self.tasks.append((module, found[0], found[1]))

    def node(self, node, host_vars, model, alloc, cmap):
        """{module: (wall s, CPU s)} of templating each task's arguments for `node`."""
        from ansible.template import Templar
        out = {}
        for module, args, scope in self.tasks:
            variables = dict(self.base)
            variables.update(host_vars)
            variables.update(inventory_hostname=node, ipam_allocation=alloc, ipam_cluster_map=cmap,
                             hostvars={'localhost': {'podnet_model': model}})
            variables.update(scope)
            t0, c0 = time.perf_counter(), time.process_time()
            Templar(loader=self.loader, variables=variables).template(args)
            out[module] = (time.perf_counter() - t0, time.process_time() - c0)
        return out


def _maxrss_kib():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def _wait_for(line):
    got = sys.stdin.readline().strip()
    if got != line:
        raise BenchError('child: expected %r from the parent, got %r' % (line, got))


def child(args):
    """One process of a run: build the inputs, say ready, run the timed pass on 'go', report, then
    (on 'heap') the traced pass against a private file ledger, report, exit."""
    from ansible_collections.podnet.fabric.plugins.plugin_utils import ipam_controller as ctl
    cfg = json.loads(args.ledger)
    # Imported before the clock starts (see the docstring).
    for name in ['ansible_collections.podnet.fabric.plugins.action.' + a for a in ('validate', 'ipam_allocate')] + (
            ['boto3'] if cfg['backend'] == 's3' else []):
        importlib.import_module(name)
    hosts = host_names(args.nodes)
    if args.slice is not None:
        hosts = slice_hosts(hosts, args.slice, args.slices)
    hostvars = hostvars_for(hosts, cfg, args.mode)
    opened = []
    real_open = ctl.open_ledger

    def spy(model):       # keeps the action's ledger object: its s3 conflict count is reported
        led = real_open(model)
        opened.append(led)
        return led
    ctl.open_ledger = spy
    rss_base = _maxrss_kib()
    print('ready', flush=True)
    _wait_for('go')

    t_go, c0 = time.monotonic(), time.process_time()
    model, alloc, cmap, params, times = controller_pass(hosts, hostvars)
    t_end, cpu = time.monotonic(), time.process_time() - c0
    rss_peak = _maxrss_kib()

    sample = [hosts[i * len(hosts) // min(args.sample, len(hosts))] for i in range(min(args.sample, len(hosts)))]
    t0 = time.perf_counter()
    sizes = [len(json.dumps({'ANSIBLE_MODULE_ARGS': a})) for n in sample for a in params[n].values()]
    payload_s = (time.perf_counter() - t0) / len(sample)
    templating = RoleTemplating()
    tsample = sample[:max(1, args.template_sample)]
    templating.node(tsample[0], hostvars[tsample[0]], model, alloc, cmap)     # compiles the templates
    per_task = [templating.node(n, hostvars[n], model, alloc, cmap) for n in tsample]
    modules = [t[0] for t in templating.tasks]
    out = dict(times, t_go=t_go, t_end=t_end, cpu_s=cpu, nodes=len(hosts), rss_base_kib=rss_base,
               rss_peak_kib=rss_peak, map_nodes=len(cmap['nodes']), changed=alloc['changed'],
               serial=alloc['ledger']['serial'], conflicts=sum(getattr(led, 'conflicts', 0) for led in opened),
               payload_bytes=sum(sizes) / len(sample), payload_s=payload_s,
               templating_s=sum(sum(w for w, _c in t.values()) for t in per_task) / len(tsample),
               templating_cpu_s=sum(sum(c for _w, c in t.values()) for t in per_task) / len(tsample),
               templating_by_task_s=dict((m, sum(t[m][0] for t in per_task) / len(tsample)) for m in modules),
               allocations=dict((n, (alloc['allocations'][n] or {}).get('cidrs', {}).get('ipv4')) for n in hosts))
    print(json.dumps(out), flush=True)

    _wait_for('heap')
    scratch = tempfile.mkdtemp(prefix=TMP_PREFIX + 'heap-', dir=args.scratch)
    try:
        hv = hostvars_for(hosts, ledger_cfg('file', scratch), args.mode)
        tracemalloc.start()
        controller_pass(hosts, hv)
        _cur, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    print(json.dumps({'heap_peak_bytes': peak}), flush=True)
    return 0


# ---------------------------------------------------------------- the s3 endpoint (a child process)

class _Linearizable:
    """WSGI wrapper that serves one request at a time.

    moto (5.x) checks If-Match / If-None-Match, but as check-then-put inside a threaded server: two
    PUTs with the same ETag can both pass and the second silently overwrites the first. Real S3
    makes the conditional write atomic; serializing the requests gives moto that guarantee, so the
    sliced runs check the ledger's protocol, not moto's thread safety (as
    tests/integration/test_ledger_concurrency.py does)."""

    def __init__(self, app):
        self.app = app
        self.lock = threading.Lock()

    def __call__(self, environ, start_response):
        with self.lock:
            return list(self.app(environ, start_response))


def moto_server():
    import logging
    logging.getLogger('werkzeug').setLevel(logging.ERROR)     # no line per request
    from werkzeug.serving import make_server
    from moto.moto_server.werkzeug_app import DomainDispatcherApplication, MotoRequestHandler, create_backend_app
    app = _Linearizable(DomainDispatcherApplication(create_backend_app))
    server = make_server('127.0.0.1', 0, app, threaded=True, request_handler=MotoRequestHandler)
    print(json.dumps({'port': server.port}), flush=True)
    server.serve_forever()
    return 0


def use_s3_env():
    """This process and its children: moto's dummy credentials, loopback without a proxy, no instance
    metadata lookups."""
    e = os.environ
    e.update(AWS_ACCESS_KEY_ID='testing', AWS_SECRET_ACCESS_KEY='testing', AWS_DEFAULT_REGION='us-east-1',
             AWS_EC2_METADATA_DISABLED='true', NO_PROXY='127.0.0.1', no_proxy='127.0.0.1')
    for k in ('AWS_PROFILE', 'AWS_SESSION_TOKEN', 'HTTP_PROXY', 'HTTPS_PROXY', 'http_proxy', 'https_proxy'):
        e.pop(k, None)


def _die_with_parent():
    """preexec_fn: the child gets SIGTERM if this script dies without ending it (prctl PDEATHSIG)."""
    try:
        ctypes.CDLL('libc.so.6', use_errno=True).prctl(1, signal.SIGTERM)
    except OSError:  # pragma: no cover - not glibc
        pass


class Moto(object):
    """moto_server() in a child process we own; stop() ends it by its PID."""

    def __init__(self):
        self.proc = subprocess.Popen([sys.executable, os.path.abspath(__file__), '--moto-server'],
                                     stdout=subprocess.PIPE, universal_newlines=True,
                                     preexec_fn=_die_with_parent)
        ready, _w, _x = select.select([self.proc.stdout], [], [], 60)
        line = self.proc.stdout.readline() if ready else ''
        if not line:
            self.stop()
            raise BenchError('the moto server did not start (rc %s)' % self.proc.poll())
        self.url = 'http://127.0.0.1:%d' % json.loads(line)['port']
        import boto3
        self.s3 = boto3.client('s3', endpoint_url=self.url, region_name='us-east-1')
        self.s3.create_bucket(Bucket=BUCKET)

    def delete(self, key):
        self.s3.delete_object(Bucket=BUCKET, Key=key)

    def stop(self):
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)


# ---------------------------------------------------------------- runs (parent side)

def check_ledger(doc, hosts, reported, where, mode):
    """The ledger holds exactly `hosts`, each with its own underlay IP and one /MASK inside POOL (in
    kubernetes mode: its podnet_pod_cidrs), all distinct and non-overlapping, and each process's leases
    are what the ledger holds."""
    entries = doc.get('nodes') or {}
    problems = []
    if set(entries) != set(hosts):
        problems.append('nodes: %d in the ledger, %d in the inventory (missing %s, extra %s)' % (
            len(entries), len(hosts), sorted(set(hosts) - set(entries))[:5], sorted(set(entries) - set(hosts))[:5]))
    pool = ipaddress.ip_network(POOL)
    nets = []
    for h, e in entries.items():
        v4 = (e.get('cidrs') or {}).get('ipv4') or []
        if len(v4) != 1:
            problems.append('%s: %d ipv4 CIDRs' % (h, len(v4)))
            continue
        net = ipaddress.ip_network(v4[0])
        if net.prefixlen != MASK or not net.subnet_of(pool):
            problems.append('%s: %s is not a /%d of %s' % (h, net, MASK, POOL))
        if mode == 'kubernetes' and h in hosts and v4 != [pod_cidr(int(h[4:]))]:
            problems.append('%s: %s is not its podnet_pod_cidrs' % (h, v4))
        if h in hosts and e.get('ip') != node_ip(int(h[4:])):
            problems.append('%s: ip %s' % (h, e.get('ip')))
        nets.append((net, h))
    nets.sort()
    for (a, ha), (b, hb) in zip(nets, nets[1:]):
        if a.overlaps(b):
            problems.append('%s (%s) overlaps %s (%s)' % (a, ha, b, hb))
    for h, cidrs in reported.items():
        held = ((entries.get(h) or {}).get('cidrs') or {}).get('ipv4')
        if cidrs != held:
            problems.append('%s: its run got %s, the ledger holds %s' % (h, cidrs, held))
    if problems:
        more = ' ...' if len(problems) > 10 else ''
        raise BenchError('%s: the ledger is wrong: %s%s' % (where, '; '.join(problems[:10]), more))
    return len(set(n for n, _h in nets))


def _readline(proc, what, timeout=1800):
    ready, _w, _x = select.select([proc.stdout], [], [], timeout)
    line = proc.stdout.readline() if ready else ''
    if not line:
        raise BenchError('%s: no answer (exit %s; its error is above)' % (what, proc.poll()))
    return line


def run_processes(n, cfg, mode, slices, scratch, sample, template_sample, env):
    """One in-process run: 1 process (whole) or `slices` processes (sliced) started together."""
    children = []
    ks = [None] if not slices else list(range(slices))
    try:
        for k in ks:
            argv = [sys.executable, os.path.abspath(__file__), '--child', '--nodes', str(n), '--mode', mode,
                    '--ledger', json.dumps(cfg), '--scratch', scratch, '--sample', str(sample),
                    '--template-sample', str(template_sample)]
            if k is not None:
                argv += ['--slice', str(k), '--slices', str(slices)]
            children.append(subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                             universal_newlines=True, env=env, preexec_fn=_die_with_parent))
        for i, p in enumerate(children):
            if _readline(p, 'child %d' % i).strip() != 'ready':
                raise BenchError('child %d: not ready' % i)
        t0 = time.monotonic()
        for p in children:
            p.stdin.write('go\n')
            p.stdin.flush()
        results = [json.loads(_readline(p, 'child %d' % i)) for i, p in enumerate(children)]
        for p in children:
            p.stdin.write('heap\n')
            p.stdin.flush()
        for i, p in enumerate(children):
            results[i].update(json.loads(_readline(p, 'child %d' % i)))
        for i, p in enumerate(children):
            if p.wait(timeout=60) != 0:
                raise BenchError('child %d exited %d' % (i, p.returncode))
    finally:
        for p in children:
            if p.poll() is None:
                os.kill(p.pid, signal.SIGTERM)
                p.wait(timeout=10)
    wall = max(r['t_end'] for r in results) - t0
    return wall, results


def summarize_processes(n, wall, results, doc_distinct):
    def one(key):       # the slowest process's figure
        return max(r[key] for r in results)
    row = dict(('templating_ms_%s' % m.split('.')[-1], statistics.mean(r['templating_by_task_s'][m] for r in results) * 1e3)
               for m in results[0]['templating_by_task_s'])
    row.update({
        'wall_s': wall,
        'per_node_ms': wall / n * 1e3,
        'cpu_per_node_ms': sum(r['cpu_s'] for r in results) / n * 1e3,
        'validate_s': one('validate_s'), 'allocate_s': one('allocate_s'), 'cluster_map_s': one('cluster_map_s'),
        'params_s': one('params_s'),
        'heap_per_node_kib': sum(r['heap_peak_bytes'] for r in results) / n / 1024.0,
        'heap_peak_mib': sum(r['heap_peak_bytes'] for r in results) / 2.0 ** 20,
        'rss_growth_per_node_kib': sum(r['rss_peak_kib'] - r['rss_base_kib'] for r in results) / float(n),
        'rss_peak_mib': one('rss_peak_kib') / 1024.0,
        'payload_kib_per_node': statistics.mean(r['payload_bytes'] for r in results) / 1024.0,
        'payload_ms_per_node': statistics.mean(r['payload_s'] for r in results) * 1e3,
        'templating_ms_per_node': statistics.mean(r['templating_s'] for r in results) * 1e3,
        'templating_cpu_ms_per_node': statistics.mean(r['templating_cpu_s'] for r in results) * 1e3,
        # the fleet's: every node's arguments templated once (CPU, spread over Ansible's forks)
        'templating_fleet_cpu_s': statistics.mean(r['templating_cpu_s'] for r in results) * n,
        'map_nodes_min': min(r['map_nodes'] for r in results),
        'map_nodes_max': max(r['map_nodes'] for r in results),
        'conflicts': sum(r['conflicts'] for r in results),
        'ledger_serial': max(r['serial'] for r in results),
        'distinct_cidrs': doc_distinct,
    })
    return row


def write_ansible_inputs(d, n, cfg):
    """A generated inventory (localhost + n never-contacted nodes), group_vars/all and the play."""
    os.makedirs(os.path.join(d, 'group_vars'), exist_ok=True)
    hosts = dict((h, own_vars(h, 'cluster-pool')) for h in host_names(n))
    inv = {'all': {'hosts': {'localhost': {'ansible_connection': 'local',
                                           'ansible_python_interpreter': os.path.join(_common.VENV_BIN, 'python')}},
                   'children': {GROUP: {'hosts': hosts}}}}
    with open(os.path.join(d, 'inventory.json'), 'w') as f:
        json.dump(inv, f)
    with open(os.path.join(d, 'group_vars', 'all.json'), 'w') as f:
        json.dump(cluster_vars(cfg), f)
    with open(os.path.join(d, 'controller.yml'), 'w') as f:
        f.write(PLAY % {'group': GROUP})
    return os.path.join(d, 'inventory.json'), os.path.join(d, 'controller.yml')


def run_ansible(n, cfg, d, env):
    inventory, play = write_ansible_inputs(d, n, cfg)
    argv = [os.path.join(_common.VENV_BIN, 'ansible-playbook'), '-i', inventory, play]
    out = open(os.path.join(d, 'ansible.log'), 'w+')
    t0 = time.monotonic()
    proc = subprocess.Popen(argv, cwd=_common.ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
                            preexec_fn=_die_with_parent)
    _pid, status, ru = os.wait4(proc.pid, 0)
    wall = time.monotonic() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    out.seek(0)
    log = out.read()
    out.close()
    if proc.returncode != 0:
        sys.stderr.write(log[-4000:])
        raise BenchError('ansible-playbook (%d hosts) failed (rc %d)' % (n, proc.returncode))
    return {'wall_s': wall, 'per_node_ms': wall / n * 1e3,
            'cpu_per_node_ms': (ru.ru_utime + ru.ru_stime) / n * 1e3, 'rss_peak_mib': ru.ru_maxrss / 1024.0}


def stats(values):
    return {'median': statistics.median(values), 'min': min(values), 'max': max(values), 'n': len(values)}


def flatness(per_node):
    """(growth, spread) of {N: per-node figure}: growth = the largest per_node(N2)/per_node(N1) over
    N1 < N2 (at most 1 when the cost per node only falls), spread = max/min."""
    sizes = sorted(per_node)
    growth = max([per_node[b] / per_node[a] for i, a in enumerate(sizes) for b in sizes[i + 1:]] or [1.0])
    return growth, max(per_node.values()) / min(per_node.values())


def run_round(r, sizes, ansible_sizes, configs, big_rounds, tmp, moto, args, samples):
    for n in sizes:
        if n == max(sizes) and r >= big_rounds:
            continue
        todo = [c for c in configs if not c.startswith('ansible/') or n in ansible_sizes]
        for name in todo:
            kind, backend, mode = config_of(name)
            if backend == 's3' and moto is None:
                continue
            where = os.path.join(tmp, 'r%d-%s-%d' % (r, name.replace('/', '-'), n))
            os.makedirs(where)
            key = 'fleet/r%d/%s/%d.json' % (r, kind, n)
            cfg = ledger_cfg(backend, where) if backend == 'file' else ledger_cfg('s3', key, moto.url)
            env = _common.env()
            hosts = host_names(n)
            if kind == 'ansible':
                row = run_ansible(n, cfg, where, env)
                reported = {}
            else:
                wall, results = run_processes(n, cfg, mode, SLICES if kind == 'sliced' else 0, tmp,
                                              args.sample, args.template_sample, env)
                reported = {}
                for res in results:
                    reported.update(res['allocations'])
            doc = ledger.open_ledger(cfg, cluster=CLUSTER).read()
            distinct = check_ledger(doc, hosts, reported, '%s %d nodes round %d' % (name, n, r + 1), mode)
            if kind != 'ansible':
                row = summarize_processes(n, wall, results, distinct)
            row['distinct_cidrs'] = distinct
            samples.setdefault(name, {}).setdefault(n, []).append(row)
            print('  round %d  %-22s %5d nodes  %7.3f s  %7.3f ms/node%s' % (
                r + 1, name, n, row['wall_s'], row['per_node_ms'],
                ('  (map held %d-%d nodes, %d s3 conflicts)' % (row['map_nodes_min'], row['map_nodes_max'],
                                                                row['conflicts']) if kind == 'sliced' else '')),
                flush=True)
            shutil.rmtree(where, ignore_errors=True)
            if backend == 's3':
                moto.delete(key)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--sizes', default=','.join(map(str, SIZES)))
    ap.add_argument('--ansible-sizes', default=','.join(map(str, ANSIBLE_SIZES)))
    ap.add_argument('--rounds', type=int, default=5)
    ap.add_argument('--big-rounds', type=int, help='rounds for the largest size (default: --rounds)')
    ap.add_argument('--sample', type=int, default=20, help='nodes whose module arguments are serialized')
    ap.add_argument('--template-sample', type=int, default=2, help='nodes whose module arguments Ansible templates')
    ap.add_argument('--no-s3', action='store_true', help='file ledger only')
    ap.add_argument('--quick', action='store_true', help='%s nodes, ansible at %s, %d round, results in build/bench/'
                    % (QUICK['sizes'], QUICK['ansible_sizes'], QUICK['rounds']))
    ap.add_argument('--out', help='default: bench/results/fleet.json (--quick: build/bench/fleet.quick.json)')
    ap.add_argument('--lab', type=int, metavar='N',
                    help='instead: an N-node namespace lab converged whole, then in --lab-slices AWX slices at once + '
                         'peers.yml, verify.yml pod to pod after each (bench/_fleet_lab.py; bench/results/fleet_lab.json)')
    ap.add_argument('--lab-slices', type=int, default=SLICES)
    ap.add_argument('--child', action='store_true', help=argparse.SUPPRESS)
    ap.add_argument('--moto-server', action='store_true', help=argparse.SUPPRESS)
    ap.add_argument('--nodes', type=int, help=argparse.SUPPRESS)
    ap.add_argument('--slice', type=int, help=argparse.SUPPRESS)
    ap.add_argument('--slices', type=int, default=SLICES, help=argparse.SUPPRESS)
    ap.add_argument('--mode', default='cluster-pool', help=argparse.SUPPRESS)
    ap.add_argument('--ledger', help=argparse.SUPPRESS)
    ap.add_argument('--scratch', help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.moto_server:
        return moto_server()
    if args.child:
        return child(args)
    if args.lab:
        import _fleet_lab
        prov = _common.provenance()
        doc = dict(_fleet_lab.run_lab(args.lab, args.lab_slices), benchmark='fleet_lab', provenance=prov)
        _common.write_json(args.out or _common.results_path('fleet_lab', False), doc)
        return 0
    sizes = sorted(int(x) for x in args.sizes.split(',') if x)
    ansible_sizes = sorted(int(x) for x in args.ansible_sizes.split(',') if x)
    rounds = args.rounds
    if args.quick:
        sizes, ansible_sizes, rounds = list(QUICK['sizes']), list(QUICK['ansible_sizes']), QUICK['rounds']
    if not set(ansible_sizes) <= set(sizes):
        raise BenchError('--ansible-sizes %s: each must be one of --sizes %s' % (ansible_sizes, sizes))
    big_rounds = min(rounds, args.big_rounds or rounds)
    out_path = args.out or _common.results_path('fleet', args.quick)
    prov = _common.provenance()
    t_start = time.monotonic()

    use_s3_env()
    tmp = tempfile.mkdtemp(prefix=TMP_PREFIX)
    moto = None
    samples = {}
    try:
        if not args.no_s3:
            moto = Moto()
        for r in range(rounds):
            run_round(r, sizes, ansible_sizes, QUICK['configs'] if args.quick else CONFIGS + ANSIBLE_CONFIGS,
                      big_rounds, tmp, moto, args, samples)
    finally:
        if moto is not None:
            moto.stop()
        shutil.rmtree(tmp, ignore_errors=True)

    results = {}
    for name, by_n in samples.items():
        results[name] = {}
        for n, rows in sorted(by_n.items()):
            results[name][n] = dict((k, stats([row[k] for row in rows])) for k in rows[0])
    checks = {}
    for name, by_n in results.items():
        per_node = dict((n, row['per_node_ms']['median']) for n, row in by_n.items())
        growth, spread = flatness(per_node)
        walls = sorted((n, row['wall_s']['median']) for n, row in by_n.items())
        entry = {'growth': growth, 'spread': spread, 'flat_ok': growth <= TARGET_FLAT,
                 # what one more node costs between two sizes: the per-node cost without the fixed costs
                 'marginal_ms_per_node': dict(('%d-%d' % (a, b), (tb - ta) / (b - a) * 1e3)
                                              for (a, ta), (b, tb) in zip(walls, walls[1:]))}
        if all('templating_ms_per_node' in row for row in by_n.values()):
            # for the record, not judged: what Ansible spends per node on arguments that hold the node map
            entry['templating_growth'] = flatness(dict((n, row['templating_ms_per_node']['median'])
                                                       for n, row in by_n.items()))[0]
        if TARGET_PASS_N in by_n:
            entry['pass_%d_s' % TARGET_PASS_N] = by_n[TARGET_PASS_N]['wall_s']['median']
            entry['pass_ok'] = entry['pass_%d_s' % TARGET_PASS_N] < TARGET_PASS_S
        checks[name] = entry
    report(results, checks, sizes, rounds, big_rounds, args, prov)

    judged = [c.get(k) for c in checks.values() for k in ('flat_ok', 'pass_ok') if k in c]
    doc = {'benchmark': 'fleet', 'quick': args.quick, 'sizes': sizes, 'ansible_sizes': ansible_sizes,
           'rounds': rounds, 'big_rounds': big_rounds, 'slices': SLICES, 'sample': args.sample,
           'config': {'cluster_pool': '%s mask %d' % (POOL, MASK), 'routing': 'tunnel (vxlan)',
                      's3': 'moto server on 127.0.0.1, one request at a time' if moto else None},
           'targets': {'flat_within': TARGET_FLAT, 'pass_s': TARGET_PASS_S, 'pass_nodes': TARGET_PASS_N},
           'method': 'each round runs every configuration and size once, interleaved, each in fresh '
                     'processes; figures are medians over the rounds with min and max (see bench/fleet.py)',
           'results': dict((name, dict((str(n), row) for n, row in by_n.items())) for name, by_n in results.items()),
           'checks': checks, 'elapsed_s': time.monotonic() - t_start,
           'ok': bool(judged) and all(judged) if not args.quick else True}
    doc.update(prov)
    doc['machine']['loadavg_at_end'] = [round(x, 2) for x in os.getloadavg()]
    _common.write_json(out_path, _rounded(doc))
    return 0 if doc['ok'] else 1


def _rounded(value):
    if isinstance(value, float):
        return round(value, 4)
    if isinstance(value, dict):
        return dict((k, _rounded(v)) for k, v in value.items())
    if isinstance(value, list):
        return [_rounded(v) for v in value]
    return value


def report(results, checks, sizes, rounds, big_rounds, args, prov):
    print('\nFleet benchmark%s: %s nodes, %d rounds%s (medians, min-max), %d slices, Python %s, nproc %d, commit %s'
          % (' (quick)' if args.quick else '', ', '.join(map(str, sizes)), rounds,
             ' (%d at %d nodes)' % (big_rounds, max(sizes)) if big_rounds < rounds else '', SLICES,
             platform.python_version(), prov['machine']['nproc'], (prov['git']['commit'] or '?')[:10]))
    hdr = '%-22s %6s %22s %24s %9s %9s %9s %9s %9s %10s %9s'
    print(hdr % ('config', 'nodes', 'wall s', 'ms/node', 'CPU ms/n', 'validate', 'allocate', 'map read', 'params',
                 'heap KiB/n', 'RSS KiB/n'))
    for name in CONFIGS + ANSIBLE_CONFIGS:
        for n, row in sorted((results.get(name) or {}).items()):
            def mm(key, fmt):
                s = row[key]
                return ('%s (%s-%s)' % (fmt, fmt, fmt)) % (s['median'], s['min'], s['max'])
            if name.startswith('ansible'):
                print('%-22s %6d %22s %24s %9.3f %39s %9.2f MiB peak RSS' % (
                    name, n, mm('wall_s', '%.3f'), mm('per_node_ms', '%.3f'), row['cpu_per_node_ms']['median'],
                    '', row['rss_peak_mib']['median']))
                continue
            print('%-22s %6d %22s %24s %9.3f %9.4f %9.4f %9.4f %9.4f %10.2f %9.2f' % (
                name, n, mm('wall_s', '%.3f'), mm('per_node_ms', '%.3f'), row['cpu_per_node_ms']['median'],
                row['validate_s']['median'], row['allocate_s']['median'], row['cluster_map_s']['median'],
                row['params_s']['median'],
                row['heap_per_node_kib']['median'], row['rss_growth_per_node_kib']['median']))
    print('\nper node, beside the pass: its module arguments as JSON (size, time), and Ansible templating them '
          '(roles as written; ms per node, the fleet\'s CPU s = N x per node)')
    hdr2 = '%-22s %6s %12s %10s %12s %10s %10s %10s %12s %14s %9s'
    print(hdr2 % ('config', 'nodes', 'payload KiB', 'JSON ms', 'templating', 'ipam_node', 'routing', 'masquerade',
                  'fleet CPU s', 'map held', 'conflicts'))
    for name in CONFIGS:
        for n, row in sorted((results.get(name) or {}).items()):
            med = dict((k, v['median']) for k, v in row.items())
            print('%-22s %6d %12.1f %10.3f %12.2f %10.2f %10.2f %10.2f %12.1f %14s %9d' % (
                name, n, med['payload_kib_per_node'], med['payload_ms_per_node'], med['templating_ms_per_node'],
                med.get('templating_ms_ipam_node', 0), med.get('templating_ms_routing', 0),
                med.get('templating_ms_masquerade', 0), med['templating_fleet_cpu_s'],
                '%d-%d' % (med['map_nodes_min'], med['map_nodes_max']), med['conflicts']))
    print('\ntargets: per-node wall time flat within %.0fx (growth = largest per-node(N2)/per-node(N1), N1 < N2); '
          '%d-node pass < %.0f s' % (TARGET_FLAT, TARGET_PASS_N, TARGET_PASS_S))
    for name in CONFIGS + ANSIBLE_CONFIGS:
        c = checks.get(name)
        if not c:
            continue
        line = '%-22s growth %.2f (spread %.1f) %s' % (name, c['growth'], c['spread'], 'ok' if c['flat_ok'] else 'MISS')
        if 'pass_ok' in c:
            line += '; %d nodes %.3f s %s' % (TARGET_PASS_N, c['pass_%d_s' % TARGET_PASS_N], 'ok' if c['pass_ok'] else 'MISS')
        if 'templating_growth' in c:
            line += '; Ansible templating per node grows %.1fx (not judged)' % c['templating_growth']
        if c['marginal_ms_per_node']:
            line += '; each added node %s' % ', '.join('%.3f ms (%s)' % (v, k) for k, v in c['marginal_ms_per_node'].items())
        print(line)
    print('load average at the start %s, at the end %s' % (
        ' '.join('%.2f' % x for x in prov['machine']['loadavg_at_start']), ' '.join('%.2f' % x for x in os.getloadavg())))


if __name__ == '__main__':
    try:
        sys.exit(main())
    except BenchError as e:
        sys.stderr.write('fleet bench: %s\n' % e)
        sys.exit(2)
