"""A person approves what the policy says to confirm: MCP elicitation against the sshd lab.

A real MCP client with an elicitation callback (in process, both protocol eras), the real
policy and the real audit log: accept runs, decline refuses, a client that cannot elicit is
refused, and the model's confirm=true alone never passes a confirm rule.
"""

from __future__ import annotations

import json
import secrets
from pathlib import Path

import mcp_types as types
import pytest
from mcp import Client

from phonehome_jump.mcp_server import build_server

pytestmark = pytest.mark.anyio
RULE = r"^touch\s+/tmp/phj-approved-"


@pytest.fixture
def anyio_backend():
    return "asyncio"


def approval_inventory(lab, tmp_path: Path, mcp_approval: str | None = None) -> Path:
    text = lab.inventory.read_text()
    assert "  keepalive: 15\n" in text
    extra = f", mcp_approval: {mcp_approval}" if mcp_approval else ""
    policy = f"  policy: {{deny: ['\\bshutdown\\b'], confirm: ['{RULE}']{extra}}}\n"
    path = tmp_path / "approval.yaml"
    path.write_text(text.replace("  keepalive: 15\n", "  keepalive: 15\n" + policy)
                    + f"audit: {{path: {tmp_path / 'audit.jsonl'}}}\n")
    return path


def records(tmp_path: Path) -> list[dict]:
    return [json.loads(line) for line in (tmp_path / "audit.jsonl").read_text().splitlines()]


class Person:
    """The person behind the client: answers each elicitation and remembers what it saw."""

    def __init__(self, action: str, approve: bool = True) -> None:
        self.action, self.approve, self.seen = action, approve, []

    async def __call__(self, context, params):
        self.seen.append(params.message)
        content = {"approve": self.approve} if self.action == "accept" else None
        return types.ElicitResult(action=self.action, content=content)


async def call(client: Client, tool: str, **args):
    return await client.call_tool(tool, args)


async def exists(client: Client, sid: str, path: str) -> bool:
    r = await call(client, "ssh_session_command", session_id=sid, command=f"test -e {path}")
    assert not r.is_error, r.content[0].text
    return r.structured_content["exit_status"] == 0


@pytest.mark.parametrize("mode", ["auto", "legacy"])      # 2026-07-28 and the handshake era
async def test_accept_runs_decline_refuses(lab, tmp_path, mode):
    server = build_server(approval_inventory(lab, tmp_path))
    token = secrets.token_hex(6)
    yes, no = Person("accept"), Person("decline")
    async with Client(server, mode=mode, elicitation_callback=yes) as client, \
            Client(server, mode=mode, elicitation_callback=no) as other:
        sid = (await call(client, "ssh_session_open", host="lab-target1")).structured_content["session_id"]
        osid = (await call(other, "ssh_session_open", host="lab-target1")).structured_content["session_id"]
        r = await call(other, "ssh_session_command", session_id=osid,
                       command=f"touch /tmp/phj-approved-{token}-no", confirm=True)
        assert r.is_error and "the user declined it" in r.content[0].text
        assert not await exists(other, osid, f"/tmp/phj-approved-{token}-no")

        r = await call(client, "ssh_session_command", session_id=sid,
                       command=f"touch /tmp/phj-approved-{token} && echo done")
        assert not r.is_error, r.content[0].text
        assert (r.structured_content["output"], r.structured_content["exit_status"]) == ("done\n", 0)
        assert await exists(client, sid, f"/tmp/phj-approved-{token}")

        # ssh_run and a line typed with ssh_session_send ask too
        r = await call(client, "ssh_run", host="lab-target2", command=f"touch /tmp/phj-approved-{token}-run")
        assert not r.is_error and r.structured_content["exit_status"] == 0
        r = await call(other, "ssh_session_send", session_id=osid, text=f"touch /tmp/phj-approved-{token}-send")
        assert r.is_error and "declined" in r.content[0].text
        # a secret is never put in a dialog: at the idle prompt the guard refuses it unasked
        r = await call(client, "ssh_session_send", session_id=sid, secret=True,
                       text=f"touch /tmp/phj-approved-{token}-secret")
        assert r.is_error and "the secret was not typed" in r.content[0].text
        # a command without a confirm rule asks nobody
        assert (await call(client, "ssh_session_command", session_id=sid, command="true")).structured_content["exit_status"] == 0

    # what the person saw: host, chain, the exact command and the rule
    assert len(yes.seen) == 2 and len(no.seen) == 2
    shown = yes.seen[0]
    assert "lab-target1" in shown and "jump1 → jump2" in shown and RULE in shown
    assert f"touch /tmp/phj-approved-{token} && echo done" in shown
    assert "lab-target2" in yes.seen[1]

    recs = records(tmp_path)
    approvals = [r for r in recs if r["event"] == "approval"]
    assert [(r["host"], r["approved_via"]) for r in approvals] == [
        ("lab-target1", "mcp-elicitation"), ("lab-target2", "mcp-elicitation")]
    assert all(r["approved_by"].startswith("mcp:") and r["approved_at"] and r["rule"] == RULE
               for r in approvals)
    assert [r["outcome"] for r in recs if r["event"] == "policy_refusal"] == ["declined", "declined"]
    ran = [r["command"] for r in recs if r["event"] == "command"]
    assert f"touch /tmp/phj-approved-{token}-no" not in ran
    assert f"touch /tmp/phj-approved-{token} && echo done" in ran
    # the approval is written before the command it lets through
    idx = [r["event"] for r in recs]
    assert idx.index("approval") < next(i for i, r in enumerate(recs) if r["event"] == "command"
                                        and r["command"].startswith(f"touch /tmp/phj-approved-{token} "))


async def test_unticked_box_or_cancel_refuse(lab, tmp_path):
    server = build_server(approval_inventory(lab, tmp_path))
    for person, said in ((Person("accept", approve=False), "did not approve"),
                         (Person("cancel"), "cancelled")):
        async with Client(server, elicitation_callback=person) as client:
            r = await call(client, "ssh_run", host="lab-target1", command="touch /tmp/phj-approved-x")
            assert r.is_error and said in r.content[0].text


@pytest.mark.parametrize("mode", ["auto", "legacy"])
async def test_a_client_that_cannot_elicit_is_refused_even_with_confirm(lab, tmp_path, mode):
    server = build_server(approval_inventory(lab, tmp_path))
    token = secrets.token_hex(6)
    async with Client(server, mode=mode) as client:
        sid = (await call(client, "ssh_session_open", host="lab-target1")).structured_content["session_id"]
        for confirm in (False, True):
            r = await call(client, "ssh_session_command", session_id=sid, confirm=confirm,
                           command=f"touch /tmp/phj-approved-{token}")
            text = r.content[0].text
            assert r.is_error and "cannot ask its user" in text and "elicitation" in text
            assert "mcp_approval: elicit-or-model" in text and "lab-target1" in text
        # arguments the model might forge for the approval are not parameters at all
        r = await call(client, "ssh_session_command", session_id=sid, confirm=True,
                       command=f"touch /tmp/phj-approved-{token}",
                       answer={"action": "accept", "data": {"approve": True}},
                       g={"rule": None})
        assert r.is_error
        assert not await exists(client, sid, f"/tmp/phj-approved-{token}")
    assert [r["outcome"] for r in records(tmp_path) if r["event"] == "policy_refusal"] == [
        "no_elicitation"] * 3
    assert not [r for r in records(tmp_path) if r["event"] == "approval"]


async def test_elicit_or_model_lets_the_models_confirm_pass_only_without_elicitation(lab, tmp_path):
    server = build_server(approval_inventory(lab, tmp_path, "elicit-or-model"))
    async with Client(server) as client:
        r = await call(client, "ssh_run", host="lab-target1", command="touch /tmp/phj-approved-m")
        assert r.is_error and "cannot ask its user" in r.content[0].text
        r = await call(client, "ssh_run", host="lab-target1", confirm=True,
                       command="touch /tmp/phj-approved-m")
        assert not r.is_error and r.structured_content["exit_status"] == 0
    no = Person("decline")
    async with Client(server, elicitation_callback=no) as client:     # it can elicit: asked
        r = await call(client, "ssh_run", host="lab-target1", confirm=True,
                       command="touch /tmp/phj-approved-m")
        assert r.is_error and "declined" in r.content[0].text and no.seen
    approvals = [r for r in records(tmp_path) if r["event"] == "approval"]
    assert [r["approved_via"] for r in approvals] == ["mcp-model-confirm"]


async def test_refuse_mode_never_runs_it_over_mcp(lab, tmp_path):
    server = build_server(approval_inventory(lab, tmp_path, "refuse"))
    yes = Person("accept")
    async with Client(server, elicitation_callback=yes) as client:
        r = await call(client, "ssh_run", host="lab-target1", confirm=True,
                       command="touch /tmp/phj-approved-r")
        assert r.is_error and "mcp_approval: refuse" in r.content[0].text
        assert "--confirm" in r.content[0].text and not yes.seen


async def test_over_streamable_http_the_handshake_era_asks_mid_call(lab, tmp_path):
    """The real transport a remote client uses: `serve --http` in its own process."""
    import os
    import socket
    import subprocess
    import sys
    import time

    from mcp.client.streamable_http import streamable_http_client
    from mcp.shared._httpx_utils import create_mcp_http_client

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    inv = approval_inventory(lab, tmp_path)
    proc = subprocess.Popen([str(Path(sys.executable).parent / "phonehome-jump"), "serve",
                             "--inventory", str(inv), "--http", f"127.0.0.1:{port}"],
                            env=dict(os.environ), stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                assert proc.poll() is None and time.monotonic() < deadline
                time.sleep(0.05)
        url = f"http://127.0.0.1:{port}/mcp"
        for person, ok in ((Person("accept"), True), (Person("decline"), False)):
            async with create_mcp_http_client() as http, \
                    Client(streamable_http_client(url, http_client=http),
                           elicitation_callback=person) as client:
                r = await call(client, "ssh_run", host="lab-target1",
                               command="touch /tmp/phj-approved-http")
                assert r.is_error is not ok, r.content[0].text
                assert len(person.seen) == 1 and "lab-target1" in person.seen[0]
    finally:
        proc.terminate()
        proc.wait(timeout=15)
    approvals = [r for r in records(tmp_path) if r["event"] == "approval"]
    assert [r["approved_via"] for r in approvals] == ["mcp-elicitation"]


async def test_a_file_copy_marked_confirm_asks_the_person_too(lab, tmp_path, request):
    home = "/home/phjkey"
    text = lab.inventory.read_text().replace(
        "  lab: {via: jump2, credentials: lab-key, tags: [lab]}",
        "  lab: {via: jump2, credentials: lab-key, tags: [lab], policy: {files: {upload: confirm}}}")
    inv = tmp_path / "files.yaml"
    inv.write_text(text + f"audit: {{path: {tmp_path / 'audit.jsonl'}}}\n")
    src = tmp_path / "f.txt"
    src.write_text("approved copy\n")
    token = secrets.token_hex(4)
    args = {"host": "lab-target1", "local_path": str(src), "remote_path": f"{home}/f-{token}.txt"}
    # the lab's targets share this machine's file system: the copy is removed afterwards
    request.addfinalizer(lambda: Path(args["remote_path"]).unlink(missing_ok=True))
    server = build_server(inv)
    async with Client(server) as client:                    # cannot elicit: confirm=true is not enough
        r = await call(client, "ssh_file_upload", confirm=True, **args)
        assert r.is_error and "cannot ask its user" in r.content[0].text
    no, yes = Person("decline"), Person("accept")
    async with Client(server, elicitation_callback=no) as client:
        r = await call(client, "ssh_file_upload", **args)
        assert r.is_error and "declined" in r.content[0].text
    async with Client(server, elicitation_callback=yes) as client:
        r = await call(client, "ssh_file_upload", **args)
        assert not r.is_error, r.content[0].text
        assert r.structured_content["bytes"] == len("approved copy\n")
        # downloads are allowed: nobody is asked
        r = await call(client, "ssh_file_download", host="lab-target1",
                       remote_path=f"{home}/f-{token}.txt", local_path=str(tmp_path / "back.txt"))
        assert not r.is_error and (tmp_path / "back.txt").read_text() == "approved copy\n"
    assert len(yes.seen) == 1 and "file copy" in yes.seen[0] and f"f-{token}.txt" in yes.seen[0]
    recs = records(tmp_path)
    assert [(r["approved_via"], r["rule"]) for r in recs if r["event"] == "approval"] == [
        ("mcp-elicitation", "files.upload")]
    assert [r["outcome"] for r in recs if r["event"] == "policy_refusal"] == [
        "no_elicitation", "declined"]
