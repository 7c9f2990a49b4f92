#!/usr/bin/env python
"""Start and stop the VMs of the podnet VM tier (Debian 12 under qemu TCG).

up: builds the node image when its inputs changed (build-image.sh, cached), then boots one VM per
entry of the spec from that one base image, each on its own qcow2 overlay, with its own MAC,
hostname, underlay address and ssh host key (made at first boot). The VMs' eth0 share an underlay on
a VDE hub over a unix socket; eth1 is qemu user networking with restrict=on (no way out) and the
guest's ssh forwarded on 127.0.0.1 only. Returns when every VM answers ssh; the host keys seen then
go to the run's known_hosts, which the inventory uses.

down: ends, by PID, the processes this tool started for the prefix (checking that each PID still
runs the command it started), and removes the run directory (overlays, sockets, keys, logs).

Everything of a run is under /run/podnet-vm/<prefix>/ and every process is named <prefix>-...
The spec (JSON, from --spec FILE or stdin): {"prefix": "pvm", "underlay_prefixlen": 24,
"vms": [{"name": "node1", "ip": "192.168.50.11", "ssh_port": 22211}, ...]}
"""
import argparse
import hashlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
RUN_ROOT = os.environ.get('PODNET_VM_RUN', '/run/podnet-vm')
QEMU = 'qemu-system-x86_64'
# The emulated CPU model (PODNET_VM_CPU). qemu64 rather than max: TCG emulates every instruction,
# and on this kind of machine a guest of the plain x86-64 model booted to ssh in 46 s against 64 s and
# byte-compiled the same Python packages in 1.9 s against 2.6 s (why was not measured: likely the
# wider instruction sets `max` offers, which glibc picks and TCG emulates at more cost).
CPU = os.environ.get('PODNET_VM_CPU', 'qemu64')
PREFIX_RE = re.compile(r'^[a-z][a-z0-9]{1,7}$')


def log(msg):
    sys.stderr.write('vmctl: %s\n' % msg)
    sys.stderr.flush()


def run_dir(prefix):
    if not PREFIX_RE.match(prefix):
        raise SystemExit('vmctl: prefix %r: 2-8 lowercase letters and digits, a letter first' % prefix)
    return os.path.join(RUN_ROOT, prefix)


def mac(prefix, name, nic):
    h = hashlib.sha256(('%s/%s' % (prefix, name)).encode()).digest()
    return '52:54:%02x:%02x:%02x:%02x' % (h[0], h[1], h[2], nic)


def port_free(port):
    s = socket.socket()
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(('127.0.0.1', port))
        return True
    except OSError:
        return False
    finally:
        s.close()


def cmdline(pid):
    try:
        with open('/proc/%d/cmdline' % pid, 'rb') as f:
            return f.read().split(b'\0')
    except OSError:
        return None


def ours(pid, marker):
    """The PID still runs a process this tool started: its command line names the run's marker."""
    argv = cmdline(pid)
    return bool(argv) and any(marker.encode() in a for a in argv)


def read_pid(path):
    try:
        with open(path) as f:
            return int(f.read().strip())
    except (OSError, ValueError):
        return None


def stop_pid(pid, marker, name, timeout=15):
    if pid is None or not ours(pid, marker):
        return False
    os.kill(pid, signal.SIGTERM)
    deadline = time.time() + timeout
    while time.time() < deadline:
        if not ours(pid, marker):
            return True
        time.sleep(0.2)
    log('%s (pid %d) ignored SIGTERM for %ds: SIGKILL' % (name, pid, timeout))
    os.kill(pid, signal.SIGKILL)
    while ours(pid, marker):
        time.sleep(0.1)
    return True


def down(prefix):
    d = run_dir(prefix)
    if not os.path.isdir(d):
        return {'changed': False, 'stopped': []}
    stopped = []
    pidfiles = sorted(f for f in os.listdir(d) if f.endswith('.pid'))
    # The VMs first, the hub they are plugged into last.
    pidfiles.sort(key=lambda f: f == 'hub.pid')
    for f in pidfiles:
        if stop_pid(read_pid(os.path.join(d, f)), d, f[:-4]):
            stopped.append(f[:-4])
    shutil.rmtree(d)
    return {'changed': True, 'stopped': stopped}


def ssh_argv(d, port, *cmd):
    return ['ssh', '-i', os.path.join(d, 'id_ed25519'), '-p', str(port), '-o', 'BatchMode=yes',
            '-o', 'UserKnownHostsFile=%s' % os.path.join(d, 'known_hosts'), '-o', 'StrictHostKeyChecking=yes',
            '-o', 'ConnectTimeout=5', 'root@127.0.0.1'] + list(cmd)


def wait_ssh(d, vm, deadline):
    """The VM's host key, once its sshd answers (first boot makes the key)."""
    while time.time() < deadline:
        if not ours(read_pid(os.path.join(d, vm['name'] + '.pid')) or -1, d):
            raise SystemExit('vmctl: %s: qemu exited; console: %s' % (vm['name'], tail(os.path.join(d, vm['name'] + '.console'))))
        p = subprocess.run(['ssh-keyscan', '-T', '5', '-t', 'ed25519', '-p', str(vm['ssh_port']), '127.0.0.1'],
                           stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, universal_newlines=True, check=False)
        keys = [line for line in p.stdout.splitlines() if line and not line.startswith('#')]
        if keys:
            return keys
        time.sleep(2)
    raise SystemExit('vmctl: %s: no ssh on 127.0.0.1:%d in time; console: %s' % (
        vm['name'], vm['ssh_port'], tail(os.path.join(d, vm['name'] + '.console'))))


def tail(path, n=15):
    try:
        with open(path, errors='replace') as f:
            return '\n' + ''.join(f.readlines()[-n:])
    except OSError:
        return '(none)'


def up(spec, memory, timeout):
    prefix = spec['prefix']
    d = run_dir(prefix)
    if os.path.isdir(d):
        raise SystemExit('vmctl: %s exists: run `vmctl.py down --prefix %s` first' % (d, prefix))
    names = [vm['name'] for vm in spec['vms']]
    if len(set(names)) != len(names) or not names:
        raise SystemExit('vmctl: the spec needs VMs with distinct names (got %s)' % names)
    busy = [vm['ssh_port'] for vm in spec['vms'] if not port_free(vm['ssh_port'])]
    if busy:
        raise SystemExit('vmctl: 127.0.0.1 ports %s are in use (ssh_port of the spec)' % busy)
    t0 = time.time()
    image = subprocess.run([os.path.join(HERE, 'build-image.sh')], stdout=subprocess.PIPE, universal_newlines=True,
                           check=True).stdout.strip().splitlines()[-1]
    t_image = time.time() - t0
    os.makedirs(d, mode=0o700)
    try:
        for key in ('id_ed25519', 'id_ed25519.pub'):
            shutil.copy2(os.path.join(image, key), os.path.join(d, key))
        hub = os.path.join(d, 'hub')
        subprocess.run(['vde_switch', '--hub', '--sock', hub, '--daemon', '--pidfile', os.path.join(d, 'hub.pid'),
                        '--mode', '0600', '--dirmode', '0700'], check=True)
        for vm in spec['vms']:
            name = vm['name']
            overlay = os.path.join(d, name + '.qcow2')
            subprocess.run(['qemu-img', 'create', '-q', '-f', 'qcow2', '-F', 'raw', '-b', os.path.join(image, 'root.img'),
                            overlay], check=True)
            append = ' '.join(['root=/dev/vda', 'rw', 'console=ttyS0', 'net.ifnames=0', 'quiet',
                               # Under TCG every cycle is emulated: no speculation mitigations, audit or watchdog.
                               'mitigations=off', 'audit=0', 'nowatchdog', 'systemd.hostname=' + name,
                               'podnet_vm.underlay=%s/%d' % (vm['ip'], spec.get('underlay_prefixlen', 24))])
            argv = [QEMU, '-name', '%s-%s,process=%s-%s' % (prefix, name, prefix, name),
                    '-accel', 'tcg,tb-size=256', '-cpu', CPU, '-smp', '1', '-m', str(memory),
                    '-kernel', os.path.join(image, 'vmlinuz'), '-initrd', os.path.join(image, 'initrd.img'),
                    '-append', append,
                    '-drive', 'file=%s,if=virtio,format=qcow2,cache=unsafe' % overlay,
                    # The underlay first: the guest names it eth0, as in the namespace lab.
                    '-netdev', 'vde,id=underlay,sock=%s' % hub,
                    '-device', 'virtio-net-pci,netdev=underlay,mac=%s' % mac(prefix, name, 1),
                    '-netdev', 'user,id=mgmt,restrict=on,hostfwd=tcp:127.0.0.1:%d-:22' % vm['ssh_port'],
                    '-device', 'virtio-net-pci,netdev=mgmt,mac=%s' % mac(prefix, name, 2),
                    '-display', 'none', '-monitor', 'none', '-serial', 'file:%s' % os.path.join(d, name + '.console'),
                    '-pidfile', os.path.join(d, name + '.pid'), '-daemonize']
            subprocess.run(argv, check=True)
        t_boot = time.time()
        deadline = t_boot + timeout
        known = []
        for vm in spec['vms']:
            known += wait_ssh(d, vm, deadline)
        with open(os.path.join(d, 'known_hosts'), 'w') as f:
            f.write('\n'.join(known) + '\n')
        for vm in spec['vms']:
            subprocess.run(ssh_argv(d, vm['ssh_port'], 'true'), check=True, timeout=60)
    except BaseException:
        log('start failed: tearing down what started')
        down(prefix)
        raise
    result = {'changed': True, 'run_dir': d, 'image': image, 'image_seconds': round(t_image, 1),
              'boot_seconds': round(time.time() - t_boot, 1), 'vms': names}
    with open(os.path.join(d, 'spec.json'), 'w') as f:
        json.dump(spec, f)
    return result


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split('\n', maxsplit=1)[0])
    sub = ap.add_subparsers(dest='cmd', required=True)
    u = sub.add_parser('up')
    u.add_argument('--spec', help='JSON spec file (default: stdin)')
    u.add_argument('--memory', type=int, default=int(os.environ.get('PODNET_VM_MEMORY', '1024')), help='MiB per VM')
    u.add_argument('--timeout', type=int, default=600, help='seconds for every VM to answer ssh')
    dn = sub.add_parser('down')
    dn.add_argument('--prefix', required=True)
    sub.add_parser('image')
    o = ap.parse_args(argv)
    if o.cmd == 'up':
        if o.spec:
            with open(o.spec) as f:
                spec = json.load(f)
        else:
            spec = json.load(sys.stdin)
        print(json.dumps(up(spec, o.memory, o.timeout)))
    elif o.cmd == 'down':
        print(json.dumps(down(o.prefix)))
    else:
        print(subprocess.run([os.path.join(HERE, 'build-image.sh')], stdout=subprocess.PIPE, universal_newlines=True,
                             check=True).stdout.strip().splitlines()[-1])
    return 0


if __name__ == '__main__':
    sys.exit(main())
