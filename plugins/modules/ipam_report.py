#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: podnet.fabric contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r'''
---
module: ipam_report
short_description: Report IPAM utilization per pool and per node from the ledger (controller side)
version_added: 0.1.0
description:
  - Reads the IPAM ledger the validated model names (and, in C(crd) mode, the per-node documents)
    and reports utilization per pool and family (blocks handed to nodes, addresses, endpoint
    addresses in use) and per node (its CIDRs and endpoint use).
  - Returns the figures and a text table; with O(dest), also writes C(ipam.json) and C(ipam.html),
    a self-contained page (inline CSS and SVG bars per pool and per node, no external assets).
  - Endpoint use comes from what M(podnet.fabric.ipam_endpoint) recorded (C(pools_used), or
    C(status.ipam.used) in C(crd) mode).
  - In C(eni) mode the report adds C(eni) - per node its instance, ENIs, addresses held against its
    instance type's limit, and those in use (its endpoint records); per pod subnet its usable size and
    free addresses - from what M(podnet.fabric.eni_allocate) recorded, and warns when a pod subnet has
    less than 10% of its addresses free, before it runs out.
  - Changes nothing but the report files. This is an action plugin; it runs on the controller only.
  - C(playbooks/ipam_report.yml) runs it.
author:
  - podnet.fabric maintainers (@podnet)
extends_documentation_fragment:
  - podnet.fabric.controller
  - podnet.fabric.controller.model
options:
  dest:
    description: Directory to write C(ipam.json) and C(ipam.html) to (created if missing). Omit to only return the figures.
    type: path
  max_nodes:
    description: At most this many nodes in the text table (the JSON and HTML hold every node).
    type: int
    default: 50
attributes:
  check_mode:
    support: full
    description: Reads and reports; writes no files in check mode.
  diff_mode:
    support: none
    description: Changes nothing on the cluster, so there is no diff.
seealso:
  - module: podnet.fabric.ipam_allocate
'''

EXAMPLES = r'''
- name: Report IPAM utilization
  podnet.fabric.ipam_report:
    dest: /srv/reports/ipam
  register: report

- name: Print it
  ansible.builtin.debug:
    msg: "{{ report.table }}"
'''

RETURN = r'''
utilization:
  description:
    - C(pools) (per pool and family - C(cidrs), C(mask_size), C(blocks), C(addresses), C(endpoints)) and
      C(nodes) (per node - C(ip), C(in_inventory), and per pool and family C(cidrs), C(addresses),
      C(endpoints)); each figure is C(size), C(used), C(free), C(percent).
    - In C(eni) mode also C(eni) - C(nodes) (per node C(instance_id), C(instance_type), C(enis), C(addresses),
      C(used), C(free), C(limit), C(percent) of the limit held), C(subnets) (per subnet C(cidr), C(az), C(size),
      C(available), C(used), C(percent) taken) and C(warnings).
  returned: success
  type: dict
table:
  description: The report as lines of text.
  returned: success
  type: list
  elements: str
files:
  description: The report files (C(json), C(html)).
  returned: when O(dest) is given
  type: dict
  sample: {json: /srv/reports/ipam/ipam.json, html: /srv/reports/ipam/ipam.html}
'''
