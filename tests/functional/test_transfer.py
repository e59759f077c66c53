"""Files through the chain against real OpenSSH (SFTP), two jumps away."""

from __future__ import annotations

import hashlib
import os
import subprocess
from pathlib import Path

import pytest

import anyio
from mcp import Client

from phonehome_jump.cli import main
from phonehome_jump.mcp_server import build_server
from phonehome_jump.errors import PolicyError
from phonehome_jump.inventory import Inventory
from phonehome_jump.manager import SessionManager


def on_target(lab, name: str, command: str) -> str:
    """Run ``command`` inside the target's namespace as root (a view independent of SSH)."""
    return subprocess.run(["ip", "netns", "exec", lab.nodes[name].ns, "bash", "-c", command],
                          capture_output=True, text=True, check=True).stdout


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


HOME = "/home/phjkey"


@pytest.mark.parametrize("name,size", [("empty.bin", 0), ("one.bin", 1),
                                       ("big file ü€.bin", 50 * 1024 * 1024)])
def test_upload_then_download_exact_bytes_and_mode(lab, manager, tmp_path, name, size):
    src = tmp_path / name
    src.write_bytes(os.urandom(size))
    os.chmod(src, 0o640)
    up = manager.upload("lab-target1", str(src), f"{HOME}/{name}")
    assert (up.bytes, up.sha256, up.protocol) == (size, sha(src), "sftp")
    # the file on the target, seen from inside its namespace, not through SFTP
    quoted = f"'{HOME}/{name}'"
    assert on_target(lab, "target1", f"sha256sum {quoted}").split()[0] == sha(src)
    assert on_target(lab, "target1", f"stat -c %a {quoted}").strip() == "640"
    assert not on_target(lab, "target1", f"ls -a {HOME} | grep phj-part || true").strip()
    back = tmp_path / "back"
    back.mkdir()
    down = manager.download("lab-target1", f"{HOME}/{name}", str(back))
    assert Path(down.local) == back / name and sha(back / name) == sha(src)
    assert oct((back / name).stat().st_mode & 0o777) == oct(0o640)
    on_target(lab, "target1", f"rm -f {quoted}")


def test_upload_resumes_a_matching_part_file(lab, manager, tmp_path):
    src = tmp_path / "r.bin"
    src.write_bytes(os.urandom(3 * 1024 * 1024))
    half = src.read_bytes()[: 1024 * 1024]
    part = f"{HOME}/.r.bin.phj-part"
    (tmp_path / "half").write_bytes(half)
    manager.upload("lab-target1", str(tmp_path / "half"), part)   # a broken earlier attempt
    res = manager.upload("lab-target1", str(src), f"{HOME}/r.bin", resume=True)
    assert res.resumed_from == len(half) and res.sha256 == sha(src)
    assert on_target(lab, "target1", f"sha256sum {HOME}/r.bin").split()[0] == sha(src)
    on_target(lab, "target1", f"rm -f {HOME}/r.bin")


def test_policy_refuses_uploads_and_denied_paths_and_audits(lab, tmp_path):
    text = lab.inventory.read_text().replace(
        "  lab: {via: jump2, credentials: lab-key, tags: [lab]}",
        "  lab: {via: jump2, credentials: lab-key, tags: [lab], policy: {files: "
        "{upload: confirm, deny_paths: ['^/etc/', 'shadow']}}}")
    inv_path = tmp_path / "inv.yaml"
    inv_path.write_text(text + f"audit: {{path: {tmp_path / 'audit.jsonl'}}}\n")
    src = tmp_path / "x.txt"
    src.write_text("hello\n")
    with SessionManager(Inventory.load(inv_path)) as m:
        with pytest.raises(PolicyError, match="deny_paths"):
            m.download("lab-target1", "/etc/passwd", str(tmp_path))
        with pytest.raises(PolicyError, match="needs confirmation") as info:
            m.upload("lab-target1", str(src), f"{HOME}/x.txt")
        assert info.value.needs_confirm
        res = m.upload("lab-target1", str(src), f"{HOME}/x.txt", confirm=True)
        assert res.bytes == 6
    audit = (tmp_path / "audit.jsonl").read_text()
    assert audit.count('"policy_refusal"') == 2 and '"transfer"' in audit
    assert res.sha256 in audit
    on_target(lab, "target1", f"rm -f {HOME}/x.txt")


def test_cli_cp_like_scp(lab, tmp_path, capsys):
    src = tmp_path / "c p.txt"
    src.write_text("through two jumps\n")
    inv = str(lab.inventory)
    assert main(["--inventory", inv, "cp", str(src), f"lab-target2:{HOME}/"]) == 0
    assert on_target(lab, "target2", f"cat '{HOME}/c p.txt'") == "through two jumps\n"
    dest = tmp_path / "out.txt"
    assert main(["--inventory", inv, "cp", f"lab-target2:{HOME}/c p.txt", str(dest)]) == 0
    assert dest.read_text() == "through two jumps\n"
    assert main(["--inventory", inv, "cp", f"lab-target2:{HOME}/nope", str(dest)]) == 1
    assert "no such file" in capsys.readouterr().err
    on_target(lab, "target2", f"rm -f '{HOME}/c p.txt'")


def test_scp_fallback_where_the_target_has_no_sftp(lab, manager, tmp_path):
    from sshlab import NO_SFTP
    host = "lab-" + NO_SFTP
    src = tmp_path / "s.bin"
    src.write_bytes(os.urandom(300_000))
    up = manager.upload(host, str(src), f"{HOME}/s.bin")
    assert (up.protocol, up.sha256) == ("scp", sha(src))
    assert on_target(lab, NO_SFTP, f"sha256sum {HOME}/s.bin").split()[0] == sha(src)
    down = manager.download(host, f"{HOME}/s.bin", str(tmp_path / "s2.bin"))
    assert down.protocol == "scp" and sha(tmp_path / "s2.bin") == sha(src)
    on_target(lab, NO_SFTP, f"rm -f {HOME}/s.bin")


def test_mcp_upload_and_download_with_policy(lab, tmp_path):
    src = tmp_path / "m.txt"
    src.write_text("via MCP\n")

    async def go():
        async with Client(build_server(lab.inventory)) as client:
            up = await client.call_tool("ssh_file_upload", {
                "host": "lab-target1", "local_path": str(src), "remote_path": f"{HOME}/m.txt"})
            down = await client.call_tool("ssh_file_download", {
                "host": "lab-target1", "remote_path": f"{HOME}/m.txt",
                "local_path": str(tmp_path / "m2.txt")})
            missing = await client.call_tool("ssh_file_download", {
                "host": "lab-target1", "remote_path": f"{HOME}/nope", "local_path": str(tmp_path)})
            return up, down, missing
    up, down, missing = anyio.run(go)
    assert not up.is_error and up.structured_content["bytes"] == 8
    assert not down.is_error and (tmp_path / "m2.txt").read_text() == "via MCP\n"
    assert missing.is_error and "no such file" in missing.content[0].text
    on_target(lab, "target1", f"rm -f {HOME}/m.txt")


def test_workflow_upload_run_download_steps(lab, tmp_path, monkeypatch):
    from phonehome_jump.workflow import Workflow, run_workflow
    monkeypatch.setenv("PHONEHOME_JUMP_STATE", str(tmp_path / "state"))
    (tmp_path / "script.sh").write_text("echo configured $(hostname -I)\n")
    out = tmp_path / "out"
    out.mkdir()
    wf = tmp_path / "wf.yaml"
    wf.write_text(f"""\
name: files
targets: {{hosts: [lab-target1, lab-target2]}}
steps:
  - upload:
      src: {tmp_path}/script.sh
      dest: /tmp/phj-${{host}}.sh
    capture: {{name: sum, regex: 'sha256 ([0-9a-f]+)'}}
  - run: bash /tmp/phj-${{host}}.sh > /tmp/phj-${{host}}.out && sha256sum /tmp/phj-${{host}}.sh
    assert: {{regex: '${{sum}}'}}
  - download:
      src: /tmp/phj-${{host}}.out
      dest: {out}/${{host}}.out
  - download:
      src: /tmp/nonexistent-${{host}}
      dest: {out}
    on_fail: continue
""")
    inv = Inventory.load(lab.inventory)
    result = run_workflow(Workflow.load(wf), inv)
    for host, t in (("lab-target1", "target1"), ("lab-target2", "target2")):
        steps = result.hosts[host].steps
        assert [s.status for s in steps] == ["passed", "passed", "passed", "failed"], steps
        assert "no such file" in steps[3].message
        assert (out / f"{host}.out").read_text() == f"configured {lab.addr(t)}\n"
        on_target(lab, t, f"rm -f /tmp/phj-{host}.sh /tmp/phj-{host}.out")
