# -*- coding: utf-8 -*-
# Copyright: podnet.fabric contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""IPAM utilization per pool and per node from the ledger, as a table, JSON and an HTML page."""
from __future__ import annotations

import json
import os
import tempfile


from ansible_collections.podnet.fabric.plugins.plugin_utils import ipam_plan
from ansible_collections.podnet.fabric.plugins.plugin_utils import ipam_controller as ctl
from ansible_collections.podnet.fabric.plugins.plugin_utils import ipam_report as render


def _write(path, data):
    """Write only when the content differs (atomically). Returns True when written."""
    try:
        with open(path, 'rb') as f:
            if f.read() == data:
                return False
    except OSError:
        pass
    directory = os.path.dirname(path)
    fd, tmp = tempfile.mkstemp(prefix='.' + os.path.basename(path) + '.', dir=directory)
    try:
        with os.fdopen(fd, 'wb') as f:
            f.write(data)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
    return True


class ActionModule(ctl.IpamAction):

    _VALID_ARGS = frozenset(('dest', 'model', 'max_nodes'))

    def _run(self, result, args, task_vars):
        model = ctl.require_model(task_vars, args.get('model'))
        led = ctl.open_ledger(model)
        doc = led.read()
        node_docs = None
        if model['ipam']['mode'] == 'crd':
            node_docs = dict((n, led.read_node_doc(n)) for n in led.list_node_docs())
        report = ipam_plan.utilization(model, doc, node_docs)
        report['ledger'] = {'backend': led.backend, 'location': led.location}
        if model['ipam']['mode'] == 'eni':
            report['eni'] = render.eni_utilization(model, doc)
        max_nodes = int(args.get('max_nodes', 50))
        result.update(changed=False, utilization=report,
                      table=render.text_table(report, max_nodes=max_nodes, location=led.location))
        if report.get('eni', {}).get('warnings'):
            result['warnings'] = list(report['eni']['warnings'])
        dest = args.get('dest')
        if dest:
            dest = os.path.abspath(os.path.expanduser(str(dest)))
            files = {'json': os.path.join(dest, 'ipam.json'), 'html': os.path.join(dest, 'ipam.html')}
            result['files'] = files
            if not self._task.check_mode:
                try:
                    os.makedirs(dest, exist_ok=True)
                    data_json = (json.dumps(report, sort_keys=True, indent=2) + '\n').encode('utf-8')
                    data_html = render.html_page(report, location=led.location).encode('utf-8')
                    written = [_write(files['json'], data_json), _write(files['html'], data_html)]
                except OSError as e:
                    result.update(failed=True, msg='%s: cannot write the report: %s' % (dest, e))
                    return result
                result['changed'] = any(written)
        return result
