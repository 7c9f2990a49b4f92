#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: podnet.fabric contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r'''
---
module: validate
short_description: Validate and normalize the whole podnet cluster inventory on the controller
version_added: 0.1.0
description:
  - Reads the cluster variables (C(podnet_cluster), C(podnet_ipam), C(podnet_routing), C(podnet_eni),
    C(podnet_policy), C(podnet_datapath)) and every node's variables (C(podnet_node_ip),
    C(podnet_node_device), C(podnet_node_labels), C(podnet_pod_cidrs), C(podnet_instance),
    C(podnet_endpoints)) of the hosts in O(group), checks types, unknown keys and semantics
    (overlapping or invalid CIDRs, pools too small, duplicate node IPs, missing per-mode variables,
    unsupported combinations, policy ports, CIDRs, entities and label selectors, duplicate endpoint
    names, more endpoints than a node's pod CIDR holds), and fills in the defaults.
  - 'Every error names the host (or C(all) for cluster-wide keys) and the key path, for example
    C(node3: podnet_node_ip: "10.0.0.300" is not an IPv4 address). All errors are reported at once.'
  - Run it in a play on C(localhost) before any play that touches nodes, so that a bad inventory
    changes nothing anywhere (C(playbooks/site.yml) does).
  - It also refuses C(ipam_prune=true) in a run that sees only a slice of the inventory (AWX job
    slicing gives each slice job the extra variable C(job_slice); C(podnet_sliced=true) says the same),
    since every node outside the slice would look removed and lose its CIDRs.
  - On success it sets the fact C(podnet_model), the normalized cluster model.
  - This is an action plugin; it runs on the controller only and never connects to a node.
author:
  - podnet.fabric maintainers (@podnet)
extends_documentation_fragment:
  - podnet.fabric.controller
options:
  group:
    description: The inventory group holding the cluster's nodes.
    type: str
    default: podnet_nodes
attributes:
  check_mode:
    support: full
    description: Validation reads only; it runs the same in check mode.
  diff_mode:
    support: none
    description: Changes nothing, so there is no diff.
'''

EXAMPLES = r'''
- name: Validate the inventory before touching any node
  hosts: localhost
  gather_facts: false
  tasks:
    - name: Validate
      podnet.fabric.validate:
        group: podnet_nodes
'''

RETURN = r'''
model:
  description: The normalized cluster model, also set as the fact C(podnet_model).
  returned: success
  type: dict
errors:
  description: 'Every error found, each C(<host or all>: <key path>: <message>).'
  returned: failure
  type: list
  elements: str
  sample: ["node3: podnet_node_ip: '10.0.0.300' is not an IPv4 address"]
'''
