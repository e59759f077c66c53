"""One authenticated SSH connection to a target, and the shells opened on it.

netmiko logs in over the chain's tunnel (device types, login quirks) and opens the first
shell. A POSIX target's connection can then carry more shells, one channel each, like
OpenSSH's ControlMaster: a second session to the same host costs a channel, a pty and a
shell instead of a key exchange, an authentication and a new sshd process (on a lab target
about 15 ms of the server's CPU per login). The manager decides who may share (sessions of
one host and one owner); a server that refuses another channel (sshd's MaxSessions, 10 by
default) gets a new login instead.

A network device keeps one login per session: many serve one shell per connection.
"""

from __future__ import annotations

import struct
import threading
from collections.abc import Callable
from typing import Any

import paramiko
from paramiko.common import cMSG_CHANNEL_REQUEST

from .chain import AnsweringSSHClient, HostKeyPolicy, credentials
from .inventory import Target
from .liveness import Link

PTY_WIDTH = 4096              # wide, so programs do not wrap or truncate output
PTY_HEIGHT = 1000

# RFC 4254 §8 terminal modes for a POSIX session's pty: no echo, no CR/LF translation, no
# line editing by the terminal (the sentinel framing needs all three). Asked for in the
# pty request, sshd sets them before the shell starts, so no `stty` process runs per
# session; a server that ignores them is found at setup and gets the `stty` (framing.py).
_ECHO, _ICANON, _ONLCR, _TTY_OP_END = 53, 51, 72, 0
QUIET_MODES = b"".join(struct.pack(">BI", op, 0) for op in (_ECHO, _ICANON, _ONLCR)) + bytes([_TTY_OP_END])


def quiet_shell(transport: paramiko.Transport, *, timeout: float | None = None,
                term: str = "vt100", width: int = PTY_WIDTH,
                height: int = PTY_HEIGHT) -> paramiko.Channel:
    """A shell channel on a pty with :data:`QUIET_MODES` (paramiko's ``get_pty`` always sends
    no modes, so the pty request is written here).

    Raises paramiko's errors: ``ChannelException`` when the server refuses the channel
    (MaxSessions), ``SSHException`` when it refuses the pty or the shell.
    """
    chan = transport.open_session(timeout=timeout)
    try:
        m = paramiko.Message()
        m.add_byte(cMSG_CHANNEL_REQUEST)
        m.add_int(chan.remote_chanid)
        m.add_string("pty-req")
        m.add_boolean(True)
        m.add_string(term)
        m.add_int(width)
        m.add_int(height)
        m.add_int(0)
        m.add_int(0)
        m.add_string(QUIET_MODES)
        chan._event_pending()
        transport._send_user_message(m)
        chan._wait_for_event()
        chan.invoke_shell()
    except BaseException:
        chan.close()
        raise
    return chan


class QuietShellClient(AnsweringSSHClient):
    """The client netmiko logs in to a POSIX target with: its first shell is a quiet one."""

    def invoke_shell(self, term: str = "vt100", width: int = 80, height: int = 24,
                     width_pixels: int = 0, height_pixels: int = 0,
                     environment: dict[str, str] | None = None) -> paramiko.Channel:
        transport = self.get_transport()
        assert transport is not None
        return quiet_shell(transport, term=term, width=width, height=height)


class Login:
    """One login to a target: its netmiko connection, its liveness link and its users."""

    def __init__(self, target: Target, conn: Any, link: Link, *, posix: bool) -> None:
        self.target = target
        self._conn = conn                 # netmiko connection; never leaves the core
        self.posix = posix                # its sessions type their own `exit`: no netmiko cleanup
        self.link = link
        self.users = 1                    # sessions whose shell runs on this connection
        self.full = False                 # the server refused another channel on it
        self._lock = threading.Lock()

    @classmethod
    def connect(cls, target: Target, sock: Any, *, posix: bool,
                logged_in: Callable[[], None] | None = None,
                outer: list[Link] | tuple[Link, ...] = ()) -> "Login":
        """Log in to ``target`` over ``sock`` (a tunnel channel or a TCP socket).

        ``posix``: its shell gets the sentinel framing (a quiet pty, shells shared; else a
        network device's terminal as netmiko asks for it). ``logged_in`` is called once
        authentication is done (the caller paces logins up to there); ``outer`` are the
        liveness links of the hops before it, first hop first. Errors are paramiko's and
        netmiko's own: the caller names the hop.
        """
        from netmiko import ConnectHandler   # heavy import, only when a session opens

        from .localfiles import known_hosts_for
        ep = target.endpoint
        known = known_hosts_for(ep)          # parsed like OpenSSH (markers, bad lines skipped)
        creds = credentials(ep)
        conn = ConnectHandler(
            device_type=target.device_type, host=ep.host, port=ep.port, sock=sock,
            username=creds["username"], password=creds["password"] or "",
            use_keys=bool(creds["key_filename"]), key_file=creds["key_filename"],
            passphrase=creds["passphrase"], allow_agent=creds["allow_agent"],
            ssh_strict=True, system_host_keys=False, alt_host_keys=False,
            conn_timeout=ep.connect_timeout,
            auth_timeout=ep.connect_timeout, banner_timeout=ep.connect_timeout,
            keepalive=0, fast_cli=True, auto_connect=False)   # liveness: our own probe
        conn.key_policy = HostKeyPolicy(ep, known, role="host")   # strict or accept-new, and @revoked
        # netmiko's hook for the client class: no post-login stall on the target either
        conn._get_ssh_client_instance = QuietShellClient if posix else AnsweringSSHClient
        build = conn._build_ssh_client

        def build_with_known_hosts() -> paramiko.SSHClient:
            client = build()
            known.install(client, ep.host, ep.port)
            return client
        conn._build_ssh_client = build_with_known_hosts   # our parser, not paramiko's
        params = conn._connect_params_dict

        def only_the_inventorys_key() -> dict[str, Any]:
            # netmiko sets look_for_keys = use_keys: a refused key_file would be followed
            # by this machine's own ~/.ssh/id_* keys. Only the inventory's key is offered.
            return {**params(), "look_for_keys": False}
        conn._connect_params_dict = only_the_inventorys_key
        conn.establish_connection(width=PTY_WIDTH, height=PTY_HEIGHT)
        if logged_in is not None:
            logged_in()
        transport = conn.remote_conn.get_transport()
        link = Link("target", target.name, f"{ep.username}@{ep.host}:{ep.port}", transport,
                    interval=ep.keepalive, count=ep.keepalive_count, outer=outer,
                    on_down=transport.close).start()
        return cls(target, conn, link, posix=posix)

    @property
    def conn(self) -> Any:
        """netmiko's connection (a network device's session preparation needs it)."""
        return self._conn

    @property
    def first_channel(self) -> paramiko.Channel:
        """The shell netmiko opened at login."""
        return self._conn.remote_conn

    @property
    def alive(self) -> bool:
        t = self.link.transport
        return t is not None and t.is_active() and self.link.down is None

    def share(self) -> bool:
        """Count one more session on this connection, if it can still take one."""
        with self._lock:
            if self.full or self.users <= 0 or not self.alive:
                return False
            self.users += 1
            return True

    def shell(self) -> paramiko.Channel:
        """A new quiet shell channel on this connection (:func:`quiet_shell`'s errors)."""
        return quiet_shell(self.link.transport, timeout=self.target.endpoint.connect_timeout)

    def release(self) -> None:
        """One session is done with this connection; the last one closes it."""
        with self._lock:
            self.users -= 1
            last = self.users == 0
        if not last:
            return
        self.link.stop()
        if self.posix:
            # a POSIX shell has no config mode to leave: netmiko's Linux cleanup would spend a
            # round trip asking (an Enter and its prompt) before its `exit`
            self._conn.cleanup = lambda *args, **kwargs: None
        try:
            self._conn.disconnect()
        except Exception:  # already gone; nothing to report to the caller
            pass
