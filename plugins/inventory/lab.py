# -*- coding: utf-8 -*-
# Copyright: podnet.fabric contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import annotations

DOCUMENTATION = r'''
name: lab
short_description: The nodes of a one-machine podnet lab cluster
version_added: 0.1.0
description:
  - Generates the inventory of a lab cluster built by M(podnet.fabric.lab_cluster) - N nodes in
    group C(podnet_nodes) with underlay addresses, and a ToR router in group C(podnet_lab_routers).
  - Every host uses the P(podnet.fabric.lab#connection) connection and the controller's own Python
    interpreter (the lab's nodes share the controller's filesystem).
  - Sets C(node_prereqs_manage_packages=false) on group C(podnet_lab), because the members share the
    controller's filesystem, so packages are installed once on the machine, not from inside a member.
  - The file must end in C(.podnet.yml) or C(.podnet.yaml). Cluster variables (C(podnet_ipam) and the
    rest) go in C(group_vars/) beside it, as for any inventory.
  - 'Where O(prefix) and O(nodes) come from, as Ansible''s precedence for plugin options has it:
    a value set in the file wins; when the file leaves it unset, the environment variable
    (E(PODNET_LAB_PREFIX), E(PODNET_LAB_NODES)); else the default (C(pnd), C(3)). The demo
    inventory C(inventories/lab/lab.podnet.yml) leaves both unset, so
    C(PODNET_LAB_PREFIX=mine make demo) and C(PODNET_LAB_PREFIX=mine make down) act on lab C(mine)
    only. C(playbooks/lab_up.yml) and C(playbooks/lab_down.yml) refuse to act when
    E(PODNET_LAB_PREFIX) is set and names another lab than the inventory''s (a file that sets
    O(prefix)).'
author:
  - podnet.fabric maintainers (@podnet)
options:
  plugin:
    description: The name of this plugin.
    required: true
    choices: [podnet.fabric.lab]
  prefix:
    description:
      - The lab's name prefix (see M(podnet.fabric.lab_cluster)).
      - Leave it out of the file to take it from E(PODNET_LAB_PREFIX); set here, it wins over the environment.
    type: str
    default: pnd
    env:
      - name: PODNET_LAB_PREFIX
  nodes:
    description:
      - How many nodes.
      - Leave it out of the file to take it from E(PODNET_LAB_NODES); set here, it wins over the environment.
    type: int
    default: 3
    env:
      - name: PODNET_LAB_NODES
  node_name:
    description: Node name pattern; C({n}) is the node number, from 1.
    type: str
    default: node{n}
  underlay_cidr:
    description: The underlay IPv4 network.
    type: str
    default: 192.168.50.0/24
  first_node_host:
    description: Host number (offset in O(underlay_cidr)) of the first node; the others follow.
    type: int
    default: 11
  router:
    description: Name of the ToR router member; empty for none.
    type: str
    default: tor
  router_host:
    description: Host number of the ToR router in O(underlay_cidr).
    type: int
    default: 1
  instance_type:
    description:
      - An ENI lab (C(podnet_ipam.mode=eni)) gives every node C(podnet_instance) with this EC2 instance
        type and an id derived from the prefix and the node name, the id the lab's EC2 endpoint gives
        the node's instance (C(playbooks/lab_up.yml) seeds it). Empty (the default) for other labs.
    type: str
    default: ''
  python:
    description:
      - The interpreter tasks use inside the lab's members. Defaults to the controller's own
        interpreter, which sees the same filesystem.
    type: str
'''

EXAMPLES = r'''
# inventories/lab/lab.podnet.yml: prefix and node count from PODNET_LAB_PREFIX / PODNET_LAB_NODES,
# else pnd and 3
# (a test's own inventory adds "prefix: ptb" and "nodes: 4": fixed, whatever the environment says)
plugin: podnet.fabric.lab
underlay_cidr: 192.168.50.0/24
'''

import ipaddress
import sys

from ansible.errors import AnsibleParserError
from ansible.plugins.inventory import BaseInventoryPlugin

from ansible_collections.podnet.fabric.plugins.module_utils import lab_ec2


class InventoryModule(BaseInventoryPlugin):

    NAME = 'podnet.fabric.lab'

    def verify_file(self, path):
        return super(InventoryModule, self).verify_file(path) and path.endswith(('.podnet.yml', '.podnet.yaml'))

    def parse(self, inventory, loader, path, cache=True):
        super(InventoryModule, self).parse(inventory, loader, path, cache)
        self._read_config_data(path)
        prefix = self.get_option('prefix')
        count = self.get_option('nodes')
        try:
            net = ipaddress.ip_network(self.get_option('underlay_cidr'), strict=True)
        except ValueError as e:
            raise AnsibleParserError('%s: underlay_cidr: %s' % (path, e))
        first = self.get_option('first_node_host')
        if count < 1 or first < 1 or first + count >= net.num_addresses - 1:
            raise AnsibleParserError('%s: %d nodes from host %d do not fit in %s' % (path, count, first, net))
        python = self.get_option('python') or sys.executable

        for group in ('podnet_lab', 'podnet_nodes', 'podnet_lab_routers'):
            self.inventory.add_group(group)
        self.inventory.add_child('podnet_lab', 'podnet_nodes')
        self.inventory.add_child('podnet_lab', 'podnet_lab_routers')
        # Lab members share the controller's filesystem: packages and the venv are the machine's
        # (make bootstrap installs them), never installed from inside a member.
        self.inventory.set_variable('podnet_lab', 'node_prereqs_manage_packages', False)

        def add(name, group, ip, role):
            self.inventory.add_host(name, group=group)
            common = {
                'ansible_connection': 'podnet.fabric.lab',
                'ansible_python_interpreter': python,
                'podnet_lab_prefix': prefix,
                'podnet_lab_underlay_cidr': str(net),
                'podnet_lab_member': {'name': name, 'ip': ip, 'role': role},
            }
            for k, v in common.items():
                self.inventory.set_variable(name, k, v)

        for n in range(1, count + 1):
            name = self.get_option('node_name').format(n=n)
            ip = str(net.network_address + first + n - 1)
            add(name, 'podnet_nodes', ip, 'node')
            self.inventory.set_variable(name, 'podnet_node_ip', ip)
            if self.get_option('instance_type'):
                self.inventory.set_variable(name, 'podnet_instance', {
                    'id': lab_ec2.instance_id(prefix, name), 'type': self.get_option('instance_type')})
        router = self.get_option('router')
        if router:
            add(router, 'podnet_lab_routers', str(net.network_address + self.get_option('router_host')), 'router')
