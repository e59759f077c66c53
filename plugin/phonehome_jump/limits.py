"""Session limits and timeouts: the inventory's top-level ``limits:`` section.

The session manager reads them (idle and running timeouts, how many sessions in total, per
host and per client); ``serve`` options override them. Every value has a default, so the
section is optional.
"""

from __future__ import annotations

import argparse
from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class LimitsSpec(BaseModel):
    """How long sessions live unused and how many may be open (top-level ``limits:``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    idle_timeout: float = Field(1800.0, gt=0, description="Seconds an idle session (no command "
                                                          "running) may go without a call before "
                                                          "it is closed.")
    running_timeout: float = Field(7200.0, gt=0, description="Seconds a session whose command "
                                                             "still runs may go without a call "
                                                             "(read, send) before it is closed; "
                                                             "a forgotten `tail -f` ends here.")
    max_sessions: int = Field(100, ge=1, description="Sessions open at once on this server, "
                                                     "all clients together.")
    max_per_host: int = Field(25, ge=1, description="Sessions open at once to one host.")
    max_per_client: int = Field(20, ge=1, description="Sessions one client (MCP connection) "
                                                      "may hold at once.")


# -- the serve command's options (argparse only: the CLI imports this without the MCP SDK)

def add_limit_options(parser: argparse.ArgumentParser) -> None:
    """``serve`` options for the limits and timeouts; unset ones come from the inventory."""
    g = parser.add_argument_group("limits and timeouts (default: the inventory's limits:, "
                                  "else the defaults shown)")
    d = LimitsSpec()
    g.add_argument("--idle-timeout", type=_positive(float), metavar="S",
                   help=f"close a session idle this long (default {d.idle_timeout:g})")
    g.add_argument("--running-timeout", type=_positive(float), metavar="S",
                   help="close a session whose command runs this long without a call "
                        f"(default {d.running_timeout:g})")
    g.add_argument("--max-sessions", type=_positive(int), metavar="N",
                   help=f"sessions open at once, all clients (default {d.max_sessions})")
    g.add_argument("--max-per-host", type=_positive(int), metavar="N",
                   help=f"sessions open at once to one host (default {d.max_per_host})")
    g.add_argument("--max-per-client", type=_positive(int), metavar="N",
                   help=f"sessions one client may hold (default {d.max_per_client})")
    g.add_argument("--calls-per-client", type=_positive(int), metavar="N",
                   help="blocking calls one client may have running at once; more queue "
                        "(default 8)")
    g.add_argument("--client-timeout", type=_positive(float), metavar="S",
                   help="HTTP: a client with no request in flight and no open event stream "
                        "for this long is gone, and its sessions are closed (default 60)")
    g.add_argument("--full-text-results", action="store_true",
                   help="repeat each result's whole JSON in its text block, for clients that "
                        "do not read structuredContent")


def limit_options(args: argparse.Namespace) -> dict[str, Any]:
    """The manager's keyword arguments from :func:`add_limit_options` (the ones given)."""
    names = ("idle_timeout", "running_timeout", "max_sessions", "max_per_host", "max_per_client")
    return {n: getattr(args, n) for n in names if getattr(args, n, None) is not None}


def _positive(kind: type) -> Any:
    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
        if not value > 0 or value != value or value == float("inf"):
            raise argparse.ArgumentTypeError(f"must be a positive number, got {text!r}")
        return value
    return parse
