#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: podnet.fabric contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r'''
---
module: ipam_allocate
short_description: Allocate the cluster's pod CIDRs in the durable IPAM ledger (controller side)
version_added: 0.1.0
description:
  - Opens the ledger the validated model names (C(podnet_ipam.ledger) - the C(file) backend with an
    exclusive lock and atomic replace, or C(s3) with conditional writes), gives every node of
    O(nodes) that lacks one its allocation, writes the ledger, and returns each node's lease.
  - 'Per mode: C(cluster-pool) gives each node the lowest free block of C(mask_size) per family;
    C(kubernetes) records each node''s C(podnet_pod_cidrs) (checked for overlaps and containment in
    C(cluster_cidrs)); C(multi-pool) gives each node blocks of the pools it serves (C(default), pools
    with C(pre_allocation), pools named by the node label C(ipam.podnet.io/ip-pools)) so that each
    keeps C(pre_allocation) addresses free; C(crd) records the pool an external allocator wrote to the
    node''s document (C(spec.ipam.pool) of C(<ledger stem>.d/nodes/<node>.json)); C(eni) records
    nothing (the ENI role assigns addresses).'
  - Existing allocations never move, whatever joins or leaves the inventory. A node that is in the
    ledger but no longer in the inventory keeps its CIDRs until a run with O(prune=true).
  - The whole plan is computed and written under the ledger's lock (or conditional write), so two
    jobs or two AWX slices running at once never hand one CIDR to two nodes. An impossible
    allocation (an exhausted pool, a conflict) fails with the library's message, naming the pool,
    its size and its use, and writes nothing.
  - It reads only the model (the fact C(podnet_model) on C(localhost), set by
    M(podnet.fabric.validate)) and the ledger, never other hosts' variables, so it works under
    C(--limit) and AWX job slicing.
  - This is an action plugin; it runs on the controller only and never connects to a node. Run it
    once per play (C(run_once), C(delegate_to=localhost)); the C(podnet.fabric.ipam) role does.
author:
  - podnet.fabric maintainers (@podnet)
extends_documentation_fragment:
  - podnet.fabric.controller
  - podnet.fabric.controller.model
options:
  nodes:
    description:
      - The nodes to allocate for. Only these nodes get allocations and leases; hosts that are not
        in O(group) (a lab router, for example) are ignored.
      - Defaults to every host of O(group) the inventory holds, also those a C(--limit) leaves out, so
        that runs limited to different nodes agree on one cluster map. (A slice of AWX job slicing
        sees only its own hosts; the other slices' nodes come from the ledger.)
    type: list
    elements: str
  prune:
    description:
      - Release the allocations of ledger nodes that are not in the inventory (not in the model's
        nodes). Their CIDRs can then be handed to new nodes.
      - Do not use it with sliced inventories (AWX job slicing, or inventories that hold only part
        of the cluster) because every node outside the slice looks removed and would lose its CIDR.
        C(--limit) is safe, because the model still holds the whole inventory.
      - Refused with an error, before the ledger is read, when the run is a slice. AWX gives each job of
        a sliced job template the extra variable C(job_slice) (the slice's number), and
        C(podnet_sliced=true) says the same for other schedulers.
    type: bool
    default: false
  group:
    description: The inventory group holding the cluster's nodes (as for M(podnet.fabric.validate)).
    type: str
    default: podnet_nodes
attributes:
  check_mode:
    support: full
    description: Reads the ledger and plans; writes nothing, returns the planned allocations and diff.
  diff_mode:
    support: full
    description: Returns the ledger entries of the nodes that change, before and after.
seealso:
  - module: podnet.fabric.validate
  - module: podnet.fabric.ipam_node
  - module: podnet.fabric.ipam_report
'''

EXAMPLES = r'''
- name: Allocate for every node of the inventory group
  podnet.fabric.ipam_allocate:
    group: podnet_nodes
  delegate_to: localhost
  run_once: true
  register: alloc

- name: Release the CIDRs of nodes removed from the (whole, unsliced) inventory
  podnet.fabric.ipam_allocate:
    prune: true
  delegate_to: localhost
  run_once: true
'''

RETURN = r'''
allocations:
  description: Each run node's lease (null while a C(crd) node has no pool yet, and in C(eni) mode).
  returned: success
  type: dict
  sample: {node1: {cluster: lab, node: node1, ip: 192.168.50.11, mode: cluster-pool, allocated_at: 1,
                   cidrs: {ipv4: [10.244.0.0/24], ipv6: []}, pools: {}}}
nodes:
  description:
    - The node map. Every node the ledger holds (not only this run's), with its underlay IP
      (C(node_ip)) and all its pod CIDRs (C(pod_cidrs)); M(podnet.fabric.routing) routes to these. A node
      leaves it when it is pruned.
  returned: success
  type: dict
  sample: {node1: {node_ip: 192.168.50.11, pod_cidrs: {ipv4: [10.244.0.0/24], ipv6: []}},
           node2: {node_ip: 192.168.50.12, pod_cidrs: {ipv4: [10.244.1.0/24], ipv6: []}}}
cluster_pod_cidrs:
  description:
    - Every pod CIDR of O(nodes), by family, each once, sorted. The routing role's masquerade leaves
      traffic to these alone when neither a native-routing CIDR nor the cluster pool bounds the pods
      (site.yml passes it as C(routing_cluster_pod_cidrs), built once instead of on every node).
  returned: success
  type: dict
  sample: {ipv4: [10.244.0.0/24, 10.244.1.0/24], ipv6: []}
endpoints:
  description:
    - The endpoint records of every node the ledger holds, as the nodes' C(ipam_endpoint) runs recorded
      them; per node, per endpoint (C(<namespace>/<name>), or C(podnet-health)) its endpoint id, security
      identity and addresses. C(verify.yml) probes the health endpoints at these addresses, read from
      the ledger rather than from other hosts' variables.
  returned: success
  type: dict
  sample: {node1: {podnet-health: {ep_id: 1, identity: 4, ips: [10.244.0.2]}}}
changes:
  description: What the plan did, each with C(action) (allocated, released, recorded, updated, note,
    warning), a readable C(msg) and structured fields.
  returned: success
  type: list
  elements: dict
  sample: [{action: allocated, msg: "node1: allocated ipv4 10.244.0.0/24", node: node1, family: ipv4,
            pool: default, cidrs: [10.244.0.0/24]}]
waiting:
  description: Run nodes without an allocation yet (C(crd) mode before the external allocator wrote
    their pool).
  returned: success
  type: list
  elements: str
ledger:
  description: The ledger's backend, location and serial after the run.
  returned: success
  type: dict
  sample: {backend: file, location: /var/lib/podnet/ledger/lab.json, serial: 3}
'''
