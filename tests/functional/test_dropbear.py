"""dropbear as the target, as on routers, embedded Linux and many appliances: sessions,
one-shot runs, file copies, host keys and liveness behave as against OpenSSH, through the
same two jumps. (The close-ordering tests of ``test_shared_logins`` run against it too.)"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

from phonehome_jump.errors import HostKeyError, SessionDeadError
from phonehome_jump.inventory import Inventory
from phonehome_jump.manager import SessionManager

from .waits import until

SCRIPT = Path(sys.executable).parent / "phonehome-jump"
SEQ = "".join(f"{i}\n" for i in range(1, 100_001))
KEEPALIVE, COUNT = 1, 2


def inventory_file(lab, tmp_path: Path, known_hosts: Path | None = None) -> Path:
    """The lab's inventory with the dropbear target, and a quick liveness probe."""
    text = lab.inventory.read_text()
    assert "  keepalive: 15\n" in text
    text = text.replace("  keepalive: 15\n", f"  keepalive: {KEEPALIVE}\n  keepalive_count: {COUNT}\n")
    if known_hosts is not None:
        text = text.replace(f"known_hosts: {lab.known_hosts}", f"known_hosts: {known_hosts}")
    path = tmp_path / "inventory.yaml"
    path.write_text(text + lab.dropbear_host_yaml())
    return path


def on_dropbear(lab, command: str) -> str:
    """``command`` as root inside dropbear's namespace: a view that does not go through SSH."""
    return subprocess.run(["ip", "netns", "exec", lab.nodes["dropbear1"].ns, "bash", "-c", command],
                          capture_output=True, text=True, check=True).stdout


def test_a_session_on_dropbear_keeps_its_state_and_frames_every_output_exactly(lab, tmp_path):
    log = lab.state / "sshd_dropbear1.log"
    start = log.stat().st_size
    with SessionManager(Inventory.load(inventory_file(lab, tmp_path)), cap=2_000_000) as m:
        sid = m.open("lab-dropbear").id
        r = m.command(sid, "cd /tmp && export PHJ_X=42")
        assert (r.exit_status, r.cwd, r.output) == (0, "/tmp", "")
        assert m.command(sid, 'echo "$PHJ_X $(pwd)"').output == "42 /tmp\n"
        assert m.command(sid, "false").exit_status == 1
        r = m.command(sid, "seq 1 100000", wait=60)
        assert (r.exit_status, r.output == SEQ) == (0, True)
        # dropbear sets the pty modes asked for: no echo, no CR/LF translation, no line editing
        assert {"-echo", "-onlcr", "-icanon"} <= set(m.command(sid, "stty -a").output.split())
        asked = m.command(sid, "read -p 'Name: ' n; echo \"got $n\"", wait=1)
        assert asked.running and asked.output == "Name: "
        m.send(sid, "bob")
        assert m.read(sid, wait=10).output == "got bob\n"
        # a second session is a channel on the same login, with a shell of its own
        other = m.open("lab-dropbear").id
        assert m.session(other).login is m.session(sid).login
        assert m.command(other, 'echo "${PHJ_X:-unset} $(pwd)"').output == "unset /home/phjkey\n"
        assert m.command(other, "exit 3").exit_status == 3
        with pytest.raises(SessionDeadError, match="the shell exited with status 3"):
            m.command(other, "echo gone")
        assert m.command(sid, "echo still").output == "still\n"
    with log.open() as fh:
        fh.seek(start)
        assert "Pubkey auth succeeded for 'phjkey'" in fh.read()


def test_run_on_dropbear_is_like_ssh(lab, tmp_path):
    env = dict(os.environ, PHONEHOME_JUMP_INVENTORY=str(inventory_file(lab, tmp_path)))
    proc = subprocess.run([str(SCRIPT), "run", "lab-dropbear", "--", "cat; echo err >&2; exit 4"],
                          input=b"in\n", capture_output=True, env=env, timeout=120)
    assert (proc.returncode, proc.stdout, proc.stderr) == (4, b"in\n", b"err\n")


def test_files_to_and_from_dropbear(lab, tmp_path):
    src = tmp_path / "up.bin"
    src.write_bytes(os.urandom(3 * 1024 * 1024 + 7))
    digest = hashlib.sha256(src.read_bytes()).hexdigest()
    remote = "/tmp/phj-dropbear-copy.bin"
    with SessionManager(Inventory.load(inventory_file(lab, tmp_path))) as m:
        up = m.upload("lab-dropbear", str(src), remote)
        assert (up.bytes, up.sha256, up.protocol) == (src.stat().st_size, digest, "sftp")
        assert on_dropbear(lab, f"sha256sum {remote}").split()[0] == digest
        back = tmp_path / "back.bin"
        m.download("lab-dropbear", remote, str(back))
        assert hashlib.sha256(back.read_bytes()).hexdigest() == digest
    on_dropbear(lab, f"rm -f {remote}")


def test_dropbear_with_another_host_key_is_refused(lab, tmp_path):
    # the known_hosts line for dropbear's address carries another server's key
    wrong = lab.host_key_line("target1").replace(lab.addr("target1"), lab.addr("dropbear1"), 1)
    known = tmp_path / "known_hosts"
    known.write_text(lab.known_hosts.read_text().replace(lab.host_key_line("dropbear1"), wrong))
    with SessionManager(Inventory.load(inventory_file(lab, tmp_path, known))) as m:
        with pytest.raises(HostKeyError) as err:
            m.open("lab-dropbear")
        assert "lab-dropbear" in str(err.value)
        assert m.list() == []


def test_a_silent_drop_of_dropbear_is_noticed_and_named(lab, tmp_path):
    with SessionManager(Inventory.load(inventory_file(lab, tmp_path))) as m:
        sid = m.open("lab-dropbear").id
        other = m.open("lab-target1").id
        assert m.command(sid, "echo up").output == "up\n"
        lab.drop("dropbear1")
        try:
            info = until(lambda: next((i for i in m.list() if i.id == sid and i.state == "dead"), None),
                         timeout=KEEPALIVE * COUNT + 15, what="the drop to be noticed")
            assert "target 'lab-dropbear'" in info.dead_reason
            assert "stopped answering" in info.dead_reason
            with pytest.raises(SessionDeadError, match="stopped answering"):
                m.command(sid, "echo lost")
            assert m.command(other, "echo fine").output == "fine\n"
        finally:
            lab.undrop("dropbear1")
