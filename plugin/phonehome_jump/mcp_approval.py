"""Human approval over MCP: a command that a ``confirm`` rule stops asks the person.

The model cannot approve its own command. When the host's policy has a confirm rule for a
command (or a typed line), the MCP server asks the client's user through MCP elicitation,
showing the host, its jump chain, the exact line and the rule; the command runs only when
that person accepts. The tool's ``confirm=true`` argument does not pass a confirm rule on its
own; only under the inventory's ``policy.mcp_approval: elicit-or-model`` does it stand in for
a person, and then only when the client cannot elicit.

The question is asked by the SDK's resolver mechanism (``Resolve``/``Elicit``), which picks
the transport the connection speaks: a server-to-client ``elicitation/create`` request on the
handshake-era protocol, an ``InputRequiredResult`` whose answer comes back in the retried call
(with a sealed, per-process ``requestState``) on 2026-07-28. Either way the answer is bound to
the exact question that was shown, and the model never sees or writes it.

``policy.mcp_approval`` (first layer that sets it wins: host, groups, defaults):

* ``elicit`` (default): a person approves through elicitation; a client that cannot elicit
  is refused with a message saying so.
* ``elicit-or-model``: as ``elicit``; a client that cannot elicit may pass the rule with the
  model's ``confirm=true`` (weaker: nobody but the model decided; audited as such).
* ``refuse``: commands that need confirmation never run over MCP (CLI ``--confirm`` or a
  workflow file's ``confirm: true`` only).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from mcp.server.mcpserver import Context
from mcp.server.mcpserver.resolve import (AcceptedElicitation, CancelledElicitation,
                                          DeclinedElicitation, Elicit)
from mcp_types.version import HANDSHAKE_PROTOCOL_VERSIONS
from pydantic import BaseModel, Field

from .errors import PhonehomeJumpError, PolicyError
from .inventory import Target
from .policy import Approval
from .redact import mask

NOT_ASKED = "not-asked"          # the resolver's answer when no person was asked


class Approve(BaseModel):
    """The elicitation form: one box the person ticks to run the command."""

    approve: bool = Field(False, title="Run this command",
                          description="Tick to run exactly this command on this host.")


@dataclass(frozen=True)
class Gate:
    """What stands between a call and its host: the confirm rule (None: nothing), and what
    the person is shown."""

    rule: str | None = None
    host: str = ""
    chain: tuple[str, ...] = ()
    line: str = ""
    mode: str = "elicit"
    can_elicit: bool = False


def can_elicit(ctx: Context) -> bool:
    """The client declared form elicitation, and this connection can carry the question."""
    caps = ctx.client_capabilities
    el = caps.elicitation if caps is not None else None
    if el is None or (el.form is None and el.url is not None):
        return False
    if ctx.session.protocol_version in HANDSHAKE_PROTOCOL_VERSIONS:
        return ctx.session.can_send_request      # a server-to-client request mid-call
    return True                                  # 2026-07-28: asked in the call's result


def gate(needed: Callable[[], tuple[Target, str, str] | None], ctx: Context) -> Gate:
    """The gate of one call; ``needed`` is the manager's ``approval_needed`` for it.

    An error (unknown session or host) is left to the tool body, which reports it as usual.
    """
    try:
        found = needed()
    except PhonehomeJumpError:
        return Gate()
    if found is None:
        return Gate()
    target, rule, line = found
    return Gate(rule, target.name, tuple(h.name for h in target.chain), line,
                target.policy.mcp_approval, can_elicit(ctx))


def transfer_gate(inventory: Any, direction: str, host: str, remote: str, ctx: Context) -> Gate:
    """The gate of a file copy (``files.upload``/``files.download: confirm``)."""
    def needed() -> tuple[Target, str, str] | None:
        target = inventory.target(host)
        rule = target.policy.transfer_confirm_rule(direction, remote, host=target.name)
        return (target, rule, f"{direction} {remote}") if rule is not None else None
    return gate(needed, ctx)


def question(g: Gate) -> Elicit[Approve] | str:
    """Ask the person (an :class:`Elicit` marker), or say that nobody is asked."""
    if g.rule is None or g.mode == "refuse" or not g.can_elicit:
        return NOT_ASKED
    chain = " → ".join(g.chain) or "directly"
    kind = "file copy" if g.rule.startswith("files.") else "command"
    return Elicit(f"Approve this {kind} on host {g.host} (reached {'via ' if g.chain else ''}"
                  f"{chain})?\n\n    {mask(g.line)}\n\nThe inventory's policy asks a person to "
                  f"confirm it (rule  {g.rule})\nIt runs only if you approve; "
                  f"the AI model cannot approve it.", Approve)


def decide(g: Gate, answer: Any, *, confirm: bool, actor: str,
           record: Callable[..., None], session_id: str | None = None) -> Approval | bool:
    """The approval to pass to the manager, or :class:`PolicyError` (audited) saying why not.

    ``confirm`` is the model's argument: it counts only under ``elicit-or-model`` when the
    client cannot elicit. Returns False when no confirm rule applies.
    """
    if g.rule is None:
        return False
    where = f"host {g.host!r}"
    if isinstance(answer, AcceptedElicitation) and isinstance(answer.data, Approve):
        if answer.data.approve:
            return Approval("mcp-elicitation", actor, command=g.line, rule=g.rule)
        outcome, what = "declined", "the user did not approve it"
    elif isinstance(answer, DeclinedElicitation):
        outcome, what = "declined", "the user declined it"
    elif isinstance(answer, CancelledElicitation):
        outcome, what = "cancelled", "the user cancelled the approval"
    elif g.mode == "refuse":
        outcome, what = "refused", ("the inventory's policy does not let commands that need "
                                    "confirmation run over MCP (mcp_approval: refuse)")
    elif g.mode == "elicit-or-model" and confirm:
        return Approval("mcp-model-confirm", actor, command=g.line, rule=g.rule)
    else:
        outcome = "no_elicitation"
        what = ("this MCP client cannot ask its user (it does not support elicitation), and "
                "only a person may approve it")
    record("policy_refusal", strict=False, actor=actor, host=g.host, chain=list(g.chain),
           session_id=session_id, command=g.line, rule=g.rule, outcome=outcome)
    hint = ("run it from a terminal (phonehome-jump run --confirm HOST -- COMMAND) or in a "
            "workflow step with confirm: true")
    if outcome == "no_elicitation":
        hint = ("use an MCP client that supports elicitation, or " + hint[:1].lower() + hint[1:]
                + "; the inventory's policy mcp_approval: elicit-or-model would let the "
                  "model's confirm=true pass instead (weaker)")
    raise PolicyError(f"command needs a person's approval (rule {g.rule!r}) and was not run: "
                      f"{what}", rule=g.rule, needs_confirm=True, where=where, hint=hint)
