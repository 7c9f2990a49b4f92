#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: podnet.fabric contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r'''
---
module: ipam_rebuild
short_description: Rebuild a lost or torn IPAM ledger from the nodes' leases (controller side)
version_added: 0.1.0
description:
  - Rebuilds the cluster's ledger (C(podnet_ipam.ledger)) from what every node holds, as
    M(podnet.fabric.ipam_node_info) read it - each node's lease (its CIDRs, pool blocks, underlay
    IP and C(allocated_at)) and its endpoint store (the addresses in use, recorded as the entry's
    C(pools_used), not in C(crd) mode, whose use lives in the node documents; and which endpoint holds
    each, the entry's endpoint records, with identities from the endpoints' labels). The rebuilt ledger
    hands out exactly the leases the nodes hold, so the next C(playbooks/site.yml) run changes
    nothing. C(playbooks/ledger_rebuild.yml) drives it.
  - Everything is decided and written under the ledger's lock (C(file)) or with a conditional
    write (C(s3)). A missing ledger is written; a torn one (not JSON, truncated, not a ledger) is
    kept beside the new one as C(<path>.torn-<UTC time>), never deleted; a readable ledger that
    already holds what the nodes hold is left alone; a readable ledger that differs is refused
    (naming the nodes that differ) unless O(force), and then kept as C(<path>.replaced-<UTC time>).
  - Refused, with nothing written - two nodes whose leases claim one CIDR (or overlapping ones),
    naming both nodes and the CIDRs; a lease for another cluster or node; and, unless
    O(allow_missing), a node of the inventory that did not report, whose lease is unreadable, or
    that has no lease while its endpoint store holds addresses (its CIDR would be handed out
    again). A node with neither lease nor endpoints was never provisioned and is left out.
  - Another cluster's ledger and a ledger of an unsupported version are never replaced.
  - Identities are not in the leases; they are derived again from the endpoints' labels. A readable
    ledger (replaced with O(force)) keeps its identity numbers and endpoint ids; a lost or torn one's
    can come back different (endpoint ids - the health endpoint's first, then by name).
  - This is an action plugin; it runs on the controller only and never connects to a node.
author:
  - podnet.fabric maintainers (@podnet)
extends_documentation_fragment:
  - podnet.fabric.controller
  - podnet.fabric.controller.model
options:
  reports:
    description:
      - What each node reported, a dict of node name to the result of M(podnet.fabric.ipam_node_info);
        a node whose value is null, false, failed or unreachable did not report.
      - Every node of the validated model (O(model)) is expected.
    type: dict
    required: true
  force:
    description: Replace a readable ledger that differs from the nodes' leases (it is kept aside).
    type: bool
    default: false
  allow_missing:
    description:
      - Rebuild without the nodes that could not be read (they get no entry, and their CIDRs may be
        handed to other nodes). Each is named in a warning.
    type: bool
    default: false
attributes:
  check_mode:
    support: full
    description: Reads the ledger and plans; writes nothing, keeps nothing aside, and returns the
      diff of what it would write.
  diff_mode:
    support: full
    description: Returns the ledger's nodes before (and its state - missing, torn or valid) and after.
seealso:
  - module: podnet.fabric.ipam_node_info
  - module: podnet.fabric.ipam_allocate
'''

EXAMPLES = r'''
- name: Read every node's lease and endpoint use
  podnet.fabric.ipam_node_info:
  register: rebuild_node

- name: Rebuild the ledger (once, on the controller)
  podnet.fabric.ipam_rebuild:
    # a node without the registered result gets false: it did not report
    reports: "{{ dict(groups['podnet_nodes'] | zip(groups['podnet_nodes'] | map('extract', hostvars)
                 | map(attribute='rebuild_node', default=false))) }}"
  delegate_to: localhost
  run_once: true
'''

RETURN = r'''
was:
  description: The state of the ledger before - C(missing), C(torn) or C(valid) - and, when torn, why.
  returned: success
  type: dict
  sample: {state: torn, error: "/var/lib/podnet/ledger/lab.json: the ledger is not valid JSON (...)"}
kept_aside:
  description: Where the old ledger was kept (would be kept, in check mode); null when none was replaced.
  returned: success
  type: str
  sample: /var/lib/podnet/ledger/lab.json.torn-20250101T120000Z
nodes:
  description: The nodes of the rebuilt ledger with their CIDRs (all families and pools) and C(pools_used).
  returned: success
  type: dict
  sample: {node1: {cidrs: [10.244.0.0/24], pools_used: {default: {ipv4: 1}}}}
ledger:
  description: The ledger's backend, location and serial after the run.
  returned: success
  type: dict
  sample: {backend: file, location: /var/lib/podnet/ledger/lab.json, serial: 3}
'''
