"""Field reliability of the links, against the real lab: dead peers found in seconds and the
right hop blamed, busy targets, revive in place (silent drops are iptables DROP rules inside
a node's namespace: no RST, no ICMP)."""

from __future__ import annotations

import subprocess
import threading
import time
from pathlib import Path

import pytest

from phonehome_jump.errors import ConnectError, SessionDeadError, SessionError
from phonehome_jump.inventory import Inventory
from phonehome_jump.manager import SessionManager

from .waits import at_once

INTERVAL, COUNT = 1, 3            # short probes, so that a test waits seconds, not minutes
SLACK = 4.0                       # "a few seconds" on a loaded 2-core CI machine


def inventory(lab, tmp_path: Path, *, keepalive: int = INTERVAL, count: int = COUNT,
              extra: str = "", connect_timeout: float | None = None) -> Inventory:
    text = lab.inventory.read_text()
    assert "  keepalive: 15\n" in text
    settings = f"  keepalive: {keepalive}\n  keepalive_count: {count}\n"
    if connect_timeout is not None:
        settings += f"  connect_timeout: {connect_timeout}\n"
    path = tmp_path / "inv.yaml"
    path.write_text(text.replace("  keepalive: 15\n", settings) + extra)
    return Inventory.load(path)


def wait_for(cond, timeout: float, step: float = 0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if (value := cond()):
            return value
        time.sleep(step)
    return cond()


def blocked_command(m: SessionManager, sid: str, command: str = "sleep 120", wait: float = 100):
    """Run a long command in a thread; returns (thread, box) where box gets 'error' or 'result'."""
    box: dict = {}

    def go():
        try:
            box["result"] = m.command(sid, command, wait=wait)
        except Exception as exc:   # the test inspects it
            box["error"] = exc
        box["at"] = time.monotonic()
    th = threading.Thread(target=go, daemon=True)
    th.start()
    assert wait_for(lambda: m.session(sid).running, 5), "the command did not start"
    return th, box


# -- silent drops: detected within interval x count, the right link named ------------------

@pytest.mark.parametrize("node,blamed", [("jump1", "hop 'jump1'"), ("jump2", "hop 'jump2'"),
                                         ("target1", "target 'lab-target1'")])
def test_silent_drop_marks_sessions_dead_naming_the_link(lab, tmp_path, node, blamed):
    inv = inventory(lab, tmp_path)
    with SessionManager(inv) as m:
        waiting = m.open("lab-target1").id
        idle = m.open("lab-target2").id
        assert m.command(idle, "echo up").output == "up\n"
        th, box = blocked_command(m, waiting)
        lab.drop(node)
        try:
            t0 = time.monotonic()
            th.join(INTERVAL * COUNT + SLACK + 2)
            assert not th.is_alive(), "a session blocked in a wait did not learn of the drop"
            took = box["at"] - t0
            err = box.get("error")
            assert isinstance(err, SessionDeadError), box
            assert blamed in str(err) and "stopped answering" in str(err), str(err)
            assert took <= INTERVAL * COUNT + SLACK, f"detected after {took:.1f}s"
            print(f"\nsilent drop of {node}: detected in {took:.2f}s "
                  f"(keepalive {INTERVAL}s x {COUNT})")
            states = wait_for(lambda: {i.id: i for i in m.list()}, 1)
            assert states[waiting].state == "dead" and blamed in states[waiting].dead_reason
            if node == "target1":       # the other target's session is not affected
                assert states[idle].state == "idle"
                assert m.command(idle, "echo still").output == "still\n"
            else:                       # an idle session through that hop is dead too, named
                info = wait_for(lambda: next(i for i in m.list() if i.id == idle).state == "dead"
                                and next(i for i in m.list() if i.id == idle), 2)
                assert info and blamed in info.dead_reason, info
        finally:
            lab.undrop(node)
        # healed: a new open dials the chain anew and works
        assert m.command(m.open("lab-target3").id, "echo back").output == "back\n"


def test_silent_drop_of_a_direct_target_names_it(lab, tmp_path):
    inv = inventory(lab, tmp_path)
    with SessionManager(inv) as m:
        sid = m.open("lab-jump1").id           # no hops: jump1 is the target here
        th, box = blocked_command(m, sid)
        lab.drop("jump1")
        try:
            th.join(INTERVAL * COUNT + SLACK + 2)
        finally:
            lab.undrop("jump1")
    assert not th.is_alive() and isinstance(box.get("error"), SessionDeadError), box
    assert "target 'lab-jump1'" in str(box["error"]) and "stopped answering" in str(box["error"])


@pytest.mark.parametrize("node,up", [("jump1", "lab-target2"), ("jump2", "lab-target2"),
                                     ("jump1", "lab-jump2")])
def test_open_through_a_silently_dead_jump_blames_that_jump(lab, tmp_path, node, up):
    # probes far apart, so the open (not the probe) is what runs into the dead jump
    inv = inventory(lab, tmp_path, keepalive=600, count=3, connect_timeout=2)
    with SessionManager(inv) as m:
        m.open(up)                      # the chain (lab-jump2: only jump1) is up and shared
        lab.drop(node)
        try:
            t0 = time.monotonic()
            with pytest.raises(ConnectError) as err:
                m.open("lab-target1")
            took = time.monotonic() - t0
        finally:
            lab.undrop(node)
    assert err.value.hop == node and err.value.reason == "dead", str(err.value)
    assert f"hop {node!r}" in str(err.value) and "did not answer a keepalive" in str(err.value)
    assert ("lab-target1" if up == "lab-target2" else "opening jump2") in str(err.value)
    assert "Timeout opening channel" not in str(err.value)
    assert took < 2 * 2 + SLACK + 2


# -- crashes: a hop, the target, the shell ---------------------------------------------------

def test_hop_crash_during_a_running_command_names_the_hop(lab, lab_inventory):
    with SessionManager(lab_inventory) as m:
        sid = m.open("lab-target1").id
        th, box = blocked_command(m, sid)
        try:
            lab.kill_sshd("jump2")
            th.join(10)
            assert not th.is_alive()
        finally:
            lab.start_sshd("jump2")
    err = box.get("error")
    assert isinstance(err, SessionDeadError), box
    assert "hop 'jump2'" in str(err) and "closed the connection" in str(err), str(err)


def test_killed_shell_is_not_reported_as_a_hop_crash(manager):
    sid = manager.open("lab-target1").id
    with pytest.raises(SessionDeadError) as err:
        manager.command(sid, "kill -9 $$", wait=10)
    text = str(err.value)
    assert "killed by signal KILL" in text and "still up" in text, text
    assert "hop" not in text.split("try:")[0]
    (info,) = manager.list()
    assert info.state == "dead" and "killed by signal KILL" in info.dead_reason


def test_open_right_after_jump2_dies_blames_jump2(lab, lab_inventory):
    with SessionManager(lab_inventory) as m:
        m.open("lab-target2")          # jump1 -> jump2 up and shared
        try:
            lab.kill_sshd("jump2")
            with pytest.raises(ConnectError) as err:
                m.open("lab-target1")   # within moments of the crash
        finally:
            lab.start_sshd("jump2")
    assert err.value.hop == "jump2", str(err.value)
    assert "EOFError" not in str(err.value) and "hop 'jump2'" in str(err.value)


def test_target_whose_sshd_is_down_says_nothing_listens(lab, lab_inventory):
    with SessionManager(lab_inventory) as m:
        lab.kill_sshd("target3")
        try:
            with pytest.raises(ConnectError) as err:
                m.open("lab-target3")
        finally:
            lab.start_sshd("target3")
    text = str(err.value)
    assert (err.value.hop, err.value.reason) == ("lab-target3", "refused")
    assert f"nothing listens on {lab.addr('target3')}:22" in text and "jump2" in text
    assert "Connection refused" in text           # what jump2 said, kept from its message
    assert "AllowTcpForwarding" not in text


def test_target_that_is_unreachable_from_the_last_hop_says_why(lab, tmp_path):
    gone = lab.addr("target3").rsplit(".", 1)[0] + ".250"      # on jump2's bridge, nobody there
    inv = inventory(lab, tmp_path, extra=f"  gone: {{host: {gone}, via: jump2, "
                                         "credentials: lab-key}\n")
    with SessionManager(inv) as m, pytest.raises(ConnectError) as err:
        m.open("gone")
    text = str(err.value)
    assert (err.value.hop, err.value.reason) == ("gone", "unreachable"), text
    assert "jump2 could not connect" in text and "No route to host" in text


def test_exit_is_a_normal_end_without_logout(manager):
    sid = manager.open("lab-target1").id
    manager.command(sid, "echo before")
    r = manager.command(sid, "exit", wait=5)
    assert (r.output, r.exit_status, r.running) == ("", 0, False)
    (info,) = manager.list()
    assert "exited with status 0" in info.dead_reason
    with pytest.raises(SessionDeadError) as err:
        manager.command(sid, "echo")
    assert "has ended" in str(err.value) and "is dead" not in str(err.value)


# -- busy targets -----------------------------------------------------------------------------

def test_fifty_concurrent_opens_to_a_stock_sshd_all_succeed(lab, tmp_path):
    """A stock sshd (MaxStartups 10:30:100) drops new connections past 10 unauthenticated
    (every session its own login here: shared logins would hide the pacing)."""
    n = 50
    inv = inventory(lab, tmp_path, keepalive=15, extra=lab.stock_host_yaml())
    with SessionManager(inv, max_per_host=n, share_logins=False) as m:
        m.open("lab-target1")           # the chain up first, as when Claude fans out
        results = at_once(lambda i: m.command(m.open("lab-stock1").id, f"echo {i}").output, n)
    failures = [r for r in results if not isinstance(r, str)]
    assert not failures, f"{len(failures)} of {n} failed, e.g. {failures[0]}"
    assert results == [f"{i}\n" for i in range(n)]


def test_a_target_that_keeps_refusing_logins_says_so(lab, tmp_path):
    """A server that closes every new connection before the banner (what sshd does past
    MaxStartups): retried with backoff, then reported as refusing new connections."""
    ns, addr, port = lab.nodes["target3"].ns, lab.addr("target3"), 2299
    code = ("import socket\ns=socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
            f"s.bind(('{addr}', {port})); s.listen(64)\n"
            "while True:\n    c, _ = s.accept(); c.close()\n")
    srv = subprocess.Popen(["ip", "netns", "exec", ns, "python3", "-c", code])
    try:
        assert wait_for(lambda: subprocess.run(["ip", "netns", "exec", ns, "ss", "-Hltn",
                                                f"sport = :{port}"], capture_output=True,
                                               text=True).stdout.strip(), 5)
        inv = inventory(lab, tmp_path, connect_timeout=3, extra=f"  refuser: {{host: {addr}, port: {port}, "
                                             "via: jump2, credentials: lab-key}\n")
        with SessionManager(inv) as m, pytest.raises(ConnectError) as err:
            m.open("refuser")
    finally:
        srv.kill()
        srv.wait()
    text = str(err.value)
    assert (err.value.hop, err.value.reason) == ("refuser", "busy"), text
    assert "refused new connections" in text and "MaxStartups" in text


# -- revive in place ---------------------------------------------------------------------------

def test_revive_reopens_a_dead_session_under_its_id_in_its_directory(lab, lab_inventory):
    with SessionManager(lab_inventory) as m:
        sid = m.open("lab-target1").id
        m.command(sid, "mkdir -p '/tmp/phj revive' && cd '/tmp/phj revive'")
        with pytest.raises(SessionError, match="alive"):
            m.revive(sid)
        lab.kill_sshd("jump2")
        try:
            assert wait_for(lambda: m.list()[0].state == "dead", 10)
        finally:
            lab.start_sshd("jump2")
        info = m.revive(sid)
        assert (info.id, info.state, info.cwd) == (sid, "idle", "/tmp/phj revive")
        r = m.command(sid, "pwd")
        assert (r.output, r.exit_status) == ("/tmp/phj revive\n", 0)
        assert [i.id for i in m.list()] == [sid]
        assert {s["hop"]: s["users"] for s in m.pool.stats()} == {"jump1": 1, "jump2": 1}


def test_revive_after_exit(manager):
    sid = manager.open("lab-target1").id
    manager.command(sid, "cd /usr")
    manager.command(sid, "exit 4", wait=5)
    info = manager.revive(sid)
    assert (info.id, info.cwd) == (sid, "/usr")
    assert manager.command(sid, "echo again").output == "again\n"


@pytest.fixture
def anyio_backend():
    return "asyncio"


@pytest.mark.anyio
async def test_mcp_revive_tool(lab):
    from mcp import Client

    from phonehome_jump.mcp_server import build_server
    async with Client(build_server(lab.inventory)) as client:
        s = (await client.call_tool("ssh_session_open", {"host": "lab-target1"})).structured_content
        sid = s["session_id"]
        r = await client.call_tool("ssh_session_command", {"session_id": sid, "command": "cd /var"})
        assert not r.is_error
        r = await client.call_tool("ssh_session_revive", {"session_id": sid})
        assert r.is_error and "alive" in r.content[0].text
        r = await client.call_tool("ssh_session_command", {"session_id": sid, "command": "exit 5"})
        assert r.structured_content["exit_status"] == 5
        r = await client.call_tool("ssh_session_revive", {"session_id": sid})
        assert not r.is_error, r.content[0].text
        assert (r.structured_content["session_id"], r.structured_content["cwd"],
                r.structured_content["state"]) == (sid, "/var", "idle")
        r = await client.call_tool("ssh_session_command", {"session_id": sid, "command": "pwd"})
        assert r.structured_content["output"] == "/var\n"
