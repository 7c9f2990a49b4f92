"""Helpers for tests that drive a real lab with ansible-playbook and read its kernel state."""
import contextlib
import json
import os
import re
import resource
import subprocess
import threading
import time

from ansible_collections.podnet.fabric.plugins.module_utils import lab

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
VENV_BIN = os.path.join(REPO, '.venv', 'bin')
LAB_ROOT = '/run/podnet-lab'


def env():
    return lab.checkout_env(REPO)


def write_lab_inventory(directory, prefix, nodes=3, cluster_vars=None):
    """A lab inventory dir: the plugin config plus the lab's cluster group_vars."""
    os.makedirs(os.path.join(directory, 'group_vars', 'all'), exist_ok=True)
    with open(os.path.join(directory, 'lab.podnet.yml'), 'w') as f:
        f.write('plugin: podnet.fabric.lab\nprefix: %s\nnodes: %d\nunderlay_cidr: 192.168.50.0/24\n' % (prefix, nodes))
    src = cluster_vars or os.path.join(REPO, 'inventories', 'lab', 'group_vars', 'all', 'cluster.yml')
    with open(src) as f:
        text = f.read()
    with open(os.path.join(directory, 'group_vars', 'all', 'cluster.yml'), 'w') as f:
        f.write(text)
    return directory


@contextlib.contextmanager
def _cost(what):
    """With PODNET_PLAYLOG=<file>: one JSON line per ansible run (the test, what ran, its wall and
    CPU seconds), to find where the suite's time goes (the suite is CPU-bound on 2 cores).
    The CPU is this process's finished children over the run's window: runs started side by side
    from threads (test_concurrent_runs_lab.py) each count the others that ended in their window."""
    log = os.environ.get('PODNET_PLAYLOG')
    if not log:
        yield
        return
    r0, t0 = resource.getrusage(resource.RUSAGE_CHILDREN), time.monotonic()
    try:
        yield
    finally:
        r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        with open(log, 'a') as f:
            f.write(json.dumps({'test': os.environ.get('PYTEST_CURRENT_TEST', '').rsplit(' ', 1)[0],
                                'run': what, 'wall': round(time.monotonic() - t0, 2),
                                'cpu': round(r1.ru_utime + r1.ru_stime - r0.ru_utime - r0.ru_stime, 2)}) + '\n')


def playbook(name, *inventories, extra=(), check=False, timeout=600, env_extra=None):
    """Run a playbook of playbooks/ (or a path) on inventories: (rc, output). env_extra adds
    variables to env() (which drops PODNET_LAB_PREFIX/NODES)."""
    e = env()
    e.update(env_extra or {})
    with _cost('%s %s%s' % (os.path.basename(name), ' '.join(extra), ' --check' if check else '')):
        p = subprocess.run(playbook_argv(name, *inventories, extra=extra, check=check), cwd=REPO, env=e,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, universal_newlines=True,
                           timeout=timeout, check=False)
    return p.returncode, p.stdout


def recap(output):
    """{host: {ok:, changed:, failed:, ...}} from a PLAY RECAP (the last one)."""
    out = {}
    for m in re.finditer(r'^(\S+)\s+:\s+(.*)$', output.split('PLAY RECAP')[-1], re.M):
        out[m.group(1)] = dict((k, int(v)) for k, v in re.findall(r'(\w+)=(\d+)', m.group(2)))
    return out


def nsenter(prefix, node, argv, check=True):
    d = os.path.join(LAB_ROOT, prefix, node)
    full = ['nsenter', '--net=/run/netns/%s-%s' % (prefix, node), '--mount=%s/mnt' % d, '--uts=%s/uts' % d, '--'] + argv
    p = subprocess.run(full, stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True, check=False)
    if check and p.returncode != 0:
        raise AssertionError('%s failed: %s' % (' '.join(full), p.stderr))
    return p.stdout


VOLATILE_KEYS = ('stats', 'stats64', 'valid_life_time', 'preferred_life_time', 'operstate',
                 'tentative', 'dadfailed', 'optimistic')


def _link_local(entry):
    # IPv6 link-local addresses and their routes appear by themselves about a second after a
    # device comes up (duplicate address detection): the kernel's doing, not podnet's.
    return isinstance(entry, dict) and (str(entry.get('dst', '')).startswith(('fe80', 'ff00'))
                                        or str(entry.get('local', '')).startswith('fe80'))


def _strip_volatile(obj):
    """Drop what moves by itself (counters, timers, DAD state, link-local) from ip -j output."""
    if isinstance(obj, dict):
        return dict((k, _strip_volatile(v)) for k, v in obj.items() if k not in VOLATILE_KEYS)
    if isinstance(obj, list):
        return [_strip_volatile(v) for v in obj if not _link_local(v)]
    return obj


def node_snapshot(prefix, node):
    """Everything podnet could change on a node, as the kernel and the node's overlays hold it."""
    snap = {}
    for key, argv in (('links', ['ip', '-j', '-d', 'link', 'show']),
                      ('addrs', ['ip', '-j', 'addr', 'show']),
                      ('routes', ['ip', '-j', 'route', 'show', 'table', 'all']),
                      ('rules', ['ip', '-j', 'rule', 'show'])):
        snap[key] = _strip_volatile(json.loads(nsenter(prefix, node, argv) or '[]'))
    snap['sysctl'] = nsenter(prefix, node, ['sysctl', 'net.ipv4.ip_forward', 'net.ipv4.conf.all.rp_filter',
                                            'net.ipv4.conf.default.rp_filter', 'net.ipv6.conf.all.forwarding'])
    snap['bpffs'] = nsenter(prefix, node, ['find', '/sys/fs/bpf'])
    snap['mounts'] = sorted(line.split()[4] for line in nsenter(prefix, node, ['cat', '/proc/self/mountinfo']).splitlines())
    files = []
    d = os.path.join(LAB_ROOT, prefix, node)
    for layer in ('etc.upper', 'varlib.upper'):
        for root, _dirs, names in os.walk(os.path.join(d, layer)):
            for n in names:
                p = os.path.join(root, n)
                with open(p, 'rb') as f:
                    files.append((os.path.relpath(p, d), f.read()))
    snap['files'] = sorted(files)
    return snap


def lab_snapshot(prefix, nodes):
    return dict((n, node_snapshot(prefix, n)) for n in nodes)


def netns_names():
    try:
        return set(os.listdir('/run/netns'))
    except OSError:
        return set()


def mountpoints():
    with open('/proc/self/mountinfo') as f:
        return [line.split()[4] for line in f]


def purge(prefix):
    """Remove whatever a previous (killed) run left of lab `prefix`: processes in its members,
    mounts, namespaces, the underlay and its state dir. Only that prefix is touched."""
    realized = lab.read(prefix)
    lab.apply(prefix, None, lab.plan(None, realized))
    leftovers = [n for n in netns_names() if n.startswith(prefix + '-')]
    assert not leftovers, 'lab %s: could not remove %s' % (prefix, leftovers)


def assert_lab_gone(prefix):
    assert not [n for n in netns_names() if n.startswith(prefix + '-')]
    assert not [m for m in mountpoints() if m.startswith(os.path.join(LAB_ROOT, prefix) + '/')
                or m == os.path.join(LAB_ROOT, prefix)]
    assert not os.path.exists(os.path.join(LAB_ROOT, prefix))


def run_ok(name, *inventories, **kw):
    """ansible-playbook that must succeed: returns its output, fails the test with it otherwise."""
    rc, out = playbook(name, *inventories, **kw)
    assert rc == 0, 'ansible-playbook %s exited %d:\n%s' % (name, rc, out[-6000:])
    return out


# site.yml ends with verify.yml (the product's default). The tests run it without that closing play
# unless they ask for it (-e podnet_site_verify=true): they assert on kernel state and packets
# themselves, and the play costs about a third of an idempotent site run's CPU. Where a test's proof
# is "verify passes" it says so: the kill-point reruns and test_lab.py's converge keep the play, and
# test_concurrent_runs_lab.py runs verify.yml itself.
SITE_VERIFY = '-e', 'podnet_site_verify=false'


def playbook_argv(name, *inventories, extra=(), check=False):
    """The ansible-playbook command line for a playbook of playbooks/ (or a path) and inventories."""
    argv = [os.path.join(VENV_BIN, 'ansible-playbook'), os.path.join(REPO, 'playbooks', name)]
    for inv in inventories:
        argv += ['-i', inv]
    if os.path.basename(name) == 'site.yml' and not any('podnet_site_verify' in str(x) for x in extra):
        argv += list(SITE_VERIFY)
    return argv + list(extra) + (['--check', '--diff'] if check else [])


def playbook_with_env(name, *inventories, env_extra=None, extra=(), timeout=600):
    """playbook() with variables added to env(): (rc, output)."""
    return playbook(name, *inventories, extra=extra, timeout=timeout, env_extra=env_extra)


def start_playbook(name, *inventories, extra=(), log=None):
    """ansible-playbook started in a session (and process group) of its own, so that a test can end
    it and every process it started with os.killpg(proc.pid, ...). Output goes to `log` (a file)."""
    return subprocess.Popen(playbook_argv(name, *inventories, extra=extra), cwd=REPO, env=env(),
                            stdout=log or subprocess.DEVNULL, stderr=subprocess.STDOUT, start_new_session=True)


def group_alive(pgid):
    """Whether any process of process group `pgid` is still alive (zombies count as gone)."""
    for pid in os.listdir('/proc'):
        if not pid.isdigit():
            continue
        try:
            with open('/proc/%s/stat' % pid) as f:
                fields = f.read().rsplit(')', 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] not in ('Z', 'X'):
            return True
    return False


def fresh(prefix):
    """purge(prefix), then the lab's state dir if a killed run left it behind unmounted (purge only
    removes a mounted one): a ledger left there would otherwise reappear in the next lab."""
    import shutil
    purge(prefix)
    d = os.path.join(LAB_ROOT, prefix)
    if os.path.isdir(d) and not [m for m in mountpoints() if m == d or m.startswith(d + '/')]:
        shutil.rmtree(d)
    assert_lab_gone(prefix)


class LabState:
    """What the tests of one file last left in their shared lab, so that each test can ask for the
    state it needs instead of relying on the tests before it.

    need(*states) re-establishes states[0] (with build(state), a callable from the test file) unless
    the lab is known to be in one of `states`. From then on the state is unknown (None) until the
    test calls left(state) or keep() as its last step: a test that fails midway leaves a lab that
    the next test rebuilds."""

    def __init__(self, build):
        self.build = build
        self.state = None
        self.had = None

    def need(self, *states):
        if self.state not in states:
            self.build(states[0], self.state)
            self.state = states[0]
        self.had, self.state = self.state, None
        return self.had

    def left(self, state):
        self.state = state

    def keep(self):
        """The test changed nothing (or undid what it changed): the lab is as need() gave it."""
        self.state = self.had


def adhoc(inventory, host, module, args, check=False, timeout=600):
    """One module on one host (ansible ad-hoc with JSON output): (rc, that host's result dict)."""
    e = env()
    e['ANSIBLE_LOAD_CALLBACK_PLUGINS'] = '1'
    e['ANSIBLE_STDOUT_CALLBACK'] = 'ansible.posix.json'
    argv = [os.path.join(VENV_BIN, 'ansible'), '-i', inventory, host, '-m', module]
    if args:
        argv += ['-a', json.dumps(args)]   # ('{}' would be read as a free-form argument)
    if check:
        argv.append('--check')
    with _cost('adhoc %s %s' % (module, host)):
        p = subprocess.run(argv, cwd=REPO, env=e, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           universal_newlines=True, timeout=timeout, check=False)
    try:
        doc = json.loads(p.stdout[p.stdout.index('{'):])
        return p.returncode, doc['plays'][0]['tasks'][0]['hosts'][host]
    except (ValueError, KeyError, IndexError):
        raise AssertionError('ansible %s on %s: no JSON result (rc %d):\n%s\n%s'
                             % (module, host, p.returncode, p.stdout[-3000:], p.stderr[-3000:]))


@contextlib.contextmanager
def own_lab(prefix, directory, nodes=3, provision=False):
    """A lab of its own for one test module: leftovers of `prefix` purged first, the lab up (and
    provisioned with site.yml when asked), torn down and purged after. Yields the inventory."""
    purge(prefix)
    inv = write_lab_inventory(directory, prefix, nodes=nodes)
    try:
        run_ok('lab_up.yml', inv)
        if provision:
            run_ok('site.yml', inv)
        yield inv
    finally:
        rc, out = playbook('lab_down.yml', inv)
        purge(prefix)
        assert rc == 0, 'lab_down.yml exited %d:\n%s' % (rc, out[-3000:])


# ---------------------------------------------------------------- traffic and BPF state inside a lab

# An echo server (python -c ECHO_SERVER <address> <port>...): echoes on each port until stdin closes
# or it is ended by its handle; prints 'ready' once every port listens.
ECHO_SERVER = r'''
import socket, sys, threading
def serve(s):
    while True:
        c, _ = s.accept()
        threading.Thread(target=echo, args=(c,), daemon=True).start()
def echo(c):
    try:
        while True:
            d = c.recv(65536)
            if not d:
                break
            c.sendall(d)
    except OSError:
        pass
    c.close()
for p in sys.argv[2:]:
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((sys.argv[1], int(p))); s.listen(64)
    threading.Thread(target=serve, args=(s,), daemon=True).start()
print('ready', flush=True)
sys.stdin.read()
'''
# One connection (python -c TCP_ONE_SHOT <address> <port> [bytes]): `bytes` (default 4) sent and their
# echo read back; prints 'ok', or 'refused' for anything else. The connect gives up after 0.9 s,
# before the first SYN retransmission, so a dropped SYN is counted once.
TCP_ONE_SHOT = r'''
import socket, sys
try:
    c = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=0.9)
    c.settimeout(5)
    data = b'x' * (int(sys.argv[3]) if len(sys.argv) > 3 else 4)
    c.sendall(data)
    got = b''
    while len(got) < len(data):
        d = c.recv(65536)
        if not d:
            break
        got += d
    ok = got == data
except OSError:
    ok = False
print('ok' if ok else 'refused')
'''


def hexbytes(values):
    """bpftool -j's list of hex strings as bytes."""
    return bytes(int(x, 16) for x in values)


def bpftool_entries(raw):
    """(key bytes, value bytes) of each entry of `bpftool -j map dump` output (per-CPU values joined)."""
    out = []
    for e in json.loads(raw or '[]'):
        value = b''.join(hexbytes(v['value']) for v in e['values']) if 'values' in e else hexbytes(e['value'])
        out.append((hexbytes(e['key']), value))
    return out


def delta(before, after):
    """The counters that moved between two {key: count} readings, by how much."""
    return dict((k, v - before.get(k, 0)) for k, v in after.items() if v != before.get(k, 0))


class Capture(object):
    """tcpdump in a lab namespace (netns, a name under /run/netns) on one interface, with a filter;
    ours, ended by its Popen handle. packets() reads what it saw so far."""

    def __init__(self, netns, interface, flt):
        # --immediate-mode: each packet reaches us when it is seen, not when a buffer block fills.
        self.proc = subprocess.Popen(['nsenter', '--net=/run/netns/' + netns, '--', 'tcpdump', '-n', '-l', '-U',
                                      '--immediate-mode', '-i', interface, flt],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True)
        deadline = time.time() + 10
        while time.time() < deadline:
            line = self.proc.stderr.readline()
            if 'listening on' in line or not line:
                break
        self.lines = []
        self.reader = threading.Thread(target=self._read)
        self.reader.start()

    def _read(self):
        for line in self.proc.stdout:
            self.lines.append(line)

    def stop(self, until, timeout=3.0):
        """packets(), once until(packets) holds (all the expected packets are in) or after timeout:
        then the test's assertion sees whatever did arrive."""
        deadline = time.time() + timeout
        while not until(self.packets()) and time.time() < deadline:
            time.sleep(0.02)
        self.proc.terminate()
        self.proc.wait(timeout=10)
        self.reader.join(timeout=10)
        self.proc.stderr.close()
        return self.packets()

    def packets(self):
        """[(src, dst, what)] of the IP lines seen so far, ports stripped; what is the rest of the line.
        "12:00:00.000000 IP 192.168.50.11 > 192.168.50.1: ICMP echo request, id 1, seq 1, length 64" """
        out = []
        for line in list(self.lines):
            parts = line.split()
            if 'IP' in parts and '>' in parts:
                i = parts.index('IP')
                src, dst = parts[i + 1], parts[i + 3].rstrip(':')
                out.append(('.'.join(src.split('.')[:4]), '.'.join(dst.split('.')[:4]), ' '.join(parts[i + 4:])))
        return out
