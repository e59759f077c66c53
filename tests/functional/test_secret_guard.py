"""The secret-send guard decides from fresh output: no secret is ever typed at a shell prompt.

Each bypass below used to type the "secret" at the prompt, where it ran as a command. The
secrets here are commands that would leave a marker file if a shell ever ran them.
"""

from __future__ import annotations

import secrets
import time

import pytest

from phonehome_jump.errors import SessionError
from phonehome_jump.inventory import Inventory
from phonehome_jump.manager import SessionManager


def wait_for(check, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.02)


@pytest.fixture
def m(lab):
    with SessionManager(Inventory.load(lab.inventory)) as manager:
        yield manager


def leak(token: str) -> str:
    """A 'secret' that, if a shell ever ran it, would leave /tmp/phj-leak-<token>."""
    return f"touch /tmp/phj-leak-{token}"


def assert_not_run(m: SessionManager, sid: str, token: str) -> None:
    # a command after the refusal: the shell has read everything typed before it
    r = m.command(sid, f"test -e /tmp/phj-leak-{token} && echo LEAKED; echo checked", wait=10)
    assert r.output == "checked\n", r.output


def refused(m: SessionManager, sid: str, **kwargs) -> None:
    with pytest.raises(SessionError, match="the secret was not typed"):
        m.send(sid, **kwargs)


def test_after_command_wait_0_that_has_since_ended(m):
    token = secrets.token_hex(6)
    sid = m.open("lab-target1").id
    other = m.open("lab-target1").id
    r = m.command(sid, f"true; touch /tmp/phj-ended-{token}", wait=0)
    assert r.running or r.exit_status == 0
    # the command has ended on the target; this session has not read that yet
    wait_for(lambda: m.command(other, f"test -e /tmp/phj-ended-{token}").exit_status == 0)
    refused(m, sid, text=leak(token), secret=True)
    # its prompt may still be on its way through the hops (the file is made before it)
    assert not m.read(sid, wait=10).running
    assert_not_run(m, sid, token)


def test_after_an_idle_ctrl_c(m):
    token = secrets.token_hex(6)
    sid = m.open("lab-target1").id
    m.send(sid, control="c", newline=False)
    refused(m, sid, text=leak(token), secret=True)          # at once: the prompt may not be back
    m.read(sid, wait=5)
    refused(m, sid, text=leak(token), secret=True)          # and after it is
    assert_not_run(m, sid, token)


def test_after_an_empty_send(m):
    token = secrets.token_hex(6)
    sid = m.open("lab-target1").id
    m.send(sid, "")
    refused(m, sid, text=leak(token), secret=True)
    refused(m, sid, sudo_password=True)
    assert not m.read(sid, wait=5).running                 # the prompt after the Enter
    assert_not_run(m, sid, token)


def test_while_a_command_that_reads_nothing_runs(m):
    # the text would wait in the terminal and reach the shell when `sleep` ends
    token = secrets.token_hex(6)
    sid = m.open("lab-target1").id
    r = m.command(sid, "sleep 1", wait=0)
    assert r.running
    refused(m, sid, text=leak(token), secret=True)
    assert m.read(sid, wait=10).exit_status == 0
    assert_not_run(m, sid, token)


def test_a_custom_sudo_prompt_takes_the_answer_once(m, lab):
    sid = m.open("lab-sudo").id
    r = m.command(sid, "sudo -k; sudo -p 'Say the magic word: ' id -u", wait=10,
                  until="word: $")
    assert r.running and r.output.endswith("Say the magic word: ")
    m.send(sid, sudo_password=True)
    # answered: the prompt is still the last output until sudo prints its newline, yet it
    # asks for nothing any more; a second secret is refused
    refused(m, sid, text="not-a-password", secret=True)
    r = m.read(sid, wait=10)
    assert (r.running, r.exit_status, r.output.splitlines()[-1]) == (False, 0, "0")
    assert lab.env["PHJ_LAB_SUDO_PASSWORD"] not in r.output
