# -*- coding: utf-8 -*-
# Copyright: podnet.fabric contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""pyroute2 helpers shared by the node modules: read links and addresses as plain dicts, and delete
kernel objects (routes, rules, addresses, neighbours, FDB entries, links) by exactly what the kernel
reports for them."""
from __future__ import absolute_import, division, print_function

__metaclass__ = type

import errno
import os
import socket
import struct
import traceback

from ansible_collections.podnet.fabric.plugins.module_utils.netns import CLONE_NEWNET, libc

# Seconds pyroute2 waits for the helper process of a network namespace operation (see below).
NETNS_CHILD_TIMEOUT = 60

try:
    # Modules use netlink.IPRoute: one import site for the optional dependency.
    from pyroute2 import IPRoute  # noqa: F401 pylint: disable=unused-import
    import pyroute2
    from pyroute2 import config as _pyroute2_config
    # pyroute2 gives the child process of a namespace operation (netns.create, IPRoute(netns=...))
    # 2 s to answer and 10 s to open its socket. A busy node misses that (a Debian VM under qemu
    # emulation did, every time: "no response from the child") and the module fails half done.
    for _name in ('default_communicate_timeout', 'default_create_socket_timeout'):
        if isinstance(getattr(_pyroute2_config, _name, None), (int, float)):
            setattr(_pyroute2_config, _name, max(getattr(_pyroute2_config, _name), NETNS_CHILD_TIMEOUT))
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
# The kernel's "any scope" for a route delete (iproute2 deletes with it). At the default scope,
# universe, the kernel matches only global-scope routes: a link-scope route was never found (ESRCH).
RT_SCOPE_NOWHERE = 255


def require_pyroute2(module):
    """Fail the module clearly when pyroute2 (>= 0.9) is missing or too old."""
    from ansible.module_utils.basic import missing_required_lib

    if not HAS_PYROUTE2:
        module.fail_json(msg=missing_required_lib('pyroute2>=0.9'), exception=PYROUTE2_IMPORT_ERROR)
    version = tuple(int(x) for x in pyroute2.__version__.split('.')[:2] if x.isdigit())
    if version < (0, 9):
        module.fail_json(msg='pyroute2 %s is too old: podnet.fabric needs pyroute2>=0.9 (set '
                             'ansible_python_interpreter to the podnet venv)' % pyroute2.__version__)


def address_text(msg):
    """An address message as link views show it: 'address/prefixlen'."""
    return '%s/%d' % (msg.get_attr('IFA_ADDRESS'), msg['prefixlen'])


def link_view(ipr, link):
    """One link as a plain dict."""
    idx = link['index']
    linkinfo = link.get_attr('IFLA_LINKINFO')
    kind = linkinfo.get_attr('IFLA_INFO_KIND') if linkinfo else None
    addrs = [address_text(a) for a in ipr.get_addr(index=idx)]
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


def underlay(ipr, node_ip, node_device=None):
    """The node's underlay device (podnet_node_device, else the link holding podnet_node_ip) as
    get_link gives it, or None when the node has no such link."""
    if node_device:
        return get_link(ipr, node_device)
    return device_for_address(ipr, node_ip)


def underlay_missing(node_ip, node_device, key_prefix=''):
    """Why underlay() found nothing, naming the key at fault (with `key_prefix`: 'podnet_' names the
    inventory key, '' the module parameter)."""
    if node_device:
        return '%snode_device: %s is not a device of this node' % (key_prefix, node_device)
    return '%snode_ip: %s is not on any device of this node' % (key_prefix, node_ip)


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


def link_kind_supported(kind):
    """Whether this kernel can create a link of `kind` (vxlan, geneve, veth, dummy).

    Asks the kernel itself: a forked child moves into a fresh, private network namespace and
    creates the link there, so nothing on the node changes (the namespace dies with the child),
    and a driver that is a loadable module gets loaded as it would for real use. Reading
    /proc/config.gz or /sys/module would miss modules not yet loaded and kernels without config.
    """
    pid = os.fork()
    if pid == 0:   # child: never returns
        code = 3
        try:
            if libc().unshare(CLONE_NEWNET) != 0:
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


# --- deleting: by the identity the kernel reported ------------------------------------------------

# What each kind's delete handler in the kernel matches an object by: ((header fields), (attributes)).
# Taken verbatim from a dump of the object, so a delete finds exactly it whatever its shape (scope,
# type, table, metric, gateway, onlink, family, proxy flag, FDB remote...).
IDENTITY = {
    'route': (('family', 'dst_len', 'src_len', 'tos', 'table', 'proto', 'type'),
              ('RTA_TABLE', 'RTA_DST', 'RTA_SRC', 'RTA_PRIORITY', 'RTA_OIF', 'RTA_GATEWAY')),
    'rule': (('family', 'dst_len', 'src_len', 'tos', 'table', 'action'),
             ('FRA_TABLE', 'FRA_PRIORITY', 'FRA_DST', 'FRA_SRC', 'FRA_IIFNAME', 'FRA_OIFNAME', 'FRA_GOTO',
              'FRA_FWMARK', 'FRA_FWMASK', 'FRA_FLOW', 'FRA_SUPPRESS_PREFIXLEN', 'FRA_SUPPRESS_IFGROUP',
              'FRA_L3MDEV', 'FRA_PROTOCOL', 'FRA_IP_PROTO')),
    'addr': (('family', 'prefixlen', 'index'), ('IFA_LOCAL', 'IFA_ADDRESS', 'IFA_LABEL')),
    'neigh': (('family', 'ifindex', 'flags'), ('NDA_DST',)),
    'fdb': (('family', 'ifindex', 'flags'), ('NDA_LLADDR', 'NDA_DST', 'NDA_VLAN', 'NDA_PORT', 'NDA_VNI',
                                             'NDA_SRC_VNI')),
    'link': (('index',), ()),
}
# A delete of what is not there (any more) is success: routes ESRCH, addresses EADDRNOTAVAIL,
# neighbours, FDB entries and rules ENOENT, an object whose device went away ENODEV.
GONE_ERRNOS = (errno.ESRCH, errno.ENOENT, errno.EADDRNOTAVAIL, errno.ENODEV)
# Neighbour flags that are part of an entry's identity (the rest describe its state).
NTF_SELF = 0x02
NTF_MASTER = 0x04
NTF_PROXY = 0x08
_NEIGH_KEY_FLAGS = NTF_SELF | NTF_MASTER | NTF_PROXY


def identity(kind, msg):
    """Pure: the identity of a dumped kernel object as a plain dict {field or attribute: value}.

    msg: a pyroute2 message (or anything with msg[field] and msg.get_attr(name)). Absent attributes
    are left out: the kernel reads an absent key attribute as "any".
    """
    fields, attrs = IDENTITY[kind]
    out = dict((f, msg[f]) for f in fields)
    for name in attrs:
        value = msg.get_attr(name)
        if value is not None:
            out[name] = value
    if kind in ('neigh', 'fdb'):
        out['flags'] &= _NEIGH_KEY_FLAGS
    if kind == 'fdb' and not out['flags'] & NTF_SELF and msg.get_attr('NDA_MASTER'):
        # A bridge reports its entries with neither flag; a delete without NTF_MASTER would go to
        # the port's own (self) table and miss them.
        out['flags'] |= NTF_MASTER
    return out


def delete_request(kind, ident):
    """Pure: the keyword arguments of ``ipr.<kind>('del', ...)`` that delete exactly `ident`."""
    fields, attrs = IDENTITY[kind]
    kw = dict((f, ident[f]) for f in fields if f in ident)
    for name in attrs:
        if name in ident:
            kw[name.split('_', 1)[1].lower()] = ident[name]
    if kind == 'route':
        kw['scope'] = RT_SCOPE_NOWHERE
    if kind in ('route', 'rule') and 'table' in kw:
        # Tables above 255 live in the attribute only; the header says 252 (RT_TABLE_COMPAT).
        kw['table'] = ident.get('RTA_TABLE' if kind == 'route' else 'FRA_TABLE') or ident['table']
    return kw


def is_gone(error):
    """Whether a NetlinkError/OSError from a delete means the object is not there (any more)."""
    code = getattr(error, 'code', None)
    if code is None:
        code = getattr(error, 'errno', None)
    return code in GONE_ERRNOS


def needs_presence_check(kind, ident):
    """Pure: whether the kernel would read part of `ident` as a wildcard that a sibling can match.

    An IPv4 route of metric 0 carries no RTA_PRIORITY, and the kernel reads priority 0 in a delete
    as "any": once the route is gone, a delete would take its sibling of another metric. A rule's
    absent selectors are wildcards too (``priority 10 lookup 100`` matches ``priority 10 from X
    lookup 100``). And a VXLAN device answers the delete of a remote its MAC entry does not have
    with success, so an FDB delete cannot tell "deleted" from "was not there". For these, delete()
    first checks that the object is still there.
    """
    return kind in ('rule', 'fdb') or (kind == 'route' and ident.get('family') == AF_INET
                                       and 'RTA_PRIORITY' not in ident)


def _present(ipr, kind, ident):
    query = {'family': ident['family']}
    if kind == 'route':
        query['table'] = ident.get('RTA_TABLE') or ident['table']
    elif kind == 'fdb':
        query = {'ifindex': ident['ifindex']}
    return any(identity(kind, m) == ident for m in _dump(ipr, kind, query))


def delete(ipr, kind, ident):
    """Delete one kernel object by its identity (see identity()).

    True when this call deleted it; False when it was already gone, which is success.
    """
    if needs_presence_check(kind, ident) and not _present(ipr, kind, ident):
        return False
    try:
        getattr(ipr, kind)('del', **delete_request(kind, ident))
    except Exception as e:  # pyroute2's NetlinkError is not an OSError
        if is_gone(e):
            return False
        raise
    return True


def _dump(ipr, kind, query):
    return getattr(ipr, kind)('dump', **query)   # kinds are IPRoute's method names


def delete_matching(ipr, kind, match, **query):
    """Delete every object of `kind` that `match(msg)` selects, each by its exact identity.

    query: what the dump is narrowed by (family=..., ifindex=... as pyroute2's dump takes them).
    Returns the identities deleted; none (nothing matched any more) is success.
    """
    targets = [identity(kind, m) for m in _dump(ipr, kind, query) if match(m)]
    return [t for t in targets if delete(ipr, kind, t)]


def delete_link(ipr, name):
    """Delete the link called `name`; a link that is not there is success (False)."""
    idx = ipr.link_lookup(ifname=name)
    return bool(idx) and delete(ipr, 'link', {'index': idx[0]})


def delete_address(ipr, index, text):
    """Delete the address(es) a link view shows as `text` ('ip/prefixlen') on link `index`."""
    return delete_matching(ipr, 'addr', lambda m: address_text(m) == text, index=index)


# --- the raw dumps pyroute2 cannot make -----------------------------------------------------------

def proxy_neighbours(ifindex):
    """IPv6 proxy neighbour entries on a link (`ip -6 neigh show proxy`), sorted.

    A raw RTM_GETNEIGH dump: the kernel lists proxy entries only when the request's ndmsg carries
    NTF_PROXY, and pyroute2 0.9 cannot put flags into a dump request.
    """
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 0)   # NETLINK_ROUTE
    out = []
    try:
        sock.bind((0, 0))
        body = struct.pack('=BBHiHBB', socket.AF_INET6, 0, 0, 0, 0, NTF_PROXY, 0)
        sock.send(struct.pack('=IHHII', 16 + len(body), 30, 0x301, 1, 0) + body)  # RTM_GETNEIGH, REQUEST|DUMP
        done = False
        while not done:
            data = sock.recv(65536)
            off = 0
            while off + 16 <= len(data):
                length, kind = struct.unpack_from('=IH', data, off)
                if length < 16:
                    done = True
                    break
                if kind == 3:                      # NLMSG_DONE
                    done = True
                elif kind == 2:                    # NLMSG_ERROR
                    err = -struct.unpack_from('=i', data, off + 16)[0]
                    if err:
                        raise OSError(err, 'proxy neighbour dump: %s' % os.strerror(err))
                    done = True
                elif kind == 28:                   # RTM_NEWNEIGH
                    _fam, _p1, _p2, idx, _st, flags, _t = struct.unpack_from('=BBHiHBB', data, off + 16)
                    pos = off + 28
                    while pos + 4 <= off + length:
                        alen, atype = struct.unpack_from('=HH', data, pos)
                        if alen < 4:
                            break
                        if atype == 1 and alen == 20 and idx == ifindex and flags & NTF_PROXY:   # NDA_DST
                            out.append(socket.inet_ntop(socket.AF_INET6, data[pos + 4:pos + 20]))
                        pos += (alen + 3) & ~3
                off += (length + 3) & ~3
    finally:
        sock.close()
    return sorted(out)
