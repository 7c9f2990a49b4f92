#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: podnet.fabric contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r'''
---
module: datapath_plan
short_description: Allocate security identities and plan each node's eBPF datapath entries (controller side)
version_added: 0.1.0
description:
  - The controller half of the eBPF datapath. Through the IPAM ledger (under its lock, or with a
    conditional write on S3), it gives every endpoint of C(podnet_endpoints) (every node of the validated
    model - the whole inventory, also under C(--limit); a slice's own nodes under AWX job slicing) a
    security identity derived from its identity-relevant labels (C(podnet_datapath.label_filter),
    Cilium's default, plus the endpoint's namespace and the cluster's name), the same labels the same
    number on every run and every node. Cluster-local identities start at 256 inside the cluster id's
    range (C(id << 16)); reserved ones (0 unknown, 1 host, 2 world, 4 health, 6 remote-node, ...) are
    fixed. Every CIDR a rule of C(podnet_policy) names gets a CIDR identity, C(1 << 24) plus n.
  - The ledger records which endpoint holds which addresses, identity and endpoint id on each node
    (M(podnet.fabric.ipam_endpoint) writes those records after each change); this action moves those
    endpoints to the identity their inventory labels give now, so a label change takes effect here.
  - Returns, for each node of O(nodes), the entries of its datapath maps in the symbolic form the node
    side takes - C(endpoints) (one per endpoint address, with the enforcement flags), C(ipcache) (every
    endpoint and node address of the cluster, CIDR identities and the world prefixes; tunnel endpoints in
    tunnel mode) and C(policy) (C(podnet_policy) compiled per endpoint; deny beats allow; once a rule
    selects an endpoint in a direction, that direction is default-deny). All of it comes from the ledger,
    never from other hosts' variables, so an AWX slice or a C(--limit) run still sees the whole cluster.
  - Run it once (C(run_once)) after the endpoints have their addresses. It needs the fact C(podnet_model)
    on C(localhost) (M(podnet.fabric.validate) sets it) or O(model).
  - With C(podnet_datapath.enabled=false) it plans nothing and changes nothing.
author:
  - podnet.fabric maintainers (@podnet)
extends_documentation_fragment:
  - podnet.fabric.controller
  - podnet.fabric.controller.model
options:
  nodes:
    description:
      - The nodes whose entries to return (the nodes whose maps the play syncs). Hosts that are not in
        O(group) are left out. Identities are allocated for every node of the model whatever this says.
      - Defaults to every host of the play (C(ansible_play_hosts_all)).
    type: list
    elements: str
  group:
    description: The inventory group holding the cluster's nodes.
    type: str
    default: podnet_nodes
  prune:
    description:
      - Release the identities that no endpoint of the ledger and no endpoint of the inventory holds,
        and the CIDR identities no rule names.
      - Refused, before the ledger is read, in a run that is a slice (the extra variable C(job_slice) of
        AWX job slicing, or C(podnet_sliced=true)) - the other slices' endpoints that have no address yet
        would look unused.
    type: bool
    default: false
  health_endpoint_id:
    description: The health endpoint's IPAM name on each node; it holds the reserved identity 4 (health).
    type: str
    default: podnet-health
  walk_ports:
    description:
      - Also return the packet walk's matrix (RV(walk)) - TCP connections from every endpoint of the run's
        nodes to every endpoint of the cluster on these ports (and on the health port, 4240, to a health
        endpoint), with the verdict the policy gives each. C(playbooks/verify.yml) probes it.
    type: list
    elements: int
attributes:
  check_mode:
    support: full
    description: Plans on a copy of the ledger and reports the identities it would allocate or release; writes nothing.
  diff_mode:
    support: full
    description: Returns the identities that change, before and after.
notes:
  - The policy is cluster-wide, like a CiliumClusterwideNetworkPolicy - select a namespace with the label
    C(io.kubernetes.pod.namespace). An empty C(endpoint_selector) selects every endpoint, the health
    endpoint included, so a default-deny rule over C({}) should allow the entities C(health), C(host)
    and C(remote-node) where node health checks matter.
seealso:
  - module: podnet.fabric.ipam_endpoint
  - module: podnet.fabric.validate
'''

EXAMPLES = r'''
- name: Plan the datapath of every node of the play
  podnet.fabric.datapath_plan:
  run_once: true
  register: datapath

- name: Release identities nothing holds any more
  podnet.fabric.datapath_plan:
    prune: true
  run_once: true
'''

RETURN = r'''
enabled:
  description: Whether C(podnet_datapath.enabled) is true (when false, nothing is planned).
  returned: always
  type: bool
host_routing:
  description: C(podnet_datapath.host_routing), C(bpf) or C(kernel).
  returned: when enabled
  type: str
  sample: bpf
datapath:
  description:
    - Per node of the run, C(endpoints), C(ipcache) and C(policy) entries in the datapath contract's
      symbolic form.
    - C(endpoints) - C({name, address, ep_id, identity, enforce_ingress, enforce_egress}); C(name) is the
      endpoint's IPAM name (C(<namespace>/<name>), or the health endpoint's).
    - C(ipcache) - C({prefix, identity, tunnel_endpoint, local}); C(local) marks the node's own endpoints.
    - C(policy) - C({ep_id, direction, identity, protocol, port, end_port, icmp_type, verdict, rule});
      identity 0 is any peer; C(port) is left out for all ports, C(end_port) for a single port; C(rule)
      is the 1-based index of the deciding rule in C(podnet_policy.rules).
  returned: always
  type: dict
  sample:
    node1:
      endpoints: [{name: default/web-1, address: 10.244.1.2, ep_id: 1, identity: 256,
                   enforce_ingress: true, enforce_egress: false}]
      ipcache: [{prefix: 10.244.2.5/32, identity: 257, tunnel_endpoint: 192.168.50.12, local: false}]
      policy: [{ep_id: 1, direction: ingress, identity: 257, protocol: tcp, port: 80, verdict: allow, rule: 1}]
counts:
  description: Per node, how many entries of each kind.
  returned: when enabled
  type: dict
  sample: {node1: {endpoints: 3, ipcache: 14, policy: 6}}
identities:
  description: The cluster's identities after the run, C({labels} | {cidr}) by number.
  returned: always
  type: dict
  sample: {"256": {labels: ["app=web", "io.cilium.k8s.policy.cluster=lab", "io.kubernetes.pod.namespace=default"]},
           "16777217": {cidr: 192.0.2.0/24}}
changes:
  description: Identities allocated, released and endpoints moved, each with C(action) and C(msg).
  returned: always
  type: list
  elements: dict
walk:
  description:
    - With O(walk_ports), per source node, the connections of the packet walk and their expected verdicts.
    - C(src) / C(dst) are IPAM names; C(netns) is the source's network namespace (C(<namespace>.<name>), or
      the health endpoint's); C(verdict) C(allow) or C(deny); C(rule) the deciding rule's number, C(default deny),
      or null when no policy decided.
  returned: when O(walk_ports) is given and the datapath is enabled
  type: dict
  sample:
    node1:
      - {src: default/client-1, src_node: node1, netns: default.client-1, dst: default/web-1, dst_node: node1,
         address: 10.244.1.3, port: 8080, verdict: allow, rule: 1}
ledger:
  description: The ledger's backend, location and serial after the run.
  returned: when enabled
  type: dict
'''
