"""Import an Ansible inventory (YAML or INI form) into a phonehome-jump inventory.

Read as Ansible defines it, without Ansible installed: groups with ``hosts``, ``children``
and ``vars`` (YAML), ``[group]``, ``[group:vars]`` and ``[group:children]`` sections (INI),
``group_vars/`` and ``host_vars/`` beside the file, and variable precedence all < parent
group < child group < host. Each host gets its effective values (so the result does not
depend on phonehome-jump's group order); its Ansible groups become settings-free groups
(membership, for ``--group`` filters).

Carried over: ``ansible_host``, ``ansible_port``, ``ansible_user``,
``ansible_ssh_private_key_file``, ``ansible_network_os`` (as a netmiko device type) and
jump settings in ``ansible_ssh_common_args``/``ansible_ssh_extra_args`` (``-J a,b`` or
``-o ProxyJump=…``). A password (``ansible_password``/``ansible_ssh_pass``; the become
password as ``sudo_password``) becomes an ``env:`` reference, named in a note. Everything else is listed as not carried over.
"""

from __future__ import annotations

import os
import re
import shlex
from pathlib import Path
from typing import Any

import yaml

from ..errors import InventoryError
from . import Draft, env_name, load_yaml

_USED = {"ansible_host", "ansible_ssh_host", "ansible_port", "ansible_ssh_port", "ansible_user",
         "ansible_ssh_user", "ansible_ssh_private_key_file", "ansible_private_key_file",
         "ansible_network_os", "ansible_ssh_common_args", "ansible_ssh_extra_args",
         "ansible_password", "ansible_ssh_pass", "ansible_become_password",
         "ansible_become_pass", "ansible_connection"}
_IGNORED = {"ansible_become", "ansible_become_method", "ansible_become_user",
            "ansible_python_interpreter"}   # meaningful to Ansible only; not worth a note


class _Group:
    def __init__(self, name: str) -> None:
        self.name = name
        self.hosts: dict[str, dict[str, Any]] = {}
        self.children: list[str] = []
        self.vars: dict[str, Any] = {}


def _load_yaml(path: Path) -> Any:
    return load_yaml(path.read_text(encoding="utf-8"), str(path))


def _parse_yaml(data: Any, groups: dict[str, _Group], src: str) -> None:
    def walk(name: str, body: Any) -> None:
        g = groups.setdefault(name, _Group(name))
        if body is None:
            return
        if not isinstance(body, dict):
            raise InventoryError(f"group {name!r} must be a mapping", where=src,
                                 hint="see Ansible's YAML inventory format")
        for host, hv in (body.get("hosts") or {}).items():
            g.hosts.setdefault(str(host), {}).update(hv or {})
        g.vars.update(body.get("vars") or {})
        for child, cbody in (body.get("children") or {}).items():
            if child not in g.children:
                g.children.append(str(child))
            walk(str(child), cbody)
    if not isinstance(data, dict):
        raise InventoryError("an Ansible YAML inventory is a mapping of groups (all: …)",
                             where=src, hint="pass an Ansible inventory file")
    for name, body in data.items():
        walk(str(name), body)


def _ini_value(text: str) -> Any:
    try:
        return yaml.safe_load(text) if text else ""
    except yaml.YAMLError:
        return text


def _parse_ini(text: str, groups: dict[str, _Group], src: str) -> None:
    group, kind = groups.setdefault("ungrouped", _Group("ungrouped")), "hosts"
    for n, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        m = re.fullmatch(r"\[([^\]:]+)(?::(vars|children))?\]", line)
        if m:
            group, kind = groups.setdefault(m[1], _Group(m[1])), m[2] or "hosts"
            continue
        try:
            words = shlex.split(line, comments=True)
        except ValueError as exc:
            raise InventoryError(f"cannot parse line: {exc}", where=f"{src}:{n}",
                                 hint="check the quotes on this line") from exc
        if kind == "children":
            if words[0] not in group.children:
                group.children.append(words[0])
            groups.setdefault(words[0], _Group(words[0]))
        elif kind == "vars":
            key, _, value = line.partition("=")
            group.vars[key.strip()] = _ini_value(value.strip())
        else:
            hv = dict(w.split("=", 1) for w in words[1:] if "=" in w)
            for host in _expand_range(words[0]):
                group.hosts.setdefault(host, {}).update({k: _ini_value(v) for k, v in hv.items()})


def _expand_range(pattern: str) -> list[str]:
    """Ansible host ranges: web[01:03].example.com, db[a:c]."""
    m = re.search(r"\[([0-9a-z]+):([0-9a-z]+)(?::(\d+))?\]", pattern)
    if not m:
        return [pattern]
    a, b, step = m[1], m[2], int(m[3] or 1)
    if a.isdigit() and b.isdigit():
        values = [str(i).zfill(len(a)) for i in range(int(a), int(b) + 1, step)]
    else:
        values = [chr(c) for c in range(ord(a), ord(b) + 1, step)]
    return [h for v in values for h in _expand_range(pattern[:m.start()] + v + pattern[m.end():])]


def _vars_dir(base: Path, kind: str, name: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for p in (base / kind / name, *sorted((base / kind).glob(f"{name}.y*ml"))):
        files = sorted(p.glob("*.y*ml")) if p.is_dir() else [p] if p.is_file() else []
        for f in files:
            data = _load_yaml(f)
            if isinstance(data, dict):
                out.update(data)
    return out


def import_ansible(path: str | os.PathLike[str]) -> Draft:
    src = Path(path).expanduser()
    try:
        text = src.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise InventoryError(f"cannot read {src}: {exc}", where=str(src),
                             hint="pass an Ansible inventory file (YAML or INI)") from exc
    groups: dict[str, _Group] = {}
    if src.suffix in (".yml", ".yaml") or re.match(r"\s*(all|[\w-]+)\s*:\s*$", text.lstrip().split("\n", 1)[0]):
        _parse_yaml(_load_yaml(src), groups, str(src))
    else:
        _parse_ini(text, groups, str(src))
    all_ = groups.setdefault("all", _Group("all"))
    for name in groups:
        if name != "all" and not any(name in g.children for g in groups.values()):
            all_.children.append(name)
    base = src.parent
    for g in groups.values():
        g.vars = {**_vars_dir(base, "group_vars", g.name), **g.vars}

    # Ansible precedence: all < parent groups < child groups (by depth) < host
    depth: dict[str, int] = {}

    def mark(name: str, d: int, seen: tuple[str, ...]) -> None:
        if name in seen:
            raise InventoryError(f"group {name!r} is its own child ({' -> '.join(seen + (name,))})",
                                 where=str(src), hint="remove the cycle in children")
        depth[name] = max(depth.get(name, 0), d)
        for c in groups[name].children:
            mark(c, d + 1, seen + (name,))
    mark("all", 0, ())
    members: dict[str, list[str]] = {}

    def collect(name: str, chain: list[str]) -> None:
        for h in groups[name].hosts:
            for gname in chain + [name]:
                if gname not in members.setdefault(h, []):
                    members[h].append(gname)
        for c in groups[name].children:
            collect(c, chain + [name])
    collect("all", [])

    draft = Draft(source=str(src))
    left: dict[str, list[str]] = {}
    for host, gnames in members.items():
        hv: dict[str, Any] = {}
        for gname in sorted(gnames, key=lambda n: depth.get(n, 0)):
            hv.update(groups[gname].vars)
        for gname in gnames:
            hv.update(groups[gname].hosts.get(host) or {})
        hv.update(_vars_dir(base, "host_vars", host))
        draft.hosts[host] = _host(draft, host, hv, str(src), left)
        member = [g for g in gnames if g not in ("all", "ungrouped")]
        if member:     # membership for --group filters; the settings are already on the host
            draft.hosts[host]["groups"] = member
            for g in member:
                draft.groups.setdefault(g, {"description": f"Ansible group {g}"})
    for var, hosts in sorted(left.items()):
        draft.left_out(str(src), f"variable {var} not carried over", hosts)
    if not draft.hosts:
        raise InventoryError(f"no hosts in {src}", where=str(src),
                             hint="pass an Ansible inventory that lists hosts")
    return draft


def _host(draft: Draft, name: str, hv: dict[str, Any], src: str,
          left: dict[str, list[str]]) -> dict[str, Any]:
    where = f"{src} (host {name})"
    spec: dict[str, Any] = {"host": str(hv.get("ansible_host") or hv.get("ansible_ssh_host") or name)}
    port = hv.get("ansible_port") or hv.get("ansible_ssh_port")
    if port:
        spec["port"] = int(port)
    user = hv.get("ansible_user") or hv.get("ansible_ssh_user")
    key = hv.get("ansible_ssh_private_key_file") or hv.get("ansible_private_key_file")
    password = hv.get("ansible_password") or hv.get("ansible_ssh_pass")
    var = None
    if password is not None:
        var = env_name(name)
        if isinstance(password, str) and "{{" in password:
            draft.note(where, f"password is a Jinja expression; set it in ${var} before connecting")
        else:
            draft.note(where, f"password in clear replaced by env:{var}; export {var} before "
                              "connecting and remove the password from the Ansible file")
    cred = draft.credential(str(user) if user is not None else None,
                            key_file=str(key) if key else None, password_env=var)
    if cred:
        spec["credentials"] = cred
    become = hv.get("ansible_become_password") or hv.get("ansible_become_pass")
    if become is not None and cred:
        svar = env_name(name, "sudo")
        draft.credentials[cred]["sudo_password"] = f"env:{svar}"
        draft.note(where, f"become password replaced by env:{svar} (sudo_password)")
    if os_name := hv.get("ansible_network_os"):
        draft.device_type(spec, where, "ansible_network_os", os_name)
    args = " ".join(str(hv.get(k) or "") for k in ("ansible_ssh_common_args", "ansible_ssh_extra_args"))
    via = _jumps(draft, args, where)
    if via:
        spec["via"] = via
    for k in hv:
        if k not in _USED and k not in _IGNORED and k.startswith("ansible_"):
            left.setdefault(k, []).append(name)
    return spec


def _jumps(draft: Draft, args: str, where: str) -> list[str] | None:
    """ProxyJump from ssh arguments (-J a,b / -o ProxyJump=a,b) as jump hosts; notes the rest."""
    try:
        words = shlex.split(args)
    except ValueError:
        words = args.split()
    value = None
    for i, w in enumerate(words):
        if w == "-J" and i + 1 < len(words):
            value = words[i + 1]
        elif w.startswith("-J") and len(w) > 2:
            value = w[2:]
        elif w == "-o" and i + 1 < len(words) or w.startswith("-o"):
            opt = words[i + 1] if w == "-o" else w[2:]
            k, _, v = opt.replace(" ", "=", 1).partition("=")
            if k.lower() == "proxyjump":
                value = v
            elif k.lower() == "proxycommand":
                draft.note(where, f"ProxyCommand not carried over ({v}); write the hop as -J/ProxyJump")
    if not value or value.lower() == "none":
        return None
    return draft.jumps(value.split(","), where)
