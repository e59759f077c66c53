"""How library failures map to hop errors (pure logic; the real paths are in tests/functional)."""

import socket
import threading
from pathlib import Path

import paramiko
import pytest

from phonehome_jump.chain import fingerprint, known_hosts_name, wrap_error
from phonehome_jump.errors import AuthError, ConnectError
from phonehome_jump.inventory import Auth, Endpoint

EP = Endpoint(name="dmz-gw", host="gw.example.net", port=22, username="ops",
              auth=Auth(None, Path("/k"), None, True, None), known_hosts=Path("/kh"),
              host_key_policy="strict", keepalive=30, connect_timeout=3.0, source="inv.yaml:7")


@pytest.mark.parametrize("exc,reason", [
    (socket.gaierror(-2, "Name or service not known"), "dns"),
    (ConnectionRefusedError(111, "Connection refused"), "refused"),
    (socket.timeout("timed out"), "timeout"),
    (paramiko.ChannelException(2, "Connect failed"), "refused"),
    (paramiko.ChannelException(1, "Administratively prohibited"), "forwarding"),
    (EOFError(), "closed"),
])
def test_library_errors_name_the_hop_and_reason(exc, reason):
    err = wrap_error(exc, EP, None)
    assert isinstance(err, ConnectError) and (err.hop, err.reason) == ("dmz-gw", reason)
    assert "dmz-gw" in str(err) and "inv.yaml:7" in str(err) and "try:" in str(err)


def test_wrapped_cause_is_found_through_library_wrappers():
    try:
        try:
            raise paramiko.AuthenticationException("Authentication failed.")
        except paramiko.AuthenticationException:
            raise RuntimeError("netmiko: Authentication to device failed.")
    except RuntimeError as outer:
        err = wrap_error(outer, EP, None)
    assert isinstance(err, AuthError) and "'ops'" in str(err) and "key /k" in str(err)


def test_fingerprint_and_known_hosts_name():
    assert known_hosts_name("h", 22) == "h" and known_hosts_name("h", 2222) == "[h]:2222"
    pub = paramiko.PKey.from_type_string(
        "ssh-ed25519", __import__("base64").b64decode(
            "AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl"))
    assert fingerprint(pub).startswith("SHA256:") and len(fingerprint(pub)) == 50


def test_the_installed_paramiko_dispatches_global_requests_to_our_transport():
    """AnsweringTransport relies on paramiko building its handler table per instance, and
    on dispatching debug messages through ``self._parse_debug``."""
    import inspect

    from paramiko.common import MSG_GLOBAL_REQUEST, MSG_REQUEST_FAILURE, MSG_REQUEST_SUCCESS

    from phonehome_jump.chain import AnsweringTransport

    a, b = socket.socketpair()
    try:
        t = AnsweringTransport(a)
        handler = t._handler_table[MSG_GLOBAL_REQUEST]
        assert handler.__func__ is AnsweringTransport._parse_global_request
        for kind, ours in ((MSG_REQUEST_SUCCESS, AnsweringTransport._parse_request_success),
                           (MSG_REQUEST_FAILURE, AnsweringTransport._parse_request_failure)):
            assert t._handler_table[kind].__func__ is ours
        assert "self._parse_debug(m)" in inspect.getsource(paramiko.Transport.run)
        assert t._preferred_ciphers[0] == "aes128-gcm@openssh.com"
    finally:
        a.close()
        b.close()


def test_debug_messages_are_answered_and_logged_only_when_logging_is_on(caplog):
    from paramiko.common import cMSG_DEBUG

    from phonehome_jump.chain import AnsweringTransport

    def debug(text: bytes) -> paramiko.Message:
        m = paramiko.Message()
        m.add_byte(cMSG_DEBUG)
        m.add_boolean(False)
        m.add_string(text)
        m.add_string(b"")
        m.rewind()
        m.get_byte()
        return m

    a, b = socket.socketpair()
    try:
        t = AnsweringTransport(a)
        t._parse_debug(debug(b"key options: pty\x07"))
        assert t.answered == ("debug",) and "Debug msg" not in caplog.text
        with caplog.at_level("DEBUG", logger="paramiko.transport"):
            t._parse_debug(debug(b"key options: pty\x07"))
        assert "Debug msg: b'key options: pty%07'" in caplog.text
        b.settimeout(5)
        assert b.recv(4096)                 # the answers went out on the wire
    finally:
        a.close()
        b.close()


def test_exit_signal_is_an_exit_status_and_other_requests_reach_paramiko():
    from paramiko.common import cMSG_CHANNEL_REQUEST

    from phonehome_jump.chain import AnsweringTransport, _channel_request

    def request(kind: str, *fields: object) -> paramiko.Message:
        m = paramiko.Message()
        m.add_byte(cMSG_CHANNEL_REQUEST)
        m.add_int(7)
        m.add(kind, False, *fields)        # type, want_reply, the request's own fields
        m.rewind()
        m.get_byte()
        m.get_int()                         # what the transport reads before dispatching
        return m

    a, b = socket.socketpair()
    try:
        t = AnsweringTransport(a)
        assert t._channel_handler_table[paramiko.common.MSG_CHANNEL_REQUEST] is _channel_request
        chan = paramiko.Channel(7)
        chan._set_transport(t)
        _channel_request(chan, request("exit-signal", "TERM", False, "", ""))
        assert chan.status_event.is_set() and (chan.exit_status, chan.exit_signal) == (143, "TERM")
        chan = paramiko.Channel(7)
        chan._set_transport(t)
        _channel_request(chan, request("exit-signal", "SIGHUP", False, "", ""))
        assert (chan.exit_status, chan.exit_signal) == (129, "HUP")
        chan = paramiko.Channel(7)
        chan._set_transport(t)
        _channel_request(chan, request("exit-signal", "NOSUCH", False, "", ""))
        assert (chan.exit_status, chan.exit_signal) == (255, "NOSUCH")
        chan = paramiko.Channel(7)
        chan._set_transport(t)
        _channel_request(chan, request("exit-status", 3))
        assert chan.status_event.is_set() and chan.exit_status == 3
    finally:
        a.close()
        b.close()


def test_a_failed_tunnel_open_quotes_the_hop():
    via = Endpoint(name="jump2", host="j2", port=22, username="ops",
                   auth=Auth(None, None, None, True, None), known_hosts=Path("/kh"),
                   host_key_policy="strict", keepalive=15, connect_timeout=3.0, source="inv.yaml:3")
    exc = paramiko.ChannelException(2, "Connect failed")
    refused = wrap_error(exc, EP, via, "Connection refused")
    assert refused.reason == "refused" and "nothing listens on gw.example.net:22" in str(refused)
    assert "jump2 says: Connection refused" in str(refused)
    unreachable = wrap_error(exc, EP, via, "No route to host")
    assert unreachable.reason == "unreachable" and "No route to host" in str(unreachable)
    assert "nothing listens" not in str(unreachable)
    prohibited = wrap_error(paramiko.ChannelException(1, "Administratively prohibited"), EP, via)
    assert prohibited.reason == "forwarding" and "AllowTcpForwarding" in str(prohibited)


def test_early_eof_is_told_apart_from_auth_failures():
    from phonehome_jump.chain import early_eof
    try:
        try:
            raise EOFError()
        except EOFError:
            raise paramiko.SSHException("Error reading SSH protocol banner")
    except paramiko.SSHException as banner:
        assert early_eof(banner)
        err = wrap_error(banner, EP, None)
        assert err.reason == "closed" and "before login" in str(err) and "MaxStartups" in str(err)
    assert not early_eof(paramiko.AuthenticationException("Authentication failed."))


def test_a_transport_socket_serves_exact_reads_from_one_large_read():
    """What paramiko's packetizer asks (exact sizes) comes back byte for byte, in order,
    across the edges of the chunks it read ahead; EOF and timeouts are the socket's own."""
    import threading

    from phonehome_jump.chain import TransportSocket

    a, b = socket.socketpair()
    try:
        r = TransportSocket(a)
        r.settimeout(5)                              # delegated to the socket
        payload = bytes(range(256)) * 2000           # 512,000 bytes: more than one chunk
        writer = threading.Thread(target=b.sendall, args=(payload[:300_000],))
        writer.start()
        got, sizes = [], [16, 4, 1000, 7, 32_768, 1]
        i = 0
        while sum(map(len, got)) < 300_000:
            want = min(sizes[i % len(sizes)], 300_000 - sum(map(len, got)))
            piece = r.recv(want)
            assert 0 < len(piece) <= want
            got.append(piece)
            i += 1
        writer.join()
        assert b"".join(got) == payload[:300_000]
        r.settimeout(0.05)
        with pytest.raises(socket.timeout):          # nothing buffered, nothing sent
            r.recv(16)
        r.settimeout(5)

        def rest_then_eof() -> None:
            b.sendall(payload[300_000:])
            b.shutdown(socket.SHUT_WR)
        writer = threading.Thread(target=rest_then_eof)
        writer.start()
        rest = bytearray()
        while chunk := r.recv(5000):
            rest += chunk
        writer.join()
        assert bytes(rest) == payload[300_000:]
        assert r.recv(16) == b""                     # EOF, as the socket says it
        assert r.fileno() == a.fileno()
    finally:
        a.close()
        b.close()


def test_closing_a_tunnel_whose_hop_is_gone_is_quiet():
    """paramiko closes a transport's socket from its own thread as it ends; for a tunnel that
    is a message on the previous hop's transport, which may be gone already (EOFError)."""
    from phonehome_jump.chain import TransportSocket

    class GoneTunnel:
        closed = 0

        def close(self) -> None:
            self.closed += 1
            raise EOFError()

    tunnel = GoneTunnel()
    TransportSocket(tunnel).close()
    assert tunnel.closed == 1


class HeldTunnel:
    """A stand-in for a hop's channel whose send is held until ``go_on`` is set; it records
    what reached the wire, in order."""

    def __init__(self) -> None:
        self.wire: list[str] = []
        self.in_send = threading.Event()
        self.go_on = threading.Event()

    def send(self, data: bytes) -> int:
        self.in_send.set()
        assert self.go_on.wait(10)
        self.wire.append(f"data {data!r}")
        return len(data)

    def close(self) -> None:
        self.wire.append("close")


def test_a_transport_socket_closes_only_between_sends():
    """A close waits for a send in progress, and a send after the close starts fails as EOF:
    the hop's sshd ends the whole connection for data on a channel after our CLOSE."""
    import errno
    import threading

    from phonehome_jump.chain import TransportSocket

    tunnel = HeldTunnel()
    sock = TransportSocket(tunnel)
    sender = threading.Thread(target=sock.send, args=(b"first",))
    sender.start()
    assert tunnel.in_send.wait(10)
    closer = threading.Thread(target=sock.close)
    closer.start()
    closer.join(0.2)                # (a bound on the check, not a wait for it)
    assert closer.is_alive() and tunnel.wire == []      # the close waits for the send
    tunnel.go_on.set()
    sender.join(10)
    closer.join(10)
    assert tunnel.wire == ["data b'first'", "close"]
    with pytest.raises(OSError) as err:
        sock.send(b"late")
    assert err.value.errno == errno.EPIPE and tunnel.wire[-1] == "close"


def test_a_transport_socket_close_gives_up_on_a_send_stuck_on_its_window(monkeypatch):
    """A send waiting for a window that never opens does not hold the close for ever."""
    import threading

    from phonehome_jump.chain import TransportSocket

    entered, released = threading.Event(), threading.Event()

    class StuckTunnel:
        closed = False

        def send(self, data: bytes) -> int:
            entered.set()
            assert released.wait(10)        # paramiko's window wait ends at the close
            return 0

        def close(self) -> None:
            self.closed = True
            released.set()

    monkeypatch.setattr(TransportSocket, "CLOSE_WAIT", 0.05)
    tunnel = StuckTunnel()
    sock = TransportSocket(tunnel)
    sender = threading.Thread(target=sock.send, args=(b"x",))
    sender.start()
    assert entered.wait(10)
    sock.close()
    sender.join(10)
    assert tunnel.closed and not sender.is_alive()


def test_a_hop_servers_close_is_answered_between_two_sends_without_blocking_its_thread():
    """The hop transport's thread answers a server's CLOSE of a tunnel: at once when no send
    is under way, else (without waiting there: the send may need that thread) right after
    the send; either way no send starts after it."""
    import errno
    import threading

    from phonehome_jump.chain import TransportSocket

    idle = HeldTunnel()
    sock = TransportSocket(idle)
    sock.gate.peer_closed(lambda: idle.wire.append(f"close on {threading.current_thread().name}"))
    assert idle.wire == [f"close on {threading.current_thread().name}"]
    with pytest.raises(OSError) as err:
        sock.send(b"late")
    assert err.value.errno == errno.EPIPE

    busy = HeldTunnel()
    sock = TransportSocket(busy)
    answered = threading.Event()
    sender = threading.Thread(target=sock.send, args=(b"x",))
    sender.start()
    assert busy.in_send.wait(10)
    sock.gate.peer_closed(lambda: (busy.wire.append("close"), answered.set()))
    assert busy.wire == []                   # returned at once; the answer waits for the send
    busy.go_on.set()
    assert answered.wait(10)
    sender.join(10)
    assert busy.wire == ["data b'x'", "close"]
