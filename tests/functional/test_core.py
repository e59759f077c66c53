"""The core against real OpenSSH: inventory → chain → session → manager, through two jumps."""

from __future__ import annotations

import re
import secrets
import subprocess
import time
from pathlib import Path

import pytest

from phonehome_jump.errors import AuthError, ConnectError, HostKeyError, SessionDeadError, SessionError
from phonehome_jump.inventory import Inventory
from phonehome_jump.manager import SessionManager

from .waits import until


def variant(lab, tmp_path: Path, known_hosts: str | None = None, extra: str = "",
            replace: tuple[str, str] = ("", ""), replace2: tuple[str, str] = ("", "")) -> Inventory:
    """The lab inventory with another known_hosts file and/or extra YAML appended."""
    text = lab.inventory.read_text()
    if known_hosts is not None:
        kh = tmp_path / "known_hosts"
        kh.write_text(known_hosts)
        text = text.replace(f"known_hosts: {lab.known_hosts}", f"known_hosts: {kh}")
    for old, new in (replace, replace2):
        if old:
            assert old in text, old
            text = text.replace(old, new)
    path = tmp_path / "inv.yaml"
    path.write_text(text + extra)
    return Inventory.load(path)


def kh_without(lab, name: str) -> str:
    return "".join(line + "\n" for line in lab.known_hosts.read_text().splitlines()
                   if not line.startswith(lab.addr(name) + " "))


# -- reach ------------------------------------------------------------------------------

def test_target_is_reachable_only_through_both_jumps(lab):
    assert lab.reachable_directly("jump1")
    assert not lab.reachable_directly("jump2")
    assert not lab.reachable_directly("target1")
    # and jump1 cannot reach the targets either: only jump2 can
    probe = subprocess.run(["ip", "netns", "exec", lab.nodes["jump1"].ns, "bash", "-c",
                            f"timeout 1 bash -c '</dev/tcp/{lab.addr('target1')}/22'"],
                           capture_output=True)
    assert probe.returncode != 0


@pytest.mark.parametrize("host,hops", [("lab-jump1", 0), ("lab-jump2", 1), ("lab-target1", 2)])
def test_zero_one_two_hops(manager, host, hops):
    info = manager.open(host)
    assert len(info.chain) == hops
    r = manager.command(info.id, "echo $SSH_CONNECTION")
    assert r.exit_status == 0 and r.output.strip()
    expected_addr = manager.inventory.target(host).endpoint.host
    assert r.output.split()[2] == expected_addr


# -- framing and state ------------------------------------------------------------------

def test_state_persists_and_prompt_follows_cd(manager):
    sid = manager.open("lab-target1").id
    r = manager.command(sid, "cd /tmp")
    assert (r.output, r.exit_status, r.cwd) == ("", 0, "/tmp")
    r = manager.command(sid, "pwd", wait=5)
    assert (r.output, r.cwd) == ("/tmp\n", "/tmp")
    manager.command(sid, "export PHJ_TEST=persisted")
    assert manager.command(sid, "echo $PHJ_TEST").output == "persisted\n"
    assert manager.command(sid, "sh -c 'exit 7'").exit_status == 7


def test_the_pty_is_quiet_from_its_request_and_a_profile_that_resets_it_is_caught(lab, tmp_path):
    """The pty is requested without echo, CR/LF translation and line editing, so no `stty`
    runs per session; a login whose profile runs `stty sane` (as a server that ignores the
    requested modes would leave it) echoes the setup line, and gets the `stty` then."""
    path = tmp_path / "inv.yaml"
    path.write_text(lab.inventory.read_text() + lab.sane_host_yaml())
    typed = "history | grep -c '^ *[0-9]* *stty -echo -onlcr -icanon'"   # not its own line
    with SessionManager(Inventory.load(path)) as m:
        for host, stty_typed in (("lab-target1", "0\n"), ("lab-sane", "1\n")):
            sid = m.open(host).id
            flags = m.command(sid, "stty -a").output.split()
            assert {"-echo", "-icanon", "-onlcr"} <= set(flags), (host, flags)
            assert m.command(sid, typed).output == stty_typed, host
            r = m.command(sid, "printf 'a\\nb\\n'; echo $USER")
            assert (r.output, r.exit_status) == (f"a\nb\n{m.session(sid).target.endpoint.username}\n", 0)


@pytest.mark.parametrize("tail", ["$", "#", ">", "$ ", "# "])
def test_output_ending_in_prompt_characters(manager, tail):
    sid = manager.open("lab-target1").id
    r = manager.command(sid, f"printf 'out{tail}'", wait=5)
    assert (r.output, r.running) == (f"out{tail}", False)
    r = manager.command(sid, f"printf 'line\\nuser@host:~{tail}\\n'", wait=5)
    assert r.output == f"line\nuser@host:~{tail}\n"


def test_five_thousand_lines_complete_and_paged(manager):
    sid = manager.open("lab-target1").id
    expected = "".join(f"{i}\n" for i in range(1, 5001))
    r = manager.command(sid, "seq 1 5000")
    assert r.exit_status == 0 and r.total == len(expected) and r.truncated
    assert r.output.startswith("1\n2\n") and r.output.endswith("4999\n5000\n")
    # page from the first omitted character to the end: the whole output comes back
    assert r.omitted is not None
    pages, offset = [], r.omitted[0]
    while offset < r.total:
        page = manager.read(sid, offset=offset)
        pages.append(page.output)
        offset = page.next_offset
    head = r.output.split("\n[…", 1)[0]
    assert head + "".join(pages) == expected


def test_command_longer_than_600_characters(manager):
    sid = manager.open("lab-target1").id
    word = "x" * 5000
    r = manager.command(sid, f"echo {word} | wc -c")
    assert r.output == "5001\n"
    r = manager.command(sid, "echo " + " ".join(f"a{i}" for i in range(300)))
    assert r.output == " ".join(f"a{i}" for i in range(300)) + "\n"


def test_multi_line_command_is_one_command(manager):
    sid = manager.open("lab-target1").id
    r = manager.command(sid, "cd /var\npwd\nsh -c 'exit 4'")
    assert (r.output, r.exit_status, r.cwd) == ("/var\n", 4, "/var")


def test_non_utf8_bytes_are_shown_not_lost(manager):
    sid = manager.open("lab-target1").id
    r = manager.command(sid, r"printf 'caf\xc3\xa9 \xff\xfe end\n'")
    assert r.output == "café \\xff\\xfe end\n"


# -- interactive ------------------------------------------------------------------------

def test_read_prompt_answered_with_send(manager):
    sid = manager.open("lab-target1").id
    r = manager.command(sid, "read -p 'Name? ' n; echo hello $n", wait=5, until=r"Name\? $")
    assert (r.running, r.output) == (True, "Name? ")
    manager.send(sid, "bob")
    r = manager.read(sid, wait=5)
    assert (r.running, r.output, r.exit_status) == (False, "hello bob\n", 0)


def test_until_waits_for_a_second_identical_prompt(manager):
    """Output already returned cannot match `until` again: the second 'pw: ' is waited for."""
    sid = manager.open("lab-target1").id
    r = manager.command(sid, "read -p 'pw: ' a; echo between; sleep 0.5; read -p 'pw: ' b; "
                             "echo $a-$b", wait=5, until="pw: ")
    assert (r.running, r.output) == (True, "pw: ")
    manager.send(sid, "one")
    r = manager.read(sid, wait=5, until="pw: ")
    assert (r.running, r.output) == (True, "between\npw: ")
    manager.send(sid, "two")
    r = manager.read(sid, wait=5)
    assert (r.running, r.output) == (False, "one-two\n")


def test_sudo_password_prompt_is_answered_and_never_echoed(manager, lab):
    sid = manager.open("lab-sudo").id
    r = manager.command(sid, "sudo -k; sudo id -un", wait=10)
    # the wait ends at the prompt (a pattern), well before the 10 s
    assert r.running and r.awaiting_input and r.duration < 5
    assert r.output.endswith("[sudo] password for phjsudo: ")
    password = lab.env["PHJ_LAB_SUDO_PASSWORD"]
    manager.send(sid, password, secret=True)
    r = manager.read(sid, wait=10)
    assert r.exit_status == 0 and r.output.strip() == "root"
    assert password not in r.output
    # anything printing the secret later is masked
    r = manager.command(sid, f"echo {password}")
    assert password not in r.output and "********" in r.output
    assert password not in (r.command or "")


def test_ctrl_c_interrupts_a_running_command(manager):
    sid = manager.open("lab-target1").id
    r = manager.command(sid, "echo started; sleep 30; echo not-reached", wait=0)
    # Ctrl-C once it runs (a SIGINT while bash still reads the line can be lost: README)
    until(lambda: "started" in r.output + manager.read(sid).output, what="the command to run")
    manager.send(sid, control="ctrl-c", newline=False)
    r = manager.read(sid, wait=5)
    assert not r.running and r.exit_status == 130 and "not-reached" not in r.output
    assert manager.command(sid, "echo alive").output == "alive\n"


def test_long_command_returns_running_then_completes(manager):
    sid = manager.open("lab-target1").id
    r = manager.command(sid, "echo start; sleep 1.5; echo done", wait=0.5)
    assert (r.running, r.output, r.exit_status) == (True, "start\n", None)
    with pytest.raises(SessionError, match="still running"):
        manager.command(sid, "echo overlap")
    r = manager.read(sid, wait=5)
    assert (r.running, r.output, r.exit_status) == (False, "done\n", 0)


# -- host keys ---------------------------------------------------------------------------

@pytest.mark.parametrize("node,host", [("jump1", "lab-target1"), ("jump2", "lab-target1"),
                                       ("target1", "lab-target1")])
def test_unknown_host_key_refused_at_each_hop(lab, tmp_path, node, host):
    inv = variant(lab, tmp_path, known_hosts=kh_without(lab, node))
    with SessionManager(inv) as m, pytest.raises(HostKeyError) as err:
        m.open(host)
    name = node if node != "target1" else "lab-target1"
    assert err.value.hop == name
    assert re.search(r"SHA256:[A-Za-z0-9+/]{43}", str(err.value))
    assert "known_hosts" in str(err.value) and "accept-new" in str(err.value)


@pytest.mark.parametrize("node", ["jump1", "jump2", "target1"])
def test_changed_host_key_refused_at_each_hop_even_with_accept_new(lab, tmp_path, node):
    other = lab.host_key_line("target3").split(" ", 1)[1]          # someone else's key
    lines = kh_without(lab, node) + f"{lab.addr(node)} {other}\n"
    inv = variant(lab, tmp_path, known_hosts=lines,
                  replace=("host_key_policy: strict", "host_key_policy: accept-new"))
    with SessionManager(inv) as m, pytest.raises(HostKeyError) as err:
        m.open("lab-target1")
    assert "CHANGED" in str(err.value)
    assert err.value.hop == (node if node != "target1" else "lab-target1")


def test_accept_new_records_unknown_keys_then_verifies_them(lab, tmp_path):
    kh = tmp_path / "new" / "known_hosts"           # does not exist yet
    inv = variant(lab, tmp_path, replace=("host_key_policy: strict", "host_key_policy: accept-new"),
                  replace2=(f"known_hosts: {lab.known_hosts}", f"known_hosts: {kh}"))
    with SessionManager(inv) as m:
        sid = m.open("lab-target1").id
        assert m.command(sid, "echo ok").output == "ok\n"
    recorded = kh.read_text()
    for node in ("jump1", "jump2", "target1"):
        assert lab.host_key_line(node) in recorded
    assert kh.stat().st_mode & 0o077 == 0
    # the second time the recorded keys are verified, and nothing is added
    with SessionManager(inv) as m:
        m.open("lab-target1")
    assert kh.read_text() == recorded


# -- failures naming the hop -------------------------------------------------------------

def test_wrong_password_names_the_hop(lab, tmp_path, monkeypatch):
    monkeypatch.setenv("PHJ_WRONG", "not-the-password")
    inv = variant(lab, tmp_path, replace=(
        "jump2: {host: %s, credentials: lab-key," % lab.addr("jump2"),
        "jump2: {host: %s, credentials: wrong," % lab.addr("jump2")),
        replace2=("credentials:\n", "credentials:\n  wrong: {username: phjpass, "
                  "password: \"env:PHJ_WRONG\", use_agent: false}\n"))
    with SessionManager(inv) as m, pytest.raises(AuthError) as err:
        m.open("lab-target1")
    assert err.value.hop == "jump2" and "phjpass" in str(err.value)
    assert "not-the-password" not in str(err.value)


def test_only_the_inventorys_key_is_offered_to_the_target(lab, tmp_path, monkeypatch):
    # This machine's own ~/.ssh/id_ed25519 would be accepted by the target; the inventory
    # names another key, which is not. Like `IdentitiesOnly yes`: refused, not let in.
    import shutil
    import subprocess

    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True)
    shutil.copy(lab.key_file, home / ".ssh" / "id_ed25519")
    other = tmp_path / "other_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other)], check=True)
    monkeypatch.setenv("HOME", str(home))
    inv = variant(lab, tmp_path, extra="  other-key-host: {host: %s, via: jump2, credentials: "
                                       "other-key}\n" % lab.addr("target1"),
                  replace=("credentials:\n", "credentials:\n  other-key: {username: phjkey, "
                           "key_file: %s, use_agent: false}\n" % other))
    with SessionManager(inv) as m, pytest.raises(AuthError) as err:
        m.open("other-key-host")
    assert err.value.hop == "other-key-host" and str(other) in str(err.value)


def test_password_auth_to_target(manager):
    sid = manager.open("lab-password").id
    assert manager.command(sid, "id -un").output == "phjpass\n"


def test_refused_port_names_the_hop(lab, tmp_path):
    inv = variant(lab, tmp_path, extra="  closed-port: {host: %s, port: 2222, via: jump2, "
                                       "credentials: lab-key}\n" % lab.addr("target2"))
    with SessionManager(inv) as m, pytest.raises(ConnectError) as err:
        m.open("closed-port")
    assert err.value.hop == "closed-port" and err.value.reason == "refused"
    assert "jump2" in str(err.value)
    assert f"nothing listens on {lab.addr('target2')}:2222" in str(err.value)
    assert "AllowTcpForwarding" not in str(err.value)


# -- lifecycle ---------------------------------------------------------------------------

def test_hops_are_shared_and_released(manager):
    a = manager.open("lab-target1")
    b = manager.open("lab-target2")
    stats = {s["hop"]: s["users"] for s in manager.pool.stats()}
    assert stats == {"jump1": 2, "jump2": 2}
    manager.close(a.id)
    assert {s["hop"]: s["users"] for s in manager.pool.stats()} == {"jump1": 1, "jump2": 1}
    manager.close(b.id)
    assert manager.pool.stats() == []


def test_idle_timeout_closes_sessions(lab_inventory):
    with SessionManager(lab_inventory, idle_timeout=0.3) as m:
        sid = m.open("lab-target1").id
        time.sleep(0.5)
        assert m.reap() == [sid]
        assert m.list() == [] and m.pool.stats() == []


def test_limits_per_host(lab_inventory):
    with SessionManager(lab_inventory, max_per_host=1) as m:
        m.open("lab-target1")
        with pytest.raises(SessionError, match="limit is 1"):
            m.open("lab-target1")
        m.open("lab-target2")


def test_killed_jump_marks_its_sessions_dead(lab, lab_inventory):
    with SessionManager(lab_inventory) as m:
        via_jump2 = [m.open("lab-target1").id, m.open("lab-target2").id]
        only_jump1 = m.open("lab-jump2").id
        try:
            lab.kill_sshd("jump2")
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                states = {i.id: i.state for i in m.list()}
                if all(states[s] == "dead" for s in via_jump2):
                    break
                time.sleep(0.1)
            infos = {i.id: i for i in m.list()}
            for s in via_jump2:
                assert infos[s].state == "dead", infos[s]
            with pytest.raises(SessionDeadError, match="jump2"):
                m.command(via_jump2[0], "echo hi")
        finally:
            lab.start_sshd("jump2")
        # jump1 itself is fine: a fresh session through the whole chain works again
        assert m.command(m.open("lab-target3").id, "echo back").output == "back\n"
        assert only_jump1 in {i.id for i in m.list()}


def test_unknown_session_lists_open_ones(manager):
    sid = manager.open("lab-target1").id
    with pytest.raises(SessionError, match=sid):
        manager.command("s-nope", "echo")


def test_native_framing_uses_the_device_prompt(manager):
    """The path network OSes take (prompt not settable): netmiko prepares, we frame on its prompt."""
    info = manager.open("lab-target1", framing="native")
    assert info.framing == "native"
    r = manager.command(info.id, "seq 1 3", wait=5)
    # exactly what the command printed, its final newline included (as on the sentinel path)
    assert (r.output, r.running, r.exit_status) == ("1\n2\n3\n", False, None)
    assert manager.command(info.id, "echo hi", wait=5).output == "hi\n"


def test_read_without_wait_collects_what_already_arrived(manager):
    sid = manager.open("lab-target1").id
    r = manager.command(sid, "echo first; sleep 0.3; echo second; sleep 30", wait=0.1)
    assert r.running and r.output == "first\n"
    reads = []                                  # wait=0: no blocking, nothing left behind

    def collected() -> bool:
        reads.append(manager.read(sid))
        return "second" in "".join(x.output for x in reads)
    until(collected, what="second")
    assert all(x.running for x in reads) and "".join(x.output for x in reads) == "second\n"
    manager.send(sid, control="c", newline=False)
    assert manager.read(sid, wait=5).exit_status == 130


def test_first_hop_refused_names_it(lab, tmp_path):
    inv = variant(lab, tmp_path, replace=(
        "jump1: {host: %s," % lab.addr("jump1"), "jump1: {host: %s, port: 2222," % lab.addr("jump1")))
    with SessionManager(inv) as m, pytest.raises(ConnectError) as err:
        m.open("lab-target1")
    assert (err.value.hop, err.value.reason) == ("jump1", "refused")
    assert "2222" in str(err.value) and "try:" in str(err.value)


def test_exit_ends_the_session_with_its_status(manager):
    sid = manager.open("lab-target1").id
    r = manager.command(sid, "exit 3", wait=5)
    assert (r.exit_status, r.running) == (3, False)
    (info,) = manager.list()
    assert info.state == "dead" and "exited with status 3" in info.dead_reason
    with pytest.raises(SessionDeadError, match="exited with status 3"):
        manager.command(sid, "echo")


def test_ctrl_c_from_another_caller_reaches_a_waiting_command(manager):
    """An MCP client may send Ctrl-C while its own command call is still waiting."""
    import threading
    sid = manager.open("lab-target1").id
    box = {}
    waiter = threading.Thread(target=lambda: box.setdefault(
        "r", manager.command(sid, "echo started; sleep 30", wait=20)))
    waiter.start()
    # once it runs (a SIGINT that reaches bash while it still reads the line can be lost)
    session = manager.session(sid)
    until(lambda: "started" in ((session.fresh_input() or ("",))[0]), what="the command to run")
    t0 = time.monotonic()
    manager.send(sid, control="c", newline=False)
    waiter.join(10)
    assert not waiter.is_alive() and time.monotonic() - t0 < 5
    assert (box["r"].running, box["r"].exit_status) == (False, 130)


def test_close_does_not_wait_for_a_running_command(manager):
    sid = manager.open("lab-target1").id
    assert manager.command(sid, "sleep 30", wait=0.2).running
    t0 = time.monotonic()
    manager.close(sid)
    assert time.monotonic() - t0 < 2 and manager.list() == []


def test_close_hangs_up_a_running_command_and_never_types_into_it(manager):
    """`exit` is for a shell at its prompt: a command reading its input when the session is
    closed must not read "exit" as its next line."""
    base = f"/tmp/phj-close-{secrets.token_hex(4)}"
    keep = manager.open("lab-target1").id          # the login stays up: only the channel closes
    sid = manager.open("lab-target1").id
    try:
        r = manager.command(sid, f"echo $$ > {base}.pid; read line; echo \"read:$line\" > {base}",
                            wait=0.3)
        assert r.running, r
        pid = int(until(lambda: Path(f"{base}.pid").read_text().strip()
                        if Path(f"{base}.pid").exists() else None, what="the shell's pid"))
        manager.close(sid)
        until(lambda: not Path(f"/proc/{pid}").exists(), what="the hung-up shell to end")
        assert not Path(base).exists(), Path(base).read_text()
        assert manager.command(keep, "echo fine").output == "fine\n"
    finally:
        for path in (base, f"{base}.pid"):
            Path(path).unlink(missing_ok=True)


def test_a_close_logs_an_idle_shell_out_and_a_shutdown_hangs_up(lab, tmp_path):
    """Closing a session at its prompt is a logout: ~/.bash_logout runs, every time (lab user
    phjsane's appends the shell's pid to $PHJ_LOGOUT_MARK). A command still running, and a
    shutdown, hang up instead, as a dropped connection would: no logout."""
    path = tmp_path / "inv.yaml"
    path.write_text(lab.inventory.read_text() + lab.sane_host_yaml())
    mark = Path(f"/tmp/phj-logout-{secrets.token_hex(4)}")

    def shell(m: SessionManager) -> tuple[str, int]:
        sid = m.open("lab-sane").id
        r = m.command(sid, f"export PHJ_LOGOUT_MARK={mark}; echo $$")
        return sid, int(r.output)

    def gone(pid: int) -> bool:
        return not Path(f"/proc/{pid}").exists()
    try:
        with SessionManager(Inventory.load(path)) as m:
            closed = [shell(m) for _ in range(5)]
            for sid, _ in closed:           # the last of them takes its login with it
                m.close(sid)
            for _, pid in closed:
                until(lambda: gone(pid), what="the logged-out shell to end")
            assert sorted(mark.read_text().split()) == sorted(str(pid) for _, pid in closed)
            busy, busy_pid = shell(m)
            assert m.command(busy, "sleep 30", wait=0.2).running
            m.close(busy)
            until(lambda: gone(busy_pid), what="the hung-up shell to end")
            _, left_pid = shell(m)
        until(lambda: gone(left_pid), what="the shell hung up at shutdown to end")
        assert sorted(mark.read_text().split()) == sorted(str(pid) for _, pid in closed)
    finally:
        mark.unlink(missing_ok=True)


def test_the_reaper_logs_sessions_that_expired_together_out_side_by_side(lab, lab_inventory, monkeypatch):
    """A logout may take up to LOGOUT_WAIT (a slow ~/.bash_logout); the reaper used to close
    expired sessions one after another, so many expiring together added up. Here each
    shell's exit waits (up to 8 s) until all of them are exiting: only logouts run side by
    side all get through that barrier."""
    import shlex

    from phonehome_jump import manager as manager_module

    monkeypatch.setattr(manager_module, "LOGOUT_WAIT", 10.0)
    n = 4
    mark = f"/tmp/phj-reap-{secrets.token_hex(4)}"
    started, through = Path(f"{mark}.started"), Path(f"{mark}.through")
    barrier = (f'echo $$ >> {started}; for i in $(seq 80); do '
               f'[ "$(wc -l < {started})" -ge {n} ] && break; sleep 0.1; done; '
               f'[ "$(wc -l < {started})" -ge {n} ] && echo $$ >> {through}')
    try:
        with SessionManager(lab_inventory, idle_timeout=1) as m:
            ids = [m.open("lab-target1").id for _ in range(n)]
            for sid in ids:
                assert m.command(sid, f"trap {shlex.quote(barrier)} EXIT").exit_status == 0
            sessions = [m.session(sid) for sid in ids]
            until(lambda: all(time.time() - s.last_activity > 1.0 for s in sessions),
                  what="every session idle past the timeout")
            assert sorted(m.reap()) == sorted(ids)
        assert started.exists() and len(started.read_text().split()) == n
        assert through.exists() and len(through.read_text().split()) == n, \
            "the logouts ran one after another"
    finally:
        started.unlink(missing_ok=True)
        through.unlink(missing_ok=True)


def test_background_output_between_commands_is_not_the_next_commands(manager):
    sid = manager.open("lab-target1").id
    assert manager.command(sid, "(sleep 0.3; echo from-background) &").exit_status == 0
    session = manager.session(sid)
    until(lambda: session._chan.recv_ready(), what="the background output")   # here, unread
    r = manager.command(sid, "echo foreground")
    assert (r.output, r.exit_status) == ("foreground\n", 0)
