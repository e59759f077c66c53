"""What a platform family's CLI looks like: prompts, modes, context lines, errors, paging.

Pure data and small pure functions (no I/O): the native framing in ``framing.py`` asks a
:class:`Platform` how to recognise the prompt, and the session asks it how to change mode.
One module per family (``cisco``, ``arista``, ``juniper``, ``huawei``, ``hp``) builds one
of these; ``generic`` is the fallback for device types nobody described.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Mode:
    """A CLI mode, recognised by its prompt (the first mode whose pattern matches wins)."""

    name: str                     # exec | enable | config | system-view | ...
    prompt: str                   # regex on the whole prompt line; {base} = escaped base prompt


@dataclass(frozen=True)
class Platform:
    """A network OS family: everything the framing and the mode helpers need to know."""

    name: str
    device_types: tuple[str, ...]
    #: regex of one prompt line (any mode), ``{base}`` = the escaped base prompt; no anchors
    prompt: str
    modes: tuple[Mode, ...]
    #: lines the device prints between a command's output and its prompt ([edit], {master:0})
    context: tuple[str, ...] = ()
    #: regexes (MULTILINE) of the device's error markers in a command's output
    errors: tuple[str, ...] = (r"^% ?(?:Invalid|Incomplete|Ambiguous|Unknown|Unrecognized|Error)",)
    #: pager prompts the device may print despite paging being off, and the key that continues
    pager: str = r"(?:-+ ?\(?more(?: \d+%)?\)? ?-+|<--- More --->|--More--)"
    pager_key: str = " "
    enable: str | None = None          # command into the privileged mode (needs the secret)
    enable_mode: str = "enable"
    config_enter: str | None = None    # command into configuration mode
    config_exit: str | None = None     # back to the mode before it
    commit: str | None = None          # platforms whose config takes effect on commit
    discard: str | None = None         # drop an uncommitted candidate (after a failed line)
    config_modes: tuple[str, ...] = ("config", "system-view")
    #: modes from which config_enter works (empty: any)
    config_from: tuple[str, ...] = ()
    notes: str = ""
    _compiled: dict[str, re.Pattern[str]] = field(default_factory=dict, compare=False, repr=False)

    # -- compiled patterns, per base prompt ---------------------------------------------
    def _re(self, key: str, text: str, flags: int = 0) -> re.Pattern[str]:
        pat = self._compiled.get(key)
        if pat is None:
            pat = self._compiled[key] = re.compile(text, flags)
        return pat

    def prompt_line(self, base: str) -> re.Pattern[str]:
        """One whole prompt line of this device (any mode)."""
        return self._re("line:" + base, r"(?:" + self.prompt.replace("{base}", re.escape(base)) + r")")

    def prompt_at_end(self, base: str) -> re.Pattern[str]:
        """The prompt as the last line of the stream: optional context lines, then the prompt.

        Group ``ctx`` is the context block (with the blank line the device prints before
        it), group ``prompt`` the prompt line. Anchored at the end: a prompt-looking line in
        the middle of output (followed by more text) never matches.
        """
        ctx = ""
        if self.context:
            ctx = r"(?P<ctx>\n?(?:(?:" + "|".join(self.context) + r")+[ \t]*\n)+)?"
        body = self.prompt.replace("{base}", re.escape(base))
        return self._re("end:" + base, r"(?:\A|\n)" + ctx + r"(?P<prompt>" + body + r")\Z")

    def mode_of(self, prompt: str, base: str) -> str | None:
        for mode in self.modes:
            if re.fullmatch(mode.prompt.replace("{base}", re.escape(base)), prompt.strip()):
                return mode.name
        return None

    def in_config(self, mode: str | None) -> bool:
        return mode in self.config_modes

    def error_in(self, output: str) -> str | None:
        """The first line of ``output`` that carries one of the device's error markers."""
        for pattern in self.errors:
            m = self._re("err:" + pattern, pattern, re.MULTILINE).search(output)
            if m:
                start = output.rfind("\n", 0, m.start()) + 1
                end = output.find("\n", m.end())
                return output[start:end if end >= 0 else None].strip()
        return None

    def pager_at_end(self) -> re.Pattern[str]:
        return self._re("pager", r"[ \t]*(?:" + self.pager + r")[ \t]*\Z", re.IGNORECASE)


def cisco_like(base_open: str = "", base_close: str = "") -> str:
    """``host>``, ``host#``, ``host(config)#``, ``host(config-if)#`` (IOS, EOS, NX-OS, ...)."""
    return base_open + r"{base}(?:\([\w.:/ -]{1,40}\))?[>#]" + base_close + r"[ \t]?"
