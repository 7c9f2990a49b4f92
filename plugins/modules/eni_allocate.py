#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: podnet.fabric contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r'''
---
module: eni_allocate
short_description: Give every node its AWS ENIs and secondary IPs, as Cilium's ENI IPAM does (controller side)
version_added: 0.1.0
description:
  - AWS ENI IPAM (C(podnet_ipam.mode=eni)). Reads the fleet's EC2 state with a fixed number of batched
    describe calls (instance types, the instances' network interfaces, this cluster's detached ENIs, the
    VPCs' subnets and, when chosen by id or tag, security groups), plans every node of O(nodes), applies
    the plan, records each node's ENIs in the ledger and returns them as RV(eni_nodes).
  - 'Sizing is Cilium''s: C(available) is what the node''s pod ENIs hold, C(used) the addresses of the
    node''s endpoint records in the ledger; needed = max(pre_allocate - (available - used), min_allocate -
    available), capped by max(max_allocate - available, 0) when C(max_allocate) is set; when addresses are
    needed, C(max_above_watermark) more are taken. A node holds at most (MaximumNetworkInterfaces -
    first_interface_index) x (Ipv4AddressesPerInterface - 1) addresses (x16 with prefix delegation), from
    C(DescribeInstanceTypes); needing more, an unknown instance type or instance, or a subnet without the
    free addresses a new ENI needs (C(InsufficientFreeAddressesInSubnet)) fails the whole run before any
    API write, each error naming the node (and the type and the limit).'
  - Addresses go to the node's existing pod ENIs first (the primary ENI too when C(first_interface_index)
    is 0), then to new ENIs at the lowest free device index, in a subnet chosen by C(subnet_ids), else
    C(subnet_tags) (all must match), else the node's own subnet, always in the node's VPC and availability
    zone, the one with the most free addresses first; with security groups by C(security_group_ids), else
    C(security_group_tags) (a warning and the primary ENI's groups when none match), else the primary
    ENI's. C(podnet_node_eni) on a node replaces the cluster's choice of subnets or groups for that node.
  - Each new ENI carries the tags C(podnet.io/cluster), C(podnet.io/node) and
    C(podnet.io/managed=podnet.fabric) (plus C(podnet_eni.tags)) from its creation on, a description naming
    the instance, and C(DeleteOnTermination) on its attachment. A run stopped between creating an ENI and
    attaching it leaves a detached ENI that the next run attaches, never a second one.
  - 'With C(prefix_delegation) new ENIs take /28 prefixes, never mixed with single IPs on one ENI; a subnet
    that answers C(InsufficientPrefixesInSubnet) gets single IPs for the rest of the run. With
    C(release_excess_ips), free addresses beyond pre_allocate + max_above_watermark are released, never
    one in use.'
  - Detached ENIs of this cluster that no node of the run attaches are collected in two phases, at most 25
    per run each - tagged C(podnet.io/gc-marked) on one run, deleted on a later one if still detached. ENIs
    of other clusters, ENIs without the tags, and detached ENIs of inventory nodes outside this run are
    never touched.
  - Throttling (C(RequestLimitExceeded)) is retried by botocore's standard retry mode and then with our
    own jittered exponential backoff. Every failure carries the AWS error code (RV(aws_error_code)); no
    message carries credentials. Credentials come from boto3's usual chain (environment, profile, role).
  - This is an action plugin; it runs on the controller only and never connects to a node. Run it once
    per play (C(run_once), C(delegate_to=localhost)).
author:
  - podnet.fabric maintainers (@podnet)
requirements:
  - boto3 and botocore on the controller
extends_documentation_fragment:
  - podnet.fabric.controller
  - podnet.fabric.controller.model
options:
  nodes:
    description:
      - The nodes to plan and converge. Hosts that are not in O(group) are ignored.
      - Defaults to every host of O(group).
    type: list
    elements: str
  group:
    description: The inventory group holding the cluster's nodes.
    type: str
    default: podnet_nodes
  workers:
    description: How many nodes' EC2 writes run at once (each node's own writes stay in order).
    type: int
    default: 4
attributes:
  check_mode:
    support: full
    description: Reads EC2 and the ledger and plans; makes no EC2 write and writes no ledger; returns the plan.
  diff_mode:
    support: full
    description: Each changed node's ENIs and their address counts, before and after (planned, in check mode).
seealso:
  - module: podnet.fabric.validate
  - module: podnet.fabric.ipam_report
'''

EXAMPLES = r'''
- name: Give every node its ENIs and pod addresses
  podnet.fabric.eni_allocate:
    group: podnet_nodes
  delegate_to: localhost
  run_once: true
  register: eni

- name: What would change, without an EC2 write
  podnet.fabric.eni_allocate:
  delegate_to: localhost
  run_once: true
  check_mode: true
  diff: true
'''

RETURN = r'''
eni_nodes:
  description:
    - Per node of the run, its pod ENIs after the run (before it, in check mode), by device index, only
      those with a device index of at least C(first_interface_index). C(mac) is lower-case; C(ips) are the
      secondary IPv4 addresses (the primary excluded); C(prefixes) the delegated /28 prefixes.
  returned: success
  type: dict
  sample: {node1: {instance_id: i-0123456789abcdef0, instance_type: c5.large,
                   enis: [{id: eni-0a1b2c3d, mac: "02:00:00:5d:e1:d2", device_index: 1, subnet_id: subnet-0a1b,
                           subnet_cidr: 10.20.0.0/20, primary_ip: 10.20.0.10, ips: [10.20.0.11, 10.20.0.12],
                           prefixes: []}]}}
plan:
  description: The planned actions (create, attach, assign, unassign, delete_on_termination, gc_mark, gc_delete),
    each with its node and parameters.
  returned: success
  type: list
  elements: dict
changes:
  description: What was done (would be done, in check mode), one readable line per action.
  returned: success
  type: list
  elements: str
nodes:
  description: Per node the sizing figures - limit, available, used, needed, excess, max_enis, ipv4_per_eni.
  returned: success
  type: dict
subnets:
  description: The subnets that hold pod ENIs, with their CIDR, VPC, zone, usable size and free addresses.
  returned: success
  type: dict
gc:
  description: The garbage collection's actions of this run (gc_mark, gc_delete).
  returned: success
  type: list
  elements: dict
api_calls:
  description:
    - EC2 calls of the run by operation (C(calls)), HTTP attempts including retries (C(attempts)), throttled
      answers (C(throttled)), and the totals C(describe_calls) and C(write_calls).
  returned: always
  type: dict
ledger:
  description: The ledger's backend and location, and whether this run changed it.
  returned: success
  type: dict
errors:
  description: Every problem found, each naming its node (failed runs).
  returned: failure
  type: list
  elements: str
aws_error_code:
  description: The AWS error code of a failed EC2 call.
  returned: failure
  type: str
  sample: InsufficientFreeAddressesInSubnet
'''
