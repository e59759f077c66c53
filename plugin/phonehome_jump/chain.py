"""Jump chains: one paramiko-jump ``SSHJumpClient`` per hop, shared and reference-counted.

The transport layer of the package. It dials the first hop from this machine (with
TCP_NODELAY, which paramiko never sets), tunnels each next hop through the previous
one, verifies every host key against the endpoint's known_hosts, and hands out a
``direct-tcpip`` channel to the target from the last hop. Sessions whose chains start
with the same hops share those transports; a hop closes when its last user releases it.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import os
import socket
import threading
from dataclasses import dataclass, field
from typing import Any

import paramiko
from paramiko_jump import SSHJumpClient

from .errors import AuthError, ConnectError, HostKeyError, PhonehomeJumpError
from .inventory import Endpoint

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
    which :func:`wrap_error` turns into a HostKeyError in both modes.
    """

    def __init__(self, endpoint: Endpoint, role: str = "hop") -> None:
        self.endpoint = endpoint
        self.role = role                # "hop", or "host" for the target itself

    def missing_host_key(self, client: paramiko.SSHClient, hostname: str, key: paramiko.PKey) -> None:
        ep = self.endpoint
        line = f"{hostname} {key.get_name()} {key.get_base64()}"
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
        client.get_host_keys().add(hostname, key.get_name(), key)
        log.warning("hop %r: accepted new host key %s %s into %s", ep.name, key.get_name(),
                    fingerprint(key), path)


def _hop_label(ep: Endpoint) -> str:
    return f"{ep.name} ({ep.username}@{ep.host}:{ep.port})"


def wrap_error(exc: BaseException, ep: Endpoint, via: Endpoint | None,
               role: str = "hop") -> PhonehomeJumpError:
    """Turn a socket/paramiko/netmiko failure at one hop into a ConnectError naming that hop.

    Walks ``__cause__``/``__context__`` so that library wrappers (netmiko wraps paramiko)
    still map to the precise reason.
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
            return ConnectError(
                f"{parent} could not open a tunnel to {label}: {err.text or err.code}",
                hop=ep.name, reason="forwarding", where=where,
                hint=f"check {ep.name}'s address and port from {parent}'s side, and that {parent} "
                     "allows TCP forwarding (AllowTcpForwarding)")
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
    text = str(seen[-1]).strip().splitlines()[0] if str(seen[-1]).strip() else type(seen[-1]).__name__
    reason = "closed" if isinstance(seen[-1], EOFError) else "protocol"
    return ConnectError(f"SSH to {label} failed: {text}", hop=ep.name, reason=reason, where=where,
                        hint="check that the endpoint is an SSH server and the chain before it is up")


def _auth_methods(ep: Endpoint) -> list[str]:
    a = ep.auth
    return [m for m, on in (("password", a.password), ("key " + str(a.key_file), a.key_file),
                            ("ssh-agent", a.use_agent)) if on]


def credentials(ep: Endpoint) -> dict[str, Any]:
    """Resolve the endpoint's secrets now (connect time) into paramiko/netmiko keyword values."""
    a = ep.auth
    ctx = f"{ep.name} ({ep.source})"
    return {
        "username": ep.username,
        "password": a.password.resolve(f"{ctx} password") if a.password else None,
        "key_filename": str(a.key_file) if a.key_file else None,
        "passphrase": a.passphrase.resolve(f"{ctx} passphrase") if a.passphrase else None,
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
        raise wrap_error(exc, ep, via) from exc


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


@dataclass
class Hop:
    """One live hop connection, shared by every session whose chain starts with its prefix."""

    key: HopKey
    endpoint: Endpoint
    client: SSHJumpClient
    users: int = 0
    ready: threading.Event = field(default_factory=threading.Event)
    error: PhonehomeJumpError | None = None

    @property
    def transport(self) -> paramiko.Transport:
        t = self.client.get_transport()
        assert t is not None
        return t

    @property
    def alive(self) -> bool:
        t = self.client.get_transport()
        return t is not None and t.is_active()


class HopPool:
    """Shared, counted hop connections. Thread-safe; concurrent opens of one hop connect once."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._hops: dict[HopKey, Hop] = {}

    def acquire(self, chain: tuple[Endpoint, ...]) -> list[Hop]:
        """Connect (or reuse) every hop of ``chain``; the caller must :meth:`release` the result."""
        held: list[Hop] = []
        try:
            for i, ep in enumerate(chain):
                held.append(self._acquire_one(tuple(e.key for e in chain[: i + 1]), ep,
                                              held[-1] if held else None))
        except BaseException:
            self.release(held)
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
        if ep.known_hosts.exists():
            client.load_host_keys(str(ep.known_hosts))
        client.set_missing_host_key_policy(HostKeyPolicy(ep))
        sock = dial(ep) if parent is None else None
        try:
            client.connect(hostname=ep.host, port=ep.port, sock=sock, timeout=ep.connect_timeout,
                           banner_timeout=ep.connect_timeout, auth_timeout=ep.connect_timeout,
                           look_for_keys=False, **credentials(ep))
        except BaseException as exc:
            client.close()
            if sock is not None:
                sock.close()
            if isinstance(exc, PhonehomeJumpError):
                raise
            raise wrap_error(exc, ep, parent.endpoint if parent else None) from exc
        if ep.keepalive:
            hop.transport.set_keepalive(ep.keepalive)
        _ask_for_nodelay(hop.transport, ep)
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
            hop.client.close()

    def stats(self) -> list[dict[str, Any]]:
        with self._lock:
            return [{"hop": h.endpoint.name, "users": h.users, "alive": h.alive}
                    for h in self._hops.values()]

    def close_all(self) -> None:
        with self._lock:
            hops = sorted(self._hops.values(), key=lambda h: -len(h.key))
            self._hops.clear()
        for hop in hops:
            hop.client.close()

