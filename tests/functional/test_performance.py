"""Performance mechanisms checked for correctness against real OpenSSH (speed is in bench/)."""

from __future__ import annotations

import time

from phonehome_jump.chain import AnsweringTransport

HOSTKEYS = "hostkeys-00@openssh.com"


def _eventually(check, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.01)
    return check()


def test_every_login_answers_sshds_post_login_request(manager):
    """Each hop and the target answer sshd's hostkeys-00 at once (no delayed-ACK stall)."""
    info = manager.open("lab-target1")
    session = manager.session(info.id)
    hops = [(h.endpoint.name, h.transport) for h in manager.pool._hops.values()]
    target = session._conn.remote_conn_pre.get_transport()
    transports = [*hops, ("lab-target1", target)]
    assert [name for name, _ in hops] == ["jump1", "jump2"]
    for name, t in transports:
        assert isinstance(t, AnsweringTransport), name
        assert _eventually(lambda: HOSTKEYS in t.answered), (name, t.answered)
    assert manager.command(info.id, "echo ok").output == "ok\n"
