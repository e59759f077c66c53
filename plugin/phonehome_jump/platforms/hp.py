"""HPE Comware (H3C): ``<host>`` user view, ``[host]`` system view, ``%`` error lines."""

from __future__ import annotations

from .base import Mode, Platform

COMWARE = Platform(
    name="hp_comware",
    device_types=("hp_comware",),
    prompt=r"(?:<{base}>|\[{base}(?:-[^\]\n]{1,60})?\])[ \t]?",
    modes=(Mode("system-view", r"\[{base}(?:-[^\]\n]{1,60})?\]"), Mode("user-view", r"<{base}>")),
    errors=(r"^[ \t]*% ?(?:Unrecognized command|Incomplete command|Too many parameters"
            r"|Wrong parameter|Ambiguous command)",),
    pager=r"-{2,4} ?More ?-{2,4}",
    config_enter="system-view", config_exit="return",
    notes="user view (<host>) → system-view ([host]) → return",
)
