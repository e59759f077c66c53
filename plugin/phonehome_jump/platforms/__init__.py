"""Per-platform knowledge for network OSes, one module per family (scrapli's drivers are the model).

:func:`for_device_type` picks the family for a netmiko ``device_type``; anything unknown gets
:data:`generic.GENERIC`, which must hold on platforms nobody tested.
"""

from __future__ import annotations

from .arista import EOS
from .base import Mode, Platform
from .cisco import IOS, NXOS
from .generic import GENERIC
from .hp import COMWARE
from .huawei import VRP
from .juniper import JUNOS

__all__ = ["FAMILIES", "GENERIC", "Mode", "Platform", "for_device_type", "ntc_platform"]

FAMILIES: tuple[Platform, ...] = (IOS, NXOS, EOS, JUNOS, VRP, COMWARE)

_BY_TYPE = {dt: p for p in FAMILIES for dt in p.device_types}

# netmiko device_type → ntc-templates platform name, where they differ
_NTC = {"huawei": "huawei_vrp", "huawei_vrpv8": "huawei_vrp", "juniper": "juniper_junos",
        "cisco_xe": "cisco_ios"}


def for_device_type(device_type: str) -> Platform:
    """The platform family of a netmiko device_type (``cisco_ios_ssh`` counts as ``cisco_ios``)."""
    base = device_type.removesuffix("_ssh").removesuffix("_telnet")
    return _BY_TYPE.get(device_type) or _BY_TYPE.get(base) or GENERIC


def ntc_platform(device_type: str) -> str:
    """The ntc-templates index's name for a device_type's platform."""
    base = device_type.removesuffix("_ssh").removesuffix("_telnet")
    return _NTC.get(base, base)
