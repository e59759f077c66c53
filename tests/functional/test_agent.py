"""`phonehome-jump agent` as a real process, spoken to byte for byte, against the sshd lab.

Then restore across an agent restart, and the MCP server routed to two agents (two sites).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import stat
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from mcp import Client

from phonehome_jump.inventory import Inventory
from phonehome_jump.mcp_server import build_server

from .mcp_calls import error, ok

CLI = str(Path(sys.executable).parent / "phonehome-jump")


class Agent:
    """One `phonehome-jump agent` process; ``port`` is read from its "listening on" line."""

    def __init__(self, inventory: Path, state: Path, port: int = 0, *options: str) -> None:
        self.inventory, self.state = inventory, state
        self.proc = subprocess.Popen(
            [CLI, "--inventory", str(inventory), *options, "agent", "--listen",
             f"127.0.0.1:{port}", "--state", str(state)], stderr=subprocess.PIPE, text=True)
        line = self.proc.stderr.readline()
        assert "listening on 127.0.0.1:" in line, line + self.proc.stderr.read()
        self.port = int(line.split("listening on 127.0.0.1:")[1].split()[0])
        self.err: list[str] = []
        self._drain = threading.Thread(target=lambda: self.err.extend(self.proc.stderr), daemon=True)
        self._drain.start()

    def connect(self) -> Wire:
        return Wire(self.port)

    def stop(self, sig: int = signal.SIGTERM) -> str:
        """Stop the agent; returns its stderr (which must never hold a traceback)."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        self.proc.wait(timeout=20)
        self._drain.join(timeout=5)
        text = "".join(self.err)
        assert "Traceback" not in text, text
        return text


class Wire:
    """A test client speaking the framing itself: 4-byte big-endian length + UTF-8 JSON."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=60)
        self.n = 0

    def send_raw(self, data: bytes) -> None:
        self.sock.sendall(data)

    @staticmethod
    def frame(obj: object) -> bytes:
        body = json.dumps(obj).encode()
        return struct.pack(">I", len(body)) + body

    def recv(self) -> dict | None:
        header = self._exactly(4)
        if header is None:
            return None
        (length,) = struct.unpack(">I", header)
        body = self._exactly(length)
        assert body is not None, "the agent closed inside a reply"
        return json.loads(body.decode("utf-8"))

    def _exactly(self, n: int) -> bytes | None:
        data = b""
        while len(data) < n:
            chunk = self.sock.recv(n - len(data))
            if not chunk:
                assert not data, "the agent closed inside a frame"
                return None
            data += chunk
        return data

    def call(self, method: str, **params) -> dict:
        self.n += 1
        rid = f"req-{self.n}"
        self.send_raw(self.frame({"method": method, "params": params, "id": rid}))
        reply = self.recv()
        assert reply is not None and reply["id"] == rid, reply
        return reply

    def ok(self, method: str, **params) -> dict:
        reply = self.call(method, **params)
        assert "error" not in reply, reply["error"]
        return reply["result"]

    def error(self, method: str, **params) -> dict:
        reply = self.call(method, **params)
        assert "result" not in reply, reply
        return reply["error"]

    def closed(self) -> bool:
        """True when the agent has closed this connection (EOF within a few seconds)."""
        self.sock.settimeout(5)
        try:
            return self.sock.recv(1) == b""
        except ConnectionResetError:
            return True

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def agent(lab, tmp_path):
    a = Agent(lab.inventory, tmp_path / "state" / "agent.json")
    yield a
    a.stop()


# ----------------------------------------------------------------------------- every method

def test_every_method_over_the_wire(agent, lab):
    w = agent.connect()
    hosts = w.ok("inventory_list", tag="lab")
    assert "lab-target1" in [h["name"] for h in hosts["hosts"]]
    shown = w.ok("inventory_show", host="lab-target1")
    assert [h["name"] for h in shown["chain"]] == ["jump1", "jump2"]

    s = w.ok("ssh_session_open", host="lab-target1")
    sid = s["session_id"]
    assert (s["host"], s["chain"], s["state"], s["proxied"]) == ("lab-target1", ["jump1", "jump2"],
                                                                 "idle", True)
    r = w.ok("ssh_session_command", session_id=sid, command="cd /tmp && pwd", timeout=10)
    assert (r["stdout"], r["exit_status"], r["cwd"], r["prompt_detected"]) == ("/tmp\n", 0, "/tmp", True)

    r = w.ok("ssh_session_command", session_id=sid, command="read -p 'Name? ' n; echo hi $n",
             timeout=5, until=r"Name\? $")
    assert (r["running"], r["stdout"]) == (True, "Name? ")
    assert w.ok("ssh_session_send", session_id=sid, text="bob", send_newline=True)["sent"]
    r = w.ok("ssh_session_read", session_id=sid, timeout=10)
    assert (r["stdout"], r["exit_status"], r["has_more"]) == ("hi bob\n", 0, False)
    r = w.ok("ssh_session_read", session_id=sid, offset=9)      # page: "Name? hi bob\n"[9:]
    assert r["stdout"] == "bob\n"

    listed = w.ok("ssh_session_list")
    assert [x["session_id"] for x in listed["sessions"]] == [sid] and listed["count"] == 1
    assert w.ok("ssh_session_restore")["alive"] == [sid]
    assert w.ok("ssh_session_close", session_id=sid) == {"session_id": sid, "closed": True,
                                                         "host": "lab-target1"}
    assert w.ok("ssh_session_list")["sessions"] == []

    err = w.error("ssh_session_command", session_id=sid, command="id")
    assert err["code"] == -32004 and f"no open session '{sid}'" in err["message"]
    err = w.error("ssh_session_open", host="lab-targte1")
    assert err["code"] == -32602 and "did you mean 'lab-target1'" in err["message"]
    err = w.error("ssh_session_frobnicate")
    assert err["code"] == -32601 and "ssh_session_open" in err["message"]
    w.close()


def test_an_unmodified_caller_gets_clear_refusals(agent, lab):
    w = agent.connect()
    password = lab.env["PHJ_LAB_PASSWORD"]
    err = w.error("ssh_session_open", host="lab-password", username="phjpass", password=password)
    assert err["code"] == -32602 and "'password' is refused" in err["message"]
    assert password not in json.dumps(err)
    err = w.error("ssh_session_open", host="lab-target1", jump_hosts=[{"host": "10.0.0.1"}])
    assert "'jump_hosts' is refused" in err["message"] and "inventory" in err["message"]
    err = w.error("ssh_session_open", host=lab.addr("target1"))     # three names there
    assert err["code"] == -32602 and "3 inventory hosts match address" in err["message"]
    assert "pass the inventory name as host: lab-password, lab-sudo, lab-target1" in err["message"]
    err = w.error("ssh_session_open", host=lab.addr("target2"), username="phjpass", port=22)
    assert "no inventory host at address" in err["message"] and "lab-target2" in err["message"]
    err = w.error("ssh_session_open", host="lab-target1", username="root")
    assert "'username' differs from the inventory's 'phjkey'" in err["message"]
    # what the unmodified server sends for an inventory host is accepted
    s = w.ok("ssh_session_open", host="lab-target1", username="phjkey", port=22,
             password=None, key_file=None, jump_hosts=None)
    w.ok("ssh_session_close", session_id=s["session_id"])


# ----------------------------------------------------------------------------- pipelining, concurrency

def test_pipelined_requests_are_answered_in_order(agent):
    w = agent.connect()
    sid = w.ok("ssh_session_open", host="lab-target2")["session_id"]
    batch = [{"method": "ssh_session_command", "id": f"p{i}",
              "params": {"session_id": sid, "command": f"echo {i}; cd /tmp/../tmp"}} for i in range(5)]
    batch.insert(2, {"method": "inventory_show", "params": {"host": "lab-target3"}, "id": 77})
    w.send_raw(b"".join(Wire.frame(r) for r in batch))     # one write, six requests
    replies = [w.recv() for _ in batch]
    assert [r["id"] for r in replies] == ["p0", "p1", 77, "p2", "p3", "p4"]
    assert [r["result"]["stdout"] for r in replies if r["id"] != 77] == [f"{i}\n" for i in range(5)]
    assert replies[2]["result"]["name"] == "lab-target3"
    w.ok("ssh_session_close", session_id=sid)


def test_concurrent_connections_do_not_wait_for_each_other(agent):
    go = f"/tmp/phj-go-{os.getpid()}-{time.monotonic_ns()}"
    slow = agent.connect()
    sid = slow.ok("ssh_session_open", host="lab-target1")["session_id"]
    # runs until the workers below have been served (a file they cannot create if they wait)
    slow.send_raw(Wire.frame({"method": "ssh_session_command", "id": "slow",
                              "params": {"session_id": sid, "timeout": 25,
                                         "command": f"until [ -e {go} ]; do sleep 0.1; done; echo slow"}}))
    results: dict[int, str] = {}

    def worker(i: int) -> None:
        w = agent.connect()
        s = w.ok("ssh_session_open", host=f"lab-target{2 + i % 2}")["session_id"]
        results[i] = w.ok("ssh_session_command", session_id=s, command=f"echo worker{i}")["stdout"]
        w.ok("ssh_session_close", session_id=s)
        w.close()

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert results == {i: f"worker{i}\n" for i in range(4)}
    last = agent.connect()                    # the go signal, on the slow command's host
    other = last.ok("ssh_session_open", host="lab-target1")["session_id"]
    last.ok("ssh_session_command", session_id=other, command=f"touch {go}")
    reply = slow.recv()
    assert reply["id"] == "slow" and reply["result"]["stdout"] == "slow\n", reply
    last.ok("ssh_session_command", session_id=other, command=f"rm -f {go}")
    for w, s in ((slow, sid), (last, other)):
        w.ok("ssh_session_close", session_id=s)


# ----------------------------------------------------------------------------- bad frames

def _body(text: bytes) -> bytes:
    return struct.pack(">I", len(text)) + text


BAD_FRAMES = {   # name: (bytes sent, expected error code or None for a clean close, closes?)
    "oversized length": (struct.pack(">I", 0xFFFFFFFF) + b"{}", -32600, True),
    "invalid JSON": (_body(b'{"method": "ssh_session_list", '), -32700, False),
    "invalid UTF-8 method": (_body(b'{"method": "\xff\xfe", "id": "x"}'), -32600, False),
    "invalid UTF-8 text": (_body(b'{"method": "ssh_session_send", "id": "x", "params": '
                                 b'{"session_id": "s-1", "text": "\xff"}}'), -32602, False),
    "empty body": (_body(b""), -32700, False),
    "not an object": (_body(b'["ssh_session_list"]'), -32600, False),
    "missing method": (_body(b'{"params": {}, "id": "m"}'), -32600, False),
    "method not a string": (_body(b'{"method": 7, "id": "m"}'), -32600, False),
    "params not an object": (_body(b'{"method": "ssh_session_list", "params": [1], "id": "m"}'), -32600, False),
    "id an object": (_body(b'{"method": "ssh_session_list", "id": {"a": 1}}'), -32600, False),
    "session_id a number": (_body(b'{"method": "ssh_session_close", "params": {"session_id": 5}, "id": "m"}'), -32602, False),
    "timeout a string": (_body(b'{"method": "ssh_session_read", "params": {"session_id": "s", "timeout": "5"}, "id": "m"}'), -32602, False),
    "unknown parameter": (_body(b'{"method": "ssh_session_list", "params": {"all": true}, "id": "m"}'), -32602, False),
    "deeply nested JSON": (_body(b"[" * 100_000 + b"]" * 100_000), -32700, False),
    "disconnect inside the header": (b"\x00\x00", None, True),
    "disconnect inside the body": (struct.pack(">I", 100) + b'{"method": "ssh_se', None, True),
}


@pytest.mark.parametrize("name", list(BAD_FRAMES))
def test_bad_frames_get_an_error_or_a_clean_close(agent, name):
    data, code, closes = BAD_FRAMES[name]
    bystander = agent.connect()               # a connection open before, and still served after
    bystander.ok("ssh_session_list")
    w = agent.connect()
    w.send_raw(data)
    if code is None:
        w.sock.shutdown(socket.SHUT_WR)       # the client goes away mid-frame
        assert w.closed()
    else:
        reply = w.recv()
        assert reply["error"]["code"] == code and reply["error"]["message"], reply
        assert "result" not in reply
        if closes:
            assert w.closed()
        else:                                 # the same connection goes on working
            assert w.ok("inventory_show", host="lab-target1")["name"] == "lab-target1"
    w.close()
    assert bystander.ok("ssh_session_list")["sessions"] == []
    fresh = agent.connect()
    assert fresh.ok("inventory_list")["hosts"]
    assert agent.proc.poll() is None


def test_param_errors_name_the_parameter(agent):
    w = agent.connect()
    err = w.error("ssh_session_command", session_id="s-1")
    assert err == {"code": -32602, "message": "invalid params for ssh_session_command: missing "
                                              "required parameter 'command'"}
    err = w.error("ssh_session_send", session_id="s-1", send_newline="yes")
    assert "parameter 'send_newline'" in err["message"] and err["code"] == -32602


# ----------------------------------------------------------------------------- restore

def test_restore_after_an_agent_restart_keeps_id_and_directory(lab, tmp_path):
    state = tmp_path / "state" / "agent.json"
    a = Agent(lab.inventory, state)
    w = a.connect()
    sid = w.ok("ssh_session_open", host="lab-target1")["session_id"]
    w.ok("ssh_session_command", session_id=sid,
         command="mkdir -p /tmp/phj-restore-$PPID && cd /tmp/phj-restore-$PPID")
    where = w.ok("ssh_session_command", session_id=sid, command="pwd")["stdout"].strip()
    assert where.startswith("/tmp/phj-restore-")
    pw = w.ok("ssh_session_open", host="lab-password")["session_id"]
    port = a.port
    w.close()

    assert stat.S_IMODE(state.stat().st_mode) == 0o600
    text = state.read_text()
    for name in ("PHJ_LAB_PASSWORD", "PHJ_LAB_SUDO_PASSWORD"):
        assert lab.env[name] not in text
    assert {r["id"] for r in json.loads(text)["sessions"]} == {sid, pw}

    a.stop(signal.SIGKILL)                   # no goodbye: the state file is all that is left
    b = Agent(lab.inventory, state, port=port)
    try:
        w = b.connect()
        assert {p["session_id"] for p in w.ok("ssh_session_list")["pending_restore"]} == {sid, pw}
        err = w.error("ssh_session_command", session_id=sid, command="pwd")
        assert err["code"] == -32004 and "ssh_session_restore" in err["message"]
        r = w.ok("ssh_session_restore")
        assert [(x["session_id"], x["cwd"], x["cwd_restored"]) for x in r["restored"]] == [(sid, where, True)]
        assert [x["session_id"] for x in r["manual_required"]] == [pw] and r["failed"] == []
        r = w.ok("ssh_session_command", session_id=sid, command="pwd")
        assert (r["stdout"], r["cwd"]) == (where + "\n", where)
        w.ok("ssh_session_command", session_id=sid, command=f"cd / && rmdir {where}")
        assert w.ok("ssh_session_close", session_id=pw)["closed"]      # forgets the record
        assert [x["session_id"] for x in w.ok("ssh_session_list")["sessions"]] == [sid]
        assert w.ok("ssh_session_list")["pending_restore"] == []
        assert stat.S_IMODE(state.stat().st_mode) == 0o600
    finally:
        b.stop()


# ----------------------------------------------------------------------------- MCP routing

@pytest.fixture
def anyio_backend():
    return "asyncio"


@pytest.fixture
def sites(lab, tmp_path):
    """Two agents (site-a, site-b) over the lab; an MCP inventory naming them per host."""
    a = Agent(lab.inventory, tmp_path / "a.json")
    b = Agent(lab.inventory, tmp_path / "b.json")
    text = lab.inventory.read_text()
    for host, site in (("lab-target1", "site-a"), ("lab-target2", "site-b")):
        old = f"  {host}: {{host: {lab.addr(host.removeprefix('lab-'))}, groups: [lab]}}"
        assert old in text
        text = text.replace(old, old[:-1] + f", client: {site}}}")
    inv = tmp_path / "mcp.yaml"
    inv.write_text(text)
    yield Inventory.load(inv), a, b
    for agent in (a, b):
        agent.stop()


@pytest.mark.anyio
async def test_mcp_routes_each_site_to_its_agent(sites):
    inv, a, b = sites
    server = build_server(inv, agents={"site-a": ("127.0.0.1", a.port), "site-b": ("127.0.0.1", b.port)})
    async with Client(server, mode="legacy") as one, Client(server, mode="legacy") as two:
        shown = await ok(one, "inventory_show", host="lab-target1")
        assert shown["client"] == "site-a"
        ids = {}
        for host, where in (("lab-target1", "@site-a"), ("lab-target2", "@site-b"), ("lab-target3", None)):
            s = await ok(one, "ssh_session_open", host=host)
            assert (s["host"], s["chain"], s["framing"]) == (host, ["jump1", "jump2"], "sentinel")
            assert s["session_id"].endswith(where) if where else "@" not in s["session_id"]
            ids[host] = s["session_id"]
            r = await ok(one, "ssh_session_command", session_id=s["session_id"], command="cd /tmp && echo $SSH_CONNECTION")
            assert (r["exit_status"], r["cwd"]) == (0, "/tmp")
            assert r["output"].split()[2] == lab_addr(inv, host)      # really on that host
        # the agents hold the remote sessions; the local manager only the local one
        assert [x["session_id"] for x in a.connect().ok("ssh_session_list")["sessions"]] == \
            [ids["lab-target1"].removesuffix("@site-a")]
        assert [x["session_id"] for x in b.connect().ok("ssh_session_list")["sessions"]] == \
            [ids["lab-target2"].removesuffix("@site-b")]
        listed = await ok(one, "ssh_session_list")
        assert [x["session_id"] for x in listed["sessions"]] == list(ids.values())
        assert all(x["cwd"] == "/tmp" and x["state"] == "idle" for x in listed["sessions"])

        # same behaviour as in-process: a running command, then read; an answered prompt
        sid = ids["lab-target2"]
        r = await ok(one, "ssh_session_command", session_id=sid, command="echo start; sleep 2; echo done", wait=0.5)
        assert (r["running"], r["output"], r["exit_status"]) == (True, "start\n", None) and "still running" in r["note"]
        assert "still running" in await error(one, "ssh_session_command", session_id=sid, command="id")
        r = await ok(one, "ssh_session_read", session_id=sid, wait=10)
        assert (r["output"], r["exit_status"]) == ("done\n", 0)
        r = await ok(one, "ssh_session_command", session_id=sid, command="read -p 'Go? ' x; echo got $x",
                     wait=5, until=r"Go\? $")
        assert r["running"]
        assert (await ok(one, "ssh_session_send", session_id=sid, text="yes"))["sent"]
        assert (await ok(one, "ssh_session_read", session_id=sid, wait=5))["output"] == "got yes\n"
        r = await ok(one, "ssh_run", host="lab-target1", command="sh -c 'exit 4'")
        assert (r["exit_status"], r["session_open"]) == (4, False)

        # ownership: the second client sees none of them, and gets the in-process error text
        assert (await ok(two, "ssh_session_list"))["sessions"] == []
        for host, sid in ids.items():
            for tool, args in [("ssh_session_command", {"command": "id"}), ("ssh_session_read", {}),
                               ("ssh_session_send", {"text": "x"}), ("ssh_session_close", {})]:
                text = await error(two, tool, session_id=sid, **args)
                assert f"session manager: no open session '{sid}'" in text, text
                assert "no sessions are open" in text
        assert "open sessions: " + ", ".join(ids.values()) in await error(
            one, "ssh_session_close", session_id="s-0@site-a")
        assert "no open session 's-1@site-z'" in await error(one, "ssh_session_read", session_id="s-1@site-z")
        # unknown hosts: the same error as in-process
        assert "did you mean 'lab-target1'" in await error(one, "ssh_session_open", host="lab-targte1")

        for sid in ids.values():
            assert (await ok(one, "ssh_session_close", session_id=sid))["closed"]
        assert (await ok(one, "ssh_session_list"))["sessions"] == []
    assert a.connect().ok("ssh_session_list")["sessions"] == []


def lab_addr(inv: Inventory, host: str) -> str:
    return inv.target(host).endpoint.host


@pytest.mark.anyio
async def test_a_dead_agent_is_named_and_the_client_reconnects(sites, lab):
    inv, a, b = sites
    server = build_server(inv, agents={"site-a": ("127.0.0.1", a.port), "site-b": ("127.0.0.1", b.port)})
    async with Client(server) as client:
        sid = (await ok(client, "ssh_session_open", host="lab-target2"))["session_id"]
        await ok(client, "ssh_session_command", session_id=sid, command="cd /var")
        port = b.port
        b.stop(signal.SIGKILL)
        text = await error(client, "ssh_session_command", session_id=sid, command="pwd")
        assert "site 'site-b': the agent at 127.0.0.1:" in text and "does not answer" in text
        assert "try: check that `phonehome-jump agent --listen` runs" in text
        text = await error(client, "ssh_session_open", host="lab-target2")
        assert "site 'site-b'" in text
        listed = (await ok(client, "ssh_session_list"))["sessions"]
        assert [(x["session_id"], x["state"]) for x in listed] == [(sid, "dead")]
        assert "site 'site-b' does not answer" in listed[0]["dead_reason"]
        # site-a is unaffected
        other = (await ok(client, "ssh_session_open", host="lab-target1"))["session_id"]
        assert (await ok(client, "ssh_session_command", session_id=other, command="echo a"))["output"] == "a\n"

        # the agent comes back with its state: the same id answers, in the same directory
        b2 = Agent(b.inventory, b.state, port=port)
        try:
            r = await ok(client, "ssh_session_command", session_id=sid, command="pwd")
            assert (r["output"], r["cwd"]) == ("/var\n", "/var")
            await ok(client, "ssh_session_close", session_id=sid)
        finally:
            b2.stop()

    # a host whose site has no agent: a clear error, not a local attempt
    server = build_server(inv, agents={"site-a": ("127.0.0.1", a.port)})
    async with Client(server) as client:
        text = await error(client, "ssh_session_open", host="lab-target2")
        assert "client site 'site-b'" in text and "--agent site-b=HOST:PORT" in text


@pytest.mark.anyio
async def test_a_routed_session_outlives_a_restore_during_a_jump1_outage(sites, lab):
    inv, a, b = sites
    server = build_server(inv, agents={"site-a": ("127.0.0.1", a.port), "site-b": ("127.0.0.1", b.port)})
    async with Client(server) as client:
        sid = (await ok(client, "ssh_session_open", host="lab-target2"))["session_id"]
        await ok(client, "ssh_session_command", session_id=sid, command="cd /var")
        port = b.port
        b.stop(signal.SIGKILL)
        subprocess.run(["kill", (lab.state / "jump1.pid").read_text().strip()], check=True)
        try:
            deadline = time.monotonic() + 10
            while lab.reachable_directly("jump1"):
                assert time.monotonic() < deadline
                time.sleep(0.05)
            b2 = Agent(b.inventory, b.state, port=port)
            # the automatic restore (reconnect) and the retried one both fail: kept, and said so
            text = await error(client, "ssh_session_command", session_id=sid, command="pwd")
            assert "could not be reopened yet" in text and "jump1" in text, text
            listed = (await ok(client, "ssh_session_list"))["sessions"]
            assert [x["session_id"] for x in listed] == [sid]
        finally:
            lab.start_sshd("jump1")                      # healed
        try:
            r = await ok(client, "ssh_session_command", session_id=sid, command="pwd")
            assert (r["output"], r["cwd"]) == ("/var\n", "/var")
            await ok(client, "ssh_session_close", session_id=sid)
        finally:
            b2.stop()


def test_open_under_a_chosen_id_refuses_one_in_use(manager):
    from phonehome_jump.errors import SessionError
    info = manager.open("lab-target1", session_id="s-chosen")
    assert info.id == "s-chosen" and manager.command("s-chosen", "echo ok").output == "ok\n"
    with pytest.raises(SessionError, match="session id 's-chosen' is already in use"):
        manager.open("lab-target2", session_id="s-chosen")
    assert [i.id for i in manager.list()] == ["s-chosen"]     # the refused open left nothing
    manager.close("s-chosen")
    assert manager.open("lab-target2", session_id="s-chosen").id == "s-chosen"


@pytest.mark.anyio
async def test_the_servers_policy_holds_for_routed_sessions(sites, tmp_path):
    """The agents' inventory has no policy; the MCP server's does, and it applies at the site."""
    inv, a, b = sites
    text = (tmp_path / "mcp.yaml").read_text()
    assert "  keepalive: 15\n" in text
    policy = "  policy: {deny: ['\\bshutdown\\b'], confirm: ['^touch\\s+/tmp/phj-routed']}\n"
    (tmp_path / "policy.yaml").write_text(text.replace("  keepalive: 15\n", "  keepalive: 15\n" + policy))
    server = build_server(Inventory.load(tmp_path / "policy.yaml"),
                          agents={"site-a": ("127.0.0.1", a.port), "site-b": ("127.0.0.1", b.port)})
    async with Client(server) as client:
        sid = (await ok(client, "ssh_session_open", host="lab-target1"))["session_id"]
        assert sid.endswith("@site-a")
        assert "deny rule" in await error(client, "ssh_session_command", session_id=sid,
                                          command="shutdown -h now")
        assert "deny rule" in await error(client, "ssh_session_send", session_id=sid, text="shutdown")
        assert "cannot ask its user" in await error(client, "ssh_session_command", confirm=True,
                                                    session_id=sid, command="touch /tmp/phj-routed")

    async def approve(context, params):
        import mcp_types
        return mcp_types.ElicitResult(action="accept", content={"approve": True})
    async with Client(server, elicitation_callback=approve) as client:
        sid = (await ok(client, "ssh_session_open", host="lab-target1"))["session_id"]
        r = await ok(client, "ssh_session_command", session_id=sid,
                     command="touch /tmp/phj-routed && echo ok")
        assert r["output"] == "ok\n"


# ----------------------------------------------------------------------------- hostile callers

def test_a_burst_of_simultaneous_connects_is_all_answered(agent):
    n = 300
    go = threading.Barrier(n)
    replies: list = [None] * n

    def one(i: int) -> None:
        go.wait()
        w = Wire(agent.port)                  # every connect at once: the listen backlog
        try:
            replies[i] = w.call("heartbeat")
        finally:
            w.close()
    threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert all(r is not None and r["result"] == {"status": "alive"} for r in replies)
    # the listen queue holds such a burst (Send-Q of a listening socket is its backlog)
    ss = subprocess.run(["ss", "-Hltn", f"sport = :{agent.port}"], capture_output=True,
                        text=True, check=True).stdout.split()
    assert int(ss[2]) >= n, ss
    assert agent.proc.poll() is None


def test_text_that_is_not_utf8_is_refused_and_the_session_goes_on(agent):
    w = agent.connect()
    sid = w.ok("ssh_session_open", host="lab-target3")["session_id"]
    body = (b'{"method": "ssh_session_send", "id": "bad", "params": {"session_id": "'
            + sid.encode() + b'", "text": "echo \xff\xfe"}}')
    w.send_raw(struct.pack(">I", len(body)) + body)
    reply = w.recv()
    assert reply["id"] == "bad" and reply["error"]["code"] == -32602
    assert "parameter 'text' is not valid UTF-8" in reply["error"]["message"]
    err = w.error("ssh_session_command", session_id=sid, command="echo \ud800")
    assert err["code"] == -32602 and "parameter 'command'" in err["message"]
    r = w.ok("ssh_session_command", session_id=sid, command="echo still here")
    assert (r["stdout"], r["exit_status"]) == ("still here\n", 0)
    w.ok("ssh_session_close", session_id=sid)


def test_an_unwritable_state_file_refuses_to_start(lab, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    proc = subprocess.run([CLI, "--inventory", str(lab.inventory), "agent", "--listen",
                           "127.0.0.1:0", "--state", str(blocker / "state.json")],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1 and "cannot write the state file" in proc.stderr, proc.stderr
    assert "--state PATH" in proc.stderr and "listening" not in proc.stderr
