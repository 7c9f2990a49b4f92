# -*- coding: utf-8 -*-
# Copyright: podnet.fabric contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The eBPF program loader: compile bpf/*.c with bcc on the node, pin, attach at tc clsact.

- The unit of compilation is a source file (bpf_lxc.c holds from_container and to_container): one
  compile loads every program of the file and pins each at ``<pin_root>/programs/<program>``.
  Attaching a program to one more device is then a tc filter, not a compile: one compile per node
  per file, however many endpoints.
- The sources reach the node as module arguments: the action plugin of podnet.fabric.bpf_program
  reads the collection's ``bpf/`` (the one copy) on the controller. bcc rewrites map calls only in
  the text it is given, so our quoted includes are expanded into one text (``expand``), with
  ``#line`` markers so compiler messages name bpf/lib/x.h.
- The hash of that text, the defines and the pin root is recorded per file in
  ``/var/lib/podnet/bpf/programs.json`` with the ids of the programs it pinned. A pinned program
  whose recorded hash is the desired one, and whose id is the recorded id, is not compiled again.
- Programs are attached at a fixed priority and handle (PRIO, HANDLE) with a netlink replace: a
  reload swaps the program in place, atomically for the packets, and never stacks a second
  filter. (``tc filter replace`` without a priority would add one.)

Pure functions first (sources, hash, plan, project), then the reader and the applier (root, bcc,
pyroute2).
"""
from __future__ import absolute_import, division, print_function

__metaclass__ = type

import ctypes
import hashlib
import os
import re
import struct
import time

from ansible_collections.podnet.fabric.plugins.module_utils import bpf_maps, statefile

DEFAULT_PIN_ROOT = bpf_maps.DEFAULT_PIN_ROOT
STATE_FILE = '/var/lib/podnet/bpf/programs.json'
PROGRAM_DIR = 'programs'
# Each program and the source file that holds it.
PROGRAMS = {
    'from_container': 'bpf_lxc.c',
    'to_container': 'bpf_lxc.c',
    'from_netdev': 'bpf_netdev.c',
    'to_netdev': 'bpf_netdev.c',
    'from_overlay': 'bpf_overlay.c',
}
# tc clsact parents: TC_H_MAKE(TC_H_CLSACT, TC_H_MIN_INGRESS / TC_H_MIN_EGRESS).
HOOKS = {'ingress': 0xFFFFFFF2, 'egress': 0xFFFFFFF3}
# podnet's place on a clsact hook. Priority 1 runs before anything added without a priority
# (the kernel numbers those from 49152 down).
PRIO = 1
HANDLE = 1
ETH_P_ALL = 0x0003
DEFINE_NAME = re.compile(r'^[A-Z][A-Z0-9_]*$')
DEFINE_VALUE = re.compile(r'^-?[A-Za-z0-9_]+$')
RESERVED_DEFINES = ('PODNET_PIN_ROOT', 'PODNET_HOST_ROUTING')
HOST_ROUTING_MODES = ('bpf', 'kernel')
# What eBPF host routing (bpf/lib/host_routing.h) calls, by helper id (enum bpf_func_id in
# linux/bpf.h): a kernel that lacks one of them for tc programs gets kernel routing.
HOST_ROUTING_HELPERS = (('bpf_redirect_peer', 155), ('bpf_redirect_neigh', 152), ('bpf_fib_lookup', 69))
BPF_PROG_TYPE_SCHED_CLS = 3
INCLUDE = re.compile(r'^\s*#\s*include\s+"([^"]+)"\s*$')


class BpfError(Exception):
    pass


# ------------------------------------------------------------------------------ sources (pure)

def read_sources(directory):
    """{relative path: text} of the datapath's sources: the programs (*.c) and bpf/lib/*.h."""
    out = {}
    for sub in ('', 'lib'):
        d = os.path.join(directory, sub)
        for name in sorted(os.listdir(d)):
            if name.endswith('.c' if not sub else '.h'):
                with open(os.path.join(d, name)) as f:
                    out[os.path.join(sub, name) if sub else name] = f.read()
    return out


def functions_of(filename):
    """The programs a source file holds, sorted."""
    return sorted(p for p, f in PROGRAMS.items() if f == filename)


def expand(sources, main):
    """One translation unit: `main` with each quoted include replaced by the file (once; a header
    included again is left out, as its include guard would), #line markers keeping file names and
    line numbers for the compiler's messages. Includes in <> are left to the compiler."""
    if main not in sources:
        raise BpfError('the sources have no %s (have: %s)' % (main, ', '.join(sorted(sources)) or 'none'))
    seen = set()
    out = []

    def walk(name):
        out.append('#line 1 "bpf/%s"' % name)
        for n, line in enumerate(sources[name].splitlines(), 1):
            m = INCLUDE.match(line)
            if not m:
                out.append(line)
                continue
            inc = m.group(1)
            if inc not in sources:
                raise BpfError('bpf/%s line %d includes "%s", which is not among the sources' % (name, n, inc))
            if inc not in seen:
                seen.add(inc)
                walk(inc)
            out.append('#line %d "bpf/%s"' % (n + 1, name))

    walk(main)
    return '\n'.join(out) + '\n'


def normalize_defines(defines):
    """{NAME: 'value'} from the module's dict; names are C macro names, values integers or tokens."""
    out = {}
    for name, value in sorted((defines or {}).items()):
        if not DEFINE_NAME.match(str(name)):
            raise BpfError('defines: %r is not a macro name (upper case, digits, _)' % (name,))
        if name in RESERVED_DEFINES:
            raise BpfError('defines: %s is set by the loader (from pin_root)' % name)
        if isinstance(value, bool):
            value = int(value)
        text = str(value).strip()
        if not DEFINE_VALUE.match(text):
            raise BpfError('defines.%s: %r must be an integer or a single token' % (name, value))
        out[str(name)] = text
    return out


def host_routing_mode(requested, support):
    """Pure: the host routing the programs are compiled for. requested: bpf or kernel; support:
    {helper: True, or why not} from probe_helpers (None when not probed). bpf falls back to kernel
    when a helper is missing, and says which."""
    if requested not in HOST_ROUTING_MODES:
        raise BpfError('host_routing: %r is not one of %s' % (requested, ', '.join(HOST_ROUTING_MODES)))
    if requested == 'kernel':
        return {'requested': 'kernel', 'mode': 'kernel', 'missing': []}
    if support is None:
        raise BpfError('host_routing: bpf needs the kernel\'s helpers probed')
    missing = sorted(h for h, _id in HOST_ROUTING_HELPERS if support.get(h) is not True)
    return {'requested': 'bpf', 'mode': 'kernel' if missing else 'bpf',
            'missing': ['%s (%s)' % (h, support.get(h) or 'not probed') for h in missing]}


def compile_defines(defines, host_routing):
    """The defines the compile sees: the module's, and the host routing the loader chose."""
    return dict(defines, PODNET_HOST_ROUTING='1' if host_routing['mode'] == 'bpf' else '0')


def cflags(defines, pin_root):
    return ['-DPODNET_PIN_ROOT="%s"' % pin_root] + ['-D%s=%s' % kv for kv in sorted(defines.items())]


def unit_hash(text, defines, pin_root):
    """What decides the compiled programs: the expanded text (exactly the headers it uses), the
    defines and the pin root (the map pin paths are compiled in)."""
    h = hashlib.sha256()
    h.update(text.encode('utf-8'))
    for k, v in sorted(defines.items()):
        h.update(('\0-D%s=%s' % (k, v)).encode('utf-8'))
    h.update(('\0pin_root=%s' % pin_root).encode('utf-8'))
    return h.hexdigest()


def program_pin(pin_root, program):
    return os.path.join(pin_root, PROGRAM_DIR, program)


def desired_state(params, sources, support=None):
    """The desired state from the module's params (raises BpfError naming the parameter) and, for
    host_routing bpf, the kernel's support of its helpers (probe_helpers)."""
    program = params['program']
    if program not in PROGRAMS:
        raise BpfError('program: %r is not one of %s' % (program, ', '.join(sorted(PROGRAMS))))
    if params['hook'] not in HOOKS:
        raise BpfError('hook: %r is not ingress or egress' % (params['hook'],))
    device = params['device']
    if not device or len(device) > 15 or '/' in device:
        raise BpfError('device: %r is not a link name' % (device,))
    pin_root = os.path.normpath(params.get('pin_root') or DEFAULT_PIN_ROOT)
    if not pin_root.startswith('/sys/fs/bpf/') or '.' in os.path.basename(pin_root):
        raise BpfError('pin_root: %s must be a directory under /sys/fs/bpf (bpffs names take no dots)' % pin_root)
    defines = normalize_defines(params.get('defines'))
    filename = PROGRAMS[program]
    desired = {'state': params.get('state') or 'present', 'program': program, 'file': filename,
               'functions': functions_of(filename), 'device': device, 'hook': params['hook'],
               'pin_root': pin_root, 'defines': defines, 'hash': None, 'host_routing': None}
    if desired['state'] == 'present':
        if not sources:
            raise BpfError('sources: none given (the action plugin of podnet.fabric.bpf_program passes the '
                           'collection\'s bpf/ directory; run the module through it)')
        desired['host_routing'] = host_routing_mode(params.get('host_routing') or 'bpf', support)
        desired['compile_defines'] = compile_defines(defines, desired['host_routing'])
        desired['hash'] = unit_hash(expand(sources, filename), desired['compile_defines'], pin_root)
    return desired


# ------------------------------------------------------------------------------ plan (pure)

def fresh(desired, realized):
    """Why the file must be compiled, or None when its pinned programs are the recorded ones for
    the desired hash."""
    rec = realized['record']
    pins = realized['pins']
    if not all(pins.get(f) for f in desired['functions']):
        return 'not pinned'
    if rec is None:
        return 'no record of the pinned programs'
    if rec.get('hash') != desired['hash']:
        return 'sources or defines changed'
    if any(pins[f]['id'] != (rec.get('ids') or {}).get(f) for f in desired['functions']):
        return 'the pinned programs are not the recorded ones'
    return None


def plan(desired, realized):
    """Pure: the actions from the realized state to the desired one.

    realized: {'device': {'name', 'ifindex'} or None, 'clsact': bool, 'filters': [{'prio', 'handle',
    'prog_id', 'name', 'tag'}] at PRIO on the hook, 'pins': {program: {'id', 'tag', 'name'} or None}
    for the file's programs, 'record': the state file's record of the file or None, 'users':
    [{'device', 'hook', 'prog_id'}] podnet filters anywhere in the namespace (read for absent)}.
    """
    dev, hook, program = desired['device'], desired['hook'], desired['program']
    where = {'device': dev, 'hook': hook}
    ours = [f for f in realized['filters'] if f['handle'] == HANDLE]
    others = [f for f in realized['filters'] if f['handle'] != HANDLE]
    actions = []
    if desired['state'] == 'absent':
        for f in ours + others:
            actions.append(dict(where, action='detach', prio=f['prio'], handle=f['handle'], prog_id=f['prog_id']))
        pin = realized['pins'].get(program)
        if pin:
            elsewhere = [u for u in realized.get('users', [])
                         if u['prog_id'] == pin['id'] and (u['device'], u['hook']) != (dev, hook)]
            if not elsewhere:
                actions.append({'action': 'unpin', 'program': program, 'file': desired['file'],
                                'pin': program_pin(desired['pin_root'], program), 'prog_id': pin['id']})
        return actions
    if realized['device'] is None:
        raise BpfError('device: %s does not exist on this node' % dev)
    why = fresh(desired, realized)
    if why:
        actions.append({'action': 'compile', 'file': desired['file'], 'programs': desired['functions'],
                        'hash': desired['hash'], 'reason': why})
    if not realized['clsact']:
        actions.append(dict(where, action='add_clsact'))
    pin = realized['pins'].get(program)
    if why or not ours or ours[0]['prog_id'] != pin['id']:
        actions.append(dict(where, action='attach', program=program, prio=PRIO, handle=HANDLE,
                            pin=program_pin(desired['pin_root'], program)))
    for f in others:
        actions.append(dict(where, action='detach', prio=f['prio'], handle=f['handle'], prog_id=f['prog_id']))
    return actions


def project(desired, realized, actions):
    """Pure: the realized state the actions would leave (check mode). A program compiled in the
    run has no id yet: None."""
    r = dict(realized, filters=list(realized['filters']), pins=dict(realized['pins']))
    for a in actions:
        kind = a['action']
        if kind == 'compile':
            for f in a['programs']:
                r['pins'][f] = {'id': None, 'tag': None, 'name': f}
            r['record'] = {'hash': a['hash'], 'ids': dict((f, None) for f in a['programs'])}
        elif kind == 'add_clsact':
            r['clsact'] = True
        elif kind == 'attach':
            r['filters'] = [f for f in r['filters'] if f['handle'] != a['handle']] + [
                {'prio': a['prio'], 'handle': a['handle'], 'prog_id': r['pins'][a['program']]['id'],
                 'name': a['program'], 'tag': r['pins'][a['program']]['tag']}]
        elif kind == 'detach':
            r['filters'] = [f for f in r['filters'] if f['handle'] != a['handle']]
        elif kind == 'unpin':
            r['pins'][a['program']] = None
    return r


def view(desired, realized):
    """What the module returns as ``state`` and shows in the diff."""
    program = desired['program']
    pin = realized['pins'].get(program)
    rec = realized['record'] or {}
    ours = [f for f in realized['filters'] if f['handle'] == HANDLE]
    return {
        'device': desired['device'],
        'hook': desired['hook'],
        'filter': ours[0] if ours else None,
        'other_filters': [f for f in realized['filters'] if f['handle'] != HANDLE],
        'program': dict(pin, pin=program_pin(desired['pin_root'], program),
                        hash=rec.get('hash') if (rec.get('ids') or {}).get(program) == pin['id'] else None)
        if pin else None,
    }


def describe(action):
    kind = action['action']
    if kind in ('compile', 'unpin'):
        return '%s %s' % (kind, action.get('file'))
    return '%s %s %s' % (kind, action['device'], action['hook'])


# ------------------------------------------------------------------------------ kernel: read

def _teach_pyroute2():
    """pyroute2 (0.9) names the cls_bpf attributes only up to TCA_BPF_FLAGS: the program's tag and
    id come back as UNKNOWN. Add the three that follow in linux/pkt_cls.h, in their order, so a
    filter dump says which program is attached."""
    from pyroute2.netlink.rtnl.tcmsg import sched_bpf

    opts = sched_bpf.options
    names = [n[0] for n in opts.nla_map]
    if 'TCA_BPF_ID' in names:
        return
    if names[-1] != 'TCA_BPF_FLAGS' or len(names) != 9:
        raise BpfError('pyroute2 %s lays out cls_bpf attributes unexpectedly: %s' % (_pyroute2_version(), names))
    opts.nla_map = tuple(opts.nla_map) + (('TCA_BPF_FLAGS_GEN', 'uint32'), ('TCA_BPF_TAG', 'hex'),
                                          ('TCA_BPF_ID', 'uint32'))
    opts._nlmsg_base__compiled_nla = False  # recompiled from the new map on next use


def _pyroute2_version():
    import pyroute2
    return pyroute2.__version__


def filters(ipr, ifindex, hook):
    """podnet's filters on a clsact hook: those at PRIO (each a dict). The kernel also reports the
    priority's head (handle 0): not a filter."""
    _teach_pyroute2()
    out = []
    try:
        msgs = ipr.get_filters(index=ifindex, parent=HOOKS[hook])
    except Exception as e:  # no clsact qdisc: EINVAL; NetlinkError is not an OSError
        if getattr(e, 'code', None) in (22, 2):
            return out
        raise
    for m in msgs:
        if m['handle'] == 0 or (m['info'] >> 16) != PRIO:
            continue
        opts = m.get_attr('TCA_OPTIONS')
        tag = opts.get_attr('TCA_BPF_TAG') if opts else None
        out.append({'prio': PRIO, 'handle': m['handle'], 'kind': m.get_attr('TCA_KIND'),
                    'prog_id': opts.get_attr('TCA_BPF_ID') if opts else None,
                    'name': opts.get_attr('TCA_BPF_NAME') if opts else None,
                    'tag': tag.replace(':', '') if isinstance(tag, str) else tag})
    return sorted(out, key=lambda f: f['handle'])


def has_clsact(ipr, ifindex):
    return any(q.get_attr('TCA_KIND') == 'clsact' for q in ipr.get_qdiscs(index=ifindex))


def pinned_program(path):
    """{'id', 'tag', 'name'} of the program pinned at path, or None."""
    fd = bpf_maps.obj_get(path)
    if fd is None:
        return None
    try:
        info = bpf_maps.prog_info(fd, path)
    finally:
        os.close(fd)
    return {'id': info['id'], 'tag': info['tag'], 'name': info['name']}


def read_records(path=STATE_FILE):
    return statefile.read_json(path) or {}


def users(ipr):
    """Every podnet filter (at PRIO) in this network namespace: which program id runs where."""
    out = []
    for link in ipr.get_links():
        name = link.get_attr('IFLA_IFNAME')
        for hook in sorted(HOOKS):
            for f in filters(ipr, link['index'], hook):
                out.append({'device': name, 'hook': hook, 'prog_id': f['prog_id']})
    return out


def read(ipr, desired, state_file=STATE_FILE):
    idx = ipr.link_lookup(ifname=desired['device'])
    realized = {'device': None, 'clsact': False, 'filters': [], 'users': []}
    if idx:
        realized['device'] = {'name': desired['device'], 'ifindex': idx[0]}
        realized['clsact'] = has_clsact(ipr, idx[0])
        if realized['clsact']:
            realized['filters'] = filters(ipr, idx[0], desired['hook'])
    realized['pins'] = dict((f, pinned_program(program_pin(desired['pin_root'], f))) for f in desired['functions'])
    realized['record'] = read_records(state_file).get(desired['pin_root'], {}).get(desired['file'])
    if desired['state'] == 'absent' and realized['pins'].get(desired['program']):
        realized['users'] = users(ipr)
    return realized


# ------------------------------------------------------------------------------ kernel: apply

def _insn(code, dst=0, src=0, off=0, imm=0):
    return struct.pack('<BBhi', code, (src << 4) | dst, off, imm)


def probe_program(helper_id):
    """A tc program that calls one helper with arguments the verifier accepts (constants, a
    NULL params pointer, or a zeroed 64-byte stack buffer for bpf_fib_lookup) and returns 0."""
    mov_k, mov_x, add_k, st_dw, call, exit_ = 0xb7, 0xbf, 0x07, 0x7a, 0x85, 0x95
    out = b''
    if helper_id == 69:   # bpf_fib_lookup(ctx, params, 64, 0): r1 is the context on entry
        for i in range(1, 9):
            out += _insn(st_dw, dst=10, off=-8 * i)
        out += _insn(mov_x, dst=2, src=10) + _insn(add_k, dst=2, imm=-64) + _insn(mov_k, dst=3, imm=64)
        out += _insn(mov_k, dst=4)
    else:                 # bpf_redirect_peer(0, 0), bpf_redirect_neigh(0, NULL, 0, 0)
        for reg in range(1, 5):
            out += _insn(mov_k, dst=reg)
    return out + _insn(call, imm=helper_id) + _insn(mov_k, dst=0) + _insn(exit_)


def probe_helpers(helpers=HOST_ROUTING_HELPERS):
    """{helper name: True, or the verifier's reason} for tc programs on this kernel: one trial
    load of a five-to-fifteen instruction program each (no compile; a millisecond)."""
    lib = bpf_maps.libbcc()
    out = {}
    for name, helper_id in helpers:
        insns = probe_program(helper_id)
        log = ctypes.create_string_buffer(4096)
        fd = lib.bcc_prog_load(BPF_PROG_TYPE_SCHED_CLS, b'podnet_probe', insns, len(insns), b'GPL', 0, 1, log, len(log))
        if fd >= 0:
            os.close(fd)
            out[name] = True
            continue
        lines = [x for x in log.value.decode('utf-8', 'replace').splitlines() if x.strip() and not x.startswith(('processed', ';'))]
        out[name] = lines[-1].strip() if lines else os.strerror(ctypes.get_errno() or -fd)
    return out


def check_maps(pin_root, require=False):
    """Every pinned podnet map must have the layout of bpf_maps.MAPS (bcc would silently reuse a
    map of another layout). With require, each must also exist (after a compile: the C side made
    them, so this also proves maps.h and bpf_maps.py agree)."""
    for name in sorted(bpf_maps.MAPS):
        m = bpf_maps.PinnedMap.open(name, pin_root)
        if m is None:
            if require:
                raise BpfError('%s: not pinned after the compile' % bpf_maps.MAPS[name].path(pin_root))
            continue
        m.close()


def compile_file(sources, desired):
    """Compile the file with bcc and load each of its programs: ({program: fd}, the BPF object,
    seconds). The object must stay alive until the programs are pinned."""
    try:
        from bcc import BPF
    except ImportError as e:
        raise BpfError('cannot import bcc (Debian package python3-bpfcc, visible to the module\'s '
                       'interpreter: a podnet venv must be made with --system-site-packages): %s' % e)
    text = expand(sources, desired['file'])
    t0 = time.monotonic()
    try:
        b = BPF(text=text, cflags=cflags(desired['compile_defines'], desired['pin_root']))
        fds = dict((f, b.load_func(f, BPF.SCHED_CLS).fd) for f in desired['functions'])
    except Exception as e:
        raise BpfError('bcc could not compile or load bpf/%s: %s' % (desired['file'], e))
    return fds, b, time.monotonic() - t0


class Loader(object):
    """Applies bpf_program's actions; remembers whether (and how long) it compiled."""

    def __init__(self, ipr, desired, sources, state_file=STATE_FILE):
        self.ipr, self.desired, self.sources, self.state_file = ipr, desired, sources, state_file
        self.compiled = False
        self.compile_seconds = None

    def apply(self, action):
        getattr(self, '_' + action['action'])(action)

    def _ifindex(self):
        idx = self.ipr.link_lookup(ifname=self.desired['device'])
        if not idx:
            raise BpfError('device %s is gone' % self.desired['device'])
        return idx[0]

    def _compile(self, action):
        d = self.desired
        os.makedirs(os.path.join(d['pin_root'], PROGRAM_DIR), mode=0o700, exist_ok=True)
        check_maps(d['pin_root'])
        fds, b, seconds = compile_file(self.sources, d)
        try:
            check_maps(d['pin_root'], require=True)
            ids, tags = {}, {}
            for f, fd in sorted(fds.items()):
                path = program_pin(d['pin_root'], f)
                bpf_maps.obj_pin(fd, path)
                info = bpf_maps.prog_info(fd, path)
                ids[f], tags[f] = info['id'], info['tag']
        finally:
            b.cleanup()
        with statefile.locked(self.state_file):
            records = read_records(self.state_file)
            records.setdefault(d['pin_root'], {})[d['file']] = {
                'hash': d['hash'], 'defines': d['defines'], 'host_routing': d['host_routing']['mode'],
                'ids': ids, 'tags': tags,
                'compiled_at': time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime()),
                'compile_seconds': round(seconds, 3)}
            statefile.write_json(self.state_file, records)
        self.compiled = True
        self.compile_seconds = round(seconds, 3)

    def _add_clsact(self, action):
        self.ipr.tc('add', 'clsact', self._ifindex())

    def _attach(self, action):
        fd = bpf_maps.obj_get(action['pin'])
        if fd is None:
            raise BpfError('%s: not pinned' % action['pin'])
        try:
            self.ipr.tc('replace-filter', 'bpf', self._ifindex(), handle=action['handle'], fd=fd,
                        name=action['program'], parent=HOOKS[action['hook']], prio=action['prio'],
                        protocol=ETH_P_ALL, direct_action=True)
        finally:
            os.close(fd)

    def _detach(self, action):
        try:
            self.ipr.tc('del-filter', 'bpf', self._ifindex(), handle=action['handle'], parent=HOOKS[action['hook']],
                        prio=action['prio'], protocol=ETH_P_ALL)
        except Exception as e:
            if getattr(e, 'code', None) not in (2,):   # ENOENT: already gone
                raise

    def _unpin(self, action):
        d = self.desired
        bpf_maps.unpin(action['pin'])
        with statefile.locked(self.state_file):
            records = read_records(self.state_file)
            left = [f for f in d['functions'] if os.path.exists(program_pin(d['pin_root'], f))]
            if not left and d['file'] in records.get(d['pin_root'], {}):
                del records[d['pin_root']][d['file']]
                if not records[d['pin_root']]:
                    del records[d['pin_root']]
                statefile.write_json(self.state_file, records)
        bpf_maps.remove_empty_dirs(d['pin_root'], (PROGRAM_DIR,))
