# -*- coding: utf-8 -*-
# Copyright: podnet.fabric contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import absolute_import, division, print_function

__metaclass__ = type


class ModuleDocFragment(object):
    # What every module that reconciles an endpoint takes (module_utils/endpoint.py): endpoint, health_endpoint.
    DOCUMENTATION = r'''
options:
  addresses:
    description:
      - The endpoint's addresses, at most one IPv4 and one IPv6, bare or as host prefixes
        (C(10.244.0.5) or C(10.244.0.5/32)). Required when O(state=present).
      - Take them from the node's IPAM store with M(podnet.fabric.ipam_endpoint).
    type: list
    elements: str
  router_ips:
    description:
      - The node's router IPs on the host device, as M(podnet.fabric.ipam_endpoint) returns them. For
        each family of O(addresses), the first router IP of that family is the endpoint's default
        gateway; a family of O(addresses) without one is an error.
    type: list
    elements: str
    default: []
  mtu:
    description: MTU of both ends of the pair (the pod MTU). C(0) takes the MTU of O(host_device).
    type: int
    default: 0
  host_device:
    description: The node's host device, whose MTU O(mtu=0) takes.
    type: str
    default: podnet_host
notes:
  - Needs pyroute2 0.9 or later on the node; run it with the podnet interpreter.
  - 'Inside the namespace each address is on C(eth0) as a host prefix (/32, /128), with C(<router>
    dev eth0 scope link) and C(default via <router>); on the node, C(<address> dev <device> scope
    link proto podnet) (protocol 201 marks podnet''s routes).'
  - The node answers ARP for the router IP on the node side of the pair by Linux's default
    behaviour (C(arp_ignore=0) answers for any local address); the module warns when the node's
    effective C(arp_ignore) there is not 0. For an IPv6 address the node proxies the IPv6 router IP
    there (C(proxy_ndp=1), a proxy neighbour entry, C(proxy_delay=0)).
  - The namespace does not survive a reboot (it lives under C(/run/netns)); running the module again
    recreates it.
'''
