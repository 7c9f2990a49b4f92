# -*- coding: utf-8 -*-
# Copyright: podnet.fabric contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Small JSON state files on the node (``/var/lib/podnet/...``): the IPAM lease, the endpoint store.

- ``read_json(path)``: the document, or None when the file does not exist. A file that is not
  valid JSON is a loud error, never read as empty (that would hand out addresses in use again).
- ``read_json_checked(path, check=None)``: ``(doc, None)``, ``(None, None)`` when absent, or
  ``(None, error)`` when the file is there but not valid JSON (or ``check(doc)`` finds it is not
  what it should be): for callers that can restore it from elsewhere.
- ``keep_aside(path, tag)``: keep the file beside itself as ``<path>.<tag>-<UTC time>`` before it
  is replaced (a hard link: ``path`` never goes missing), so a bad file is never simply deleted.
- ``write_json(path, doc)``: atomic: temp file in the same directory, fsync, ``os.replace``,
  fsync of the directory. A crash leaves the old or the new file, never a torn one.
- ``locked(path)``: an exclusive ``flock`` on ``<path>.lock`` around a read-modify-write, so two
  tasks (or two runs) changing the same store on one node cannot lose each other's update.
  ``lock_file(path, holder=...)`` is the same wait on a given lock file, recording who holds it
  (the node lock of the reconcile loop).

Stdlib only: shipped to nodes with the modules.
"""
from __future__ import absolute_import, division, print_function

__metaclass__ = type

import contextlib
import errno
import fcntl
import json
import os
import random
import tempfile
import time


class StateFileError(Exception):
    """A state file cannot be read, written or locked; the message names the path."""


def dumps(doc):
    """Sorted, indented, trailing newline: stable bytes for equal documents (and readable)."""
    return (json.dumps(doc, sort_keys=True, indent=2, separators=(',', ': ')) + '\n').encode('utf-8')


def read_bytes(path):
    """The file's bytes, or None when it does not exist; any other read error is StateFileError."""
    try:
        with open(path, 'rb') as f:
            return f.read()
    except (IOError, OSError) as e:
        if e.errno == errno.ENOENT:
            return None
        raise StateFileError('%s: cannot read: %s' % (path, e))


def read_json_checked(path, check=None):
    """(doc, None); (None, None) when the file does not exist; (None, error) when it exists but is
    not valid JSON (empty, truncated, garbage) or check(doc) says what is wrong with it. A file
    that cannot be read at all still raises."""
    data = read_bytes(path)
    if data is None:
        return None, None
    try:
        doc = json.loads(data.decode('utf-8'))
    except (ValueError, UnicodeDecodeError) as e:
        return None, '%s: not valid JSON (%s)' % (path, e)
    problem = check(doc) if check else None
    if problem:
        return None, '%s: %s' % (path, problem)
    return doc, None


def read_json(path):
    doc, error = read_json_checked(path)
    if error:
        raise StateFileError('%s; refusing to treat it as empty. Move it away to start over.' % error)
    return doc


def aside_path(path, tag, when=None):
    """``<path>.<tag>-<UTC time>``, e.g. ``lease.json.corrupt-20250101T120000Z``."""
    return '%s.%s-%s' % (path, tag, time.strftime('%Y%m%dT%H%M%SZ', time.gmtime(when)))


def keep_aside(path, tag, when=None):
    """Keep the current file beside itself as aside_path(path, tag) (``.2``, ``.3``... when that
    name is taken) and return that path. A hard link, so ``path`` stays in place until the caller
    replaces it atomically: a crash in between leaves both, never neither."""
    base = aside_path(path, tag, when)
    candidate, n = base, 1
    while True:
        try:
            os.link(path, candidate)
            break
        except OSError as e:
            if e.errno == errno.EEXIST:
                n += 1
                candidate = '%s.%d' % (base, n)
                continue
            raise StateFileError('%s: cannot keep it aside as %s: %s' % (path, candidate, e))
    try:
        _fsync_dir(os.path.dirname(os.path.abspath(path)))
    except OSError as e:
        raise StateFileError('%s: cannot sync its directory: %s' % (path, e))
    return candidate


def _fsync_dir(path):
    fd = os.open(path, os.O_RDONLY | getattr(os, 'O_DIRECTORY', 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_json(path, doc, mode=0o644):
    write_bytes(path, dumps(doc), mode)


def write_bytes(path, data, mode=0o644):
    """Atomically replace `path` with `data`: temp file in the same directory, fsync, rename,
    fsync the directory. A crash at any point leaves the previous file whole."""
    directory = os.path.dirname(os.path.abspath(path))
    fd = -1
    tmp = None
    try:
        os.makedirs(directory, mode=0o755, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix='.' + os.path.basename(path) + '.', suffix='.tmp', dir=directory)
        os.fchmod(fd, mode)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
        os.close(fd)
        fd = -1
        os.replace(tmp, path)
        tmp = None
        _fsync_dir(directory)
    except OSError as e:
        raise StateFileError('%s: cannot write: %s' % (path, e))
    finally:
        if fd >= 0:
            os.close(fd)
        if tmp is not None:
            try:
                os.unlink(tmp)
            except OSError:
                pass


def remove(path):
    """Remove a state file; a file that is already gone is success."""
    try:
        os.unlink(path)
    except OSError as e:
        if e.errno != errno.ENOENT:
            raise StateFileError('%s: cannot remove: %s' % (path, e))
        return False
    return True


@contextlib.contextmanager
def locked(path, timeout=120.0, holder=None):
    """Hold an exclusive flock on ``<path>.lock`` (created with its directory) for the block."""
    with lock_file(path + '.lock', timeout=timeout, holder=holder):
        yield


def _holder_of(fd):
    try:
        text = os.pread(fd, 4096, 0).decode('utf-8', 'replace').strip()
    except OSError:
        return ''
    return text.splitlines()[0] if text else ''


@contextlib.contextmanager
def lock_file(lock_path, timeout=120.0, holder=None, what='the lock'):
    """Hold an exclusive flock on the file `lock_path` (created with its directory) for the block.

    The one lock-wait loop (node lock, state files, the file ledger): non-blocking attempts with a
    jittered backoff from 1 ms to 50 ms, so contenders spread out; timeout None waits for ever.
    holder: one line saying who holds it, written into the file while it is held and emptied
    before it is released; a waiter that times out names it in its StateFileError (`what` names the
    lock in that message). The fd is not inherited by children (daemons started under the lock must
    not keep it).
    """
    try:
        os.makedirs(os.path.dirname(os.path.abspath(lock_path)), mode=0o755, exist_ok=True)
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | getattr(os, 'O_CLOEXEC', 0), 0o644)
    except OSError as e:
        raise StateFileError('%s: cannot open the lock file: %s' % (lock_path, e))
    try:
        deadline = None if timeout is None else time.monotonic() + timeout
        delay = 0.001
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except (IOError, OSError) as e:
                if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    raise StateFileError('%s: cannot lock: %s' % (lock_path, e))
            if deadline is not None and time.monotonic() >= deadline:
                other = _holder_of(fd) if holder is not None else ''
                raise StateFileError('%s: timed out after %g s waiting for %s%s'
                                     % (lock_path, timeout, what, ', held by ' + other if other else ''))
            time.sleep(delay * (0.5 + random.random()))
            delay = min(delay * 2, 0.05)
        if holder is not None:
            os.ftruncate(fd, 0)
            os.pwrite(fd, (holder.replace('\n', ' ') + '\n').encode('utf-8'), 0)
        try:
            yield
        finally:
            if holder is not None:
                os.ftruncate(fd, 0)
    finally:
        os.close(fd)  # releases the flock
