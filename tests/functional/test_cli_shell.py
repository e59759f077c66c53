"""`phonehome-jump shell` on a real pseudo-terminal, as a person would use it (real sshd lab)."""

from __future__ import annotations

import fcntl
import json
import os
import pty
import re
import select
import signal
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path

import pytest

SCRIPT = Path(sys.executable).parent / "phonehome-jump"
PROMPT = r"phj\$ $"
ESCAPES = re.compile(r"\x1b(?:\[[0-9;?>=]*[ -/]*[@-~]|\][^\x07\x1b]*(?:\x07|\x1b\\)|[()][A-Z0-9]|[=>78DEHM])")


def _controlling_tty() -> None:
    os.setsid()
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


class Term:
    """The console script on a pty that is its controlling terminal (so resizes signal it)."""

    def __init__(self, lab, host: str, *, inventory: Path | None = None, cols: int = 80,
                 rows: int = 24, env: dict[str, str] | None = None) -> None:
        self.master, self.slave = pty.openpty()
        self.resize(cols, rows)
        self.before = termios.tcgetattr(self.slave)
        env = dict(os.environ, PHONEHOME_JUMP_INVENTORY=str(inventory or lab.inventory),
                   TERM="xterm", **(env or {}))
        self.proc = subprocess.Popen([str(SCRIPT), "shell", host], stdin=self.slave,
                                     stdout=self.slave, stderr=subprocess.PIPE, env=env,
                                     preexec_fn=_controlling_tty)
        self.seen = ""
        self.mark = 0

    def resize(self, cols: int, rows: int) -> None:
        fcntl.ioctl(self.master, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))

    @property
    def text(self) -> str:
        """What arrived, without escape sequences and with plain newlines."""
        plain = ESCAPES.sub("", self.seen)
        return re.sub(r"\r+\n", "\n", plain).replace("\r", "")

    def expect(self, pattern: str, timeout: float = 30) -> str:
        """Wait for ``pattern`` in :attr:`text` since the last expect; return that text."""
        deadline = time.monotonic() + timeout
        while True:
            text = self.text
            m = re.search(pattern, text[self.mark:])
            if m:
                found = text[self.mark:self.mark + m.end()]
                self.mark += m.end()
                return found
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"no {pattern!r} in {text[self.mark:][-2000:]!r}")
            ready, _, _ = select.select([self.master], [], [], remaining)
            if ready:
                try:
                    self.seen += os.read(self.master, 65536).decode("utf-8", "replace")
                except OSError:        # the program ended and closed the terminal
                    raise AssertionError(f"no {pattern!r}; ended: {self.seen[self.mark:]!r}")

    def type(self, text: str) -> None:
        os.write(self.master, text.encode())

    def start(self) -> None:
        """Wait for the remote shell, then give it a known prompt."""
        self.expect(r"[$#] $")
        self.type("PS1='phj\\$ '\r")
        self.expect(PROMPT)

    def wait(self, timeout: float = 30) -> tuple[int, str]:
        code = self.proc.wait(timeout=timeout)
        return code, self.proc.stderr.read().decode()

    def restored(self) -> bool:
        return termios.tcgetattr(self.slave) == self.before

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.proc.stderr.close()
        os.close(self.master)
        os.close(self.slave)


@pytest.fixture
def term(lab):
    made: list[Term] = []

    def make(host: str = "lab-target1", **kw) -> Term:
        t = Term(lab, host, **kw)
        made.append(t)
        return t
    yield make
    for t in made:
        t.close()


def test_exit_returns_the_remote_status_and_restores_the_terminal(term):
    t = term()
    t.start()
    assert not t.restored()                       # raw while connected
    t.type("exit 3\r")
    code, err = t.wait()
    assert code == 3 and "Connected to lab-target1 via jump1" in err
    assert "Traceback" not in err and "dead" not in err
    assert t.restored()


def test_arrow_key_history_and_line_editing_are_the_remotes(term):
    t = term()
    t.start()
    t.type("echo phj-hist-$((40+2))\r")
    t.expect(r"\nphj-hist-42\n" + PROMPT)
    t.type("\x1b[A\r")                            # Up: the remote's own history
    t.expect(r"echo phj-hist-\$\(\(40\+2\)\)\nphj-hist-42\n" + PROMPT)
    t.type("echo abX\x7fc\x1b[D\x1b[Dz\r")        # Backspace, Left arrows, insert
    t.expect(r"\nazbc\n" + PROMPT)


def test_full_screen_programs(term):
    t = term()
    t.start()
    t.type("vi /tmp/phj-vi-test\r")
    t.expect(r"phj-vi-test")
    t.type("\x1b:q!\r")
    t.expect(PROMPT)
    assert "\x1b[?1049h" in t.seen and "\x1b[?1049l" in t.seen   # vi had the alternate screen
    t.type("top\r")
    t.expect(r"load average")
    t.type("q")
    t.expect(PROMPT)
    t.type("seq 1 100 | less\r")
    t.expect(r"\n:|\(END\)")                   # less pages; no "Press RETURN"
    t.type("q")
    t.expect(PROMPT)
    assert "Press RETURN" not in t.seen


def test_ctrl_z_then_fg_and_ctrl_c(term):
    t = term()
    t.start()
    # Ctrl-Z before the job has started would be moot: it says "going" once it runs (the
    # typed line's echo shows go""ing), and stops on Ctrl-Z even before its exec
    t.type("sh -c 'echo go\"\"ing; exec sleep 30'; echo not-reached\r")
    t.expect(r"\ngoing")
    t.type("\x1a")
    t.expect(r"Stopped")
    t.expect(PROMPT)
    t.type("fg\r")
    t.expect(r"sleep 30")
    t.type("\x03")                                # Ctrl-C reaches the remote command
    t.expect(PROMPT)
    t.type("echo $?\r")
    t.expect(r"\n130\n" + PROMPT)


def test_resize_reaches_the_remote(term):
    t = term(cols=90, rows=30)
    t.start()
    t.type("stty size\r")
    t.expect(r"\n30 90\n" + PROMPT)
    t.resize(120, 40)
    t.proc.send_signal(signal.SIGWINCH)          # as the kernel does for its foreground group
    deadline = time.monotonic() + 20
    while True:                                  # the resize is asynchronous: poll
        t.type("stty size\r")
        out = t.expect(PROMPT)
        if "40 120" in out:
            break
        assert time.monotonic() < deadline, out


def test_escape_sequence_leaves(term):
    t = term()
    t.start()
    t.type("echo a~b\r")                         # ~ not at the start of a line: typed
    t.expect(r"\na~b\n" + PROMPT)
    t.type("~?")
    t.expect(r"~\.\s+leave")
    t.type("~.")
    code, err = t.wait()
    assert code == 255 and "Connection to lab-target1 closed" in err
    assert t.restored()


def test_terminal_restored_when_the_remote_dies(term):
    t = term()
    t.start()
    t.type("kill -9 $$\r")                       # the remote shell dies: sshd sends exit-signal
    code, err = t.wait()
    assert code == 137 and "killed by signal KILL" in err and "Traceback" not in err, err
    assert t.restored()


def test_terminal_restored_on_sigterm(term):
    t = term()
    t.start()
    t.type("sleep 30\r")
    t.proc.terminate()
    code, err = t.wait()
    assert code == 143 and "Traceback" not in err, err
    assert t.restored()


# ----------------------------------------------------------------------------- policy, audit, secrets

def policy_inventory(lab, tmp_path: Path) -> tuple[Path, Path, Path]:
    audit, transcripts = tmp_path / "audit.jsonl", tmp_path / "transcripts"
    text = lab.inventory.read_text()
    assert "  keepalive: 15\n" in text
    text = text.replace("  keepalive: 15\n", "  keepalive: 15\n  policy: {deny: ['\\bphj-denied\\b'], "
                        "confirm: ['\\bphj-confirm\\b']}\n")
    text += f"audit: {{path: {audit}, transcripts: {transcripts}}}\n"
    inv = tmp_path / "inv.yaml"
    inv.write_text(text)
    return inv, audit, transcripts


def records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def everything(audit: Path, transcripts: Path) -> str:
    return audit.read_text() + "".join(p.read_text() for p in transcripts.glob("*"))


def test_policy_and_audit_see_the_line_the_remote_edited(lab, term, tmp_path):
    inv, audit, transcripts = policy_inventory(lab, tmp_path)
    t = term(inventory=inv)
    t.start()
    t.type("echo ok-1\r")
    t.expect(r"\nok-1\n" + PROMPT)
    t.type("echo phj-den\t")                     # no completion: typed, then edited remotely
    t.type("\x7f\x7f\x7f\x7f\x7f\x7f\x7fphj-denied\r")
    t.expect(r"not sent: .*phj-denied")
    t.expect(PROMPT)
    t.type("echo $((6*7))\r")
    t.expect(r"\n42\n" + PROMPT)
    t.type("echo phj-confirm-no\r")              # a confirm rule: the person decides
    t.expect(r"Send it\? \[y/N\] $")
    t.type("n")
    t.expect(r"not sent: .*phj-confirm")
    t.expect(PROMPT)
    t.type("echo phj-confirm yes\r")
    t.expect(r"Send it\? \[y/N\] $")
    t.type("y")
    t.expect(r"\nphj-confirm yes\n" + PROMPT)
    t.type("\x1b[A\x1b[A\x1b[A\r")                 # history (the refused lines are not in it)
    t.expect(r"\nok-1\n" + PROMPT)
    t.type("exit\r")
    assert t.wait()[0] == 0
    recs = records(audit)
    cmds = [r["command"] for r in recs if r["event"] == "command"]
    assert cmds.count("echo ok-1") == 2 and "echo $((6*7))" in cmds
    assert not any("phj-denied" in c for c in cmds)
    refused = [r for r in recs if r["event"] == "policy_refusal"]
    assert refused and "phj-denied" in refused[0]["command"]
    assert "$ echo ok-1" in "".join(p.read_text() for p in transcripts.glob("*"))
    assert "echo phj-confirm yes" in cmds and "echo phj-confirm-no" not in cmds
    confirmed = [r for r in recs if r["event"] == "policy_confirmed"]
    assert [r["command"] for r in confirmed] == ["echo phj-confirm yes"]


def test_sudo_passwords_never_reach_audit_or_transcripts(lab, term, tmp_path):
    password = lab.env["PHJ_LAB_SUDO_PASSWORD"]
    inv, audit, transcripts = policy_inventory(lab, tmp_path)
    t = term("lab-sudo", inventory=inv)
    t.start()
    # a quiet sudo'd command, then a normal command
    t.type("sudo -k; sudo true\r")
    t.expect(r"\[sudo\] password for phjsudo: $")
    t.type(password + "\r")
    t.expect(PROMPT)
    t.type("echo after-$((1+1))\r")
    t.expect(r"\nafter-2\n" + PROMPT)
    # [Y/n] after sudo: the answer is an answer, not a secret
    t.type("sudo -k; sudo sh -c 'printf \"Continue? [Y/n] \"; read a; echo got-$a-Y'\r")
    t.expect(r"\[sudo\] password for phjsudo: $")
    t.type(password + "\r")
    t.expect(r"Continue\? \[Y/n\] $")
    t.type("Y\r")
    t.expect(r"got-Y-Y\n" + PROMPT)             # no Y starred out
    # a custom sudo prompt and openssl's pass phrase: not echoed, not recorded
    t.type("sudo -k; sudo -p 'Code for %u> ' true\r")
    t.expect(r"Code for phjsudo> $")
    t.type(password + "\r")
    t.expect(PROMPT)
    t.type("rm -f /tmp/phj-k.pem; openssl genpkey -algorithm ed25519 -aes-256-cbc "
           "-out /tmp/phj-k.pem\r")
    t.expect(r"Enter PEM pass phrase:$")
    t.type("canary-PEM-" + password + "\r")
    t.expect(r"Verifying - Enter PEM pass phrase:$")
    t.type("canary-PEM-" + password + "\r")
    t.expect(PROMPT)
    # a password typed ahead, before sudo asks (sudo discards it, then asks). The command
    # waits for a file (the lab's hosts share this machine's /tmp) that is created only once
    # the typed-ahead line has reached the remote terminal (its echo, starred, is back).
    go = Path("/tmp") / f"phj-typeahead-{os.getpid()}-{time.monotonic_ns()}"
    t.type(f"until [ -e {go} ]; do sleep 0.05; done; sudo -k; sudo whoami\r")
    t.expect(r"sudo whoami\n")
    t.type(password + "\r")
    t.expect(r"\*{%d}" % len(password))
    go.touch()
    try:
        t.expect(r"\[sudo\] password for phjsudo: $", timeout=30)
    finally:
        go.unlink()
    t.type(password + "\r")
    # sudo may still take the typed-ahead line as its answer (it turns echo off without
    # flushing input: a race inside sudo); the line typed at its prompt then reaches the shell
    # as a secret and is dropped, never run (an empty line and one more prompt); either way
    # the audit and transcripts checked below must not hold it
    t.expect(r"root\n")
    t.expect(PROMPT)
    t.type("exit\r")
    assert t.wait()[0] == 0
    text = everything(audit, transcripts)
    assert password not in text and "canary-PEM" not in text
    recs = records(audit)
    cmds = [r["command"] for r in recs if r["event"] == "command"]
    assert "echo after-$((1+1))" in cmds
    sends = [r["command"] for r in recs if r["event"] == "send"]
    assert "Y" in sends and sends.count("********") >= 5


# ----------------------------------------------------------------------------- workflow progress

def test_workflow_progress_on_a_real_terminal(lab, tmp_path):
    import pyte

    wf = tmp_path / "wf.yaml"
    wf.write_text("name: progress\ntargets: {group: lab}\nconcurrency: 2\nsteps:\n"
                  "  - {name: 'a step name long enough to be wider than the eighty columns of "
                  "this terminal, which must be cut, not wrapped', run: sleep 0.5}\n"
                  "  - run: 'false'\n    expect_exit: any\n")
    master, slave = pty.openpty()
    fcntl.ioctl(master, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 80, 0, 0))
    env = dict(os.environ, PHONEHOME_JUMP_INVENTORY=str(lab.inventory), TERM="xterm")
    proc = subprocess.Popen([str(SCRIPT), "workflow", "run", str(wf)], stdin=slave,
                            stdout=slave, stderr=slave, env=env, preexec_fn=_controlling_tty)
    os.close(slave)                           # so the end of the program ends our reads
    screen = pyte.Screen(80, 24)
    stream = pyte.Stream(screen)
    data = b""
    try:
        while True:
            ready, _, _ = select.select([master], [], [], 60)
            assert ready, "no output for 60s"
            try:
                chunk = os.read(master, 65536)
            except OSError:
                break
            if not chunk:
                break
            data += chunk
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(master)
    stream.feed(data.decode("utf-8", "replace"))
    shown = [line.rstrip() for line in screen.display if line.strip()]
    assert shown[0].startswith("3 hosts: 3 passed, 0 failed, 0 running, 0 waiting")
    assert shown[-1].startswith("workflow 'progress': 3/3 hosts passed")
    assert len(shown) == 2                    # nothing stale between them
