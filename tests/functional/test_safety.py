"""Policy, audit and secret masking against the real sshd lab, through every entry point."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
from mcp import Client

from phonehome_jump.errors import AuditError, PolicyError, SessionError
from phonehome_jump.inventory import Inventory, SecretRef
from phonehome_jump.manager import SessionManager
from phonehome_jump.mcp_server import build_server

SCRIPT = Path(sys.executable).parent / "phonehome-jump"

POLICY = r"""
  policy:
    deny: ['\bshutdown\b', 'rm\s+-rf\s+/(\s|$)']
    confirm: ['^touch\s+/tmp/phj-confirmed\b']
"""


def safety_inventory(lab, tmp_path: Path, audit: str = "") -> Path:
    """The lab inventory plus a policy on defaults, a read-only host and, optionally, audit."""
    text = lab.inventory.read_text()
    assert "  keepalive: 15\n" in text
    text = text.replace("  keepalive: 15\n", "  keepalive: 15\n" + POLICY.lstrip("\n"))
    folder = tmp_path / "inventory"
    folder.mkdir(exist_ok=True)
    (folder / "lab.yaml").write_text(text)
    (folder / "safety.yaml").write_text(
        "hosts:\n"
        f"  lab-readonly:\n    host: {lab.addr('target2')}\n    via: jump2\n"
        "    credentials: lab-key\n"
        "    policy: {read_only: true, allow: ['^ls\\b', '^cat\\b', '^pwd$']}\n" + audit)
    return folder


def records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


# ----------------------------------------------------------------------------- policy

def test_policy_refuses_in_the_core_and_audits_the_refusal(lab, tmp_path):
    audit = tmp_path / "audit.jsonl"
    inv = Inventory.load(safety_inventory(lab, tmp_path))
    with SessionManager(inv, audit_path=str(audit), actor="test") as m:
        sid = m.open("lab-target1").id
        with pytest.raises(PolicyError) as info:
            m.command(sid, "cd /tmp; shutdown -h now")
        assert info.value.rule == r"\bshutdown\b" and "host 'lab-target1'" in str(info.value)
        with pytest.raises(PolicyError) as info:
            m.send(sid, "shutdown -r now")              # a raw line at the prompt
        with pytest.raises(PolicyError) as info:
            m.command(sid, "touch /tmp/phj-confirmed")
        assert info.value.needs_confirm
        r = m.command(sid, "touch /tmp/phj-confirmed && echo done", confirm=True)
        assert r.output == "done\n"
        # the shell was never sent the refused lines: the session is idle and usable
        assert m.command(sid, "pwd").exit_status == 0

        ro = m.open("lab-readonly").id
        assert m.command(ro, "ls /").exit_status == 0
        with pytest.raises(PolicyError, match="read-only"):
            m.command(ro, "touch /tmp/x")
        # input typed into a running (allowed) command is not a new command
        r = m.command(ro, "cat", wait=0.5)
        assert r.running
        m.send(ro, "typed into cat")
        m.read(ro, wait=10, until="typed into cat")   # before Ctrl-C, which flushes the tty
        m.send(ro, control="c", newline=False)
        r = m.read(ro, wait=10)
        assert not r.running and r.exit_status == 130
    refusals = [r for r in records(audit) if r["event"] == "policy_refusal"]
    assert [(r["host"], r["rule"], r["outcome"]) for r in refusals] == [
        ("lab-target1", r"\bshutdown\b", "refused"), ("lab-target1", r"\bshutdown\b", "refused"),
        ("lab-target1", r"^touch\s+/tmp/phj-confirmed\b", "needs_confirm"),
        ("lab-readonly", "read_only", "refused")]


@pytest.fixture
def anyio_backend():
    return "asyncio"


@pytest.mark.anyio
async def test_policy_through_mcp(lab, tmp_path):
    server = build_server(safety_inventory(lab, tmp_path))
    async with Client(server) as client:
        sid = (await client.call_tool("ssh_session_open", {"host": "lab-target1"})).structured_content["session_id"]
        r = await client.call_tool("ssh_session_command", {"session_id": sid, "command": "shutdown now"})
        assert r.is_error and "deny rule" in r.content[0].text and "lab-target1" in r.content[0].text
        r = await client.call_tool("ssh_session_command",
                                   {"session_id": sid, "command": "touch /tmp/phj-confirmed"})
        assert r.is_error and "needs a person's approval" in r.content[0].text
        # the model's confirm=true alone does not pass it (this client cannot ask its user)
        r = await client.call_tool("ssh_session_command", {"session_id": sid, "confirm": True,
                                                           "command": "touch /tmp/phj-confirmed"})
        assert r.is_error and "cannot ask its user" in r.content[0].text
        r = await client.call_tool("ssh_session_send", {"session_id": sid, "text": "shutdown"})
        assert r.is_error and "deny rule" in r.content[0].text
        r = await client.call_tool("ssh_run", {"host": "lab-readonly", "command": "touch /x"})
        assert r.is_error and "read-only" in r.content[0].text


def test_policy_through_the_cli(lab, tmp_path):
    inv = safety_inventory(lab, tmp_path)
    env = dict(os.environ, PHONEHOME_JUMP_INVENTORY=str(inv))
    denied = subprocess.run([str(SCRIPT), "run", "lab-target1", "--", "rm -rf /"], env=env,
                            capture_output=True, text=True, timeout=120)
    assert denied.returncode == 77 and "deny rule" in denied.stderr and "Traceback" not in denied.stderr
    unconfirmed = subprocess.run([str(SCRIPT), "run", "lab-target1", "--", "touch /tmp/phj-confirmed"],
                                 env=env, capture_output=True, text=True, timeout=120)
    assert unconfirmed.returncode == 77 and "--confirm" in unconfirmed.stderr
    audit = tmp_path / "cli-audit.jsonl"
    confirmed = subprocess.run([str(SCRIPT), "--audit-log", str(audit), "run", "--confirm",
                                "lab-target1", "--", "touch /tmp/phj-confirmed && echo ok"],
                               env=env, capture_output=True, text=True, timeout=120)
    assert (confirmed.returncode, confirmed.stdout) == (0, "ok\n")
    (approval,) = [r for r in records(audit) if r["event"] == "approval"]
    assert approval["approved_via"] == "cli-confirm-flag"
    assert approval["approved_by"].startswith("cli:") and approval["approved_at"]
    scripted = subprocess.run([str(SCRIPT), "shell", "lab-readonly"], input="pwd\ntouch /tmp/y\n",
                              env=env, capture_output=True, text=True, timeout=120)
    assert scripted.returncode == 77 and "read-only" in scripted.stderr


# ----------------------------------------------------------------------------- audit

def test_audit_records_a_scripted_session_completely(lab, tmp_path):
    path = tmp_path / "audit.jsonl"
    transcripts = tmp_path / "transcripts"
    inv = Inventory.load(safety_inventory(
        lab, tmp_path, f"audit: {{path: {path}, transcripts: {transcripts}}}\n"))
    with SessionManager(inv, actor="cli:tester") as m:
        sid = m.open("lab-target1").id
        m.command(sid, "cd /tmp")
        m.command(sid, "(exit 3)")
        assert m.command(sid, "sleep 1; echo late", wait=0.2).running
        assert m.read(sid, wait=10).output.endswith("late\n")
        m.send(sid, "echo typed")
        m.read(sid, wait=10)
        m.close(sid)
    recs = records(path)
    assert [r["event"] for r in recs] == ["open", "command", "command", "command", "send",
                                          "command", "close"]
    for r in recs:
        assert r["actor"] == "cli:tester" and r["host"] == "lab-target1"
        assert r["chain"] == ["jump1", "jump2"] and r["session_id"] == sid
        assert r["time"].endswith("+00:00")
    cd, status, late, send, typed, close = recs[1:]
    assert (cd["command"], cd["exit_status"], cd["cwd"], cd["outcome"]) == ("cd /tmp", 0, "/tmp", "ok")
    assert (status["exit_status"], status["outcome"]) == (3, "failed")
    assert late["command"] == "sleep 1; echo late" and late["bytes"] == len("late\n")
    assert late["duration"] >= 1.0
    assert (send["command"], typed["command"], typed["exit_status"]) == ("echo typed", "echo typed", 0)
    assert close["outcome"] == "closed"
    assert [r["seq"] for r in recs] == list(range(1, 8))         # hash-chained, in order
    proc = subprocess.run([str(SCRIPT), "audit", "verify", str(path)], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0 and "chain intact" in proc.stdout, proc.stderr
    transcript = (transcripts / f"{sid}.log").read_text()
    assert "$ sleep 1; echo late\nlate\n# exit 0, cwd /tmp" in transcript
    assert "» echo typed" in transcript


def test_an_unwritable_audit_log_refuses_commands(lab, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    inv = Inventory.load(lab.inventory)
    with SessionManager(inv, audit_path=str(blocker / "audit.jsonl")) as m:
        with pytest.raises(AuditError, match="cannot write the audit log"):
            m.open("lab-target1")
        assert m.list() == []
    # and a log that breaks while a session is open refuses its next command
    path = tmp_path / "dir" / "audit.jsonl"
    path.parent.mkdir()
    with SessionManager(inv, audit_path=str(path)) as m:
        sid = m.open("lab-target1").id
        assert m.command(sid, "true").exit_status == 0
        m.audit.close()
        path.unlink()
        path.parent.rmdir()
        path.parent.write_text("")           # the directory is now a file
        with pytest.raises(AuditError):
            m.command(sid, "echo never")
    cli = subprocess.run([str(SCRIPT), "--audit-log", str(blocker / "a.jsonl"), "run",
                          "lab-target1", "--", "true"],
                         env=dict(os.environ, PHONEHOME_JUMP_INVENTORY=str(lab.inventory)),
                         capture_output=True, text=True, timeout=120)
    assert cli.returncode == 1 and "cannot write the audit log" in cli.stderr


# ----------------------------------------------------------------------------- canaries

@pytest.mark.anyio
async def test_canary_secrets_never_leave_the_plugin(lab, tmp_path, caplog, monkeypatch):
    """A login password, a sudo answer and an env secret run through every path; then every
    output, log, audit record and transcript is scanned for them."""
    caplog.set_level(logging.DEBUG)
    env_canary = "canary-env-" + os.urandom(6).hex()
    monkeypatch.setenv("PHJ_CANARY_SECRET", env_canary)
    password = os.environ["PHJ_LAB_PASSWORD"]
    sudo = os.environ["PHJ_LAB_SUDO_PASSWORD"]
    canaries = [password, sudo, env_canary]
    audit, transcripts = tmp_path / "audit.jsonl", tmp_path / "transcripts"
    inv_dir = safety_inventory(lab, tmp_path, f"audit: {{path: {audit}, transcripts: {transcripts}}}\n")
    seen: list[str] = []

    # the core: the login password echoed back, a sudo prompt answered with a secret send
    with SessionManager(Inventory.load(inv_dir), actor="test") as m:
        sid = m.open("lab-password").id
        # an env: reference resolved at run time (as a workflow answer is), typed as a secret
        m.command(sid, "read -r -p 'token: ' TOKEN", wait=2)
        m.send(sid, SecretRef.parse("env:PHJ_CANARY_SECRET").resolve("test"), secret=True)
        m.read(sid, wait=10)
        r = m.command(sid, f"echo '{password}'; echo \"$TOKEN\"")
        seen += [r.output, r.command or ""]
        assert r.output == "*" * len(password) + "\n" + "*" * len(env_canary) + "\n"
        sudo_sid = m.open("lab-sudo").id
        r = m.command(sudo_sid, "sudo -k; sudo -p '[sudo] password: ' id -u")
        assert r.awaiting_input
        m.send(sudo_sid, sudo_password=True)      # the inventory's sudo_password, never seen
        r = m.read(sudo_sid, wait=15)
        seen.append(r.output)
        assert r.output.strip().endswith("0")
        r = m.command(sudo_sid, f"echo {sudo}")
        seen += [r.output, r.command or ""]
        assert r.output == "*" * len(sudo) + "\n"

    # MCP: a secret send and command results
    async with Client(build_server(inv_dir)) as client:
        s = (await client.call_tool("ssh_session_open", {"host": "lab-password"})).structured_content
        for call in (("ssh_session_command", {"session_id": s["session_id"],
                                              "command": f"echo {password} {env_canary}"}),
                     ("ssh_session_send", {"session_id": s["session_id"], "text": sudo,
                                           "secret": True, "newline": False}),
                     ("ssh_session_list", {})):
            r = await client.call_tool(*call)
            seen += [c.text for c in r.content if hasattr(c, "text")]
            seen.append(json.dumps(r.structured_content))

    # the CLI, verbose, with its own audit flag (its process only knows the login password)
    cli_audit = tmp_path / "cli-audit.jsonl"
    proc = subprocess.run([str(SCRIPT), "-vv", "--audit-log", str(cli_audit), "run", "lab-password",
                           "--", f"echo {password}"],
                          env=dict(os.environ, PHONEHOME_JUMP_INVENTORY=str(inv_dir)),
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    seen += [proc.stdout, proc.stderr]

    seen.append(caplog.text)
    files = [audit, cli_audit, *transcripts.iterdir()]
    assert len(files) >= 4
    seen += [f.read_text() for f in files]
    for canary in canaries:
        leaks = [text for text in seen if canary in text]
        assert not leaks, f"a secret leaked: {leaks[0][:200]!r}"
    assert "********" in (audit.read_text() + cli_audit.read_text())


# ----------------------------------------------------------------------------- workflows, agent

GUARDED = """\
name: guarded
targets: {hosts: [lab-target1]}
steps:
  - run: touch /tmp/phj-confirmed && echo confirmed
    confirm: true
  - run: shutdown -h now
  - run: echo never
"""


def test_policy_and_audit_through_a_workflow(lab, tmp_path, monkeypatch):
    monkeypatch.setenv("PHONEHOME_JUMP_STATE", str(tmp_path / "state"))
    inv = safety_inventory(lab, tmp_path)
    audit, report = tmp_path / "audit.jsonl", tmp_path / "report.json"
    wf = tmp_path / "guarded.yaml"
    wf.write_text(GUARDED)
    env = dict(os.environ, PHONEHOME_JUMP_INVENTORY=str(inv))
    proc = subprocess.run([str(SCRIPT), "--audit-log", str(audit), "workflow", "run", str(wf),
                           "--report", str(report)], env=env, capture_output=True, text=True,
                          timeout=120, stdin=subprocess.DEVNULL)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    steps = json.loads(report.read_text())["hosts"]["lab-target1"]["steps"]
    assert [s["status"] for s in steps] == ["passed", "failed", "skipped"]
    assert "deny rule" in (steps[1]["message"] or "") + json.dumps(
        json.loads(report.read_text())["hosts"]["lab-target1"])
    recs = records(audit)
    wf_steps = [r for r in recs if r["event"] == "workflow_step"]
    assert [(r["step"], r["outcome"]) for r in wf_steps] == [(1, "passed"), (2, "failed")]
    assert all(r["actor"] == "workflow:guarded" for r in recs)
    assert [r["event"] for r in recs if r["event"] == "policy_refusal"] == ["policy_refusal"]
    # the file's author approved step 1: audited before it ran, as the workflow file's approval
    (approval,) = [r for r in recs if r["event"] == "approval"]
    assert (approval["approved_via"], approval["approved_by"]) == ("workflow-file", "workflow:guarded")
    assert approval["command"].startswith("touch /tmp/phj-confirmed") and approval["approved_at"]
    assert recs.index(approval) < next(i for i, r in enumerate(recs) if r["event"] == "command")
    # without the step's confirm, the confirm rule stops the run at step 1
    wf.write_text(GUARDED.replace("    confirm: true\n", ""))
    proc = subprocess.run([str(SCRIPT), "workflow", "run", str(wf), "--report", str(report)],
                          env=env, capture_output=True, text=True, timeout=120,
                          stdin=subprocess.DEVNULL)
    assert proc.returncode == 1
    host = json.loads(report.read_text())["hosts"]["lab-target1"]
    assert [s["status"] for s in host["steps"]] == ["failed", "skipped", "skipped"]
    assert "needs confirmation" in json.dumps(host)


def test_policy_through_the_agent_protocol(lab, tmp_path):
    from functional.test_agent import Agent

    audit = tmp_path / "agent-audit.jsonl"
    agent = Agent(safety_inventory(lab, tmp_path), tmp_path / "state.json", 0,
                  "--audit-log", str(audit))
    try:
        wire = agent.connect()
        sid = wire.ok("ssh_session_open", host="lab-target1")["session_id"]
        err = wire.error("ssh_session_command", session_id=sid, command="shutdown now")
        assert err["code"] == -32007 and "deny rule" in err["message"]
        err = wire.error("ssh_session_command", session_id=sid, command="touch /tmp/phj-confirmed")
        assert err["code"] == -32007 and "confirm" in err["message"]
        r = wire.ok("ssh_session_command", session_id=sid, command="touch /tmp/phj-confirmed",
                    confirm=True)
        assert r["exit_status"] == 0
        # the MCP server in front of the agent passes its decision: who approved, how, when
        approval = {"via": "mcp-elicitation", "by": "mcp:claude/c-1", "at": 0.0,
                    "command": "touch /tmp/phj-confirmed"}
        r = wire.ok("ssh_session_command", session_id=sid, command="touch /tmp/phj-confirmed",
                    confirm=True, approval=approval)
        assert r["exit_status"] == 0
        # an approval of another line does not pass this one
        err = wire.error("ssh_session_command", session_id=sid, confirm=True, approval=approval,
                         command="touch /tmp/phj-confirmed-other")
        assert err["code"] == -32007 and "confirm" in err["message"]
        assert wire.error("ssh_session_send", session_id=sid, text="shutdown")["code"] == -32007
        ro = wire.ok("ssh_session_open", host="lab-readonly")["session_id"]
        err = wire.error("ssh_session_command", session_id=ro, command="touch /tmp/x")
        assert "read-only" in err["message"]
    finally:
        agent.stop()
    recs = records(audit)
    assert {r["actor"] for r in recs} == {"agent"}
    assert [r["outcome"] for r in recs if r["event"] == "policy_refusal"] == [
        "refused", "needs_confirm", "needs_confirm", "refused", "refused"]
    approvals = [r for r in recs if r["event"] == "approval"]
    assert [(r["approved_via"], r["approved_by"]) for r in approvals] == [
        ("agent-protocol", "agent"), ("mcp-elicitation", "mcp:claude/c-1")]
    assert approvals[1]["approved_at"].startswith("1970-01-01T00:00:00")


WORKFLOW_CANARY = """\
name: canary
targets: {hosts: [lab-password]}
steps:
  - run: 'read -r -p ''token: '' TOKEN; echo "got $TOKEN"'
    answer:
      - {prompt: 'token: ', send: env:PHJ_CANARY_SECRET}
  - run: echo "$TOKEN"
"""


def test_canaries_in_workflow_reports_and_the_agent(lab, tmp_path, monkeypatch):
    from functional.test_agent import Agent

    monkeypatch.setenv("PHONEHOME_JUMP_STATE", str(tmp_path / "state"))
    env_canary = "canary-env-" + os.urandom(6).hex()
    monkeypatch.setenv("PHJ_CANARY_SECRET", env_canary)
    password, sudo = os.environ["PHJ_LAB_PASSWORD"], os.environ["PHJ_LAB_SUDO_PASSWORD"]
    inv = safety_inventory(lab, tmp_path)
    seen: list[str] = []

    wf = tmp_path / "canary.yaml"
    wf.write_text(WORKFLOW_CANARY)
    report, junit, wf_audit = tmp_path / "r.json", tmp_path / "r.xml", tmp_path / "wf-audit.jsonl"
    proc = subprocess.run([str(SCRIPT), "-v", "--audit-log", str(wf_audit), "workflow", "run",
                           str(wf), "--report", str(report), "--junit", str(junit)],
                          env=dict(os.environ, PHONEHOME_JUMP_INVENTORY=str(inv)),
                          capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    steps = json.loads(report.read_text())["hosts"]["lab-password"]["steps"]
    assert steps[1]["output"] == "*" * len(env_canary) + "\n"     # it did arrive, masked
    seen += [proc.stdout, proc.stderr, report.read_text(), junit.read_text(), wf_audit.read_text()]

    agent_audit, state = tmp_path / "agent-audit.jsonl", tmp_path / "agent-state.json"
    agent = Agent(inv, state, 0, "-v", "--audit-log", str(agent_audit))
    try:
        wire = agent.connect()
        sid = wire.ok("ssh_session_open", host="lab-sudo")["session_id"]
        r = wire.ok("ssh_session_command", session_id=sid,
                    command="sudo -k; sudo -p '[sudo] password: ' id -u")
        assert r["awaiting_input"]
        wire.ok("ssh_session_send", session_id=sid, sudo_password=True)
        r = wire.ok("ssh_session_read", session_id=sid, timeout=15)
        assert r["stdout"].strip().endswith("0")
        wire.ok("ssh_session_command", session_id=sid, command=f"cd /tmp; echo {sudo}")
        r = wire.ok("ssh_session_command", session_id=sid, command="read -r -p 'token: ' T",
                    timeout=1)
        assert r["running"]
        wire.ok("ssh_session_send", session_id=sid, text=env_canary, secret=True)
        wire.ok("ssh_session_read", session_id=sid, timeout=10)
        r = wire.ok("ssh_session_command", session_id=sid, command='echo "$T"')
        assert r["stdout"] == "*" * len(env_canary) + "\n"
        seen += [json.dumps(r), json.dumps(wire.ok("ssh_session_list"))]
        seen.append(state.read_text())
    finally:
        seen.append(agent.stop())
    seen.append(agent_audit.read_text())
    assert "********" in agent_audit.read_text()
    for canary in (password, sudo, env_canary):
        leaks = [text for text in seen if canary in text]
        assert not leaks, f"a secret leaked: {leaks[0][:300]!r}"


# ----------------------------------------------------------------------------- edge cases

def test_a_line_typed_in_pieces_is_checked_whole_and_secrets_never_hit_the_prompt(lab, tmp_path):
    inv = Inventory.load(safety_inventory(lab, tmp_path))
    with SessionManager(inv) as m:
        sid = m.open("lab-target1").id
        m.send(sid, "shutdown -r now", newline=False)      # typed, not entered: not a command yet
        with pytest.raises(PolicyError, match="deny rule"):
            m.send(sid, "")                                 # Enter: the whole line is checked
        m.send(sid, control="c", newline=False)             # drop the line: a fresh prompt
        assert not m.read(sid, wait=5).running
        with pytest.raises(SessionError, match="the secret was not typed"):
            m.send(sid, "s3cret-typed-at-the-prompt", secret=True)
        r = m.command(sid, "echo still here")
        assert (r.output, r.exit_status) == ("still here\n", 0)


def test_a_command_that_drops_the_connection_is_still_audited(lab, tmp_path):
    audit = tmp_path / "audit.jsonl"
    with SessionManager(Inventory.load(lab.inventory), audit_path=str(audit)) as m:
        sid = m.open("lab-target1").id
        with pytest.raises(SessionError):
            m.command(sid, "kill -9 $PPID", wait=10)       # the login's sshd goes: no status
    commands = [r for r in records(audit) if r["event"] == "command"]
    assert [(r["command"], r["outcome"]) for r in commands] == [("kill -9 $PPID", "error")]
    assert "session is dead" in commands[0]["error"]
