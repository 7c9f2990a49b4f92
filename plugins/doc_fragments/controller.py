# -*- coding: utf-8 -*-
# Copyright: podnet.fabric contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import absolute_import, division, print_function

__metaclass__ = type


class ModuleDocFragment(object):
    # The controller-only actions (validate, ipam_allocate, ipam_rebuild, ipam_report, datapath_plan):
    # they run on the controller and never connect to a node.
    DOCUMENTATION = r'''
attributes:
  action:
    support: full
    description: Runs on the controller as an action plugin; it never connects to a node.
'''

    # Those that work from the validated model (podnet.fabric.controller.model).
    MODEL = r'''
options:
  model:
    description: The validated model; defaults to the fact C(podnet_model) of C(localhost).
    type: dict
'''
