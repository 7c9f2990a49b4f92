"""The drift report's pure part: task results of a check-mode run -> what drifted on a node."""
from ansible_collections.podnet.fabric.plugins.plugin_utils import drift


def test_a_clean_node_says_no_drift():
    lines, text = drift.node_report('node1', {
        'routing': {'changed': False, 'plan': []},
        'sysctls': {'changed': False, 'results': [{'changed': False, 'item': {'key': 'a', 'value': 1}}]},
        'bpffs mount': {'skipped': True, 'changed': False},
        'health endpoint': {},
    })
    assert lines == [] and text == 'node1: no drift'


def test_a_node_modules_plan_becomes_one_line_per_object():
    lines, text = drift.node_report('node3', {
        'host device': {'changed': True, 'plan': [{'action': 'create_veth', 'name': 'podnet_host', 'peer': 'podnet_net'}]},
        'routing': {'changed': True, 'plan': [
            {'action': 'route_del', 'dst': '10.251.0.0/24'},
            {'action': 'set_device', 'name': 'podnet_vxlan', 'mtu': 1450}]},
    })
    assert lines == [
        {'area': 'host device', 'object': 'create_veth name=podnet_host peer=podnet_net', 'expected': 'present', 'found': 'missing'},
        {'area': 'routing', 'object': 'route_del dst=10.251.0.0/24', 'expected': 'absent', 'found': 'present'},
        {'area': 'routing', 'object': 'set_device mtu=1450 name=podnet_vxlan', 'expected': 'as configured', 'found': 'different'},
    ]
    assert text.splitlines()[0] == 'node3: 3 object(s) drifted'
    assert '  routing: route_del dst=10.251.0.0/24 (expected absent, found present)' in text.splitlines()


def test_other_tasks_name_their_file_or_loop_item():
    lines = drift.node_report('node2', {
        'sysctl file': {'changed': True, 'dest': '/etc/sysctl.d/90-podnet.conf'},
        'sysctls': {'changed': True, 'results': [
            {'changed': False, 'item': {'key': 'net.ipv4.ip_forward', 'value': 1}},
            {'changed': True, 'item': {'key': 'net.ipv4.conf.all.rp_filter', 'value': 0}}]},
    })[0]
    assert [(l['area'], l['object']) for l in lines] == [
        ('sysctl file', '/etc/sysctl.d/90-podnet.conf'), ('sysctls', 'net.ipv4.conf.all.rp_filter')]


def test_action_names_read_as_expected_and_found():
    assert drift.expected_found('delete_device') == ('absent', 'present')
    assert drift.expected_found('fdb_add') == ('present', 'missing')
    assert drift.expected_found('start_responder') == ('present', 'missing')
    assert drift.expected_found('set_mtu') == ('as configured', 'different')
