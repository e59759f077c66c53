"""keyring: and cmd: references through every entry point, with canary scans.

The lab's login and sudo passwords come from a keyring (a file backend, set up for the test
through keyring's own PYTHON_KEYRING_BACKEND) and from a helper command; the processes under
test get an environment without them. Then every output, log, audit file, transcript, report
and every process's /proc/PID/environ is scanned for the values.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from mcp import Client, StdioServerParameters

SCRIPT = Path(sys.executable).parent / "phonehome-jump"
pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend():
    return "asyncio"


@pytest.fixture
def refs(lab, tmp_path, monkeypatch):
    """An inventory whose lab passwords are keyring:/cmd: references, and a clean env."""
    import keyring
    from keyrings.alt.file import PlaintextKeyring

    password, sudo = lab.env["PHJ_LAB_PASSWORD"], lab.env["PHJ_LAB_SUDO_PASSWORD"]
    data = tmp_path / "data"
    monkeypatch.setenv("XDG_DATA_HOME", str(data))
    before = keyring.get_keyring()
    keyring.set_keyring(PlaintextKeyring())
    keyring.set_password("phj-lab", "phjpass", password)
    keyring.set_keyring(before)
    secret = tmp_path / "sudo.secret"
    secret.write_text(sudo + "\n")
    secret.chmod(0o600)
    helper = tmp_path / "sudo-helper"
    helper.write_text(f"#!/bin/sh\nexec cat {secret}\n")
    helper.chmod(0o700)
    text = lab.inventory.read_text()
    for old, new in (('password: "env:PHJ_LAB_PASSWORD"', 'password: "keyring:phj-lab/phjpass"'),
                     ('password: "env:PHJ_LAB_SUDO_PASSWORD", sudo_password: "env:PHJ_LAB_SUDO_PASSWORD"',
                      f'password: "cmd:{helper}", sudo_password: "cmd:{helper}"')):
        assert old in text
        text = text.replace(old, new)
    audit, transcripts = tmp_path / "audit.jsonl", tmp_path / "transcripts"
    inv = tmp_path / "refs.yaml"
    inv.write_text(text + f"audit: {{path: {audit}, transcripts: {transcripts}}}\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PHJ_LAB_")}
    env.update(XDG_DATA_HOME=str(data), PYTHON_KEYRING_BACKEND="keyrings.alt.file.PlaintextKeyring",
               PHONEHOME_JUMP_INVENTORY=str(inv), PHONEHOME_JUMP_STATE=str(tmp_path / "state"),
               PHJ_TEST_MARKER="phj-refs-" + os.urandom(6).hex())
    assert password not in json.dumps(env) and sudo not in json.dumps(env)
    return {"inv": inv, "env": env, "password": password, "sudo": sudo, "audit": audit,
            "transcripts": transcripts}


def environs(marker: str) -> dict[int, bytes]:
    """/proc/PID/environ of every process started for this test (they carry ``marker``; the
    lab's passwords are shared by every lab on the machine, so other processes may know them)."""
    found = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                environ = (entry / "environ").read_bytes()
            except OSError:             # gone, or a kernel thread
                continue
            if marker.encode() in environ:
                found[int(entry.name)] = environ
    return found


def pids_running(path: Path) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if str(path).encode() in (entry / "cmdline").read_bytes():
                    pids.append(int(entry.name))
            except OSError:
                pass
    return pids


async def test_keyring_and_cmd_canaries_leak_nowhere(refs, tmp_path):
    password, sudo = refs["password"], refs["sudo"]
    seen: list[str] = []
    log = tmp_path / "serve.log"
    # MCP over stdio: the server resolves keyring: at login and cmd: for sudo_password
    params = StdioServerParameters(command="sh", env=refs["env"], args=[
        "-c", f'exec "{SCRIPT}" -vv serve --inventory "{refs["inv"]}" 2>>"{log}"'])
    async with Client(params) as client:
        async def call(tool, **args):
            r = await client.call_tool(tool, args)
            seen.extend(c.text for c in r.content if hasattr(c, "text"))
            seen.append(json.dumps(r.structured_content))
            assert not r.is_error, r.content[0].text
            return r.structured_content
        sid = (await call("ssh_session_open", host="lab-password"))["session_id"]
        r = await call("ssh_session_command", session_id=sid, command=f"whoami; echo {password}")
        assert r["output"] == "phjpass\n" + "*" * len(password) + "\n"
        await call("inventory_show", host="lab-sudo")
        ssid = (await call("ssh_session_open", host="lab-sudo"))["session_id"]
        r = await call("ssh_session_command", session_id=ssid,
                       command="sudo -k; sudo -p '[sudo] password: ' id -u", wait=15)
        assert r["awaiting_input"]
        await call("ssh_session_send", session_id=ssid, sudo_password=True)
        r = await call("ssh_session_read", session_id=ssid, wait=15)
        assert r["output"].endswith("0\n") and r["exit_status"] == 0
        # while the server runs: no process on the machine has either value in its environment
        servers = pids_running(refs["inv"])
        assert servers, "the MCP server process was not found"
        checked = environs(refs["env"]["PHJ_TEST_MARKER"])
        assert set(servers) <= set(checked)
        for pid, environ in checked.items():
            assert password.encode() not in environ and sudo.encode() not in environ, \
                f"a secret is in /proc/{pid}/environ"

    # the CLI, verbose: a run and a workflow whose answer is the sudo_password (with a report)
    cli_audit = tmp_path / "cli-audit.jsonl"
    proc = subprocess.run([str(SCRIPT), "-vv", "--audit-log", str(cli_audit), "run", "lab-password",
                           "--", f"echo {password}"], env=refs["env"], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout == "*" * len(password) + "\n", proc.stderr
    seen += [proc.stdout, proc.stderr]
    wf = tmp_path / "sudo.yaml"
    wf.write_text("name: sudo-canary\ntargets: {hosts: [lab-sudo]}\nsteps:\n"
                  "  - run: \"sudo -k; sudo -p 'pw: ' id -un\"\n"
                  "    answer:\n      - {prompt: 'pw: $', send: inventory:sudo_password}\n"
                  f"  - run: echo {sudo}\n")
    report = tmp_path / "report.json"
    proc = subprocess.run([str(SCRIPT), "-vv", "workflow", "run", str(wf), "--report", str(report)],
                          env=refs["env"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    steps = json.loads(report.read_text())["hosts"]["lab-sudo"]["steps"]
    assert steps[0]["output"].endswith("root\n") and steps[1]["output"] == "*" * len(sudo) + "\n"
    seen += [proc.stdout, proc.stderr]

    files = [log, refs["audit"], cli_audit, report, *refs["transcripts"].iterdir()]
    seen += [f.read_text() for f in files]
    for canary in (password, sudo):
        leaks = [text for text in seen if canary in text]
        assert not leaks, f"a secret leaked: {[ln for ln in leaks[0].splitlines() if canary in ln]!r}"
    assert "********" in refs["audit"].read_text()


def test_a_missing_keyring_entry_is_a_clear_connect_error(refs):
    env = dict(refs["env"], XDG_DATA_HOME=str(Path(refs["env"]["XDG_DATA_HOME"]) / "empty"))
    proc = subprocess.run([str(SCRIPT), "run", "lab-password", "--", "true"], env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert "no secret for service 'phj-lab', user 'phjpass'" in proc.stderr
    assert "keyring set phj-lab phjpass" in proc.stderr and "Traceback" not in proc.stderr
