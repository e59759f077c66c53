"""Hostile input against the real sshd lab: ReDoS patterns, bad text, typing state, workflows."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import anyio
import httpx2
import pytest
from mcp import Client

from phonehome_jump import patterns
from phonehome_jump.errors import InputError, PatternTimeoutError
from phonehome_jump.mcp_server import build_server
from phonehome_jump.workflow import Workflow, WorkflowLock, run_workflow

from .waits import until

EVIL = r"(a|aa)+$"
# 60 a's, then b, in one write: (a|aa)+$ backtracks through every way to split the a's
EVIL_OUTPUT = "printf '" + "a" * 60 + "b\\n'"
CLI = str(Path(sys.executable).parent / "phonehome-jump")


def wait_for(condition, timeout: float = 30.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


# ----------------------------------------------------------------------------- regex (MCP)

@pytest.fixture
def anyio_backend():
    return "asyncio"


@pytest.mark.anyio
async def test_redos_until_on_one_session_leaves_another_client_answered(lab, monkeypatch):
    """One client's backtracking `until` runs for 3 s of processor time (its limit here;
    longer on a busy machine) while another client's commands through the same MCP server
    come back as fast as usual."""
    monkeypatch.setattr(patterns, "MATCH_TIMEOUT", 3.0)
    server = build_server(lab.inventory)
    async with Client(server) as a, Client(server) as b:
        sa = (await a.call_tool("ssh_session_open", {"host": "lab-target1"})).structured_content
        sb = (await b.call_tool("ssh_session_open", {"host": "lab-target2"})).structured_content
        r = await b.call_tool("ssh_session_command", {"session_id": sb["session_id"],
                                                      "command": "echo warm"})
        assert r.structured_content["output"] == "warm\n"
        done: dict[str, float] = {}
        evil_result: list = []

        async def evil() -> None:
            t0 = time.monotonic()
            evil_result.append(await a.call_tool("ssh_session_command", {
                "session_id": sa["session_id"], "command": EVIL_OUTPUT + "; sleep 60",
                "wait": 30, "until": EVIL}))
            done["evil"] = time.monotonic() - t0

        latencies = []
        async with anyio.create_task_group() as tg:
            tg.start_soon(evil)
            await anyio.sleep(1.0)           # the evil output has arrived: matching is on
            for i in range(5):
                t0 = time.monotonic()
                r = await b.call_tool("ssh_session_command", {"session_id": sb["session_id"],
                                                              "command": f"echo {i}"})
                latencies.append(time.monotonic() - t0)
                assert (r.is_error, r.structured_content["output"]) == (False, f"{i}\n")
            assert "evil" not in done, "the other client finished only after the evil match"
        r = evil_result[0]
        assert r.is_error and "took more than 3s to match" in r.content[0].text, r.content
        assert "catastrophic backtracking" in r.content[0].text
        assert max(latencies) < 3.0, latencies
        assert 2.5 < done["evil"] < 50, done     # gave up at its limit, before the sleep ended
        # the evil session is still usable: its command runs on; interrupt it and go on
        await a.call_tool("ssh_session_send", {"session_id": sa["session_id"], "control": "c",
                                               "newline": False})
        r = await a.call_tool("ssh_session_read", {"session_id": sa["session_id"], "wait": 10})
        assert not r.structured_content["running"]
        r = await a.call_tool("ssh_session_command", {"session_id": sa["session_id"],
                                                      "command": "echo still here"})
        assert r.structured_content["output"] == "still here\n"


def test_redos_until_in_the_core_gives_up_and_the_command_runs_on(manager):
    sid = manager.open("lab-target1").id
    t0 = time.monotonic()
    with pytest.raises(PatternTimeoutError):
        manager.command(sid, EVIL_OUTPUT + "; sleep 1; echo end", wait=20, until=EVIL)
    assert time.monotonic() - t0 < patterns.MATCH_TIMEOUT + 8
    r = manager.read(sid, wait=15)
    assert (r.running, r.exit_status, r.output.endswith("end\n")) == (False, 0, True)
    assert manager.command(sid, "echo ok").output == "ok\n"


# ----------------------------------------------------------------------------- regex (workflow)

def evil_workflow(tmp_path: Path, name: str, *, step2: str = "echo after") -> Path:
    f = tmp_path / f"{name}.yaml"
    f.write_text(f"""\
name: {name}
targets: {{hosts: [lab-target1]}}
step_timeout: 8
steps:
  - name: evil assert
    run: |-
      {EVIL_OUTPUT}
    assert: {{regex: '{EVIL}'}}
    on_fail: continue
  - name: evil answer
    run: |-
      {EVIL_OUTPUT}; sleep 30
    answer: [{{prompt: '{EVIL}', text: 'y'}}]
    on_fail: continue
  - run: {step2}
""")
    return f


def test_workflow_redos_fails_the_step_within_step_timeout(lab_inventory, tmp_path):
    wf = Workflow.load(evil_workflow(tmp_path, "redos"))
    t0 = time.monotonic()
    with WorkflowLock(wf, tmp_path / "locks").acquire("test"):
        r = run_workflow(wf, lab_inventory)
    took = time.monotonic() - t0
    steps = r.hosts["lab-target1"].steps
    assert [s.status for s in steps] == ["failed", "failed", "passed"], steps
    assert "took more than 1s to match" in steps[0].message
    assert "took more than 1s to match" in steps[1].message
    assert "interrupted the command" in steps[1].message
    assert steps[0].duration < 8 and steps[1].duration < 8 + 6
    assert steps[2].output == "after\n"
    assert took < 40
    WorkflowLock(wf, tmp_path / "locks").acquire("again").release()   # released


def test_workflow_run_stops_on_ctrl_c_and_releases_its_lock(lab, tmp_path):
    """SIGINT during a long step: the CLI run ends (130) within seconds and frees its lock."""
    f = evil_workflow(tmp_path, "interrupted", step2="sleep 60")
    env = {**os.environ, "PHONEHOME_JUMP_STATE": str(tmp_path / "state")}
    proc = subprocess.Popen([CLI, "--inventory", str(lab.inventory), "workflow", "run", str(f)],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines: list[str] = []
    try:
        while not any("step 2/3" in ln for ln in lines):   # the evil steps are behind it
            line = proc.stderr.readline()
            assert line, "".join(lines)
            lines.append(line)
        time.sleep(0.5)                 # step 3 (sleep 60) has started
        t0 = time.monotonic()
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 130
        assert time.monotonic() - t0 < 15
    finally:
        if proc.poll() is None:
            proc.kill()
    rest = proc.stderr.read()
    assert "interrupted" in rest and "Traceback" not in rest, rest
    wf = Workflow.load(f)
    WorkflowLock(wf, tmp_path / "state" / "locks").acquire("after").release()


# ----------------------------------------------------------------------------- text

@pytest.mark.parametrize("bad, what", [
    ("echo \ud800", "a lone surrogate U+D800 (half of a UTF-16 pair)"),
    ("echo \udcff", "the byte 0xff, which is not UTF-8,"),
    ("echo \ufffd", "U+FFFD (the replacement character)"),
])
def test_bad_text_is_refused_and_the_session_stays_usable(manager, bad, what):
    sid = manager.open("lab-target1").id
    with pytest.raises(InputError) as info:
        manager.command(sid, bad)
    assert str(info.value).startswith(f"host 'lab-target1': command contains {what} at "
                                      "character 5"), info.value
    with pytest.raises(InputError):
        manager.send(sid, bad)
    with pytest.raises(InputError):
        manager.send(sid, "echo", control=bad)
    assert manager.list()[0].state == "idle"
    assert manager.command(sid, "echo fine").output == "fine\n"


def _rpc(proc: subprocess.Popen, line: bytes) -> dict:
    proc.stdin.write(line + b"\n")
    proc.stdin.flush()
    while True:
        reply = proc.stdout.readline()
        assert reply, "the server closed stdout"
        msg = json.loads(reply)
        if "id" in msg:
            return msg


def test_stdio_answers_bad_text_and_the_session_stays_usable(lab):
    cmd = [CLI, "--inventory", str(lab.inventory), "serve"]
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=dict(os.environ))
    try:
        def call(rid: int, name: str, args: str) -> dict:
            line = ('{"jsonrpc":"2.0","id":%d,"method":"tools/call","params":{"name":"%s",'
                    '"arguments":%s}}' % (rid, name, args))
            return _rpc(proc, line.encode("utf-8", "surrogateescape"))
        init = _rpc(proc, json.dumps({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
            "protocolVersion": "2025-06-18", "capabilities": {},
            "clientInfo": {"name": "raw", "version": "0"}}}).encode())
        assert "result" in init, init
        proc.stdin.write(b'{"jsonrpc":"2.0","method":"notifications/initialized"}\n')
        proc.stdin.flush()
        opened = call(1, "ssh_session_open", '{"host":"lab-target1"}')
        sid = opened["result"]["structuredContent"]["session_id"]
        # a lone surrogate escape, then a raw byte that is not UTF-8: both answered
        for rid, command in ((2, r'"echo \ud800"'), (3, '"echo \udcff"')):
            r = call(rid, "ssh_session_command", '{"session_id":"%s","command":%s}' % (sid, command))
            assert r["id"] == rid and r["result"]["isError"], r
            text = r["result"]["content"][0]["text"]
            assert "command contains U+FFFD" in text and "not UTF-8" in text, text
        r = call(4, "ssh_session_send", r'{"session_id":"%s","text":"x\udc00y"}' % sid)
        assert r["result"]["isError"] and "text contains U+FFFD" in r["result"]["content"][0]["text"]
        # a valid pair and an escaped backslash are not touched
        r = call(5, "ssh_session_command", r'{"session_id":"%s","command":"printf %%s \"\ud83d\ude00 \\\\ud800\""}' % sid)
        assert r["result"]["structuredContent"]["output"] == "\U0001F600 \\ud800", r
        r = call(6, "ssh_session_command", '{"session_id":"%s","command":"echo usable"}' % sid)
        assert r["result"]["structuredContent"]["output"] == "usable\n"
    finally:
        proc.stdin.close()
        proc.wait(timeout=30)
    err = proc.stderr.read().decode()
    assert "Traceback" not in err, err


def test_http_answers_bad_text(http_server_url):
    url, token = http_server_url
    headers = {"Authorization": f"Bearer {token}", "Accept": "application/json, text/event-stream",
               "Content-Type": "application/json"}

    def post(client: httpx2.Client, body: bytes, sid: str | None = None) -> tuple[dict, str]:
        h = dict(headers, **({"Mcp-Session-Id": sid, "Mcp-Protocol-Version": "2025-06-18"}
                             if sid else {}))
        resp = client.post(url, content=body, headers=h)
        text = resp.text
        data = [ln[5:].strip() for ln in text.splitlines() if ln.startswith("data:")]
        msgs = [json.loads(d) for d in data if d] if data else ([json.loads(text)] if text else [])
        return (msgs[-1] if msgs else {}), resp.headers.get("mcp-session-id", sid or "")

    with httpx2.Client(timeout=60) as client:
        init, msid = post(client, json.dumps({"jsonrpc": "2.0", "id": 0, "method": "initialize",
                                              "params": {"protocolVersion": "2025-06-18",
                                                         "capabilities": {},
                                                         "clientInfo": {"name": "raw", "version": "0"}}
                                              }).encode())
        assert "result" in init and msid, init
        post(client, b'{"jsonrpc":"2.0","method":"notifications/initialized"}', msid)
        r, _ = post(client, b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":'
                            b'"ssh_session_open","arguments":{"host":"lab-target1"}}}', msid)
        sid = r["result"]["structuredContent"]["session_id"]
        for rid, command in ((2, rb'"echo \ud800"'), (3, b'"echo \xff"')):
            body = (b'{"jsonrpc":"2.0","id":%d,"method":"tools/call","params":{"name":'
                    b'"ssh_session_command","arguments":{"session_id":"%s","command":%s}}}'
                    % (rid, sid.encode(), command))
            r, _ = post(client, body, msid)
            assert r.get("id") == rid and r["result"]["isError"], r
            assert "command contains U+FFFD" in r["result"]["content"][0]["text"]
        body = (b'{"jsonrpc":"2.0","id":4,"method":"tools/call","params":{"name":'
                b'"ssh_session_command","arguments":{"session_id":"%s","command":"echo ok"}}}'
                % sid.encode())
        r, _ = post(client, body, msid)
        assert r["result"]["structuredContent"]["output"] == "ok\n"


@pytest.fixture
def http_server_url(lab):
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    token = "tok-" + os.urandom(16).hex()
    proc = subprocess.Popen([CLI, "--inventory", str(lab.inventory), "serve", "--http",
                             f"127.0.0.1:{port}", "--token-env", "PHJ_TEST_TOKEN"],
                            env={**os.environ, "PHJ_TEST_TOKEN": token}, stderr=subprocess.PIPE,
                            text=True)

    def up() -> bool:
        assert proc.poll() is None, proc.stderr.read()
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return True
        except OSError:
            return False
    wait_for(up, 30, "the HTTP server")
    yield f"http://127.0.0.1:{port}/mcp", token
    proc.terminate()
    proc.wait(timeout=15)
    err = proc.stderr.read()
    assert "Traceback" not in err, err


def test_cli_refuses_bytes_that_are_not_utf8(lab):
    r = subprocess.run([CLI.encode(), b"--inventory", str(lab.inventory).encode(), b"run",
                        b"lab-target1", b"--", b"echo", b"caf\xe9"], capture_output=True)
    err = r.stderr.decode()
    assert r.returncode == 2, err
    assert ("command contains the byte 0xe9, which is not UTF-8, at character 8: it cannot be "
            "sent as text") in err and "Traceback" not in err, err
    r = subprocess.run([CLI, "--inventory", str(lab.inventory), "shell", "lab-target1"],
                       input=b"echo one\necho caf\xe9\n", capture_output=True)
    assert r.returncode == 2 and r.stdout == b"one\n", r
    assert b"the byte 0xe9, which is not UTF-8" in r.stderr


# ----------------------------------------------------------------------------- typing state

def test_empty_send_is_a_no_op(manager):
    sid = manager.open("lab-target1").id
    manager.send(sid, "", newline=False)
    manager.send(sid, control="")
    manager.send(sid, "", control="", newline=True)
    assert manager.list()[0].state == "idle"
    assert manager.command(sid, "echo next").output == "next\n"


@pytest.mark.parametrize("key", ["u", "ctrl-c"])
def test_ctrl_u_and_ctrl_c_discard_a_typed_line(manager, key):
    sid = manager.open("lab-target1").id
    manager.send(sid, "echo partial", newline=False)
    assert manager.list()[0].state == "running"
    manager.send(sid, control=key, newline=False)
    assert manager.list()[0].state == "idle"
    r = manager.command(sid, "echo fresh")
    assert (r.output, r.exit_status) == ("fresh\n", 0)
    # a piece typed after the discard is a line of its own, policy-checked whole
    manager.send(sid, "echo ", newline=False)
    manager.send(sid, "joined")
    r = manager.read(sid, wait=10)
    assert (r.output, r.running) == ("joined\n", False)


def test_a_discarded_line_never_reaches_the_shell(manager):
    """The line is held until its Enter: dropping it sends the shell nothing ($? stays)."""
    sid = manager.open("lab-target1").id
    assert manager.command(sid, "false").exit_status == 1
    for key in ("u", "c"):
        manager.send(sid, "echo dropped", newline=False)
        manager.send(sid, control=key, newline=False)
        assert manager.command(sid, "echo $?").output == "1\n"
        assert manager.command(sid, "false").exit_status == 1
    manager.send(sid, control="c", newline=False)        # a bare Ctrl-C still reaches it
    assert manager.command(sid, "echo $?").output == "130\n"


def waiting_read(manager, sid) -> tuple[threading.Thread, dict]:
    """A read(wait=20) that holds the session, waiting, by the time this returns."""
    box: dict = {}
    reader = threading.Thread(target=lambda: box.setdefault("r", manager.read(sid, wait=20)))
    reader.start()
    session = manager.session(sid)
    until(lambda: session._holder_until is not None, what="the read to start waiting")
    return reader, box


def test_a_typed_line_a_read_waits_on_is_sent_or_dropped_at_once(manager):
    sid = manager.open("lab-target1").id
    manager.send(sid, "echo ", newline=False)
    reader, box = waiting_read(manager, sid)
    manager.send(sid, "held")                           # its Enter, while the read waits
    reader.join(10)
    assert not reader.is_alive() and (box["r"].output, box["r"].running) == ("held\n", False)
    manager.send(sid, "echo dropped", newline=False)
    reader, box = waiting_read(manager, sid)
    manager.send(sid, control="u", newline=False)
    reader.join(10)
    assert not reader.is_alive() and not box["r"].running and "dropped" not in box["r"].output
    r = manager.command(sid, "echo fresh")
    assert (r.output, r.exit_status) == ("fresh\n", 0)


# ----------------------------------------------------------------------------- memory

MEMORY_CHILD = r"""
import resource, sys
from phonehome_jump.cli import main
vm = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmSize:"))
limit = vm * 1024 + 40 * 2**20            # 40 MB more than now: far less than the load needs
resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
sys.exit(main(["inventory", "check", sys.argv[1]]))
"""


def test_out_of_memory_while_loading_is_a_clear_error(tmp_path):
    f = tmp_path / "big.yaml"
    f.write_text("hosts:\n" + "".join(f"  h{i:05d}: {{host: 10.1.{i // 250}.{i % 250}, "
                                      f"tags: [a, b], description: host number {i}}}\n"
                                      for i in range(15000)))
    r = subprocess.run([sys.executable, "-c", MEMORY_CHILD, str(f)], capture_output=True,
                       text=True, timeout=600)
    assert r.returncode == 2, r
    assert r.stderr.startswith(f"phonehome-jump: {f}: ran out of memory while loading the "
                               "inventory\n  try: an inventory holds at most 20000 hosts"), r.stderr
    assert "Traceback" not in r.stderr
