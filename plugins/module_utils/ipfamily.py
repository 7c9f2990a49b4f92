# -*- coding: utf-8 -*-
# Copyright: podnet.fabric contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The one IP-family helper: an address or CIDR's family as podnet names it ('ipv4' / 'ipv6', the
keys of leases, pools and endpoint IPs) and as the kernel numbers it (AF_INET / AF_INET6). Pure and
dependency-free, so the controller and every node module can import it."""
from __future__ import absolute_import, division, print_function

__metaclass__ = type

import ipaddress
import socket


def family_of(text):
    """'ipv6' for an IPv6 address or CIDR (text), else 'ipv4'."""
    return 'ipv6' if ':' in text else 'ipv4'


def host_prefix(text):
    """An address given bare or as a host prefix, as a host prefix: 'a.b.c.d/32', 'x::y/128'.
    ValueError, saying which, when text is not an address or is a network wider than one host."""
    try:
        iface = ipaddress.ip_interface(text)
    except ValueError:
        raise ValueError('%r is not an IP address' % (text,))
    if iface.network.prefixlen != iface.max_prefixlen:
        raise ValueError('%s: a host address (bare or /%d), not a network' % (text, iface.max_prefixlen))
    return '%s/%d' % (iface.ip, iface.max_prefixlen)


def af_of(text):
    """socket.AF_INET6 for an IPv6 address or CIDR (text), else socket.AF_INET."""
    return socket.AF_INET6 if ':' in text else socket.AF_INET
