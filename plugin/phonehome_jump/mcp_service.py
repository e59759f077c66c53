"""The service around the MCP tools: one session manager per server, and who calls.

The tools (:mod:`.mcp_server`) stay thin adapters; this module owns what makes them a shared
service: the manager's lifetime (the server's lifespan), the worker threads blocking core
calls run in, and the owner id of the client connection each request came on.
"""

from __future__ import annotations

import logging
import secrets
import threading
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import anyio
import anyio.to_thread
from mcp.server.mcpserver import Context, MCPServer
from mcp_types.version import HANDSHAKE_PROTOCOL_VERSIONS

from .errors import PhonehomeJumpError
from .inventory import Inventory
from .manager import SessionManager
from .routing import Router

log = logging.getLogger(__name__)

SINGLE_CLIENT = "single-client"  # the owner of 2026-07-28 requests (stdio, in-process)
_OWNER_KEY = "phonehome_jump.owner"
T = TypeVar("T")


class Runtime:
    """One SessionManager per server object, alive while any transport runs the server.

    The streamable-HTTP transport enters the lifespan once per process; in-process clients
    enter it once each, and share the manager (ownership keeps them apart).
    """

    def __init__(self, inventory: Inventory, manager_kwargs: dict[str, Any],
                 agents: Mapping[str, tuple[str, int]] | None = None) -> None:
        self.inventory = inventory
        self.manager_kwargs = manager_kwargs
        self.agents = dict(agents or {})
        self._manager: SessionManager | Router | None = None
        self._users = 0
        self._lock = threading.Lock()
        self.limiter: anyio.CapacityLimiter | None = None

    @property
    def manager(self) -> SessionManager | Router:
        if self._manager is None:
            raise RuntimeError("the MCP server is not running (lifespan not entered)")
        return self._manager

    @asynccontextmanager
    async def lifespan(self, _server: MCPServer) -> AsyncIterator["Runtime"]:
        with self._lock:
            if self._users == 0:
                local = SessionManager(self.inventory, **self.manager_kwargs)
                self._manager = (Router.from_addresses(local, self.agents) if self.agents
                                 else local)
                self._manager.start_reaper()
                # each session may hold a worker thread for up to MAX_WAIT seconds
                self.limiter = anyio.CapacityLimiter(self._manager.max_sessions + 16)
                log.info("session manager started (%d hosts)", len(self.inventory))
            self._users += 1
        try:
            yield self
        finally:
            with self._lock:
                self._users -= 1
                last = self._users == 0
                manager, self._manager = (self._manager, None) if last else (None, self._manager)
            if manager is not None:
                with anyio.CancelScope(shield=True):
                    await anyio.to_thread.run_sync(manager.shutdown)
                log.info("session manager stopped")

    async def call(self, fn: Callable[[], T]) -> T:
        return await anyio.to_thread.run_sync(fn, limiter=self.limiter)

    async def call_with_progress(self, ctx: Context, fn: Callable[[], T], message: str,
                                 total: float | None = None) -> T:
        """``fn()`` in a worker thread, reporting progress (seconds elapsed) once a second."""
        async def tick() -> None:
            start = anyio.current_time()
            try:
                while True:
                    elapsed = anyio.current_time() - start
                    await ctx.report_progress(round(elapsed), total, f"{message} ({elapsed:.0f}s)")
                    await anyio.sleep(1.0)
            except Exception:   # progress is advisory; the client may be gone
                log.debug("progress notification failed", exc_info=True)

        result: T | None = None
        error: Exception | None = None
        async with anyio.create_task_group() as tg:
            tg.start_soon(tick)
            try:
                result = await self.call(fn)
            except Exception as exc:   # re-raised outside the task group (no ExceptionGroup)
                error = exc
            tg.cancel_scope.cancel()
        if error is not None:
            raise error
        return result  # type: ignore[return-value]

    def owner(self, ctx: Context) -> str:
        """The owner id of the client connection this request came on."""
        # SDK 2.3 builds a ServerSession per request; the per-client Connection behind it
        # is only reachable through this attribute.
        conn = ctx.session._connection
        if conn.protocol_version not in HANDSHAKE_PROTOCOL_VERSIONS:
            return SINGLE_CLIENT          # 2026-07-28: no connection exists (see module doc)
        owner = conn.state.get(_OWNER_KEY)
        if owner is None:
            owner = conn.state[_OWNER_KEY] = "c-" + secrets.token_hex(8)
            conn.exit_stack.push_async_callback(self._release, owner)
        return owner

    async def _release(self, owner: str) -> None:
        """The client connection ended: close the sessions it left open."""
        manager = self._manager
        if manager is None:
            return

        def close_all() -> int:
            infos = manager.list(owner=owner)
            for info in infos:
                try:
                    manager.close(info.id, owner=owner)
                except PhonehomeJumpError:
                    pass        # closed meanwhile
            return len(infos)

        closed = await anyio.to_thread.run_sync(close_all)
        if closed:
            log.info("client %s disconnected: closed its %d session(s)", owner, closed)
