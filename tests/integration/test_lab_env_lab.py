"""PODNET_LAB_PREFIX / PODNET_LAB_NODES pick the demo inventory's lab, and lab_up/lab_down act on
that lab only (prefix `prp`, a throwaway lab). The demo lab `pnd` is never touched: its namespaces
are the same before and after. Other labs may come and go meanwhile (other test runs)."""
import os

import pytest

from labutil import REPO, assert_lab_gone, netns_names, playbook_with_env, purge, write_lab_inventory

PREFIX = 'prp'
DEMO = os.path.join(REPO, 'inventories', 'lab')

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason='the lab needs root')


def ns(prefix):
    return sorted(n for n in netns_names() if n.startswith(prefix + '-'))


def test_the_environment_picks_the_demo_inventorys_lab_and_lab_down_removes_only_it(tmp_path):
    purge(PREFIX)
    pnd = ns('pnd')
    asked = {'PODNET_LAB_PREFIX': PREFIX, 'PODNET_LAB_NODES': '2'}
    try:
        rc, out = playbook_with_env('lab_up.yml', DEMO, env_extra=asked)
        assert rc == 0, out
        assert ns(PREFIX) == ['prp-node1', 'prp-node2', 'prp-tor', 'prp-ul'], out
        assert ns('pnd') == pnd

        # An inventory whose file sets its prefix (prp) while the environment asks for another lab:
        # both playbooks refuse, and the inventory's lab stays.
        pinned = write_lab_inventory(str(tmp_path / 'pinned'), PREFIX, nodes=2)
        for name in ('lab_down.yml', 'lab_up.yml'):
            rc, out = playbook_with_env(name, pinned, env_extra={'PODNET_LAB_PREFIX': 'prq'})
            assert rc != 0, out
            assert "PODNET_LAB_PREFIX=prq but the inventory's lab is prp" in ' '.join(out.split()), out
        assert ns(PREFIX) == ['prp-node1', 'prp-node2', 'prp-tor', 'prp-ul'] and not ns('prq')

        # lab_down through import_playbook from elsewhere (as molecule's destroy does).
        wrapper = tmp_path / 'destroy.yml'
        wrapper.write_text('- name: Destroy\n  ansible.builtin.import_playbook: %s\n'
                           % os.path.join(REPO, 'playbooks', 'lab_down.yml'))
        rc, out = playbook_with_env(str(wrapper), DEMO, env_extra=asked)
        assert rc == 0, out
        assert_lab_gone(PREFIX)
        assert ns('pnd') == pnd
    finally:
        purge(PREFIX)
