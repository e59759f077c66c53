"""What a command printed: the run's output buffer and the result handed to callers.

The session feeds text in as it arrives; callers get :class:`CommandResult` pages of it.

Every path is linear in the output: text is appended, never re-joined; a page or the
newest text is read by offset without copying the rest; secrets are masked on the slice
read (with just enough context either side, see :meth:`Redactor.mask_slice`). Memory is
bounded: past ``memory`` characters, all but the newest 16 Ki go to a private temporary
file (unlinked at once, mode 0600, secrets starred out before they are written), and reads
come back from it by offset. Nothing is dropped, so offsets stay exact.
"""

from __future__ import annotations

import bisect
import errno
import os
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, BinaryIO

from .errors import SessionError
from .redact import REDACTOR

DEFAULT_CAP = 16_000          # characters returned per result before head/tail capping
DEFAULT_MEMORY = 4_000_000    # characters of one command's output kept in memory
ENV_MEMORY = "PHONEHOME_JUMP_OUTPUT_MEMORY"
KEEP = 16_384                 # newest characters that always stay in memory (prompt search,
                              # a prompt straddling chunks, masking context)
BLOCK = 65_536                # characters per indexed block of the spill file


def default_memory() -> int:
    """``$PHONEHOME_JUMP_OUTPUT_MEMORY`` (characters, at least 65,536) or :data:`DEFAULT_MEMORY`."""
    raw = os.environ.get(ENV_MEMORY, "").strip().replace("_", "")
    if not raw:
        return DEFAULT_MEMORY
    try:
        value = int(raw)
    except ValueError:
        raise SessionError(f"{ENV_MEMORY}={raw!r} is not a number of characters",
                           where=f"environment variable {ENV_MEMORY}",
                           hint="set it to a whole number, e.g. 4000000, or unset it") from None
    return max(value, 4 * KEEP)


class OutputBuffer:
    """One command's output: append, read any ``[a, b)`` by character offset, bounded memory."""

    def __init__(self, memory: int | None = None) -> None:
        self.memory = max(memory if memory is not None else default_memory(), 4 * KEEP)
        self.length = 0                  # characters, spilled and in memory
        self._chunks: list[str] = []     # in memory: characters [spilled, length) ...
        self._starts: list[int] = []     # ... each chunk's offset (reads join only what they need)
        self._spilled = 0                # characters [0, spilled) are in the file
        self._file: BinaryIO | None = None
        self._bytes = 0                  # bytes written to the file
        self._index: list[int] = [0]     # character offset of each block in the file ...
        self._offsets: list[int] = [0]   # ... and its byte offset
        self._lost: tuple[int, int] | None = None   # never written (disk full): honest gap
        self._lost_why = ""

    # -- writing --------------------------------------------------------------------
    def append(self, text: str) -> None:
        if not text:
            return
        self._chunks.append(text)
        self._starts.append(self.length)
        self.length += len(text)
        if self.length - self._spilled > self.memory:
            self._spill()

    def truncate(self, length: int) -> None:
        """Cut the output back to ``length`` characters (a prompt began in text stored earlier)."""
        if length >= self.length:
            return
        if length < self._spilled:      # cannot happen: KEEP covers the prompt search window
            raise ValueError("truncating into spilled output")
        i = bisect.bisect_right(self._starts, length) - 1
        if i >= 0:
            self._chunks[i] = self._chunks[i][: length - self._starts[i]]
        del self._chunks[i + 1:], self._starts[i + 1:]
        self.length = length

    def reset(self, text: str) -> None:
        """Replace the whole output (native framing's cleanup of a small output)."""
        if self._spilled:
            raise ValueError("resetting spilled output")
        self._chunks, self._starts, self.length = [], [], 0
        self.append(text)

    def drop_head(self, n: int) -> None:
        """Remove the first ``n`` characters (an echoed command line); only while in memory."""
        if n <= 0:
            return
        self.reset(self._memory(n, self.length))

    def _memory(self, a: int, b: int) -> str:
        """Characters ``[a, b)`` of the in-memory part, joining only the chunks they touch."""
        chunks, starts = self._chunks, self._starts
        i = max(bisect.bisect_right(starts, a) - 1, 0)
        j = bisect.bisect_left(starts, b)
        if j - i == 1:
            return chunks[i][a - starts[i]: b - starts[i]]
        return "".join(chunks[i:j])[a - starts[i]: b - starts[i]] if j > i else ""

    def _spill(self) -> None:
        base = self._spilled
        text = self._memory(base, self.length)
        cut = len(text) - KEEP
        if cut <= 0:
            return
        # Secrets never reach the disk. The kept part is masked too: a secret straddling the
        # cut is then starred on both sides (the next spill cannot see its start any more).
        masked = REDACTOR.mask_slice(text)
        self._chunks, self._starts = [masked[cut:]], [base + cut]
        masked = masked[:cut]
        self._spilled = base + cut
        if self._lost is not None:       # the disk failed before: keep the gap honest
            self._lost = (self._lost[0], self._spilled)
            return
        try:
            if self._file is None:
                self._file = tempfile.TemporaryFile(prefix="phj-output-", buffering=0)
            for i in range(0, len(masked), BLOCK):
                data = memoryview(masked[i:i + BLOCK].encode("utf-8", "surrogatepass"))
                written = 0
                while written < len(data):      # a raw write may be short (a filling disk)
                    n = self._file.write(data[written:])
                    if not n:
                        raise OSError(errno.ENOSPC, "nothing could be written")
                    written += n
                self._bytes += len(data)
                self._index.append(base + min(i + BLOCK, len(masked)))
                self._offsets.append(self._bytes)
        except OSError as exc:
            self._lost_why = exc.strerror or str(exc)
            done = self._index[-1]
            self._lost = (done, self._spilled)
            # the blocks after `done` were not all written: forget them
            del self._index[bisect.bisect_right(self._index, done):]
            del self._offsets[len(self._index):]

    # -- reading --------------------------------------------------------------------
    def slice(self, a: int, b: int) -> str:
        """Characters ``[a, b)`` (clamped to the output), from memory and/or the file."""
        a, b = max(0, a), min(b, self.length)
        if a >= b:
            return ""
        if a >= self._spilled:
            return self._memory(a, b)
        if self._lost is not None and a < self._lost[1] and b > self._lost[0]:
            lo, hi = self._lost
            raise SessionError(
                f"characters {lo}–{hi} of this output were lost: the temporary file it "
                f"overflows to could not be written ({self._lost_why})",
                where="output buffer",
                hint=f"read outside that range; free space in {tempfile.gettempdir()} "
                     f"or raise {ENV_MEMORY}")
        head = self._read_file(a, min(b, self._spilled))
        return head + (self._memory(self._spilled, b) if b > self._spilled else "")

    def _read_file(self, a: int, b: int) -> str:
        i = bisect.bisect_right(self._index, a) - 1
        j = bisect.bisect_left(self._index, b)
        try:
            if self._file is None:
                raise ValueError("closed")
            data = os.pread(self._file.fileno(), self._offsets[j] - self._offsets[i],
                            self._offsets[i])
        except (OSError, ValueError) as exc:   # closed with its session meanwhile
            raise SessionError("this output is no longer kept: its session was closed",
                               where="output buffer",
                               hint="read output before closing the session") from exc
        text = data.decode("utf-8", "surrogatepass")
        return text[a - self._index[i]: b - self._index[i]]

    def text(self) -> str:
        """The whole output (callers that need all of it; paging is the bounded way)."""
        return self.slice(0, self.length)

    @property
    def spilled(self) -> int:
        return self._spilled

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


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
    # network OSes (native framing): no exit status, so the platform's error markers instead
    error_detected: bool = False     # the output carries one of the platform's error markers
    error: str | None = None         # the line that carries it
    mode: str | None = None          # the CLI mode the prompt after the command shows
    prompt: str | None = None        # that prompt, exactly
    notice: str | None = None        # framing had to recover (left-overs dropped), or no echo yet

    def to_dict(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        d["omitted"] = list(self.omitted) if self.omitted else None
        return d


def pages(read: Callable[[int], CommandResult], start: int = 0,
          end: int | None = None) -> Iterator[str]:
    """Characters ``[start, end)`` of a command's output (to what has arrived, without ``end``),
    page by page: ``read(offset)`` is a ``read(offset=...)`` of the session, so one page is
    in memory at a time, however long the output."""
    pos = start
    while end is None or pos < end:
        page = read(pos)
        text = page.output if end is None else page.output[:end - page.offset]
        if text:
            yield text
        if page.next_offset <= pos or page.next_offset >= page.total:
            return
        pos = page.next_offset


def omission(a: int, b: int, hint: str = "") -> str:
    """The marker that stands for characters ``[a, b)`` left out of a shown output."""
    return f"\n[… {b - a} characters omitted ({a}–{b}){hint} …]\n"


@dataclass
class _Run:
    """Output of the command currently (or last) on the wire."""

    command: str | None
    started: float
    memory: int | None = None
    out: OutputBuffer = field(init=False)
    tail: str = ""                   # last characters, where the prompt is searched
    delivered: int = 0               # characters already returned to the caller
    answered: int = 0                # output length when a line or control key was last typed
    exit_status: int | None = None
    cwd: str | None = None
    done: bool = False
    ended: float | None = None

    def __post_init__(self) -> None:
        self.out = OutputBuffer(self.memory)

    @property
    def length(self) -> int:
        return self.out.length

    def text(self) -> str:
        return self.out.text()

    def masked(self, a: int, b: int) -> str:
        """Characters ``[a, b)`` with secrets starred out, exactly as in the whole output."""
        ctx = max(REDACTOR.longest - 1, 0)
        lo = max(0, a - ctx)
        return REDACTOR.mask_slice(self.out.slice(lo, b + ctx), a - lo, b - lo)

    def pending(self) -> int:
        """Newest characters that may begin a secret: held back while the command runs."""
        n = REDACTOR.longest
        return REDACTOR.pending(self.out.slice(self.length - n, self.length)) if n else 0
