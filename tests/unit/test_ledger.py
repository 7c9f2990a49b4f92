"""Unit tests for plugins/plugin_utils/ledger.py (file backend; s3 backend against moto's mock)."""
import fcntl
import json
import os
import sys

import pytest


from ansible_collections.podnet.fabric.plugins.plugin_utils import ledger
LedgerError = ledger.LedgerError


def add_node(name, cidr):
    def fn(doc):
        doc['cluster'] = 'lab'
        if name not in doc['nodes']:
            doc['nodes'][name] = {'ip': None, 'cidrs': {'ipv4': [cidr], 'ipv6': []}, 'pools': {},
                                  'allocated_at': doc['serial'] + 1}
        return doc
    return fn


@pytest.fixture
def path(tmp_path):
    return str(tmp_path / 'ledger' / 'lab.json')


def test_absent_ledger_reads_empty(path):
    led = ledger.open_ledger({'backend': 'file', 'path': path}, cluster='lab')
    assert led.read() == {'version': 1, 'cluster': 'lab', 'serial': 0, 'nodes': {}, 'identities': {}}
    assert not os.path.exists(path)


def test_update_writes_and_bumps_serial(path):
    led = ledger.open_ledger({'backend': 'file', 'path': path})
    doc, changed = led.update(add_node('node1', '10.0.0.0/24'))
    assert changed and doc['serial'] == 1
    on_disk = json.load(open(path))
    assert on_disk == doc == led.read()
    doc, changed = led.update(add_node('node2', '10.0.1.0/24'))
    assert changed and doc['serial'] == 2 and sorted(doc['nodes']) == ['node1', 'node2']
    # one node per line: grep- and diff-friendly, still plain JSON
    text = open(path).read()
    assert '\n"node1":{' in text and '\n"node2":{' in text


def test_noop_update_does_not_touch_the_file(path):
    led = ledger.open_ledger({'backend': 'file', 'path': path})
    led.update(add_node('node1', '10.0.0.0/24'))
    st = os.stat(path)
    doc, changed = led.update(lambda d: d)
    assert not changed and doc['serial'] == 1
    doc, changed = led.update(add_node('node1', '10.0.0.0/24'))     # same content again
    assert not changed
    st2 = os.stat(path)
    assert (st.st_ino, st.st_mtime_ns, st.st_size) == (st2.st_ino, st2.st_mtime_ns, st2.st_size)


def test_serial_is_owned_by_the_ledger(path):
    led = ledger.open_ledger({'backend': 'file', 'path': path})
    led.update(add_node('node1', '10.0.0.0/24'))

    def bump_only(doc):
        doc['serial'] = 99
        return doc
    doc, changed = led.update(bump_only)
    assert not changed and doc['serial'] == 1

    def change_and_bump(doc):
        doc['serial'] = 99
        doc['identities']['x'] = 1
        return doc
    doc, changed = led.update(change_and_bump)
    assert changed and doc['serial'] == 2


def test_fn_gets_a_private_copy(path):
    led = ledger.open_ledger({'backend': 'file', 'path': path})
    led.update(add_node('node1', '10.0.0.0/24'))
    seen = []

    def fn(doc):
        seen.append(doc)
        doc['nodes']['node1']['ip'] = '192.168.0.1'   # in place
        return doc
    doc, changed = led.update(fn)
    assert changed and doc['nodes']['node1']['ip'] == '192.168.0.1'


def test_failed_fn_writes_nothing(path):
    led = ledger.open_ledger({'backend': 'file', 'path': path})
    led.update(add_node('node1', '10.0.0.0/24'))
    before = open(path, 'rb').read()

    def boom(doc):
        doc['nodes'].clear()
        raise RuntimeError('exhausted')
    with pytest.raises(RuntimeError):
        led.update(boom)
    assert open(path, 'rb').read() == before
    led.update(add_node('node2', '10.0.1.0/24'))      # the lock was released


@pytest.mark.parametrize('content', [b'', b'{"version": 1, "cluster": "lab", "ser', b'\x00\x00\x00', b'[]',
                                     b'{"version": 2, "serial": 0, "nodes": {}, "identities": {}}',
                                     b'{"version": 1, "serial": "x", "nodes": {}, "identities": {}}'])
def test_torn_or_invalid_ledger_is_a_loud_error(path, content):
    os.makedirs(os.path.dirname(path))
    with open(path, 'wb') as f:
        f.write(content)
    led = ledger.open_ledger({'backend': 'file', 'path': path})
    with pytest.raises(LedgerError) as e:
        led.read()
    assert path in str(e.value)
    with pytest.raises(LedgerError):
        led.update(add_node('node1', '10.0.0.0/24'))
    assert open(path, 'rb').read() == content       # never silently reset


def rebuilt_doc(serial=3):
    return {'version': 1, 'cluster': 'lab', 'serial': serial, 'identities': {},
            'nodes': {'node1': {'ip': '192.168.50.11', 'cidrs': {'ipv4': ['10.0.0.0/24'], 'ipv6': []},
                                'pools': {}, 'allocated_at': serial}}}


def test_torn_ledger_errors_point_to_the_rebuild_playbook(path):
    os.makedirs(os.path.dirname(path))
    for content in (b'{"version": 1, "ser', b'[]', b'{}'):
        with open(path, 'wb') as f:
            f.write(content)
        with pytest.raises(ledger.TornLedgerError) as e:
            ledger.open_ledger({'backend': 'file', 'path': path}).read()
        assert path in str(e.value) and 'playbooks/ledger_rebuild.yml' in str(e.value)


@pytest.mark.parametrize('content,state', [(None, 'missing'), (b'', 'torn'), (b'{"version": 1, "cluster": "la', 'torn'),
                                           (b'{"version": 1, "serial": "x", "nodes": {}, "identities": {}}', 'torn')])
def test_rebuild_writes_a_missing_or_torn_ledger_and_keeps_the_torn_one_aside(path, content, state):
    os.makedirs(os.path.dirname(path))
    if content is not None:
        with open(path, 'wb') as f:
            f.write(content)
    led = ledger.open_ledger({'backend': 'file', 'path': path}, cluster='lab')
    assert led.inspect()['state'] == state
    seen = []

    def build(current):
        seen.append(current)
        return rebuilt_doc()
    current, new, aside = led.rebuild(build)
    assert current['state'] == state and seen == [current] and new == rebuilt_doc()
    assert led.read() == rebuilt_doc() and json.loads(open(path, 'rb').read()) == rebuilt_doc()
    if content is None:
        assert aside is None and sorted(os.listdir(os.path.dirname(path))) == ['lab.json', 'lab.json.lock']
    else:
        assert 'ledger_rebuild.yml' in current['error']
        assert os.path.basename(aside).startswith('lab.json.torn-') and open(aside, 'rb').read() == content
    # the rebuilt ledger is an ordinary ledger again
    doc, changed = led.update(add_node('node2', '10.0.1.0/24'))
    assert changed and doc['serial'] == 4


def test_rebuild_of_a_valid_ledger_writes_only_what_build_returns(path):
    led = ledger.open_ledger({'backend': 'file', 'path': path}, cluster='lab')
    led.update(add_node('node1', '10.0.0.0/24'))
    before = open(path, 'rb').read()
    current, new, aside = led.rebuild(lambda cur: None)
    assert current['state'] == 'valid' and current['doc'] == led.read() and new is None and aside is None
    assert open(path, 'rb').read() == before
    current, new, aside = led.rebuild(lambda cur: rebuilt_doc(5))
    assert os.path.basename(aside).startswith('lab.json.replaced-') and open(aside, 'rb').read() == before
    assert led.read()['serial'] == 5

    # a build that fails writes nothing and keeps nothing aside
    def refuse(current):
        raise ValueError('conflict')

    with pytest.raises(ValueError):
        led.rebuild(refuse)
    assert len(os.listdir(os.path.dirname(path))) == 3


def test_rebuild_never_replaces_another_clusters_or_a_newer_ledger(path):
    os.makedirs(os.path.dirname(path))
    for content, match in ((b'{"version": 1, "cluster": "prod", "serial": 0, "nodes": {}, "identities": {}}',
                            "belongs to cluster 'prod'"),
                           (b'{"version": 2, "serial": 0, "nodes": {}, "identities": {}}', 'unsupported ledger version')):
        with open(path, 'wb') as f:
            f.write(content)
        led = ledger.open_ledger({'backend': 'file', 'path': path}, cluster='lab')
        with pytest.raises(LedgerError, match=match):
            led.inspect()
        with pytest.raises(LedgerError, match=match):
            led.rebuild(lambda cur: rebuilt_doc())
        assert open(path, 'rb').read() == content and sorted(os.listdir(os.path.dirname(path))) == ['lab.json', 'lab.json.lock']
        os.unlink(path + '.lock')


def test_keep_aside_never_overwrites(tmp_path):
    from ansible_collections.podnet.fabric.plugins.module_utils import statefile
    p = str(tmp_path / 'f.json')
    with open(p, 'w') as f:
        f.write('one')
    a = statefile.keep_aside(p, 'corrupt', when=0)
    assert a == p + '.corrupt-19700101T000000Z'
    os.unlink(p)               # a new file under the same name (as an atomic replace makes it)
    with open(p, 'w') as f:
        f.write('two')
    b = statefile.keep_aside(p, 'corrupt', when=0)
    assert b == a + '.2' and open(a).read() == 'one' and open(b).read() == 'two'


def test_foreign_cluster_refused(path):
    ledger.open_ledger({'backend': 'file', 'path': path}).update(add_node('node1', '10.0.0.0/24'))
    led = ledger.open_ledger({'backend': 'file', 'path': path}, cluster='prod')
    with pytest.raises(LedgerError, match="belongs to cluster 'lab', not 'prod'"):
        led.read()


def test_leftover_temp_files_are_cleaned_under_the_lock(path):
    led = ledger.open_ledger({'backend': 'file', 'path': path})
    led.update(add_node('node1', '10.0.0.0/24'))
    stale = os.path.join(os.path.dirname(path), '.lab.json.abc123.tmp')
    with open(stale, 'w') as f:
        f.write('{"half": ')
    assert led.read()['serial'] == 1                # a reader does not care
    led.update(lambda d: d)
    assert not os.path.exists(stale)


def test_lock_timeout(path):
    led = ledger.open_ledger({'backend': 'file', 'path': path}, lock_timeout=0.2)
    led.update(add_node('node1', '10.0.0.0/24'))
    fd = os.open(path + '.lock', os.O_RDWR)
    fcntl.flock(fd, fcntl.LOCK_EX)                  # another "run" holds the lock
    try:
        with pytest.raises(LedgerError, match='timed out after 0.2 s waiting for the ledger lock'):
            led.update(add_node('node2', '10.0.1.0/24'))
    finally:
        os.close(fd)
    led.update(add_node('node2', '10.0.1.0/24'))


def test_mode_is_preserved(path):
    led = ledger.open_ledger({'backend': 'file', 'path': path})
    led.update(add_node('node1', '10.0.0.0/24'))
    assert os.stat(path).st_mode & 0o777 == 0o644
    os.chmod(path, 0o600)
    led.update(add_node('node2', '10.0.1.0/24'))
    assert os.stat(path).st_mode & 0o777 == 0o600


def test_node_docs(path):
    led = ledger.open_ledger({'backend': 'file', 'path': path})
    assert led.read_node_doc('node1') == ledger.empty_node_doc('node1')

    def set_pool(doc):
        doc['spec']['ipam']['pool'] = {'10.1.0.0/28': {}}
        return doc
    doc, changed = led.update_node_doc('node1', set_pool)
    assert changed and doc['serial'] == 1
    expected = os.path.join(os.path.dirname(path), 'lab.d', 'nodes', 'node1.json')
    assert led.node_doc_path('node1') == expected and os.path.exists(expected)
    assert led.read_node_doc('node1')['spec']['ipam']['pool'] == {'10.1.0.0/28': {}}
    doc, changed = led.update_node_doc('node1', set_pool)
    assert not changed
    assert led.list_node_docs() == ['node1']
    assert not os.path.exists(path)                 # the ledger itself is separate
    for bad in ('../x', '', '.hidden', 'a/b'):
        with pytest.raises(LedgerError):
            led.read_node_doc(bad)
    with open(expected, 'w') as f:
        json.dump(ledger.empty_node_doc('node2'), f)
    with pytest.raises(LedgerError, match="for 'node2', not 'node1'"):
        led.read_node_doc('node1')


def test_open_ledger_errors():
    with pytest.raises(LedgerError, match='unknown backend'):
        ledger.open_ledger({'backend': 'etcd'})
    with pytest.raises(LedgerError, match='needs a path'):
        ledger.open_ledger({'backend': 'file', 'path': None})
    with pytest.raises(LedgerError, match='needs a bucket'):
        ledger.open_ledger({'backend': 's3', 'key': 'x.json'})


def test_s3_without_boto3_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, 'boto3', None)   # makes "import boto3" raise ImportError
    led = ledger.open_ledger({'backend': 's3', 'bucket': 'b', 'key': 'podnet/lab.json'})
    with pytest.raises(LedgerError, match=r'needs boto3 and botocore on the controller \(pip install boto3\)'):
        led.read()


# ------------------------------------------------------------------------------------------
# s3 backend against moto's in-process mock (the multi-process test is in tests/integration)

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
        yield boto3.client('s3', region_name='us-east-1')


def s3_cfg():
    return {'backend': 's3', 'bucket': 'podnet-ledger', 'key': 'clusters/lab.json', 'region': 'us-east-1',
            'endpoint_url': None}


def test_s3_roundtrip_and_noop(s3):
    led = ledger.open_ledger(s3_cfg(), cluster='lab')
    assert led.read()['nodes'] == {}
    doc, changed = led.update(add_node('node1', '10.0.0.0/24'))
    assert changed and doc['serial'] == 1
    etag = s3.head_object(Bucket='podnet-ledger', Key='clusters/lab.json')['ETag']
    doc, changed = led.update(add_node('node1', '10.0.0.0/24'))
    assert not changed
    assert s3.head_object(Bucket='podnet-ledger', Key='clusters/lab.json')['ETag'] == etag
    assert json.loads(s3.get_object(Bucket='podnet-ledger', Key='clusters/lab.json')['Body'].read()) == doc


def test_s3_conditional_write_conflict_is_retried(s3):
    led = ledger.open_ledger(s3_cfg())
    led.backoff_base = 0.001
    led.update(add_node('node1', '10.0.0.0/24'))
    other = ledger.open_ledger(s3_cfg())
    calls = []

    def racing(doc):
        calls.append(1)
        if len(calls) == 1:       # another job writes between our GET and our PUT
            other.update(add_node('node9', '10.0.9.0/24'))
        return add_node('node2', '10.0.1.0/24')(doc)
    doc, changed = led.update(racing)
    assert changed and len(calls) == 2 and led.conflicts == 1
    assert sorted(doc['nodes']) == ['node1', 'node2', 'node9'] and doc['serial'] == 3


def test_s3_create_race_uses_if_none_match(s3):
    led = ledger.open_ledger(s3_cfg())
    led.backoff_base = 0.001
    other = ledger.open_ledger(s3_cfg())
    calls = []

    def racing(doc):
        calls.append(1)
        if len(calls) == 1:
            other.update(add_node('node9', '10.0.9.0/24'))
        return add_node('node1', '10.0.0.0/24')(doc)
    doc, changed = led.update(racing)
    assert led.conflicts == 1 and sorted(doc['nodes']) == ['node1', 'node9']


def test_s3_gives_up_after_bounded_attempts(s3):
    led = ledger.open_ledger(s3_cfg())
    led.backoff_base = 0.001
    led.max_attempts = 3
    other = ledger.open_ledger(s3_cfg())
    n = [0]

    def always_racing(doc):
        n[0] += 1
        other.update(add_node('other%d' % n[0], '10.1.%d.0/24' % n[0]))
        return add_node('node1', '10.0.0.0/24')(doc)
    with pytest.raises(LedgerError, match=r's3://podnet-ledger/clusters/lab.json: gave up after 3 attempts'):
        led.update(always_racing)


def test_s3_torn_object_and_missing_bucket(s3):
    s3.put_object(Bucket='podnet-ledger', Key='clusters/lab.json', Body=b'{"version": 1, "ser')
    led = ledger.open_ledger(s3_cfg())
    with pytest.raises(LedgerError, match='not valid JSON'):
        led.update(add_node('node1', '10.0.0.0/24'))
    cfg = s3_cfg()
    cfg['bucket'] = 'no-such-bucket'
    with pytest.raises(LedgerError, match='NoSuchBucket'):
        ledger.open_ledger(cfg).read()


def test_s3_node_docs(s3):
    led = ledger.open_ledger(s3_cfg())
    assert led.node_doc_key('node1') == 'clusters/lab.d/nodes/node1.json'

    def set_used(doc):
        doc['status']['ipam']['used'] = {'10.1.0.2': {'owner': 'default/a'}}
        return doc
    doc, changed = led.update_node_doc('node1', set_used)
    assert changed and doc['serial'] == 1
    assert led.read_node_doc('node1')['status']['ipam']['used'] == {'10.1.0.2': {'owner': 'default/a'}}
    assert led.list_node_docs() == ['node1']
    assert led.read()['nodes'] == {}


def test_s3_rebuild_keeps_the_torn_object_aside(s3):
    s3.put_object(Bucket='podnet-ledger', Key='clusters/lab.json', Body=b'{"version": 1, "ser')
    led = ledger.open_ledger(s3_cfg(), cluster='lab')
    assert led.inspect()['state'] == 'torn'
    current, new, aside = led.rebuild(lambda cur: rebuilt_doc())
    assert current['state'] == 'torn' and new == rebuilt_doc()
    assert aside.startswith('s3://podnet-ledger/clusters/lab.json.torn-')
    key = aside[len('s3://podnet-ledger/'):]
    assert s3.get_object(Bucket='podnet-ledger', Key=key)['Body'].read() == b'{"version": 1, "ser'
    assert led.read() == rebuilt_doc()
    assert led.rebuild(lambda cur: None) == ({'state': 'valid', 'doc': rebuilt_doc(), 'error': None}, None, None)
