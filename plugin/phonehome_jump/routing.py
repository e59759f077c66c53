"""Routing sessions to ET Phone Home client sites: the MCP server's backend when it has agents.

An inventory host may name the ET Phone Home client site that reaches it (``client: site-a``).
``phonehome-jump serve --agent site-a=127.0.0.1:7022`` tells the server where that site's
agent answers (for ET Phone Home: the client's tunnel port on the server's loopback).
:class:`Router` then offers the :class:`SessionManager` operations the MCP server calls:

* a host with no ``client`` runs in-process, in the local manager, as without agents;
* a host whose ``client`` has an agent runs there, through :class:`~.agent_client.RemoteAgent`;
* a host whose ``client`` has no agent is refused with an error naming the site and the flag
  (dialing it from here would only time out: the site is where it is reachable from).

Without any ``--agent`` the server does not route at all (every host in-process), so one
inventory serves both a single-machine setup and the agents themselves.

Session ids: a remote session is ``<agent's id>@<site>`` (``s-1f0c…@site-a``), so an id names
its site and ids from different sites can never collide with each other or with local ones
(which have no ``@``). Ownership of remote sessions is kept here, per MCP client connection,
exactly as the local manager keeps it; other clients get the same "no open session" error.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import TypeVar

from .errors import (AgentError, InventoryError, PhonehomeJumpError, SessionError,
                     UnknownSessionError)
from .inventory import Inventory, Target, _suggest
from .manager import SessionInfo, SessionManager
from .policy import Approval
from .redact import add_secret
from .agent_client import RemoteAgent
from .wire import NOT_RESTORED, is_loopback, parse_listen
from .session import CommandResult

log = logging.getLogger(__name__)

SITE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
T = TypeVar("T")


def parse_agents(specs: list[str] | None) -> dict[str, tuple[str, int]]:
    """``["site-a=127.0.0.1:7022", ...]`` → {site: (host, port)}; ValueError says what is wrong."""
    agents: dict[str, tuple[str, int]] = {}
    for spec in specs or ():
        site, sep, address = spec.partition("=")
        if not sep or not SITE_NAME.fullmatch(site):
            raise ValueError(f"--agent wants SITE=HOST:PORT (a site name of letters, digits, "
                             f"'.', '_' and '-'), got {spec!r}")
        if site in agents:
            raise ValueError(f"--agent {site} is given twice")
        host, port = parse_listen(address)
        if not is_loopback(host) or port == 0:
            raise ValueError(f"--agent {spec}: the agent protocol has no authentication, so its "
                             "address must be a loopback HOST:PORT (for ET Phone Home, the "
                             "client's tunnel port on this server)")
        agents[site] = (host, port)
    return agents


def check_sites(inventory: Inventory, agents: Mapping[str, object]) -> None:
    """Every agent's site must be the ``client`` of some host (catches typos at start)."""
    clients = {t.client for t in inventory.targets() if t.client}
    for site in agents:
        if site not in clients:
            raise InventoryError(f"--agent {site}: no inventory host names client '{site}'"
                                 + _suggest(site, clients),
                                 hint="set `client: SITE` on the hosts (or their group) that "
                                      "site reaches")


@dataclass
class _Remote:
    site: str
    remote_id: str
    owner: str | None
    info: SessionInfo          # as last seen, with the routed id


class Router:
    """The local :class:`SessionManager` plus one :class:`RemoteAgent` per site. Thread-safe."""

    def __init__(self, manager: SessionManager, agents: Mapping[str, RemoteAgent]) -> None:
        self.manager = manager
        self.inventory = manager.inventory
        self.agents = dict(agents)
        self._remote: dict[str, _Remote] = {}
        self._lock = threading.Lock()

    @classmethod
    def from_addresses(cls, manager: SessionManager,
                       agents: Mapping[str, tuple[str, int]]) -> Router:
        return cls(manager, {site: RemoteAgent(site, host, port)
                             for site, (host, port) in agents.items()})

    @property
    def max_sessions(self) -> int:
        return self.manager.max_sessions

    # -- open / close -----------------------------------------------------------------
    def open(self, host: str, *, owner: str | None = None, framing: str | None = None,
             actor: str | None = None) -> SessionInfo:
        target = self.inventory.target(host)      # same UnknownNameError as in-process
        site = target.client
        if site is None:
            return self.manager.open(host, owner=owner, framing=framing, actor=actor)
        agent = self.agents.get(site)
        if agent is None:
            raise AgentError(
                f"the host is reached through ET Phone Home client site '{site}', and this server "
                f"has no agent for that site (agents: {', '.join(sorted(self.agents))})",
                where=f"host {host!r}",
                hint=f"start the server with --agent {site}=HOST:PORT (the site's agent, e.g. its "
                     f"tunnel port on this machine), or remove `client: {site}` from the host")
        remote = agent.open(host, framing=framing, actor=actor)
        info = replace(remote, id=f"{remote.id}@{site}", owner=owner, actor=actor)
        with self._lock:
            self._remote[info.id] = _Remote(site, remote.id, owner, info)
        return info

    def upload(self, host: str, local: str, remote: str, **kw: object) -> object:
        return self._files_host(host).upload(host, local, remote, **kw)

    def download(self, host: str, remote: str, local: str, **kw: object) -> object:
        return self._files_host(host).download(host, remote, local, **kw)

    def _files_host(self, host: str) -> SessionManager:
        site = self.inventory.target(host).client
        if site is not None:
            raise AgentError(f"file copies to hosts behind ET Phone Home client site '{site}' are "
                             "not routed through agents", where=f"host {host!r}",
                             hint="run the copy on that site's machine (phonehome-jump cp)")
        return self.manager

    def close(self, session_id: str, *, owner: str | None = None) -> None:
        rec = self._find(session_id, owner)
        if rec is None:
            return self._local(session_id, owner, lambda: self.manager.close(session_id, owner=owner))
        self._call(rec, owner, lambda agent: agent.close(rec.remote_id))
        with self._lock:
            self._remote.pop(session_id, None)

    def revive(self, session_id: str, *, owner: str | None = None) -> SessionInfo:
        rec = self._find(session_id, owner)
        if rec is None:
            return self._local(session_id, owner, lambda: self.manager.revive(session_id,
                                                                              owner=owner))
        raise SessionError(f"session {session_id!r} runs at site {rec.site!r}: its agent "
                           "reopens its sessions itself when it comes back",
                           where=f"site {rec.site!r}",
                           hint="close it and open a new session if it stays dead")

    def shutdown(self) -> None:
        """Close the remote sessions opened here (their clients are gone too), then the rest."""
        with self._lock:
            records, self._remote = list(self._remote.values()), {}
        for rec in records:
            try:
                self.agents[rec.site].close(rec.remote_id)
            except PhonehomeJumpError as err:
                log.info("closing %s at shutdown: %s", rec.info.id, err)
        for agent in self.agents.values():
            agent.shutdown()
        self.manager.shutdown()

    def record(self, event: str, *, strict: bool = True, **fields: object) -> None:
        """Audit records of this server (workflow steps) go to its own audit log."""
        self.manager.record(event, strict=strict, **fields)

    def start_reaper(self, interval: float = 5.0) -> None:
        self.manager.start_reaper(interval)   # each agent reaps its own sessions

    # -- operations -------------------------------------------------------------------
    def command(self, session_id: str, command: str, *, owner: str | None = None,
                wait: float = 20.0, until: str | None = None,
                confirm: bool | Approval = False) -> CommandResult:
        rec = self._find(session_id, owner)
        if rec is None:
            return self._local(session_id, owner, lambda: self.manager.command(
                session_id, command, owner=owner, wait=wait, until=until, confirm=confirm))
        self._check_policy(rec, command, confirm=confirm, at_prompt=True)
        return self._call(rec, owner, lambda a: a.command(rec.remote_id, command, wait=wait,
                                                          until=until, confirm=confirm))

    def send(self, session_id: str, text: str = "", *, owner: str | None = None,
             newline: bool = True, control: str | None = None, secret: bool = False,
             confirm: bool | Approval = False, sudo_password: bool = False) -> None:
        rec = self._find(session_id, owner)
        if rec is None:
            return self._local(session_id, owner, lambda: self.manager.send(
                session_id, text, owner=owner, newline=newline, control=control, secret=secret,
                confirm=confirm, sudo_password=sudo_password))
        if secret:
            add_secret(text)    # this process masks it too (the agent masks its own output)
        if (newline and text) or "\n" in text or "\r" in text:
            # whether it starts a command is the agent's to know: here deny/confirm only
            self._check_policy(rec, text, confirm=confirm, at_prompt=False, secret=secret)
        self._call(rec, owner, lambda a: a.send(rec.remote_id, text, newline=newline,
                                                control=control, secret=secret, confirm=confirm,
                                                sudo_password=sudo_password))

    def read(self, session_id: str, *, owner: str | None = None, wait: float = 0.0,
             until: str | None = None, offset: int | None = None) -> CommandResult:
        rec = self._find(session_id, owner)
        if rec is None:
            return self._local(session_id, owner, lambda: self.manager.read(
                session_id, owner=owner, wait=wait, until=until, offset=offset))
        return self._call(rec, owner, lambda a: a.read(rec.remote_id, wait=wait, until=until,
                                                       offset=offset))

    def list(self, *, owner: str | None = None) -> list[SessionInfo]:
        infos = self.manager.list(owner=owner)
        with self._lock:
            mine = [r for r in self._remote.values() if owner is None or r.owner == owner]
        for site in sorted({r.site for r in mine}):
            recs = [r for r in mine if r.site == site]
            try:
                live, pending = self.agents[site].list()
            except AgentError as err:
                # keep them listed: the agent may come back; say why they cannot be used now
                reason = f"the agent of site '{site}' does not answer: {err.what}"
                infos += [replace(r.info, state="dead", dead_reason=reason) for r in recs]
                continue
            by_id = {i.id: i for i in live}
            for r in recs:
                if r.remote_id in by_id:
                    r.info = replace(by_id[r.remote_id], id=r.info.id, owner=r.owner,
                                     actor=r.info.actor)
                    infos.append(r.info)
                elif r.remote_id in pending:
                    infos.append(replace(r.info, state="dead", dead_reason=(
                        f"the agent of site '{site}' restarted and has not restored it yet")))
                else:                 # closed at the site (idle timeout, agent restarted)
                    with self._lock:
                        self._remote.pop(r.info.id, None)
        return sorted(infos, key=lambda i: i.created)

    def approval_needed(self, session_id: str, text: str = "", *, owner: str | None = None,
                        command: bool = False, newline: bool = True, control: str | None = None,
                        secret: bool = False) -> tuple[Target, str, str] | None:
        """As :meth:`SessionManager.approval_needed`; routed sessions by this server's policy."""
        rec = self._find(session_id, owner)
        if rec is None:
            return self._local(session_id, owner, lambda: self.manager.approval_needed(
                session_id, text, owner=owner, command=command, newline=newline,
                control=control, secret=secret))
        if not command and (secret or not ((newline and text) or "\n" in text or "\r" in text)):
            return None                         # a secret is never shown in a dialog
        target = self.inventory.target(rec.info.host)
        rule = target.policy.confirm_rule(text, host=target.name, at_prompt=command,
                                          secret=secret)
        return (target, rule, text) if rule is not None else None

    # -- internals --------------------------------------------------------------------
    def _check_policy(self, rec: _Remote, text: str, *, confirm: bool | Approval,
                      at_prompt: bool, secret: bool = False) -> None:
        """This server's inventory policy applies to routed sessions too (the agent then
        applies its own): a rule written here holds whichever site runs the session."""
        self.manager.check_policy(self.inventory.target(rec.info.host), text, confirm=confirm,
                                  at_prompt=at_prompt, secret=secret, actor=rec.info.actor,
                                  session_id=rec.info.id)

    def _find(self, session_id: str, owner: str | None) -> _Remote | None:
        """The remote record of a routed id (None: a local id); ownership as in the manager."""
        if "@" not in session_id:
            return None
        with self._lock:
            rec = self._remote.get(session_id)
        if rec is None or (owner is not None and rec.owner != owner):
            raise self._unknown(session_id, owner)
        return rec

    def _call(self, rec: _Remote, owner: str | None, op: Callable[[RemoteAgent], T]) -> T:
        agent = self.agents[rec.site]
        try:
            try:
                return op(agent)
            except UnknownSessionError as err:
                if NOT_RESTORED not in str(err):
                    raise
                # the agent restarted, and no pooled connection noticed it
                restored = agent.restore()
                try:
                    return op(agent)
                except UnknownSessionError as again:
                    if NOT_RESTORED not in str(again):
                        raise
                    # the agent keeps the record (a hop down now): so does this server
                    why = next((f["error"] for f in restored.get("failed", [])
                                if f.get("session_id") == rec.remote_id), "not reopened")
                    raise SessionError(
                        f"session {rec.info.id!r} is recorded at site '{rec.site}' but could not "
                        f"be reopened yet: {why}", where=f"site {rec.site!r}",
                        hint="retry when the chain is reachable again (each retry tries to "
                             "reopen it); ssh_session_close forgets it") from None
        except UnknownSessionError:
            # the agent no longer has it (closed there, or restarted without its state)
            with self._lock:
                self._remote.pop(rec.info.id, None)
            raise self._unknown(rec.info.id, owner) from None

    def _local(self, session_id: str, owner: str | None, op: Callable[[], T]) -> T:
        try:
            return op()
        except UnknownSessionError:
            # the manager's hint lists only local sessions: list the caller's remote ones too
            raise self._unknown(session_id, owner) from None

    def _unknown(self, session_id: str, owner: str | None) -> UnknownSessionError:
        """The manager's own "no open session" error, listing every session the caller has."""
        mine = [(i.created, i.id) for i in self.manager.list(owner=owner)]
        with self._lock:
            mine += [(r.info.created, r.info.id) for r in self._remote.values()
                     if owner is None or r.owner == owner]
        visible = [sid for _, sid in sorted(mine)]       # oldest first, as the manager lists
        return UnknownSessionError(
            f"no open session {session_id!r}", where="session manager",
            hint=("open sessions: " + ", ".join(visible)) if visible else
                 "no sessions are open; open one by inventory host name")
