"""meta/runtime.yml's action group names every module, so module_defaults for group/podnet.fabric.podnet
reaches all of them."""
import os

import yaml

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_the_action_group_lists_every_module():
    with open(os.path.join(REPO, 'meta', 'runtime.yml')) as f:
        group = yaml.safe_load(f)['action_groups']['podnet']
    modules = sorted(m[:-3] for m in os.listdir(os.path.join(REPO, 'plugins', 'modules'))
                     if m.endswith('.py') and not m.startswith('_'))
    assert sorted(group) == modules
