"""Regular expressions that callers supply (``until``, workflow ``assert``/``capture``/``answer``).

A caller's pattern must never freeze the process: ``(a|aa)+$`` against a line of ``a``s makes
Python's ``re`` backtrack for minutes while it holds the GIL, so every other client waits.
These patterns are therefore compiled and run by the `regex` package:

* dialect: Python's ``re`` syntax (``regex.VERSION0``, the same meaning as ``re``; braces that
  are not a repeat count stay literal, as in ``re``, rather than the package's fuzzy matching);
* at most :data:`MAX_PATTERN` characters;
* each search gives up after :data:`MATCH_TIMEOUT` seconds of processor time
  (:class:`PatternTimeoutError`; on a busy machine that is longer on the clock);
* matching releases the GIL, so other threads (other clients' calls) run meanwhile.
"""

from __future__ import annotations

from typing import Any

import regex

from .errors import PatternError, PatternTimeoutError

__all__ = ["MATCH_TIMEOUT", "MAX_PATTERN", "SafePattern", "compile_safe"]

MATCH_TIMEOUT = 1.0           # seconds one search of a caller's pattern may take
MAX_PATTERN = 2000            # characters in a caller's pattern
MULTILINE = regex.MULTILINE


class SafePattern:
    """A compiled caller pattern; ``search`` has the time limit (same use as ``re.Pattern``)."""

    __slots__ = ("_re", "pattern", "what")

    def __init__(self, compiled: Any, pattern: str, what: str) -> None:
        self._re = compiled
        self.pattern = pattern
        self.what = what          # how errors name it, e.g. "'until' pattern"

    @property
    def groups(self) -> int:
        return int(self._re.groups)

    def search(self, text: str) -> Any:
        """``regex.Match`` or None; PatternTimeoutError after :data:`MATCH_TIMEOUT` seconds."""
        try:
            return self._re.search(text, timeout=MATCH_TIMEOUT)
        except TimeoutError:
            raise PatternTimeoutError(
                f"the {self.what} {self.pattern!r} took more than {MATCH_TIMEOUT:g}s to match "
                f"{len(text)} characters of output (catastrophic backtracking), so it was "
                "given up", hint="simplify the pattern: avoid nested or overlapping repeats "
                                 "such as (a+)+ or (a|aa)+; anchor it or match literal text") from None

    def __repr__(self) -> str:
        return f"SafePattern({self.pattern!r})"


# An escape (kept whole, \N{NAME} included), or a brace that does not start a repeat count.
_BRACES = regex.compile(r"\\N\{[^}]*\}|\\.|\{(?!\d*(?:,\d*)?\})", regex.DOTALL)


def _re_braces(pattern: str) -> str:
    """``re``'s meaning of braces: one that does not start a repeat count (``{2}``, ``{1,3}``)
    is a literal brace, while the regex package would read ``x{ip}`` as fuzzy matching."""
    if "{" not in pattern:
        return pattern
    return _BRACES.sub(lambda m: m.group() if m.group()[0] == "\\" else "\\{", pattern)


def compile_safe(pattern: str, *, what: str = "pattern", flags: int = 0) -> SafePattern:
    """Compile a caller's pattern; PatternError (naming ``what``) if it is not usable."""
    if not isinstance(pattern, str):
        raise PatternError(f"the {what} must be text, not {type(pattern).__name__}")
    if len(pattern) > MAX_PATTERN:
        err = PatternError(f"the {what} is {len(pattern)} characters long; the limit is "
                           f"{MAX_PATTERN}", hint="match a shorter, distinctive part of the text")
        err.detail = f"{len(pattern)} characters; at most {MAX_PATTERN}"
        raise err
    try:
        compiled = regex.compile(_re_braces(pattern), flags | regex.VERSION0)
    except (regex.error, ValueError, OverflowError, RecursionError) as exc:
        err = PatternError(f"invalid {what} {pattern!r}: {exc}",
                           hint="pass a Python regular expression (re syntax)")
        err.detail = str(exc)
        raise err from None
    return SafePattern(compiled, pattern, what)
