"""The service around the MCP tools: one session manager per server, and who calls.

The tools (:mod:`.mcp_server`) stay thin adapters; this module owns what makes them a shared
service: the manager's lifetime (the server's lifespan), the worker threads blocking core
calls run in, and the owner id of the client connection each request came on.

Fairness: a blocking call first takes one of its own client's call slots
(``calls_per_client``), then a thread of the shared pool. A client flooding long calls
therefore queues behind itself; it never holds more than its slots of the shared pool, and
calls that touch no SSH (listings) use a pool of their own. A call that cannot get a slot
within its wait is refused, naming whose limit was hit.

Cancellation: a call whose client cancels it (or gives up on it: the client's timeout sends
a cancellation) returns at once; its worker thread is marked so that the core sends nothing
for it (:mod:`.callstate`).
"""

from __future__ import annotations

import logging
import secrets
import threading
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import anyio
import anyio.from_thread
import anyio.to_thread
from mcp.server.mcpserver import Context, MCPServer
from mcp_types.version import HANDSHAKE_PROTOCOL_VERSIONS

from .callstate import caller
from .errors import LimitError, PhonehomeJumpError
from .inventory import Inventory
from .manager import BY_DISCONNECT, BY_SHUTDOWN, SessionManager
from .routing import Router

log = logging.getLogger(__name__)

SINGLE_CLIENT = "single-client"  # the owner of 2026-07-28 requests (stdio, in-process)
_OWNER_KEY = "phonehome_jump.owner"
CALLS_PER_CLIENT = 8        # blocking calls one client may have running at once
QUEUE_GRACE = 1.0           # a call with a shorter (or no) wait may still queue this long
QUEUE_BUDGET = 15.0         # how long a call without a wait (open, send, close) may queue
T = TypeVar("T")


class Runtime:
    """One SessionManager per server object, alive while any transport runs the server.

    The streamable-HTTP transport enters the lifespan once per process; in-process clients
    enter it once each, and share the manager (ownership keeps them apart).
    """

    def __init__(self, inventory: Inventory, manager_kwargs: dict[str, Any],
                 agents: Mapping[str, tuple[str, int]] | None = None, *,
                 calls_per_client: int = CALLS_PER_CLIENT) -> None:
        self.inventory = inventory
        self.manager_kwargs = manager_kwargs
        self.agents = dict(agents or {})
        self.calls_per_client = calls_per_client
        self._manager: SessionManager | Router | None = None
        self._users = 0
        self._lock = threading.Lock()
        self.limiter: anyio.CapacityLimiter | None = None
        self._clients: dict[str | None, anyio.CapacityLimiter] = {}
        self._fast = anyio.CapacityLimiter(16)         # calls that touch no SSH
        self._threads = anyio.CapacityLimiter(100_000)  # not anyio's default 40: ours bound it
        self._names: dict[str, str] = {}              # owner -> client name, for messages

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

    def stop_sessions(self) -> None:
        """Close every SSH session now (shutdown): calls waiting on one return at once, told
        it was closed at server shutdown. Safe from any thread."""
        manager = self._manager
        local = manager.manager if isinstance(manager, Router) else manager
        if local is None:
            return
        try:   # the sessions only: the hops close once, in the lifespan's shutdown
            local.close_all(BY_SHUTDOWN, hops=False)
        except Exception:   # shutting down regardless; the lifespan closes what is left
            log.warning("closing the sessions at shutdown failed", exc_info=True)

    def shutdown_now(self) -> None:
        """Shut the manager down from a signal handler (stdio): every session closed and
        audited ("closed at server shutdown"), hops and audit log closed."""
        manager = self._manager
        if manager is not None:
            manager.shutdown()

    async def call(self, fn: Callable[[], T], *, owner: str | None = None,
                   wait: float | None = None) -> T:
        """``fn()`` in a worker thread, fairly: the client's own slot first, then the pool.

        Waiting for a slot longer than ``wait`` (at least QUEUE_GRACE; QUEUE_BUDGET without
        a wait) is refused with LimitError naming whose limit it was. A cancelled call
        returns at once and its thread sends nothing more (see :mod:`.callstate`).
        """
        budget = QUEUE_BUDGET if wait is None else max(wait, QUEUE_GRACE)
        shared = self.limiter
        assert shared is not None, "lifespan not entered"
        # a call on no client's behalf (a workflow run's own wait) takes no client's slot
        mine = self._client_limiter(owner) if owner is not None else None
        token = object()
        held: list[anyio.CapacityLimiter] = []
        start = anyio.current_time()
        try:
            for limiter in (mine, shared) if mine is not None else (shared,):
                left = budget - (anyio.current_time() - start)
                with anyio.move_on_after(max(left, 0.0)):
                    await limiter.acquire_on_behalf_of(token)
                    held.append(limiter)
                if held[-1:] != [limiter]:
                    yours = mine.borrowed_tokens - 1 if mine is not None else 0
                    raise self._refusal(owner, limiter is mine, budget, yours)
        except BaseException:
            for limiter in held:
                limiter.release_on_behalf_of(token)
            raise
        gone, started = threading.Event(), threading.Event()
        slots = _Slots(held, token)

        def run() -> T:
            started.set()
            try:
                with caller(gone.is_set):
                    return fn()
            finally:   # a call given up on: its slots are held until its thread ends
                if slots.finish():
                    try:
                        anyio.from_thread.run_sync(slots.release)
                    except Exception:   # the event loop is gone (shutdown): nothing to release
                        pass
        try:
            result = await anyio.to_thread.run_sync(run, abandon_on_cancel=True,
                                                    limiter=self._threads)
        except BaseException:
            gone.set()      # cancelled (or failed): whatever the thread does next, it sends nothing
            if slots.abandon() or not started.is_set():
                slots.release()     # the thread has ended, or may never start
            raise
        slots.release()     # here, not from the thread: a hop back into the loop saved per call
        return result

    async def fast(self, fn: Callable[[], T]) -> T:
        """``fn()`` in a thread of a pool of its own, fast under any load: for calls that never
        wait on a command (a listing, typing an answer or Ctrl-C), so that a client whose slots
        are all taken by long calls can still see and interrupt them."""
        return await anyio.to_thread.run_sync(fn, limiter=self._fast)

    def _client_limiter(self, owner: str | None) -> anyio.CapacityLimiter:
        limiter = self._clients.get(owner)
        if limiter is None:
            limiter = self._clients[owner] = anyio.CapacityLimiter(self.calls_per_client)
        return limiter

    def _refusal(self, owner: str | None, own: bool, budget: float, yours: int) -> LimitError:
        who = f"client {self._names.get(owner or '', 'client')}/{owner}" if owner else "caller"
        if own:
            return LimitError(f"{who} has {self.calls_per_client} calls running, its own limit "
                              f"is {self.calls_per_client} (serve --calls-per-client); this call "
                              f"waited {budget:g}s for one of them to end", where="MCP server",
                              hint="wait for your running calls to return (or cancel them), "
                                   "then retry")
        assert self.limiter is not None
        return LimitError(f"all {self.limiter.total_tokens:g} worker threads of the server are "
                          f"busy with calls of all clients (yours: {yours}); this call waited "
                          f"{budget:g}s", where="MCP server",
                          hint="retry shortly; the server's operator can raise limits.max_sessions")

    async def call_with_progress(self, ctx: Context, fn: Callable[[], T], message: str,
                                 total: float | None = None, *, owner: str | None = None,
                                 wait: float | None = None) -> T:
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
                result = await self.call(fn, owner=owner, wait=wait)
            except Exception as exc:   # re-raised outside the task group (no ExceptionGroup)
                error = exc
            tg.cancel_scope.cancel()
        if error is not None:
            raise error
        return result  # type: ignore[return-value]

    def owner(self, ctx: Context) -> str:
        """The owner id of the client connection this request came on."""
        conn = connection(ctx)
        if conn.protocol_version not in HANDSHAKE_PROTOCOL_VERSIONS:
            return SINGLE_CLIENT          # 2026-07-28: no connection exists (see module doc)
        owner = conn.state.get(_OWNER_KEY)
        if owner is None:
            owner = conn.state[_OWNER_KEY] = "c-" + secrets.token_hex(8)
            conn.exit_stack.push_async_callback(self._release, owner)
            info = conn.client_params.client_info if conn.client_params else None
            self._names[owner] = getattr(info, "name", None) or "client"
        return owner

    async def _release(self, owner: str) -> None:
        """The client connection ended: close the sessions it left open."""
        manager = self._manager
        self._clients.pop(owner, None)
        self._names.pop(owner, None)
        if manager is None:
            return

        def close_all() -> int:
            infos = manager.list(owner=owner)
            for info in infos:
                try:
                    if isinstance(manager, SessionManager):
                        manager.close(info.id, owner=owner, why=BY_DISCONNECT)
                    else:
                        manager.close(info.id, owner=owner)
                except PhonehomeJumpError:
                    pass        # closed meanwhile
            return len(infos)

        closed = await anyio.to_thread.run_sync(close_all)
        if closed:
            log.info("client %s disconnected: closed its %d session(s)", owner, closed)


class _Slots:
    """The call slots one call holds; released once, in the event loop, by the awaiting call
    when its thread returned to it, else by the thread as it ends (a call given up on)."""

    def __init__(self, limiters: list[anyio.CapacityLimiter], token: object) -> None:
        self.limiters, self.token = limiters, token
        self._lock = threading.Lock()
        self._ended = self._abandoned = False

    def finish(self) -> bool:       # in the worker thread, as it ends
        """The thread has ended; True when the call was given up on, so the thread releases."""
        with self._lock:
            self._ended = True
            return self._abandoned

    def abandon(self) -> bool:      # in the event loop thread, when the call is given up on
        """The call is given up on; True when its thread had already ended (release now)."""
        with self._lock:
            self._abandoned = True
            return self._ended

    def release(self) -> None:      # in the event loop thread
        with self._lock:
            limiters, self.limiters = self.limiters, []
        for limiter in limiters:
            limiter.release_on_behalf_of(self.token)


def connection(ctx: Context) -> Any:
    """The per-client ``Connection`` behind a request (SDK 2.3).

    The SDK builds a ServerSession per request and exposes no public way from an MCPServer
    tool's Context to the connection it came on; the ServerSession keeps it as
    ``_connection``. The mcp dependency is pinned below the next minor release and a unit
    test checks this attribute, so an SDK change fails a test, never ownership: without it
    every call fails closed here.
    """
    conn = getattr(getattr(ctx, "session", None), "_connection", None)
    if conn is None or not isinstance(getattr(conn, "state", None), dict) or not hasattr(
            conn, "exit_stack"):
        raise RuntimeError("cannot tell which client connection this request came on (the "
                           "mcp SDK changed); refusing rather than sharing sessions")
    return conn
