"""The error funnel: a netlink error in any node module ends in one line naming the module and its
object, with the errno, never a traceback. Each module runs as Ansible runs it (a subprocess with
its arguments in a file), with pyroute2's IPRoute replaced by one that fails as the kernel does
when the caller lacks CAP_NET_ADMIN: NetlinkError(EPERM)."""
import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
COLLECTIONS = os.path.join(ROOT, 'build', 'collections')   # tests/conftest.py links the checkout there

# Runs the module file as __main__ after netlink.IPRoute has been replaced.
INJECT = r'''
import runpy, sys
from pyroute2.netlink.exceptions import NetlinkError
from ansible_collections.podnet.fabric.plugins.module_utils import netlink


class RefusingIPRoute(object):
    def __init__(self, *args, **kwargs):
        raise NetlinkError(1, 'Operation not permitted')


netlink.IPRoute = RefusingIPRoute
path = sys.argv.pop(1)
runpy.run_path(path, run_name='__main__')
'''

CASES = {
    'endpoint': ({'name': 'pt-web', 'addresses': ['10.244.1.9'], 'router_ips': ['10.244.1.1']}, 'endpoint pt-web: '),
    'health_endpoint': ({'addresses': ['10.244.1.7'], 'router_ips': ['10.244.1.1'], 'node_name': 'node1'},
                        'health endpoint podnet-health: '),
    'host_device': ({'node_ip': '192.0.2.11'}, 'host_device podnet_host: '),
    'routing': ({'mode': 'native', 'node': 'node1', 'node_ip': '192.0.2.11'}, 'routing (node1): '),
    'node_info': ({}, 'node_info: '),
}


@pytest.mark.parametrize('check', [False, True], ids=['run', 'check'])
@pytest.mark.parametrize('module', sorted(CASES))
def test_a_netlink_error_is_one_line_naming_module_object_and_errno(module, check, tmp_path):
    pytest.importorskip('pyroute2')
    args, prefix = CASES[module]
    margs = dict(args, _ansible_check_mode=check, _ansible_diff=True)
    if module != 'node_info':                          # a node module: not the host's /run/podnet lock
        margs['lock_path'] = str(tmp_path / 'node.lock')
    argfile = tmp_path / 'args.json'
    argfile.write_text(json.dumps({'ANSIBLE_MODULE_ARGS': margs}))
    p = subprocess.run([sys.executable, '-c', INJECT, os.path.join(ROOT, 'plugins', 'modules', module + '.py'),
                        str(argfile)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True,
                       env=dict(os.environ, PYTHONPATH=COLLECTIONS), check=False)
    assert 'Traceback' not in p.stdout + p.stderr, p.stdout + p.stderr
    res = json.loads(p.stdout)
    assert p.returncode == 1 and res['failed'] and res['changed'] is False, res
    assert res['msg'] == prefix + 'Operation not permitted (EPERM, errno 1)', res['msg']
    assert 'exception' not in res
