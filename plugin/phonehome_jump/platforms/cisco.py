"""Cisco IOS / IOS-XE / IOS-XR and NX-OS: ``host>``, ``host#``, ``host(config-if)#``."""

from __future__ import annotations

from .base import Mode, Platform, cisco_like

_MODES = (Mode("config", r"{base}\(conf[^)\n]*\)#[ \t]?"),
          Mode("enable", r"{base}#[ \t]?"),
          Mode("exec", r"{base}>[ \t]?"))

IOS = Platform(
    name="cisco_ios",
    device_types=("cisco_ios", "cisco_xe", "cisco_ios_telnet", "cisco_xr", "cisco_asa",
                  "cisco_s300", "cisco_ftd"),
    prompt=cisco_like(),
    modes=_MODES,
    errors=(r"^[ \t]*% ?(?:Invalid input|Incomplete command|Ambiguous command|Unknown command"
            r"|Unrecognized command|Bad |Error|Invalid )",),
    enable="enable", config_enter="configure terminal", config_exit="end",
    config_from=("enable",),
    notes="IOS/IOS-XE; exec (>) → enable (#, with the enable secret) → config ((config)#)",
)

NXOS = Platform(
    name="cisco_nxos",
    device_types=("cisco_nxos",),
    prompt=cisco_like(),
    modes=_MODES,
    errors=(r"^[ \t]*% ?(?:Invalid (?:command|input|parameter)|Incomplete command"
            r"|Ambiguous command|Permission denied)",
            r"^[ \t]*Syntax error while parsing"),
    enable="enable", config_enter="configure terminal", config_exit="end",
    notes="NX-OS logs in at #; config ((config)#) and back with end",
)
