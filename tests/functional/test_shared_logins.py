"""Sessions of one host share its SSH login (a channel each), against the real lab sshds.

What the target sees is counted on the target itself: its established SSH connections
(``ss`` in its namespace), and the shells' own ``$$`` and tty.
"""

from __future__ import annotations

import subprocess
import threading
import time
from contextlib import contextmanager

import pytest

from phonehome_jump.errors import SessionDeadError, UnknownSessionError
from phonehome_jump.inventory import Inventory
from phonehome_jump.manager import SessionManager

from .waits import at_once, until


# What each server writes to its log when data reaches a channel after our CLOSE (it then
# ends the whole connection): OpenSSH, and dropbear (routers, embedded Linux)
LATE_DATA = {"lab-target1": ("target1", "nonexistent channel"),
             "lab-dropbear": ("dropbear1", "Unknown channel")}


@pytest.fixture(scope="module")
def servers_inventory(lab) -> Inventory:
    """The lab's inventory plus its dropbear target."""
    return Inventory.from_text(lab.inventory.read_text() + lab.dropbear_host_yaml(), str(lab.inventory))


def connections(lab, node: str) -> int:
    """Established SSH connections to ``node``'s sshd, as the node's kernel counts them."""
    out = subprocess.run(["ip", "netns", "exec", lab.nodes[node].ns, "ss", "-Htn", "state",
                          "established", "sport = :22"], capture_output=True, text=True,
                         check=True).stdout
    return len(out.splitlines())


def test_sessions_of_one_host_share_a_login_and_nothing_else(lab, lab_inventory):
    before = connections(lab, "target1")
    with SessionManager(lab_inventory) as m:
        a, b = m.open("lab-target1").id, m.open("lab-target1").id
        assert connections(lab, "target1") == before + 1          # one login, two shells
        shell_a = m.command(a, "echo $$ $(tty)").output.split()
        shell_b = m.command(b, "echo $$ $(tty)").output.split()
        assert shell_a[0] != shell_b[0] and shell_a[1] != shell_b[1], (shell_a, shell_b)
        # each shell keeps its own state
        m.command(a, "cd /tmp && export PHJ_SHARED=a")
        r = m.command(b, 'pwd; echo "${PHJ_SHARED-unset}"')
        assert (r.output, r.cwd) == ("/home/phjkey\nunset\n", "/home/phjkey")
        # a session closed leaves the other one working on the same connection
        m.close(a)
        assert m.command(b, "echo still").output == "still\n"
        assert connections(lab, "target1") == before + 1
        # a shell that exits ends its session only
        c = m.open("lab-target1").id
        r = m.command(c, "exit 3", wait=5)
        assert r.exit_status == 3
        with pytest.raises(SessionDeadError, match="has ended"):
            m.command(c, "echo gone")
        assert m.command(b, "echo alive").output == "alive\n"
        m.close(b)
        m.close(c)
        # the last session closed: the login goes too
        assert until(lambda: connections(lab, "target1") == before, 10), connections(lab, "target1")


def test_a_shell_killed_on_a_shared_login_is_blamed_on_the_shell(lab, lab_inventory):
    with SessionManager(lab_inventory) as m:
        victim, other = m.open("lab-target1").id, m.open("lab-target1").id
        assert m.session(victim).login is m.session(other).login
        with pytest.raises(SessionDeadError) as err:
            m.command(victim, "kill -9 $$", wait=10)
        assert "connection to lab-target1 is still up" in str(err.value), str(err.value)
        assert m.command(other, "echo fine").output == "fine\n"
        info = m.revive(victim)                # a new shell on the same login
        assert info.state == "idle" and m.session(victim).login is m.session(other).login
        assert m.command(victim, "echo back").output == "back\n"


def test_owners_and_opt_out_get_logins_of_their_own(lab, lab_inventory):
    before = connections(lab, "target2")
    with SessionManager(lab_inventory) as m:
        a = m.open("lab-target2", owner="alice").id
        b = m.open("lab-target2", owner="bob").id
        # one client's `kill $PPID` must not end another client's sessions
        assert m.session(a).login is not m.session(b).login
        # an ET Phone Home agent has no owners: the actor names the client
        c = m.open("lab-target2", actor="mcp:claude/1").id
        d = m.open("lab-target2", actor="mcp:claude/2").id
        assert m.session(c).login is not m.session(d).login
        assert m.session(m.open("lab-target2", owner="alice").id).login is m.session(a).login
        assert connections(lab, "target2") == before + 4
    with SessionManager(lab_inventory, share_logins=False) as m:
        x, y = m.open("lab-target2").id, m.open("lab-target2").id
        assert m.session(x).login is not m.session(y).login
        assert m.command(y, "echo own").output == "own\n"
        assert connections(lab, "target2") == before + 2


def test_a_host_can_keep_a_login_per_session(lab, tmp_path):
    path = tmp_path / "inv.yaml"
    path.write_text(lab.inventory.read_text() + f"  own-logins: {{host: {lab.addr('target2')}, "
                    "groups: [lab], share_login: false}\n")
    inv = Inventory.load(path)
    assert (inv.target("own-logins").share_login, inv.target("lab-target2").share_login) == (False, True)
    before = connections(lab, "target2")
    with SessionManager(inv) as m:
        x, y = m.open("own-logins").id, m.open("own-logins").id
        assert m.session(x).login is not m.session(y).login
        assert connections(lab, "target2") == before + 2


def test_a_server_that_refuses_more_channels_gets_more_logins(lab, tmp_path):
    """A stock sshd serves MaxSessions (10) shells per connection and refuses the 11th: the
    sessions past it go to further logins, all opened at once, none lost."""
    path = tmp_path / "inv.yaml"
    path.write_text(lab.inventory.read_text() + lab.stock_host_yaml())
    n = 25
    before = connections(lab, "stock1")
    with SessionManager(Inventory.load(path), max_per_host=n) as m:
        m.open("lab-target1")                   # the chain up first

        def go(i: int) -> tuple[str, str]:
            sid = m.open("lab-stock1").id
            return m.command(sid, f"echo {i}").output, sid
        results = at_once(go, n)
        failures = [r for r in results if not isinstance(r, tuple)]
        assert not failures, f"{len(failures)} of {n} failed, e.g. {failures[0]}"
        assert [r[0] for r in results] == [f"{i}\n" for i in range(n)]
        logins = {id(m.session(r[1]).login): m.session(r[1]).login for r in results}
        assert all(login.users <= 10 for login in logins.values()), [x.users for x in logins.values()]
        assert 3 <= len(logins) < n, len(logins)
        assert connections(lab, "stock1") == before + len(logins)


def test_sessions_closing_while_others_work_never_take_the_shared_hop_down(lab, tmp_path):
    """Twenty sessions on logins of their own share the hop connections; each runs 1 to 5
    commands and closes while the others still work. A login's close used to race its
    transport's last send, so jump2's sshd got data after our CLOSE and ended the whole hop
    connection, killing every other session (about one round in two)."""
    n = 20
    path = tmp_path / "inv.yaml"
    path.write_text(lab.inventory.read_text() + "".join(
        f"  own-{i}: {{host: {lab.addr(f'target{1 + i % 3}')}, groups: [lab], share_login: false}}\n"
        for i in range(n)))
    inv = Inventory.load(path)
    for _ in range(6):
        with SessionManager(inv, max_per_host=n) as m:
            m.open("own-0")                     # the chain up first

            def go(i: int) -> list[str]:
                sid = m.open(f"own-{i}").id
                outs = [m.command(sid, f"echo {i}.{k}").output for k in range(1 + i % 5)]
                m.close(sid)
                return outs
            results = at_once(go, n)
            failures = [r for r in results if not isinstance(r, list)]
            assert not failures, f"{len(failures)} of {n} failed, e.g. {failures[0]}"
            assert results == [[f"{i}.{k}\n" for k in range(1 + i % 5)] for i in range(n)]


def _hold_back_and_record(transport, kind: int, delay: float = 0.05):
    """Fault injection on one transport: each message of ``kind`` waits ``delay`` between
    paramiko's check that its channel is open and its send (as a loaded machine does at
    random); every channel message is recorded in wire order. Returns (the recipient
    channels ``kind`` was sent to, the wire)."""
    send, build = transport._send_user_message, transport.packetizer._build_packet
    held: set[bytes] = set()
    wire: list[tuple[int, bytes]] = []       # (message type, recipient channel)

    def held_back(message):
        raw = message.asbytes()
        if raw[0] == kind:
            held.add(raw[1:5])
            time.sleep(delay)
        return send(message)

    def recorded(payload):                   # called under the packetizer's write lock
        if 91 <= payload[0] <= 100:          # channel messages: their recipient follows
            wire.append((payload[0], bytes(payload[1:5])))
        return build(payload)
    transport._send_user_message = held_back
    transport.packetizer._build_packet = recorded
    return held, wire


def _after_close(wire: list[tuple[int, bytes]]) -> tuple[int, list[tuple[int, int]]]:
    """How many channels we closed, and every message sent on one after its CLOSE."""
    closed: dict[bytes, int] = {}
    late = []
    for i, (kind, chan) in enumerate(wire):
        if chan in closed:
            late.append((kind, i - closed[chan]))
        if kind == 97:                        # SSH_MSG_CHANNEL_CLOSE
            closed.setdefault(chan, i)
    return len(closed), late


def test_a_session_hung_up_mid_output_sends_nothing_on_its_channel_after_its_close(lab, lab_inventory):
    """Sessions on one login are closed while their commands stream output and their waiters
    read. The RFC allows no message on a channel after its CLOSE (OpenSSH logs a late window
    adjust, dropbear ignores it; both end the whole connection for late data). paramiko's
    reader decides on a window adjust, lets go of the channel's lock and only then sends it;
    with each adjust held back in between, a close that did not wait for the reader sent
    adjusts after its CLOSE nearly every time."""
    with SessionManager(lab_inventory, max_per_host=20) as m:
        keep = m.open("lab-target1").id
        victims = [m.open("lab-target1").id for _ in range(6)]
        login = m.session(keep).login
        assert all(m.session(v).login is login for v in victims)
        adjusted, wire = _hold_back_and_record(login.link.transport, 93)   # WINDOW_ADJUST
        ended: list = []

        def wait_on(v: str) -> None:
            try:
                ended.append(m.command(v, "yes | head -c 200000000", wait=60))
            except (SessionDeadError, UnknownSessionError) as exc:   # closed under its waiter
                ended.append(exc)
        waiters = [threading.Thread(target=wait_on, args=(v,)) for v in victims]
        for t in waiters:
            t.start()
        until(lambda: len(adjusted) == len(victims), timeout=30, what="output flowing on every victim")
        closes = at_once(lambda i: m.close(victims[i]), len(victims))
        assert closes == [None] * len(victims)
        for t in waiters:
            t.join(60)
        assert len(ended) == len(victims), ended
        assert all("closed by this client" in str(e) for e in ended), ended
        assert m.command(keep, "echo alive").output == "alive\n"
        assert m.session(keep).login is login and login.alive
        closed, late = _after_close(wire)
        assert closed == len(victims) and not late, (closed, late)


@contextmanager
def _six_typed_into_on_one_login(lab, inventory, host: str, command: str, text: str, gone):
    """Six sessions on one login of ``host`` run ``command`` while a thread each types
    ``text`` into them until ``gone`` (an exception) stops it; each data message is held back
    between paramiko's check and its send. Yields (the manager, the victims, the messages
    held back so far, the typists' exceptions); the block ends the victims. Afterwards a
    seventh session on the login still works, nothing followed a CLOSE on the wire, and the
    server logged no late data."""
    node, late_data = LATE_DATA[host]
    sshd_log = lab.state / f"sshd_{node}.log"
    log_start = sshd_log.stat().st_size
    with SessionManager(inventory, max_per_host=20) as m:
        keep = m.open(host).id
        victims = [m.open(host).id for _ in range(6)]
        login = m.session(keep).login
        assert all(m.session(v).login is login for v in victims)
        for v in victims:
            assert m.command(v, command, wait=0.2).running
        typed, wire = _hold_back_and_record(login.link.transport, 94)      # CHANNEL_DATA
        stopped: list = []

        def type_into(v: str) -> None:
            try:
                while True:
                    m.send(v, text)
            except gone as exc:
                stopped.append(exc)
        typists = [threading.Thread(target=type_into, args=(v,)) for v in victims]
        for t in typists:
            t.start()
        yield m, victims, typed, stopped
        for t in typists:
            t.join(60)
        assert len(stopped) == len(victims), stopped
        assert m.command(keep, "echo alive").output == "alive\n"
        assert m.session(keep).login is login and login.alive
        closed, late = _after_close(wire)
        assert closed == len(victims) and not late, (closed, late)
    with sshd_log.open() as fh:
        fh.seek(log_start)
        assert late_data not in fh.read()


@pytest.mark.parametrize("host", LATE_DATA)
def test_a_session_closed_while_its_input_is_typed_never_takes_its_shared_login_down(lab, servers_inventory, host):
    """Sessions on one login are closed while other calls type input into their running
    commands. Data after our CLOSE reaches sshd for a channel it has freed, and sshd ends the
    whole connection ("referred to nonexistent channel"), every other shell on the login with
    it. With each data message held back between paramiko's check and its send, a close that
    did not wait for the writer lost the login nearly every time."""
    with _six_typed_into_on_one_login(lab, servers_inventory, host, "cat > /dev/null",
                                      "some input for cat",
                                      (SessionDeadError, UnknownSessionError)) as (m, victims, typed, _):
        until(lambda: len(typed) >= len(victims), timeout=30, what="input flowing to every victim")
        closes = at_once(lambda i: m.close(victims[i]), len(victims))
        assert closes == [None] * len(victims)


@pytest.mark.parametrize("host", LATE_DATA)
def test_a_shell_that_exits_while_input_is_typed_never_takes_its_shared_login_down(lab, servers_inventory, host):
    """Shells on one login exit on their own while other calls type into them. sshd closes
    the channel once its shell has exited, and paramiko answered that CLOSE at once, from
    its reader thread, while a writer could be between its check that the channel is open
    and its send: the data followed our CLOSE, and sshd ended the whole connection, every
    other shell on the login with it. With each data message held back there, that was
    nearly every time."""
    # each shell exits once 100 bytes of input reached it
    with _six_typed_into_on_one_login(lab, servers_inventory, host, "head -c 100 > /dev/null; exit 3",
                                      "input for head", SessionDeadError) as (m, victims, _, stopped):
        until(lambda: len(stopped) == len(victims), timeout=60, what="every shell to exit")
        assert all("the shell exited with status 3" in str(e) for e in stopped), stopped
