"""Inventory: YAML hosts, groups, jump hosts and credential references -> resolved targets.

Everything is validated and resolved at load, so a typo shows up when the file is read, not
half-way through a connect. All problems of one load are reported together, one
``file:line: what`` per line (:class:`InventoryProblems`).

Precedence (first value that is set wins):

* ``port``, ``known_hosts``, ``host_key_policy``, ``keepalive``, ``keepalive_count``,
  ``connect_timeout``, ``device_type``, ``credentials``, ``description``, ``client``,
  ``share_login``: host -> its groups in the order listed -> ``defaults`` -> built-in default
  (22, ``~/.ssh/known_hosts``, strict, 15, 3, 10.0, linux, true).
* ``username``: host.username > credentials.username > groups' username (in order) >
  defaults.username > local user (``getpass.getuser()``). A credential's username belongs to
  its secret, so it beats broad group/default settings; the host itself can still override.
* ``via``: the first layer that *mentions* ``via`` wins (host -> groups -> defaults);
  ``via: []`` or ``via: null`` there means direct and stops inheritance.
* ``tags``: union of host, group and defaults tags (that order, de-duplicated).
* jump hosts: their own fields -> defaults (connection settings and credentials only; never
  ``defaults.via``, which would make every hop go through itself) -> built-ins.

Hops are jump hosts, or hosts: ``via`` may name a host (a bastion that is also a login
target), which then logs in as it does as a target and keeps its own (inherited) ``via``; a
name that is both a jump host and a host is ambiguous in ``via``.

Chains: ``chain(hop) = expand(hop.via) + [hop]``. A via list ``[a, b]`` is ``chain(a)`` then
``b``; ``b``'s own via prefix must be empty or equal to the chain so far, otherwise it is a
conflict. A hop may appear only once in a chain; cycles are errors naming the cycle.

Secrets are references only (``env:NAME`` / ``file:PATH`` / ``keyring:SERVICE/USER`` /
``cmd:COMMAND``, see :mod:`.secret_sources`), read when :meth:`SecretRef.resolve` is called. Paths are ``~``-expanded; relative paths are relative to the working directory.
"""

from __future__ import annotations

import argparse
import difflib
import gc
import getpass
import json
import os
import re
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, WithJsonSchema
from pydantic import model_validator
from pydantic_core import core_schema

from .audit import AuditSpec
from .limits import LimitsSpec
from .errors import InventoryError, SecretError, UnknownNameError
from .inputs import Seconds, Whole, check_text
from .policy import Policy, PolicySpec
from .redact import add_secret
from .secret_sources import from_command, from_keyring, parse_cmd, parse_keyring
from .yamlload import KeyPath as _KeyPath
from .yamlload import YamlProblem, parse_yaml, read_text, within_memory

__all__ = [
    "Auth", "Endpoint", "Inventory", "InventoryProblems", "SecretRef", "Target", "json_schema",
    "CredentialsSpec", "DefaultsSpec", "GroupSpec", "HostSpec", "InventoryFile", "JumpHostSpec",
]

ENV_VAR = "PHONEHOME_JUMP_INVENTORY"
MAX_HOSTS = 20_000                  # hosts in one inventory (about 10 s to load on a busy machine)
MAX_INVENTORY_BYTES = 16 * 2**20    # all files of one inventory (each file: yamlload's limits)
HostKeyPolicy = Literal["strict", "accept-new"]
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_SECRET_FIELDS = frozenset({"password", "passphrase", "sudo_password", "enable_secret"})


# --------------------------------------------------------------------------- secrets

@dataclass(frozen=True, repr=False)
class SecretRef:
    """A pointer to a secret (``env:NAME`` / ``file:PATH`` / ``keyring:SERVICE/USER`` /
    ``cmd:COMMAND``); only resolve() reads the value."""

    kind: Literal["env", "file", "keyring", "cmd"]
    name: str  # variable name, or the file path as written

    @classmethod
    def parse(cls, text: object) -> SecretRef:
        """Parse a reference; ValueError messages never echo the input (it may be a password)."""
        literal = ("must be a reference, not a literal secret: write env:VAR_NAME (and export "
                   "VAR_NAME), file:/path/to/secret (mode 0600), keyring:SERVICE/USERNAME or "
                   "cmd:COMMAND (its output is the secret) instead")
        if isinstance(text, SecretRef):
            return text
        if not isinstance(text, str):
            raise ValueError(literal)
        kind, sep, rest = text.partition(":")
        if not sep or kind not in ("env", "file", "keyring", "cmd"):
            raise ValueError(literal)
        if kind == "keyring":
            return cls(kind, parse_keyring(rest))
        if kind == "cmd":
            return cls(kind, parse_cmd(rest))
        if kind == "env" and not _ENV_NAME.fullmatch(rest):
            raise ValueError("env: reference needs a variable name of letters, digits and _ "
                             "(e.g. env:SL1_PASSWORD)")
        if kind == "file" and not rest.strip():
            raise ValueError("file: reference needs a path (e.g. file:~/.secrets/sl1)")
        return cls(kind, rest)  # type: ignore[arg-type]

    def __str__(self) -> str:
        return f"{self.kind}:{self.name}"

    def __repr__(self) -> str:
        return f"SecretRef({str(self)!r})"

    def resolve(self, context: str) -> str:
        """Read the secret now; ``context`` (e.g. "hop 'dmz-gw' password") goes into errors."""
        if self.kind in ("keyring", "cmd"):
            read = from_keyring if self.kind == "keyring" else from_command
            value = read(self.name, str(self), context)
            add_secret(value)   # masked wherever text leaves the plugin from now on
            return value
        if self.kind == "env":
            value = os.environ.get(self.name)
            if not value:
                state = "is not set" if value is None else "is empty"
                raise SecretError(f"environment variable {self.name} {state} (needed by {self})",
                                  where=context,
                                  hint=f"export {self.name}=... in the environment that starts "
                                       "phonehome-jump")
            add_secret(value)   # masked wherever text leaves the plugin from now on
            return value
        path = Path(self.name).expanduser()
        hint = f"check that {path} exists, is readable by this user and has mode 0600"
        try:
            mode = path.stat().st_mode
        except OSError as exc:
            raise SecretError(f"cannot read secret file {path} ({exc.strerror or exc})",
                              where=context, hint=hint) from exc
        if mode & 0o077:
            # like ssh with a private key: a secret others can read is not kept secret
            raise SecretError(f"secret file {path} is readable or writable by others "
                              f"(mode {mode & 0o777:04o})", where=context,
                              hint=f"chmod 600 {path}")
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            # from None: the decode error object carries the raw bytes of the secret
            raise SecretError(f"secret file {path} is not UTF-8 text", where=context,
                              hint=hint) from None
        except OSError as exc:
            raise SecretError(f"cannot read secret file {path} ({exc.strerror or exc})",
                              where=context, hint=hint) from exc
        text = text[:-2] if text.endswith("\r\n") else text[:-1] if text.endswith("\n") else text
        if not text:
            raise SecretError(f"secret file {path} is empty", where=context, hint=hint)
        add_secret(text)
        return text

    # pydantic integration: validated by parse(), shown as a string in the JSON schema
    @classmethod
    def __get_pydantic_core_schema__(cls, source: Any, handler: Any) -> core_schema.CoreSchema:
        return core_schema.no_info_plain_validator_function(
            cls.parse, serialization=core_schema.plain_serializer_function_ser_schema(str))

    @classmethod
    def __get_pydantic_json_schema__(cls, schema: Any, handler: Any) -> dict[str, Any]:
        return {"type": "string",
                "pattern": r"^(env:[A-Za-z_][A-Za-z0-9_]*|file:.+|keyring:.+/.+|cmd:.*\S.*)$"}


# --------------------------------------------------------------------------- file models

def _as_tuple(value: Any) -> Any:
    return (value,) if isinstance(value, str) else value  # `via: bastion` == `via: [bastion]`


Names = Annotated[tuple[str, ...], BeforeValidator(_as_tuple), WithJsonSchema(
    {"anyOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}]})]
Port = Annotated[Whole, Field(ge=1, le=65535)]
# numbers are accepted where text is expected: engineers write `username: 1234`, `host: 7750`
_CFG = ConfigDict(extra="forbid", frozen=True, coerce_numbers_to_str=True)


class _Conn(BaseModel):
    model_config = _CFG
    port: Port | None = Field(None, description="SSH port, 1-65535. Default 22.")
    username: str | None = Field(
        None, description="Login name. Default: the credentials' username, then the local user.")
    credentials: str | None = Field(None, description="Name of an entry under `credentials`.")
    known_hosts: str | None = Field(
        None, description="known_hosts file for host-key checks ('~' expanded). "
                          "Default ~/.ssh/known_hosts.")
    host_key_policy: HostKeyPolicy | None = Field(
        None, description="strict: refuse unknown host keys; accept-new: trust and record a key "
                          "seen for the first time (a changed key is always refused). "
                          "Default strict.")
    keepalive: Whole | None = Field(
        None, ge=0, le=86400,
        description="Seconds between liveness probes (a keepalive@openssh.com request that "
                    "must be answered, like OpenSSH's ServerAliveInterval), on every hop and "
                    "the target; 0 disables. Default 15.")
    keepalive_count: Whole | None = Field(
        None, ge=1, le=1000,
        description="Unanswered probes after which a hop or target is declared down and every "
                    "session through it dead, naming it (like ServerAliveCountMax): detection "
                    "within keepalive x keepalive_count seconds. Default 3.")
    connect_timeout: Seconds | None = Field(
        None, gt=0, le=3600, description="Seconds to wait for TCP connect and SSH handshake "
                                         "(at most 3600). Default 10.")
    via: Names | None = Field(
        None, description="Jump host name, or list of names, to go through (first hop first). "
                          "A hop's own via is prepended. [] means direct.")
    description: str | None = Field(None, description="Free text for listings and searches.")


class _TargetSettings(_Conn):
    device_type: str | None = Field(
        None, description="netmiko device_type (linux, cisco_ios, juniper_junos, ...). "
                          "Default linux.")
    tags: Names | None = Field(None, description="Labels for filtering (merged from groups).")
    policy: PolicySpec | None = Field(
        None, description="Command rules: deny/confirm/allow patterns are merged from host, "
                          "groups and defaults; read_only is taken from the first that sets it.")
    client: str | None = Field(
        None, min_length=1,
        description="ET Phone Home client site that reaches this host. `phonehome-jump serve "
                    "--agent SITE=HOST:PORT` routes its sessions to that site's agent.")
    share_login: bool | None = Field(
        None, description="Sessions of one client to this host share one SSH login, a channel, "
                          "pty and shell each (POSIX hosts; like OpenSSH's ControlMaster); "
                          "false gives every session a login of its own. Default true.")


class DefaultsSpec(_TargetSettings):
    """Settings every host inherits; jump hosts inherit the connection settings."""


class GroupSpec(_TargetSettings):
    """Settings shared by the hosts that list this group."""


class HostSpec(_TargetSettings):
    """A target device or server."""

    host: str = Field(min_length=1,
                      description="DNS name or IP address, as seen from the last hop.")
    groups: Names = Field((), description="Groups to inherit from, first listed wins.")


class JumpHostSpec(_Conn):
    """An SSH hop that forwards connections (ProxyJump-style)."""

    host: str = Field(min_length=1,
                      description="DNS name or IP address, as seen from the previous hop.")


class CredentialsSpec(BaseModel):
    """How to log in. Secrets are references: env:VAR_NAME or file:/path (mode 0600)."""

    model_config = _CFG
    username: str | None = Field(None, description="Login name used with these credentials.")
    password: SecretRef | None = Field(
        None, description="Password reference: env:VAR or file:PATH.")
    key_file: str | None = Field(None, description="Private key file ('~' expanded).")
    passphrase: SecretRef | None = Field(
        None, description="Passphrase reference for an encrypted key_file: env:VAR or file:PATH.")
    use_agent: bool = Field(True, description="Also try keys from the running ssh-agent.")
    sudo_password: SecretRef | None = Field(
        None, description="sudo password reference: env:VAR or file:PATH.")
    enable_secret: SecretRef | None = Field(
        None, description="Network devices: the enable (privileged mode) secret, env:VAR or "
                          "file:PATH; typed only at the device's own password prompt.")

    @model_validator(mode="after")
    def _can_log_in(self) -> CredentialsSpec:
        if self.password is None and self.key_file is None and not self.use_agent:
            raise ValueError("give no way to log in: set password, key_file or use_agent: true")
        return self


class InventoryFile(BaseModel):
    """One phonehome-jump inventory file; a directory of such files is merged."""

    model_config = ConfigDict(extra="forbid", frozen=True, title="phonehome-jump inventory")
    defaults: DefaultsSpec | None = Field(None, description="Settings every host inherits.")
    credentials: dict[str, CredentialsSpec] | None = Field(
        None, description="Named login methods, referenced by `credentials: NAME`.")
    jump_hosts: dict[str, JumpHostSpec] | None = Field(
        None, description="Named SSH hops, referenced by `via`.")
    groups: dict[str, GroupSpec] | None = Field(
        None, description="Named settings bundles, referenced by a host's `groups`.")
    hosts: dict[str, HostSpec] | None = Field(None, description="Targets you can open sessions on.")
    audit: AuditSpec | None = Field(None, description="Audit log (JSON Lines) and transcripts; "
                                                      "set in one file only.")
    limits: LimitsSpec | None = Field(None, description="Session timeouts and limits of the "
                                                        "server; set in one file only.")


_SINGLE = ("defaults", "audit", "limits")   # sections that are one mapping, not named entries
_SECTIONS: dict[str, tuple[type[BaseModel], str]] = {
    "defaults": (DefaultsSpec, "defaults"), "audit": (AuditSpec, "audit"),
    "limits": (LimitsSpec, "limits"),
    "credentials": (CredentialsSpec, "credentials"),
    "jump_hosts": (JumpHostSpec, "jump host"), "groups": (GroupSpec, "group"),
    "hosts": (HostSpec, "host"),
}


def json_schema() -> dict[str, Any]:
    """JSON Schema of one inventory file (committed as inventory/schema.json for editors)."""
    return {"$schema": "https://json-schema.org/draft/2020-12/schema",
            **InventoryFile.model_json_schema()}


# --------------------------------------------------------------------------- resolved objects

@dataclass(frozen=True)
class Auth:
    password: SecretRef | None
    key_file: Path | None
    passphrase: SecretRef | None
    use_agent: bool
    sudo_password: SecretRef | None
    enable_secret: SecretRef | None = None

    def summary(self) -> dict[str, Any]:
        """References and paths only, never values."""
        out: dict[str, Any] = {"agent": self.use_agent}
        for name in ("password", "passphrase", "sudo_password", "enable_secret"):
            if (ref := getattr(self, name)) is not None:
                out[name] = str(ref)
        if self.key_file is not None:
            out["key_file"] = str(self.key_file)
        return out


_NO_AUTH = Auth(None, None, None, True, None)


@dataclass(frozen=True)
class Endpoint:
    name: str
    host: str
    port: int
    username: str
    auth: Auth
    known_hosts: Path
    host_key_policy: HostKeyPolicy
    keepalive: int
    connect_timeout: float
    source: str
    keepalive_count: int = 3

    @property
    def key(self) -> tuple[str, str, int, str]:
        """Identity used to share hop connections between sessions."""
        return (self.name, self.host, self.port, self.username)


@dataclass(frozen=True)
class Target:
    name: str
    endpoint: Endpoint
    chain: tuple[Endpoint, ...]
    device_type: str
    groups: tuple[str, ...]
    tags: tuple[str, ...]
    description: str | None
    source: str
    client: str | None = None    # ET Phone Home client site that reaches the host
    policy: Policy = Policy()
    share_login: bool = True     # its POSIX sessions of one client share one SSH login

    def summary(self) -> dict[str, Any]:
        """JSON-safe description without secret values."""
        ep = self.endpoint
        return {"name": self.name, "host": ep.host, "port": ep.port, "username": ep.username,
                "device_type": self.device_type, "groups": list(self.groups),
                "tags": list(self.tags), "description": self.description, "client": self.client,
                "auth": ep.auth.summary(), "known_hosts": str(ep.known_hosts),
                "host_key_policy": ep.host_key_policy,
                "chain": [{"name": h.name, "host": h.host, "port": h.port,
                           "username": h.username, "known_hosts": str(h.known_hosts),
                           "host_key_policy": h.host_key_policy} for h in self.chain],
                "policy": self.policy.summary(), "share_login": self.share_login,
                "source": self.source}


class InventoryProblems(InventoryError):
    """All problems found in one load; ``problems`` is a list of (where, what)."""

    def __init__(self, problems: list[tuple[str, str]]) -> None:
        self.problems = problems  # set before super(): message is computed there
        super().__init__(problems[0][1], where=problems[0][0])

    @property
    def message(self) -> str:
        if len(self.problems) == 1:
            return super().message
        return "\n".join([f"{len(self.problems)} problems in the inventory (fix all, then reload):"]
                         + [f"  {where}: {what}" for where, what in self.problems])


# --------------------------------------------------------------------------- validation

# device types known without importing netmiko's drivers (all of them are netmiko's)
_BUILTIN_DEVICE_TYPES = frozenset({"linux", "generic", "ovs_linux", "terminal_server"})


def known_device_types() -> frozenset[str]:
    """netmiko's device types that run over SSH (its telnet and serial variants cannot go
    through a jump chain)."""
    from netmiko.ssh_dispatcher import CLASS_MAPPER   # heavy: only when a network OS is named
    return frozenset(d for d in CLASS_MAPPER if not d.endswith(("_telnet", "_serial")))


def _suggest(name: str, choices: Iterable[str]) -> str:
    choices = sorted(choices)
    close = difflib.get_close_matches(name, choices, n=3, cutoff=0.6)
    if close:
        return " (did you mean " + " or ".join(f"'{c}'" for c in close) + "?)"
    if not choices:
        return " (none defined)"
    return f" (known: {', '.join(choices)})" if len(choices) <= 12 else ""


_PLAIN = {
    "int_parsing": "must be a whole number", "int_type": "must be a whole number",
    "int_from_float": "must be a whole number", "float_parsing": "must be a number",
    "float_type": "must be a number", "greater_than_equal": "must be at least {ge}",
    "greater_than": "must be greater than {gt}", "less_than_equal": "must be at most {le}",
    "literal_error": "must be one of {expected}", "bool_type": "must be true or false",
    "bool_parsing": "must be true or false", "string_type": "must be text",
    "string_too_short": "must not be empty", "tuple_type": "must be a name or a list of names",
    "finite_number": "must be a finite number",
}


def _explain(err: Any, model: type[BaseModel]) -> str:
    """One pydantic error in plain words; never echoes the input of a secret field."""
    loc, typ, ctx = tuple(err["loc"]), err["type"], err.get("ctx") or {}
    name = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in loc).lstrip(".")
    if typ == "extra_forbidden":
        key = str(loc[-1])
        if model is not CredentialsSpec and key in CredentialsSpec.model_fields and not \
                difflib.get_close_matches(key, model.model_fields, n=1, cutoff=0.6):
            return (f"unknown key '{key}': it belongs in a credentials entry, referenced "
                    "here with `credentials: NAME`")
        return f"unknown key '{key}'" + _suggest(key, model.model_fields)
    if typ == "missing":
        return f"missing required key '{name}'"
    if not loc:
        if typ == "value_error":
            return f"{ctx['error']}"
        return "must be a mapping of settings (key: value)"
    if loc[0] == "port" and typ in ("int_parsing", "int_type", "int_from_float",
                                     "greater_than_equal", "less_than_equal"):
        what = "must be a whole number between 1 and 65535"
    elif typ == "value_error":
        what = str(ctx["error"])
    else:
        what = _PLAIN[typ].format(**ctx) if typ in _PLAIN else err["msg"]
    value = err.get("input")
    if loc[0] in _SECRET_FIELDS or typ == "value_error" or not isinstance(
            value, (str, int, float, bool, type(None))):
        return f"{name} {what}"
    return f"{name} {what}, got {json.dumps(value)}"


@dataclass(eq=False)
class _Entry:
    """One named thing from one file, with enough context to point at its lines."""

    section: str
    name: str
    file: str
    lines: dict[_KeyPath, int]
    spec: Any = None  # the validated model, None if invalid (already reported)

    @property
    def label(self) -> str:
        if self.section in _SINGLE:
            return self.section
        return f"{_SECTIONS[self.section][1]} '{self.name}'"

    def line(self, *sub: str | int) -> int | None:
        path: _KeyPath = (self.section, *(() if self.section in _SINGLE else (self.name,)), *sub)
        while path:  # longest recorded prefix: `via: x` has no line for via[0]
            if path in self.lines:
                return self.lines[path]
            path = path[:-1]
        return None

    def at(self, *sub: str | int) -> tuple[str, int | None]:
        return self.file, self.line(*sub)


def _read_file(file: Path, builder: _Builder) -> str | None:
    """One inventory file's text; None when it is refused (the builder records why)."""
    try:
        return read_text(file)
    except YamlProblem as exc:
        builder.files.append(str(file))
        builder.add((str(file), exc.line), exc.what)
        return None
    except UnicodeDecodeError as exc:
        raise _not_utf8(exc, file) from None    # the decode error carries the file's raw bytes
    except OSError as exc:
        raise InventoryError(f"cannot read inventory file: {exc.strerror or exc}", where=str(file),
                             hint="check the path and its permissions") from exc


def _not_utf8(exc: UnicodeDecodeError, file: Path) -> InventoryError:
    line = exc.object[:exc.start].count(b"\n") + 1
    return InventoryError(f"the file is not UTF-8 text (byte 0x{exc.object[exc.start]:02x} at "
                          f"offset {exc.start})", where=f"{file}:{line}", hint="save it as UTF-8")


def _validated(model: type[BaseModel], value: Any) -> tuple[Any, list[Any]]:
    """(the model, no errors) or (None, pydantic's errors); short, like within_memory."""
    try:
        return model.model_validate(value), []
    except ValidationError as exc:
        return None, exc.errors()


def _fmt(file: str, line: int | None) -> str:
    return f"{file}:{line}" if line else file


class _Builder:
    """Parses files, validates, checks references and resolves targets, collecting problems."""

    def __init__(self) -> None:
        self.problems: list[tuple[str, int | None, str]] = []
        self.files: list[str] = []
        self.entries: dict[str, dict[str, _Entry]] = {s: {} for s in _SECTIONS if s not in _SINGLE}
        self.audit: _Entry | None = None
        self.limits: _Entry | None = None
        self.default_parts: list[_Entry] = []
        self.defaults = DefaultsSpec()
        self.default_owner: dict[str, _Entry] = {}
        self.hop_chains: dict[str, tuple[str, ...] | None] = {}
        self.via_memo: dict[int, tuple[str, ...] | None] = {}
        self.hop_endpoints: dict[str, Endpoint] = {}
        self.cycles: set[frozenset[str]] = set()
        self._user: str | None = None

    def add(self, at: tuple[str, int | None], what: str) -> None:
        if (item := (*at, what)) not in self.problems:
            self.problems.append(item)

    # -- phase 1: parse and validate each file
    def parse(self, text: str, file: str) -> None:
        self.files.append(file)
        try:
            data, lines, problems = parse_yaml(text)
        except YamlProblem as exc:
            self.add((file, exc.line), exc.what)
            return
        for line, what in problems:
            self.add((file, line), what)
        if data is None:
            return  # an empty file is fine
        if not isinstance(data, dict):
            self.add((file, 1), "the top level must be a mapping of sections: "
                     + ", ".join(_SECTIONS))
            return
        for section, body in data.items():
            at = (file, lines[(section,)])
            if section not in _SECTIONS:
                self.add(at, f"unknown section '{section}'" + _suggest(section, _SECTIONS))
            elif section == "defaults":
                entry = _Entry("defaults", "defaults", file, lines)
                entry.spec = self._validate(entry, body)
                self.default_parts.append(entry)
            elif section in ("audit", "limits"):
                entry = _Entry(section, section, file, lines)
                if (prev := getattr(self, section)) is not None:
                    self.add(at, f"{section} is set twice: {_fmt(*prev.at())} and "
                                 f"{_fmt(*entry.at())}; keep one")
                else:
                    entry.spec = self._validate(entry, body)
                    setattr(self, section, entry)
            elif body is not None and not isinstance(body, dict):
                self.add(at, f"section '{section}' must be a mapping of name: settings")
            else:
                if section == "hosts" and len(self.entries["hosts"]) + len(body or {}) > MAX_HOSTS:
                    raise InventoryProblems([(_fmt(*at), f"more than {MAX_HOSTS} hosts in the "
                                              "inventory; split the sites into several "
                                              "inventories (one per agent or MCP server)")])
                for name, value in (body or {}).items():
                    self._add_entry(_Entry(section, name, file, lines), value)

    def _add_entry(self, entry: _Entry, value: Any) -> None:
        known = self.entries[entry.section]
        if (prev := known.get(entry.name)) is not None:
            self.add(entry.at(), f"{entry.label} is defined twice: {_fmt(*prev.at())} and "
                                 f"{_fmt(*entry.at())}; rename or remove one")
            return
        known[entry.name] = entry  # registered even if invalid, so references to it still resolve
        if entry.section == "hosts" and isinstance(value, str):
            self.add(entry.at(), f"{entry.label} must be a mapping, e.g. "
                                 f"`{entry.name}: {{host: {value}}}`")
            return
        entry.spec = self._validate(entry, value)

    def _validate(self, entry: _Entry, value: Any) -> Any:
        model = _SECTIONS[entry.section][0]
        spec, errors = _validated(model, {} if value is None else value)
        if not errors:
            return spec
        for err in errors:
            self.add(entry.at(*err["loc"]), f"{entry.label}: {_explain(err, model)}")
        if not isinstance(value, dict):
            return None
        # Keep the valid part so its references are still checked in this same pass; the
        # load fails anyway, so this partial spec is never resolved into a Target.
        bad = {err["loc"][0] for err in errors if err["loc"] and err["type"] != "missing"}
        partial = {k: v for k, v in value.items() if k not in bad}
        partial.update({err["loc"][0]: "?" for err in errors if err["type"] == "missing"})
        return _validated(model, partial)[0]

    # -- phase 2: merge defaults, check references
    def check(self) -> None:
        merged: dict[str, Any] = {}
        for part in self.default_parts:
            if part.spec is None:
                continue
            for key in part.spec.model_fields_set:
                if (prev := self.default_owner.get(key)) is not None:
                    self.add(part.at(key), f"defaults.{key} is set twice: {_fmt(*prev.at(key))} "
                                           f"and {_fmt(*part.at(key))}")
                    continue
                merged[key], self.default_owner[key] = getattr(part.spec, key), part
        self.defaults = DefaultsSpec.model_validate(merged)
        creds, groups = self.entries["credentials"], self.entries["groups"]
        owners = self.default_parts + [
            e for s in ("jump_hosts", "groups", "hosts") for e in self.entries[s].values()]
        for entry in owners:
            if (spec := entry.spec) is None:
                continue
            if spec.credentials is not None and spec.credentials not in creds:
                self.add(entry.at("credentials"), f"{entry.label}: unknown credentials "
                         f"'{spec.credentials}'" + _suggest(spec.credentials, creds))
            for i, group in enumerate(getattr(spec, "groups", ())):
                if group not in groups:
                    self.add(entry.at("groups", i),
                             f"{entry.label}: unknown group '{group}'" + _suggest(group, groups))
            if entry.section == "jump_hosts":
                self._hop(entry.name, [])
            elif "via" in spec.model_fields_set and (entry.section != "defaults"
                                                     or self.default_owner.get("via") is entry):
                self._via(entry, spec.via)

    def _via(self, owner: _Entry, via: tuple[str, ...] | None) -> tuple[str, ...] | None:
        if id(owner) not in self.via_memo:  # memo per owner: a group's error is reported once
            self.via_memo[id(owner)] = self._expand(owner, via or (), [])
        return self.via_memo[id(owner)]

    def _hop(self, name: str, stack: list[str]) -> tuple[str, ...] | None:
        """Full chain ending with hop ``name`` (a jump host, or a host used as a hop); None if
        broken (already reported)."""
        if name in self.hop_chains:
            return self.hop_chains[name]
        entry = self._hop_entry(name)
        if name in stack:
            cycle = stack[stack.index(name):] + [name]
            if frozenset(cycle) not in self.cycles:
                self.cycles.add(frozenset(cycle))
                inherited = (entry.section == "hosts" and entry.spec is not None
                             and "via" not in entry.spec.model_fields_set)
                owner = self._via_owner(entry) if inherited else None
                hint = (f"; set `via: []` on host '{name}' if it is dialed directly"
                        if inherited else "")
                self.add(owner.at("via") if owner else entry.at("via"), f"via cycle: {' -> '.join(cycle)}; a hop cannot "
                                 f"(indirectly) go through itself{hint}")
            return None
        if entry.spec is None:
            prefix = None
        elif entry.section == "hosts":     # a host used as a hop keeps its own (inherited) via
            owner = self._via_owner(entry)
            prefix = () if owner is None else self._expand(owner, owner.spec.via or (),
                                                           stack + [name])
        else:
            prefix = self._expand(entry, entry.spec.via or (), stack + [name])
        self.hop_chains[name] = None if prefix is None else prefix + (name,)
        return self.hop_chains[name]

    def _hop_entry(self, name: str) -> _Entry:
        return self.entries["jump_hosts"].get(name) or self.entries["hosts"][name]

    def _via_owner(self, entry: _Entry) -> _Entry | None:
        """The layer (host, one of its groups, defaults) whose ``via`` a host uses."""
        host: HostSpec | None = entry.spec
        if host is None:
            return None
        groups = [self.entries["groups"].get(g) for g in host.groups]
        owners = [entry, *(g for g in groups if g is not None and g.spec is not None)]
        return next((o for o in owners if "via" in o.spec.model_fields_set),
                    self.default_owner.get("via"))

    def _expand(self, owner: _Entry, via: tuple[str, ...],
                stack: list[str]) -> tuple[str, ...] | None:
        chain: tuple[str, ...] = ()
        ok = True
        hops, hosts = self.entries["jump_hosts"], self.entries["hosts"]
        for i, name in enumerate(via):
            if name in hops and name in hosts:
                self.add(owner.at("via", i), f"{owner.label}: via '{name}' is ambiguous: it is a "
                         f"jump host ({_fmt(*hops[name].at())}) and a host "
                         f"({_fmt(*hosts[name].at())}); rename one")
                ok = False
                continue
            if name not in hops and name not in hosts:
                self.add(owner.at("via", i), f"{owner.label}: unknown jump host '{name}'"
                         + _suggest(name, [*hops, *hosts]))
                ok = False
                continue
            sub = self._hop(name, stack)
            if sub is None:
                ok = False
            elif not chain:
                chain = sub
            elif name in chain:
                self.add(owner.at("via", i), f"{owner.label}: jump host '{name}' appears twice "
                                             f"in the chain {' -> '.join(chain)} -> {name}")
                ok = False
            elif sub[:-1] in ((), chain):
                chain += (name,)
            else:
                self.add(owner.at("via", i), f"{owner.label}: via lists '{name}' after "
                         f"{' -> '.join(chain)}, but '{name}' is itself reached via "
                         f"{' -> '.join(sub[:-1])}; list that chain first or drop one via")
                ok = False
        return chain if ok else None

    def check_device_types(self) -> None:
        """A device_type netmiko does not know is an error at load, with the closest names
        (it used to surface only after connecting, with hundreds of names)."""
        owners = self.default_parts + [e for sec in ("groups", "hosts")
                                       for e in self.entries[sec].values()]
        used = [(e, e.spec.device_type) for e in owners
                if e.spec is not None and e.spec.device_type is not None]
        if all(d in _BUILTIN_DEVICE_TYPES for _, d in used):
            return                  # the common case: no need to import netmiko's drivers
        known = known_device_types()
        for entry, dtype in used:
            if dtype not in known:
                close = difflib.get_close_matches(dtype, sorted(known), n=5, cutoff=0.5)
                more = (" (did you mean " + ", ".join(f"'{c}'" for c in close) + "?)" if close
                        else "")
                self.add(entry.at("device_type"),
                         f"{entry.label}: unknown device_type '{dtype}'{more}; it must be "
                         f"one of netmiko's {len(known)} SSH device types (netmiko's "
                         "PLATFORMS.md lists them)")

    # -- phase 3: resolve
    def _username(self, entry: _Entry, *candidates: str | None) -> str:
        for value in candidates:
            if value is not None:
                return value
        if self._user is None:
            try:
                self._user = getpass.getuser()
            except Exception:  # no USER/LOGNAME and no passwd entry (bare containers)
                self.add(entry.at(), f"{entry.label}: no username set and the local user name "
                                     "is unknown; set defaults.username")
                return "?"
        return self._user

    def _creds(self, name: str | None) -> tuple[CredentialsSpec | None, Auth] | None:
        if name is None:
            return None, _NO_AUTH
        entry = self.entries["credentials"].get(name)
        if entry is None or (spec := entry.spec) is None:
            return None  # unknown or invalid: already reported
        key = Path(spec.key_file).expanduser() if spec.key_file else None
        return spec, Auth(spec.password, key, spec.passphrase, spec.use_agent, spec.sudo_password,
                          spec.enable_secret)

    def _endpoint(self, entry: _Entry, layers: list[Any],
                  usernames: list[str | None]) -> Endpoint | None:
        def pick(key: str, default: Any) -> Any:
            values = (getattr(lay, key) for lay in layers)
            return next((v for v in values if v is not None), default)

        creds = self._creds(pick("credentials", None))
        if creds is None:
            return None
        spec, auth = creds
        username = self._username(entry, usernames[0], spec and spec.username, *usernames[1:])
        return Endpoint(
            name=entry.name, host=entry.spec.host, port=pick("port", 22), username=username,
            auth=auth, known_hosts=Path(pick("known_hosts", "~/.ssh/known_hosts")).expanduser(),
            host_key_policy=pick("host_key_policy", "strict"), keepalive=pick("keepalive", 15),
            keepalive_count=pick("keepalive_count", 3),
            connect_timeout=float(pick("connect_timeout", 10.0)), source=_fmt(*entry.at()))

    def _hop_endpoint(self, name: str) -> Endpoint | None:
        if name not in self.hop_endpoints:
            entry = self._hop_entry(name)
            if entry.section == "hosts":   # a host as a hop: logs in as it does as a target
                layers, users = self._host_layers(entry)
                ep = None if layers is None else self._endpoint(entry, layers, users)
            else:
                ep = self._endpoint(entry, [entry.spec, self.defaults],
                                    [entry.spec.username, self.defaults.username])
            if ep is None:
                return None
            self.hop_endpoints[name] = ep
        return self.hop_endpoints[name]

    def _host_layers(self, entry: _Entry) -> tuple[list[Any] | None, list[str | None]]:
        """A host's settings layers (host, groups, defaults) and username candidates."""
        host: HostSpec | None = entry.spec
        if host is None:
            return None, []
        groups = [self.entries["groups"].get(g) for g in host.groups]
        if any(g is None or g.spec is None for g in groups):
            return None, []
        layers = [host, *(g.spec for g in groups), self.defaults]
        return layers, [host.username, *(g.spec.username for g in groups), self.defaults.username]

    def target(self, entry: _Entry) -> Target | None:
        host: HostSpec | None = entry.spec
        layers, usernames = self._host_layers(entry)
        if host is None or layers is None:
            return None
        via_owner = self._via_owner(entry)
        names = () if via_owner is None else self._via(via_owner, via_owner.spec.via)
        if names is not None and entry.name in names:
            self.add(entry.at("via"), f"host '{entry.name}' goes through itself: "
                     f"{' -> '.join(names)}; set `via: []` on it if it is dialed directly")
            return None
        endpoint = self._endpoint(entry, layers, usernames)
        chain = [self._hop_endpoint(n) for n in names or ()]
        if names is None or endpoint is None or None in chain:
            return None
        tags = dict.fromkeys(t for lay in layers for t in (lay.tags or ()))
        return Target(
            name=entry.name, endpoint=endpoint, chain=tuple(chain),  # type: ignore[arg-type]
            device_type=next((lay.device_type for lay in layers if lay.device_type), "linux"),
            groups=host.groups, tags=tuple(tags),
            description=next((lay.description for lay in layers if lay.description), None),
            source=endpoint.source, policy=Policy.resolve([lay.policy for lay in layers]),
            client=next((lay.client for lay in layers if lay.client), None),
            share_login=next((lay.share_login for lay in layers if lay.share_login is not None), True))

    @property
    def audit_spec(self) -> AuditSpec | None:
        return self.audit.spec if self.audit is not None else None

    @property
    def limits_spec(self) -> LimitsSpec | None:
        return self.limits.spec if self.limits is not None else None

    def finish(self) -> dict[str, Target]:
        self.check()
        self.check_device_types()
        targets = {}
        if not self.problems:  # resolving half-valid data would only repeat known problems
            for name in sorted(self.entries["hosts"]):
                if (t := self.target(self.entries["hosts"][name])) is not None:
                    targets[name] = t
        if self.problems:
            order = {f: i for i, f in enumerate(self.files)}
            self.problems.sort(key=lambda p: (order.get(p[0], 0), p[1] or 0))
            raise InventoryProblems([(_fmt(f, line), what) for f, line, what in self.problems])
        return targets


# --------------------------------------------------------------------------- public API

class Inventory:
    """Resolved, validated inventory. Build it with :meth:`load` or :meth:`from_text`."""

    def __init__(self, targets: Mapping[str, Target], groups: Iterable[str],
                 sources: Iterable[Path] = (), audit: AuditSpec | None = None,
                 limits: LimitsSpec | None = None) -> None:
        self.audit = audit      # the `audit:` section, if a file sets one
        self.limits = limits or LimitsSpec()    # the `limits:` section, or its defaults
        self._targets = dict(targets)
        self._groups = sorted(groups)
        self.sources: list[Path] = list(sources)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Inventory:
        """Load a YAML file, or merge the sorted *.yaml / *.yml files of a directory."""
        root = Path(path)
        hint = f"pass --inventory PATH or set {ENV_VAR} to an inventory file or directory"
        if not root.exists():
            raise InventoryError("no such inventory file or directory", where=str(root), hint=hint)
        files = [root] if not root.is_dir() else sorted(
            p for p in root.iterdir()
            if p.suffix in (".yaml", ".yml") and not p.name.startswith(".") and p.is_file())
        if not files:
            raise InventoryError(f"no *.yaml or *.yml files in directory {root}", where=str(root),
                                 hint=hint)
        loaded = within_memory(lambda: cls._build(root, files))
        if loaded is None:
            gc.collect()
            raise InventoryError("ran out of memory while loading the inventory", where=str(root),
                                 hint=f"an inventory holds at most {MAX_HOSTS} hosts and "
                                      f"{MAX_INVENTORY_BYTES // 2**20} MiB; give the process "
                                      "more memory or split the inventory")
        return loaded

    @classmethod
    def _build(cls, root: Path, files: list[Path]) -> Inventory:
        builder = _Builder()
        total = 0
        for file in files:
            text = _read_file(file, builder)
            if text is None:
                continue
            total += len(text)
            if total > MAX_INVENTORY_BYTES:
                raise InventoryError(
                    f"the inventory's files add up to more than {MAX_INVENTORY_BYTES} bytes "
                    f"({MAX_INVENTORY_BYTES // 2**20} MiB)", where=str(root),
                    hint=f"an inventory holds at most {MAX_HOSTS} hosts; split the sites "
                         "into several inventories (one per agent or MCP server)")
            builder.parse(text, str(file))
        return cls(builder.finish(), builder.entries["groups"], files, builder.audit_spec,
                   builder.limits_spec)

    @classmethod
    def from_text(cls, text: str, source: str = "<string>") -> Inventory:
        builder = _Builder()
        builder.parse(text, source)
        return cls(builder.finish(), builder.entries["groups"], (), builder.audit_spec,
                   builder.limits_spec)

    def target(self, name: str) -> Target:
        check_text(name, "host")
        try:
            return self._targets[name]
        except KeyError:
            raise UnknownNameError(f"unknown host '{name}'" + _suggest(name, self._targets),
                                   hint="check the name against the inventory's host list (inventory list)") from None

    def names(self) -> list[str]:
        return sorted(self._targets)

    def groups(self) -> list[str]:
        return list(self._groups)

    def targets(self, group: str | None = None, tag: str | None = None,
                query: str | None = None) -> list[Target]:
        """Sorted by name; query: case-insensitive substring of name, host or description."""
        for param, value in (("group", group), ("tag", tag), ("query", query)):
            check_text(value, param)
        if group is not None and group not in self._groups:
            raise UnknownNameError(f"unknown group '{group}'" + _suggest(group, self._groups),
                                   hint="use a group defined under the inventory's `groups:` "
                                        "(`inventory show HOST` lists a host's groups)")
        q = query.lower() if query else None
        return [t for _, t in sorted(self._targets.items())
                if (group is None or group in t.groups) and (tag is None or tag in t.tags)
                and (q is None or any(q in (s or "").lower()
                                      for s in (t.name, t.endpoint.host, t.description)))]

    def __contains__(self, name: object) -> bool:
        return name in self._targets

    def __len__(self) -> int:
        return len(self._targets)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m phonehome_jump.inventory",
                                     description="Print the inventory JSON Schema or check a file.")
    parser.add_argument("--schema", action="store_true", help="print the JSON Schema")
    parser.add_argument("path", nargs="?", help="inventory file or directory to check")
    args = parser.parse_args(argv)
    if args.schema:
        sys.stdout.write(json.dumps(json_schema(), indent=2) + "\n")
        return 0
    if not args.path:
        parser.error("give --schema or an inventory PATH")
    try:
        inv = Inventory.load(args.path)
    except InventoryError as exc:
        print(exc, file=sys.stderr)
        return 2
    print(f"ok: {len(inv)} hosts: {', '.join(inv.names())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
