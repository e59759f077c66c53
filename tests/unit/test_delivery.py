"""The ledger of replies that may have missed their caller (pure logic, real threads)."""

from __future__ import annotations

import threading

from phonehome_jump.agent_server import _with_missed
from phonehome_jump.delivery import DeliveryLedger


def on_thread(fn, keep_alive: threading.Event | None = None) -> threading.Thread:
    """Run ``fn`` on a thread of its own (a connection); it ends unless ``keep_alive``."""
    def body() -> None:
        fn()
        if keep_alive is not None:
            keep_alive.wait()
    t = threading.Thread(target=body)
    t.start()
    return t


def reply(stdout: str, offset: int, command: str = "cmd") -> dict:
    return {"stdout": stdout, "offset": offset, "next_offset": offset + len(stdout),
            "command": command, "truncated": False}


def deliver(ledger: DeliveryLedger, sid: str, r: dict) -> None:
    ledger.request()
    ledger.end(sid, ledger.begin(sid), r)


def test_a_reply_whose_connection_ended_unacknowledged_is_missed_once():
    ledger = DeliveryLedger(caller_timeout=10)
    on_thread(lambda: deliver(ledger, "s-1", reply("lost\n", 0))).join()
    missed = ledger.missed("s-1")
    assert [m.reply["stdout"] for m in missed] == ["lost\n"]
    assert ledger.missed("s-1") == []
    assert ledger.missed("s-2") == []


def test_a_next_request_on_the_same_connection_acknowledges_the_reply():
    ledger = DeliveryLedger(caller_timeout=10)

    def two_requests() -> None:
        deliver(ledger, "s-1", reply("seen\n", 0))
        ledger.request()                  # the caller read it, then asked again
    on_thread(two_requests).join()
    assert ledger.missed("s-1") == []


def test_replies_on_idle_open_connections_are_not_missed():
    ledger = DeliveryLedger(caller_timeout=10)
    hold = threading.Event()
    t = on_thread(lambda: deliver(ledger, "s-1", reply("pooled\n", 0)), keep_alive=hold)
    try:
        assert ledger.missed("s-1") == []     # a pooled connection: its caller got it
    finally:
        hold.set()
        t.join()
    ledger.forget("s-1")                      # closed: nothing to hand back any more
    assert ledger.missed("s-1") == []


def test_a_missed_reply_is_put_in_front_when_the_read_continues_it():
    ledger = DeliveryLedger(caller_timeout=10)
    on_thread(lambda: deliver(ledger, "s-1", reply("part1\n", 0))).join()
    merged = _with_missed(reply("part2\n", 6), ledger.missed("s-1"))
    assert merged["stdout"] == "part1\npart2\n" and merged["offset"] == 0
    assert merged["redelivered"] == 6 and "missed_replies" not in merged


def test_a_missed_reply_of_another_command_comes_apart():
    ledger = DeliveryLedger(caller_timeout=10)
    on_thread(lambda: deliver(ledger, "s-1", reply("old\n", 0, command="first"))).join()
    r = _with_missed(reply("new\n", 0, command="second"), ledger.missed("s-1"))
    assert r["stdout"] == "new\n" and "redelivered" not in r
    assert [m["stdout"] for m in r["missed_replies"]] == ["old\n"]
    assert "missed_replies: 1 earlier reply" in r["note"]
