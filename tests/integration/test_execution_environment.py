"""The execution environment AWX runs podnet jobs in (execution-environment.yml): the collection
built the way `ansible-galaxy collection build` builds it, and ansible-builder's build context,
which must hold the collection tarball and the Python and system dependencies. Building the image
needs a registry this machine cannot reach, so the context is what is checked."""
import os
import shutil
import subprocess
import tarfile

import yaml

from labutil import REPO

BIN = os.path.join(REPO, '.venv', 'bin')


def run(argv, cwd):
    p = subprocess.run(argv, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, universal_newlines=True,
                       timeout=300, check=False)
    assert p.returncode == 0, p.stdout
    return p.stdout


def test_the_build_context_holds_the_collection_and_its_dependencies(tmp_path):
    # The checkout's layout, as `make ee` uses it: the EE definition, the galaxy requirements and the
    # built collection under build/ee-collection.
    shutil.copy(os.path.join(REPO, 'execution-environment.yml'), str(tmp_path))
    os.makedirs(str(tmp_path / 'collections'))
    shutil.copy(os.path.join(REPO, 'collections', 'requirements.yml'), str(tmp_path / 'collections'))
    run([os.path.join(BIN, 'ansible-galaxy'), 'collection', 'build', '--force', '--output-path',
         str(tmp_path / 'build' / 'ee-collection'), REPO], REPO)
    run([os.path.join(BIN, 'ansible-builder'), 'create', '-f', 'execution-environment.yml', '-c', 'context'],
        str(tmp_path))

    build = tmp_path / 'context' / '_build'
    with open(os.path.join(REPO, 'galaxy.yml')) as f:
        version = yaml.safe_load(f)['version']
    tarball = build / 'podnet' / ('podnet-fabric-%s.tar.gz' % version)
    assert tarball.exists(), sorted(os.listdir(str(build)))
    with tarfile.open(str(tarball)) as tar:
        names = set(tar.getnames())
    assert {'MANIFEST.json', 'FILES.json', 'plugins/modules/routing.py', 'roles/routing/tasks/main.yml',
            'playbooks/site.yml', 'meta/runtime.yml'} <= names
    # Only the collection: galaxy.yml's build_ignore keeps the venv, build outputs and git out.
    assert not [n for n in names if n.split('/')[0] in ('.venv', 'build', '.git', '.pytest_cache')]

    python = (build / 'requirements.txt').read_text().split()
    for want in ('pyroute2>=0.9', 'jinja2>=3.1', 'boto3>=1.35.69', 'botocore>=1.35.69'):
        assert want in python, python
    assert 'iproute2 [platform:dpkg]' in (build / 'bindep.txt').read_text().splitlines()
    galaxy = yaml.safe_load((build / 'requirements.yml').read_text())
    assert 'ansible.posix' in [c['name'] for c in galaxy['collections']]
    containerfile = [p for p in (tmp_path / 'context').iterdir() if p.name in ('Containerfile', 'Dockerfile')]
    assert len(containerfile) == 1
    text = containerfile[0].read_text()
    assert 'ansible-galaxy collection install /build/podnet/podnet-fabric-*.tar.gz' in text
    assert 'ansible-core>=2.18,<2.20' in text and 'ansible-runner' in text
