# -*- coding: utf-8 -*-
# Copyright: podnet.fabric contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The lab's EC2 endpoint: moto in server mode on 127.0.0.1, with what ENI mode's tests, bench and lab
need around it. Not used by any playbook run against AWS.

Run: python plugins/plugin_utils/ec2_emulator.py [--port 0]  (prints {"port": N} once it listens;
end it by its PID). It needs moto[server] (requirements.txt), imported only here and only when serving.

On top of moto (5.x):
- requests are served one at a time: moto's backends are plain dicts mutated by a threaded server;
- ModifyNetworkInterfaceAttribute honours Attachment.DeleteOnTermination (moto ignores it, so a
  correct client would never converge against it);
- CreateNetworkInterface honours ClientToken as EC2 does (moto ignores it): a repeated token gets the
  first answer, the same ENI, instead of a second one;
- an ENI address is never handed out twice (moto draws them at random, and an ENI could get one twice);
- fault injection, in the server so that it reaches every client process (an ansible-playbook run and
  its forks, not only a test's own process) and so that the client's whole retry path runs (botocore's
  standard retry mode, then eni_cloud's backoff), which a botocore event hook inside the client would
  short-circuit: POST /podnet-emulator/faults with a JSON list of rules
  {"action": "AttachNetworkInterface" | "*", "code": "RequestLimitExceeded", "status": 503,
   "times": 3, "skip": 0, "param": "Ipv4PrefixCount"} (answer the action's next `times` requests
  that carry `param`, if given, after `skip` of them, with that error) or {"action": ..., "hold": 30,
  "after": {"action": "CreateNetworkInterface", "count": 2}, "drop": true} (once `count` such
  requests were answered, hold each request of `action` for up to `hold` seconds, or until the rules
  are replaced: a window in which a test can kill the client; with `drop` the held request is then
  answered with an error instead of being served, as if it never reached EC2);
- GET /podnet-emulator/stats: {"requests": {action: n}, "faults": {action: n}, "held": n, "seconds":
  {action: time spent serving}};
  POST /podnet-emulator/stats/reset.
moto's own POST /moto-api/reset empties every backend.

seed() creates a lab VPC, subnets and one instance per node through any EC2 client (tests, bench).
"""
from __future__ import absolute_import, division, print_function

__metaclass__ = type

import argparse
import io
import json
import sys
import threading
import time
import uuid
from urllib.parse import parse_qs

_ERROR_XML = ('<?xml version="1.0" encoding="UTF-8"?>\n<Response><Errors><Error><Code>%s</Code>'
              '<Message>%s</Message></Error></Errors><RequestID>%s</RequestID></Response>')
_MESSAGES = {'RequestLimitExceeded': 'Request limit exceeded.',
             'InsufficientFreeAddressesInSubnet': 'There are not enough free addresses in the subnet.',
             'InsufficientPrefixesInSubnet': 'There are not enough free prefixes in the subnet.'}


class Emulator(object):
    """WSGI app: moto's, serialized, with the control endpoints and faults above."""

    def __init__(self, app):
        self.app = app
        self.lock = threading.Lock()          # one moto request at a time
        self.state = threading.Condition()    # guards rules and counters; notified on changes
        self.rules = []
        self.requests = {}
        self.faults = {}
        self.held = 0
        self.seconds = {}
        self.tokens = {}                      # CreateNetworkInterface ClientToken -> the first answer

    def _json(self, start_response, doc, status='200 OK'):
        body = json.dumps(doc).encode()
        start_response(status, [('Content-Type', 'application/json'), ('Content-Length', str(len(body)))])
        return [body]

    def _control(self, environ, start_response, path, body):
        with self.state:
            if path == '/podnet-emulator/faults' and environ['REQUEST_METHOD'] == 'POST':
                rules = json.loads(body.decode() or '[]')
                self.rules = [dict(r, _seen=0, _hit=0) for r in rules]
                self.state.notify_all()
                return self._json(start_response, {'rules': len(self.rules)})
            if path == '/podnet-emulator/stats/reset':
                self.requests, self.faults, self.held, self.seconds = {}, {}, 0, {}
                return self._json(start_response, {})
            if path == '/podnet-emulator/stats':
                return self._json(start_response, {'requests': dict(self.requests), 'faults': dict(self.faults),
                                                   'held': self.held, 'seconds': dict(self.seconds)})
        return self._json(start_response, {'error': 'unknown path %s' % path}, '404 Not Found')

    def _fault(self, action, params):
        """The error to answer with, or None; holds the request first when a hold rule says so."""
        with self.state:
            for rule in self.rules:
                if rule.get('action') not in ('*', action) or 'hold' not in rule:
                    continue
                after = rule.get('after') or {}
                if self.requests.get(after.get('action'), 0) < int(after.get('count', 0)):
                    continue
                deadline = time.monotonic() + float(rule['hold'])
                self.held += 1
                self.state.notify_all()
                rules = self.rules
                while self.rules is rules and time.monotonic() < deadline:
                    self.state.wait(deadline - time.monotonic())
                if rule.get('drop'):
                    # the client was killed while its request waited: the request never reaches EC2
                    return {'code': 'RequestDropped', 'status': 503}
                break
            for rule in self.rules:
                if rule.get('action') not in ('*', action) or 'code' not in rule:
                    continue
                if rule.get('param') and rule['param'] not in params:
                    continue
                rule['_seen'] += 1
                if rule['_seen'] <= int(rule.get('skip', 0)) or rule['_hit'] >= int(rule.get('times', 1)):
                    continue
                rule['_hit'] += 1
                self.faults[action] = self.faults.get(action, 0) + 1
                return rule
        return None

    def __call__(self, environ, start_response):
        path = environ.get('PATH_INFO') or '/'
        length = int(environ.get('CONTENT_LENGTH') or 0)
        body = environ['wsgi.input'].read(length) if length else b''
        environ['wsgi.input'] = io.BytesIO(body)
        if path.startswith('/podnet-emulator/'):
            return self._control(environ, start_response, path, body)
        if path.startswith('/moto-api/reset'):
            _HANDED.clear()
        params = parse_qs(body.decode('utf-8', 'replace')) if body else parse_qs(environ.get('QUERY_STRING') or '')
        action = (params.get('Action') or [''])[0]
        if action:
            rule = self._fault(action, params)
            if rule is not None:
                code = rule['code']
                data = (_ERROR_XML % (code, _MESSAGES.get(code, code), uuid.uuid4())).encode()
                status = int(rule.get('status') or (503 if code == 'RequestLimitExceeded' else 400))
                start_response('%d %s' % (status, 'Service Unavailable' if status == 503 else 'Bad Request'),
                               [('Content-Type', 'text/xml'), ('Content-Length', str(len(data)))])
                return [data]
        token = (params.get('ClientToken') or [''])[0] if action == 'CreateNetworkInterface' else ''
        with self.lock:
            started = time.perf_counter()
            if token and token in self.tokens:
                status, headers, out = self.tokens[token]
                start_response(status, headers)
            else:
                seen = {}

                def keep(status, headers, exc_info=None):
                    seen['status'], seen['headers'] = status, headers
                    return start_response(status, headers, exc_info) if exc_info else start_response(status, headers)
                out = list(self.app(environ, keep))
                if token and seen.get('status', '').startswith('200'):
                    self.tokens[token] = (seen['status'], seen['headers'], out)
            took = time.perf_counter() - started
        if action:
            with self.state:
                self.requests[action] = self.requests.get(action, 0) + 1
                self.seconds[action] = self.seconds.get(action, 0.0) + took
                self.state.notify_all()
        return out


_HANDED = set()     # IPv4 addresses given to ENIs since the last /moto-api/reset


def _patch_moto():
    """ModifyNetworkInterfaceAttribute: moto drops Attachment.DeleteOnTermination; keep it. ENI addresses:
    moto draws each at random with no check, so an ENI can get one address twice (then it holds one fewer
    than asked, and a client that counts right asks again on every run): never hand one out twice."""
    from moto.ec2.models import elastic_network_interfaces as models
    from moto.ec2.responses import elastic_network_interfaces as responses
    cls = responses.ElasticNetworkInterfaces
    if getattr(cls, '_podnet_patched', False):
        return
    draw = models.random_private_ip

    def unique_private_ip(cidr=None, ipv6=False):
        ip = draw(cidr, ipv6)
        for _attempt in range(10000):
            if ipv6 or not cidr or ip not in _HANDED:
                break
            ip = draw(cidr, ipv6)
        _HANDED.add(ip)
        return ip
    models.random_private_ip = unique_private_ip
    original = cls.modify_network_interface_attribute

    def modify_network_interface_attribute(self):
        value = self._get_param('Attachment.DeleteOnTermination')
        if value is not None:
            eni = self.ec2_backend.get_network_interface(self._get_param('NetworkInterfaceId'))
            eni.delete_on_termination = str(value).lower() == 'true'
        return original(self)
    cls.modify_network_interface_attribute = modify_network_interface_attribute
    cls._podnet_patched = True


def make_app():
    from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app
    _patch_moto()
    return Emulator(DomainDispatcherApplication(create_backend_app))


def serve(host='127.0.0.1', port=0, out=None):
    import logging
    from werkzeug.serving import make_server
    from moto.moto_server.werkzeug_app import MotoRequestHandler
    logging.getLogger('werkzeug').setLevel(logging.ERROR)
    server = make_server(host, port, make_app(), threaded=True, request_handler=MotoRequestHandler)
    (out or sys.stdout).write(json.dumps({'port': server.port}) + '\n')
    (out or sys.stdout).flush()
    server.serve_forever()


# ------------------------------------------------------------------------- seeding a lab VPC

def seed(ec2, nodes, vpc_cidr='10.20.0.0/16', subnets=None, az=None, image='ami-12c6146b'):
    """A VPC, subnets and one running instance per node, each with its primary ENI in the first subnet.

    nodes: {host: instance type}; subnets: [{'cidr', 'tags'}] (default one /20 at the VPC's start).
    Returns {'vpc_id', 'az', 'subnets': [ids], 'instances': {host: instance id}, 'security_group':
    the VPC's default group}."""
    az = az or ec2.meta.region_name + 'a'
    vpc = ec2.create_vpc(CidrBlock=vpc_cidr)['Vpc']['VpcId']
    ids = []
    for sn in subnets or [{'cidr': vpc_cidr.rsplit('.', 2)[0] + '.0.0/20'}]:
        kwargs = {'VpcId': vpc, 'CidrBlock': sn['cidr'], 'AvailabilityZone': sn.get('az') or az}
        if sn.get('tags'):
            kwargs['TagSpecifications'] = [{'ResourceType': 'subnet',
                                            'Tags': [{'Key': k, 'Value': v} for k, v in sn['tags'].items()]}]
        ids.append(ec2.create_subnet(**kwargs)['Subnet']['SubnetId'])
    by_type = {}
    for host in nodes:
        by_type.setdefault(nodes[host], []).append(host)
    instances = {}
    for itype, hosts in sorted(by_type.items()):
        got = ec2.run_instances(ImageId=image, MinCount=len(hosts), MaxCount=len(hosts), InstanceType=itype,
                                SubnetId=ids[0])['Instances']
        for host, inst in zip(hosts, got):
            instances[host] = inst['InstanceId']
    group = ec2.describe_security_groups(Filters=[{'Name': 'vpc-id', 'Values': [vpc]},
                                                  {'Name': 'group-name', 'Values': ['default']}])['SecurityGroups']
    return {'vpc_id': vpc, 'az': az, 'subnets': ids, 'instances': instances,
            'security_group': group[0]['GroupId'] if group else None}


def main(argv=None):
    ap = argparse.ArgumentParser(description='the lab EC2 endpoint (moto server + faults), on loopback')
    ap.add_argument('--host', default='127.0.0.1')
    ap.add_argument('--port', type=int, default=0)
    args = ap.parse_args(argv)
    if args.host not in ('127.0.0.1', 'localhost', '::1'):
        ap.error('the lab endpoint listens on loopback only')
    serve(args.host, args.port)
    return 0


if __name__ == '__main__':
    sys.exit(main())
