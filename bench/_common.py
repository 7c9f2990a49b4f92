"""What the benchmarks share: the collection importable by its real name, where results go, where
they came from (commit, machine), and driving a lab with ansible-playbook.

Importing this module puts <repo>/build/collections on sys.path (creating the link
build/collections/ansible_collections/podnet/fabric -> repo root if it is missing, as
tests/conftest.py does), so module_utils import each other as `ansible_collections.podnet.fabric...`.
A benchmark's child processes are the benchmark script itself, which imports this module first.
The bench does not import the test tree; the lab helpers below mirror tests/integration/labutil.py
(playbook, purge) and use module_utils/lab.py for everything it already knows (env, nsenter, purge).
"""
from __future__ import print_function

import json
import os
import platform
import shutil
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VENV_BIN = os.path.join(ROOT, '.venv', 'bin')
COLLECTIONS = os.path.join(ROOT, 'build', 'collections')
LINK = os.path.join(COLLECTIONS, 'ansible_collections', 'podnet', 'fabric')


def use_collection():
    if not os.path.exists(LINK):
        os.makedirs(os.path.dirname(LINK), exist_ok=True)
        os.symlink('../../../..', LINK)
    if COLLECTIONS not in sys.path:
        sys.path.insert(0, COLLECTIONS)


use_collection()

from ansible_collections.podnet.fabric.plugins.module_utils import lab as lab_utils  # noqa: E402


class BenchError(Exception):
    """Something broke (not a missed target): the benchmark exits non-zero with this message."""


# ---------------------------------------------------------------- results and provenance

def results_path(name, quick):
    """Real figures go to bench/results/<name>.json (committed); quick runs to build/bench/ (ignored),
    so a quick run never overwrites the committed figures."""
    if quick:
        return os.path.join(ROOT, 'build', 'bench', '%s.quick.json' % name)
    return os.path.join(ROOT, 'bench', 'results', '%s.json' % name)


def _git(*argv):
    p = subprocess.run(['git', '-C', ROOT] + list(argv), stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                       universal_newlines=True, check=False)
    return p.stdout if p.returncode == 0 else None


def provenance():
    """The commit and the machine the figures come from. `dirty`: tracked files other than
    bench/results/ differed from the commit when the run started."""
    status = _git('status', '--porcelain', '--untracked-files=no')
    dirty = None if status is None else any(
        not line[3:].startswith('bench/results/') for line in status.splitlines())
    try:
        nproc = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        nproc = os.cpu_count()
    commit = _git('rev-parse', 'HEAD')
    return {'git': {'commit': commit and commit.strip(), 'dirty': dirty},
            'machine': {'nproc': nproc, 'cpus': os.cpu_count(), 'kernel': platform.release(),
                        'platform': platform.platform(), 'python': platform.python_version(),
                        'loadavg_at_start': [round(x, 2) for x in os.getloadavg()]},
            'measured_at': time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}


def write_json(path, doc):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = path + '.tmp'
    with open(tmp, 'w') as f:
        json.dump(doc, f, indent=2, sort_keys=True)
        f.write('\n')
    os.replace(tmp, path)
    print('wrote %s' % os.path.relpath(path, ROOT), flush=True)


def need_tools(*names):
    missing = [n for n in names if shutil.which(n) is None]
    if missing:
        raise BenchError('missing tools: %s' % ', '.join(missing))


# ---------------------------------------------------------------- driving a lab

def env():
    return lab_utils.checkout_env(ROOT)


def playbook(name, inventory, *extra, timeout=900):
    """ansible-playbook that must succeed: returns its output, raises BenchError with its tail."""
    argv = [os.path.join(VENV_BIN, 'ansible-playbook'), os.path.join(ROOT, 'playbooks', name), '-i', inventory]
    argv += list(extra)
    try:
        p = subprocess.run(argv, cwd=ROOT, env=env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                           universal_newlines=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        raise BenchError('%s on %s: no result after %d s' % (name, inventory, timeout))
    if p.returncode != 0:
        sys.stderr.write(p.stdout[-6000:])
        raise BenchError('%s on %s failed (rc %d)' % (name, inventory, p.returncode))
    return p.stdout


def nsenter(prefix, node, argv, netns=None):
    """argv run inside a lab node (its net, mount and UTS namespaces), or inside a network
    namespace of that node (e.g. a pod's), entered from the node's mount namespace."""
    inner = (['nsenter', '--net=/run/netns/%s' % netns, '--'] if netns else []) + list(argv)
    return lab_utils.nsenter_argv(prefix, node, inner)


def run(argv, timeout=120):
    p = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True,
                       timeout=timeout, check=False)
    return p.returncode, p.stdout, p.stderr


def leftovers(prefix):
    """What of lab `prefix` exists: its namespaces, mounts below its state dir, the dir itself."""
    d = lab_utils.lab_dir(prefix)
    try:
        names = sorted(n for n in os.listdir('/run/netns') if n.startswith(prefix + '-'))
    except OSError:
        names = []
    with open('/proc/self/mountinfo') as f:
        mounts = sorted(set(m for m in (line.split()[4] for line in f) if m == d or m.startswith(d + '/')))
    return names + mounts + ([d] if os.path.exists(d) and d not in mounts else [])


def purge(prefix):
    """Remove whatever a previous (killed) run left of lab `prefix` with module_utils/lab.py's own
    read/plan/apply: processes in its members, mounts, namespaces, the underlay, its state dir.
    Only that prefix is touched."""
    lab_utils.apply(prefix, None, lab_utils.plan(None, lab_utils.read(prefix)))
    left = leftovers(prefix)
    if left:
        raise BenchError('lab %s: could not remove %s' % (prefix, left))


def stop(procs):
    """End a bench's own child processes, by their handles: terminate, then kill after 10 s."""
    for p in procs:
        if p.poll() is None:
            p.terminate()
        try:
            p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            p.kill()
