# -*- coding: utf-8 -*-
# Copyright: podnet.fabric contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""What podnet.fabric.bpf_info reports, from bpftool's JSON (pure) and the pinned maps.

Ours are the programs pinned under ``<pin_root>/programs/`` and the maps pinned under the pin root,
plus any tc attachment of a program with one of podnet's program names: a device whose hook still
runs a program from before the last reload (not yet replaced by its own bpf_program run) shows up
with ``current: false``.
"""
from __future__ import absolute_import, division, print_function

__metaclass__ = type

import os

from ansible_collections.podnet.fabric.plugins.module_utils import bpf, bpf_maps


def _under(paths, directory):
    return [p for p in paths or [] if os.path.dirname(p) == directory]


def attachments(net):
    """bpftool -j net -> [{'device', 'ifindex', 'hook', 'prog_id', 'name'}] (tc clsact only)."""
    out = []
    for ns in net or []:
        for a in ns.get('tc') or []:
            kind = a.get('kind', '')
            hook = kind.split('/', 1)[1] if kind.startswith('clsact/') else kind
            out.append({'device': a.get('devname'), 'ifindex': a.get('ifindex'), 'hook': hook,
                        'prog_id': a.get('id', a.get('prog_id')), 'name': a.get('name')})
    return sorted(out, key=lambda a: (a['device'] or '', a['hook']))


def programs(progs, attached, pin_root):
    """bpftool -j -f prog show + attachments() -> podnet's programs, each with where it runs."""
    pin_dir = os.path.join(pin_root, bpf.PROGRAM_DIR)
    by_id = dict((p['id'], p) for p in progs or [])
    ids = set(p['id'] for p in progs or [] if _under(p.get('pinned'), pin_dir))
    ids |= set(a['prog_id'] for a in attached if a['name'] in bpf.PROGRAMS and a['prog_id'] in by_id)
    out = []
    for i in sorted(ids):
        p = by_id[i]
        pins = _under(p.get('pinned'), pin_dir)
        out.append({'id': i, 'name': p.get('name'), 'tag': p.get('tag'), 'pin': pins[0] if pins else None,
                    'current': bool(pins), 'loaded_at': p.get('loaded_at'),
                    'bytes_xlated': p.get('bytes_xlated'), 'bytes_jited': p.get('bytes_jited'),
                    'map_ids': p.get('map_ids', []),
                    'attached': [{'device': a['device'], 'hook': a['hook']} for a in attached if a['prog_id'] == i]})
    return out


def maps(map_list, pin_root, counts):
    """bpftool -j -f map show -> podnet's maps (pinned directly under the pin root), with entry
    counts from `counts` ({pin path: n})."""
    names = dict((s.path(pin_root), s.name) for s in bpf_maps.MAPS.values())
    out = []
    for m in map_list or []:
        for path in _under(m.get('pinned'), pin_root):
            out.append({'name': names.get(path), 'pin': path, 'id': m.get('id'), 'type': m.get('type'),
                        'key_size': m.get('bytes_key'), 'value_size': m.get('bytes_value'),
                        'max_entries': m.get('max_entries'), 'entries': counts.get(path)})
    return sorted(out, key=lambda m: m['pin'])


def drops(metrics):
    """The metrics map's entries (bpf_maps canonical) -> (drops, forwarded), each sorted by
    packets, most first. A policy drop names its rule (0: default deny)."""
    entries = list(metrics.values()) if isinstance(metrics, dict) else list(metrics or [])

    def key(e):
        return (-e['packets'], e['reason'], e['direction'], e['rule'])

    return (sorted([e for e in entries if e['reason'] != 0], key=key),
            sorted([e for e in entries if e['reason'] == 0], key=key))


def host_routing(records, pin_root, support):
    """Pure: which host routing the pinned programs were compiled for ({file: bpf|kernel}, from the
    loader's records), and whether the kernel has the helpers eBPF host routing needs."""
    files = (records or {}).get(pin_root, {})
    modes = dict((f, r.get('host_routing', 'kernel')) for f, r in sorted(files.items()))
    missing = sorted('%s (%s)' % (h, why) for h, why in support.items() if why is not True)
    distinct = sorted(set(modes.values()))
    return {'mode': distinct[0] if len(distinct) == 1 else ('mixed' if distinct else None),
            'files': modes, 'kernel_supports_bpf': not missing, 'missing': missing}
