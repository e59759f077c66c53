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
