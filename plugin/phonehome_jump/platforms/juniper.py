"""Juniper Junos: ``user@host>`` / ``user@host#``, context lines, candidate config + commit.

Junos prints context lines between a command's output and the next prompt: ``[edit]``
(and ``[edit interfaces ge-0/0/0]``) in configuration mode, ``{master:0}`` /
``{backup:1}`` / ``{primary:node0}`` on a virtual chassis or cluster, each after a blank
line. They belong to the prompt, not to the output.
"""

from __future__ import annotations

from .base import Mode, Platform

JUNOS = Platform(
    name="juniper_junos",
    device_types=("juniper_junos", "juniper"),
    prompt=r"{base}[>#%][ \t]?",
    modes=(Mode("config", r"{base}#"), Mode("exec", r"{base}>"), Mode("shell", r"{base}%")),
    context=(r"\[edit(?: [^\]\n]*)?\]",
             r"\{(?:master|backup|linecard|primary|secondary|hold|ineligible)(?::[\w-]+)*\}"),
    errors=(r"^[ \t]*(?:error:|syntax error|unknown command|missing argument|invalid (?:value|"
            r"command|interface|ip address|numeric value)|unknown keyword)",),
    pager=r"---\(more(?: \d+%)?\)---",
    config_enter="configure", config_exit="exit configuration-mode", commit="commit", discard="rollback 0",
    notes="operational (>) → configure (#, [edit]) → commit → exit configuration-mode",
)
