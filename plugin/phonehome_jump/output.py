"""What a command printed: the run's output buffer and the result handed to callers.

The session feeds text in as it arrives; callers get :class:`CommandResult` pages of it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

DEFAULT_CAP = 16_000          # characters returned per result before head/tail capping


@dataclass
class CommandResult:
    """What one command (or interaction) produced so far. Offsets count characters of output."""

    command: str | None
    output: str
    exit_status: int | None
    running: bool
    cwd: str | None
    duration: float
    offset: int = 0                  # where ``output`` starts in the command's whole output
    total: int = 0                   # characters of output so far
    next_offset: int = 0             # pass to read(offset=) to continue paging
    truncated: bool = False
    omitted: tuple[int, int] | None = None   # [start, end) left out of ``output``
    awaiting_input: bool = False     # the output ends in something that asks for input

    def to_dict(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        d["omitted"] = list(self.omitted) if self.omitted else None
        return d


@dataclass
class _Run:
    """Output of the command currently (or last) on the wire."""

    command: str | None
    started: float
    chunks: list[str] = field(default_factory=list)
    length: int = 0
    tail: str = ""                   # last characters, where the prompt is searched
    delivered: int = 0               # characters already returned to the caller
    answered: int = 0                # output length when a line or control key was last typed
    exit_status: int | None = None
    cwd: str | None = None
    done: bool = False
    ended: float | None = None
    _text: str | None = None

    def text(self) -> str:
        if self._text is None or len(self._text) != self.length:
            self._text = "".join(self.chunks)
            self.chunks = [self._text]
        return self._text
