"""node_info's readers of files the node keeps (fstab, os-release, small config files): the site run
leaves a file alone when node_info reports it as wanted, so these readers decide whether a module runs."""
import os

from ansible_collections.podnet.fabric.plugins.modules import node_info


def test_fstab_fills_defaults_and_skips_comments(tmp_path):
    fstab = tmp_path / 'fstab'
    fstab.write_text('# a comment\n\n'
                     'UUID=1 / ext4 errors=remount-ro 0 1\n'
                     'bpffs /sys/fs/bpf bpf rw,nosuid,nodev,noexec,relatime,mode=700 0 0  # podnet\n'
                     'tmpfs /tmp tmpfs\n'
                     'broken-line\n')
    entries = node_info._fstab(str(fstab))
    assert entries == [
        dict(src='UUID=1', path='/', fstype='ext4', opts='errors=remount-ro', dump='0', passno='1'),
        dict(src='bpffs', path='/sys/fs/bpf', fstype='bpf', opts='rw,nosuid,nodev,noexec,relatime,mode=700',
             dump='0', passno='0'),
        dict(src='tmpfs', path='/tmp', fstype='tmpfs', opts='defaults', dump='0', passno='0'),
    ]
    assert node_info._fstab(str(tmp_path / 'missing')) == []


def test_os_release_id_and_id_like(tmp_path):
    f = tmp_path / 'os-release'
    f.write_text('NAME="Ubuntu"\nID=ubuntu\nID_LIKE=debian\nVERSION_ID="24.04"\n')
    assert node_info._os_release(str(f)) == {'id': 'ubuntu', 'id_like': ['debian']}
    f.write_text('ID="rocky"\nID_LIKE="rhel centos fedora"\n')
    assert node_info._os_release(str(f)) == {'id': 'rocky', 'id_like': ['rhel', 'centos', 'fedora']}
    assert node_info._os_release(str(tmp_path / 'missing')) == {'id': None, 'id_like': []}


def test_file_reports_content_mode_and_owner(tmp_path):
    f = tmp_path / 'podnet.conf'
    f.write_text('201 podnet\n')
    os.chmod(str(f), 0o640)
    got = node_info._file(str(f))
    assert got == {'content': '201 podnet\n', 'mode': '0640', 'uid': os.getuid(), 'gid': os.getgid()}
    assert node_info._file(str(tmp_path / 'missing')) == {'content': None, 'mode': None, 'uid': None, 'gid': None}
    big = tmp_path / 'big'
    big.write_bytes(b'x' * (node_info.FILE_MAX + 1))
    assert node_info._file(str(big))['content'] is None
    assert node_info._file(str(tmp_path))['content'] is None          # a directory: no content
    binary = tmp_path / 'bin'
    binary.write_bytes(b'\xff\xfe')
    assert node_info._file(str(binary))['content'] is None


def test_bcc_version_read_from_its_files_not_imported():
    import importlib.util
    import re
    import sys
    if importlib.util.find_spec('bcc') is None:
        assert node_info._bcc_version() is None
        return
    imported_before = 'bcc' in sys.modules
    assert re.match(r'^\d+\.\d+', node_info._bcc_version())
    assert ('bcc' in sys.modules) == imported_before


def test_bcc_without_its_shared_library_counts_as_missing(monkeypatch):
    import ctypes.util
    monkeypatch.setattr(ctypes.util, 'find_library', lambda name: None)
    assert node_info._bcc_version() is None
