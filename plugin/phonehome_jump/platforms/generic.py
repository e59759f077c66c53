"""The fallback for device types nobody described here: it must hold anyway.

The prompt is the device's base prompt (as netmiko's session preparation found it) with up to
a few characters around it (``<``, ``[``, ``user@``, ``(config)``) and a usual terminator,
as the last line of the stream. Errors: the markers most network OSes share.
"""

from __future__ import annotations

from .base import Mode, Platform

GENERIC = Platform(
    name="generic",
    device_types=(),
    prompt=r"[^\n]{0,12}?{base}[^\n]{0,60}?[>#$%\]:][ \t]?",
    modes=(Mode("config", r".*(?:\(conf[^)\n]*\)[#>]|\[[^\]\n]*\])[ \t]?"),
           Mode("enable", r".*#[ \t]?"), Mode("exec", r".*")),
    context=(),
    errors=(r"^[ \t]*% ?(?:Invalid|Incomplete|Ambiguous|Unknown|Unrecognized|Bad|Error)",
            r"^[ \t]*(?:Error:|syntax error|unknown command)"),
    enable="enable", config_enter="configure terminal", config_exit="end",
    notes="any other netmiko device_type: prompt around netmiko's base prompt",
)
