"""The MCP server against the real sshd lab: in-process clients, then stdio and HTTP end to end."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx2
import pytest
from mcp import Client, StdioServerParameters
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client

from phonehome_jump.mcp_server import build_server

from .mcp_calls import error, ok

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend():
    return "asyncio"


@pytest.fixture
def server(lab):
    return build_server(lab.inventory)


async def open_cd_pwd_close(client: Client) -> None:
    s = await ok(client, "ssh_session_open", host="lab-target1")
    assert (s["host"], s["chain"], s["framing"], s["state"]) == ("lab-target1", ["jump1", "jump2"],
                                                                 "sentinel", "idle")
    sid = s["session_id"]
    r = await ok(client, "ssh_session_command", session_id=sid, command="cd /tmp")
    assert (r["output"], r["exit_status"], r["cwd"], r["running"]) == ("", 0, "/tmp", False)
    r = await ok(client, "ssh_session_command", session_id=sid, command="pwd")
    assert (r["output"], r["cwd"]) == ("/tmp\n", "/tmp")
    assert [x["session_id"] for x in (await ok(client, "ssh_session_list"))["sessions"]] == [sid]
    assert await ok(client, "ssh_session_close", session_id=sid) == {"session_id": sid, "closed": True}
    assert (await ok(client, "ssh_session_list"))["sessions"] == []


# ----------------------------------------------------------------------------- in process

async def test_open_cd_pwd_close(server):
    async with Client(server) as client:
        await open_cd_pwd_close(client)


async def test_prompt_answered_with_send_and_read(server):
    async with Client(server) as client:
        sid = (await ok(client, "ssh_session_open", host="lab-target1"))["session_id"]
        r = await ok(client, "ssh_session_command", session_id=sid,
                     command="read -p 'Name? ' n; echo hello $n", wait=5, until=r"Name\? $")
        assert (r["running"], r["output"]) == (True, "Name? ")
        assert (await ok(client, "ssh_session_send", session_id=sid, text="bob"))["sent"]
        r = await ok(client, "ssh_session_read", session_id=sid, wait=5)
        assert (r["running"], r["output"], r["exit_status"]) == (False, "hello bob\n", 0)


async def test_secret_answer_is_masked(server, lab):
    password = lab.env["PHJ_LAB_SUDO_PASSWORD"]
    async with Client(server) as client:
        sid = (await ok(client, "ssh_session_open", host="lab-sudo"))["session_id"]
        r = await ok(client, "ssh_session_command", session_id=sid, command="sudo -k; sudo id -un", wait=10)
        assert r["awaiting_input"] and "ssh_session_send" in r["note"]
        await ok(client, "ssh_session_send", session_id=sid, text=password, secret=True)
        r = await ok(client, "ssh_session_read", session_id=sid, wait=10)
        assert (r["exit_status"], r["output"].strip()) == (0, "root")
        r = await ok(client, "ssh_session_command", session_id=sid, command=f"echo {password}")
        assert password not in str(r) and "********" in r["output"]


async def test_long_command_returns_running_then_completes_via_read(server):
    async with Client(server) as client:
        sid = (await ok(client, "ssh_session_open", host="lab-target1"))["session_id"]
        r = await ok(client, "ssh_session_command", session_id=sid,
                     command="echo start; sleep 2; echo done", wait=0.5)
        assert (r["running"], r["output"], r["exit_status"]) == (True, "start\n", None)
        assert "still running" in r["note"]
        assert "still running" in await error(client, "ssh_session_command", session_id=sid, command="id")
        r = await ok(client, "ssh_session_read", session_id=sid, wait=10)
        assert (r["running"], r["output"], r["exit_status"]) == (False, "done\n", 0)


async def test_large_output_is_capped_and_pages_back_exactly(server):
    expected = "".join(f"{i}\n" for i in range(1, 20001))
    async with Client(server) as client:
        sid = (await ok(client, "ssh_session_open", host="lab-target1"))["session_id"]
        r = await ok(client, "ssh_session_command", session_id=sid, command="seq 1 20000", wait=30)
        assert (r["exit_status"], r["total"], r["truncated"]) == (0, len(expected), True)
        assert len(r["output"]) < 17_000 and r["output"].endswith("19999\n20000\n")
        start, end = r["omitted"]
        assert f"ssh_session_read(offset={start})" in r["note"]
        pages, offset = [], start
        while offset < r["total"]:
            page = await ok(client, "ssh_session_read", session_id=sid, offset=offset)
            assert page["offset"] == offset and page["output"]
            pages.append(page["output"])
            offset = page["next_offset"]
        assert r["output"][:start] + "".join(pages) == expected


async def test_ssh_run_closes_or_keeps_a_running_session(server):
    async with Client(server) as client:
        r = await ok(client, "ssh_run", host="lab-target2", command="hostname; sh -c 'exit 3'")
        assert (r["exit_status"], r["session_open"], r["host"]) == (3, False, "lab-target2")
        assert (await ok(client, "ssh_session_list"))["sessions"] == []
        r = await ok(client, "ssh_run", host="lab-target2", command="sleep 2; echo late", wait=0.5)
        assert r["running"] and r["session_open"]
        assert [s["session_id"] for s in (await ok(client, "ssh_session_list"))["sessions"]] == [r["session_id"]]
        r = await ok(client, "ssh_session_read", session_id=r["session_id"], wait=10)
        assert r["output"] == "late\n"
        await ok(client, "ssh_session_close", session_id=r["session_id"])


async def test_a_second_client_cannot_touch_the_first_clients_session(server):
    rt = server.phonehome_jump
    async with Client(server, mode="legacy") as b:
        async with Client(server, mode="legacy") as a:
            sid = (await ok(a, "ssh_session_open", host="lab-target1"))["session_id"]
            assert (await ok(b, "ssh_session_list"))["sessions"] == []
            for tool, args in [("ssh_session_command", {"command": "id"}), ("ssh_session_read", {}),
                               ("ssh_session_read", {"offset": 0}), ("ssh_session_send", {"text": "x"}),
                               ("ssh_session_close", {})]:
                text = await error(b, tool, session_id=sid, **args)
                assert f"no open session '{sid}'" in text and "no sessions are open" in text, tool
            # b's own session is listed to b only, and the errors name only b's sessions
            own = (await ok(b, "ssh_session_open", host="lab-target2"))["session_id"]
            assert f"open sessions: {own}" in await error(b, "ssh_session_close", session_id=sid)
            assert [s["session_id"] for s in (await ok(a, "ssh_session_list"))["sessions"]] == [sid]
            r = await ok(a, "ssh_session_command", session_id=sid, command="echo still mine")
            assert r["output"] == "still mine\n"
        # a disconnected: its session is closed; b's is not
        assert [i.id for i in rt.manager.list()] == [own]


async def test_progress_is_reported_while_opening_and_running(server):
    seen: list[tuple[float, float | None, str | None]] = []

    async def progress(p, total, message):
        seen.append((p, total, message))

    async with Client(server) as client:
        r = await client.call_tool("ssh_session_open", {"host": "lab-target1"}, progress_callback=progress)
        sid = r.structured_content["session_id"]
        assert seen and "connecting to lab-target1 via jump1 → jump2" in seen[0][2]
        seen.clear()
        r = await client.call_tool("ssh_session_command", {"session_id": sid, "wait": 10,
                                                           "command": "sleep 2.5; echo done"},
                                   progress_callback=progress)
        assert r.structured_content["output"] == "done\n"
    assert len(seen) >= 3, seen
    assert [p for p, _, _ in seen] == sorted(p for p, _, _ in seen)
    assert all(total == 10 and f"running on {sid}" in message for _, total, message in seen)


# ----------------------------------------------------------------------------- end to end

def server_cmd(lab, *extra: str) -> list[str]:
    """`phonehome-jump serve`, the console script users put in their MCP client config."""
    cli = str(Path(sys.executable).parent / "phonehome-jump")
    return [cli, "--inventory", str(lab.inventory), "serve", *extra]


async def test_stdio_end_to_end(lab):
    cmd = server_cmd(lab)
    params = StdioServerParameters(command=cmd[0], args=cmd[1:], env=dict(os.environ))
    async with Client(params) as client:
        tools = await client.list_tools()
        assert "ssh_session_open" in {t.name for t in tools.tools}
        await open_cd_pwd_close(client)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def http_server(lab):
    port, token = free_port(), "tok-" + os.urandom(16).hex()
    proc = subprocess.Popen(server_cmd(lab, "--http", f"127.0.0.1:{port}", "--token-env", "PHJ_TEST_TOKEN"),
                            env={**os.environ, "PHJ_TEST_TOKEN": token}, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 20
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read()
            time.sleep(0.1)
    yield f"http://127.0.0.1:{port}/mcp", token
    proc.terminate()                      # uvicorn shuts down gracefully, then re-raises SIGTERM
    assert proc.wait(timeout=15) in (0, -15)
    err = proc.stderr.read()
    assert "MCP on http://127.0.0.1" in err and "Traceback" not in err, err


async def test_http_end_to_end_with_token_and_ownership(http_server):
    url, token = http_server
    async with httpx2.AsyncClient() as http:
        assert (await http.post(url, json={})).status_code == 401
    auth = {"Authorization": f"Bearer {token}"}
    async with create_mcp_http_client(headers=auth) as http_a, create_mcp_http_client(headers=auth) as http_b:
        async with Client(streamable_http_client(url, http_client=http_a)) as a, \
                   Client(streamable_http_client(url, http_client=http_b)) as b:
            await open_cd_pwd_close(a)
            sid = (await ok(a, "ssh_session_open", host="lab-target1"))["session_id"]
            assert (await ok(b, "ssh_session_list"))["sessions"] == []
            assert f"no open session '{sid}'" in await error(b, "ssh_session_command", session_id=sid,
                                                             command="id")
            r = await ok(a, "ssh_session_command", session_id=sid, command="echo $((6*7))")
            assert r["output"] == "42\n"
