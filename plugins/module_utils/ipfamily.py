# -*- coding: utf-8 -*-
# Copyright: podnet.fabric contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The one IP-family helper: an address or CIDR's family as podnet names it ('ipv4' / 'ipv6', the
keys of leases, pools and endpoint IPs) and as the kernel numbers it (AF_INET / AF_INET6). Pure and
dependency-free, so the controller and every node module can import it."""
from __future__ import absolute_import, division, print_function

__metaclass__ = type

import socket


def family_of(text):
    """'ipv6' for an IPv6 address or CIDR (text), else 'ipv4'."""
    return 'ipv6' if ':' in text else 'ipv4'


def af_of(text):
    """socket.AF_INET6 for an IPv6 address or CIDR (text), else socket.AF_INET."""
    return socket.AF_INET6 if ':' in text else socket.AF_INET
