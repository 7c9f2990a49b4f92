"""Shared pytest set-up for the unit and integration suites.

1. Make `ansible_collections.podnet.fabric` importable from this checkout (as ansible-test does):
   `make` links build/collections/ansible_collections/podnet/fabric to the repo root; tests import
   module_utils by their real names, so imports between module_utils files are exercised too.
2. Under CI=true a skipped test is a failure: a run where the root, lab or tool-dependent tests
   silently skipped must not pass. Outside CI a skip stays a skip (a developer without root).
"""
import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LINK = os.path.join(ROOT, 'build', 'collections', 'ansible_collections', 'podnet', 'fabric')
if not os.path.exists(LINK):
    os.makedirs(os.path.dirname(LINK), exist_ok=True)
    os.symlink('../../../..', LINK)
sys.path.insert(0, os.path.join(ROOT, 'build', 'collections'))

STRICT = os.environ.get('CI', '').lower() == 'true' or os.environ.get('PODNET_NO_SKIP') == '1'


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    if STRICT and rep.skipped and not hasattr(rep, 'wasxfail'):
        reason = rep.longrepr[2] if isinstance(rep.longrepr, tuple) else str(rep.longrepr)
        rep.outcome = 'failed'
        rep.longrepr = 'skipped under CI=true, which counts as a failure: %s' % reason
