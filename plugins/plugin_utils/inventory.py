# -*- coding: utf-8 -*-
# Copyright: podnet.fabric contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The cluster inventory model: validate and normalize the whole inventory.

``validate(cluster_vars, nodes)`` returns the normalized model (DESIGN.md sections 4 and 5,
docs/architecture.md "The validated model") or raises ``InventoryError`` listing EVERY problem
found, each as ``"<host or all>: <key path>: <message>"``.

Two passes, in the style of linux-system-roles/network's argument validator:

1. a walk over a small declarative schema (plain dicts: type, choices, default, children) that
   type-checks, rejects unknown keys and fills in defaults, so every later comparison is between
   canonical values (ints are ints, CIDRs are ``ipaddress`` text);
2. semantic checks, one function per concern, over the normalized values.

Pure Python, stdlib only: this file is shipped to nodes as module_utils and must run on 3.8.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import difflib
import ipaddress
import re

from ansible_collections.podnet.fabric.plugins.module_utils import tunnel as tunnel_facts
from ansible_collections.podnet.fabric.plugins.module_utils.ipam import cidr as ipam_cidr

CLUSTER_KEYS = ('podnet_cluster', 'podnet_ipam', 'podnet_routing', 'podnet_eni', 'podnet_policy',
                'podnet_datapath')
NODE_KEYS = ('podnet_node_ip', 'podnet_node_device', 'podnet_node_labels', 'podnet_pod_cidrs',
             'podnet_instance', 'podnet_endpoints', 'podnet_node_eni')

IPAM_MODES = ('cluster-pool', 'kubernetes', 'multi-pool', 'crd', 'eni')
ROUTING_MODES = ('tunnel', 'native', 'eni')
DEFAULT_CLUSTER_NAME = 'default'
DEFAULT_NAMESPACE = 'default'

# Policy peers by name (DESIGN.md 5, the datapath contract): what each selects is identity.py's.
ENTITIES = ('host', 'remote-node', 'world', 'health', 'cluster', 'all')
PORT_PROTOCOLS = ('tcp', 'udp', 'any')
POLICY_DIRECTIONS = ('ingress', 'egress', 'ingress_deny', 'egress_deny')

# Labels podnet sets on every endpoint itself (Cilium's k8s:io.kubernetes.pod.namespace and
# k8s:io.cilium.k8s.policy.cluster): an endpoint's own labels must not set them.
NAMESPACE_LABEL = 'io.kubernetes.pod.namespace'
CLUSTER_LABEL = 'io.cilium.k8s.policy.cluster'

# The identity-relevant label filter: Cilium's default, as defaultLabelPrefixCfg() in
# pkg/labelsfilter/filter.go (cilium/cilium 0b22469da6e3) lists it and docs.cilium.io "Limiting
# Identity-Relevant Labels" explains it. A pattern is a regular expression that must match at the
# start of a label key; a leading '!' makes it an exclusion. Left out: Cilium's first entry,
# 'reserved:.*', which keeps labels of the source 'reserved' (podnet's labels have no sources:
# reserved identities are fixed numbers here). How the patterns combine is identity.LabelFilter's
# (filterLabels() in the same Go file).
DEFAULT_LABEL_FILTER = (
    r'io\.kubernetes\.pod\.namespace',
    r'io\.cilium\.k8s\.namespace\.labels',
    r'app\.kubernetes\.io',
    r'io\.cilium\.k8s\.policy\.cluster',
    r'!io\.kubernetes',
    r'!kubernetes\.io',
    r'!statefulset\.kubernetes\.io/pod-name',
    r'!apps\.kubernetes\.io/pod-index',
    r'!batch\.kubernetes\.io/job-completion-index',
    r'!.*beta\.kubernetes\.io',
    r'!k8s\.io',
    r'!pod-template-generation',
    r'!pod-template-hash',
    r'!controller-revision-hash',
    r'!annotation.*',
    r'!etcd_node',
)

ALL = 'all'


class InventoryError(Exception):
    """The inventory is invalid. ``errors`` lists every problem, sorted by host then key path."""

    def __init__(self, errors):
        self.errors = list(errors)
        super(InventoryError, self).__init__(
            'the inventory has %d error%s:\n%s' % (
                len(self.errors), '' if len(self.errors) == 1 else 's',
                '\n'.join('  - ' + e for e in self.errors)))


# Sentinels. _INVALID marks a value that failed validation (its error is already recorded), so
# semantic checks can skip it instead of piling follow-up errors onto one mistake.
class _Sentinel(object):
    def __init__(self, name):
        self.name = name

    def __repr__(self):
        return self.name


_INVALID = _Sentinel('<invalid>')
_OMIT = _Sentinel('<omit>')        # schema default: leave the key out of the normalized dict
_ABSENT = _Sentinel('<absent>')    # a host that does not carry a cluster-level key
_MISSING_DICT = _Sentinel('<fill from children>')   # a dict default built from its children


# ---------------------------------------------------------------------------------------------
# small helpers

def _natural(text):
    """Sort key that puts node2 before node10 and cidrs[2] before cidrs[10]."""
    return [int(part) if part.isdigit() else part for part in re.split(r'(\d+)', str(text))]


def _host_order(hosts):
    return sorted(hosts, key=_natural)


def _show(value):
    """A user value as it appears in messages: strings repr-quoted, scalars YAML-ish."""
    if isinstance(value, bool):
        return 'true' if value else 'false'
    if value is None:
        return 'null'
    if isinstance(value, str):
        return repr(str(value))
    return str(value)


def _kind(value):
    if value is None:
        return 'null'
    if isinstance(value, bool):
        return 'a boolean'
    if isinstance(value, dict):
        return 'a mapping'
    if isinstance(value, (list, tuple)):
        return 'a list'
    if isinstance(value, int):
        return 'an integer'
    if isinstance(value, float):
        return 'a float'
    if isinstance(value, str):
        return 'a string'
    return 'a %s' % type(value).__name__


def _not_a(value, what):
    if value is None or isinstance(value, (dict, list, tuple)):
        return 'expected %s, got %s' % (what, _kind(value))
    return '%s is not %s' % (_show(value), what)


def _join(path, key):
    return '%s.%s' % (path, key) if path else str(key)


def _plain(value):
    """Copy a YAML/Ansible value into plain dict/list/str (Ansible hands us str/dict subclasses)."""
    if isinstance(value, dict):
        return dict((str(k), _plain(v)) for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, str):
        return str(value)
    return value


def _ok(*values):
    return all(v is not _INVALID and v is not None for v in values)


class _Errors(object):
    def __init__(self):
        self.items = []

    def add(self, host, path, message):
        self.items.append((host, path, message))

    def sorted(self):
        seen = set()
        out = []
        for host, path, message in sorted(
                self.items, key=lambda e: (e[0] != ALL, _natural(e[0]), _natural(e[1]))):
            line = '%s: %s: %s' % (host, path, message)
            if line not in seen:
                seen.add(line)
                out.append(line)
        return out


# ---------------------------------------------------------------------------------------------
# scalar checks referenced from the schema; each returns an error message or None

_DNS_LABEL = re.compile(r'^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$')
_LABEL_NAME = re.compile(r'^[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$')
_DNS_SUBDOMAIN = re.compile(r'^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$')


def _check_dns_label(value):
    if not _DNS_LABEL.match(value):
        return ('%s is not a DNS label (lowercase letters, digits and \'-\', '
                'at most 63 characters)' % _show(value))
    return None


def _check_ifname(value):
    if not 0 < len(value) <= 15 or value in ('.', '..') or re.search(r'[/:\s]', value):
        return '%s is not a valid interface name' % _show(value)
    return None


def _check_abs_path(value):
    if not value.startswith('/'):
        return '%s is not an absolute path' % _show(value)
    return None


def _check_url(value):
    if not re.match(r'^https?://[^/\s]+', value):
        return '%s is not an http(s) URL' % _show(value)
    return None


def _aws_id(prefix, what):
    pattern = re.compile(r'^%s-[0-9a-f]+$' % prefix)

    def check(value):
        if not pattern.match(value):
            return '%s is not %s (%s-...)' % (_show(value), what, prefix)
        return None
    return check


def _check_label_key(value):
    prefix, _sep, name = value.rpartition('/')
    if (prefix and (len(prefix) > 253 or not _DNS_SUBDOMAIN.match(prefix))) \
            or not _LABEL_NAME.match(name):
        return '%s is not a valid label key' % _show(value)
    return None


def _check_label_value(value):
    if value and not _LABEL_NAME.match(value):
        return '%s is not a valid label value' % _show(value)
    return None


def _check_dns_subdomain(value):
    if len(value) > 253 or not _DNS_SUBDOMAIN.match(value):
        return ('%s is not a DNS subdomain (lowercase letters, digits, \'-\' and \'.\', '
                'at most 253 characters)' % _show(value))
    return None


def _check_label_pattern(value):
    pattern = value[1:] if value.startswith('!') else value
    if not pattern:
        return '%s has no pattern' % _show(value)
    try:
        re.compile(pattern)
    except re.error as e:
        return '%s is not a regular expression (%s)' % (_show(value), e)
    return None


def _check_icmp_family(value):
    if value not in (4, 6):
        return '%d is not 4 or 6' % value
    return None


def _check_mtu(value):
    if value != 0 and not 1280 <= value <= 65535:
        return '%d is not 0 (auto) or in 1280..65535' % value
    return None


def _check_hold_time(value):
    if value != 0 and not 3 <= value <= 65535:
        return '%d is not 0 or in 3..65535' % value
    return None


# ---------------------------------------------------------------------------------------------
# the schema (DESIGN.md section 4 keys, section 5 defaults)
#
# type:     str | int | bool | ip | cidr | list | dict | map | raw
# default:  value used when the key is missing or null; a dict-typed key without 'default' is
#           filled from its children's defaults; None makes the key nullable (off by default);
#           _OMIT leaves it out. Defaults that depend on other keys are None here and filled by
#           _complete().
# required: missing/null is an error
# children: dict keys (unknown keys are errors unless extra='allow'); elements: list items;
#           keys/values: free-form mapping (map) key and value schemas
# choices, min, max, family (4/6 for ip and cidr), check (callable -> message or None),
# lower (str: compared and kept lowercased, as Cilium users write TCP)

_ASN = {'type': 'int', 'min': 1, 'max': 4294967295}
_LABELS = {'type': 'map', 'keys': {'type': 'str', 'check': _check_label_key},
           'values': {'type': 'str', 'check': _check_label_value}}
_PORT = {'type': 'int', 'min': 1, 'max': 65535}


def _policy_item(peer):
    """One ingress/egress (allow or deny) entry: peers (``from_*`` or ``to_*``) AND ports/ICMP types,
    Cilium's IngressRule/EgressRule in snake_case."""
    return {
        'type': 'dict',
        'children': {
            peer + '_endpoints': {'type': 'list', 'default': [], 'elements': dict(_LABELS)},
            peer + '_entities': {'type': 'list', 'default': [],
                                 'elements': {'type': 'str', 'choices': ENTITIES}},
            peer + '_cidrs': {'type': 'list', 'default': [], 'elements': {'type': 'cidr'}},
            'to_ports': {'type': 'list', 'default': [], 'elements': {
                'type': 'dict',
                'children': {
                    'port': dict(_PORT, required=True),
                    'end_port': dict(_PORT, default=None),
                    'protocol': {'type': 'str', 'choices': PORT_PROTOCOLS, 'default': 'any',
                                 'lower': True},
                },
            }},
            'icmps': {'type': 'list', 'default': [], 'elements': {
                'type': 'dict',
                'children': {
                    'type': {'type': 'int', 'min': 0, 'max': 255, 'required': True},
                    'family': {'type': 'int', 'default': 4, 'check': _check_icmp_family},
                },
            }},
        },
    }


_POLICY_RULE = {
    'type': 'dict',
    'children': {
        'name': {'type': 'str', 'default': None},
        'endpoint_selector': dict(_LABELS, required=True),
        'ingress': {'type': 'list', 'default': [], 'elements': _policy_item('from')},
        'ingress_deny': {'type': 'list', 'default': [], 'elements': _policy_item('from')},
        'egress': {'type': 'list', 'default': [], 'elements': _policy_item('to')},
        'egress_deny': {'type': 'list', 'default': [], 'elements': _policy_item('to')},
    },
}
_TAGS = {'type': 'map', 'keys': {'type': 'str'}, 'values': {'type': 'str'}, 'default': {}}


def _pool_family(family, cidrs_default=None):
    return {
        'type': 'dict',
        'children': {
            'cidrs': (
                {'type': 'list', 'elements': {'type': 'cidr', 'family': family},
                 'default': cidrs_default}
                if cidrs_default is not None else
                {'type': 'list', 'elements': {'type': 'cidr', 'family': family},
                 'required': True}),
            'mask_size': {'type': 'int', 'min': 1, 'default': 24 if family == 4 else 120},
        },
    }


_POOL = {
    'type': 'dict',
    'children': {
        'ipv4': dict(_pool_family(4), default=None),
        'ipv6': dict(_pool_family(6), default=None),
    },
}

CLUSTER_SCHEMA = {
    'podnet_cluster': {
        'type': 'dict',
        'children': {
            'name': {'type': 'str', 'default': DEFAULT_CLUSTER_NAME, 'check': _check_dns_label},
            'id': {'type': 'int', 'min': 0, 'max': 255, 'default': 0},
        },
    },
    'podnet_ipam': {
        'type': 'dict',
        'children': {
            'mode': {'type': 'str', 'choices': IPAM_MODES, 'default': 'cluster-pool'},
            'ledger': {
                'type': 'dict',
                'children': {
                    'backend': {'type': 'str', 'choices': ('file', 's3'), 'default': 'file'},
                    'path': {'type': 'str', 'default': None, 'check': _check_abs_path},
                    'bucket': {'type': 'str', 'default': None},
                    'key': {'type': 'str', 'default': None},
                    'endpoint_url': {'type': 'str', 'default': None, 'check': _check_url},
                    'region': {'type': 'str', 'default': None},
                },
            },
            'cluster_pool': {
                'type': 'dict',
                'children': {
                    'ipv4': _pool_family(4, ['10.0.0.0/8']),
                    'ipv6': dict(_pool_family(6, ['fd00::/104']), default=None),
                },
            },
            'multi_pool': {
                'type': 'dict',
                'children': {
                    'pools': {'type': 'map', 'keys': {'type': 'str'}, 'values': _POOL,
                              'default': {}},
                    'pre_allocation': {'type': 'map', 'keys': {'type': 'str'},
                                       'values': {'type': 'int', 'min': 0}, 'default': None},
                },
            },
            'kubernetes': {
                'type': 'dict',
                'children': {
                    'cluster_cidrs': {'type': 'list', 'elements': {'type': 'cidr'},
                                      'default': []},
                },
            },
        },
    },
    'podnet_routing': {
        'type': 'dict',
        'children': {
            'mode': {'type': 'str', 'choices': ROUTING_MODES, 'default': 'tunnel'},
            'tunnel': {
                'type': 'dict',
                'children': {
                    'protocol': {'type': 'str', 'choices': ('vxlan', 'geneve'),
                                 'default': 'vxlan'},
                    'port': {'type': 'int', 'min': 1, 'max': 65535, 'default': None},
                    'vni': {'type': 'int', 'min': 1, 'max': 16777215, 'default': tunnel_facts.DEFAULT_VNI},
                },
            },
            'native': {
                'type': 'dict',
                'children': {
                    'ipv4_cidr': {'type': 'cidr', 'family': 4, 'default': None},
                    'auto_direct_node_routes': {'type': 'bool', 'default': False},
                    'skip_unreachable': {'type': 'bool', 'default': False},
                    'bgp': {
                        'type': 'dict',
                        'default': None,
                        'children': {
                            'local_asn': dict(_ASN, required=True),
                            'peers': {
                                'type': 'list', 'default': [],
                                'elements': {
                                    'type': 'dict',
                                    'children': {
                                        'address': {'type': 'ip', 'required': True},
                                        'asn': dict(_ASN, required=True),
                                    },
                                },
                            },
                            'speaker': {'type': 'str', 'choices': ('bird', 'frr'),
                                        'default': 'bird'},
                            'hold_time': {'type': 'int', 'default': None,
                                          'check': _check_hold_time},
                        },
                    },
                },
            },
            'mtu': {'type': 'int', 'default': 0, 'check': _check_mtu},
            'masquerade': {'type': 'bool', 'default': True},
        },
    },
    'podnet_eni': {
        'type': 'dict',
        'children': {
            'region': {'type': 'str', 'default': None},
            'endpoint_url': {'type': 'str', 'default': None, 'check': _check_url},
            'metadata_url': {'type': 'str', 'default': None, 'check': _check_url},
            'pre_allocate': {'type': 'int', 'min': 0, 'default': 8},
            'min_allocate': {'type': 'int', 'min': 0, 'default': 0},
            'max_above_watermark': {'type': 'int', 'min': 0, 'default': 0},
            'first_interface_index': {'type': 'int', 'min': 0, 'default': 0},
            # The ENI interfaces' MTU on the node (eni_routing); 9001 is AWS's jumbo-frame MTU.
            'mtu': {'type': 'int', 'min': 576, 'default': 9001},
            'subnet_ids': {'type': 'list', 'default': [],
                           'elements': {'type': 'str', 'check': _aws_id('subnet', 'a subnet id')}},
            'subnet_tags': _TAGS,
            'security_group_ids': {
                'type': 'list', 'default': [],
                'elements': {'type': 'str', 'check': _aws_id('sg', 'a security group id')}},
            'security_group_tags': _TAGS,
            'tags': _TAGS,
            # Cilium's max-allocate: 0 = no cap beyond the instance type's limit.
            'max_allocate': {'type': 'int', 'min': 0, 'default': 0},
            'prefix_delegation': {'type': 'bool', 'default': False},
            'release_excess_ips': {'type': 'bool', 'default': False},
            'delete_on_termination': {'type': 'bool', 'default': True},
        },
    },
    'podnet_policy': {
        'type': 'dict',
        'children': {
            'rules': {'type': 'list', 'elements': _POLICY_RULE, 'default': []},
        },
    },
    'podnet_datapath': {
        'type': 'dict',
        'children': {
            'enabled': {'type': 'bool', 'default': True},
            'host_routing': {'type': 'str', 'choices': ('bpf', 'kernel'), 'default': 'bpf'},
            'label_filter': {'type': 'list', 'default': list(DEFAULT_LABEL_FILTER),
                             'elements': {'type': 'str', 'check': _check_label_pattern}},
        },
    },
}

NODE_SCHEMA = {
    'podnet_node_ip': {'type': 'ip', 'family': 4, 'required': True},
    'podnet_node_device': {'type': 'str', 'default': None, 'check': _check_ifname},
    'podnet_node_labels': dict(_LABELS, default={}),
    'podnet_pod_cidrs': {'type': 'list', 'elements': {'type': 'cidr'}, 'default': []},
    'podnet_instance': {
        'type': 'dict',
        'default': None,
        'children': {
            'id': {'type': 'str', 'required': True,
                   'check': _aws_id('i', 'an EC2 instance id')},
            'type': {'type': 'str', 'required': True},
        },
    },
    # Per-node ENI subnets and security groups (Cilium's CiliumNode spec.eni): node pools get their
    # own security groups. A key given here replaces the cluster's podnet_eni selection of that kind.
    'podnet_node_eni': {
        'type': 'dict',
        'default': None,
        'children': {
            'subnet_ids': {'type': 'list', 'default': [],
                           'elements': {'type': 'str', 'check': _aws_id('subnet', 'a subnet id')}},
            'subnet_tags': _TAGS,
            'security_group_ids': {
                'type': 'list', 'default': [],
                'elements': {'type': 'str', 'check': _aws_id('sg', 'a security group id')}},
            'security_group_tags': _TAGS,
        },
    },
    'podnet_endpoints': {
        'type': 'list',
        'default': [],
        'elements': {
            'type': 'dict',
            'children': {
                'name': {'type': 'str', 'required': True, 'check': _check_dns_subdomain},
                'namespace': {'type': 'str', 'default': DEFAULT_NAMESPACE, 'check': _check_dns_label},
                'labels': dict(_LABELS, default={}),
            },
        },
    },
}


# ---------------------------------------------------------------------------------------------
# the schema walk

_TRUE = ('true', 'yes', 'on', '1')
_FALSE = ('false', 'no', 'off', '0')


def _default_of(schema):
    if 'default' in schema:
        default = schema['default']
        if isinstance(default, (dict, list)):
            return _plain(default)
        return default
    if schema['type'] == 'dict':
        return _MISSING_DICT
    return None


class _Walker(object):
    def __init__(self, errors, host):
        self.errors = errors
        self.host = host

    def error(self, path, message):
        self.errors.add(self.host, path, message)
        return _INVALID

    def missing(self, schema, path):
        """The value for a key that is missing or null."""
        if schema.get('required'):
            return self.error(path, 'is required')
        default = _default_of(schema)
        if default is _MISSING_DICT:
            return self.walk(schema, {}, path)
        return default

    def walk(self, schema, value, path):
        if value is None:
            return self.missing(schema, path)
        kind = schema['type']
        result = getattr(self, '_' + kind)(schema, value, path)
        if result is _INVALID or kind in ('dict', 'list', 'map', 'raw'):
            return result
        if 'choices' in schema and result not in schema['choices']:
            return self.error(path, '%s is not one of: %s' % (
                _show(result), ', '.join(schema['choices'])))
        low, high = schema.get('min'), schema.get('max')
        if low is not None and high is not None and not low <= result <= high:
            return self.error(path, '%s is out of range (%d..%d)' % (result, low, high))
        if low is not None and result < low:
            return self.error(path, '%s is less than %d' % (result, low))
        if high is not None and result > high:
            return self.error(path, '%s is more than %d' % (result, high))
        if 'check' in schema:
            message = schema['check'](result)
            if message:
                return self.error(path, message)
        return result

    def _str(self, schema, value, path):
        if not isinstance(value, str):
            return self.error(path, _not_a(value, 'a string'))
        return str(value).lower() if schema.get('lower') else str(value)

    def _int(self, schema, value, path):
        if isinstance(value, bool):
            return self.error(path, _not_a(value, 'an integer'))
        if isinstance(value, int):
            return int(value)
        if isinstance(value, str) and re.match(r'^\s*[-+]?\d+\s*$', value):
            return int(value)
        return self.error(path, _not_a(value, 'an integer'))

    def _bool(self, schema, value, path):
        if isinstance(value, bool):
            return value
        if isinstance(value, (str, int)) and str(value).strip().lower() in _TRUE + _FALSE:
            return str(value).strip().lower() in _TRUE
        return self.error(path, _not_a(value, 'a boolean'))

    def _ip(self, schema, value, path):
        family = schema.get('family')
        what = 'an IPv%d address' % family if family else 'an IP address'
        if not isinstance(value, str):
            return self.error(path, _not_a(value, what))
        try:
            address = ipaddress.ip_address(str(value).strip())
        except ValueError:
            return self.error(path, '%s is not %s' % (_show(value), what))
        if family and address.version != family:
            return self.error(path, '%s is not %s (it is IPv%d)' % (
                _show(value), what, address.version))
        return str(address)

    def _cidr(self, schema, value, path):
        family = schema.get('family')
        what = 'an IPv%d CIDR' % family if family else 'a CIDR'
        if not isinstance(value, str):
            return self.error(path, _not_a(value, what))
        text = str(value).strip()
        if '/' not in text:
            return self.error(path, '%s is not %s (no /prefix length)' % (_show(value), what))
        try:
            network = ipaddress.ip_network(text, strict=False)
        except ValueError:
            return self.error(path, '%s is not %s' % (_show(value), what))
        if family and network.version != family:
            return self.error(path, '%s is an IPv%d CIDR, not IPv%d' % (
                _show(value), network.version, family))
        try:
            ipaddress.ip_network(text, strict=True)
        except ValueError:
            return self.error(path, '%s has host bits set (the network is %s)' % (
                _show(value), network))
        return str(network)

    def _raw(self, schema, value, path):
        return _plain(value)

    def _list(self, schema, value, path):
        if not isinstance(value, (list, tuple)):
            return self.error(path, _not_a(value, 'a list'))
        items = []
        for index, item in enumerate(value):
            item_path = '%s[%d]' % (path, index)
            if item is None:
                items.append(self.error(item_path, _not_a(item, _what(schema['elements']))))
            else:
                items.append(self.walk(schema['elements'], item, item_path))
        return items

    def _map(self, schema, value, path):
        if not isinstance(value, dict):
            return self.error(path, _not_a(value, 'a mapping'))
        result = {}
        for key in sorted(value, key=lambda k: _natural(str(k))):
            key_path = _join(path, key)
            if not isinstance(key, str):
                self.error(path, 'key %s is not a string' % _show(key))
                continue
            key_ok = self.walk(schema['keys'], key, path)
            item = value[key]
            if item is None and schema['values']['type'] != 'dict':
                item = self.error(key_path, _not_a(item, _what(schema['values'])))
            else:
                item = self.walk(schema['values'], item, key_path)
            if key_ok is not _INVALID:
                result[str(key)] = item
        return result

    def _dict(self, schema, value, path):
        if not isinstance(value, dict):
            return self.error(path, _not_a(value, 'a mapping'))
        children = schema['children']
        result = {}
        for key in value:
            if key not in children:
                if schema.get('extra') == 'allow':
                    result[str(key)] = _plain(value[key])
                else:
                    self.error(path, 'unknown key %s (expected one of: %s)' % (
                        _show(key), ', '.join(sorted(children))))
        for key, child in children.items():
            item = self.walk(child, value.get(key), _join(path, key))
            if item is not _OMIT:
                result[key] = item
        return result


def _what(schema):
    return {
        'str': 'a string', 'int': 'an integer', 'bool': 'a boolean', 'list': 'a list',
        'dict': 'a mapping', 'map': 'a mapping', 'ip': 'an IP address', 'cidr': 'a CIDR',
        'raw': 'a value',
    }[schema['type']]


def _check_top_level_keys(values, known, host, errors):
    """Callers may pass every podnet_* variable; other roles own other ones (podnet_lab_prefix),
    so only a near miss of one of ours is an error: a typo must not be silently ignored."""
    for key in values:
        if not isinstance(key, str) or not key.startswith('podnet_') or key in known:
            continue
        close = difflib.get_close_matches(key, known, n=1, cutoff=0.9)
        if close:
            errors.add(host, key, 'unknown key %s (did you mean %s?)' % (
                _show(key), _show(close[0])))


# ---------------------------------------------------------------------------------------------
# semantic checks

def _net(text):
    if text is _INVALID or text is None:
        return None
    return ipaddress.ip_network(text)


def _nets(texts):
    """[(index, network)] for the valid CIDRs of a normalized list."""
    if not isinstance(texts, list):
        return []
    return [(i, _net(t)) for i, t in enumerate(texts) if _ok(t)]


def _overlapping_pairs(nets):
    """Every pair (a, b), a < b, of indexes into `nets` (networks) that overlap, sorted.

    Networks are nested or disjoint, so sorted by (version, first address, prefix length) the ones
    holding the next form a stack: n log n plus the pairs found. Comparing every pair took 40 s for
    a 5,000-node kubernetes-mode inventory (bench/fleet.py)."""
    spans = [(net.version, int(net.network_address), int(net.broadcast_address), net.prefixlen) for net in nets]
    pairs = []
    stack = []
    for k in sorted(range(len(nets)), key=lambda k: (spans[k][0], spans[k][1], spans[k][3], k)):
        version, first = spans[k][0], spans[k][1]
        while stack and (spans[stack[-1]][0] != version or spans[stack[-1]][2] < first):
            stack.pop()
        pairs.extend((min(other, k), max(other, k)) for other in stack)
        stack.append(k)
    pairs.sort()
    return pairs


def _containing(nets):
    """A function of an address: the sorted indexes into `nets` (networks) of those holding it. One
    dict lookup per (version, prefix length) in use, not a scan of every network per address."""
    tables = {}
    for k, net in enumerate(nets):
        key = (net.version, net.max_prefixlen - net.prefixlen)
        tables.setdefault(key, {}).setdefault(int(net.network_address), []).append(k)

    def lookup(address):
        value = int(address)
        hits = []
        for (version, host_bits), table in tables.items():
            if version == address.version:
                hits.extend(table.get(value >> host_bits << host_bits, ()))
        return sorted(hits)
    return lookup


def _complete(model):
    """Defaults that depend on other keys."""
    name = model['cluster']['name']
    ledger = model['ipam']['ledger']
    if ledger is not _INVALID and _ok(name):
        if ledger['backend'] == 'file' and ledger['path'] is None:
            ledger['path'] = '/var/lib/podnet/ledger/%s.json' % name
        if ledger['backend'] == 's3' and ledger['key'] is None:
            ledger['key'] = 'podnet/%s/ledger.json' % name
    tunnel = model['routing']['tunnel']
    if tunnel is not _INVALID and tunnel['port'] is None and _ok(tunnel['protocol']):
        tunnel['port'] = tunnel_facts.PORTS[tunnel['protocol']]
    routing = model['routing']
    if _ok(routing) and _ok(routing['mode']):
        _derive_routing(routing)
    multi = model['ipam']['multi_pool']
    if multi is not _INVALID and multi['pre_allocation'] is None:
        pools = multi['pools']
        multi['pre_allocation'] = {'default': 8} if _ok(pools) and 'default' in pools else {}


def _derive_routing(routing):
    """What the roles decide by the routing mode, derived here once so that they pass it on as it is:
    - routes: whether podnet's routing module reconciles routes to the other nodes (tunnel and
      native; eni mode routes with ENIs);
    - link_kinds: the tunnel device kinds the node's kernel must be able to create (preflight);
    - bgp: the BGP speaker's settings when the node runs one (native routing with bgp), else None;
    - overhead: the bytes the pod MTU gives up to encapsulation."""
    mode = routing['mode']
    tunnel = routing['tunnel'] if _ok(routing['tunnel']) else {}
    native = routing['native'] if _ok(routing['native']) else {}
    routing['routes'] = mode in ('tunnel', 'native')
    routing['link_kinds'] = [tunnel['protocol']] if mode == 'tunnel' and _ok(tunnel.get('protocol')) else []
    routing['bgp'] = native.get('bgp') if mode == 'native' else None
    routing['overhead'] = tunnel_facts.overhead(mode)


def _check_ledger(model, errors):
    ledger = model['ipam']['ledger']
    if ledger is _INVALID:
        return
    if ledger['backend'] == 's3' and ledger['bucket'] is None:
        errors.add(ALL, 'podnet_ipam.ledger.bucket', "required when backend is 's3'")


def _check_family_block(block, path, family, errors):
    """One {cidrs, mask_size} block: overlaps inside it and a mask that fits its CIDRs.
    Returns (networks, mask_size) when the block is sound enough to count blocks in."""
    if not _ok(block):
        return None
    cidrs = block['cidrs']
    nets = _nets(cidrs)
    sound = _ok(cidrs) and len(nets) == len(cidrs)
    for a in range(len(nets)):
        for b in range(a + 1, len(nets)):
            (i, first), (j, second) = nets[a], nets[b]
            if first.overlaps(second):
                sound = False
                errors.add(ALL, '%s.cidrs[%d]' % (path, j), '%s overlaps %s (%s.cidrs[%d])' % (
                    _show(str(second)), first, path, i))
    if _ok(cidrs) and not cidrs:
        errors.add(ALL, path + '.cidrs', 'needs at least one CIDR')
    mask = block['mask_size']
    if not _ok(mask):
        return None
    bits = 32 if family == 4 else 128
    if mask > bits:
        errors.add(ALL, path + '.mask_size', '%d is larger than an IPv%d prefix allows (max %d)'
                   % (mask, family, bits))
        return None
    if nets:
        narrowest = max((net for _where, net in nets), key=lambda n: n.prefixlen)
        if mask < narrowest.prefixlen:
            errors.add(ALL, path + '.mask_size', '%d is smaller than the prefix length of %s (%d)'
                       % (mask, narrowest, narrowest.prefixlen))
            return None
    if not sound or not nets:
        return None
    return [net for _where, net in nets], mask


def _blocks(nets, mask):
    return sum(2 ** (mask - net.prefixlen) for net in nets)


def _capacity_message(nets, mask, have, nodes, per_node=1, pre_allocate=0):
    message = '%s with mask_size %d has %d block%s for %d node%s' % (
        ', '.join(str(n) for n in nets), mask, have, '' if have == 1 else 's',
        nodes, '' if nodes == 1 else 's')
    if per_node > 1:
        message += ' (%d blocks each to pre-allocate %d IPs)' % (per_node, pre_allocate)
    return message


def _check_pools(model, node_count, errors):
    """Pool shapes for every section given, capacity for the active mode.
    Returns [(path, network)] of the active mode's pod CIDR pools."""
    ipam = model['ipam']
    mode = ipam['mode']
    active = []

    cluster_pool = ipam['cluster_pool']
    if cluster_pool is not _INVALID:
        for family in (4, 6):
            path = 'podnet_ipam.cluster_pool.ipv%d' % family
            sound = _check_family_block(cluster_pool['ipv%d' % family], path, family, errors)
            if mode == 'cluster-pool' and sound:
                nets, mask = sound
                have = _blocks(nets, mask)
                if have < node_count:
                    errors.add(ALL, path, _capacity_message(nets, mask, have, node_count))
            if mode == 'cluster-pool' and _ok(cluster_pool['ipv%d' % family]):
                active.extend(('%s.cidrs[%d]' % (path, i), net) for i, net in
                              _nets(cluster_pool['ipv%d' % family]['cidrs']))

    multi = ipam['multi_pool']
    if multi is not _INVALID and _ok(multi['pools']):
        pools = multi['pools']
        pre_allocation = multi['pre_allocation'] if _ok(multi['pre_allocation']) else {}
        pooled = []
        for name in _host_order(pools):
            pool = pools[name]
            path = 'podnet_ipam.multi_pool.pools.%s' % name
            if not _ok(pool):
                continue
            if pool['ipv4'] is None and pool['ipv6'] is None:
                errors.add(ALL, path, 'needs ipv4 or ipv6')
            for family in (4, 6):
                fpath = '%s.ipv%d' % (path, family)
                block = pool['ipv%d' % family]
                sound = _check_family_block(block, fpath, family, errors)
                if _ok(block):
                    pooled.extend((name, '%s.cidrs[%d]' % (fpath, i), net)
                                  for i, net in _nets(block['cidrs']))
                pre = pre_allocation.get(name)
                if mode == 'multi-pool' and sound and _ok(pre) and pre > 0:
                    nets, mask = sound
                    per_node = max(1, -(-pre // 2 ** ((32 if family == 4 else 128) - mask)))
                    have = _blocks(nets, mask)
                    if have < node_count * per_node:
                        errors.add(ALL, fpath, _capacity_message(
                            nets, mask, have, node_count, per_node, pre))
        for a in range(len(pooled)):
            for b in range(a + 1, len(pooled)):
                (pool_a, path_a, net_a), (pool_b, path_b, net_b) = pooled[a], pooled[b]
                if pool_a != pool_b and net_a.overlaps(net_b):
                    errors.add(ALL, path_b, '%s overlaps pool %s %s (%s)' % (
                        _show(str(net_b)), _show(pool_a), net_a, path_a))
        if mode == 'multi-pool':
            if 'default' not in pools:
                errors.add(ALL, 'podnet_ipam.multi_pool.pools',
                           "needs a pool named 'default' (every node allocates from it)")
            for name in pre_allocation:
                if name not in pools:
                    errors.add(ALL, 'podnet_ipam.multi_pool.pre_allocation.%s' % name,
                               'no pool named %s (pools: %s)' % (
                                   _show(name), ', '.join(_host_order(pools)) or 'none'))
            active.extend((path, net) for _pool, path, net in pooled)

    kubernetes = ipam['kubernetes']
    if kubernetes is not _INVALID:
        cidrs = kubernetes['cluster_cidrs']
        nets = _nets(cidrs)
        for a in range(len(nets)):
            for b in range(a + 1, len(nets)):
                (i, first), (j, second) = nets[a], nets[b]
                if first.overlaps(second):
                    errors.add(ALL, 'podnet_ipam.kubernetes.cluster_cidrs[%d]' % j,
                               '%s overlaps %s (podnet_ipam.kubernetes.cluster_cidrs[%d])' % (
                                   _show(str(second)), first, i))
        if mode == 'kubernetes':
            active.extend(('podnet_ipam.kubernetes.cluster_cidrs[%d]' % i, net)
                          for i, net in nets)
    return active


def _check_modes(model, errors):
    ipam_mode = model['ipam']['mode']
    routing_mode = model['routing']['mode']
    if not _ok(ipam_mode, routing_mode):
        return
    if ipam_mode == 'eni' and routing_mode not in ('eni', 'native'):
        errors.add(ALL, 'podnet_ipam.mode', "'eni' needs podnet_routing.mode 'eni' or 'native' "
                   "(it is %s)" % _show(routing_mode))
    if routing_mode == 'eni' and ipam_mode != 'eni':
        errors.add(ALL, 'podnet_routing.mode', "'eni' needs podnet_ipam.mode 'eni' (it is %s)"
                   % _show(ipam_mode))
    eni = model['eni']
    if ipam_mode == 'eni' and eni is not _INVALID and eni['region'] is None:
        errors.add(ALL, 'podnet_eni.region', "required when podnet_ipam.mode is 'eni'")


def _check_routing(model, active_pools, pod_nets, errors):
    routing = model['routing']
    if routing['mode'] != 'native' or routing['native'] is _INVALID:
        return
    native = routing['native']
    if native['ipv4_cidr'] is None:
        for flag in ('masquerade', 'auto_direct_node_routes'):
            on = routing[flag] if flag == 'masquerade' else native[flag]
            if on is True:
                errors.add(ALL, 'podnet_routing.native.ipv4_cidr',
                           "required when podnet_routing.mode is 'native' and %s is true" % flag)
                break
    bgp = native['bgp']
    if _ok(bgp) and _ok(bgp['peers']) and not bgp['peers']:
        errors.add(ALL, 'podnet_routing.native.bgp.peers', 'needs at least one peer')
    # Pods outside the native routing CIDR would be masqueraded (and lose their identity).
    routed = _net(native['ipv4_cidr'])
    if routed is None or model['ipam']['mode'] == 'eni':
        return
    for path, net in active_pools:
        if net.version == 4 and not net.subnet_of(routed):
            errors.add(ALL, path, '%s is outside podnet_routing.native.ipv4_cidr %s' % (
                _show(str(net)), routed))
    if not active_pools:   # kubernetes mode without cluster_cidrs: check each node's CIDR
        for host, i, net in pod_nets:
            if net.version == 4 and not net.subnet_of(routed):
                errors.add(host, 'podnet_pod_cidrs[%d]' % i,
                           '%s is outside podnet_routing.native.ipv4_cidr %s' % (
                               _show(str(net)), routed))


def _check_pod_cidrs(model, errors):
    """podnet_pod_cidrs: kubernetes (host-scope) mode only. Returns [(host, index, network)]."""
    nodes = model['nodes']
    mode = model['ipam']['mode']
    kubernetes = model['ipam']['kubernetes']
    pod_nets = []
    for host in _host_order(nodes):
        cidrs = nodes[host]['pod_cidrs']
        if cidrs is _INVALID or not _ok(mode):
            continue
        if mode != 'kubernetes':
            if cidrs:
                errors.add(host, 'podnet_pod_cidrs',
                           "only used when podnet_ipam.mode is 'kubernetes' (it is %s)"
                           % _show(mode))
            continue
        if not cidrs:
            errors.add(host, 'podnet_pod_cidrs', "required when podnet_ipam.mode is 'kubernetes'")
            continue
        seen_family = {}
        for i, net in _nets(cidrs):
            if net.version in seen_family:
                errors.add(host, 'podnet_pod_cidrs[%d]' % i,
                           'a second IPv%d CIDR (podnet_pod_cidrs[%d] is one); a node has at '
                           'most one pod CIDR per family' % (net.version, seen_family[net.version]))
                continue
            seen_family[net.version] = i
            pod_nets.append((host, i, net))
    for a, b in _overlapping_pairs([net for _host, _i, net in pod_nets]):
        (host_a, i, net_a), (host_b, j, net_b) = pod_nets[a], pod_nets[b]
        if host_a != host_b:
            errors.add(host_b, 'podnet_pod_cidrs[%d]' % j,
                       "%s overlaps %s's %s (podnet_pod_cidrs[%d])" % (
                           _show(str(net_b)), host_a, net_a, i))
    if kubernetes is not _INVALID:
        bounds = [net for _where, net in _nets(kubernetes['cluster_cidrs'])]
        if bounds and len(bounds) == len(kubernetes['cluster_cidrs']):
            for host, i, net in pod_nets:
                if not any(net.version == bound.version and net.subnet_of(bound)
                           for bound in bounds):
                    errors.add(host, 'podnet_pod_cidrs[%d]' % i,
                               '%s is outside podnet_ipam.kubernetes.cluster_cidrs (%s)' % (
                                   _show(str(net)), ', '.join(str(b) for b in bounds)))
    return pod_nets


_SPECIAL_ADDRESSES = (('is_loopback', 'a loopback'), ('is_multicast', 'a multicast'),
                      ('is_unspecified', 'the unspecified'), ('is_link_local', 'a link-local'))


def _check_node_ips(model, active_pools, pod_nets, errors):
    nodes = model['nodes']
    seen = {}
    in_pod_cidrs = _containing([net for _other, _i, net in pod_nets])
    for host in _host_order(nodes):
        node = nodes[host]
        ip = node['node_ip']
        if _ok(ip):
            address = ipaddress.ip_address(ip)
            for attribute, what in _SPECIAL_ADDRESSES:
                if getattr(address, attribute):
                    errors.add(host, 'podnet_node_ip', '%s is %s address' % (_show(ip), what))
                    break
            if ip in seen:
                errors.add(host, 'podnet_node_ip', "%s is also %s's address" % (
                    _show(ip), seen[ip]))
            else:
                seen[ip] = host
            # DESIGN.md 5: the default 10.0.0.0/8 pool often clashes with node networks
            for path, net in active_pools:
                if address in net:
                    errors.add(host, 'podnet_node_ip', '%s is inside the pod CIDR pool %s (%s)'
                               % (_show(ip), net, path))
            for k in in_pod_cidrs(address):
                other, i, net = pod_nets[k]
                errors.add(host, 'podnet_node_ip', "%s is inside %s's pod CIDR %s "
                           "(podnet_pod_cidrs[%d])" % (_show(ip), other, net, i))
        if model['ipam']['mode'] == 'eni' and node['instance'] is None:
            errors.add(host, 'podnet_instance', "required when podnet_ipam.mode is 'eni'")


def _endpoint_keys(nodes):
    """{host: [(index, endpoint)]} of the endpoints whose name and namespace are valid."""
    out = {}
    for host in _host_order(nodes):
        endpoints = nodes[host]['endpoints']
        out[host] = [(i, ep) for i, ep in enumerate(endpoints if isinstance(endpoints, list) else [])
                     if _ok(ep) and _ok(ep['name'], ep['namespace'])]
    return out


def _check_endpoints(model, pod_nets, errors):
    """podnet_endpoints: labels podnet sets itself, one name per namespace across the cluster (the
    packet walk and the ledger's endpoint records name endpoints by namespace/name), and room in
    the node's pod CIDR for them, its router IP and its health endpoint."""
    nodes = model['nodes']
    valid = _endpoint_keys(nodes)
    seen = {}
    for host in _host_order(nodes):
        endpoints = nodes[host]['endpoints']
        for i, ep in enumerate(endpoints if isinstance(endpoints, list) else []):
            if _ok(ep) and _ok(ep['labels']):
                for key, source in ((NAMESPACE_LABEL, "the endpoint's namespace"),
                                    (CLUSTER_LABEL, 'podnet_cluster.name')):
                    if key in ep['labels']:
                        errors.add(host, 'podnet_endpoints[%d].labels.%s' % (i, key),
                                   'podnet sets this label itself (from %s)' % source)
        for i, ep in valid[host]:
            key = (ep['namespace'], ep['name'])
            if key in seen:
                other, j = seen[key]
                where = ('podnet_endpoints[%d]' % j if other == host
                         else "%s's podnet_endpoints[%d]" % (other, j))
                errors.add(host, 'podnet_endpoints[%d].name' % i,
                           '%s in namespace %s is also %s (an endpoint name is unique in its '
                           'namespace across the cluster)' % (_show(ep['name']), _show(ep['namespace']), where))
            else:
                seen[key] = (host, i)
    _check_endpoint_room(model, pod_nets, valid, errors)


def _room_message(count, family, what, room):
    return ('%d endpoint%s do%s not fit the node\'s IPv%d pod CIDR (%s: %d endpoint address%s, one '
            'of them the health endpoint\'s): at most %d' % (
                count, '' if count == 1 else 's', 'es' if count == 1 else '', family, what, room + 1,
                '' if room == 0 else 'es', room))


def _check_endpoint_room(model, pod_nets, valid, errors):
    """Capacity where validation knows a node's CIDR: cluster-pool (mask_size) and kubernetes
    (podnet_pod_cidrs) per node, multi-pool per pool across the cluster. crd and eni pools are
    known only when the node allocates: ipam_endpoint's exhaustion error says it there."""
    mode = model['ipam']['mode']
    counts = dict((host, len(eps)) for host, eps in valid.items())
    if mode == 'cluster-pool' and model['ipam']['cluster_pool'] is not _INVALID:
        for family in (4, 6):
            block = model['ipam']['cluster_pool']['ipv%d' % family]
            if not _ok(block) or not _ok(block['mask_size']) or block['mask_size'] > (32 if family == 4 else 128):
                continue
            room = ipam_cidr.usable_addresses('ipv%d' % family, block['mask_size']) - 1
            for host in _host_order(counts):
                if counts[host] > room:
                    errors.add(host, 'podnet_endpoints', _room_message(
                        counts[host], family, 'mask_size %d' % block['mask_size'], room))
    elif mode == 'kubernetes':
        for host, _i, net in pod_nets:
            room = ipam_cidr.usable_addresses('ipv%d' % net.version, net.prefixlen) - 1
            if counts.get(host, 0) > room:
                errors.add(host, 'podnet_endpoints', _room_message(counts[host], net.version, str(net), room))
    elif mode == 'multi-pool' and model['ipam']['multi_pool'] is not _INVALID \
            and _ok(model['ipam']['multi_pool']['pools']):
        _check_pool_room(model['ipam']['multi_pool']['pools'], valid, errors)


def _check_pool_room(pools, valid, errors):
    """multi-pool: an endpoint's pool (its label ipam.podnet.io/ip-pool, else 'default') exists,
    and each pool's blocks hold its endpoints, plus one health endpoint per node in 'default'."""
    want = {}
    for host in _host_order(valid):
        want[ipam_cidr.DEFAULT_POOL] = want.get(ipam_cidr.DEFAULT_POOL, 0) + 1
        for i, ep in valid[host]:
            pool = (ep['labels'] if _ok(ep['labels']) else {}).get(
                ipam_cidr.ENDPOINT_POOL_LABEL) or ipam_cidr.DEFAULT_POOL
            if pool not in pools:
                errors.add(host, 'podnet_endpoints[%d].labels.%s' % (i, ipam_cidr.ENDPOINT_POOL_LABEL),
                           'no pool named %s (pools: %s)' % (_show(pool), ', '.join(_host_order(pools)) or 'none'))
                continue
            want[pool] = want.get(pool, 0) + 1
    for name in _host_order(want):
        pool = pools.get(name)
        if not _ok(pool):
            continue
        for family in (4, 6):
            block = pool['ipv%d' % family]
            if not _ok(block) or not _ok(block['mask_size'], block['cidrs']):
                continue
            nets = [net for _i, net in _nets(block['cidrs'])]
            mask = block['mask_size']
            if len(nets) != len(block['cidrs']) or mask > (32 if family == 4 else 128) \
                    or any(mask < net.prefixlen for net in nets):
                continue
            have = _blocks(nets, mask) * ipam_cidr.usable_addresses('ipv%d' % family, mask)
            if want[name] > have:
                errors.add(ALL, 'podnet_ipam.multi_pool.pools.%s.ipv%d' % (name, family),
                           '%s in blocks of /%d holds %d endpoint address%s, not enough for the %d '
                           'endpoints that use pool %s (podnet_endpoints, and one health endpoint per '
                           'node in pool default)' % (
                               ', '.join(str(n) for n in nets), mask, have, '' if have == 1 else 'es',
                               want[name], _show(name)))


def _check_policy(model, errors):
    """podnet_policy: what the schema cannot say: a rule must do something, port ranges run
    upwards, rule names are unique (reports name rules by them)."""
    policy = model['policy']
    if not _ok(policy) or not isinstance(policy.get('rules'), list):
        return
    names = {}
    for r, rule in enumerate(policy['rules']):
        path = 'podnet_policy.rules[%d]' % r
        if not _ok(rule):
            continue
        if _ok(rule['name']):
            if rule['name'] in names:
                errors.add(ALL, path + '.name', '%s is also the name of rules[%d]' % (
                    _show(rule['name']), names[rule['name']]))
            else:
                names[rule['name']] = r
        if all(_ok(rule[d]) and not rule[d] for d in POLICY_DIRECTIONS):
            errors.add(ALL, path, 'needs at least one of: %s' % ', '.join(POLICY_DIRECTIONS))
        for direction in POLICY_DIRECTIONS:
            items = rule[direction]
            for i, item in enumerate(items if isinstance(items, list) else []):
                if not _ok(item) or not isinstance(item['to_ports'], list):
                    continue
                for p, port in enumerate(item['to_ports']):
                    if _ok(port) and _ok(port['port'], port['end_port']) and port['end_port'] < port['port']:
                        errors.add(ALL, '%s.%s[%d].to_ports[%d].end_port' % (path, direction, i, p),
                                   '%d is less than port %d' % (port['end_port'], port['port']))


def _check_consistency(nodes, errors):
    """Every host must see the same cluster-level keys. A host that carries none of a key
    counts as 'not set' (as it would in Ansible); keys no host carries are not compared."""
    hosts = _host_order(nodes)
    for key in CLUSTER_KEYS:
        views = []
        for host in hosts:
            value = nodes[host].get(key) if isinstance(nodes[host], dict) else None
            views.append(_ABSENT if value is None else value)
        if all(view is _ABSENT for view in views):
            continue
        groups = []   # [value, count], in order of first appearance
        for view in views:
            for group in groups:
                if _same(group[0], view):
                    group[1] += 1
                    break
            else:
                groups.append([view, 1])
        majority = max(groups, key=lambda g: g[1])[0]   # max() keeps the first on ties
        for host, view in zip(hosts, views):
            if not _same(view, majority):
                errors.add(host, key, "differs from the other nodes' value; cluster-wide keys "
                           "must be the same on every node (set them in group_vars/all)")


def _same(a, b):
    if a is _ABSENT or b is _ABSENT:
        return a is b
    return _plain(a) == _plain(b)


# ---------------------------------------------------------------------------------------------
# the entry point

def validate(cluster_vars, nodes):
    """Validate and normalize the whole inventory.

    cluster_vars: {podnet_cluster, podnet_ipam, podnet_routing, podnet_eni, podnet_policy},
      any of them missing or null (defaults apply).
    nodes: {hostname: {podnet_node_ip, podnet_node_device, podnet_node_labels, podnet_pod_cidrs,
      podnet_instance}}; each host may also carry the cluster-level keys as it sees them, which
      are then compared across hosts (they must agree). Other podnet_* keys are ignored unless
      they look like a typo of one of ours.

    Returns the normalized model (docs/architecture.md); raises InventoryError with all errors.
    """
    errors = _Errors()
    cluster_vars = cluster_vars or {}
    if not isinstance(cluster_vars, dict):
        raise InventoryError(['%s: podnet_cluster: cluster variables must be a mapping, got %s'
                              % (ALL, _kind(cluster_vars))])
    if nodes is None:
        nodes = {}
    if not isinstance(nodes, dict):
        raise InventoryError(['%s: podnet_nodes: expected a mapping of host name to variables, '
                              'got %s' % (ALL, _kind(nodes))])

    walker = _Walker(errors, ALL)
    _check_top_level_keys(cluster_vars, CLUSTER_KEYS + NODE_KEYS, ALL, errors)
    raw = dict((key, walker.walk(schema, cluster_vars.get(key), key))
               for key, schema in CLUSTER_SCHEMA.items())
    # A section that is not a mapping at all: carry on with its defaults so the rest is checked.
    for key, schema in CLUSTER_SCHEMA.items():
        if raw[key] is _INVALID:
            raw[key] = _Walker(_Errors(), ALL).walk(schema, {}, key)

    model = {
        'cluster': raw['podnet_cluster'],
        'ipam': raw['podnet_ipam'],
        'routing': raw['podnet_routing'],
        'eni': raw['podnet_eni'] if raw['podnet_ipam']['mode'] == 'eni' else None,
        'policy': raw['podnet_policy'],
        'datapath': raw['podnet_datapath'],
        'nodes': {},
    }

    if not nodes:
        errors.add(ALL, 'podnet_nodes', 'the inventory has no nodes')
    for host in _host_order(nodes):
        host_vars = nodes[host]
        if host_vars is None:
            host_vars = {}
        if not isinstance(host_vars, dict):
            errors.add(str(host), 'podnet_node_ip', 'expected the host variables as a mapping, '
                       'got %s' % _kind(host_vars))
            host_vars = {}
        node_walker = _Walker(errors, str(host))
        _check_top_level_keys(host_vars, CLUSTER_KEYS + NODE_KEYS, str(host), errors)
        node = dict((key, node_walker.walk(schema, host_vars.get(key), key))
                    for key, schema in NODE_SCHEMA.items())
        model['nodes'][str(host)] = {
            'node_ip': node['podnet_node_ip'],
            'node_device': node['podnet_node_device'],
            'labels': node['podnet_node_labels'],
            'pod_cidrs': node['podnet_pod_cidrs'],
            'instance': node['podnet_instance'],
            'endpoints': node['podnet_endpoints'],
            'eni': node['podnet_node_eni'],
        }

    _complete(model)
    _check_ledger(model, errors)
    active_pools = _check_pools(model, len(nodes), errors)
    _check_modes(model, errors)
    pod_nets = _check_pod_cidrs(model, errors)
    _check_routing(model, active_pools, pod_nets, errors)
    _check_node_ips(model, active_pools, pod_nets, errors)
    _check_endpoints(model, pod_nets, errors)
    _check_policy(model, errors)
    _check_consistency(dict((h, v) for h, v in nodes.items() if isinstance(v, dict)), errors)

    if errors.items:
        raise InventoryError(errors.sorted())
    return model
