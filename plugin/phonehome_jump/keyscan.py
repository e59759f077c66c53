"""Every host key on the way to some targets, at once: ``inventory check --keys``.

With ``host_key_policy: strict`` a first contact fails at the first hop whose key is not in
known_hosts, so a chain of two bastions and a target needs three failed runs to learn its
three keys. This walks each chain hop by hop: a known key is checked as a session would; an
unknown one is shown (type and SHA256 fingerprint) and, only if the person confirms it, trusted
in memory for the rest of the walk so the next hop can be reached and shown too. A changed
key stops that chain. Nothing is written unless asked (``write``), and then only confirmed keys.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paramiko
from paramiko_jump import SSHJumpClient

from .chain import credentials, dial, fingerprint, known_hosts_name, open_tunnel, wrap_error
from .known_hosts import forget
from .localfiles import known_hosts_for
from .errors import PhonehomeJumpError
from .inventory import Endpoint, Inventory

#: The person's answer for an unknown key: True trusts it for this walk (and a later write).
Confirm = Callable[[Endpoint, str, paramiko.PKey], bool]


@dataclass
class KeyReport:
    """One endpoint's host key: ok, missing, changed, unconfirmed, unreachable or not reached."""

    endpoint: Endpoint
    role: str                           # hop | host
    status: str
    key_type: str | None = None
    fingerprint: str | None = None
    line: str | None = None             # the known_hosts line to add (missing, confirmed or not)
    confirmed: bool = False
    detail: str | None = None
    key: Any = field(default=None, repr=False)   # the offered key (to go on through this hop)

    @property
    def label(self) -> str:
        ep = self.endpoint
        return f"{self.role} {ep.name} ({ep.username}@{ep.host}:{ep.port})"


@dataclass
class _Reached:
    client: Any                         # an authenticated SSH client, to tunnel the next hop


@dataclass
class Scan:
    reports: list[KeyReport] = field(default_factory=list)
    _reached: dict[tuple[Any, ...], _Reached | None] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return all(r.status == "ok" for r in self.reports)

    def close(self) -> None:
        for reached in reversed(list(self._reached.values())):
            if reached is not None:
                reached.client.close()


def _offered_key(ep: Endpoint, parent: Any, via: Endpoint | None) -> paramiko.PKey:
    """The key the endpoint offers (no authentication, nothing trusted yet)."""
    sock = (open_tunnel(parent.get_transport(), ep, via) if parent is not None and via
            else dial(ep))
    transport = paramiko.Transport(sock)
    try:
        transport.start_client(timeout=ep.connect_timeout)
        return transport.get_remote_server_key()
    except paramiko.SSHException as exc:
        raise wrap_error(exc, ep, via) from exc
    finally:
        transport.close()


def _login(ep: Endpoint, parent: Any, key: paramiko.PKey, via: Endpoint | None) -> Any:
    """Authenticate to ``ep`` trusting exactly ``key`` (known or just confirmed)."""
    client = SSHJumpClient(jump_session=parent)
    name = known_hosts_name(ep.host, ep.port)
    client.get_host_keys().add(name, key.get_name(), key)
    client.set_missing_host_key_policy(paramiko.RejectPolicy())
    sock = dial(ep) if parent is None else None
    try:
        client.connect(hostname=ep.host, port=ep.port, sock=sock, timeout=ep.connect_timeout,
                       banner_timeout=ep.connect_timeout, auth_timeout=ep.connect_timeout,
                       look_for_keys=False, **credentials(ep))
    except BaseException as exc:
        client.close()
        if isinstance(exc, PhonehomeJumpError):
            raise
        raise wrap_error(exc, ep, via) from exc
    return client


def scan(inventory: Inventory, hosts: Sequence[str], confirm: Confirm) -> Scan:
    """Walk the chains of ``hosts`` (inventory names); each endpoint is reported once."""
    result = Scan()
    seen: dict[tuple[Any, ...], KeyReport] = {}
    try:
        for name in hosts:
            target = inventory.target(name)
            path: tuple[Any, ...] = ()
            parent: Any = None
            endpoints = [*target.chain, target.endpoint]
            via: Endpoint | None = None
            for i, ep in enumerate(endpoints):
                path += (ep.key,)
                last = i == len(endpoints) - 1
                report = seen.get(path)
                if report is None:
                    report = seen[path] = _check(ep, "host" if last else "hop", parent, via,
                                                 confirm)
                    result.reports.append(report)
                    if not last:
                        result._reached[path] = _go_on(report, ep, parent, via)
                if last:
                    break
                reached = result._reached.get(path)
                if reached is None:             # this chain stops here: say what is behind
                    rpath = path
                    for j in range(i + 1, len(endpoints)):
                        rpath += (endpoints[j].key,)
                        if rpath not in seen:
                            seen[rpath] = KeyReport(
                                endpoints[j], "host" if j == len(endpoints) - 1 else "hop",
                                "not reached",
                                detail=f"behind {ep.name}: " + (report.detail or report.status))
                            result.reports.append(seen[rpath])
                    break
                parent, via = reached.client, ep
    except BaseException:
        result.close()
        raise
    return result


def _go_on(report: KeyReport, ep: Endpoint, parent: Any, via: Endpoint | None) -> _Reached | None:
    """Log in to a hop whose key is known or confirmed, to reach the next one."""
    if report.status not in ("ok", "missing"):
        return None
    if report.status == "missing" and not report.confirmed:
        report.detail = report.detail or "its key is not confirmed"
        return None
    try:
        return _Reached(_login(ep, parent, report.key, via))
    except PhonehomeJumpError as err:
        report.detail = f"logging in to go on failed: {err.what}"
        return None


def _check(ep: Endpoint, role: str, parent: Any, via: Endpoint | None,
           confirm: Confirm) -> KeyReport:
    try:
        key = _offered_key(ep, parent, via)
    except PhonehomeJumpError as err:
        return KeyReport(ep, role, "unreachable", detail=err.what)
    fp = fingerprint(key)
    name = known_hosts_name(ep.host, ep.port)
    line = f"{name} {key.get_name()} {key.get_base64()}"
    report = KeyReport(ep, role, "ok", key.get_name(), fp, key=key)
    try:
        known = known_hosts_for(ep)      # read as sessions read it (markers, hashed names)
    except PhonehomeJumpError as err:
        return KeyReport(ep, role, "unreadable known_hosts", detail=err.what)
    revoked = known.revoked_entry(key)
    if revoked is not None:
        report.status, report.detail = "revoked", f"marked @revoked at {revoked.where}"
        return report
    entries = known.host_entries(ep.host, ep.port)
    if any(e.key == key for e in entries):
        return report
    same_type = [e for e in entries if e.key.get_name() == key.get_name()]
    if same_type:
        report.status = "changed"
        report.detail = (f"{ep.known_hosts} has {fingerprint(same_type[0].key)} "
                         f"({same_type[0].where}): this may be a man-in-the-middle; nothing "
                         "behind it was contacted")
        return report
    report.status, report.line = "missing", line
    report.confirmed = bool(confirm(ep, role, key))
    return report


def write_lines(reports: Sequence[KeyReport]) -> dict[Path, int]:
    """Append the confirmed missing keys to each endpoint's known_hosts (mode 0600)."""
    written: dict[Path, int] = {}
    for r in reports:
        if r.status == "missing" and r.confirmed and r.line:
            path = r.endpoint.known_hosts
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            with os.fdopen(fd, "a") as fh:
                fh.write(r.line + "\n")
            forget(path)                    # sessions in this process re-read it
            written[path] = written.get(path, 0) + 1
    return written
