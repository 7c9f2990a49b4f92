"""roles/datapath: what its templates make of the endpoint store, the endpoint results and the
controller's plan for a node - stale endpoints, devices, endpoint map entries, programs, the
detach list - as ansible-core's own Templar renders them (as its TaskExecutor does)."""

import os

from ansible.parsing.dataloader import DataLoader
from ansible.template import Templar

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
LOADER = DataLoader()


def _load(rel):
    # trusted as templates, as Ansible trusts a playbook's own files
    return LOADER.load_from_file(os.path.join(ROOT, rel), trusted_as_template=True)


def _tasks(tasks=None):
    for t in tasks if tasks is not None else _load('roles/datapath/tasks/main.yml'):
        yield t
        yield from _tasks(t.get('block') or [])
        if t.get('ansible.builtin.import_tasks'):
            yield from _tasks(_load('roles/datapath/tasks/' + t['ansible.builtin.import_tasks']))


def task(name):
    return [t for t in _tasks() if t.get('name') == name][0]


def model(mode='tunnel', protocol='vxlan', enabled=True, endpoints=()):
    return {'routing': {'mode': mode, 'tunnel': {'protocol': protocol}}, 'datapath': {'enabled': enabled},
            'nodes': {'node1': {'endpoints': list(endpoints)}}}


WEB = {'name': 'web-1', 'namespace': 'default', 'labels': {'app': 'web'}}
DB = {'name': 'db.0', 'namespace': 'prod', 'labels': {'app': 'db'}}


def render(expr_task, key, check=False, **extra):
    t = task(expr_task)
    variables = dict(_load('roles/datapath/defaults/main.yml'))
    variables.update(inventory_hostname='node1', ansible_check_mode=check,
                     hostvars={'localhost': {'podnet_model': extra.pop('model', model())}},
                     node_prereqs_node={'underlay': {'name': 'eth0', 'mtu': 1500}})
    variables.update(extra)
    variables.update(t.get('vars') or {})
    args = t.get('ansible.builtin.set_fact') or t
    return Templar(loader=LOADER, variables=variables).template(args[key])


def endpoint_result(ep, device, plan=()):
    return {'item': {'item': ep}, 'device': device, 'plan': [{'action': a} for a in plan], 'changed': bool(plan)}


def test_stale_endpoints_are_ours_the_inventory_no_longer_lists():
    store = {'node_used': {'10.244.1.2': {'owner': 'podnet-health'}, '10.244.1.3': {'owner': 'default/web-1'},
                           '10.244.1.4': {'owner': 'default/old'}, 'fd00::4': {'owner': 'default/old'},
                           '10.244.1.5': {'owner': 'someone-else'}}}
    m = model(endpoints=[WEB, DB])
    assert render('Work out which endpoints the node keeps and which it loses', 'datapath_stale_ids',
                  model=m, datapath_store=store) == ['default/old']
    assert render('Work out which endpoints the node keeps and which it loses', 'datapath_wanted_ids',
                  model=m, datapath_store=store) == ['default/web-1', 'prod/db.0']
    # The netns of a removed endpoint: the first slash only (a namespace has no dot, a name may).
    t = task('Remove the endpoints the inventory no longer lists')
    assert Templar(loader=LOADER, variables={'item': 'prod/db.0'}).template(t['podnet.fabric.endpoint']['name']) == 'prod.db.0'


def test_devices_of_the_endpoints_and_the_health_endpoint():
    results = {'results': [endpoint_result(WEB, 'lxcaaaaaaaaaaaa'), endpoint_result(DB, 'lxcbbbbbbbbbbbb')]}
    health = {'state': {'device': {'name': 'lxc_health'}}, 'plan': []}
    assert render('Collect the endpoints\' devices', 'datapath_devices', datapath_endpoint_results=results,
                  health_endpoint_result=health) == {
        'default/web-1': 'lxcaaaaaaaaaaaa', 'prod/db.0': 'lxcbbbbbbbbbbbb', 'podnet-health': 'lxc_health'}
    # No health endpoint (eni mode, health_state absent): none of it.
    assert render('Collect the endpoints\' devices', 'datapath_devices', datapath_endpoint_results=results,
                  health_endpoint_result={'state': {'device': None}, 'plan': []}) == {
        'default/web-1': 'lxcaaaaaaaaaaaa', 'prod/db.0': 'lxcbbbbbbbbbbbb'}


def test_check_mode_leaves_out_the_devices_the_run_would_create():
    results = {'results': [endpoint_result(WEB, 'lxcaaaaaaaaaaaa', plan=['create_netns', 'create_veth']),
                           endpoint_result(DB, 'lxcbbbbbbbbbbbb', plan=['add_route'])]}
    health = {'state': {'device': {'name': 'lxc_health'}}, 'plan': [{'action': 'create_veth'}]}
    assert render('Collect the endpoints\' devices', 'datapath_devices', check=True, datapath_endpoint_results=results,
                  health_endpoint_result=health) == {'prod/db.0': 'lxcbbbbbbbbbbbb'}
    # A real run has made them.
    assert len(render('Collect the endpoints\' devices', 'datapath_devices', datapath_endpoint_results=results,
                      health_endpoint_result=health)) == 3


PLAN = {'datapath': {'node1': {
    'endpoints': [{'name': 'default/web-1', 'address': '10.244.1.3', 'ep_id': 2, 'identity': 256,
                   'enforce_ingress': True, 'enforce_egress': False},
                  {'name': 'podnet-health', 'address': '10.244.1.2', 'ep_id': 1, 'identity': 4,
                   'enforce_ingress': False, 'enforce_egress': False},
                  {'name': 'default/gone', 'address': '10.244.1.9', 'ep_id': 3, 'identity': 257,
                   'enforce_ingress': False, 'enforce_egress': False}],
    'ipcache': [{'prefix': '0.0.0.0/0', 'identity': 2}], 'policy': []}}}
DEVICES = {'default/web-1': 'lxcaaaaaaaaaaaa', 'podnet-health': 'lxc_health'}


def test_endpoint_entries_get_their_device():
    entries = render('This node\'s entries and programs', 'datapath_endpoint_entries', datapath_plan=PLAN,
                     datapath_devices=DEVICES)
    # An entry whose endpoint the node does not have (yet) is left out: it has no device to point at.
    assert entries == [dict(PLAN['datapath']['node1']['endpoints'][0], device='lxcaaaaaaaaaaaa'),
                       dict(PLAN['datapath']['node1']['endpoints'][1], device='lxc_health')]
    # A node the controller planned nothing for (not in the run) gets empty maps, not an error.
    assert render('This node\'s entries and programs', 'datapath_node', datapath_plan={'datapath': {}},
                  datapath_devices=DEVICES) == {'endpoints': [], 'ipcache': [], 'policy': []}


def test_programs_per_hook():
    progs = render('This node\'s entries and programs', 'datapath_programs', datapath_plan=PLAN, datapath_devices=DEVICES)
    assert progs == [
        {'device': 'lxc_health', 'hook': 'ingress', 'program': 'from_container'},
        {'device': 'lxc_health', 'hook': 'egress', 'program': 'to_container'},
        {'device': 'lxcaaaaaaaaaaaa', 'hook': 'ingress', 'program': 'from_container'},
        {'device': 'lxcaaaaaaaaaaaa', 'hook': 'egress', 'program': 'to_container'},
        {'device': 'eth0', 'hook': 'ingress', 'program': 'from_netdev'},
        {'device': 'eth0', 'hook': 'egress', 'program': 'to_netdev'},
        {'device': 'podnet_vxlan', 'hook': 'ingress', 'program': 'from_overlay'}]
    # Native routing and geneve: no podnet_vxlan.
    for m in (model(mode='native'), model(protocol='geneve')):
        progs = render('This node\'s entries and programs', 'datapath_programs', model=m, datapath_plan=PLAN,
                       datapath_devices=DEVICES)
        assert [p['program'] for p in progs] == ['from_container', 'to_container'] * 2 + ['from_netdev', 'to_netdev']


def test_disabled_detaches_every_attachment_then_unpins_the_rest():
    info = {'programs': [
        {'name': 'from_container', 'attached': [{'device': 'lxc_health', 'hook': 'ingress'},
                                                {'device': 'lxcaaaaaaaaaaaa', 'hook': 'ingress'}]},
        {'name': 'to_container', 'attached': []},
        {'name': 'from_netdev', 'attached': [{'device': 'eth0', 'hook': 'ingress'}]}]}
    t = task('Detach the programs')
    variables = dict(_load('roles/datapath/defaults/main.yml'))
    variables.update(inventory_hostname='node1', datapath_info=info, hostvars={'localhost': {'podnet_model': model()}},
                     node_prereqs_node={'underlay': {'name': 'eth0'}})
    assert Templar(loader=LOADER, variables=variables).template(t['podnet.fabric.bpf_program']['attachments']) == [
        {'device': 'lxc_health', 'hook': 'ingress', 'program': 'from_container'},
        {'device': 'lxcaaaaaaaaaaaa', 'hook': 'ingress', 'program': 'from_container'},
        {'device': 'eth0', 'hook': 'ingress', 'program': 'to_container'},
        {'device': 'eth0', 'hook': 'ingress', 'program': 'from_netdev'}]


def test_maps_go_in_an_order_that_drops_no_allowed_packet():
    t = task('Sync the datapath maps')
    assert [(m['name'], m['prune']) for m in t['podnet.fabric.bpf_map']['maps']] == [
        ('ipcache', True), ('policy', False), ('endpoints', True), ('policy', True)]


def _verify_task(name):
    play = _load('playbooks/verify.yml')[0]
    return [t for t in _tasks(play['tasks']) if t.get('name') == name][0]


def test_verify_walk_targets_and_mismatches():
    rows = [
        {'src': 'default/client-1', 'src_node': 'node1', 'netns': 'default.client-1', 'dst': 'default/web-1',
         'dst_node': 'node2', 'address': '10.244.2.3', 'port': 8080, 'verdict': 'allow', 'rule': 1},
        {'src': 'default/client-1', 'src_node': 'node1', 'netns': 'default.client-1', 'dst': 'podnet-health',
         'dst_node': 'node2', 'address': '10.244.2.2', 'port': 4240, 'verdict': 'allow', 'rule': None},
        {'src': 'default/client-1', 'src_node': 'node1', 'netns': 'default.client-1', 'dst': 'default/db-0',
         'dst_node': 'node2', 'address': '10.244.2.4', 'port': 8080, 'verdict': 'deny', 'rule': 2},
        {'src': 'default/client-1', 'src_node': 'node1', 'netns': 'default.client-1', 'dst': 'default/x',
         'dst_node': 'node2', 'address': '10.244.2.5', 'port': 8080, 'verdict': 'deny', 'rule': 'default deny'},
    ]
    item = ['default.client-1', rows]
    targets = Templar(loader=LOADER, variables={'item': item}).template(
        _verify_task('Connect from each endpoint of this node')['podnet.fabric.connectivity']['targets'])
    # A health endpoint's responder is checked for its node's name.
    assert [t['name'] for t in targets] == ['default/web-1', 'node2', 'default/db-0', 'default/x']

    def tcp(connected, error):
        return {'ok': error is None, 'connected': connected, 'error': error}
    observed = [tcp(False, 'connection refused'),        # delivered: the RST came back
                tcp(True, None),                         # the responder answered
                tcp(True, 'timed out'),                  # taken, no answer: delivered, but policy says deny
                tcp(False, 'timed out')]                 # dropped, as the policy says
    results = [dict(t, tcp=o) for t, o in zip(targets, observed)]
    t = _verify_task('Check each connection\'s verdict against the policy\'s')
    drops = {'drops': [{'reason_name': 'policy denied', 'direction': 'ingress', 'rule': 2, 'packets': 3}]}
    variables = {'podnet_verify_walk': {'results': [{'item': item, 'results': results}]},
                 'hostvars': {'node1': {}, 'node2': {'podnet_verify_bpf': drops}}}
    got = Templar(loader=LOADER, variables=variables).template(t['vars']['_mismatches'])
    assert got == ['node1 default/client-1 -> node2 default/db-0 (10.244.2.4) tcp 8080: policy deny (rule 2), '
                   'observed delivered; drops: node2 policy denied (ingress, rule 2): 3']
    results[3]['tcp'] = tcp(False, 'connection refused')
    got = Templar(loader=LOADER, variables=variables).template(t['vars']['_mismatches'])
    assert len(got) == 2 and got[1].endswith('policy deny (default deny), observed delivered; '
                                             'drops: node2 policy denied (ingress, rule 2): 3')


def test_check_mode_attaches_nothing_to_a_tunnel_device_the_run_would_create():
    progs = render('This node\'s entries and programs', 'datapath_programs', check=True, datapath_plan=PLAN,
                   datapath_devices={})
    assert [p['device'] for p in progs] == ['eth0', 'eth0']
    progs = render('This node\'s entries and programs', 'datapath_programs', check=True, datapath_plan=PLAN,
                   datapath_devices={}, node_prereqs_node={'underlay': {'name': 'eth0'}, 'links': {'podnet_vxlan': {}}})
    assert [p['device'] for p in progs] == ['eth0', 'eth0', 'podnet_vxlan']


def test_the_policy_pass_names_the_devices_as_the_endpoint_module_does():
    from ansible_collections.podnet.fabric.plugins.module_utils.endpoint import device_name

    t = [t for t in _tasks(_load('roles/datapath/tasks/policy.yml')) if t.get('name') == 'The endpoints\' devices, from the store'][0]
    variables = dict(_load('roles/datapath/defaults/main.yml'))
    store = {'node_used': {'10.244.1.2': {'owner': 'podnet-health'}, '10.244.1.3': {'owner': 'default/web-1'},
                           'fd00::3': {'owner': 'default/web-1'}, '10.244.1.4': {'owner': 'prod/db.0'},
                           '10.244.1.5': {'owner': 'someone-else'}}}
    variables.update(datapath_store=store)
    devices = Templar(loader=LOADER, variables=variables).template(t['ansible.builtin.set_fact']['datapath_devices'])
    assert devices == {'podnet-health': 'lxc_health', 'default/web-1': device_name('default.web-1'),
                       'prod/db.0': device_name('prod.db.0')}
    # The pass attaches nothing: the programs task is skipped there, not in site.yml's run.
    assert task('Attach the programs')['when'] == 'not datapath_maps_only | bool'
    assert _load('roles/datapath/defaults/main.yml')['datapath_maps_only'] is False


def test_only_stale_endpoints_with_a_namespace_are_removed():
    # default/old was made by the role (its namespace exists); default/adhoc was allocated with
    # ipam_endpoint alone (molecule ipam does so): no namespace, left alone.
    results = {'results': [{'item': 'default/old', 'stat': {'exists': True}},
                           {'item': 'default/adhoc', 'stat': {'exists': False}}]}
    assert render('Keep the ones with a namespace', 'datapath_stale_ids', datapath_stale_netns=results) == ['default/old']
    t = task('Look for the namespaces of the endpoints the inventory no longer lists')
    assert Templar(loader=LOADER, variables={'item': 'prod/db.0'}).template(t['ansible.builtin.stat']['path']) == '/run/netns/prod.db.0'
    # No candidate: no stat run, nothing removed.
    assert render('Keep the ones with a namespace', 'datapath_stale_ids', datapath_stale_netns={'results': []}) == []
