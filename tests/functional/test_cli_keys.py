"""`inventory check --keys`: every host key of a chain at once (real sshd lab)."""

from __future__ import annotations

import os
import pty
import re
import select
import subprocess
import sys
import time
from pathlib import Path

SCRIPT = Path(sys.executable).parent / "phonehome-jump"


def inventory_with(lab, tmp_path: Path, known_lines: list[str]) -> tuple[Path, Path]:
    known = tmp_path / "known_hosts"
    known.write_text("".join(line + "\n" for line in known_lines))
    inv = tmp_path / "inv.yaml"
    inv.write_text(lab.inventory.read_text().replace(f"known_hosts: {lab.known_hosts}",
                                                     f"known_hosts: {known}"))
    return inv, known


def keys(inv: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(SCRIPT), "--inventory", str(inv), "inventory", "check", "--keys",
                           *argv], capture_output=True, text=True, timeout=120,
                          stdin=subprocess.DEVNULL)


def test_all_known(lab):
    proc = keys(lab.inventory, "--host", "lab-target1")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()[1:]
    assert [line.split(":")[0] for line in lines] == [
        f"hop jump1 (phjkey@{lab.addr('jump1')}", f"hop jump2 (phjkey@{lab.addr('jump2')}",
        f"host lab-target1 (phjkey@{lab.addr('target1')}"]
    assert all(": ok, ssh-ed25519 SHA256:" in line for line in lines)


def test_without_a_terminal_nothing_is_trusted(lab, tmp_path):
    inv, known = inventory_with(lab, tmp_path, [])
    proc = keys(inv, "--host", "lab-target1", "--host", "lab-target2")
    assert proc.returncode == 1
    out = proc.stdout
    assert re.search(r"hop jump1 .*: MISSING from .*known_hosts: ssh-ed25519 SHA256:\S+ "
                     r"\(not confirmed\)", out)
    assert re.search(r"hop jump2 .*: not reached: behind jump1", out)
    assert re.search(r"host lab-target1 .*: not reached", out)
    assert re.search(r"host lab-target2 .*: not reached", out)
    assert lab.host_key_line("jump1") in out
    assert known.read_text() == ""                      # nothing written


def test_confirmed_on_a_terminal_every_key_at_once_then_written(lab, tmp_path):
    inv, known = inventory_with(lab, tmp_path, [])
    master, slave = pty.openpty()
    proc = subprocess.Popen([str(SCRIPT), "--inventory", str(inv), "inventory", "check",
                             "--keys", "--host", "lab-target1", "--write"],
                            stdin=slave, stdout=slave, stderr=slave)
    os.close(slave)
    seen, answered = "", 0
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 5)
            if not ready:
                continue
            try:
                chunk = os.read(master, 65536).decode()
            except OSError:
                break
            if not chunk:
                break
            seen += chunk
            while seen.count("[y/N] ") > answered:
                os.write(master, b"y\n")
                answered += 1
        assert proc.wait(timeout=30) == 0, seen
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(master)
    assert answered == 3                                # one question per missing key
    for name in ("jump1", "jump2", "target1"):
        assert lab.host_key_line(name) in known.read_text()
    assert "added 3 keys to" in seen
    run = subprocess.run([str(SCRIPT), "--inventory", str(inv), "run", "lab-target1", "--",
                          "echo reached"], capture_output=True, text=True, timeout=120,
                         stdin=subprocess.DEVNULL)
    assert (run.returncode, run.stdout) == (0, "reached\n")


def test_a_changed_key_stops_the_chain(lab, tmp_path):
    wrong = lab.host_key_line("target3").split(" ", 1)[1]        # another host's key
    inv, _ = inventory_with(lab, tmp_path, [lab.host_key_line("jump1"),
                                            f"{lab.addr('jump2')} {wrong}"])
    proc = keys(inv, "--host", "lab-target1")
    assert proc.returncode == 1
    assert re.search(r"hop jump1 .*: ok", proc.stdout)
    assert re.search(r"hop jump2 .*: CHANGED: .*man-in-the-middle", proc.stdout)
    assert re.search(r"host lab-target1 .*: not reached", proc.stdout)
