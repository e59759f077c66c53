"""phonehome-jump inside an unmodified ET Phone Home client, against the real sshd lab.

A stand-in ET Phone Home client (tests/etphonehome_standin) runs as ``phonehome-jump-reach``:
it reverse-forwards a port over real SSH to jump1 and serves each channel in its own process
through the embedding hook. A stand-in server inside jump1's namespace calls it with the
ET Phone Home server's parameter shapes, its 30 s request timeout and its health monitor's
10 s heartbeat window.
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest

from .etph import REACH, Client, Server, copy_standin, start_tunnel_sshd, stop_tunnel_sshd


@pytest.fixture(scope="module")
def tunnel(lab):
    t = start_tunnel_sshd(lab)
    yield t
    stop_tunnel_sshd(lab)


@pytest.fixture
def site(lab, tunnel, tmp_path):
    """A function starting client + server; everything it started is stopped afterwards."""
    inventory = tmp_path / "inventory"
    inventory.mkdir()
    (inventory / "lab.yaml").write_text(lab.inventory.read_text())
    (inventory / "audit.yaml").write_text(
        f"audit: {{path: {tmp_path / 'audit.jsonl'}, transcripts: {tmp_path / 'transcripts'}}}\n")
    client_path = copy_standin(tmp_path / "reach")
    started: list = []

    class Site:
        audit = tmp_path / "audit.jsonl"
        transcripts = tmp_path / "transcripts"
        path = client_path

        def start(self, **env: str) -> tuple[Client, Server]:
            client = Client(lab, tunnel, client_path, tmp_path / "state.json", inventory, **env)
            started.append(client)
            server = Server(lab, client.port)
            started.append(server)
            return client, server

    yield Site()
    for proc in reversed(started):
        proc.stop()


def output_until(server: Server, sid: str, text: str, first: str = "", timeout: float = 60) -> str:
    """Read (as the server does, 0.5 s at a time) until ``text`` has arrived."""
    out, deadline = first, time.monotonic() + timeout
    while text not in out:
        assert time.monotonic() < deadline, f"no {text!r} in {out!r}"
        out += server.ok("ssh_session_read", session_id=sid)["stdout"]
    return out


# ----------------------------------------------------------------------------- the methods

def test_every_session_method_with_the_servers_parameters(site, lab):
    client, server = site.start()
    # the client's own methods still answer, heartbeat included
    assert server.ok("raw", method="client_name")["result"] == {"name": "stand-in"}
    assert server.ok("health_check") is True

    s = server.ok("ssh_session_open", host="lab-target1", username="phjkey")
    sid = s["session_id"]
    assert (s["host"], s["chain"], s["proxied"]) == ("lab-target1", ["jump1", "jump2"], True)
    assert "answered_by" not in s             # phonehome-jump answered, not the client's stub

    r = server.ok("ssh_session_command", session_id=sid, command="cd /tmp && hostname -I")
    assert (r["exit_status"], r["cwd"]) == (0, "/tmp") and lab.addr("target1") in r["stdout"]

    r = server.ok("ssh_session_command", session_id=sid, command="read -p 'Name? ' n; echo hi $n")
    assert r["running"] and r["stdout"] == "Name? "
    sent = server.ok("ssh_session_send", session_id=sid, text="bob")
    assert sent["sent"] and sent["secret"] is False
    assert output_until(server, sid, "hi bob\n") == "hi bob\n"
    server.ok("ssh_session_send", session_id=sid, text="echo no", send_newline=False)
    server.ok("ssh_session_send", session_id=sid, text="-newline")
    assert "no-newline" in output_until(server, sid, "no-newline\n")

    # the server's default command timeout (300) waits at most max_wait, then read continues
    r = server.call("ssh_session_command", session_id=sid, command="sleep 10; echo late")
    assert r["elapsed"] < 10 and r["result"]["running"] is True
    assert "ssh_session_read" in r["result"]["note"]
    assert output_until(server, sid, "late\n", r["result"]["stdout"]) == "late\n"

    listed = server.ok("ssh_session_list")
    assert [x["session_id"] for x in listed["sessions"]] == [sid]
    assert server.ok("ssh_session_restore")["alive"] == [sid]
    assert server.ok("ssh_session_close", session_id=sid)["closed"] is True
    assert server.ok("ssh_session_list")["sessions"] == []

    # raw credentials and ad-hoc jump hosts stay refused, naming the inventory
    err = server.call("ssh_session_open", host="lab-password", username="phjpass",
                      password=lab.env["PHJ_LAB_PASSWORD"])
    assert "'password' is refused" in err["error"] and "inventory" in err["error"]
    assert lab.env["PHJ_LAB_PASSWORD"] not in json.dumps(err)
    err = server.call("ssh_session_open", host="lab-target1", username="phjkey",
                      jump_hosts=[{"host": lab.addr("jump1")}])
    assert "'jump_hosts' is refused" in err["error"]


def test_open_by_address_picks_the_host_with_that_username(site, lab):
    _, server = site.start()
    addr = lab.addr("target1")      # lab-target1 (phjkey), lab-password, lab-sudo share it
    s = server.ok("ssh_session_open", host=addr, username="phjpass")
    assert s["host"] == "lab-password" and s["username"] == "phjpass"
    r = server.ok("ssh_session_command", session_id=s["session_id"], command="id -un")
    assert r["stdout"] == "phjpass\n"
    s2 = server.ok("ssh_session_open", host=addr, username="phjkey")
    assert s2["host"] == "lab-target1"
    err = server.call("ssh_session_open", host=addr, username="root")["error"]
    assert "no inventory host at address" in err and "'root'" in err
    for name in ("lab-target1", "lab-password", "lab-sudo"):
        assert name in err
    err = server.call("ssh_session_open", host=addr, username="phjkey", port=2200)["error"]
    assert "port 2200" in err


# ----------------------------------------------------------------------------- no reply lost

def _race(server: Server, sid_a: str, sid_b: str) -> tuple[dict, dict, dict]:
    """A long call holds the shared connection; B queues, then the health monitor's
    heartbeat queues too (lowering the connection's timeout to 10 s for B as well).

    No pause is needed between them: the stand-in starts ops in the order of its input, each
    runs until it waits (A on its reply, B and the heartbeat on the connection's lock, which
    serves them first come, first served), and A is on the wire before B is even read."""
    a = server.start("ssh_session_command", session_id=sid_a, command="sleep 3; echo A-done")
    b = server.start("ssh_session_command", session_id=sid_b, command="sleep 12; echo B-done")
    hb = server.start("health_check")
    return server.wait(a), server.wait(b), server.wait(hb)


def test_a_call_queued_behind_the_health_monitor_gets_its_reply(site):
    _, server = site.start()
    sid_a = server.ok("ssh_session_open", host="lab-target1", username="phjkey")["session_id"]
    sid_b = server.ok("ssh_session_open", host="lab-target2", username="phjkey")["session_id"]
    a, b, hb = _race(server, sid_a, sid_b)
    assert "A-done" in output_until(server, sid_a, "A-done", a["result"]["stdout"])
    # B waited under the 10 s window (capped wait), so its reply arrived; reads continue it
    assert "result" in b, b
    assert b["result"]["running"] is True
    assert hb["result"] is True
    assert output_until(server, sid_b, "B-done\n", b["result"]["stdout"]) == "B-done\n"


def test_output_of_a_reply_that_missed_its_caller_comes_back_on_the_next_read(site):
    # a wait above the caller's timeout (as before the cap): B's reply arrives after the
    # server gave up on it, as measured with the real server
    _, server = site.start(PHONEHOME_JUMP_MAX_WAIT="15")
    sid_a = server.ok("ssh_session_open", host="lab-target1", username="phjkey")["session_id"]
    sid_b = server.ok("ssh_session_open", host="lab-target2", username="phjkey")["session_id"]
    a, b, hb = _race(server, sid_a, sid_b)
    assert a["result"]["stdout"] == "A-done\n"
    assert b["exception"] == "TimeoutError" and b["elapsed"] >= 10     # queued, then 10 s
    # B's call still waits on its output in the agent (up to 15 s): a read waits for it only
    # within its own timeout (a shorter one is answered "busy" at once), so give it the rest
    reply = server.wait(server.start("ssh_session_read", session_id=sid_b, timeout=8))
    assert "result" in reply, reply
    r = reply["result"]
    assert r["stdout"] == "B-done\n" and r["exit_status"] == 0
    assert r["redelivered"] == len("B-done\n") and "did not reach you" in r["note"]
    # delivered once: the next read has nothing new
    assert server.ok("ssh_session_read", session_id=sid_b)["stdout"] == ""
    assert hb.get("result") is True, hb      # the heartbeat reconnected after B gave up


def test_an_open_whose_reply_missed_the_caller_is_handed_over_on_the_retry(site):
    # a login slower than the caller's timeout (here the timeout is made shorter than the
    # lab's login, as a slow chain would make the login longer than 10 s)
    _, server = site.start(PHONEHOME_JUMP_CALLER_TIMEOUT="0.01")
    server.ok("set_timeout", seconds=0.05)
    first = server.call("ssh_session_open", host="lab-target3", username="phjkey")
    assert first["exception"] == "TimeoutError", first
    server.ok("set_timeout", seconds=30)
    again = server.ok("ssh_session_open", host="lab-target3", username="phjkey")
    assert again.get("recovered") is True and "did not reach you" in again["note"], (again, server.ok("ssh_session_list"))
    listed = server.ok("ssh_session_list")["sessions"]
    assert [x["session_id"] for x in listed] == [again["session_id"]]   # not two sessions
    r = server.ok("ssh_session_command", session_id=again["session_id"], command="echo ok")
    assert r["stdout"] == "ok\n"
    # the next open is a new session again
    other = server.ok("ssh_session_open", host="lab-target3", username="phjkey")
    assert "recovered" not in other and other["session_id"] != again["session_id"]


# ----------------------------------------------------------------------------- secrets

def test_a_password_sent_without_a_secret_flag_is_masked(site, lab):
    _, server = site.start()
    password = lab.env["PHJ_LAB_SUDO_PASSWORD"]
    sid = server.ok("ssh_session_open", host="lab-sudo", username="phjsudo")["session_id"]
    r = server.ok("ssh_session_command", session_id=sid,
                  command="sudo -k; sudo -p '[sudo] password for phjsudo: ' id -u")
    assert r["awaiting_input"] and r["stdout"].endswith("password for phjsudo: ")
    sent = server.ok("ssh_session_send", session_id=sid, text=password)   # no secret flag
    assert sent["secret"] is True
    assert output_until(server, sid, "0\n").endswith("0\n")
    server.ok("ssh_session_command", session_id=sid, command=f"echo {password} | wc -c")
    r = server.ok("ssh_session_command", session_id=sid, command="echo said: $HOSTNAME")
    assert password not in json.dumps(r)
    server.ok("ssh_session_close", session_id=sid)
    audit = site.audit.read_text()
    transcript = (site.transcripts / f"{sid}.log").read_text()
    assert password not in audit and password not in transcript
    assert '"event": "send"' in audit and "*****" in audit
    # an answer to a question that is not a password stays as typed
    sid = server.ok("ssh_session_open", host="lab-target1", username="phjkey")["session_id"]
    server.ok("ssh_session_command", session_id=sid, command="read -p 'Colour? ' c; echo $c")
    assert server.ok("ssh_session_send", session_id=sid, text="blue")["secret"] is False


# ----------------------------------------------------------------------------- restore

def test_restore_after_the_client_process_restarts(site):
    client, server = site.start()
    sid = server.ok("ssh_session_open", host="lab-target1", username="phjkey")["session_id"]
    server.ok("ssh_session_command", session_id=sid, command="cd /var && export X=1")
    server.stop()
    client.stop()
    client, server = site.start()
    listed = server.ok("ssh_session_list")
    assert [p["session_id"] for p in listed["pending_restore"]] == [sid]
    r = server.ok("ssh_session_restore")
    assert [(x["session_id"], x["cwd"]) for x in r["restored"]] == [(sid, "/var")]
    r = server.ok("ssh_session_command", session_id=sid, command="pwd")
    assert r["stdout"] == "/var\n"


def test_a_restore_during_a_jump1_outage_keeps_the_record(site, lab):
    client, server = site.start()
    sid = server.ok("ssh_session_open", host="lab-target2", username="phjkey")["session_id"]
    server.ok("ssh_session_command", session_id=sid, command="cd /tmp")
    server.stop()
    client.stop()
    pid = int((lab.state / "jump1.pid").read_text())
    subprocess.run(["kill", str(pid)], check=True)      # jump1's sshd: connections refused
    try:
        deadline = time.monotonic() + 10
        while lab.reachable_directly("jump1"):
            assert time.monotonic() < deadline
            time.sleep(0.05)
        client, server = site.start()
        r = server.ok("ssh_session_restore")
        assert r["restored"] == [] and [f["session_id"] for f in r["failed"]] == [sid]
        assert r["failed"][0]["kept"] is True and "jump1" in r["failed"][0]["error"]
        assert [p["session_id"] for p in server.ok("ssh_session_list")["pending_restore"]] == [sid]
    finally:
        lab.start_sshd("jump1")                          # healed
    r = server.ok("ssh_session_restore")
    assert [(x["session_id"], x["cwd"]) for x in r["restored"]] == [(sid, "/tmp")]
    assert server.ok("ssh_session_command", session_id=sid, command="pwd")["stdout"] == "/tmp\n"


# ----------------------------------------------------------------------------- install, upgrade

def test_the_plugin_survives_a_client_update(site):
    client, server = site.start()
    assert "Reach v0.1.13" in "".join(client.log)
    server.stop()
    client.stop()
    (site.path / "UPDATE").write_text("0.1.14\n")
    client, server = site.start()
    log = "".join(client.log)
    # updated, restarted through os.execv with the same argv, and the hook is in again
    assert "Update installed. Restarting..." in log and "Reach v0.1.14" in log
    assert (site.path / "shared" / "version.py").read_text() == '__version__ = "0.1.14"\n'
    listed = server.ok("ssh_session_list")
    assert "pending_restore" in listed and "answered_by" not in listed
    assert server.ok("health_check") is True


def test_a_client_without_the_hook_is_refused_naming_version_and_hook(tmp_path):
    path = tmp_path / "reach"
    (path / "client").mkdir(parents=True)
    (path / "shared").mkdir()
    (path / "client" / "__init__.py").write_text("")
    (path / "shared" / "__init__.py").write_text("")
    (path / "shared" / "version.py").write_text('__version__ = "0.2.0"\n')
    (path / "shared" / "protocol.py").write_text("class Response: pass\n")
    (path / "client" / "agent.py").write_text(
        "class Agent:\n    def dispatch(self, request):\n        return None\n")
    (path / "client" / "reach.py").write_text("from client.agent import Agent\ndef main(): pass\n")
    inv = tmp_path / "inv.yaml"
    inv.write_text("hosts: {}\n")
    proc = subprocess.run([REACH, "--phj-inventory", str(inv), "--phj-client-path", str(path),
                           "--phj-state", str(tmp_path / "s.json"), "-s", "x"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2, proc.stderr
    assert "ET Phone Home client 0.2.0" in proc.stderr
    assert "client.agent.Agent.handle_request(self, request)" in proc.stderr
    assert "Traceback" not in proc.stderr
    # a name the hook needs renamed in the client's own modules
    (path / "client" / "reach.py").write_text("from shared.protocol import Reply\n")
    (path / "client" / "agent.py").write_text(
        "class Agent:\n    def handle_request(self, request):\n        return None\n")
    proc = subprocess.run([REACH, "--phj-inventory", str(inv), "--phj-client-path", str(path),
                           "--phj-state", str(tmp_path / "s.json")],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "ET Phone Home client 0.2.0" in proc.stderr, proc.stderr
    assert "cannot import name 'Reply'" in proc.stderr and "Traceback" not in proc.stderr
    # not importable at all: says where to point it
    proc = subprocess.run([REACH, "--phj-inventory", str(inv), "--phj-client-path",
                           str(tmp_path / "none"), "--phj-state", str(tmp_path / "s.json")],
                          capture_output=True, text=True, timeout=60,
                          env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)})
    assert proc.returncode == 2 and "PHONEHOME_JUMP_CLIENT_PATH" in proc.stderr, proc.stderr


def test_an_unwritable_state_file_refuses_to_start(tmp_path, lab):
    blocker = tmp_path / "file"
    blocker.write_text("")
    proc = subprocess.run([REACH, "--phj-inventory", str(lab.inventory), "--phj-client-path",
                           str(Path(__file__).resolve().parent.parent / "etphonehome_standin"),
                           "--phj-state", str(blocker / "state.json"), "-s", "x"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1 and "cannot write the state file" in proc.stderr, proc.stderr
    assert "PHONEHOME_JUMP_AGENT_STATE" in proc.stderr
