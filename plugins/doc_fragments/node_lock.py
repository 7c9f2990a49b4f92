# -*- coding: utf-8 -*-
# Copyright: podnet.fabric contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import absolute_import, division, print_function

__metaclass__ = type


class ModuleDocFragment(object):
    # The node lock every node module holds while it changes the node (module_utils/reconcile.py).
    DOCUMENTATION = r'''
options:
  lock_path:
    description:
      - The node lock. Outside check mode the module reads, plans and applies while it holds an
        exclusive lock on this file, so runs that change the same node at once take turns, and
        each plans from what the one before it left. Check mode does not take it.
      - While the lock is held the file names its holder - the run (the C(PODNET_RUN_ID)
        environment variable, which C(playbooks/site.yml) sets), the module, its PID and start time.
    type: path
    default: /run/podnet/node.lock
  lock_timeout:
    description:
      - Seconds to wait for the node lock. A module that times out fails, naming the run that
        holds the lock, and changes nothing.
    type: float
    default: 300
notes:
  - When an action fails, the module fails with one line naming the object and the error, and
    returns C(done) (the actions completed before it), C(failed_action) (the action that failed) and
    C(changed=true) when anything was done.
'''
