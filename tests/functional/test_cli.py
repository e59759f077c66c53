"""The CLI against the real sshd lab: run, scripted and interactive shell, connect failures."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from phonehome_jump.cli import main

SCRIPT = Path(sys.executable).parent / "phonehome-jump"


def cli(lab, *argv: str, input: str | None = None, timeout: float = 120,
        inventory: Path | None = None) -> subprocess.CompletedProcess[str]:
    """The installed console script in a subprocess, inventory from the environment."""
    env = dict(os.environ, PHONEHOME_JUMP_INVENTORY=str(inventory or lab.inventory))
    return subprocess.run([str(SCRIPT), *argv], input=input if input is not None else "",
                          capture_output=True, text=True, env=env, timeout=timeout)


def inproc(capsys, lab, *argv: str) -> tuple[int, str, str]:
    code = main(["--inventory", str(lab.inventory), *argv])
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    return code, out, err


def no_noise(proc: subprocess.CompletedProcess[str]) -> None:
    assert "Traceback" not in proc.stdout + proc.stderr
    assert "Exception" not in proc.stderr


# ----------------------------------------------------------------------------- run

def test_run_prints_output_exactly(capsys, lab):
    code, out, err = inproc(capsys, lab, "run", "lab-target1", "--", "cd /tmp && pwd")
    assert (code, out, err) == (0, "/tmp\n", "")


def test_run_joins_words_and_keeps_missing_newline(capsys, lab):
    code, out, _ = inproc(capsys, lab, "run", "lab-target1", "--", "printf", "'%s|'", "a", "b")
    assert (code, out) == (0, "a|b|")


@pytest.mark.parametrize("command,status", [
    ('sh -c "exit 3"', 3), ("false", 1), ("true", 0), ("ls /nonexistent-phj 2>/dev/null", 2)])
def test_run_exit_status_propagates(capsys, lab, command, status):
    code, _, _ = inproc(capsys, lab, "run", "lab-target1", "--", command)
    assert code == status


def test_run_pages_long_output_in_full(capsys, lab):
    code, out, _ = inproc(capsys, lab, "run", "lab-target2", "--", "seq 1 20000")
    assert code == 0
    assert out == "".join(f"{i}\n" for i in range(1, 20001))   # ~109k characters, cap is 16k


def test_run_timeout_exits_124(capsys, lab):
    start = time.monotonic()
    code, out, err = inproc(capsys, lab, "run", "--timeout", "1.5", "lab-target1", "--",
                            "echo started; sleep 30")
    assert code == 124 and out == "started\n"
    assert "still running after 1.5s" in err and "--timeout" in err
    assert time.monotonic() - start < 15


def test_run_without_sudo_password_fails_like_ssh_and_says_how(capsys, lab):
    # no terminal, as with `ssh host sudo true`: sudo refuses at once (no hang until --timeout)
    code, _, err = inproc(capsys, lab, "run", "lab-sudo", "--", "sudo -k; sudo true")
    assert code == 1 and "a terminal is required" in err and "--sudo-password" in err


def test_run_with_password_auth_never_shows_the_password(lab):
    proc = cli(lab, "-vv", "run", "lab-password", "--", "whoami")
    assert proc.returncode == 0 and proc.stdout == "phjpass\n"
    assert lab.env["PHJ_LAB_PASSWORD"] not in proc.stdout + proc.stderr


def test_console_script(lab):
    proc = cli(lab, "run", "lab-target1", "--", "cd /tmp && pwd")
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, "/tmp\n", "")
    proc = cli(lab, "run", "lab-target3", "--", 'sh -c "exit 3"')
    assert proc.returncode == 3 and proc.stderr == ""


def test_console_script_inventory_commands(lab):
    proc = cli(lab, "inventory", "check")
    assert proc.returncode == 0 and proc.stdout.startswith("ok: 7 hosts, 1 group in 1 file")
    proc = cli(lab, "inventory", "list", "--tag", "lab")
    names = [line.split()[0] for line in proc.stdout.splitlines()[1:]]
    assert "lab-target1" in names and "lab-jump1" in names
    assert re.search(r"lab-target1 .*jump1 (→|->) jump2", proc.stdout)
    proc = cli(lab, "inventory", "show", "lab-password")
    assert "env:PHJ_LAB_PASSWORD" in proc.stdout
    assert lab.env["PHJ_LAB_PASSWORD"] not in proc.stdout + proc.stderr


# ----------------------------------------------------------------------------- scripted shell

def test_scripted_shell(lab):
    proc = cli(lab, "shell", "lab-target1", input="cd /tmp\npwd\n")
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, "/tmp\n", "")


def test_scripted_shell_keeps_state_and_returns_the_last_status(lab):
    proc = cli(lab, "shell", "lab-target2",
               input="export PHJ_X=42\n\ncd /etc\necho $PHJ_X $PWD\nfalse\n")
    assert proc.stdout == "42 /etc\n" and proc.returncode == 1


def test_scripted_shell_timeout(lab):
    proc = cli(lab, "shell", "--timeout", "1", "lab-target1", input="echo a\nsleep 30\necho b\n")
    assert proc.returncode == 124 and proc.stdout == "a\n" and "still running" in proc.stderr


# ----------------------------------------------------------------------------- connect failures

def broken_inventory(lab, tmp_path: Path) -> Path:
    empty = tmp_path / "empty_known_hosts"
    empty.write_text("")
    text = lab.inventory.read_text()
    assert f"known_hosts: {lab.known_hosts}" in text
    path = tmp_path / "inv.yaml"
    path.write_text(text.replace(f"known_hosts: {lab.known_hosts}", f"known_hosts: {empty}"))
    return path


def test_host_key_failure_exits_255(capsys, lab, tmp_path):
    inv = broken_inventory(lab, tmp_path)
    code = main(["--inventory", str(inv), "run", "lab-target1", "--", "true"])
    out, err = capsys.readouterr()
    assert code == 255 and out == ""
    assert err.startswith("phonehome-jump: hop 'jump1'") and "host key" in err
    assert "Traceback" not in err


def test_host_key_failure_console_script(lab, tmp_path):
    inv = broken_inventory(lab, tmp_path)
    for argv in (["run", "lab-target1", "--", "true"], ["shell", "lab-target2"]):
        proc = cli(lab, *argv, inventory=inv, input="pwd\n")
        assert proc.returncode == 255 and proc.stdout == ""
        assert "jump1" in proc.stderr and proc.stderr.startswith("phonehome-jump: ")
        no_noise(proc)


def test_auth_failure_exits_255(lab, tmp_path):
    path = tmp_path / "inv.yaml"
    path.write_text(lab.inventory.read_text())
    env = dict(os.environ, PHONEHOME_JUMP_INVENTORY=str(path), PHJ_LAB_PASSWORD="wrong")
    proc = subprocess.run([str(SCRIPT), "run", "lab-password", "--", "true"], env=env,
                          capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
    assert proc.returncode == 255 and "authentication" in proc.stderr
    no_noise(proc)


def test_missing_secret_exits_1(lab):
    env = {k: v for k, v in os.environ.items() if k != "PHJ_LAB_PASSWORD"}
    env["PHONEHOME_JUMP_INVENTORY"] = str(lab.inventory)
    proc = subprocess.run([str(SCRIPT), "run", "lab-password", "--", "true"], env=env,
                          capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
    assert proc.returncode == 1 and "PHJ_LAB_PASSWORD is not set" in proc.stderr
    no_noise(proc)
