"""Jump chains: one paramiko-jump ``SSHJumpClient`` per hop, shared and reference-counted.

The transport layer of the package. It dials the first hop from this machine (with
TCP_NODELAY, which paramiko never sets), tunnels each next hop through the previous
one, verifies every host key against the endpoint's known_hosts, and hands out a
``direct-tcpip`` channel to the target from the last hop. Sessions whose chains start
with the same hops share those transports; a hop closes when its last user releases it.
"""

from __future__ import annotations

import base64
import errno
import hashlib
import logging
import os
import signal
import socket
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import paramiko
from paramiko.common import MSG_CHANNEL_CLOSE, MSG_CHANNEL_REQUEST, cMSG_IGNORE
from paramiko_jump import SSHJumpClient

from .errors import AuthError, ConnectError, HostKeyError, PhonehomeJumpError
from .inventory import Endpoint
from .known_hosts import KnownHosts, forget as forget_known_hosts
from .liveness import Link
from .localfiles import check_key_file, known_hosts_for

log = logging.getLogger(__name__)

HopKey = tuple[tuple[str, str, int, str], ...]


def fingerprint(key: paramiko.PKey) -> str:
    """OpenSSH-style ``SHA256:…`` fingerprint."""
    digest = base64.b64encode(hashlib.sha256(key.asbytes()).digest()).decode().rstrip("=")
    return f"SHA256:{digest}"


def known_hosts_name(host: str, port: int) -> str:
    """The name known_hosts lists an endpoint under (OpenSSH's ``[host]:port`` form off port 22)."""
    return host if port == 22 else f"[{host}]:{port}"


class HostKeyPolicy(paramiko.MissingHostKeyPolicy):
    """Unknown keys: refuse (strict) or record in known_hosts (accept-new). Never silent.

    A *changed* key never reaches this policy: paramiko raises BadHostKeyException for it,
    which :func:`wrap_error` turns into a HostKeyError in both modes. A key that known_hosts
    marks ``@revoked`` is refused in both modes.
    """

    def __init__(self, endpoint: Endpoint, known: KnownHosts | None = None,
                 role: str = "hop") -> None:
        self.endpoint = endpoint
        self.known = known
        self.role = role                # "hop", or "host" for the target itself

    def missing_host_key(self, client: paramiko.SSHClient, hostname: str, key: paramiko.PKey) -> None:
        ep = self.endpoint
        line = f"{hostname} {key.get_name()} {key.get_base64()}"
        revoked = self.known.revoked_entry(key) if self.known is not None else None
        if revoked is not None:
            raise HostKeyError(
                f"host key of {hostname} ({key.get_name()} {fingerprint(key)}) is marked "
                f"@revoked at {revoked.where}; the connection was refused",
                hop=ep.name, fingerprint=fingerprint(key), where=f"{self.role} {ep.name!r} ({ep.source})",
                hint="the host must get a new key; confirm it with the host's owner and add it "
                     f"to {ep.known_hosts}")
        if ep.host_key_policy != "accept-new":
            raise HostKeyError(
                f"host key of {hostname} is not in {ep.known_hosts} "
                f"(offered {key.get_name()} {fingerprint(key)})",
                hop=ep.name, fingerprint=fingerprint(key), where=f"{self.role} {ep.name!r} ({ep.source})",
                hint=f"verify {fingerprint(key)} with the host's owner, then append this line to "
                     f"{ep.known_hosts}: {line}  — or set host_key_policy: accept-new for first contact")
        path = ep.known_hosts
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        with os.fdopen(fd, "a") as fh:
            fh.write(line + "\n")
        forget_known_hosts(path)
        client.get_host_keys().add(hostname, key.get_name(), key)
        log.warning("hop %r: accepted new host key %s %s into %s", ep.name, key.get_name(),
                    fingerprint(key), path)


class SendGate:
    """The sends on one channel, and our CLOSE of it, in that order.

    A paramiko channel checks that it is open, lets go of its lock, and only then queues
    the message. A CLOSE from another thread could slip in between: ours (a close), or
    paramiko's answer to the server's CLOSE, sent from the transport's reader. The RFC
    allows nothing on a channel after its CLOSE: sshd frees the channel and ends the whole
    connection for the late data ("data packet referred to nonexistent channel"), every
    other channel on it with it. Each send holds ``lock``; the CLOSE goes once no send is
    under way (waiting up to ``wait`` seconds: a send stuck on a window that never opens
    is given up on, the close then wakes it and it sends nothing), and no send starts after.
    """

    def __init__(self, lock: threading.Lock | None = None, *, wait: float = 2.0) -> None:
        self.lock = lock if lock is not None else threading.Lock()
        self.wait = wait
        self.closing = False

    @contextmanager
    def sending(self) -> Iterator[None]:
        """Hold the gate for one send; OSError(EPIPE) once the channel is closing, as a
        closed socket says."""
        with self.lock:
            if self.closing:
                raise OSError(errno.EPIPE, "the channel is closing")
            yield

    @contextmanager
    def last(self, what: str) -> Iterator[None]:
        """Run the block (the close) once no send is under way; no send starts after it.
        A CLOSE is a message on its transport: when the connection went first there is
        nothing left to tell, and paramiko's thread would die on the EOFError."""
        self.closing = True
        waited = self.lock.acquire(timeout=self.wait)
        try:
            yield
        except (EOFError, OSError, paramiko.SSHException) as exc:
            log.debug("%s a channel whose connection is gone: %r", what, exc)
        finally:
            if waited:
                self.lock.release()

    def peer_closed(self, answer: Callable[[], None]) -> None:
        """The server closed the channel: ``answer`` it (paramiko sends our CLOSE) with no
        send of ours in progress, and none after it.

        This runs on the transport's own thread, which a send in progress may be waiting
        for (a window adjust to read): then the answer waits on a thread of its own.
        """
        self.closing = True
        if self.lock.acquire(blocking=False):     # never waits on this thread
            try:
                answer()
            finally:
                self.lock.release()
            return

        def after_the_send() -> None:
            with self.last("answering the close of"):
                answer()
        threading.Thread(target=after_the_send, name="phj-channel-close", daemon=True).start()


class TransportSocket:
    """A transport's socket (a TCP socket, or the previous hop's channel): read ahead in
    large chunks, and closed only between two sends.

    Reading: paramiko's packetizer asks its socket for each packet in two exact-size reads
    (the first block, then the rest). On a TCP socket that is two system calls per packet; on
    a tunnel channel two trips through the channel's locked buffer and window bookkeeping.
    Through two hops a pty's output arrives in ~4 KB packets, so that per-read cost, paid at
    every layer, was most of the client's CPU for bulk output. Reading whatever is there (up
    to 256 KiB) and serving the exact reads from it costs one read per burst. Only the
    transport's own thread reads (paramiko's rule).

    Closing: the tunnel's sends and its close go through a :class:`SendGate`. Without it the
    hop's sshd got data after our CLOSE and ended the whole hop connection, killing every
    session through that hop, when a session's login closed while its transport's thread
    was still answering the target: about one 20-host workflow run in three.
    """

    CHUNK = 1 << 18
    CLOSE_WAIT = 2.0    # seconds a close waits for a send in progress (SendGate)

    def __init__(self, sock: Any) -> None:
        self._sock = sock
        self._buf = b""
        self._pos = 0
        self.gate = SendGate(wait=self.CLOSE_WAIT)

    def recv(self, n: int) -> bytes:
        if self._pos >= len(self._buf):
            data = self._sock.recv(max(n, self.CHUNK))   # a timeout or an error: as before
            if len(data) <= n:
                return data
            self._buf, self._pos = data, 0
        end = self._pos + n
        out = self._buf[self._pos:end]
        self._pos = end
        if end >= len(self._buf):
            self._buf, self._pos = b"", 0
        return out

    def send(self, data: bytes) -> int:
        with self.gate.sending():   # EPIPE once closing: the packetizer takes it as EOF
            return self._sock.send(data)

    def close(self) -> None:
        with self.gate.last("closing"):
            self._sock.close()

    def __getattr__(self, name: str) -> Any:     # settimeout, fileno, _closed, ...
        return getattr(self._sock, name)


class OnceHandshakePacketizer(paramiko.Packetizer):
    """paramiko's packetizer, whose end-of-handshake bookkeeping runs once, not per packet.

    The transport thread calls ``complete_handshake()`` after every packet it handles; each
    call cancels the (long finished) handshake timer again: an Event set and a Condition
    notified per packet, per hop. After the first call that found the timer, there is
    nothing left to do.
    """

    _handshake_done = False

    def complete_handshake(self) -> None:
        if not self._handshake_done:
            super().complete_handshake()
            # (a paramiko without that attribute: keep calling it, as paramiko does)
            self._handshake_done = bool(getattr(self, "_Packetizer__handshake_complete", False))


def _channel_request(chan: paramiko.Channel, m: paramiko.Message) -> None:
    """paramiko's channel-request handler, plus ``exit-signal`` (RFC 4254 §6.10).

    paramiko drops ``exit-signal``, so a remote command killed by a signal looked like a
    lost connection, and callers waited seconds for a status that never came. It is
    reported as a shell reports it, 128 + the signal's number, and ``exit_signal`` names it.
    """
    start = m.packet.tell()
    if m.get_text() != "exit-signal" or chan.transport.server_mode:
        m.packet.seek(start)
        paramiko.Channel._handle_request(chan, m)
        return
    m.get_boolean()                         # want_reply: always false for exit-signal
    name = m.get_text().removeprefix("SIG")     # RFC 4254 names it without; some add it
    number = getattr(signal.Signals, "SIG" + name, None)
    chan.exit_signal = name                 # type: ignore[attr-defined]
    chan.exit_status = 128 + int(number) if number is not None else 255
    chan.status_event.set()


# A packet of a tunneled transport travels as channel data of the hop before it, which is
# cut into chunks of at most the channel's maximum packet size (paramiko: that size - 64).
# A full-size inner packet is a little bigger than a full-size chunk, so every one of them
# became a chunk and a ~50-byte leftover, and the leftover another packet on each outer
# layer: 1 → 2 → 3 packets through two hops, each decrypted by us and relayed by a sshd.
# Channels of a tunneled transport are capped so that an inner packet (header, padding up
# to 19 bytes, MAC up to 64, the channel-data header) fits one chunk of the hop's channel.
PACKET_OVERHEAD = 128


def _channel_close(chan: paramiko.Channel, m: paramiko.Message) -> None:
    """paramiko's CLOSE handler; on a channel with a :class:`SendGate` (a tunnel, a session's
    shell) our CLOSE goes between two of its sends."""
    gate = getattr(chan, "phj_gate", None)
    if gate is None:
        paramiko.Channel._handle_close(chan, m)
    else:
        gate.peer_closed(lambda: paramiko.Channel._handle_close(chan, m))


class AnsweringTransport(paramiko.Transport):
    """A client transport that answers at once every server message that wants no reply.

    Until a pty exec flips a connection to interactive, OpenSSH's sshd writes it with Nagle
    on: a small packet waits while an earlier one is unacknowledged. Right after login sshd
    sends ``hostkeys-00@openssh.com`` (no reply wanted), sometimes a debug message, and the
    answer to our first liveness probe; the client has nothing to say back to any of them,
    so its kernel delays the ACK (~40 ms), and sshd's next small packet (the confirmation of
    the first channel this client opens) waits behind it: ~45 ms per login. Answering each
    such message with an SSH_MSG_IGNORE the moment it arrives carries that ACK (through
    every hop of a tunnel, whose forwarding sshd writes it to the next socket) whatever the
    order of events, so the stall cannot happen; servers ignore the message by definition
    (RFC 4253 §11.2), and after login this costs one small packet per keepalive answer.
    """

    answered: tuple[str, ...] = ()      # kinds of requests answered so (for tests and debugging)
    _tunnel: paramiko.Channel | None = None     # the hop channel this transport runs in, if any

    # exit-signal too: a command killed by a signal ends with 128 + its number, at once
    # and a server's CLOSE of a gated channel is answered between two of its sends
    _channel_handler_table = {**paramiko.Transport._channel_handler_table,
                              MSG_CHANNEL_REQUEST: _channel_request,
                              MSG_CHANNEL_CLOSE: _channel_close}

    # AES-GCM first (paramiko lists it last): its tag is checked inside `cryptography`, while
    # the CTR ciphers' HMAC is compared byte by byte in Python, per packet and per hop: bulk
    # output through two hops costs ~30% less client CPU (README, Speed). OpenSSH has offered
    # aes*-gcm@openssh.com since 6.2; a server without it gets paramiko's usual order.
    _preferred_ciphers = tuple(sorted(paramiko.Transport._preferred_ciphers,
                                      key=lambda c: 0 if "-gcm@" in c else 1))

    def __init__(self, sock: Any, *args: Any, **kwargs: Any) -> None:
        tunnel = sock if isinstance(sock, paramiko.Channel) else None
        if hasattr(sock, "recv"):       # (paramiko also takes "host:port" or a tuple)
            sock = TransportSocket(sock)
        kwargs.setdefault("packetizer_class", OnceHandshakePacketizer)
        super().__init__(sock, *args, **kwargs)
        self._tunnel = tunnel
        if tunnel is not None:
            tunnel.phj_gate = self.sock.gate     # type: ignore[attr-defined]  # (_channel_close)
            # what the hop sends us must fit its chunks whole
            self.default_max_packet_size = min(self.default_max_packet_size,
                                               tunnel.in_max_packet_size - PACKET_OVERHEAD)

    def _parse_channel_open_success(self, m: paramiko.Message) -> None:
        start = m.packet.tell()
        chanid = m.get_int()
        m.packet.seek(start)
        super()._parse_channel_open_success(m)
        chan = self._channels.get(chanid)
        if chan is not None and self._tunnel is not None:
            # what we send through the hop must fit its chunks whole (see PACKET_OVERHEAD)
            chan.out_max_packet_size = min(chan.out_max_packet_size,
                                           self._tunnel.out_max_packet_size - PACKET_OVERHEAD)

    def _answer(self, kind: str) -> None:
        msg = paramiko.Message()
        msg.add_byte(cMSG_IGNORE)
        msg.add_string(b"")
        self._send_message(msg)
        if kind not in self.answered:
            self.answered += (kind,)

    def _parse_global_request(self, m: paramiko.Message) -> None:
        kind, want_reply = "", True
        if not self.server_mode:
            kind, want_reply = m.get_text(), m.get_boolean()
            m.rewind()
        super()._parse_global_request(m)
        if not want_reply:                  # a wanted reply already carries the ACK
            self._answer(kind)

    # the answers to our own liveness probes (the first goes out right after login)
    def _parse_request_success(self, m: paramiko.Message) -> None:
        super()._parse_request_success(m)
        self._answer("request-success")

    def _parse_request_failure(self, m: paramiko.Message) -> None:
        super()._parse_request_failure(m)
        self._answer("request-failure")

    def _parse_debug(self, m: paramiko.Message) -> None:
        # paramiko's own escapes the text byte by byte even when nobody logs it (every login:
        # sshd reports the key's options so): the same record, only when it is logged
        m.get_boolean()                     # always_display
        text = m.get_string()
        m.get_string()                      # language
        if self.logger.isEnabledFor(logging.DEBUG):
            self._log(logging.DEBUG, f"Debug msg: {paramiko.util.safe_string(text)!r}")
        self._answer("debug")


class AnsweringSSHClient(paramiko.SSHClient):
    """paramiko's client on an :class:`AnsweringTransport` (netmiko builds the target's client)."""

    def connect(self, *args: Any, **kwargs: Any) -> None:   # type: ignore[override]
        kwargs.setdefault("transport_factory", AnsweringTransport)
        super().connect(*args, **kwargs)


def _hop_label(ep: Endpoint) -> str:
    return f"{ep.name} ({ep.username}@{ep.host}:{ep.port})"


def keep_open_failure_reasons(transport: paramiko.Transport) -> None:
    """Keep the text a hop sends when it cannot open a tunnel ("Connection refused", "No
    route to host"): paramiko logs it, then raises ChannelException with only the code."""
    table = getattr(transport, "_handler_table", None)
    original = table.get(paramiko.common.MSG_CHANNEL_OPEN_FAILURE) if isinstance(table, dict) else None
    if original is None:         # another paramiko layout: the code alone still says enough
        return

    def parse(m: paramiko.Message) -> None:
        try:
            m.get_int()
            m.get_int()
            transport._phj_open_failure = m.get_text()    # type: ignore[attr-defined]
        except Exception:  # a malformed message: paramiko's own parser deals with it
            pass
        m.rewind()
        original(m)
    table[paramiko.common.MSG_CHANNEL_OPEN_FAILURE] = parse


def open_failure_reason(transport: Any) -> str | None:
    """The hop's text for its last failed tunnel open, if it gave one."""
    return getattr(transport, "_phj_open_failure", None) or None


def wrap_error(exc: BaseException, ep: Endpoint, via: Endpoint | None,
               detail: str | None = None, role: str = "hop") -> PhonehomeJumpError:
    """Turn a socket/paramiko/netmiko failure at one hop into a ConnectError naming that hop.

    Walks ``__cause__``/``__context__`` so that library wrappers (netmiko wraps paramiko)
    still map to the precise reason. ``detail``: the previous hop's reason text for a failed
    tunnel open.
    """
    seen: list[BaseException] = []
    cur: BaseException | None = exc
    while cur is not None and cur not in seen:
        if isinstance(cur, PhonehomeJumpError):
            return cur
        seen.append(cur)
        cur = cur.__cause__ or cur.__context__
    where = f"{role} {ep.name!r} ({ep.source})"   # role: "host" when ep is the target
    label = _hop_label(ep)
    for err in seen:
        if isinstance(err, paramiko.BadHostKeyException):
            got, expected = fingerprint(err.key), fingerprint(err.expected_key)
            return HostKeyError(
                f"host key of {label} CHANGED: offered {got}, {ep.known_hosts} has {expected}. "
                "This may be a man-in-the-middle; the connection was refused",
                hop=ep.name, fingerprint=got, where=where,
                hint=f"if the host was rebuilt, confirm {got} with its owner, then run "
                     f"ssh-keygen -R {known_hosts_name(ep.host, ep.port)} -f {ep.known_hosts} and "
                     "add the new key")
        if isinstance(err, paramiko.AuthenticationException):
            how = ", ".join(_auth_methods(ep)) or "no method configured"
            return AuthError(f"authentication as {ep.username!r} to {label} failed (tried: {how})",
                             hop=ep.name, where=where,
                             hint="check the username and the credentials entry's password/key "
                                  "reference; the server's auth log says which method it refused")
        if isinstance(err, paramiko.ChannelException):
            parent = via.name if via else "the previous hop"
            if err.code == paramiko.OPEN_FAILED_CONNECT_FAILED:
                # the hop tried and its connect failed: refused, unreachable or timed out
                said = (detail or "").strip()
                if said.lower() == "connection refused":
                    return ConnectError(
                        f"{parent} could not connect to {label}: nothing listens on "
                        f"{ep.host}:{ep.port} ({parent} says: {said})", hop=ep.name,
                        reason="refused", where=where,
                        hint=f"is sshd running on {ep.host}, on port {ep.port}? check the port "
                             "in the inventory")
                if said:
                    return ConnectError(
                        f"{parent} could not connect to {label}: {said}", hop=ep.name,
                        reason="unreachable", where=where,
                        hint=f"check the address {ep.host} and routing/firewalls between "
                             f"{parent} and it")
                return ConnectError(
                    f"{parent} could not connect to {label}: nothing listens on "
                    f"{ep.host}:{ep.port} as seen from {parent} (connection refused), or it "
                    "is unreachable from there", hop=ep.name, reason="refused", where=where,
                    hint=f"is sshd running on {ep.host}, on port {ep.port}? check the address "
                         f"and port, and routing/firewalls between {parent} and it")
            return ConnectError(
                f"{parent} could not open a tunnel to {label}: {err.text or err.code}",
                hop=ep.name, reason="forwarding", where=where,
                hint=f"check that {parent} allows TCP forwarding to {ep.host}:{ep.port} "
                     "(AllowTcpForwarding, PermitOpen)")
        if isinstance(err, socket.gaierror):
            return ConnectError(f"cannot resolve {ep.host!r} ({err.strerror})", hop=ep.name,
                                reason="dns", where=where,
                                hint="check the host name in the inventory or this machine's DNS")
        if isinstance(err, ConnectionRefusedError):
            return ConnectError(f"{label} refused the connection", hop=ep.name, reason="refused",
                                where=where, hint="is sshd running there, on that port?")
        if isinstance(err, (socket.timeout, TimeoutError)):
            return ConnectError(f"timed out reaching {label} after {ep.connect_timeout:g}s",
                                hop=ep.name, reason="timeout", where=where,
                                hint="check the address and firewalls, or raise connect_timeout")
        if isinstance(err, OSError) and err.errno is not None:
            return ConnectError(f"cannot reach {label}: {err.strerror}", hop=ep.name,
                                reason="refused", where=where, hint="check the address and routing")
    if early_eof(exc):
        return ConnectError(
            f"{label} closed the connection before login (no SSH banner or key exchange): the "
            "server refused a new connection", hop=ep.name, reason="closed", where=where,
            hint="sshd drops new connections while too many logins are in progress "
                 "(MaxStartups), and when it is overloaded or a TCP wrapper refuses us; check "
                 "that the endpoint is an SSH server and its auth log")
    text = str(seen[-1]).strip().splitlines()[0] if str(seen[-1]).strip() else type(seen[-1]).__name__
    reason = "closed" if isinstance(seen[-1], EOFError) else "protocol"
    return ConnectError(f"SSH to {label} failed: {text}", hop=ep.name, reason=reason, where=where,
                        hint="check that the endpoint is an SSH server and the chain before it is up")


def early_eof(exc: BaseException) -> bool:
    """True when the server closed before authentication (no banner, or EOF in key exchange).

    That is what sshd does past MaxStartups, so such an open is worth another try.
    """
    cur: BaseException | None = exc
    seen = []
    while cur is not None and cur not in seen:
        seen.append(cur)
        if isinstance(cur, paramiko.AuthenticationException):
            return False
        if isinstance(cur, EOFError) or "protocol banner" in str(cur) or isinstance(
                cur, ConnectionResetError):
            return True
        cur = cur.__cause__ or cur.__context__
    return False


def _auth_methods(ep: Endpoint) -> list[str]:
    a = ep.auth
    return [m for m, on in (("password", a.password), ("key " + str(a.key_file), a.key_file),
                            ("ssh-agent", a.use_agent)) if on]


def credentials(ep: Endpoint) -> dict[str, Any]:
    """Resolve the endpoint's secrets now (connect time) into paramiko/netmiko keyword values."""
    a = ep.auth
    ctx = f"{ep.name} ({ep.source})"
    passphrase = a.passphrase.resolve(f"{ctx} passphrase") if a.passphrase else None
    check_key_file(ep, passphrase)     # a bad key file is named, not taken for a network fault
    return {
        "username": ep.username,
        "password": a.password.resolve(f"{ctx} password") if a.password else None,
        "key_filename": str(a.key_file) if a.key_file else None,
        "passphrase": passphrase,
        "allow_agent": a.use_agent,
    }


def dial(ep: Endpoint) -> socket.socket:
    """TCP to the first hop (or a direct target), with TCP_NODELAY for small interactive writes."""
    try:
        sock = socket.create_connection((ep.host, ep.port), timeout=ep.connect_timeout)
    except OSError as exc:
        raise wrap_error(exc, ep, None) from exc
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def open_tunnel(transport: paramiko.Transport, ep: Endpoint, via: Endpoint) -> paramiko.Channel:
    """A direct-tcpip channel from ``via``'s transport to ``ep``."""
    try:
        return transport.open_channel("direct-tcpip", (ep.host, ep.port), ("127.0.0.1", 0),
                                      timeout=ep.connect_timeout)
    except Exception as exc:  # paramiko raises ChannelException, SSHException, EOFError
        if "Timeout opening channel" in str(exc) and transport.is_active():
            raise ConnectError(
                f"{via.name} did not finish opening a tunnel to {_hop_label(ep)} within "
                f"{ep.connect_timeout:g}s", hop=ep.name, reason="timeout",
                where=f"hop {ep.name!r} ({ep.source})",
                hint=f"{ep.host}:{ep.port} may drop connections from {via.name} (firewall), or "
                     f"{via.name} is slow; check the path, or raise connect_timeout") from exc
        raise wrap_error(exc, ep, via, open_failure_reason(transport)) from exc


def _ask_for_nodelay(transport: paramiko.Transport, ep: Endpoint) -> None:
    """Make the hop's sshd send small packets at once.

    OpenSSH turns Nagle off on a connection only when a session on it gets a pty; a
    connection that only forwards keeps it on, and Nagle against the peer's delayed ACK
    holds the last packet of an output (the prompt) for ~40 ms per hop. One short pty
    exec flips the connection to interactive for its lifetime. A hop that refuses it
    still works, just slower for bulk output.
    """
    try:
        chan = transport.open_session(timeout=ep.connect_timeout)
        try:
            chan.get_pty(term="dumb", width=80, height=24)
            chan.exec_command("true")
        finally:
            chan.close()
    except Exception as exc:  # a restricted jump host: forwarding still works
        log.debug("hop %r refused a pty session (%s); bulk output may lag", ep.name, exc)


def diagnose(hops: list["Hop"], target_name: str) -> ConnectError | None:
    """After an open through ``hops`` failed: the first hop that is down or does not answer.

    A tunnel that times out or a login cut short says little by itself; the hop before the
    target may be silently dead (then the target would be blamed) or have just died (EOF).
    Each hop, first hop first, is asked to answer a probe now.
    """
    for hop in hops:
        ep, link = hop.endpoint, hop.link
        where = f"hop {ep.name!r} ({ep.source})"
        if link is None:
            if not hop.alive:
                return ConnectError(f"hop {ep.name!r} ({_hop_label(ep)}) is down; opening "
                                    f"{target_name} through it failed", hop=ep.name,
                                    reason="closed", where=where,
                                    hint="open again once the hop is back up")
            continue
        why = link.failure()
        if why is None:
            wait = min(ep.connect_timeout, 5.0)
            if not link.check(wait):
                link.declare_down(f"did not answer a keepalive within {wait:g}s while a session "
                                  f"to {target_name} was being opened through it (a silent "
                                  "drop on the path: firewall, cable, VPN, or the host hung)")
                why = link.failure()
        if why is not None:
            return ConnectError(f"{why}; opening {target_name} through it failed", hop=ep.name,
                                reason="dead" if link.down else "closed", where=where,
                                hint=f"check {ep.name} and the path to it, then open again "
                                     "(the hop is dialed anew)")
    return None


# A stock sshd drops new connections at random once 10 are unauthenticated (MaxStartups
# 10:30:100). Logins to one target are paced under that; a drop still gets retried.
LOGINS_PER_TARGET = 8
_gates: dict[tuple[Any, ...], threading.BoundedSemaphore] = {}
_gates_lock = threading.Lock()


def login_gate(chain: tuple[Endpoint, ...], target: Endpoint) -> threading.BoundedSemaphore:
    """The semaphore that paces concurrent logins to one target (as reached by its chain)."""
    key = (tuple(e.key for e in chain), target.host, target.port)
    with _gates_lock:
        gate = _gates.get(key)
        if gate is None:
            gate = _gates[key] = threading.BoundedSemaphore(LOGINS_PER_TARGET)
        return gate


@dataclass
class Hop:
    """One live hop connection, shared by every session whose chain starts with its prefix."""

    key: HopKey
    endpoint: Endpoint
    client: SSHJumpClient
    users: int = 0
    ready: threading.Event = field(default_factory=threading.Event)
    error: PhonehomeJumpError | None = None
    link: Link | None = None          # liveness probe; says why the hop is down
    nodelay_asked: bool = False       # the pty `true` was sent (only to connections that forward)
    _nodelay_lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def transport(self) -> paramiko.Transport:
        t = self.client.get_transport()
        assert t is not None
        return t

    @property
    def alive(self) -> bool:
        t = self.client.get_transport()
        return t is not None and t.is_active() and (self.link is None or self.link.down is None)

    def forwarding(self) -> None:
        """This connection forwards to a next hop or a target: ask its sshd, once, to send
        small packets at once (see :func:`_ask_for_nodelay`), in the background, so the next
        login need not wait for it (bulk output after the first milliseconds is what it fixes)."""
        with self._nodelay_lock:
            if self.nodelay_asked:
                return
            self.nodelay_asked = True
        threading.Thread(target=_ask_for_nodelay, args=(self.transport, self.endpoint),
                         name=f"phj-nodelay-{self.endpoint.name}", daemon=True).start()

    def close(self) -> None:
        if self.link is not None:
            self.link.stop()
        self.client.close()


class HopPool:
    """Shared, counted hop connections. Thread-safe; concurrent opens of one hop connect once."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._hops: dict[HopKey, Hop] = {}

    def acquire(self, chain: tuple[Endpoint, ...], *, target: bool = False) -> list[Hop]:
        """Connect (or reuse) every hop of ``chain``; the caller must :meth:`release` the result.

        ``target``: the last endpoint is the login target itself (an exec channel, a terminal,
        a file copy), not a hop: it is not sent the hop's pty ``true`` (a network device
        would take it for a command, and some serve one session per connection).
        """
        held: list[Hop] = []
        try:
            for i, ep in enumerate(chain):
                hop = self._acquire_one(tuple(e.key for e in chain[: i + 1]), ep,
                                        held[-1] if held else None)
                held.append(hop)
                if not (target and i == len(chain) - 1):
                    hop.forwarding()
        except BaseException as exc:
            blame = None
            if (held and isinstance(exc, ConnectError)
                    and exc.reason in ("timeout", "protocol", "closed")):
                # a hop that timed out or closed may only be behind a dead one already up
                blame = diagnose(held, chain[len(held)].name)
            self.release(held)
            if blame is not None:
                raise blame from exc
            raise
        return held

    def _acquire_one(self, key: HopKey, ep: Endpoint, parent: Hop | None) -> Hop:
        with self._lock:
            hop = self._hops.get(key)
            if hop is not None and hop.ready.is_set() and (hop.error or not hop.alive):
                self._hops.pop(key)          # dead or failed: forget it and dial again
                hop = None
            owner = hop is None
            if owner:
                hop = self._hops[key] = Hop(key, ep, SSHJumpClient(jump_session=parent.client if parent else None))
            hop.users += 1
        if owner:
            try:
                self._connect(hop, parent)
            except PhonehomeJumpError as exc:
                hop.error = exc
            except Exception as exc:
                hop.error = wrap_error(exc, ep, parent.endpoint if parent else None)
            finally:
                hop.ready.set()
        else:
            hop.ready.wait()
        if hop.error is not None:
            self.release([hop])
            raise hop.error
        return hop

    def _connect(self, hop: Hop, parent: Hop | None) -> None:
        ep, client = hop.endpoint, hop.client
        known = known_hosts_for(ep)           # parsed like OpenSSH: markers, bad lines skipped
        known.install(client, ep.host, ep.port)
        client.set_missing_host_key_policy(HostKeyPolicy(ep, known))
        creds = credentials(ep)               # local file problems before any packet
        sock = dial(ep) if parent is None else None
        try:
            client.connect(hostname=ep.host, port=ep.port, sock=sock, timeout=ep.connect_timeout,
                           banner_timeout=ep.connect_timeout, auth_timeout=ep.connect_timeout,
                           look_for_keys=False, transport_factory=AnsweringTransport,
                           **creds)
        except BaseException as exc:
            client.close()
            if sock is not None:
                sock.close()
            if isinstance(exc, PhonehomeJumpError):
                raise
            raise wrap_error(exc, ep, parent.endpoint if parent else None,
                             open_failure_reason(parent.transport) if parent else None) from exc
        keep_open_failure_reasons(hop.transport)
        outer = [h.link for h in self._chain_of(hop) if h.link is not None]
        hop.link = Link("hop", ep.name, f"{ep.username}@{ep.host}:{ep.port}", hop.transport,
                        interval=ep.keepalive, count=ep.keepalive_count, outer=outer,
                        on_down=hop.client.close).start()
        log.debug("hop %s up", _hop_label(ep))

    def release(self, hops: list[Hop]) -> None:
        """Drop one use of each hop; close those nobody uses any more, deepest first."""
        to_close: list[Hop] = []
        with self._lock:
            for hop in reversed(hops):
                hop.users -= 1
                if hop.users <= 0:
                    if self._hops.get(hop.key) is hop:
                        del self._hops[hop.key]
                    to_close.append(hop)
        for hop in to_close:
            hop.close()

    def _chain_of(self, hop: Hop) -> list[Hop]:
        """The hops before ``hop`` in its chain, first hop first."""
        with self._lock:
            return [h for i in range(1, len(hop.key))
                    if (h := self._hops.get(hop.key[:i])) is not None]

    def stats(self) -> list[dict[str, Any]]:
        with self._lock:
            return [{"hop": h.endpoint.name, "users": h.users, "alive": h.alive}
                    for h in self._hops.values()]

    def close_all(self) -> None:
        with self._lock:
            hops = sorted(self._hops.values(), key=lambda h: -len(h.key))
            self._hops.clear()
        for hop in hops:
            hop.close()

