# -*- coding: utf-8 -*-
# Copyright: podnet.fabric contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The overlay's fixed facts, written once: the controller's validation fills the inventory's
defaults from them (inventory.py) and the node's routing builds its devices with them (routing.py).
Small on purpose: nodes receive it with the routing module."""
from __future__ import absolute_import, division, print_function

__metaclass__ = type

# UDP ports as Cilium and the kernel use them (VXLAN 8472, the Linux default, not IANA's 4789).
PORTS = {'vxlan': 8472, 'geneve': 6081}
DEFAULT_VNI = 2
# What encapsulation costs an inner packet: outer IPv4 20 + UDP 8 + VXLAN/Geneve 8 + inner Ethernet 14.
OVERHEAD = 50


def overhead(mode):
    """Bytes the pod MTU gives up to the routing mode: the encapsulation in tunnel mode, else none."""
    return OVERHEAD if mode == 'tunnel' else 0
