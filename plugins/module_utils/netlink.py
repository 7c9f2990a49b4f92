# -*- coding: utf-8 -*-
# Copyright: podnet.fabric contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""pyroute2 helpers shared by the node modules: read links and addresses as plain dicts."""
from __future__ import absolute_import, division, print_function

__metaclass__ = type

import traceback

try:
    # Modules use netlink.IPRoute: one import site for the optional dependency.
    from pyroute2 import IPRoute  # noqa: F401 pylint: disable=unused-import
    import pyroute2
    HAS_PYROUTE2 = True
    PYROUTE2_IMPORT_ERROR = None
except ImportError:
    IPRoute = None
    pyroute2 = None
    HAS_PYROUTE2 = False
    PYROUTE2_IMPORT_ERROR = traceback.format_exc()

# Routes podnet installs carry this protocol number (named in /etc/iproute2/rt_protos.d/podnet.conf).
# Not 186-192: those are bgp, isis, ospf, rip, eigrp, which FRR and BIRD install on the same nodes.
RTPROT_PODNET = 201
IFF_UP = 1
AF_INET = 2
AF_INET6 = 10


def require_pyroute2(module):
    """Fail the module clearly when pyroute2 (>= 0.9) is missing or too old."""
    from ansible.module_utils.basic import missing_required_lib

    if not HAS_PYROUTE2:
        module.fail_json(msg=missing_required_lib('pyroute2>=0.9'), exception=PYROUTE2_IMPORT_ERROR)
    version = tuple(int(x) for x in pyroute2.__version__.split('.')[:2] if x.isdigit())
    if version < (0, 9):
        module.fail_json(msg='pyroute2 %s is too old: podnet.fabric needs pyroute2>=0.9 (set '
                             'ansible_python_interpreter to the podnet venv)' % pyroute2.__version__)


def link_view(ipr, link):
    """One link as a plain dict."""
    idx = link['index']
    linkinfo = link.get_attr('IFLA_LINKINFO')
    kind = linkinfo.get_attr('IFLA_INFO_KIND') if linkinfo else None
    addrs = []
    for a in ipr.get_addr(index=idx):
        addrs.append('%s/%d' % (a.get_attr('IFA_ADDRESS'), a['prefixlen']))
    return {
        'name': link.get_attr('IFLA_IFNAME'),
        'index': idx,
        'kind': kind,
        'mtu': link.get_attr('IFLA_MTU'),
        'up': bool(link['flags'] & IFF_UP),
        'mac': link.get_attr('IFLA_ADDRESS'),
        'link': link.get_attr('IFLA_LINK'),
        'master': link.get_attr('IFLA_MASTER'),
        'addresses': sorted(a for a in addrs if not a.startswith('fe80:')),
    }


def get_link(ipr, name):
    idx = ipr.link_lookup(ifname=name)
    if not idx:
        return None
    return link_view(ipr, ipr.get_links(idx[0])[0])


def links(ipr):
    return [link_view(ipr, link) for link in ipr.get_links()]


def device_for_address(ipr, address):
    """The link holding an address (the node's underlay device), or None."""
    for a in ipr.get_addr():
        if a.get_attr('IFA_ADDRESS') == address:
            return get_link(ipr, ipr.get_links(a['index'])[0].get_attr('IFLA_IFNAME'))
    return None


def routes(ipr, proto=None, table=254):
    out = []
    kw = {'table': table}
    if proto is not None:
        kw['proto'] = proto
    for r in ipr.get_routes(family=AF_INET, **kw):
        dst = r.get_attr('RTA_DST')
        oif = r.get_attr('RTA_OIF')
        out.append({
            'dst': '%s/%d' % (dst, r['dst_len']) if dst else 'default',
            'gateway': r.get_attr('RTA_GATEWAY'),
            'dev': ipr.get_links(oif)[0].get_attr('IFLA_IFNAME') if oif else None,
            'proto': r['proto'],
            'table': r.get_attr('RTA_TABLE') or r['table'],
        })
    return sorted(out, key=lambda r: (r['dst'], r['dev'] or ''))


# Link kinds a probe can create with no attributes beyond these (the probe's namespace is thrown away).
_PROBE_ATTRS = {
    'vxlan': {'vxlan_id': 1, 'vxlan_port': 8472},
    'geneve': {'geneve_id': 1, 'geneve_remote': '127.0.0.1'},
    'veth': {'peer': 'probe1'},
    'dummy': {},
}
CLONE_NEWNET = 0x40000000


def link_kind_supported(kind):
    """Whether this kernel can create a link of `kind` (vxlan, geneve, veth, dummy).

    Asks the kernel itself: a forked child moves into a fresh, private network namespace and
    creates the link there, so nothing on the node changes (the namespace dies with the child),
    and a driver that is a loadable module gets loaded as it would for real use. Reading
    /proc/config.gz or /sys/module would miss modules not yet loaded and kernels without config.
    """
    import ctypes
    import os

    pid = os.fork()
    if pid == 0:   # child: never returns
        code = 3
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            if libc.unshare(CLONE_NEWNET) != 0:
                os._exit(2)
            with IPRoute() as ipr:
                ipr.link('add', ifname='probe0', kind=kind, **_PROBE_ATTRS.get(kind, {}))
            code = 0
        except Exception:   # NetlinkError: the kernel has no such link kind
            code = 1
        finally:
            os._exit(code)
    status = os.waitpid(pid, 0)[1]
    code = os.WEXITSTATUS(status) if os.WIFEXITED(status) else 3
    if code == 2:
        raise OSError('unshare(CLONE_NEWNET) failed: cannot probe link kinds without root')
    return code == 0
