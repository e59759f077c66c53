"""Import an OpenSSH client config (``~/.ssh/config``) into a phonehome-jump inventory.

Parsed with paramiko's ``SSHConfig`` (OpenSSH's first-value-wins rules, ``Host`` patterns,
``%`` tokens). Every concrete ``Host`` alias becomes a host; ``ProxyJump`` lists become ``via``
chains (an alias used as a jump is the same host, since hosts can be hops); a jump written as
``user@host:port`` becomes a jump host. ``Include`` is followed (relative paths from ~/.ssh).

Left behind, each with a note: ``Match`` blocks (never evaluated: ``Match exec`` would run
commands), ``ProxyCommand``, ``StrictHostKeyChecking no`` (phonehome-jump always checks host
keys), extra ``IdentityFile`` lines, and every option phonehome-jump has no equivalent for.
"""

from __future__ import annotations

import contextlib
import getpass
import glob
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paramiko

from ..errors import InventoryError
from . import Draft, jump_name, parse_jump

#: Options read here; every other option found on a host is listed as not carried over.
_USED = {"hostname", "user", "port", "identityfile", "proxyjump", "proxycommand",
         "userknownhostsfile", "stricthostkeychecking", "connecttimeout", "serveraliveinterval"}
_WILD = re.compile(r"[*?!]")
_MAX_INCLUDE_DEPTH = 16


def _read(path: Path, notes: list[tuple[str, str]], depth: int = 0) -> list[tuple[str, str]]:
    """Lines of ``path`` with Include expanded, each as (where, text)."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise InventoryError(f"{path} is not UTF-8 text ({exc.reason} at byte {exc.start})",
                             where=str(path), hint="convert the file to UTF-8") from exc
    except OSError as exc:
        raise InventoryError(f"cannot read {path}: {exc.strerror}", where=str(path),
                             hint="pass the path of an OpenSSH client config") from exc
    out: list[tuple[str, str]] = []
    for n, line in enumerate(text.splitlines(), 1):
        where = f"{path}:{n}"
        words = line.strip().split(None, 1)
        if words and words[0].lower() == "include" and len(words) == 2:
            if depth >= _MAX_INCLUDE_DEPTH:
                notes.append((where, "Include nested too deeply; not followed"))
                continue
            for pattern in words[1].split():
                pattern = os.path.expanduser(pattern)
                if not os.path.isabs(pattern):
                    pattern = os.path.join(os.path.expanduser("~/.ssh"), pattern)
                matched = sorted(glob.glob(pattern))
                if not matched:
                    notes.append((where, f"Include {pattern} matched no file"))
                for inc in matched:
                    out += _read(Path(inc), notes, depth + 1)
            continue
        out.append((where, line))
    return out


def _blocks(lines: list[tuple[str, str]], notes: list[tuple[str, str]]) -> tuple[str, list[tuple[str, list[str], dict[str, str]]]]:
    """The config text without Match blocks, and each Host block's (where, patterns, options)."""
    kept: list[str] = []
    blocks: list[tuple[str, list[str], dict[str, str]]] = []
    in_match = False
    for where, line in lines:
        words = line.strip().replace("=", " ", 1).split(None, 1) if line.strip() else []
        key = words[0].lower() if words else ""
        if key == "match":
            in_match = True
            notes.append((where, f"Match block not carried over ({line.strip()}); add its "
                                 "settings to the hosts it applies to by hand"))
            continue
        if key == "host":
            in_match = False
            blocks.append((where, words[1].split() if len(words) > 1 else [], {}))
        if in_match:
            continue
        if key and not key.startswith("#") and key != "host" and blocks:
            blocks[-1][2].setdefault(key, where)
        kept.append(line)
    return "\n".join(kept) + "\n", blocks


@contextlib.contextmanager
def _cheap_local_user() -> Iterator[None]:
    """paramiko asks getpass.getuser() once per Host block per lookup (for `Match localuser`);
    without USER/LOGNAME in the environment each call is a passwd lookup, which makes a
    200-host import take seconds. Provide the same answer from the environment meanwhile."""
    if any(os.environ.get(k) for k in ("LOGNAME", "USER", "LNAME", "USERNAME")):
        yield
        return
    os.environ["USER"] = getpass.getuser()
    try:
        yield
    finally:
        os.environ.pop("USER", None)


def import_ssh_config(path: str | os.PathLike[str]) -> Draft:
    with _cheap_local_user():
        return _import(Path(path).expanduser())


def _import(src: Path) -> Draft:
    raw_notes: list[tuple[str, str]] = []
    text, blocks = _blocks(_read(src, raw_notes), raw_notes)
    parsed = paramiko.SSHConfig.from_text(text)
    cache: dict[str, dict[str, Any]] = {}

    class config:   # noqa: N801 - memoised lookups: jumps look the same hosts up again
        @staticmethod
        def lookup(name: str) -> dict[str, Any]:
            if name not in cache:
                cache[name] = dict(parsed.lookup(name))
            return cache[name]
    draft = Draft(source=str(src))
    for where, what in raw_notes:
        draft.note(where, what)

    aliases: dict[str, str] = {}          # alias -> where its Host line is
    for where, patterns, _ in blocks:
        for p in patterns:
            if not _WILD.search(p) and p not in aliases:
                aliases[p] = where
    options_seen: dict[str, list[str]] = {}
    for where, patterns, options in blocks:
        for opt in options:
            if opt not in _USED:
                options_seen.setdefault(opt, []).extend(
                    p for p in patterns if p not in options_seen.get(opt, []))

    def settings(name: str, where: str, cfg: dict[str, Any], *, user: str | None = None,
                 port: int | None = None) -> dict[str, Any]:
        spec: dict[str, Any] = {"host": cfg.get("hostname", name)}
        if port or cfg.get("port"):
            spec["port"] = int(port or cfg["port"])
        keys = cfg.get("identityfile") or []
        if len(keys) > 1:
            draft.note(where, f"{name}: only the first IdentityFile is used ({keys[0]}); "
                              f"left out: {', '.join(keys[1:])}")
        cred = draft.credential(user or cfg.get("user"), key_file=keys[0] if keys else None)
        if cred:
            spec["credentials"] = cred
        kh = (cfg.get("userknownhostsfile") or "").split()
        if kh and kh[0] != "/dev/null":
            spec["known_hosts"] = kh[0]
        elif kh:
            draft.note(where, f"{name}: UserKnownHostsFile /dev/null not carried over: "
                              "host keys are always checked (default ~/.ssh/known_hosts)")
        strict = (cfg.get("stricthostkeychecking") or "").lower()
        if strict == "accept-new":
            spec["host_key_policy"] = "accept-new"
        elif strict in ("no", "off"):
            draft.note(where, f"{name}: StrictHostKeyChecking {strict} not carried over: "
                              "phonehome-jump always checks host keys (strict)")
        if cfg.get("connecttimeout"):
            spec["connect_timeout"] = float(cfg["connecttimeout"])
        if cfg.get("serveraliveinterval"):
            spec["keepalive"] = int(cfg["serveraliveinterval"])
        return spec

    def jump(element: str, where: str, first: bool) -> str | None:
        """The hop name for one ProxyJump element, defining a jump host when needed."""
        parsed = parse_jump(element)
        if parsed is None:
            draft.note(where, f"ProxyJump element {element!r} not understood; set via by hand")
            return None
        user, host, port = parsed
        cfg = config.lookup(host)
        own_jump = (cfg.get("proxyjump") or "none").lower() != "none"
        if host in aliases and not user and not port and (first or not own_jump):
            return host                                   # the same host, as a hop
        # OpenSSH ignores the own ProxyJump of every element but the first
        name = host if host not in aliases else f"{host}-hop"
        if user or port:
            name = jump_name(f"{user + '@' if user else ''}{name}{f':{port}' if port else ''}")
        if name not in draft.jump_hosts:
            spec = settings(name, where, cfg, user=user, port=port)
            if first and own_jump:
                via = chain_of(host, where, cfg.get("proxyjump", ""), seen=(host,))
                if via:
                    spec["via"] = via
            draft.jump_hosts[name] = spec
        return name

    def chain_of(name: str, where: str, proxyjump: str, seen: tuple[str, ...] = ()) -> list[str] | None:
        if not proxyjump or proxyjump.lower() == "none":
            return None
        names: list[str] = []
        for i, element in enumerate(proxyjump.split(",")):
            hop = jump(element, where, first=(i == 0))
            if hop is None:
                return None
            if hop in seen:
                draft.note(where, f"{name}: ProxyJump goes through itself ({hop}); not carried over")
                return None
            names.append(hop)
        return names

    for alias, where in aliases.items():
        cfg = config.lookup(alias)
        spec = settings(alias, where, cfg)
        if cfg.get("proxycommand") and (cfg.get("proxycommand") or "").lower() != "none":
            draft.note(where, f"{alias}: ProxyCommand not carried over ({cfg['proxycommand']}); "
                              "if it is `ssh -W`, write the hop as via/ProxyJump")
        via = chain_of(alias, where, cfg.get("proxyjump", ""), seen=(alias,))
        if via:
            spec["via"] = via
        draft.hosts[alias] = spec
    for opt, hosts in sorted(options_seen.items()):
        draft.left_out(str(src), f"option {opt} has no phonehome-jump equivalent", hosts)
    if not draft.hosts:
        raise InventoryError(f"no concrete Host entries in {src}", where=str(src),
                             hint="Host lines with wildcards only (Host *) define no host")
    return draft
