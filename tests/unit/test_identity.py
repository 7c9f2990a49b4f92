"""plugins/plugin_utils/identity.py: Cilium's label filter, identities allocated in the ledger (file
and s3 backends, concurrent writers), and the nodes' endpoint records."""
import copy
import json
import multiprocessing
import os

import pytest

from ansible_collections.podnet.fabric.plugins.plugin_utils import identity as ident
from ansible_collections.podnet.fabric.plugins.plugin_utils import inventory
from ansible_collections.podnet.fabric.plugins.plugin_utils import ledger


def doc(nodes=None, identities=None):
    return {'version': 1, 'cluster': 'lab', 'serial': 0, 'nodes': nodes or {}, 'identities': identities or {}}


def labels(**kw):
    return ident.identity_labels(kw, 'default', 'lab', ident.LabelFilter())


# ---------------------------------------------------------------------------------------------
# the label filter


@pytest.mark.parametrize('key,kept', [
    ('app', True),
    ('io.kubernetes.pod.namespace', True),          # an inclusion longer than '!io\.kubernetes'
    ('io.kubernetes.pod.name', False),
    ('io.cilium.k8s.namespace.labels.team', True),
    ('io.cilium.k8s.policy.cluster', True),
    ('app.kubernetes.io/name', True),
    ('kubernetes.io/hostname', False),
    ('statefulset.kubernetes.io/pod-name', False),
    ('apps.kubernetes.io/pod-index', False),
    ('batch.kubernetes.io/job-completion-index', False),
    ('beta.kubernetes.io/arch', False),
    ('failure-domain.beta.kubernetes.io/zone', False),   # '.*beta\.kubernetes\.io' matches from the start
    ('k8s.io/x', False),
    ('pod-template-hash', False),
    ('pod-template-generation', False),
    ('controller-revision-hash', False),
    ('annotation.example.com/x', False),
    ('etcd_node', False),
    # Cilium's patterns match at the start of the key only: this one stays, as it does in Cilium.
    ('topology.kubernetes.io/zone', True),
])
def test_default_filter_is_ciliums(key, kept):
    assert ident.LabelFilter().relevant(key) is kept


def test_the_default_filter_is_the_inventory_default():
    model = inventory.validate({}, {'n1': {'podnet_node_ip': '192.168.50.11'}})
    assert ident.label_filter(model).patterns == list(inventory.DEFAULT_LABEL_FILTER)
    assert not ident.label_filter(model).allow_list


def test_an_extra_exclusion_and_an_allow_list():
    flt = ident.LabelFilter(list(inventory.DEFAULT_LABEL_FILTER) + ['!build-id'])
    assert not flt.relevant('build-id') and flt.relevant('app') and not flt.allow_list
    # An inclusion of one's own makes the list an allow-list; Cilium's own inclusions stay.
    flt = ident.LabelFilter(list(inventory.DEFAULT_LABEL_FILTER) + ['app'])
    assert flt.allow_list
    assert flt.relevant('app') and flt.relevant('application')     # a prefix: the start of the key
    assert not flt.relevant('tier')
    assert flt.relevant('io.kubernetes.pod.namespace')
    # The longest inclusion beats a shorter exclusion of the same key.
    flt = ident.LabelFilter(['!team', 'team\\.owner'])
    assert flt.relevant('team.owner') and not flt.relevant('team.cost')


def test_identity_labels_add_namespace_and_cluster_and_filter():
    flt = ident.LabelFilter()
    got = ident.identity_labels({'app': 'web', 'pod-template-hash': 'abc'}, 'shop', 'lab', flt)
    assert got == ('app=web', 'io.cilium.k8s.policy.cluster=lab', 'io.kubernetes.pod.namespace=shop')
    # the same labels in another namespace are another identity, as in Cilium
    assert got != ident.identity_labels({'app': 'web'}, 'default', 'lab', flt)
    assert ident.labels_dict(got)['app'] == 'web'
    assert ident.endpoint_key('shop', 'web-1') == 'shop/web-1' and ident.namespace_of('shop/web-1') == 'shop'
    assert ident.namespace_of('podnet-health') == 'default'


def test_model_endpoint_labels():
    model = inventory.validate({'podnet_cluster': {'name': 'lab'}}, {
        'n1': {'podnet_node_ip': '192.168.50.11', 'podnet_endpoints': [{'name': 'web-1', 'labels': {'app': 'web'}}]},
        'n2': {'podnet_node_ip': '192.168.50.12'}})
    assert ident.model_endpoint_labels(model) == {
        'n1': {'default/web-1': ('app=web', 'io.cilium.k8s.policy.cluster=lab', 'io.kubernetes.pod.namespace=default')},
        'n2': {}}


# ---------------------------------------------------------------------------------------------
# allocation


def test_allocation_is_stable_and_deterministic():
    d = doc()
    web, db = labels(app='web'), labels(app='db')
    by_labels, _c, changes = ident.allocate(d, 0, [web, db])
    # sorted label sets take the lowest numbers in order, whatever order they were asked in
    assert by_labels == {db: 256, web: 257}
    assert [c['action'] for c in changes] == ['allocated', 'allocated']
    again = doc()
    assert ident.allocate(again, 0, [db, web])[0] == by_labels
    before = copy.deepcopy(d)
    assert ident.allocate(d, 0, [web])[0] == {web: 257}
    assert d == before                                  # nothing new: the document is unchanged
    assert d['identities']['257'] == {'labels': list(web)}
    # a new set takes the lowest free number, also one a release left behind
    del d['identities']['256']
    assert ident.allocate(d, 0, [labels(app='cache')])[0] == {labels(app='cache'): 256}


def test_cluster_id_range_and_a_changed_cluster_id():
    d = doc()
    web = labels(app='web')
    assert ident.local_range(3) == ((3 << 16) + 256, (4 << 16) - 1)
    assert ident.allocate(d, 3, [web])[0] == {web: (3 << 16) + 256}
    # the cluster id changed: the old range's identities are not this cluster's any more
    by_labels, _c, changes = ident.allocate(d, 0, [web])
    assert by_labels == {web: 256}
    assert changes[0]['action'] == 'released' and changes[0]['identity'] == (3 << 16) + 256
    assert sorted(d['identities']) == ['256']


def test_exhaustion_is_a_clear_error():
    lo, hi = ident.local_range(0)
    d = doc(identities=dict((str(i), {'labels': ['n=%d' % i]}) for i in range(lo, hi + 1)))
    with pytest.raises(ident.IdentityError) as info:
        ident.allocate(d, 0, [labels(app='web'), labels(app='db')], cluster_name='lab')
    assert str(info.value) == (
        'cluster lab (id 0): the identity range 256..65535 is exhausted: 65280 of 65280 in use; cannot allocate '
        'an identity for {app=db, io.cilium.k8s.policy.cluster=lab, io.kubernetes.pod.namespace=default} '
        'and 1 more label sets')


def test_cidr_identities():
    d = doc()
    _l, by_cidr, _ch = ident.allocate(d, 0, cidrs=['192.0.2.0/24', '10.0.0.0/8', '2001:db8::/32'])
    assert by_cidr == {'10.0.0.0/8': (1 << 24) | 1, '192.0.2.0/24': (1 << 24) | 2, '2001:db8::/32': (1 << 24) | 3}
    assert d['identities'][str((1 << 24) | 1)] == {'cidr': '10.0.0.0/8'}
    assert ident.allocate(d, 0, cidrs=['192.0.2.0/24'])[1] == {'192.0.2.0/24': (1 << 24) | 2}
    table = ident.Table(d, 0)
    assert table.by_cidr['2001:db8::/32'] == (1 << 24) | 3 and not table.labels_of


def test_prune_releases_what_nothing_uses():
    d = doc()
    by_labels, by_cidr, _ch = ident.allocate(d, 0, [labels(app='web'), labels(app='db')], ['10.0.0.0/8', '192.0.2.0/24'])
    changes = ident.prune(d, 0, keep_ids=[by_labels[labels(app='web')]], keep_cidrs=['192.0.2.0/24'])
    assert [c['identity'] for c in changes] == [256, (1 << 24) | 1]
    assert all(c['action'] == 'released' for c in changes)
    assert sorted(d['identities']) == ['16777218', '257']


@pytest.mark.parametrize('section,message', [
    ({'x': {'labels': []}}, 'identities.x: the key is not an identity number'),
    ({'300': []}, 'identities.300: expected an object'),
    ({'300': {'cidr': '10.0.0.0/8'}}, 'identities.300: 300 is not a CIDR identity ((1 << 24) | n)'),
    ({'300': {}}, 'identities.300: expected {"labels": [...]} or {"cidr": "..."}'),
])
def test_a_malformed_section_is_named(section, message):
    with pytest.raises(ident.IdentityError, match=r'^%s$' % message.replace('(', r'\(').replace(')', r'\)')
                       .replace('[', r'\[').replace(']', r'\]').replace('.', r'\.').replace('|', r'\|')):
        ident.Table(doc(identities=section), 0)


# ---------------------------------------------------------------------------------------------
# endpoint records


def _node(**extra):
    return dict({'ip': '192.168.50.11', 'cidrs': {'ipv4': ['10.244.1.0/24'], 'ipv6': []}}, **extra)


def _record(d, node, used, desired=None):
    return ident.record_endpoints(d, node, used, 0, 'lab', ident.LabelFilter(), desired)


def test_records_carry_name_addresses_identity_and_a_stable_endpoint_id():
    d = doc({'node1': _node()})
    used = {'10.244.1.2': {'owner': 'default/web-1'}, 'fd00::2': {'owner': 'default/web-1'},
            '10.244.1.3': {'owner': 'podnet-health'}, '10.244.1.4': {'owner': 'shop/client-1'}}
    desired = {'default/web-1': labels(app='web')}
    _record(d, 'node1', used, desired)
    recs = d['nodes']['node1']['endpoints']
    assert recs == {      # new endpoints take ids the health endpoint first, then in name order
        'default/web-1': {'ep_id': 2, 'identity': 256, 'ips': ['10.244.1.2', 'fd00::2']},
        'podnet-health': {'ep_id': 1, 'identity': ident.HEALTH, 'ips': ['10.244.1.3']},
        # an endpoint whose labels nobody gave: an unlabeled endpoint of its namespace
        'shop/client-1': {'ep_id': 3, 'identity': 257, 'ips': ['10.244.1.4']},
    }
    assert ident.Table(d, 0).labels_of[257] == ('io.cilium.k8s.policy.cluster=lab', 'io.kubernetes.pod.namespace=shop')
    # web-1 goes, db-0 comes: the others keep their endpoint ids, db-0 takes the free one
    del used['10.244.1.2'], used['fd00::2']
    used['10.244.1.5'] = {'owner': 'default/db-0'}
    _record(d, 'node1', used, desired)
    recs = d['nodes']['node1']['endpoints']
    assert {k: r['ep_id'] for k, r in recs.items()} == {'default/db-0': 2, 'podnet-health': 1, 'shop/client-1': 3}
    # no endpoints: no record at all (an idle node's entry is as it was before records existed)
    _record(d, 'node1', {})
    assert 'endpoints' not in d['nodes']['node1']
    assert _record(d, 'node9', used) is None and 'node9' not in d['nodes']


def test_a_label_change_moves_the_endpoint_to_another_identity():
    d = doc({'node1': _node()})
    used = {'10.244.1.2': {'owner': 'default/web-1'}}
    _record(d, 'node1', used, {'default/web-1': labels(app='web')})
    first = d['nodes']['node1']['endpoints']['default/web-1']['identity']
    _record(d, 'node1', used, {'default/web-1': labels(app='web', tier='front')})
    second = d['nodes']['node1']['endpoints']['default/web-1']
    assert second['identity'] != first and second['ep_id'] == 1 and second['ips'] == ['10.244.1.2']
    # without labels from anyone, the recorded identity is kept while the ledger holds it
    _record(d, 'node1', used)
    assert d['nodes']['node1']['endpoints']['default/web-1']['identity'] == second['identity']


def test_old_ledgers_and_missing_fields_read_as_empty():
    assert ident.endpoint_records(_node()) == {}
    assert ident.endpoint_records({'endpoints': {'default/a': {}, 'default/b': {'ips': 'x', 'identity': True}}}) == {
        'default/a': {'ep_id': 0, 'identity': 0, 'ips': []}, 'default/b': {'ep_id': 0, 'identity': 0, 'ips': []}}
    d = doc({'node1': _node(endpoints={'default/a': {'ips': ['10.244.1.2']}}),
             'node2': dict(_node(), endpoints={'default/b': {'identity': 300}})})
    assert ident.used_identities(d) == {0, 300}


def test_duplicate_endpoint_ids_are_repaired():
    d = doc({'node1': _node(endpoints={'default/a': {'ep_id': 5, 'identity': 4, 'ips': []},
                                       'default/b': {'ep_id': 5, 'identity': 4, 'ips': []}})})
    _record(d, 'node1', {'10.244.1.2': {'owner': 'default/a'}, '10.244.1.3': {'owner': 'default/b'}})
    assert {k: r['ep_id'] for k, r in d['nodes']['node1']['endpoints'].items()} == {'default/a': 5, 'default/b': 1}


# ---------------------------------------------------------------------------------------------
# through the ledger: under its lock (file) or conditional write (s3)


def _allocate_in(path, sets, out):
    led = ledger.open_ledger({'backend': 'file', 'path': path}, cluster='lab')
    got = {}

    def fn(d):
        got.update(ident.allocate(d, 0, sets)[0])
        return d
    led.update(fn)
    out.put(dict((','.join(k), v) for k, v in got.items()))


def test_concurrent_writers_never_share_an_identity(tmp_path):
    path = str(tmp_path / 'ledger.json')
    everyone = [labels(app='shared')]
    sets = [everyone + [labels(app='w%d-%d' % (w, i)) for i in range(15)] for w in range(4)]
    ctx = multiprocessing.get_context('fork')
    out = ctx.Queue()
    procs = [ctx.Process(target=_allocate_in, args=(path, s, out)) for s in sets]
    for p in procs:
        p.start()
    results = [out.get(timeout=60) for _p in procs]
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    stored = json.load(open(path))['identities']
    assert len(stored) == 1 + 4 * 15
    assert len(set(stored)) == len(set(json.dumps(v, sort_keys=True) for v in stored.values()))
    shared = set(r[','.join(everyone[0])] for r in results)
    assert len(shared) == 1                      # the same labels got the same number in every writer
    for r in results:
        for key, number in r.items():
            assert stored[str(number)]['labels'] == key.split(',')


@pytest.fixture
def s3(monkeypatch):
    moto = pytest.importorskip('moto')
    boto3 = pytest.importorskip('boto3')
    for k, v in (('AWS_ACCESS_KEY_ID', 'testing'), ('AWS_SECRET_ACCESS_KEY', 'testing'),
                 ('AWS_DEFAULT_REGION', 'us-east-1')):
        monkeypatch.setenv(k, v)
    monkeypatch.delenv('AWS_PROFILE', raising=False)
    with moto.mock_aws():
        boto3.client('s3', region_name='us-east-1').create_bucket(Bucket='podnet-ledger')
        yield


def test_s3_lost_race_allocates_again_on_the_winners_document(s3):
    cfg = {'backend': 's3', 'bucket': 'podnet-ledger', 'key': 'clusters/lab.json', 'region': 'us-east-1'}
    led = ledger.open_ledger(cfg, cluster='lab')
    led.backoff_base = 0.001
    other = ledger.open_ledger(cfg, cluster='lab')
    calls = []

    def racing(d):
        calls.append(1)
        if len(calls) == 1:   # another job allocates 'db' between our GET and our PUT
            other.update(lambda o: (ident.allocate(o, 0, [labels(app='db')]), o)[1])
        ident.allocate(d, 0, [labels(app='web')])
        return d
    stored, changed = led.update(racing)
    assert changed and len(calls) == 2 and led.conflicts == 1
    assert ident.Table(stored, 0).by_labels == {labels(app='db'): 256, labels(app='web'): 257}


def test_file_ledger_keeps_one_identity_per_line(tmp_path):
    path = str(tmp_path / 'ledger.json')
    led = ledger.open_ledger({'backend': 'file', 'path': path}, cluster='lab')
    led.update(lambda d: (ident.allocate(d, 0, [labels(app='web'), labels(app='db')], ['10.0.0.0/8']), d)[1])
    lines = open(path).read().splitlines()
    assert sum(1 for line in lines if line.startswith('"256":') or line.startswith('"257":')
               or line.startswith('"16777217":')) == 3
    assert os.path.getsize(path) < 1000
