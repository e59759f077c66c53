"""Huawei VRP: ``<host>`` in user view, ``[host]`` / ``[host-GigabitEthernet0/0/1]`` in system view.

netmiko's base prompt drops the brackets, so the prompt is matched with them around it.
"""

from __future__ import annotations

from .base import Mode, Platform

VRP = Platform(
    name="huawei_vrp",
    device_types=("huawei", "huawei_vrp", "huawei_vrpv8", "huawei_smartax", "huawei_olt"),
    prompt=r"(?:<{base}>|\[~?\*?{base}(?:-[^\]\n]{1,60})?\])[ \t]?",
    modes=(Mode("system-view", r"\[~?\*?{base}(?:-[^\]\n]{1,60})?\]"), Mode("user-view", r"<{base}>")),
    errors=(r"^[ \t]*Error:", r"^[ \t]*% ?(?:Unrecognized|Incomplete|Wrong|Too many)"),
    pager=r"-{2,4} ?More ?-{2,4}",
    config_enter="system-view", config_exit="return",
    notes="user view (<host>) → system-view ([host]) → return",
)
