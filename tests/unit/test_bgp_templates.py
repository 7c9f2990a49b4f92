"""The bgp and lab_tor templates, rendered with Jinja2 for several inputs and checked by the real
daemons' parse-only modes (bird -p; vtysh -C and bgpd -C, as the roles' `validate:` runs them),
the systemd units by systemd-analyze verify; and the FRR reload helper's config diff (pure).
"""
import importlib.util
import os
import shlex
import shutil
import subprocess

import jinja2
import pytest
import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BGP = os.path.join(ROOT, 'roles', 'bgp')
TOR = os.path.join(ROOT, 'roles', 'lab_tor')
BIRD = '/usr/sbin/bird'
BGPD = '/usr/lib/frr/bgpd'
VTYSH = '/usr/bin/vtysh'

need_bird = pytest.mark.skipif(not os.path.exists(BIRD), reason='bird is not installed')
# bgpd -C reads the config as root (-S) and creates FRR's state directory.
need_frr = pytest.mark.skipif(not (os.path.exists(BGPD) and os.path.exists(VTYSH)) or os.geteuid() != 0,
                              reason='FRR (bgpd, vtysh) and root are needed')


def role_vars(role, **overrides):
    """The role's defaults and vars/main.yml with overrides, rendered until no template is left."""
    values = {}
    for part in ('defaults', 'vars'):
        path = os.path.join(role, part, 'main.yml')
        if os.path.exists(path):
            with open(path) as f:
                values.update(yaml.safe_load(f) or {})
    values.update(overrides)
    env = jinja2.Environment()
    for _pass in range(6):
        values = _render_all(env, values, values)
    return values


def _render_all(env, obj, ctx):
    if isinstance(obj, str) and '{{' in obj:
        out = env.from_string(obj).render(ctx).strip()
        if out.startswith('['):
            return yaml.safe_load(out)
        return out
    if isinstance(obj, list):
        return [_render_all(env, v, ctx) for v in obj]
    if isinstance(obj, dict):
        return dict((k, _render_all(env, v, ctx)) for k, v in obj.items())
    return obj


def render(role, name, overrides=None):
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(os.path.join(role, 'templates')),
                             trim_blocks=True, undefined=jinja2.StrictUndefined)
    ctx = role_vars(role, **(overrides or {}))
    return env.get_template(name).render(ctx)


def write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def bird_check(path):
    p = subprocess.run([BIRD, '-p', '-c', path], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                       universal_newlines=True, check=False)
    return p.returncode, p.stdout


def _bgpd_conf_validate(tasks_file, names):
    """The `validate:` of the task that writes bgpd.conf in a role's tasks file, its variables
    (`names`: {role variable: value}) filled in."""
    def walk(tasks):
        for t in tasks or []:
            yield t
            for key in ('block', 'rescue', 'always'):
                yield from walk(t.get(key))
    with open(tasks_file) as f:
        found = [t['ansible.builtin.template']['validate'] for t in walk(yaml.safe_load(f))
                 if str((t.get('ansible.builtin.template') or {}).get('dest', '')).endswith('/bgpd.conf')]
    assert len(found) == 1, found
    command = found[0]
    for name, value in names.items():
        command = command.replace('{{ %s }}' % name, value)
    return command


BGP_VALIDATE = _bgpd_conf_validate(os.path.join(BGP, 'tasks', 'frr.yml'),
                                   {'bgp_vtysh_path': VTYSH, 'bgp_frr_dir': os.path.dirname(BGPD)})
TOR_VALIDATE = _bgpd_conf_validate(os.path.join(TOR, 'tasks', 'main.yml'),
                                   {'lab_tor_vtysh_path': VTYSH, 'lab_tor_frr_dir': os.path.dirname(BGPD)})


def frr_check(path):
    """Exactly the roles' validate (read from their tasks), run as Ansible runs it: split like a shell
    would (no shell), %s the file. vtysh -C for syntax, then bgpd -C whose every message is an error."""
    p = subprocess.run(shlex.split(BGP_VALIDATE % path), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                       universal_newlines=True, check=False)
    return p.returncode, p.stdout


def test_both_roles_validate_bgpd_conf_the_same_way():
    assert BGP_VALIDATE == TOR_VALIDATE


@need_frr
def test_the_bgpd_check_leaves_nothing_in_var_tmp(tmp_path):
    # Only what the check adds counts, and the check's processes have ended when it returns: FRR
    # daemons of labs running beside this test (the suite's other lanes) come and go in the same
    # machine-wide directory, named <daemon>.<pid> while they run.
    before = set(os.listdir('/var/tmp/frr')) if os.path.isdir('/var/tmp/frr') else set()
    rc, out = frr_check(write(tmp_path, 'bgpd.conf', render(BGP, 'frr-bgpd.conf.j2', dict(NODE))))
    assert rc == 0, out
    after = set(os.listdir('/var/tmp/frr')) if os.path.isdir('/var/tmp/frr') else set()
    left = [e for e in after - before
            if not (e.rpartition('.')[2].isdigit() and os.path.exists('/proc/%s' % e.rpartition('.')[2]))]
    assert not left


def tor_vars(hold):
    return dict(lab_tor_asn=65000, lab_tor_node_asn=65001, lab_tor_router_id='192.168.50.1',
                lab_tor_listen_range='192.168.50.0/24', lab_tor_hold_time=hold)


NODE = dict(bgp_local_asn=65001, bgp_router_id='192.168.50.11',
            bgp_peers=[{'address': '192.168.50.1', 'asn': 65000}], bgp_pod_cidrs=['10.244.1.0/24'])
CASES = {
    'one_peer_one_prefix': {},
    'default_hold_time': dict(bgp_hold_time=None),
    'hold_time_9': dict(bgp_hold_time=9),
    'hold_time_0_no_keepalives': dict(bgp_hold_time=0),
    'hold_time_3': dict(bgp_hold_time=3),
    'no_prefixes': dict(bgp_pod_cidrs=[]),
    'several_prefixes_two_tors_4byte_asn': dict(
        bgp_pod_cidrs=['10.244.1.0/24', '10.245.0.0/16', '10.0.0.128/25'], bgp_local_asn=4200000001,
        bgp_peers=[{'address': '192.168.50.1', 'asn': 65000}, {'address': '192.168.50.2', 'asn': 4200000000}]),
}


@need_bird
@pytest.mark.parametrize('case', sorted(CASES))
def test_bird_config_parses(tmp_path, case):
    overrides = dict(NODE, **CASES[case])
    text = render(BGP, 'bird.conf.j2', overrides)
    rc, out = bird_check(write(tmp_path, 'bird.conf', text))
    assert rc == 0, out + text
    for prefix in overrides['bgp_pod_cidrs']:
        assert 'route %s blackhole;' % prefix in text
    for n, peer in enumerate(overrides['bgp_peers'], 1):
        assert 'protocol bgp podnet_peer%d from podnet_peer {\n  neighbor %s as %d;' % (n, peer['address'], peer['asn']) in text
    assert 'allow local as;' in text and 'export where source = RTS_BGP;' in text
    assert 'export where proto = "podnet_prefixes";' in text
    hold = overrides.get('bgp_hold_time')
    assert ('hold time %s;' % hold in text) == (hold is not None)
    if hold:
        assert 'keepalive time %d;' % max(hold // 3, 1) in text


@need_bird
def test_bird_rejects_a_bad_prefix(tmp_path):
    # bird -p is what stands between a bad input and the installed config (template validate:).
    rc, out = bird_check(write(tmp_path, 'bird.conf', render(BGP, 'bird.conf.j2', dict(NODE, bgp_pod_cidrs=['10.244.1.1/24']))))
    assert rc != 0 and 'Invalid IPv4 prefix 10.244.1.1/24' in out
    rc, out = bird_check(write(tmp_path, 'bird2.conf', render(BGP, 'bird.conf.j2', dict(NODE, bgp_router_id='300.1.1.1'))))
    assert rc != 0


@need_frr
@pytest.mark.parametrize('case', sorted(CASES))
def test_frr_node_config_parses(tmp_path, case):
    overrides = dict(NODE, **CASES[case])
    text = render(BGP, 'frr-bgpd.conf.j2', overrides)
    rc, out = frr_check(write(tmp_path, 'bgpd.conf', text))
    assert rc == 0, out + text
    rc, out = frr_check(write(tmp_path, 'zebra.conf', render(BGP, 'frr-zebra.conf.j2', overrides)))
    assert rc == 0, out
    for prefix in overrides['bgp_pod_cidrs']:
        assert '  network %s\n' % prefix in text
    for peer in overrides['bgp_peers']:
        assert ' neighbor %s remote-as %d\n' % (peer['address'], peer['asn']) in text
        assert '  neighbor %s allowas-in\n' % peer['address'] in text
    hold = overrides.get('bgp_hold_time')
    if hold is None:
        assert 'timers bgp' not in text
    else:
        assert ' timers bgp %d %d\n' % (max(hold // 3, 1) if hold else 0, hold) in text


@need_frr
def test_frr_check_catches_what_vtysh_alone_misses(tmp_path):
    good = render(TOR, 'bgpd.conf.j2', tor_vars(None))
    # The listen range before its peer-group exists: vtysh -C passes it, bgpd -C does not.
    lines = good.splitlines()
    i = lines.index(' neighbor podnet_nodes peer-group')
    j = [n for n, line in enumerate(lines) if line.startswith(' bgp listen range')][0]
    lines.insert(i, lines.pop(j))
    bad = write(tmp_path, 'bad.conf', '\n'.join(lines) + '\n')
    assert subprocess.run([VTYSH, '-C', '-f', bad], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          check=False).returncode == 0
    rc, out = frr_check(bad)
    assert rc != 0 and 'listen range' in out
    rc, out = frr_check(write(tmp_path, 'typo.conf', good.replace('next-hop-self', 'next-hop-selfie')))
    assert rc != 0


@need_frr
@pytest.mark.parametrize('hold', [None, 0, 9])
def test_tor_config_parses(tmp_path, hold):
    text = render(TOR, 'bgpd.conf.j2', tor_vars(hold))
    rc, out = frr_check(write(tmp_path, 'bgpd.conf', text))
    assert rc == 0, out + text
    assert ' bgp listen range 192.168.50.0/24 peer-group podnet_nodes\n' in text
    assert ' neighbor podnet_nodes remote-as 65001\n' in text and '  neighbor podnet_nodes next-hop-self\n' in text
    rc, out = frr_check(write(tmp_path, 'zebra.conf', render(TOR, 'zebra.conf.j2')))
    assert rc == 0, out


@pytest.mark.skipif(not shutil.which('systemd-analyze'), reason='systemd-analyze is not installed')
@pytest.mark.parametrize('unit', ['podnet-bird.service', 'podnet-frr.service'])
def test_systemd_units_verify(tmp_path, unit):
    text = render(BGP, unit + '.j2', NODE)
    path = write(tmp_path, unit, text)
    p = subprocess.run(['systemd-analyze', 'verify', path], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                       universal_newlines=True, check=False, timeout=60)
    assert p.returncode == 0 and not p.stdout.strip(), p.stdout + text
    assert '{{' not in text and '[' not in text.split('[Service]')[1].split('[Install]')[0]
    if unit == 'podnet-bird.service':
        assert 'ExecStart=/usr/sbin/bird -f -c /etc/podnet/bgp/bird.conf -s /run/podnet/bgp/bird/bird.ctl\n' in text
        assert 'ExecReload=/usr/sbin/birdc -s /run/podnet/bgp/bird/bird.ctl configure\n' in text
    else:
        assert 'ExecStart=/usr/lib/frr/bgpd -d -u frr -g frr -P 0 --vty_socket /run/podnet/bgp/frr' in text
        assert 'ExecReload=/usr/bin/python3 /etc/podnet/bgp/frr/podnet_frr_reload.py' in text


# ----------------------------------------------------------------------------------------------
# the FRR reload helper (pure part)

def reload_helper():
    spec = importlib.util.spec_from_file_location('podnet_frr_reload', os.path.join(BGP, 'files', 'podnet_frr_reload.py'))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


RUNNING = '''Building configuration...

Current configuration:
!
frr version 8.4.4
frr defaults traditional
hostname node3
log stdout informational
service integrated-vtysh-config
!
router bgp 65001
 bgp router-id 192.168.50.13
 no bgp ebgp-requires-policy
 no bgp network import-check
 coalesce-time 100
 timers bgp 1 3
 neighbor 192.168.50.1 remote-as 65000
 neighbor 192.168.50.1 timers connect 5
 !
 address-family ipv4 unicast
  network 10.244.3.0/24
  neighbor 192.168.50.1 allowas-in
 exit-address-family
exit
!
end
'''


def test_reload_diff_nothing_when_equal():
    m = reload_helper()
    desired = render(BGP, 'frr-bgpd.conf.j2', dict(NODE, bgp_router_id='192.168.50.13', bgp_hold_time=3,
                                                   bgp_pod_cidrs=['10.244.3.0/24']))
    running = RUNNING.replace(' neighbor 192.168.50.1 timers connect 5\n',
                              ' neighbor 192.168.50.1 update-source 192.168.50.13\n neighbor 192.168.50.1 timers connect 5\n')
    assert m.diff(m.parse(running), m.parse(desired)) == []


def test_reload_diff_adds_removes_and_redefines():
    m = reload_helper()
    router = ('router bgp 65001',)
    af = router + ('address-family ipv4 unicast',)
    desired = RUNNING.replace(' timers bgp 1 3\n', '').replace('  network 10.244.3.0/24\n', '  network 10.244.3.0/24\n  network 10.99.0.0/24\n')
    assert m.diff(m.parse(RUNNING), m.parse(desired)) == [
        (router, 'no timers bgp 1 3'), (af, 'network 10.99.0.0/24')]
    # A peer that changes ASN is removed and added again with all its settings.
    desired = RUNNING.replace('remote-as 65000', 'remote-as 65002')
    assert m.diff(m.parse(RUNNING), m.parse(desired)) == [
        (router, 'no neighbor 192.168.50.1'),
        (router, 'neighbor 192.168.50.1 remote-as 65002'), (router, 'neighbor 192.168.50.1 timers connect 5'),
        (af, 'neighbor 192.168.50.1 allowas-in')]
    # A peer that goes: one `no neighbor`, none of its other lines.
    desired = '\n'.join(line for line in RUNNING.splitlines() if '192.168.50.1 ' not in line)
    assert m.diff(m.parse(RUNNING), m.parse(desired)) == [(router, 'no neighbor 192.168.50.1')]
    # A new ASN: the old instance goes whole.
    desired = RUNNING.replace('router bgp 65001', 'router bgp 65009')
    cmds = m.diff(m.parse(RUNNING), m.parse(desired))
    assert cmds[0] == ((), 'no router bgp 65001') and cmds[1] == (('router bgp 65009',), 'bgp router-id 192.168.50.13')
    assert (('router bgp 65009', 'address-family ipv4 unicast'), 'network 10.244.3.0/24') in cmds
    # `no` lines are undone by their positive form.
    desired = RUNNING.replace(' no bgp network import-check\n', '')
    assert m.diff(m.parse(RUNNING), m.parse(desired)) == [(router, 'bgp network import-check')]


def test_reload_vtysh_argv_enters_each_context():
    m = reload_helper()
    argv = m.vtysh_argv([(('router bgp 65001', 'address-family ipv4 unicast'), 'network 10.99.0.0/24')],
                        '/run/podnet/bgp/frr', '/usr/bin/vtysh')
    assert argv == ['/usr/bin/vtysh', '--vty_socket', '/run/podnet/bgp/frr', '-c', 'configure terminal',
                    '-c', 'router bgp 65001', '-c', 'address-family ipv4 unicast', '-c', 'network 10.99.0.0/24',
                    '-c', 'end', '-c', 'configure terminal', '-c', 'end']
