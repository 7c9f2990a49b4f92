#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: podnet.fabric contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r'''
---
module: drift_report
short_description: Say what drifted on a node, from the results of a check-mode site run
version_added: 0.1.0
description:
  - Takes the registered results of the tasks of a C(--check --diff) run of C(playbooks/site.yml)
    on one node and returns one line per object that the run would change - the object, what the
    inventory expects of it and what the node has (for podnet's node modules, from their plan; for
    any other task that would change, the file, mount or sysctl it names).
  - C(playbooks/drift.yml) runs it as the last step of the drift job.
  - This is an action plugin; it runs on the controller only and never connects to the node.
author:
  - podnet.fabric maintainers (@podnet)
options:
  results:
    description: Task results by area (for example C(routing), C(host_device)), in the order to report them.
    type: dict
    required: true
  node:
    description: The node the results are of, for the report; defaults to C(inventory_hostname).
    type: str
attributes:
  action:
    support: full
    description: Runs on the controller as an action plugin.
  check_mode:
    support: full
    description: Reads its arguments only; the same in check mode.
  diff_mode:
    support: none
    description: Changes nothing, so there is no diff.
seealso:
  - module: podnet.fabric.routing
'''

EXAMPLES = r'''
- name: Say what drifted
  podnet.fabric.drift_report:
    results:
      host_device: "{{ host_device_result | default({}) }}"
      routing: "{{ routing_result | default({}) }}"
  register: drift
'''

RETURN = r'''
drifted:
  description: Whether anything would change on the node.
  returned: always
  type: bool
lines:
  description: One entry per object that would change.
  returned: always
  type: list
  elements: dict
  sample: [{area: routing, object: route_add dst=10.244.1.0/24 gateway=192.168.50.12, expected: present, found: missing}]
text:
  description: "The node's report as text: C(<node>: no drift), or a count and one line per object."
  returned: always
  type: str
'''
