"""The stdio transport without a lab: a server process with two extra tools, spoken to over
real pipes (the event loop's own reading and writing) and from a terminal (the SDK's way)."""

from __future__ import annotations

import json
import os
import pty
import subprocess
import sys
import textwrap
import threading
import tty
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import anyio
from mcp import Client, StdioServerParameters

from .test_mcp_server import INVENTORY

# a server over the test inventory, plus a tool whose child writes to fd 1 and reads fd 0
# (both must miss the protocol) and one that measures a (long) argument
SERVER = textwrap.dedent('''
    import os, subprocess, sys
    import anyio
    from phonehome_jump.inventory import Inventory
    from phonehome_jump.mcp_server import build_server
    from phonehome_jump.mcp_stdio import serve_stdio

    server = build_server(Inventory.from_text(sys.argv[1]))

    @server.tool()
    async def stray() -> str:
        child = subprocess.run("echo stray-to-stdout; cat", shell=True, capture_output=False,
                               timeout=10)
        return f"child {child.returncode}"

    @server.tool()
    def length(text: str) -> int:
        return len(text)

    anyio.run(serve_stdio, server)
    print("server-ended", file=sys.stderr)
''')


INIT = {"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
    "protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "raw", "version": "0"}}}


def _params() -> StdioServerParameters:
    return StdioServerParameters(command=sys.executable, args=["-c", SERVER, INVENTORY])


@contextmanager
def _server(stdin: Any = subprocess.PIPE) -> Iterator[subprocess.Popen]:
    """The server as a process of its own, killed after 60 s (a reply that never comes
    fails the test, not hangs it) and at the end."""
    proc = subprocess.Popen([sys.executable, "-c", SERVER, INVENTORY], stdin=stdin,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    watchdog = threading.Timer(60, proc.kill)
    watchdog.start()
    try:
        yield proc
    finally:
        watchdog.cancel()
        proc.kill()
        proc.wait(timeout=30)


def test_over_pipes_a_child_neither_writes_into_the_protocol_nor_reads_from_it():
    async def go() -> list[object]:
        async with Client(_params()) as client:
            stray = await client.call_tool("stray", {})
            long = await client.call_tool("length", {"text": "é" * 3_000_000})   # ~6 MB line
            hosts = await client.call_tool("inventory_list", {})
            return [stray.content[0].text, long.content[0].text,
                    [h["name"] for h in hosts.structured_content["hosts"]]]
    stray, long, hosts = anyio.run(go)
    assert stray == "child 0"          # cat read the null device: EOF, not the client's requests
    assert long == "3000000"
    assert hosts == ["core-rtr1", "sl1-dev", "sl1-prod"]


def test_the_child_output_goes_to_stderr_and_the_server_ends_at_end_of_input():
    with _server() as proc:
        for message in (INIT, {"jsonrpc": "2.0", "method": "notifications/initialized"},
                        {"jsonrpc": "2.0", "id": 1, "method": "tools/call",
                         "params": {"name": "stray", "arguments": {}}}):
            proc.stdin.write(json.dumps(message).encode() + b"\n")
        proc.stdin.flush()
        replies = [json.loads(proc.stdout.readline()) for _ in range(2)]
        proc.stdin.close()                  # how a client shuts a stdio server down
        out, err = proc.stdout.read(), proc.stderr.read()
        assert proc.wait(timeout=30) == 0
    assert [r.get("id") for r in replies] == [0, 1], replies
    assert replies[1]["result"]["content"][0]["text"] == "child 0"
    assert out == b""
    assert b"stray-to-stdout" in err and err.rstrip().endswith(b"server-ended"), err[-2000:]


def test_from_a_terminal_the_sdk_reads_and_lone_surrogates_are_still_repaired():
    """stdin that is not a pipe (here a terminal, in raw mode) goes the SDK's way, through
    the repairing reader."""
    master, slave = pty.openpty()
    tty.setraw(slave)
    try:
        with _server(stdin=slave) as proc:
            os.close(slave)
            os.write(master, (json.dumps(INIT) + "\n"
                              '{"jsonrpc":"2.0","method":"notifications/initialized"}\n'
                              '{"jsonrpc":"2.0","id":1,"method":"tools/call","params":'
                              '{"name":"length","arguments":{"text":"a\\ud800b"}}}\n').encode())
            replies = [json.loads(proc.stdout.readline()) for _ in range(2)]
    finally:
        os.close(master)
    assert [r.get("id") for r in replies] == [0, 1], replies
    assert replies[1]["result"]["content"][0]["text"] == "3"     # "a\ufffdb"


def test_a_client_that_closes_the_servers_stdout_ends_it_quietly():
    with _server() as proc:
        proc.stdin.write(json.dumps(INIT).encode() + b"\n")
        proc.stdin.flush()
        assert json.loads(proc.stdout.readline())["id"] == 0
        proc.stdout.close()                 # gone: the next reply has nowhere to go
        try:
            for rid in range(1, 50):        # until the server notices and ends
                proc.stdin.write(b'{"jsonrpc":"2.0","id":%d,"method":"tools/list"}\n' % rid)
                proc.stdin.flush()
                if proc.poll() is not None:
                    break
            proc.stdin.close()
        except BrokenPipeError:
            pass
        err = proc.stderr.read()
        assert proc.wait(timeout=30) == 0, err[-2000:]
    assert b"internal error" not in err and b"Traceback" not in err, err[-2000:]
    assert err.rstrip().endswith(b"server-ended"), err[-2000:]
