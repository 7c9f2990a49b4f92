# -*- coding: utf-8 -*-
# Copyright: podnet.fabric contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Render ipam.utilization() as a text table and as one self-contained HTML page.

The page has no external assets (inline CSS and SVG only), so it can be archived as a job
artifact and opened anywhere. Pure functions of the report dict: no I/O.
"""
from __future__ import annotations

import html
import re

FAMILIES = ('ipv4', 'ipv6')
_WARN = 70.0
_FULL = 90.0


def _natural(name):
    return [int(t) if t.isdigit() else t for t in re.split(r'(\d+)', name)]


def _num(n):
    return '-' if n is None else '{:,}'.format(n)


def _of(stat):
    if not stat or stat.get('size') is None:
        return '%s in use' % _num((stat or {}).get('used'))
    return '%s of %s (%s%%)' % (_num(stat['used']), _num(stat['size']), _pct_text(stat.get('percent')))


def _pct_text(p):
    return '-' if p is None else ('%.1f' % p)


def pool_rows(report):
    """[(pool, family, row)] in pool-name order."""
    out = []
    for pool in sorted(report.get('pools') or {}, key=_natural):
        for fam in FAMILIES:
            row = report['pools'][pool].get(fam)
            if row is not None:
                out.append((pool, fam, row))
    return out


def node_rows(report):
    """[(node, info, pool, family, row)] in natural node order."""
    out = []
    for node in sorted(report.get('nodes') or {}, key=_natural):
        info = report['nodes'][node]
        for pool in sorted(info.get('pools') or {}, key=_natural):
            for fam in FAMILIES:
                row = info['pools'][pool].get(fam)
                if row is not None:
                    out.append((node, info, pool, fam, row))
    return out


def _table(header, rows):
    widths = [max(len(str(r[i])) for r in [header] + rows) for i in range(len(header))]
    fmt = '  '.join('%%-%ds' % w for w in widths)
    return [(fmt % tuple(r)).rstrip() for r in [header] + rows]


def text_table(report, max_nodes=50, location=None):
    """The report as lines of text: a pool table, then a node table (at most max_nodes nodes)."""
    lines = ['podnet IPAM: cluster %s, mode %s, ledger serial %s%s' % (
        report.get('cluster'), report.get('mode'), report.get('serial'),
        ' (%s)' % location if location else '')]
    rows = []
    for pool, fam, row in pool_rows(report):
        blocks = row.get('blocks')
        rows.append((pool, fam, ', '.join(row.get('cidrs') or []) or '-',
                     '/%d' % row['mask_size'] if row.get('mask_size') else '-',
                     _of(blocks) if blocks else '-',
                     _of(row.get('addresses')), _of(row.get('endpoints'))))
    lines += _table(('POOL', 'FAMILY', 'CIDRS', 'MASK', 'BLOCKS TO NODES', 'ADDRESSES TO NODES',
                     'ENDPOINT ADDRESSES IN USE'), rows)
    lines.append('')
    nodes = sorted(report.get('nodes') or {}, key=_natural)
    shown = set(nodes[:max_nodes]) if max_nodes is not None else set(nodes)
    rows = []
    for node, info, pool, fam, row in node_rows(report):
        if node not in shown:
            continue
        name = node if info.get('in_inventory', True) else node + ' (not in inventory)'
        rows.append((name, info.get('ip') or '-', pool, fam, ', '.join(row.get('cidrs') or []),
                     _of(row.get('endpoints'))))
    lines += _table(('NODE', 'UNDERLAY IP', 'POOL', 'FAMILY', 'CIDRS', 'ENDPOINTS IN USE'), rows)
    if not nodes:
        lines.append('(the ledger holds no nodes yet)')
    elif len(nodes) > len(shown):
        lines.append('... and %d more nodes (see the JSON and HTML report)' % (len(nodes) - len(shown)))
    if report.get('eni'):
        lines.append('')
        lines += eni_text_table(report['eni'], max_nodes)
    return lines


# ----------------------------------------------------------------------------------------------
# HTML

def _color(p):
    if p is None:
        return '#94a3b8'
    if p >= _FULL:
        return '#dc2626'
    if p >= _WARN:
        return '#d97706'
    return '#0f766e'


def _bar(stat, height=14):
    """An SVG bar of stat's percent; a used share that is not zero shows at least a sliver."""
    p = (stat or {}).get('percent')
    used = (stat or {}).get('used') or 0
    w = 0.0 if p is None else max(float(p), 0.6 if used else 0.0)
    title = html.escape(_of(stat))
    svg = ('<svg class="bar" viewBox="0 0 100 %d" preserveAspectRatio="none" role="img" aria-label="%s">'
           '<title>%s</title><rect width="100" height="%d" fill="#e2e8f0"/>'
           '<rect width="%.2f" height="%d" fill="%s"/></svg>')
    return svg % (height, title, title, height, min(w, 100.0), height, _color(p))


def _node_grid(report):
    """One square per node, coloured by its fullest pool: the whole cluster at a glance."""
    nodes = sorted(report.get('nodes') or {}, key=_natural)
    if not nodes:
        return ''
    cols = max(1, min(50, len(nodes)))
    cell, gap = 18, 4
    rows = -(-len(nodes) // cols)
    parts = []
    for i, node in enumerate(nodes):
        info = report['nodes'][node]
        worst = None
        detail = []
        for pool in sorted(info.get('pools') or {}, key=_natural):
            for fam in FAMILIES:
                row = info['pools'][pool].get(fam)
                if row is None:
                    continue
                ep = row.get('endpoints') or {}
                detail.append('%s %s: %s' % (pool, fam, _of(ep)))
                if ep.get('percent') is not None and (worst is None or ep['percent'] > worst):
                    worst = ep['percent']
        x, y = (i % cols) * (cell + gap), (i // cols) * (cell + gap)
        stroke = '' if info.get('in_inventory', True) else ' stroke="#0f172a" stroke-dasharray="2 2"'
        fill = '#f1f5f9' if worst is None else _color(worst)
        opacity = 1.0 if worst is None else 0.25 + 0.75 * min(worst, 100.0) / 100.0
        parts.append('<rect x="%d" y="%d" width="%d" height="%d" rx="3" fill="%s" fill-opacity="%.2f"%s>'
                     '<title>%s</title></rect>' % (x, y, cell, cell, fill, opacity, stroke,
                                                   html.escape('%s (%s)\n%s' % (node, info.get('ip'), '\n'.join(detail)))))
    width = cols * (cell + gap)
    height = rows * (cell + gap)
    return ('<svg class="grid" width="%d" height="%d" viewBox="0 0 %d %d" role="img" '
            'aria-label="endpoint use per node">%s</svg>' % (width, height, width, height, ''.join(parts)))


_CSS = '''
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:#0f172a;margin:0;background:#f8fafc}
main{max-width:1100px;margin:0 auto;padding:28px 24px 48px}
h1{font-size:22px;margin:0 0 4px}h2{font-size:16px;margin:32px 0 12px}
.sub{color:#475569;margin:0}.sub code{background:#e2e8f0;padding:1px 5px;border-radius:4px}
.cards{display:grid;grid-template-columns:repeat(auto-fill,minmax(320px,1fr));gap:14px}
.card{background:#fff;border:1px solid #e2e8f0;border-radius:10px;padding:14px 16px}
.card h3{font-size:15px;margin:0 0 2px}.fam{font-size:11px;font-weight:600;color:#fff;background:#334155;
border-radius:9px;padding:1px 7px;margin-left:6px;vertical-align:2px}
.cidrs{color:#475569;font-size:12px;margin:0 0 10px;word-break:break-all}
.metric{margin:8px 0 0}.metric .lbl{display:flex;justify-content:space-between;font-size:12px;color:#334155}
.metric .lbl b{font-weight:600;color:#0f172a}
svg.bar{display:block;width:100%;height:12px;border-radius:3px;margin-top:3px}
table{border-collapse:collapse;width:100%;background:#fff;border:1px solid #e2e8f0;border-radius:10px;overflow:hidden}
th,td{text-align:left;padding:6px 10px;border-bottom:1px solid #f1f5f9;font-size:13px;vertical-align:middle}
th{background:#f1f5f9;font-weight:600;color:#334155}td.num{white-space:nowrap;color:#334155}
td.barcell{width:180px}td.node{font-weight:600;vertical-align:top;padding-top:8px}
tr.first td{border-top:1px solid #cbd5e1}td.barcell svg.bar{margin:0}.gone{color:#b91c1c;font-size:11px;margin-left:4px}
.legend{font-size:12px;color:#475569;margin:8px 0 0}.sw{display:inline-block;width:10px;height:10px;border-radius:2px;
margin:0 4px 0 12px;vertical-align:-1px}
'''


def html_page(report, location=None, title=None):
    """The report as one self-contained HTML page (inline CSS and SVG)."""
    esc = html.escape
    title = title or 'podnet IPAM - cluster %s' % report.get('cluster')
    nodes = report.get('nodes') or {}
    out = ['<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">',
           '<meta name="viewport" content="width=device-width,initial-scale=1">',
           '<title>%s</title><style>%s</style></head><body><main>' % (esc(title), _CSS),
           '<h1>%s</h1>' % esc(title),
           '<p class="sub">mode <code>%s</code> &middot; %d node%s in the ledger &middot; ledger serial %s%s</p>' % (
               esc(str(report.get('mode'))), len(nodes), '' if len(nodes) == 1 else 's',
               esc(str(report.get('serial'))), ' &middot; <code>%s</code>' % esc(location) if location else '')]

    out.append('<h2>Pools</h2><div class="cards">')
    for pool, fam, row in pool_rows(report):
        out.append('<div class="card"><h3>%s<span class="fam">%s</span></h3>' % (esc(pool), esc(fam)))
        cidrs = ', '.join(row.get('cidrs') or []) or 'no cluster CIDR given'
        mask = (' &middot; blocks of /%d' % row['mask_size']) if row.get('mask_size') else ''
        out.append('<p class="cidrs">%s%s</p>' % (esc(cidrs), mask))
        metrics = []
        if row.get('blocks'):
            metrics.append(('Blocks handed to nodes', row['blocks']))
        elif (row.get('addresses') or {}).get('size') is not None:
            metrics.append(('Addresses handed to nodes', row['addresses']))
        metrics.append(('Endpoint addresses in use', row.get('endpoints')))
        for label, stat in metrics:
            out.append('<div class="metric"><div class="lbl"><span>%s</span><b>%s</b></div>%s</div>' % (
                esc(label), esc(_of(stat)), _bar(stat)))
        out.append('</div>')
    if not pool_rows(report):
        out.append('<p class="sub">No pools (mode %s).</p>' % esc(str(report.get('mode'))))
    out.append('</div>')

    out.append('<h2>Nodes at a glance</h2>')
    if nodes:
        out.append(_node_grid(report))
        out.append('<p class="legend">each square is a node, coloured by its fullest pool\'s endpoint use'
                   '<span class="sw" style="background:#0f766e"></span>below %d%%'
                   '<span class="sw" style="background:#d97706"></span>%d%% or more'
                   '<span class="sw" style="background:#dc2626"></span>%d%% or more'
                   '<span class="sw" style="background:#f1f5f9;border:1px dashed #0f172a"></span>'
                   'not in the inventory (kept until prune)</p>' % (_WARN, _WARN, _FULL))
    else:
        out.append('<p class="sub">The ledger holds no nodes yet.</p>')

    hot = sorted(((row.get('endpoints') or {}).get('percent'), node, pool, fam, row)
                 for node, _info, pool, fam, row in node_rows(report)
                 if ((row.get('endpoints') or {}).get('percent') or 0) >= _WARN)
    if hot:
        hot.sort(key=lambda h: (-h[0], _natural(h[1])))
        out.append('<h2>Nearly full (%d%% or more of the endpoint addresses in use)</h2><table><thead><tr>'
                   '<th>Node</th><th>Pool</th><th>Family</th><th>CIDRs</th><th>Endpoints in use</th><th></th>'
                   '</tr></thead><tbody>' % _WARN)
        for _pct, node, pool, fam, row in hot[:10]:
            ep = row.get('endpoints')
            out.append('<tr><td>%s</td><td>%s</td><td>%s</td><td>%s</td><td class="barcell">%s</td>'
                       '<td class="num">%s</td></tr>' % (esc(node), esc(pool), esc(fam),
                                                         esc(', '.join(row.get('cidrs') or [])), _bar(ep), esc(_of(ep))))
        if len(hot) > 10:
            out.append('<tr><td colspan="6" class="num">and %d more</td></tr>' % (len(hot) - 10))
        out.append('</tbody></table>')

    out.append('<h2>Nodes</h2><table><thead><tr><th>Node</th><th>Underlay IP</th><th>Pool</th>'
               '<th>Family</th><th>CIDRs</th><th>Endpoints in use</th><th></th></tr></thead><tbody>')
    rows = node_rows(report)
    span = {}
    for node, _info, _pool, _fam, _row in rows:
        span[node] = span.get(node, 0) + 1
    last = None
    for node, info, pool, fam, row in rows:
        ep = row.get('endpoints')
        head = ''
        if node != last:
            gone = '' if info.get('in_inventory', True) else '<span class="gone">not in inventory</span>'
            head = '<td rowspan="%d" class="node">%s%s</td><td rowspan="%d" class="node">%s</td>' % (
                span[node], esc(node), gone, span[node], esc(info.get('ip') or '-'))
            last = node
        out.append('<tr%s>%s<td>%s</td><td>%s</td><td>%s</td><td class="barcell">%s</td><td class="num">%s</td></tr>' % (
            ' class="first"' if head else '', head, esc(pool), esc(fam), esc(', '.join(row.get('cidrs') or [])),
            _bar(ep), esc(_of(ep))))
    out.append('</tbody></table>')
    if report.get('eni'):
        out.append(eni_html(report['eni']))
    out.append('</main></body></html>\n')
    return ''.join(out)


# ----------------------------------------------------------------------------------------------
# eni mode: ENI use per node and free addresses per subnet (what eni_allocate recorded)

SUBNET_WARN_PERCENT = 10.0     # warn when a pod subnet has less than this share of its addresses free


def eni_utilization(model, doc, warn_percent=SUBNET_WARN_PERCENT):
    """{'nodes': {node: {'instance_id', 'instance_type', 'enis', 'addresses', 'used', 'free', 'limit',
    'percent'}}, 'subnets': {id: {'cidr', 'az', 'size', 'available', 'used', 'percent'}}, 'warnings'}
    from the ledger entries' `eni` records (eni_allocate) and their endpoint records (addresses in use).
    percent: of the node's limit held / of the subnet's usable addresses taken."""
    out = {'nodes': {}, 'subnets': {}, 'warnings': []}
    for node in sorted(doc.get('nodes') or {}, key=_natural):
        entry = doc['nodes'][node]
        rec = entry.get('eni')
        if not isinstance(rec, dict):
            continue
        held = set()
        for e in rec.get('enis') or []:
            held.update(e.get('ips') or [])
        addresses = sum(len(e.get('ips') or []) + 16 * len(e.get('prefixes') or []) for e in rec.get('enis') or [])
        used = set()
        for ep in ((entry.get('endpoints') or {}).values()):
            used.update(ip for ip in (ep or {}).get('ips') or [] if ip in held)
        limit = rec.get('limit')
        out['nodes'][node] = {'instance_id': rec.get('instance_id'), 'instance_type': rec.get('instance_type'),
                              'enis': len(rec.get('enis') or []), 'addresses': addresses, 'used': len(used),
                              'free': addresses - len(used), 'limit': limit,
                              'percent': round(100.0 * addresses / limit, 1) if limit else None,
                              'in_inventory': node in (model.get('nodes') or {})}
    for sid in sorted(doc.get('eni_subnets') or {}, key=_natural):
        sn = doc['eni_subnets'][sid] or {}
        size, available = sn.get('size') or 0, sn.get('available') or 0
        percent = round(100.0 * (size - available) / size, 1) if size else None
        out['subnets'][sid] = {'cidr': sn.get('cidr'), 'az': sn.get('az'), 'size': size, 'available': available,
                               'used': size - available, 'percent': percent}
        if size and available < size * warn_percent / 100.0:
            out['warnings'].append('subnet %s (%s) is running out of addresses: %d of %d free (less than %d%%)' % (
                sid, sn.get('cidr'), available, size, warn_percent))
    return out


def eni_text_table(eni, max_nodes=50):
    rows = []
    names = list(eni['nodes'])
    for node in names[:max_nodes] if max_nodes is not None else names:
        n = eni['nodes'][node]
        rows.append((node, n['instance_id'] or '-', n['instance_type'] or '-', str(n['enis']),
                     '%d of %s' % (n['addresses'], _num(n['limit'])), str(n['used']), str(n['free'])))
    lines = _table(('NODE', 'INSTANCE', 'TYPE', 'ENIS', 'ADDRESSES (OF LIMIT)', 'IN USE', 'FREE'), rows)
    if len(names) > len(rows):
        lines.append('... and %d more nodes (see the JSON and HTML report)' % (len(names) - len(rows)))
    lines.append('')
    rows = [(sid, s['cidr'] or '-', s['az'] or '-', _num(s['size']), _num(s['available']), _pct_text(s['percent']))
            for sid, s in eni['subnets'].items()]
    lines += _table(('SUBNET', 'CIDR', 'AZ', 'USABLE', 'FREE', 'TAKEN %'), rows)
    lines += ['WARNING: ' + w for w in eni['warnings']]
    return lines


def eni_html(eni):
    esc = html.escape
    out = ['<h2>ENIs per node</h2><table><thead><tr><th>Node</th><th>Instance</th><th>Type</th><th>ENIs</th>'
           '<th>Addresses of the limit</th><th></th><th>In use</th></tr></thead><tbody>']
    for node, n in eni['nodes'].items():
        stat = {'size': n['limit'], 'used': n['addresses'], 'percent': n['percent']}
        out.append('<tr><td>%s</td><td>%s</td><td>%s</td><td class="num">%d</td><td class="barcell">%s</td>'
                   '<td class="num">%s</td><td class="num">%d</td></tr>' % (
                       esc(node), esc(n['instance_id'] or '-'), esc(n['instance_type'] or '-'), n['enis'], _bar(stat),
                       esc(_of(stat)), n['used']))
    out.append('</tbody></table><h2>Pod subnets</h2><table><thead><tr><th>Subnet</th><th>CIDR</th><th>AZ</th>'
               '<th>Taken</th><th></th><th>Free</th></tr></thead><tbody>')
    for sid, s in eni['subnets'].items():
        stat = {'size': s['size'], 'used': s['used'], 'percent': s['percent']}
        out.append('<tr><td>%s</td><td>%s</td><td>%s</td><td class="barcell">%s</td><td class="num">%s</td>'
                   '<td class="num">%s</td></tr>' % (esc(sid), esc(s['cidr'] or '-'), esc(s['az'] or '-'), _bar(stat),
                                                     esc(_of(stat)), _num(s['available'])))
    out.append('</tbody></table>')
    for w in eni['warnings']:
        out.append('<p class="sub"><b>Warning:</b> %s</p>' % esc(w))
    return ''.join(out)
