"""MCP over the process's stdin and stdout (``phonehome-jump serve`` without ``--http``).

The SDK's ``stdio_server`` reads every line, and writes and flushes every reply, in a
worker thread: three thread hops per call. When stdin and stdout are pipes or sockets (as an
MCP client starts a server), the event loop reads and writes them itself here; a terminal
or a file goes the SDK's way. Either way each line is repaired first (see
:class:`_RepairingStdin`), and fd 0 and 1 point elsewhere while serving, so that nothing
else in the process (a child, a stray print) reads or writes the protocol's bytes.
"""

from __future__ import annotations

import asyncio
import fcntl
import io
import logging
import os
import stat
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress

import anyio
from mcp.server.mcpserver import MCPServer
from mcp.server.stdio import stdio_server

from .inputs import repair_json_line

log = logging.getLogger(__name__)

READ_CHUNK = 1 << 16


def _line(raw: bytes) -> str:
    return repair_json_line(raw.decode("utf-8", errors="replace"))


class _RepairingStdin(io.TextIOWrapper):
    """stdin as the SDK reads it (UTF-8, a bad byte becomes U+FFFD), with lone surrogate
    escapes (``"\\ud800"``) made U+FFFD too: the SDK drops a line it cannot parse without an
    answer, while this way the tool answers with an error naming the parameter."""

    def readline(self, size: int = -1) -> str:  # type: ignore[override]
        return repair_json_line(super().readline(size))

    def close(self) -> None:                     # never close the process's stdin
        try:
            self.detach()
        except ValueError:
            pass


class _Lines:
    """The lines of a pipe, as the SDK's reader iterates stdin (text, repaired)."""

    def __init__(self, reader: asyncio.StreamReader) -> None:
        self._reader = reader
        self._buf = bytearray()
        self._seen = 0          # bytes of _buf already searched for a newline: a long line stays linear

    def __aiter__(self) -> _Lines:
        return self

    async def __anext__(self) -> str:
        while True:
            end = self._buf.find(b"\n", self._seen)
            if end >= 0:
                raw = bytes(self._buf[:end + 1])
                del self._buf[:end + 1]
                self._seen = 0
                return _line(raw)
            self._seen = len(self._buf)
            chunk = await self._reader.read(READ_CHUNK)
            if not chunk:
                if not self._buf:
                    raise StopAsyncIteration
                raw, self._buf = bytes(self._buf), bytearray()
                return _line(raw)
            self._buf += chunk


class _Replies:
    """stdout as the SDK's writer uses it: write() queues, flush() waits while the pipe is full."""

    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self._writer = writer

    async def write(self, text: str) -> None:
        self._writer.write(text.encode("utf-8"))

    async def flush(self) -> None:
        await self._writer.drain()


def _is_pipe(fd: int) -> bool:
    try:
        mode = os.fstat(fd).st_mode
    except OSError:
        return False
    return stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode)


def _on_asyncio() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:        # another anyio backend: the SDK's way
        return False
    return True


@asynccontextmanager
async def _pipes() -> AsyncIterator[tuple[_Lines, _Replies]]:
    """stdin and stdout as the loop's own pipes, on private duplicates of fd 0 and 1; fd 0
    reads the null device and fd 1 writes to stderr meanwhile. All restored on the way out
    (the duplicates' file status flags too: asyncio makes them non-blocking)."""
    loop = asyncio.get_running_loop()
    fds = [fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 3) for fd in (0, 1)]
    flags = [fcntl.fcntl(fd, fcntl.F_GETFL) for fd in fds]
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    os.dup2(2, 1)
    rt: asyncio.ReadTransport | None = None
    wt: asyncio.WriteTransport | None = None
    try:
        reader = asyncio.StreamReader(limit=READ_CHUNK)
        rt, _ = await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader),
                                             os.fdopen(fds[0], "rb", buffering=0, closefd=False))
        wt, protocol = await loop.connect_write_pipe(
            asyncio.streams.FlowControlMixin, os.fdopen(fds[1], "wb", buffering=0, closefd=False))
        yield _Lines(reader), _Replies(asyncio.StreamWriter(wt, protocol, None, loop))
    finally:
        if rt is not None:
            rt.close()
        if wt is not None and wt.get_write_buffer_size():
            wt.abort()          # replies the client does not read are dropped, not waited for
        elif wt is not None:
            wt.close()
        with anyio.CancelScope(shield=True):
            await anyio.sleep(0)        # the transports let go of their fds before those close
        for fd, std, flag in zip(fds, (0, 1), flags):
            with suppress(OSError):
                fcntl.fcntl(fd, fcntl.F_SETFL, flag)
                os.dup2(fd, std)
            os.close(fd)


async def serve_stdio(server: MCPServer) -> None:
    """``server.run("stdio")``, reading repaired lines; on pipes without worker threads.

    A client that closes its end of stdout has gone: the server ends as at the end of its
    input (sessions closed by the lifespan), not with an internal error.
    """
    low = server._lowlevel_server        # what MCPServer.run_stdio_async runs, too
    try:
        if _is_pipe(0) and _is_pipe(1) and _on_asyncio():
            async with _pipes() as (lines, replies):
                async with stdio_server(stdin=lines, stdout=replies) as (read, write):  # type: ignore[arg-type]
                    await low.run(read, write, low.create_initialization_options())
            return
        stdin = anyio.wrap_file(_RepairingStdin(sys.stdin.buffer, encoding="utf-8",
                                                errors="replace"))
        async with stdio_server(stdin=stdin) as (read, write):
            await low.run(read, write, low.create_initialization_options())
    except* (BrokenPipeError, ConnectionResetError):
        log.info("the MCP client closed the server's stdout: ending")
