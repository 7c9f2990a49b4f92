"""The collection run as AWX runs it (prefix `pan`, 2 nodes): `ansible-galaxy collection build` of the
checkout, `ansible-galaxy collection install` of that tarball into a directory of its own, and every
job through `ansible-runner run` on a private data dir:

    project/      lab_up.yml, site.yml, verify.yml, drift.yml: each imports podnet.fabric.<name>
    inventory/    lab.podnet.yml (the podnet.fabric.lab inventory plugin) + group_vars/all/cluster.yml
    env/envvars   ANSIBLE_COLLECTIONS_PATH: the install directory, nothing else
    env/extravars the job template's extra variables (rewritten before each job)

This is also the drift job's lab test (what test_drift_lab.py was): a converged lab reports no drift
and exits 0 with podnet_drift_fail; a deleted route is named with its node, fails the job on that node
only and is left alone; outside check mode the job refuses and touches no node.

The runner gets a clean environment (no ANSIBLE_CONFIG, cwd its project dir), so nothing of the
checkout can resolve: `ansible-galaxy collection list` in that environment sees podnet.fabric only
in the install directory, and every task event's path is under it. The results are read where AWX
reads them: the artifacts' status and rc, and the job events (the drift report's per-node data).
"""
import glob
import ipaddress
import json
import os
import subprocess

import labutil
import pytest
import yaml

from labutil import LAB_ROOT, REPO, VENV_BIN, nsenter

PREFIX = 'pan'
NODES = ['node1', 'node2']
PLAYBOOKS = ('lab_up', 'site', 'verify', 'drift')

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason='the lab needs root')


def clean_env(collections):
    """What the runner starts from: the venv's tools and system paths, no ANSIBLE_* of this checkout
    (make exports ANSIBLE_CONFIG, whose collections_path is the checkout)."""
    env = {'PATH': VENV_BIN + ':/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin',
           'HOME': os.environ.get('HOME', '/root'), 'LANG': 'C.UTF-8'}
    env['ANSIBLE_COLLECTIONS_PATH'] = collections
    return env


def run(argv, cwd, env, timeout=300):
    p = subprocess.run(argv, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                       universal_newlines=True, timeout=timeout, check=False)
    assert p.returncode == 0, '%s exited %d:\n%s' % (' '.join(argv), p.returncode, p.stdout[-4000:])
    return p.stdout


class Job:
    """One ansible-runner job's artifacts: status, rc, events, stdout."""

    def __init__(self, artifacts):
        with open(os.path.join(artifacts, 'status')) as f:
            self.status = f.read().strip()
        with open(os.path.join(artifacts, 'rc')) as f:
            self.rc = int(f.read().strip())
        with open(os.path.join(artifacts, 'stdout')) as f:
            self.stdout = f.read()
        events = []
        for path in glob.glob(os.path.join(artifacts, 'job_events', '*.json')):
            with open(path) as f:
                events.append(json.load(f))
        # Events with no event_data (plain output lines) are left out: none of them is a task's.
        self.events = sorted((e for e in events if 'event_data' in e), key=lambda e: e['counter'])

    def results(self, action, event='runner_on_ok'):
        """{host: res} of the task events of one module or action."""
        return dict((e['event_data']['host'], e['event_data']['res']) for e in self.events
                    if e['event'] == event and e['event_data'].get('resolved_action') == action)

    def task_paths(self):
        return set(e['event_data']['task_path'].rsplit(':', 1)[0] for e in self.events
                   if e['event_data'].get('task_path'))

    def __repr__(self):
        return 'job %s (rc %d):\n%s' % (self.status, self.rc, self.stdout[-6000:])


class Runner:
    """A private data dir as AWX lays it out, and ansible-runner jobs on it."""

    def __init__(self, base):
        self.pdd = os.path.join(base, 'pdd')
        self.collections = os.path.join(base, 'collections')
        self.env = clean_env(self.collections)
        self.jobs = 0
        dist = os.path.join(base, 'dist')
        run([os.path.join(VENV_BIN, 'ansible-galaxy'), 'collection', 'build', '--output-path', dist, REPO],
            base, self.env)
        tarball, = glob.glob(os.path.join(dist, 'podnet-fabric-*.tar.gz'))
        # --offline: the dependency (ansible.posix) is the one the ansible package ships.
        run([os.path.join(VENV_BIN, 'ansible-galaxy'), 'collection', 'install', '--offline', '-p', self.collections,
             tarball], base, self.env)

        project = os.path.join(self.pdd, 'project')
        os.makedirs(project)
        for name in PLAYBOOKS:
            with open(os.path.join(project, name + '.yml'), 'w') as f:
                f.write('---\n- name: The collection\'s %s playbook\n  ansible.builtin.import_playbook: podnet.fabric.%s\n'
                        % (name, name))
        labutil.write_lab_inventory(os.path.join(self.pdd, 'inventory'), PREFIX, nodes=len(NODES))
        os.makedirs(os.path.join(self.pdd, 'env'))
        with open(os.path.join(self.pdd, 'env', 'envvars'), 'w') as f:
            yaml.safe_dump({'ANSIBLE_COLLECTIONS_PATH': self.collections}, f)

    def job(self, playbook, extravars=None, cmdline=None):
        """`ansible-runner run` of project/<playbook>.yml with these extra variables: its Job."""
        self.jobs += 1
        ident = '%d-%s' % (self.jobs, playbook)
        with open(os.path.join(self.pdd, 'env', 'extravars'), 'w') as f:
            yaml.safe_dump(extravars or {}, f)
        argv = [os.path.join(VENV_BIN, 'ansible-runner'), 'run', self.pdd, '-p', playbook + '.yml', '--ident', ident]
        # The runner keeps a --cmdline as env/cmdline and reads that file for every later job without
        # one: each job here has its own command line, as each AWX job template does.
        stale = os.path.join(self.pdd, 'env', 'cmdline')
        if os.path.exists(stale):
            os.unlink(stale)
        if cmdline:
            argv += ['--cmdline', cmdline]
        with labutil._cost('ansible-runner %s %s' % (playbook, cmdline or '')):
            subprocess.run(argv, cwd=self.pdd, env=self.env, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
                           timeout=900, check=False)
        artifacts = os.path.join(self.pdd, 'artifacts', ident)
        assert os.path.exists(os.path.join(artifacts, 'rc')), 'ansible-runner left no artifacts for %s' % ident
        job = Job(artifacts)
        installed = os.path.join(self.collections, 'ansible_collections', 'podnet', 'fabric') + '/'
        outside = sorted(p for p in job.task_paths() if not p.startswith(installed))
        assert not outside, 'tasks ran from outside the installed collection: %s' % outside
        return job

    def ok(self, playbook, extravars=None, cmdline=None):
        job = self.job(playbook, extravars, cmdline)
        assert (job.status, job.rc) == ('successful', 0), job
        return job


@pytest.fixture(scope='module')
def runner(tmp_path_factory):
    labutil.fresh(PREFIX)
    r = Runner(str(tmp_path_factory.mktemp('pan')))
    try:
        r.ok('lab_up')
        # The closing verify play is its own job below, as in AWX's job templates.
        r.site = r.ok('site', {'podnet_site_verify': False})
        yield r
    finally:
        labutil.purge(PREFIX)
        labutil.assert_lab_gone(PREFIX)


def ledger():
    with open(os.path.join(LAB_ROOT, PREFIX, 'ledger.json')) as f:
        return json.load(f)['nodes']


def podnet_routes(node):
    return dict((r['dst'], r) for r in json.loads(nsenter(PREFIX, node, ['ip', '-j', 'route', 'show', 'proto', '201']) or '[]'))


def router_ip(cidr):
    return str(ipaddress.ip_network(cidr)[1])


def test_only_the_installed_collection_is_visible_to_the_runner(runner):
    out = run([os.path.join(VENV_BIN, 'ansible-galaxy'), 'collection', 'list', '--format', 'json'],
              os.path.join(runner.pdd, 'project'), runner.env)
    where = [path for path, colls in json.loads(out).items() if 'podnet.fabric' in colls]
    assert where == [os.path.join(runner.collections, 'ansible_collections')], where
    # Every job so far ran its tasks from the install (Runner.job checks each): roles and playbooks.
    paths = runner.site.task_paths()
    installed = os.path.join(runner.collections, 'ansible_collections', 'podnet', 'fabric')
    assert os.path.join(installed, 'playbooks', 'site.yml') in paths
    assert os.path.join(installed, 'roles', 'routing', 'tasks', 'main.yml') in paths
    assert not [p for p in paths if p.startswith(REPO + '/')]


def test_site_converged_the_nodes_and_verify_passes(runner):
    nodes = ledger()
    assert sorted(nodes) == NODES
    for node in NODES:
        cidr, = nodes[node]['cidrs']['ipv4']
        addrs = json.loads(nsenter(PREFIX, node, ['ip', '-j', 'addr', 'show', 'dev', 'podnet_host']))
        assert router_ip(cidr) in [a['local'] for a in addrs[0]['addr_info']]
        peer, = [n for n in NODES if n != node]
        peer_cidr, = nodes[peer]['cidrs']['ipv4']
        route = podnet_routes(node)[peer_cidr]
        assert (route['dev'], route['gateway']) == ('podnet_vxlan', router_ip(peer_cidr)), route
    # Through the tunnel: node1 reaches node2's router IP on node2's host device.
    nsenter(PREFIX, 'node1', ['ping', '-c', '1', '-W', '2', router_ip(nodes['node2']['cidrs']['ipv4'][0])])
    job = runner.ok('verify')
    assert set(job.results('podnet.fabric.node_info')) == set(NODES), job


def drift_summary(job):
    return job.results('podnet.fabric.drift_report')


def test_the_drift_job_names_a_deleted_route_fails_on_it_and_is_clean_after_a_site_run(runner):
    check = '--check --diff'
    fail = {'podnet_drift_fail': True}
    summary = drift_summary(runner.ok('drift', fail, check))
    assert dict((n, (s['drifted'], s['text'])) for n, s in summary.items()) == dict(
        (n, (False, '%s: no drift' % n)) for n in NODES), summary

    gone, = [dst for dst, r in podnet_routes('node2').items() if r.get('dev') == 'podnet_vxlan']
    nsenter(PREFIX, 'node2', ['ip', 'route', 'del', gone, 'proto', '201'])
    job = runner.job('drift', fail, check)
    assert (job.status, job.rc) == ('failed', 2), job
    summary = drift_summary(job)
    assert not summary['node1']['drifted'] and summary['node1']['text'] == 'node1: no drift', summary
    assert summary['node2']['drifted'], summary
    line, = summary['node2']['lines']
    assert line['area'] == 'routing' and 'dst=%s' % gone in line['object'], line
    assert (line['expected'], line['found']) == ('present', 'missing'), line
    assert '1 object(s) drifted' in summary['node2']['text']
    # Only the drifted node fails the job, and check mode left the kernel as it was.
    assert [e['event_data']['host'] for e in job.events if e['event'] == 'runner_on_failed'] == ['node2'], job
    assert gone not in podnet_routes('node2')

    runner.ok('site', {'podnet_site_verify': False}, '--limit node2')
    assert podnet_routes('node2')[gone]['dev'] == 'podnet_vxlan'
    summary = drift_summary(runner.ok('drift', fail, check))
    assert not [n for n, s in summary.items() if s['drifted']] and sorted(summary) == NODES, summary


def test_the_drift_job_outside_check_mode_refuses_and_changes_nothing(runner):
    job = runner.job('drift', {'podnet_drift_fail': True})
    assert (job.status, job.rc) == ('failed', 2), job
    assert 'drift.yml only looks: run it with --check --diff (nothing was changed)' in job.stdout
    assert not [e for e in job.events if e['event'].startswith('runner_on') and e['event_data'].get('host') in NODES]
