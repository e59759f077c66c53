"""The liveness rules (pure logic, over stand-in transports; the real thing is in test_links)."""

import threading
import time

from phonehome_jump.liveness import Link, first_failure


class FakeTransport:
    """Answers a global request at once while ``answering``; otherwise holds it, like a dead path."""

    def __init__(self, answering: bool = True) -> None:
        self.answering = answering
        self.active = True
        self.requests = 0
        self._wake = threading.Event()

    def is_active(self) -> bool:
        return self.active

    def global_request(self, kind, wait=True):
        assert kind == "keepalive@openssh.com" and wait is True   # a reply is asked for
        self.requests += 1
        while self.active and not self.answering:
            self._wake.wait(0.01)
        return None if not self.active else object()

    def close(self) -> None:
        self.active = False
        self._wake.set()


def wait_for(cond, timeout=5.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not cond():
        time.sleep(0.01)
    return cond()


def test_silence_past_interval_times_count_declares_the_link_down():
    t = FakeTransport()
    link = Link("hop", "jump1", "u@h:22", t, interval=0.2, count=2).start()
    assert wait_for(lambda: link.answers >= 2)
    t.answering = False
    t0 = time.monotonic()
    assert wait_for(lambda: link.down is not None, 3)
    assert time.monotonic() - t0 < 0.2 * 2 + 0.2 + 0.5
    assert "hop 'jump1' (u@h:22) stopped answering: no reply to 2 keepalives" in link.down
    assert wait_for(lambda: not t.active)            # its connection is closed
    assert first_failure([link]) == link.down


def test_an_answering_link_stays_up():
    t = FakeTransport()
    link = Link("target", "t1", "u@t:22", t, interval=0.1, count=2).start()
    time.sleep(0.6)
    assert link.down is None and link.answers >= 4
    link.stop()


def test_outermost_silent_link_is_blamed_not_the_target():
    hop_t, target_t = FakeTransport(), FakeTransport()
    hop = Link("hop", "jump2", "u@j2:22", hop_t, interval=0.3, count=2).start()
    target = Link("target", "t1", "u@t1:22", target_t, interval=0.1, count=2, outer=[hop]).start()
    assert wait_for(lambda: hop.answers and target.answers)
    hop_t.answering = target_t.answering = False     # the path through the hop went silent
    assert wait_for(lambda: hop.down is not None, 5)
    # the target went silent first (shorter limit) but waited for its hop, which is to blame
    assert target.down is None
    assert first_failure([hop, target]).startswith("hop 'jump2'")


def test_inner_link_blamed_when_the_hops_before_it_answer():
    hop_t, target_t = FakeTransport(), FakeTransport()
    hop = Link("hop", "jump2", "u@j2:22", hop_t, interval=0.5, count=3).start()
    target = Link("target", "t1", "u@t1:22", target_t, interval=0.1, count=2, outer=[hop]).start()
    assert wait_for(lambda: target.answers > 0)
    target_t.answering = False
    assert wait_for(lambda: target.down is not None, 3)
    assert hop.down is None and first_failure([hop, target]).startswith("target 't1'")
    hop.stop()


def test_a_server_that_never_answers_is_not_declared_down(caplog):
    t = FakeTransport(answering=False)
    link = Link("target", "ios1", "u@r:22", t, interval=0.1, count=2).start()
    assert wait_for(lambda: "has not answered any keepalive" in caplog.text, 3)
    assert link.down is None and t.active
    link.stop()
    t.close()


def test_check_probes_now():
    t = FakeTransport()
    link = Link("hop", "j", "u@j:22", t, interval=60, count=3).start()
    assert wait_for(lambda: link.answers == 1)
    assert link.check(2.0) and link.answers == 2      # did not wait 60 s for the next probe
    t.answering = False
    t0 = time.monotonic()
    assert not link.check(0.3) and time.monotonic() - t0 < 1.0
    t.close()


def test_inventory_fields_and_defaults():
    import pytest

    from phonehome_jump.errors import InventoryError
    from phonehome_jump.inventory import Inventory
    inv = Inventory.from_text("""
defaults: {keepalive_count: 5}
jump_hosts:
  gw: {host: gw.example.net, keepalive: 7}
hosts:
  a: {host: 10.0.0.1, via: gw}
  b: {host: 10.0.0.2, keepalive: 0, keepalive_count: 2}
""", "inv.yaml")
    a, b = inv.target("a"), inv.target("b")
    assert (a.endpoint.keepalive, a.endpoint.keepalive_count) == (15, 5)
    assert (a.chain[0].keepalive, a.chain[0].keepalive_count) == (7, 5)
    assert (b.endpoint.keepalive, b.endpoint.keepalive_count) == (0, 2)
    with pytest.raises(InventoryError, match="keepalive_count"):
        Inventory.from_text("hosts:\n  a: {host: x, keepalive_count: 0}\n", "inv.yaml")
