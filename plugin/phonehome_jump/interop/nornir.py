"""Import a Nornir SimpleInventory (hosts, groups and defaults files) into an inventory.

Nornir's own resolution: a host's attribute comes from the host, then its groups (in order,
each group's parent groups after it, depth first), then defaults. Carried over: ``hostname``,
``port``, ``username``, ``platform`` (as a netmiko device type; ``connection_options.netmiko``
overrides it), the netmiko extras ``key_file``/``use_keys`` and the jump settings
``data.proxyjump`` / ``data.via`` (``"a,b"`` or a list; names of other hosts are hops). A
``password`` becomes an ``env:`` reference named in a note; other attributes are listed as not
carried over, and ``data`` entries that are not jump settings are kept as nothing (they are the
user's own variables).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import InventoryError
from . import Draft, env_name, load_yaml

_ATTRS = ("hostname", "port", "username", "password", "platform")
_KNOWN = set(_ATTRS) | {"groups", "data", "connection_options"}


def _files(paths: list[str]) -> dict[str, Path]:
    """hosts/groups/defaults files from a directory or explicit file names."""
    found: dict[str, Path] = {}
    for p in map(lambda x: Path(x).expanduser(), paths):
        if p.is_dir():
            for kind in ("hosts", "groups", "defaults"):
                for ext in (".yaml", ".yml"):
                    if (p / f"{kind}{ext}").is_file():
                        found.setdefault(kind, p / f"{kind}{ext}")
        elif p.is_file():
            kind = p.stem.split(".")[0]
            found[kind if kind in ("hosts", "groups", "defaults") else "hosts"] = p
        else:
            raise InventoryError(f"no such file or directory: {p}", where=str(p),
                                 hint="pass a Nornir inventory directory or its hosts/groups/"
                                      "defaults files")
    if "hosts" not in found:
        raise InventoryError("no Nornir hosts file found", where=", ".join(paths),
                             hint="pass the directory holding hosts.yaml (and groups.yaml, "
                                  "defaults.yaml), or the files themselves")
    return found


def _read(path: Path | None) -> dict[str, Any]:
    if path is None:
        return {}
    data = load_yaml(path.read_text(encoding="utf-8"), str(path))
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise InventoryError("a Nornir inventory file is a mapping", where=str(path),
                             hint="see Nornir's SimpleInventory format")
    return data


def import_nornir(paths: list[str]) -> Draft:
    files = _files(paths)
    hosts, groups, defaults = (_read(files.get(k)) for k in ("hosts", "groups", "defaults"))
    src = str(files["hosts"])
    draft = Draft(source=", ".join(str(p) for p in files.values()))

    def group_chain(names: list[str], seen: tuple[str, ...] = ()) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for g in names:
            if g in seen:
                raise InventoryError(f"group {g!r} is its own parent", where=str(files.get("groups")),
                                     hint="remove the cycle in groups")
            if g not in groups:
                draft.note(src, f"unknown group {g!r}; ignored")
                continue
            body = groups[g] or {}
            out.append(body)
            out += group_chain(list(body.get("groups") or []), seen + (g,))
        return out

    left: dict[str, list[str]] = {}
    for name, body in hosts.items():
        name = str(name)
        body = body or {}
        layers = [body, *group_chain(list(body.get("groups") or [])), defaults]

        def get(key: str) -> Any:
            return next((lay[key] for lay in layers if lay.get(key) is not None), None)

        def netmiko(key: str) -> Any:
            for lay in layers:
                opts = ((lay.get("connection_options") or {}).get("netmiko") or {})
                if opts.get(key) is not None:
                    return opts[key]
                if (opts.get("extras") or {}).get(key) is not None:
                    return opts["extras"][key]
            return None

        def data(key: str) -> Any:
            return next(((lay.get("data") or {})[key] for lay in layers
                         if (lay.get("data") or {}).get(key) is not None), None)

        where = f"{src} (host {name})"
        spec: dict[str, Any] = {"host": str(netmiko("hostname") or get("hostname") or name)}
        port = netmiko("port") or get("port")
        if port:
            spec["port"] = int(port)
        var = None
        if (netmiko("password") or get("password")) is not None:
            var = env_name(name)
            draft.note(where, f"password in clear replaced by env:{var}; export {var} before "
                              "connecting and remove it from the Nornir files")
        key = netmiko("key_file")
        cred = draft.credential(netmiko("username") or get("username"),
                                key_file=str(key) if key else None, password_env=var)
        if cred:
            spec["credentials"] = cred
        secret = netmiko("secret")
        if secret is not None:
            draft.note(where, "netmiko enable secret not carried over; use a sudo_password/"
                              "secret reference by hand")
        if platform := netmiko("platform") or get("platform"):
            draft.device_type(spec, where, "platform", platform)
        jump = data("proxyjump") or data("via") or data("jump_host")
        if jump:
            names = [str(j) for j in (jump.split(",") if isinstance(jump, str) else jump)]
            if via := draft.jumps(names, where, hosts):
                spec["via"] = via
        if body.get("groups"):      # membership; the settings are already on the host
            spec["groups"] = [str(g) for g in body["groups"] if str(g) in groups]
            for g in spec["groups"]:
                draft.groups.setdefault(g, {"description": f"Nornir group {g}"})
        draft.hosts[name] = spec
        for k in body:
            if k not in _KNOWN:
                left.setdefault(k, []).append(name)
    for k, names in sorted(left.items()):
        draft.left_out(src, f"attribute {k!r} not carried over", names)
    if not draft.hosts:
        raise InventoryError("no hosts in the Nornir inventory", where=src,
                             hint="hosts.yaml lists no hosts")
    return draft


__all__ = ["import_nornir"]
