"""Structured output: a command's output parsed into rows with TextFSM and ntc-templates.

Both come with netmiko. The ntc-templates index picks the template by platform and command
(abbreviations included: ``sh ip int br``); a command without a template is a clear error,
never an empty list that looks like "nothing configured".
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .errors import SessionError
from .output import CommandResult
from .platforms import ntc_platform


@dataclass
class ParseResult:
    """A command's result and its output as rows (dicts of the template's lower-case fields)."""

    result: CommandResult
    platform: str
    rows: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {**self.result.to_dict(), "platform": self.platform, "parsed": self.rows}


def parse_text(device_type: str, command: str, output: str, *, host: str | None = None) -> tuple[str, list[dict[str, Any]]]:
    """Rows for ``output`` of ``command`` on ``device_type``; SessionError when no template fits."""
    from ntc_templates.parse import ParsingException, parse_output   # heavy: only when parsing

    platform = ntc_platform(device_type)
    try:
        rows = parse_output(platform=platform, command=command.strip(), data=output)
    except ParsingException as exc:
        if "No template found" in str(exc):
            raise SessionError(f"no template for {platform} {command.strip()!r}",
                               where=f"host {host!r}" if host else None,
                               hint="ntc-templates has no parser for this command on this "
                                    "platform: use the plain output, or a command it knows "
                                    "(its templates/index lists them)") from None
        raise SessionError(f"the {platform} template for {command.strip()!r} could not parse "
                           f"the output: {exc}", where=f"host {host!r}" if host else None,
                           hint="compare the output with the template; a device's version may "
                                "print it differently") from None
    return platform, [dict(r) for r in rows]


def parse_result(device_type: str, result: CommandResult, *, host: str | None = None) -> ParseResult:
    """Parse a finished command's result; a command still running or that failed is an error."""
    if result.running:
        raise SessionError(f"{result.command!r} is still running: nothing to parse yet",
                           where=f"host {host!r}" if host else None,
                           hint="read it to its end, or run it again with a longer wait")
    if result.error_detected:
        raise SessionError(f"the device reported an error for {result.command!r}: {result.error}",
                           where=f"host {host!r}" if host else None,
                           hint="fix the command; the output is an error message, not data")
    platform, rows = parse_text(device_type, result.command or "", result.output, host=host)
    return ParseResult(result, platform, rows)
