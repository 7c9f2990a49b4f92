# -*- coding: utf-8 -*-
# Copyright: podnet.fabric contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Pure IPAM logic for every mode (DESIGN.md section 6), split by concern. Nodes receive only what
their modules import from here: ``cidr`` (blocks, sizes, router IPs), ``lease`` (the node's lease
and what follows from it), ``endpoints`` (the node's endpoint-IP store). The controller's planners
(allocation per mode, the ledger rebuild, the utilization report) are in
``plugins/plugin_utils/ipam_plan.py``, which nodes never receive."""
from __future__ import absolute_import, division, print_function

__metaclass__ = type
