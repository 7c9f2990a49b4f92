# -*- coding: utf-8 -*-
# Copyright: podnet.fabric contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Named network namespaces (``/run/netns``): where one is, whether it is there, and running a
block inside one. Plain libc (setns/unshare), no pyroute2: the probe needs only this, and importing
pyroute2 costs a module run a tenth of a second."""
from __future__ import absolute_import, division, print_function

__metaclass__ = type

import contextlib
import ctypes
import ctypes.util
import os

NETNS_DIR = '/run/netns'
CLONE_NEWNET = 0x40000000


def netns_path(name):
    return os.path.join(NETNS_DIR, name)


def inode(path):
    try:
        return os.stat(path).st_ino
    except OSError:
        return None


def netns_exists(name):
    """A /run/netns entry that is a mounted nsfs (not a leftover empty file)."""
    path = netns_path(name)
    try:
        st = os.stat(path)
        parent = os.stat(os.path.dirname(path))
    except OSError:
        return False
    return st.st_dev != parent.st_dev


_LIBC = []


def libc():
    if not _LIBC:
        _LIBC.append(ctypes.CDLL(ctypes.util.find_library('c') or None, use_errno=True))
    return _LIBC[0]


def _setns(fd):
    if libc().setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, 'setns: %s' % os.strerror(err))


@contextlib.contextmanager
def in_netns(path):
    """Run the block in the network namespace at `path` (this thread), then come back.

    Sockets keep the namespace they were created in, so a probe creates its sockets in here
    and uses them after returning.
    """
    home = os.open('/proc/self/ns/net', os.O_RDONLY)
    try:
        target = os.open(path, os.O_RDONLY)
        try:
            _setns(target)
        finally:
            os.close(target)
        try:
            yield
        finally:
            _setns(home)
    finally:
        os.close(home)
