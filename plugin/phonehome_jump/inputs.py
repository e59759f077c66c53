"""Checks on what callers and users type: text that can be sent, numbers that make sense.

Every entry point (MCP, the agent, the CLI, workflows, inventory files) goes through the same
checks, so a bad value gets one clear error before anything is sent and nothing is left half
done (a session is never left "running" by a write that could not be encoded).

* Text: a lone surrogate (half of a UTF-16 pair, e.g. JSON ``"\\ud800"``), a byte that is not
  UTF-8 (the CLI receives it as ``\\udcXX``), or U+FFFD (what a transport puts where it got
  either) cannot be typed at a remote shell as the caller meant it: refused, naming the
  parameter and the position.
* Numbers: finite, in range, and never ``true``/``false`` (YAML and JSON booleans are not
  numbers: ``port: true`` used to be taken as port 1).
"""

from __future__ import annotations

import argparse
import math
import re
from typing import Annotated, Any

from pydantic import BeforeValidator, Field

from .errors import InputError

__all__ = ["MAX_SECONDS", "Whole", "Seconds", "check_text", "no_bool", "repair_json_line",
           "seconds_arg", "count_arg"]

MAX_SECONDS = 7 * 86400     # a week: the longest wait or timeout anything accepts
REPLACEMENT = "\ufffd"


# --------------------------------------------------------------------------- text

def check_text(value: Any, name: str, *, where: str | None = None) -> Any:
    """``value`` unchanged if it is text that can be sent as UTF-8 (or not a str); else InputError.

    The message never contains the offending character itself (it would break the reply).
    """
    if not isinstance(value, str):
        return value
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        code = ord(value[exc.start])
        what = (f"the byte 0x{code - 0xDC00:02x}, which is not UTF-8," if 0xDC80 <= code <= 0xDCFF
                else f"a lone surrogate U+{code:04X} (half of a UTF-16 pair)")
        raise InputError(f"{name} contains {what} at character {exc.start}: it cannot be sent "
                         "as text", where=where,
                         hint="pass valid Unicode text; to produce raw bytes on the remote side, "
                              "write them as escapes (printf '\\xff')") from None
    if REPLACEMENT in value:
        raise InputError(f"{name} contains U+FFFD (the replacement character) at character "
                         f"{value.index(REPLACEMENT)}: the client sent a lone surrogate or bytes "
                         "that are not UTF-8, which were replaced", where=where,
                         hint="pass valid Unicode text; to produce raw bytes on the remote side, "
                              "write them as escapes (printf '\\xff')")
    return value


_JSON_ESCAPES = re.compile(r"\\\\|\\u[dD][89abAB][0-9a-fA-F]{2}\\u[dD][c-fC-F][0-9a-fA-F]{2}"
                           r"|\\u[dD][89a-fA-F][0-9a-fA-F]{2}")


def repair_json_line(line: str) -> str:
    """A JSON text with every lone surrogate escape (``\\ud800`` without its pair) replaced by
    ``\\ufffd``: the message parses, so the server can answer it with a clear error instead of
    dropping a request it cannot parse (valid pairs and escaped backslashes are kept)."""
    if "\\u" not in line:
        return line

    def fix(m: re.Match[str]) -> str:
        token = m.group()
        return token if len(token) != 6 else "\\ufffd"     # 2: "\\\\", 12: a valid pair
    return _JSON_ESCAPES.sub(fix, line)


# --------------------------------------------------------------------------- numbers

def no_bool(value: Any) -> Any:
    """pydantic BeforeValidator: true/false are not numbers (lax mode would take true as 1)."""
    if isinstance(value, bool):
        raise ValueError(f"must be a number, not {str(value).lower()}")
    return value


def finite(value: Any) -> Any:
    """pydantic BeforeValidator: no .inf / .nan (before range checks, for a clear message)."""
    value = no_bool(value)
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"must be a finite number, not {value}")
    return value


Whole = Annotated[int, BeforeValidator(no_bool)]
Seconds = Annotated[float, BeforeValidator(finite), Field(allow_inf_nan=False)]


def seconds_arg(text: str) -> float:
    """argparse type: seconds, more than 0, finite, at most a week."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number of seconds, not {text!r}")
    if not value > 0:
        raise argparse.ArgumentTypeError("must be more than 0 seconds")
    if value > MAX_SECONDS:
        raise argparse.ArgumentTypeError(f"must be at most {MAX_SECONDS} seconds (a week), "
                                         f"not {text}")
    return value


def count_arg(low: int, high: int) -> Any:
    """argparse type: a whole number in [low, high]."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must be from {low} to {high}, not {value}")
        return value
    parse.__name__ = "count"
    return parse
