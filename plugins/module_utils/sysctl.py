# -*- coding: utf-8 -*-
# Copyright: podnet.fabric contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The one sysctl reader and writer of the node modules (through /proc/sys, in the caller's network
namespace: per-device keys such as net.ipv4.conf.<dev>.* are those of the namespace it runs in)."""
from __future__ import absolute_import, division, print_function

__metaclass__ = type


def path(key):
    """/proc/sys path of a dotted key (net.ipv4.ip_forward -> /proc/sys/net/ipv4/ip_forward)."""
    return '/proc/sys/' + key.replace('.', '/')


def read(key):
    """The value as the kernel prints it, stripped; None when the key does not exist."""
    try:
        with open(path(key)) as f:
            return f.read().strip()
    except (IOError, OSError):
        return None


def write(key, value):
    with open(path(key), 'w') as f:
        f.write('%s\n' % (value,))


def read_int(key):
    """The value as an int; None when the key does not exist or is not one number."""
    try:
        return int(read(key))
    except (TypeError, ValueError):
        return None
