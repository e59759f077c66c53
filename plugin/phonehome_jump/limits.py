"""Session limits and timeouts: the inventory's top-level ``limits:`` section.

The session manager reads them (idle and running timeouts, how many sessions in total, per
host and per client); ``serve`` options override them. Every value has a default, so the
section is optional.
"""

from __future__ import annotations

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
