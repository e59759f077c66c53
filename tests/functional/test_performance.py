"""Performance mechanisms checked for correctness against real OpenSSH (speed is in bench/)."""

from __future__ import annotations

import os
import time

from phonehome_jump.chain import AnsweringTransport
from phonehome_jump.manager import SessionManager
from phonehome_jump.redact import add_secret

HOSTKEYS = "hostkeys-00@openssh.com"


def _eventually(check, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.01)
    return check()


def test_every_login_answers_sshds_post_login_request_and_uses_aes_gcm(manager):
    """Each hop and the target answer at once what sshd sends unasked after login (hostkeys-00)
    and its answer to the first liveness probe: no message is left for a delayed ACK."""
    info = manager.open("lab-target1")
    session = manager.session(info.id)
    hops = [(h.endpoint.name, h.transport) for h in manager.pool._hops.values()]
    target = session._conn.remote_conn_pre.get_transport()
    transports = [*hops, ("lab-target1", target)]
    assert [name for name, _ in hops] == ["jump1", "jump2"]
    for name, t in transports:
        assert isinstance(t, AnsweringTransport), name
        assert _eventually(lambda: HOSTKEYS in t.answered), (name, t.answered)
        # sshd answers keepalive@openssh.com with a failure (it knows no such request)
        assert _eventually(lambda: "request-failure" in t.answered), (name, t.answered)
        # AES-GCM where the server offers it (OpenSSH does): no per-byte MAC compare in Python
        assert (t.local_cipher, t.remote_cipher) == ("aes128-gcm@openssh.com",) * 2, name
    assert manager.command(info.id, "echo ok").output == "ok\n"
    # hops forward: each is sent the pty `true` that turns sshd's Nagle off, once
    assert all(h.nodelay_asked for h in manager.pool._hops.values())


def test_a_target_reached_directly_is_not_sent_the_hops_pty_true(manager):
    """An exec channel or terminal goes to the target's own connection in the pool; that
    connection forwards nothing, and a network device would take `true` for a command."""
    from phonehome_jump.direct import DirectChannel

    target = manager.inventory.target("lab-target2")
    d = DirectChannel(manager, target)
    try:
        chan = d.exec("echo direct")
        assert chan.makefile("rb").read() == b"direct\n"
        by_name = {h.endpoint.name: h for h in manager.pool._hops.values()}
        assert not by_name["lab-target2"].nodelay_asked
        assert by_name["jump1"].nodelay_asked and by_name["jump2"].nodelay_asked
    finally:
        d.close()


def test_an_upload_crosses_each_hop_in_as_many_packets_as_the_target_gets(manager):
    """A full-size packet of the target's connection must fit one chunk of the hop channel
    that carries it: otherwise each becomes a chunk and a small leftover, on every layer."""
    import hashlib

    from phonehome_jump.direct import DirectChannel

    target = manager.inventory.target("lab-target1")
    d = DirectChannel(manager, target)
    try:
        d.connect()
        by_name = {h.endpoint.name: h for h in manager.pool._hops.values()}
        layers = {name: by_name[name].transport for name in ("jump1", "jump2", "lab-target1")}
        sent = dict.fromkeys(layers, 0)

        def counting(name, send):
            def send_message(data):
                sent[name] += 1
                return send(data)
            return send_message
        for name, t in layers.items():
            t.packetizer.send_message = counting(name, t.packetizer.send_message)
        blob = os.urandom(4 << 20)
        chan = d.exec("sha256sum")
        chan.sendall(blob)
        chan.shutdown_write()
        out = chan.makefile("rb").read()
        assert out.split()[0].decode() == hashlib.sha256(blob).hexdigest()   # every byte, in order
        inner = sent["lab-target1"]
        assert inner >= (4 << 20) // 32768, sent
        assert sent["jump2"] <= inner * 1.1 + 10 and sent["jump1"] <= inner * 1.1 + 10, sent
    finally:
        d.close()


# -- output of any size: complete, exact, bounded, masked -------------------------------

def _page_all(manager, sid, result, size_hint: int) -> str:
    """All of a finished command's output, page by page from offset 0."""
    assert result.total == size_hint, (result.total, size_hint)
    parts, offset = [], 0
    while offset < result.total:
        page = manager.read(sid, offset=offset)
        assert page.offset == offset and page.output, (offset, page.total)
        parts.append(page.output)
        offset = page.next_offset
    return "".join(parts)


def test_a_million_lines_are_complete_and_exact_with_memory_bounded(lab_inventory):
    expected = "".join(f"{i}\n" for i in range(1, 1_000_001))
    with SessionManager(lab_inventory, output_memory=200_000) as m:
        sid = m.open("lab-target1").id
        r = m.command(sid, "seq 1 1000000", wait=120)
        assert (r.running, r.exit_status, r.total) == (False, 0, len(expected))
        # the default result: head and tail, with honest offsets of what was left out
        assert r.truncated and r.omitted == (8_000, len(expected) - 8_000)
        assert r.output.startswith(expected[:8_000]) and r.output.endswith(expected[-8_000:])
        run = m.session(sid)._run
        assert run.out.spilled >= len(expected) - 200_000 - 16_384     # the rest is on disk
        assert _page_all(m, sid, r, len(expected)) == expected
        # a prompt-ending run right after still frames exactly
        assert m.command(sid, "echo after").output == "after\n"


def test_secrets_are_masked_across_chunk_page_and_spill_boundaries(lab_inventory):
    secret = "canary-perf-" + "5b7e" * 3
    add_secret(secret)
    # lines of growing length put the secret across every kind of boundary: network chunks,
    # 16,000-character pages, the in-memory/spill cut
    script = ("s=$(printf '%s%s' canary-perf- 5b7e5b7e5b7e); "
              "for i in $(seq 1 6000); do printf '%*s%s\\n' $((i % 97)) '' \"$s\"; done")
    expected = "".join(" " * (i % 97) + "*" * len(secret) + "\n" for i in range(1, 6001))
    with SessionManager(lab_inventory, output_memory=70_000) as m:
        sid = m.open("lab-target1").id
        r = m.command(sid, script, wait=60)
        assert r.exit_status == 0 and r.total == len(expected)
        assert m.session(sid)._run.out.spilled > 0
        text = _page_all(m, sid, r, len(expected))
        assert secret not in text and text == expected
        # pages that start anywhere (odd offsets) cut no secret open either
        for offset in range(1, r.total, 12_345):
            page = m.read(sid, offset=offset)
            assert page.output == expected[offset:offset + len(page.output)]


def test_a_secret_split_across_reads_is_never_half_shown(manager):
    secret = "canary-split-" + "9c1d" * 3
    add_secret(secret)
    half = len(secret) // 2
    sid = manager.open("lab-target1").id
    # the command prints the secret's first half, then waits for a line before the rest
    r = manager.command(sid, f"printf -- 'before {secret[:half]}'; read go; "
                             f"printf -- '{secret[half:]} after\\n'", wait=20, until=secret[:half])
    seen = r.output
    assert r.running and seen == "before "          # the possible secret start is held back
    manager.send(sid, "go")
    while True:
        r = manager.read(sid, wait=5)
        seen += r.output
        if not r.running:
            break
    assert seen == f"before {'*' * len(secret)} after\n"
