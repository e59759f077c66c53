"""The core as a shared service, against real OpenSSH: busy answers within the caller's wait,
nothing sent for a caller that has gone, closed-by-whom answers, the running-session limit and
per-client limits."""

from __future__ import annotations

import threading
import time

import pytest

from phonehome_jump.callstate import caller
from phonehome_jump.errors import CallAbandonedError, LimitError, SessionBusyError, UnknownSessionError
from phonehome_jump.manager import SessionManager

from .waits import until


def in_thread(fn):
    box: dict = {}

    def run():
        try:
            box["result"] = fn()
        except Exception as exc:     # handed to the test
            box["error"] = exc
    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t, box


def test_busy_session_answers_within_the_wait_and_says_what_runs(manager):
    sid = manager.open("lab-target1").id
    waiter, box = in_thread(lambda: manager.command(sid, "sleep 20", wait=15))
    until(lambda: manager.session(sid).running, what="sleep 20 running")
    t0 = time.monotonic()
    with pytest.raises(SessionBusyError) as err:
        manager.command(sid, "echo hi", wait=5)
    assert time.monotonic() - t0 < 1.0
    assert "'sleep 20'" in str(err.value) and "nothing was sent" in str(err.value)
    assert err.value.holder_left is not None and 10 < err.value.holder_left <= 15
    t0 = time.monotonic()
    with pytest.raises(SessionBusyError, match="another call waits on its output"):
        manager.read(sid, wait=0)
    assert time.monotonic() - t0 < 1.0
    t0 = time.monotonic()
    with pytest.raises(SessionBusyError):
        manager.read(sid, wait=2)               # the holder waits longer than this call may
    assert 1.5 < time.monotonic() - t0 < 3.0
    manager.send(sid, control="c", newline=False)    # an answer still goes through at once
    waiter.join(10)
    assert box["result"].exit_status == 130
    r = manager.command(sid, "echo hi", wait=5)      # and "echo hi" was never sent meanwhile
    assert (r.output, r.exit_status) == ("hi\n", 0)


def test_a_call_whose_caller_has_gone_sends_nothing(manager):
    sid = manager.open("lab-target1").id
    with caller(lambda: True), pytest.raises(CallAbandonedError, match="nothing was sent"):
        manager.command(sid, "touch /tmp/phj-abandoned-$$; echo sent", wait=5)
    with caller(lambda: True), pytest.raises(CallAbandonedError):
        manager.send(sid, "echo typed")
    r = manager.command(sid, "echo only-me", wait=5)
    assert (r.output, r.exit_status, r.command) == ("only-me\n", 0, "echo only-me")
    with caller(lambda: True), pytest.raises(CallAbandonedError, match="closed again"):
        manager.open("lab-target2")
    assert [i.id for i in manager.list()] == [sid]   # the abandoned open left nothing open


def test_closed_sessions_say_who_closed_them(lab_inventory):
    with SessionManager(lab_inventory, idle_timeout=0.3) as m:
        sid = m.open("lab-target1", owner="a").id
        waiter, box = in_thread(lambda: m.command(sid, "sleep 20", wait=15, owner="a"))
        until(lambda: m.session(sid, owner="a").running, what="sleep running")
        m.close(sid, owner="a")
        waiter.join(5)
        assert "closed by this client" in str(box["error"])
        with pytest.raises(UnknownSessionError, match="it was closed by this client"):
            m.read(sid, owner="a")
        with pytest.raises(UnknownSessionError, match=f"no open session '{sid}'"):
            m.read(sid, owner="b")                   # another client learns nothing
        idle = m.open("lab-target1", owner="a").id
        until(lambda: idle in m.reap(), what="idle reap")
        with pytest.raises(UnknownSessionError, match="closed by the idle timeout"):
            m.command(idle, "id", owner="a")


def test_a_running_session_is_reaped_after_the_running_limit(lab_inventory):
    with SessionManager(lab_inventory, idle_timeout=0.2, running_timeout=1.5) as m:
        sid = m.open("lab-target1").id
        assert m.command(sid, "tail -f /dev/null", wait=0.2).running
        time.sleep(0.5)
        assert m.reap() == []                        # running: the idle timeout does not apply
        until(lambda: sid in m.reap(), what="running reap")
        with pytest.raises(UnknownSessionError, match="running-session limit"):
            m.read(sid)


def test_limit_refusals_say_whose_limit(lab_inventory):
    with SessionManager(lab_inventory, max_sessions=3, max_per_client=2) as m:
        m.open("lab-target1", owner="a")
        m.open("lab-target2", owner="a")
        with pytest.raises(LimitError, match="this client has 2 sessions open, its own limit is 2"):
            m.open("lab-target3", owner="a")
        m.open("lab-target3", owner="b")
        with pytest.raises(LimitError) as err:
            m.open("lab-target3", owner="c")
        text = str(err.value)
        assert "server-wide limit is 3" in text and "0 of them yours" in text
        assert "other clients hold them" in text and "close sessions you" not in text
        assert m._opening_by == {}                       # refused and finished opens leave no count
