"""Make `ansible_collections.podnet.fabric` importable from this checkout (as ansible-test does).

`make` links build/collections/ansible_collections/podnet/fabric to the repo root; tests import
module_utils by their real names, so imports between module_utils files are exercised too.
"""
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LINK = os.path.join(ROOT, 'build', 'collections', 'ansible_collections', 'podnet', 'fabric')
if not os.path.exists(LINK):
    os.makedirs(os.path.dirname(LINK), exist_ok=True)
    os.symlink('../../../..', LINK)
sys.path.insert(0, os.path.join(ROOT, 'build', 'collections'))
