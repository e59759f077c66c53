"""Arista EOS: IOS-like prompts and modes, its own error wording."""

from __future__ import annotations

from .base import Mode, Platform, cisco_like

EOS = Platform(
    name="arista_eos",
    device_types=("arista_eos",),
    prompt=cisco_like(),
    modes=(Mode("config", r"{base}\(conf[^)\n]*\)#[ \t]?"),
           Mode("enable", r"{base}#[ \t]?"),
           Mode("exec", r"{base}>[ \t]?")),
    errors=(r"^[ \t]*% ?(?:Invalid input|Incomplete command|Ambiguous command"
            r"|Unavailable command|Unrecognized command|Error)",),
    enable="enable", config_enter="configure terminal", config_exit="end",
    config_from=("enable",),
    notes="exec (>) → enable (#) → config ((config)#)",
)
