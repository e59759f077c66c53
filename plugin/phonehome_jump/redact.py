"""Secret masking for every text that leaves the plugin.

A secret becomes a value in exactly two places: :meth:`SecretRef.resolve` (passwords,
passphrases, sudo answers read from env:/file:) and a send marked ``secret``. Both register
the value here, so every output path — results, CLI output, logs, audit records, transcripts,
reports, the agent's state file — masks it with the same process-wide set, whichever session
or entry point produced the text.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

MASK = "********"
log = logging.getLogger(__name__)


class Redactor:
    """A thread-safe set of secret values and the masking that uses it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._values: tuple[str, ...] = ()

    def add(self, value: str | None) -> None:
        if not value:
            return
        if len(value) < 4 and value not in self._values:
            # masked everywhere from now on: a short "secret" (a y/n answer marked secret by
            # mistake) would star out that text in every session's output
            log.warning("a secret of %d characters was registered: every occurrence of it is "
                        "masked from now on; mark only real secrets (passwords) as secret",
                        len(value))
        with self._lock:
            if value not in self._values:
                # longest first: a secret that contains another is masked whole
                self._values = tuple(sorted((*self._values, value), key=len, reverse=True))

    def mask(self, text: str, *, keep_length: bool = False) -> str:
        """``text`` with each secret replaced by ``MASK`` (or by as many stars, so offsets hold)."""
        for value in self._values:
            if value in text:
                text = text.replace(value, "*" * len(value) if keep_length else MASK)
        return text

    @property
    def longest(self) -> int:
        """Length of the longest secret (0 without secrets): the context a slice needs."""
        values = self._values
        return len(values[0]) if values else 0

    def mask_slice(self, text: str, lo: int = 0, hi: int | None = None) -> str:
        """``text[lo:hi]`` with every character that lies in an occurrence of a secret *in the
        whole of* ``text`` starred out (same length, so offsets hold).

        Only ``longest - 1`` characters either side of the slice are looked at, so a caller
        that passes that much context around a page or a chunk masks it exactly as if the
        whole output had been masked at once: linear in the slice, whatever the output's size.
        Overlapping occurrences are all masked (the union), so the result does not depend on
        where a page starts.
        """
        hi = len(text) if hi is None else min(hi, len(text))
        values = self._values
        if not values or lo >= hi:
            return text[lo:hi]
        a, b = max(0, lo - len(values[0]) + 1), min(len(text), hi + len(values[0]) - 1)
        spans: list[tuple[int, int]] = []
        for value in values:
            i = text.find(value, a, b)
            while i != -1:
                if i + len(value) > lo and i < hi:
                    spans.append((max(i, lo), min(i + len(value), hi)))
                i = text.find(value, i + 1, b)
        if not spans:
            return text[lo:hi]
        spans.sort()
        out, pos = [], lo
        for s, e in spans:
            if e <= pos:
                continue
            s = max(s, pos)
            out.append(text[pos:s])
            out.append("*" * (e - s))
            pos = e
        out.append(text[pos:hi])
        return "".join(out)

    def pending(self, text: str) -> int:
        """How many characters at the end of ``text`` could be the start of a secret.

        Output that is still arriving holds those back (they are delivered, masked or not,
        once the next characters show whether a secret follows), so a secret split across
        two reads is never half shown.
        """
        best = 0
        for value in self._values:
            for k in range(min(len(value) - 1, len(text)), best, -1):
                if text.endswith(value[:k]):
                    best = k
                    break
        return best

    def mask_data(self, data: Any) -> Any:
        """Mask every string inside JSON-like data (dicts, lists, tuples)."""
        if isinstance(data, str):
            return self.mask(data)
        if isinstance(data, dict):
            return {k: self.mask_data(v) for k, v in data.items()}
        if isinstance(data, (list, tuple)):
            return [self.mask_data(v) for v in data]
        return data

    def __contains__(self, value: object) -> bool:
        return value in self._values


#: The process-wide set every module masks with.
REDACTOR = Redactor()
add_secret = REDACTOR.add
mask = REDACTOR.mask


class RedactingFilter(logging.Filter):
    """Masks secrets in a record's final message; attach it to every handler we install."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:       # a broken format string is logging's problem, not ours
            return True
        masked = REDACTOR.mask(message)
        if masked != message or record.args:
            record.msg, record.args = masked, None
        if record.exc_info and not record.exc_text:
            record.exc_text = REDACTOR.mask(logging.Formatter().formatException(record.exc_info))
        elif record.exc_text:
            record.exc_text = REDACTOR.mask(record.exc_text)
        return True
