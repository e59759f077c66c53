"""`phonehome-jump run` behaves like `ssh host command` (real sshd lab, the console script)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(sys.executable).parent / "phonehome-jump"


def run(lab, *argv: str, stdin=subprocess.DEVNULL, input: bytes | None = None,
        inventory: Path | None = None, shell: str | None = None,
        env: dict[str, str] | None = None) -> subprocess.CompletedProcess[bytes]:
    env = dict(os.environ, PHONEHOME_JUMP_INVENTORY=str(inventory or lab.inventory), **(env or {}))
    if shell is not None:        # a real shell pipeline around the console script
        return subprocess.run(["bash", "-c", shell], env=env, capture_output=True, timeout=120)
    if input is not None:
        stdin = None
    return subprocess.run([str(SCRIPT), "run", *argv], stdin=stdin, input=input,
                          capture_output=True, env=env, timeout=120)


def test_stdin_is_forwarded_and_closed(lab):
    data = os.urandom(300_000)                       # binary, bigger than one SSH window piece
    proc = run(lab, "lab-target1", "--", "cat", input=data)
    assert proc.returncode == 0 and proc.stdout == data and proc.stderr == b""
    proc = run(lab, "lab-target1", "--", "head -1", stdin=subprocess.DEVNULL)
    assert (proc.returncode, proc.stdout) == (0, b"")
    proc = run(lab, "lab-target1", "--", "wc -l", input=b"a\nb\nc\n")
    assert proc.stdout.strip() == b"3"


def test_stdin_bigger_than_the_window_while_output_flows(lab):
    # the remote writes while we still send: forwarding stdin must not block the output
    data = b"".join(b"%08d\n" % i for i in range(400_000))   # 3.6 MB
    proc = run(lab, "lab-target2", "--", "cat", input=data)
    assert proc.returncode == 0 and proc.stdout == data


def test_stderr_is_separate(lab):
    proc = run(lab, "lab-target1", "--", "echo out; echo err >&2; exit 4")
    assert (proc.returncode, proc.stdout, proc.stderr) == (4, b"out\n", b"err\n")
    proc = run(lab, shell=f"{SCRIPT} run lab-target1 -- 'echo out; echo err >&2' 2>/dev/null")
    assert proc.stdout == b"out\n" and proc.stderr == b""


def test_exit_status_without_logout(lab):
    proc = run(lab, "lab-target3", "--", "exit 3")
    assert (proc.returncode, proc.stdout, proc.stderr) == (3, b"", b"")


def test_sigpipe_is_honoured(lab):
    proc = run(lab, shell=f"{SCRIPT} run lab-target1 -- seq 1 2000000 | head -c10; "
                          "echo \"rc=${PIPESTATUS[0]}\"")
    assert proc.stdout == b"1\n2\n3\n4\n5\nrc=141\n", proc.stderr
    assert b"Traceback" not in proc.stderr


def test_output_streams_as_it_arrives(lab):
    # the first line is printed long before the command ends
    proc = subprocess.Popen([str(SCRIPT), "run", "lab-target1", "--",
                             "echo first; sleep 20; echo second"], stdout=subprocess.PIPE,
                            stdin=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            env=dict(os.environ, PHONEHOME_JUMP_INVENTORY=str(lab.inventory)))
    try:
        assert proc.stdout.readline() == b"first\n"       # blocks until it comes
        assert proc.poll() is None                         # still running: it was streamed
    finally:
        proc.kill()
        proc.wait()
        proc.stdout.close()
        proc.stderr.close()


def test_sudo_password_from_the_inventory(lab, tmp_path):
    password = lab.env["PHJ_LAB_SUDO_PASSWORD"]
    audit = tmp_path / "audit.jsonl"
    proc = run(lab, "--sudo-password", "lab-sudo", "--", "sudo -k; sudo whoami; sudo id -u",
               env={"PHONEHOME_JUMP_AUDIT_LOG": str(audit)})
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, b"root\n0\n", b"")
    assert password.encode() not in proc.stdout + proc.stderr
    text = audit.read_text()
    assert password not in text
    records = [json.loads(line) for line in text.splitlines()]
    cmd = [r for r in records if r["event"] == "command"]
    assert cmd and cmd[-1]["exit_status"] == 0 and cmd[-1].get("sudo") is True
    assert cmd[-1]["command"] == "sudo -k; sudo whoami; sudo id -u"


def test_sudo_password_wrong_is_reported_not_retried(lab, tmp_path):
    inv = tmp_path / "inv.yaml"
    text = lab.inventory.read_text()
    assert 'sudo_password: "env:PHJ_LAB_SUDO_PASSWORD"' in text
    inv.write_text(text.replace('sudo_password: "env:PHJ_LAB_SUDO_PASSWORD"',
                                'sudo_password: "env:PHJ_WRONG_SUDO"'))
    proc = run(lab, "--sudo-password", "lab-sudo", "--", "sudo -k; sudo true", inventory=inv,
               env={"PHJ_WRONG_SUDO": "wrong-password-123"})
    assert proc.returncode != 0 and b"sudo refused the inventory's sudo_password" in proc.stderr
    assert b"wrong-password-123" not in proc.stdout + proc.stderr


def test_policy_refuses_before_connecting(lab, tmp_path):
    inv = tmp_path / "inv.yaml"
    inv.write_text(lab.inventory.read_text().replace(
        "defaults:\n", "defaults:\n  policy: {deny: ['^touch ']}\n", 1))
    proc = run(lab, "lab-target1", "--", "touch /tmp/phj-policy-canary", inventory=inv)
    assert proc.returncode == 77 and proc.stdout == b"" and b"touch" in proc.stderr
    proc = run(lab, "lab-target1", "--", "test -e /tmp/phj-policy-canary")
    assert proc.returncode == 1                       # it never ran


def test_the_target_is_called_a_host_not_a_hop(lab, tmp_path):
    known = tmp_path / "known_hosts"                 # the jumps' keys only
    known.write_text(lab.host_key_line("jump1") + "\n" + lab.host_key_line("jump2") + "\n")
    text = lab.inventory.read_text()
    inv = tmp_path / "inv.yaml"
    inv.write_text(text.replace(f"known_hosts: {lab.known_hosts}", f"known_hosts: {known}"))
    proc = run(lab, "lab-target1", "--", "true", inventory=inv)
    assert proc.returncode == 255
    assert proc.stderr.startswith(b"phonehome-jump: host 'lab-target1'") and b"host key" in proc.stderr
    scripted = subprocess.run([str(SCRIPT), "shell", "lab-target1"], input=b"true\n",
                              capture_output=True, timeout=120,
                              env=dict(os.environ, PHONEHOME_JUMP_INVENTORY=str(inv)))
    assert scripted.returncode == 255
    assert scripted.stderr.startswith(b"phonehome-jump: host 'lab-target1'")
    password = tmp_path / "pw.yaml"
    password.write_text(text)
    proc = run(lab, "lab-password", "--", "true", inventory=password,
               env={"PHJ_LAB_PASSWORD": "wrong"})
    assert proc.returncode == 255 and proc.stderr.startswith(b"phonehome-jump: host 'lab-password'")
    assert b"authentication" in proc.stderr


def _peak_rss_kib(argv: list[str], env: dict[str, str]) -> tuple[subprocess.CompletedProcess[bytes], int]:
    """Run the console script in a child of a fresh Python, whose RUSAGE_CHILDREN peak is
    that process's alone."""
    probe = ("import json, resource, subprocess, sys\n"
             "p = subprocess.run(sys.argv[1:], stdin=subprocess.DEVNULL, capture_output=True)\n"
             "sys.stderr.buffer.write(p.stderr)\n"
             "sys.stdout.buffer.write(json.dumps([p.returncode, "
             "resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss]).encode() + b'\\n' + p.stdout)\n")
    proc = subprocess.run([sys.executable, "-c", probe, *argv], capture_output=True, env=env,
                          timeout=300)
    head, _, out = proc.stdout.partition(b"\n")
    code, peak = json.loads(head)
    return subprocess.CompletedProcess(argv, code, out, proc.stderr), peak


def test_json_output_of_any_size_is_exact_and_streamed_in_bounded_memory(lab):
    # --json takes the framed session; its output is written page by page, never held whole
    env = dict(os.environ, PHONEHOME_JUMP_INVENTORY=str(lab.inventory),
               PHONEHOME_JUMP_OUTPUT_MEMORY="1000000")
    small, base = _peak_rss_kib([str(SCRIPT), "run", "--json", "lab-target1", "--", "seq 1 10"], env)
    assert small.returncode == 0 and json.loads(small.stdout)["output"] == "".join(
        f"{i}\n" for i in range(1, 11)), small.stderr
    n = 3_000_000
    expected = "".join(f"{i}\n" for i in range(1, n + 1))          # 20.9 MB
    proc, peak = _peak_rss_kib([str(SCRIPT), "run", "--json", "lab-target1", "--", f"seq 1 {n}"], env)
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["output"] == expected and doc["exit_status"] == 0
    assert (doc["truncated"], doc["omitted"], doc["total"]) == (False, None, len(expected))
    # joining it (and then its JSON) would add 40+ MB; pages and the session's in-memory
    # part (1 MB here, then spilled to its private file) add a few
    assert peak - base < 16 * 1024, (base, peak)


def test_a_scripted_shell_streams_each_commands_output(lab):
    # `shell` with stdin lines (no terminal): output is written as it arrives, not at the end.
    # The command waits for a file that is only created once its first line was read here.
    import select
    import uuid

    go = f"/tmp/phj-go-{uuid.uuid4().hex[:8]}"
    env = dict(os.environ, PHONEHOME_JUMP_INVENTORY=str(lab.inventory))
    proc = subprocess.Popen([str(SCRIPT), "shell", "lab-target1"], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    try:
        proc.stdin.write(f"cd /tmp\necho first; until [ -e {go} ]; do sleep 0.05; done; "
                         "echo second\n".encode())
        proc.stdin.close()
        ready, _, _ = select.select([proc.stdout], [], [], 60)
        assert ready and proc.stdout.readline() == b"first\n", proc.stderr.read1() if not ready else ""
        assert run(lab, "lab-target1", "--", f"touch {go}").returncode == 0
        assert proc.stdout.readline() == b"second\n"
        assert proc.wait(60) == 0
    finally:
        run(lab, "lab-target1", "--", f"rm -f {go}")
        proc.kill()
        proc.wait()
        proc.stdout.close()
        proc.stderr.close()


def test_a_command_killed_by_a_signal_exits_like_a_shell_reports_it(lab):
    # sshd sends exit-signal, not exit-status: 128 + the signal's number, as bash's $? says
    proc = run(lab, "lab-target1", "--", "echo before; kill -TERM $$")
    assert (proc.returncode, proc.stdout, proc.stderr) == (143, b"before\n", b""), proc.stderr
    proc = run(lab, "lab-target2", "--", "kill -KILL $$")
    assert (proc.returncode, proc.stderr) == (137, b""), proc.stderr
