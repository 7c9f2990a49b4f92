"""The drift job (playbooks/drift.yml) on a converged 2-node lab (prefix `pdr`): clean on a converged
lab, the node and route named after a route is deleted (and the kernel left as it was), a failing
exit status only when asked (podnet_drift_fail; each drift run here asks, so a clean lab exiting 0
proves it is clean), and a refusal outside check mode.
"""
import json
import os

import labutil
import pytest

from labutil import nsenter, playbook, run_ok

PREFIX = 'pdr'
NODES = ['node1', 'node2']

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason='the lab needs root')


@pytest.fixture(scope='module')
def lab(tmp_path_factory):
    with labutil.own_lab(PREFIX, str(tmp_path_factory.mktemp('pdr') / 'inv'), nodes=2, provision=True) as inv:
        yield inv


def podnet_routes(node):
    return sorted(r['dst'] for r in json.loads(nsenter(PREFIX, node, ['ip', '-j', 'route', 'show', 'proto', '201']) or '[]'))


FAIL_ON_DRIFT = ['-e', 'podnet_drift_fail=true']


def test_a_converged_lab_has_no_drift(lab):
    out = run_ok('drift.yml', lab, check=True, extra=FAIL_ON_DRIFT)
    for n in NODES:
        assert '%s: no drift' % n in out, out[-4000:]
    assert 'drifted' not in out


def test_a_deleted_route_is_named_with_its_node_and_left_for_the_site_run(lab):
    routes = podnet_routes('node2')
    gone = routes[0]
    nsenter(PREFIX, 'node2', ['ip', 'route', 'del', gone, 'proto', '201'])
    try:
        rc, out = playbook('drift.yml', lab, check=True, extra=FAIL_ON_DRIFT)
        assert rc != 0, out[-4000:]
        flat = ' '.join(out.split())
        assert 'node2: 1 object(s) drifted' in flat, out[-4000:]
        assert 'routing: route_add' in flat and ('dst=%s' % gone) in flat and '(expected present, found missing)' in flat
        assert 'node1: no drift' in flat
        assert 'fatal: [node2]' in out and 'fatal: [node1]' not in out     # only the drifted node fails
        assert gone not in podnet_routes('node2')          # check mode: the kernel is as it was
    finally:
        run_ok('site.yml', lab, extra=['--limit', 'node2'])
    assert podnet_routes('node2') == routes


def test_outside_check_mode_it_refuses_and_changes_nothing(lab):
    rc, out = playbook('drift.yml', lab)
    assert rc != 0
    assert 'drift.yml only looks: run it with --check --diff (nothing was changed)' in out
    assert 'node1' not in out.split('PLAY RECAP')[-1]
