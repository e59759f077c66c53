"""Meeting engineers where their hosts already are: other tools' inventories in and out.

Importers (``ssh_config``, ``ansible``, ``nornir``) build a :class:`Draft` — the inventory
sections as plain data plus notes on what could not be carried over — and the draft is
written as YAML that ``inventory check`` accepts. Nothing is silently dropped: every
setting left behind becomes a note, written as a comment in the YAML and on stderr.
Secrets are never written: a literal password becomes an ``env:`` reference, named in a note.

``export`` goes the other way (an inventory to an OpenSSH config).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from typing import Any

import yaml

from ..errors import InventoryError
from ..yamlload import YamlProblem, parse_yaml

__all__ = ["Draft", "Note", "device_type_for", "env_name", "jump_name", "load_yaml",
           "parse_jump"]


@dataclass(frozen=True)
class Note:
    """Something the importer could not carry over, and where it came from."""

    where: str          # file:line, or file and host
    what: str

    def __str__(self) -> str:
        return f"{self.where}: {self.what}"


@dataclass
class Draft:
    """An inventory being built by an importer (sections as plain dicts, in insertion order)."""

    source: str
    defaults: dict[str, Any] = field(default_factory=dict)
    credentials: dict[str, dict[str, Any]] = field(default_factory=dict)
    jump_hosts: dict[str, dict[str, Any]] = field(default_factory=dict)
    groups: dict[str, dict[str, Any]] = field(default_factory=dict)
    hosts: dict[str, dict[str, Any]] = field(default_factory=dict)
    notes: list[Note] = field(default_factory=list)

    def note(self, where: str, what: str) -> None:
        n = Note(where, what)
        if n not in self.notes:
            self.notes.append(n)

    def credential(self, username: str | None, *, key_file: str | None = None,
                   password_env: str | None = None) -> str | None:
        """Name of a credentials entry for this login (shared by every host that uses it)."""
        if username is None and key_file is None and password_env is None:
            return None
        spec: dict[str, Any] = {}
        if username is not None:
            spec["username"] = username
        if key_file is not None:
            home = os.path.expanduser("~")
            spec["key_file"] = ("~" + key_file[len(home):]
                                if home != "/" and key_file.startswith(home + "/") else key_file)
        if password_env is not None:
            spec["password"] = f"env:{password_env}"
            spec["use_agent"] = False
        for name, existing in self.credentials.items():
            if existing == spec:
                return name
        label = _key_label(key_file) if key_file else None
        base = _slug("-".join(p for p in (username or "login",
                                          label if label != username else "key",
                                          "password" if password_env else None) if p))
        name, i = base, 2
        while name in self.credentials:
            name, i = f"{base}-{i}", i + 1
        self.credentials[name] = spec
        return name

    def left_out(self, where: str, what: str, hosts: list[str]) -> None:
        """One note for a setting many hosts have: ``what`` (hosts a, b, … (N in all))."""
        shown = ", ".join(hosts[:5]) + (f", … ({len(hosts)} in all)" if len(hosts) > 5 else "")
        self.note(where, f"{what} (hosts {shown})")

    def device_type(self, spec: dict[str, Any], where: str, label: str, value: object) -> None:
        """Set ``spec['device_type']`` from another tool's platform name, or note it."""
        dt = device_type_for(str(value))
        if dt:
            spec["device_type"] = dt
        else:
            self.note(where, f"{label} {value!r} has no known netmiko device type; set "
                             "device_type by hand")

    def jumps(self, elements: list[str], where: str, hosts: Any = ()) -> list[str] | None:
        """``via`` for a jump list: names in ``hosts`` are those hosts (hosts are hops); a
        literal ``[user@]host[:port]`` becomes a jump host reached through the hops before it."""
        via: list[str] = []
        for element in (e.strip() for e in elements):
            if element in hosts:
                via.append(element)
                continue
            parsed = parse_jump(element)
            if parsed is None:
                self.note(where, f"jump {element!r} not understood; set via by hand")
                return None
            user, host, port = parsed
            spec: dict[str, Any] = {"host": host}
            if port:
                spec["port"] = port
            if user:
                spec["username"] = user
            if via:
                spec["via"] = list(via)
            name = jump_name(element)
            self.jump_hosts.setdefault(name, spec)
            via = [name]                 # that jump host carries the hops before it
        return via or None

    def sections(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key in ("defaults", "credentials", "jump_hosts", "groups", "hosts"):
            value = getattr(self, key)
            if value:
                out[key] = value
        return out

    def to_yaml(self) -> str:
        head = [f"# phonehome-jump inventory imported from {self.source}",
                "# Check it with: phonehome-jump inventory check --inventory THIS_FILE"]
        if self.notes:
            head.append(f"# Not carried over ({len(self.notes)}):")
            head += [f"#   {n}" for n in self.notes]
        body = yaml.safe_dump(self.sections(), sort_keys=False, default_flow_style=False,
                              allow_unicode=True, width=100)
        return "\n".join(head) + "\n" + body


#: netmiko device types for other tools' platform names (Nornir/NAPALM, Ansible network_os).
_PLATFORMS = {
    "ios": "cisco_ios", "cisco.ios.ios": "cisco_ios", "iosxe": "cisco_xe", "ios-xe": "cisco_xe",
    "iosxr": "cisco_xr", "ios-xr": "cisco_xr", "cisco.iosxr.iosxr": "cisco_xr",
    "nxos": "cisco_nxos", "nxos_ssh": "cisco_nxos", "cisco.nxos.nxos": "cisco_nxos",
    "asa": "cisco_asa", "cisco.asa.asa": "cisco_asa",
    "eos": "arista_eos", "arista.eos.eos": "arista_eos",
    "junos": "juniper_junos", "junipernetworks.junos.junos": "juniper_junos",
    "vyos": "vyos", "vyos.vyos.vyos": "vyos",
    "ce": "huawei", "huawei": "huawei", "vrp": "huawei",
    "comware": "hp_comware", "hpe.comware.comware": "hp_comware",
    "routeros": "mikrotik_routeros", "community.routeros.routeros": "mikrotik_routeros",
    "fortios": "fortinet", "panos": "paloalto_panos", "sros": "nokia_sros",
    "dellos10": "dell_os10", "dellemc.os10.os10": "dell_os10",
    "linux": "linux",
}


def device_type_for(platform: str) -> str | None:
    """The netmiko device type for ``platform``; None when it is unknown."""
    p = platform.strip().lower()
    if p in _PLATFORMS:
        return _PLATFORMS[p]
    try:
        from netmiko.ssh_dispatcher import CLASS_MAPPER   # the names netmiko itself accepts
    except ImportError:  # pragma: no cover - netmiko is a dependency
        return None
    return p if p in CLASS_MAPPER else None


def load_yaml(text: str, source: str) -> Any:
    """Another tool's YAML, with the limits of our own files (alias bombs, recursion, depth,
    size refused; see :mod:`..yamlload`) and the problem's file:line in the error."""
    try:
        data, _, problems = parse_yaml(text)
    except YamlProblem as exc:
        raise InventoryError(exc.what, where=f"{source}:{exc.line}" if exc.line else source,
                             hint="fix the file, then import it again") from None
    for line, what in problems:       # duplicate keys: PyYAML would keep the last silently
        raise InventoryError(what, where=f"{source}:{line}", hint="fix the file, then import it again")
    return data


_JUMP = re.compile(r"(?:ssh://)?(?:(?P<user>[^@]+)@)?(?P<host>\[[^\]]+\]|[^:@]+)(?::(?P<port>\d+))?")


def parse_jump(element: str) -> tuple[str | None, str, int | None] | None:
    """``[ssh://][user@]host[:port]`` (host may be ``[v6]``) -> (user, host, port); None if not."""
    m = _JUMP.fullmatch(element.strip())
    if m is None:
        return None
    return m["user"], m["host"].strip("[]"), int(m["port"]) if m["port"] else None


def jump_name(element: str) -> str:
    """An inventory name for a literal jump element (``ops@gw:2222`` -> ``ops-gw-2222``)."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", element.strip()).strip("-")


def env_name(*parts: str) -> str:
    """An environment variable name for a password found in clear (PHJ_<PARTS>_PASSWORD)."""
    return "PHJ_" + "_".join(re.sub(r"[^A-Za-z0-9]+", "_", p).strip("_").upper()
                             for p in parts if p) + "_PASSWORD"


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-") or "login"


def _key_label(path: str) -> str:
    name = path.rstrip("/").rsplit("/", 1)[-1]
    return name.removeprefix("id_") or "key"
