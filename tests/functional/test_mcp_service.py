"""The MCP server as a shared service, with real MCP clients over streamable HTTP (and in
process) against the sshd lab: busy answers within the wait, calls given up on never run
later, a SIGKILLed client's sessions closed, one client's flood not slowing another's calls,
results not repeating their output, and SIGTERM with calls in flight."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import anyio
import pytest
from mcp import Client, StdioServerParameters
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client

from phonehome_jump.mcp_server import USER_TIMEOUT_MS, build_server

from .mcp_calls import error, ok

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend():
    return "asyncio"


async def until(predicate, timeout: float = 15.0, what: str = "condition"):
    """Poll an async predicate until it is true (never a fixed sleep)."""
    deadline = time.monotonic() + timeout
    while not (value := await predicate()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await anyio.sleep(0.05)
    return value


def pgrep(command: str) -> list[str]:
    """Pids whose whole command line is ``command`` (like ``pgrep -fx``, without procps):
    the command a shell on a target runs, not a process that merely mentions it."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:          # the process ended meanwhile
                continue
            if cmdline.strip() == command:
                found.append(entry.name)
    return found


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class HttpServer:
    """`phonehome-jump serve --http` in a subprocess, as users run it."""

    def __init__(self, lab, tmp_path: Path, *extra: str, host: str = "127.0.0.1") -> None:
        self.port, self.token = free_port(), "tok-" + os.urandom(16).hex()
        self.audit = tmp_path / "audit.jsonl"
        cli = str(Path(sys.executable).parent / "phonehome-jump")
        self.proc = subprocess.Popen(
            [cli, "--inventory", str(lab.inventory), "--audit-log", str(self.audit), "serve",
             "--http", f"{host}:{self.port}", "--token-env", "PHJ_TEST_TOKEN", *extra],
            env={**os.environ, "PHJ_TEST_TOKEN": self.token}, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 20
        while True:
            try:
                socket.create_connection((host, self.port), timeout=0.2).close()
                break
            except OSError:
                assert self.proc.poll() is None and time.monotonic() < deadline, self.proc.stderr.read()
                time.sleep(0.1)
        self.url = f"http://{host}:{self.port}/mcp"

    def client(self):
        return _HttpClient(self)

    def records(self) -> list[dict]:
        return [json.loads(line) for line in self.audit.read_text().splitlines()] if self.audit.exists() else []

    def stop(self) -> str:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=15)
        err = self.proc.stderr.read()
        assert "Traceback" not in err, err
        return err


class _HttpClient:
    def __init__(self, server: HttpServer) -> None:
        self.server = server

    async def __aenter__(self) -> Client:
        self._http = create_mcp_http_client(headers={"Authorization": f"Bearer {self.server.token}"})
        http = await self._http.__aenter__()
        self._client = Client(streamable_http_client(self.server.url, http_client=http))
        return await self._client.__aenter__()

    async def __aexit__(self, *exc) -> None:
        try:
            await self._client.__aexit__(*exc)
        finally:
            await self._http.__aexit__(*exc)


class StdioServer:
    """`phonehome-jump serve` over stdio, started by the MCP client as Claude Code does."""

    def __init__(self, lab, tmp_path: Path, *extra: str) -> None:
        self.audit = tmp_path / "audit.jsonl"
        cli = str(Path(sys.executable).parent / "phonehome-jump")
        self.params = StdioServerParameters(
            command=cli, args=["--inventory", str(lab.inventory), "--audit-log", str(self.audit),
                               "serve", *extra], env=dict(os.environ))

    def client(self) -> Client:
        return Client(self.params)

    records = HttpServer.records


@pytest.fixture
def http(lab, tmp_path, request):
    servers: list[HttpServer] = []

    def start(*extra: str, host: str = "127.0.0.1") -> HttpServer:
        servers.append(HttpServer(lab, tmp_path, *extra, host=host))
        return servers[-1]
    yield start
    for s in servers:
        s.stop()


@pytest.fixture(params=["http", "stdio"])
def transport(lab, tmp_path, request, http):
    """A server started over HTTP (subprocess) or stdio (by the client), with the same options."""
    if request.param == "http":
        return http
    return lambda *extra: StdioServer(lab, tmp_path, *extra)


# ----------------------------------------------------------------------------- waits

async def test_a_busy_session_answers_within_the_wait_saying_what_runs(transport):
    server = transport()
    async with server.client() as c:
        sid = (await ok(c, "ssh_session_open", host="lab-target1"))["session_id"]
        box: dict = {}

        async def long_call():
            box["r"] = await ok(c, "ssh_session_command", session_id=sid, command="sleep 20", wait=15)

        async with anyio.create_task_group() as tg:
            tg.start_soon(long_call)

            async def running():       # started on the target: bash has read its line
                return ((await ok(c, "ssh_session_list"))["sessions"][0]["state"] == "running"
                        and pgrep("sleep 20"))
            await until(running, what="sleep 20 running")
            t0 = time.monotonic()
            text = await error(c, "ssh_session_command", session_id=sid, command="echo hi", wait=5)
            assert time.monotonic() - t0 < 1.5, "a busy answer must not wait"
            assert "session busy" in text and "'sleep 20'" in text and "Nothing was sent" in text
            assert "ssh_session_read" in text and "control='c'" in text
            t0 = time.monotonic()
            text = await error(c, "ssh_session_read", session_id=sid, wait=0)
            assert time.monotonic() - t0 < 1.5 and "another call waits on its output" in text
            await ok(c, "ssh_session_send", session_id=sid, control="c", newline=False)
        assert (box["r"]["exit_status"], box["r"]["running"]) == (130, False)
        r = await ok(c, "ssh_session_command", session_id=sid, command="echo hi")
        assert (r["output"], r["exit_status"]) == ("hi\n", 0)     # and "echo hi" ran once: now
    commands = [r["command"] for r in server.records() if r["event"] == "command"]
    assert commands.count("echo hi") == 1, commands


async def test_a_call_the_client_gave_up_on_never_runs_later(transport):
    server = transport("--calls-per-client", "1")
    marker = f"/tmp/phj-late-{os.getpid()}-{os.urandom(4).hex()}"
    async with server.client() as c:
        s1 = (await ok(c, "ssh_session_open", host="lab-target1"))["session_id"]
        s2 = (await ok(c, "ssh_session_open", host="lab-target2"))["session_id"]
        box: dict = {}

        async def slot_holder():
            box["r"] = await ok(c, "ssh_session_command", session_id=s1, command="sleep 3; echo done",
                                wait=10)
        async with anyio.create_task_group() as tg:
            tg.start_soon(slot_holder)

            async def running():
                return any(s["state"] == "running" for s in (await ok(c, "ssh_session_list"))["sessions"])
            await until(running, what="the slot holder running")
            t0 = time.monotonic()
            with pytest.raises(Exception):      # the client's request timeout: it gives up
                await c.call_tool("ssh_session_command", {"session_id": s2, "command": f"touch {marker}"},
                                  read_timeout_seconds=1.0)
            assert time.monotonic() - t0 < 3
        assert box["r"]["output"] == "done\n"
        # the slot is free now; the abandoned call must not have been sent meanwhile or since
        r = await ok(c, "ssh_session_command", session_id=s2, command=f"test -e {marker}; echo $?")
        assert r["output"] == "1\n"
    assert not Path(marker).exists()
    assert not any(r.get("command") == f"touch {marker}" for r in server.records())


# ----------------------------------------------------------------------------- clients gone

async def close_record(server, sid: str) -> dict:
    """The session's close in the audit log: written just after its channel (and the target's
    processes) went, so wait for it rather than read the log at once."""
    def closes():
        return [r for r in server.records() if r["event"] == "close" and r["session_id"] == sid]

    async def recorded():
        return bool(closes())
    await until(recorded, timeout=10, what=f"the close of {sid} in the audit log")
    return closes()[0]


CLIENT = textwrap.dedent("""\
    import sys, anyio
    from mcp import Client
    from mcp.client.streamable_http import streamable_http_client
    from mcp.shared._httpx_utils import create_mcp_http_client

    async def main(url, token, command):
        async with create_mcp_http_client(headers={"Authorization": "Bearer " + token}) as http:
            async with Client(streamable_http_client(url, http_client=http)) as c:
                r = await c.call_tool("ssh_session_open", {"host": "lab-target1"})
                sid = r.structured_content["session_id"]
                r = await c.call_tool("ssh_session_command", {"session_id": sid, "command": command,
                                                              "wait": 0.5})
                assert r.structured_content["running"], r
                print(sid, flush=True)
                await anyio.sleep(3600)

    anyio.run(main, *sys.argv[1:])
""")


async def test_a_killed_http_client_has_its_sessions_closed_within_the_bound(http, tmp_path):
    client_timeout = 3
    server = http("--client-timeout", str(client_timeout))
    script = tmp_path / "client.py"
    script.write_text(CLIENT)
    forgotten = f"sleep 8{os.getpid() % 1000}{os.urandom(2).hex()[:3].replace('a', '1')}"
    forgotten = "sleep 8" + "".join(c for c in forgotten if c.isdigit())[-6:]
    proc = subprocess.Popen([sys.executable, str(script), server.url, server.token, forgotten],
                            stdout=subprocess.PIPE, text=True)
    try:
        sid = proc.stdout.readline().strip()
        assert sid.startswith("s-"), sid
        assert pgrep(forgotten), "the forgotten command runs on the target"
        proc.send_signal(signal.SIGKILL)
        proc.wait(5)
        t0 = time.monotonic()

        async def gone():
            return not pgrep(forgotten)
        await until(gone, timeout=client_timeout + 15, what="the target's processes gone")
        elapsed = time.monotonic() - t0
    finally:
        if proc.poll() is None:
            proc.kill()
    assert elapsed < client_timeout + 7, elapsed          # the README's bound: client timeout + 7 s
    assert (await close_record(server, sid))["by"] == "closed because its client disconnected"


async def test_a_forgotten_running_command_is_reaped_at_the_serve_limit(http):
    server = http("--running-timeout", "2", "--idle-timeout", "600")
    forgotten = "sleep 7" + str(os.getpid() % 100000).zfill(5)
    async with server.client() as c:
        sid = (await ok(c, "ssh_session_open", host="lab-target2"))["session_id"]
        assert (await ok(c, "ssh_session_command", session_id=sid, command=forgotten, wait=0.2))["running"]
        assert pgrep(forgotten)
        t0 = time.monotonic()

        async def gone():
            return not pgrep(forgotten)
        await until(gone, timeout=20, what="the forgotten command gone from the target")
        assert time.monotonic() - t0 < 2 + 5 + 3         # the limit, the reaper's 5 s period, slack
        text = await error(c, "ssh_session_read", session_id=sid)
        assert f"no open session '{sid}': it was closed by the running-session limit" in text
        assert (await ok(c, "ssh_session_list"))["sessions"] == []


@pytest.fixture
def client_netns(lab):
    """A network namespace of this test's own for an MCP client, linked to this host by a
    veth pair: its link can go down like a laptop going to sleep (no FIN, no RST)."""
    net = int(os.environ.get("PHJ_LAB_NET", "199"))
    ns, link = f"phj{net}-mcpc", f"phj{net}mc0"
    server_addr, client_addr = f"10.{net}.250.1", f"10.{net}.250.2"
    cleanup = [["ip", "link", "del", link], ["ip", "netns", "del", ns]]   # the veth pair, then ns
    for step in cleanup:                                                 # a leftover of this test
        subprocess.run(step, capture_output=True)
    steps = [["ip", "netns", "add", ns],
             ["ip", "link", "add", link, "type", "veth", "peer", "name", "eth0", "netns", ns],
             ["ip", "addr", "add", f"{server_addr}/30", "dev", link], ["ip", "link", "set", link, "up"],
             ["ip", "-n", ns, "addr", "add", f"{client_addr}/30", "dev", "eth0"],
             ["ip", "-n", ns, "link", "set", "eth0", "up"], ["ip", "-n", ns, "link", "set", "lo", "up"]]
    try:
        for step in steps:
            subprocess.run(step, check=True, capture_output=True)
        yield ns, server_addr
    finally:   # a socket of the killed client may keep the namespace (and the pair) a while
        for step in cleanup:
            subprocess.run(step, capture_output=True)


async def test_a_vanished_http_client_is_found_by_tcp_keepalive(http, client_netns, tmp_path):
    ns, server_addr = client_netns
    client_timeout = 3
    server = http("--client-timeout", str(client_timeout), host=server_addr)
    script = tmp_path / "client.py"
    script.write_text(CLIENT)
    forgotten = "sleep 9" + str(os.getpid() % 100000).zfill(5)
    proc = subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, str(script), server.url,
                             server.token, forgotten], stdout=subprocess.PIPE, text=True)
    try:
        sid = proc.stdout.readline().strip()
        assert sid.startswith("s-"), sid
        assert pgrep(forgotten)
        subprocess.run(["ip", "-n", ns, "link", "set", "eth0", "down"], check=True)   # asleep
        t0 = time.monotonic()

        async def gone():
            return not pgrep(forgotten)
        await until(gone, timeout=120, what="the vanished client's sessions closed")
        elapsed = time.monotonic() - t0
    finally:
        proc.kill()
        proc.wait(5)
    # the next event-stream ping (every 15 s) goes unacknowledged for the TCP user timeout,
    # then the client timeout runs: the README's bound
    bound = 15 + USER_TIMEOUT_MS / 1000 + client_timeout + 7
    assert elapsed < bound, elapsed
    assert (await close_record(server, sid))["by"] == "closed because its client disconnected"


# ----------------------------------------------------------------------------- fairness

async def test_one_client_flooding_long_calls_does_not_slow_another(http):
    server = http("--calls-per-client", "4")
    async with server.client() as a, server.client() as b:
        busy = [(await ok(a, "ssh_session_open", host=h))["session_id"] for h in ("lab-target1", "lab-target2")]
        for sid in busy:
            assert (await ok(a, "ssh_session_command", session_id=sid, command="sleep 60", wait=0.1))["running"]
        mine = (await ok(b, "ssh_session_open", host="lab-target3"))["session_id"]
        refusals: list[str] = []

        async def flood(sid: str, wait: float) -> None:
            r = await a.call_tool("ssh_session_read", {"session_id": sid, "wait": wait})
            if r.is_error:
                refusals.append(r.content[0].text)

        list_times, echo_times = [], []
        async with anyio.create_task_group() as tg:
            for i in range(24):     # 4 hold a's slots for 4 s; the rest queue behind them
                tg.start_soon(flood, busy[i % 2], 4.0 if i < 8 else 0.5)
            await anyio.sleep(0)      # let the flood start queueing
            for _ in range(10):
                t0 = time.monotonic()
                await ok(b, "ssh_session_list")
                list_times.append(time.monotonic() - t0)
                t0 = time.monotonic()
                r = await ok(b, "ssh_session_command", session_id=mine, command="echo hi", wait=5)
                echo_times.append(time.monotonic() - t0)
                assert r["output"] == "hi\n"
            # a's own slots are all taken, yet it can still list and interrupt at once
            t0 = time.monotonic()
            listed = await ok(a, "ssh_session_list")
            await ok(a, "ssh_session_send", session_id=busy[0], control="c", newline=False)
            assert time.monotonic() - t0 < 1.0 and len(listed["sessions"]) == 2
        assert max(list_times) < 1.0, list_times      # unloaded: a few ms (CI is a loaded 2-core box)
        assert max(echo_times) < 2.0, echo_times
        own = [t for t in refusals if "its own limit is 4" in t]
        assert own and "has 4 calls running" in own[0], [t[:200] for t in refusals]
        for sid in busy:
            await ok(a, "ssh_session_close", session_id=sid)


# ----------------------------------------------------------------------------- results

async def test_results_do_not_carry_the_output_twice(lab):
    server = build_server(lab.inventory)
    async with Client(server) as client:
        sid = (await ok(client, "ssh_session_open", host="lab-target1"))["session_id"]
        r = await client.call_tool("ssh_session_command", {"session_id": sid, "command": "seq 1 20000",
                                                           "wait": 30})
        assert r.structured_content["truncated"] and r.structured_content["output"].endswith("20000\n")
        text = r.content[0].text
        assert "19999" not in text and "structuredContent" in text and sid in text
        wire = len(r.model_dump_json(by_alias=True, exclude_none=True))
        assert wire < 25_000, wire          # one copy of a capped 16,000-character output
    full = build_server(lab.inventory, full_text_results=True)
    async with Client(full) as client:
        sid = (await ok(client, "ssh_session_open", host="lab-target1"))["session_id"]
        r = await client.call_tool("ssh_session_command", {"session_id": sid, "command": "echo twice"})
        assert json.loads(r.content[0].text)["output"] == "twice\n" == r.structured_content["output"]


# ----------------------------------------------------------------------------- shutdown

async def test_sigterm_with_calls_in_flight_exits_promptly_and_closes_every_session(http):
    server = http()
    stamp = "sleep 4" + str(os.getpid() % 10000).zfill(4)
    sids: list[str] = []
    outcomes: list[str] = []

    async def call(c, sid, command):
        try:
            r = await c.call_tool("ssh_session_command", {"session_id": sid, "command": command, "wait": 40})
            outcomes.append(r.content[0].text if r.is_error else "ok")
        except Exception as exc:         # the server went away under the call
            outcomes.append(type(exc).__name__)

    async with anyio.create_task_group() as tg:
        async with server.client() as c:
            for host in ("lab-target1", "lab-target2", "lab-target3"):
                sids.append((await ok(c, "ssh_session_open", host=host))["session_id"])
            for sid in sids:
                tg.start_soon(call, c, sid, stamp)

            async def all_running():
                return len(pgrep(stamp)) >= 3
            await until(all_running, what="three commands running")
            t0 = time.monotonic()
            server.proc.send_signal(signal.SIGTERM)
            await until(lambda: _exited(server.proc), timeout=20, what="the server exits")
            elapsed = time.monotonic() - t0
            tg.cancel_scope.cancel()
    assert elapsed < 6, elapsed                 # the README's bound: 5 s
    assert not pgrep(stamp), "no command left running on a target"
    closes = {r["session_id"]: r for r in server.records() if r["event"] == "close"}
    assert set(sids) <= set(closes) and all(closes[s]["by"] == "closed at server shutdown" for s in sids)


async def _exited(proc) -> bool:
    return proc.poll() is not None


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1][0] != "Z"
    except (OSError, IndexError):
        return False


async def test_sigterm_to_a_stdio_server_closes_every_session_at_once(lab, tmp_path):
    inventory = tmp_path / f"inv-{os.urandom(4).hex()}.yaml"      # names this server's process
    inventory.write_text(lab.inventory.read_text())
    audit = tmp_path / "audit.jsonl"
    cli = str(Path(sys.executable).parent / "phonehome-jump")
    params = StdioServerParameters(command=cli, args=["--inventory", str(inventory), "--audit-log",
                                                      str(audit), "serve"], env=dict(os.environ))
    stamp = "sleep 5" + str(os.getpid() % 100000).zfill(5)
    elapsed = None

    async def command(c, sid):
        try:
            await c.call_tool("ssh_session_command", {"session_id": sid, "command": stamp, "wait": 40})
        except Exception:          # the server went away under the call
            pass

    try:
        async with Client(params) as c:
            sid = (await ok(c, "ssh_session_open", host="lab-target1"))["session_id"]
            async with anyio.create_task_group() as tg:
                tg.start_soon(command, c, sid)

                async def running():
                    return pgrep(stamp)
                await until(running, what="the command running")
                [pid] = [int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit() and
                         str(inventory).encode() in _cmdline(p) and b"serve" in _cmdline(p)]
                t0 = time.monotonic()
                os.kill(pid, signal.SIGTERM)

                async def exited():
                    return not _alive(pid)
                await until(exited, timeout=10, what="the stdio server exits")
                elapsed = time.monotonic() - t0
                tg.cancel_scope.cancel()
    except Exception:              # the client finds its server gone
        pass
    assert elapsed is not None and elapsed < 3, elapsed
    assert not pgrep(stamp), "no command left running on a target"
    closes = [json.loads(line) for line in audit.read_text().splitlines()]
    closes = [r for r in closes if r["event"] == "close" and r["session_id"] == sid]
    assert closes and closes[0]["by"] == "closed at server shutdown"


def test_a_stdio_client_that_closes_the_servers_stdout_has_its_sessions_closed(lab, tmp_path):
    """The client is gone (it closed the pipe the server writes to) though stdin stays open:
    the server ends as at the end of its input, every session closed and audited, exit 0."""
    audit = tmp_path / "audit.jsonl"
    cli = str(Path(sys.executable).parent / "phonehome-jump")
    proc = subprocess.Popen([cli, "--inventory", str(lab.inventory), "--audit-log", str(audit),
                             "serve"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=dict(os.environ))

    def send(message: dict) -> None:
        proc.stdin.write(json.dumps(message).encode() + b"\n")
        proc.stdin.flush()

    def reply(rid: int) -> dict:
        while True:
            line = proc.stdout.readline()
            assert line, proc.stderr.read()[-2000:]
            if json.loads(line).get("id") == rid:
                return json.loads(line)
    try:
        send({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
            "protocolVersion": "2025-06-18", "capabilities": {},
            "clientInfo": {"name": "raw", "version": "0"}}})
        reply(0)
        send({"jsonrpc": "2.0", "method": "notifications/initialized"})
        send({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {
            "name": "ssh_session_open", "arguments": {"host": "lab-target1"}}})
        sid = reply(1)["result"]["structuredContent"]["session_id"]
        proc.stdout.close()
        try:
            for rid in range(2, 50):        # replies with nowhere to go, until the server ends
                send({"jsonrpc": "2.0", "id": rid, "method": "tools/list"})
                if proc.poll() is not None:
                    break
        except BrokenPipeError:
            pass
        assert proc.wait(timeout=30) == 0
        err = proc.stderr.read()
    finally:
        proc.kill()
    assert b"internal error" not in err and b"Traceback" not in err, err[-2000:]
    records = [json.loads(line) for line in audit.read_text().splitlines()]
    assert [r["by"] for r in records if r["event"] == "close" and r["session_id"] == sid]


def _cmdline(proc: Path) -> bytes:
    try:
        return (proc / "cmdline").read_bytes()
    except OSError:
        return b""
