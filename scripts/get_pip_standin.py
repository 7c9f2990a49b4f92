"""Stand-in for the pip bootstrap script ansible-test downloads (its host is not reachable here).

ansible-test runs it inside a fresh venv with get-pip's arguments (pip options and packages, e.g.
`pip==24.2`): bootstrap the pip bundled with Python (ensurepip), then let that pip install the
requested version from the package index.
"""
import ensurepip
import subprocess
import sys

args = [a for a in sys.argv[1:] if a not in ('--no-setuptools', '--no-wheel')]
if args and args[0] == 'install':
    args = args[1:]
ensurepip.bootstrap(upgrade=False)
subprocess.check_call([sys.executable, '-m', 'pip', 'install', '--disable-pip-version-check', '-q'] + args)
