"""``phonehome-jump inventory import|export``: the CLI side of the importers and the exporter.

Kept out of cli.py so the command line stays a thin list of commands; cli.py registers these.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from ..errors import InventoryError
from ..inventory import Inventory


def add_inventory_commands(inv_cmds: argparse._SubParsersAction, common: argparse.ArgumentParser,
                           load: "object") -> None:
    """Add ``import`` and ``export`` under ``inventory``; ``load(args)`` loads the inventory."""
    p = inv_cmds.add_parser(
        "import", parents=[common], help="write an inventory from ssh_config, Nornir or Ansible",
        description="Read another tool's inventory and write a phonehome-jump inventory (YAML) "
                    "that `inventory check` accepts. What cannot be carried over is listed as "
                    "comments in the output and on stderr; passwords become env: references.")
    p.add_argument("format", choices=["ssh-config", "nornir", "ansible"])
    p.add_argument("paths", nargs="+", metavar="PATH",
                   help="ssh-config: the config file (e.g. ~/.ssh/config); nornir: the directory "
                        "or its hosts/groups/defaults files; ansible: the inventory file")
    p.add_argument("-o", "--output", metavar="FILE", help="write here (default: stdout); "
                   "refuses to overwrite an existing file unless --force")
    p.add_argument("--force", action="store_true", help="overwrite --output if it exists")
    p.add_argument("--known-hosts", metavar="FILE",
                   help="known_hosts file for every host and hop (defaults.known_hosts); "
                        "default ~/.ssh/known_hosts, as ssh and Ansible use")
    p.set_defaults(func=cmd_inventory_import)
    p = inv_cmds.add_parser(
        "export", parents=[common], help="write the inventory as an OpenSSH config",
        description="Write an OpenSSH client config that reaches every host through the same "
                    "chain (ssh -F FILE HOST, scp, rsync). Passwords stay references.")
    p.add_argument("format", choices=["ssh-config"])
    p.add_argument("-o", "--output", metavar="FILE", help="write here (default: stdout)")
    p.add_argument("--force", action="store_true", help="overwrite --output if it exists")
    p.set_defaults(func=lambda args: cmd_inventory_export(args, load(args)))


def _write(text: str, output: str | None, force: bool) -> None:
    if output is None:
        sys.stdout.write(text)
        return
    path = Path(output).expanduser()
    if path.exists() and not force:
        raise InventoryError(f"{path} exists", where="--output",
                             hint="choose another file or pass --force to overwrite it")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(text)


def cmd_inventory_import(args: argparse.Namespace) -> int:
    if args.format == "ssh-config":
        from .ssh_config import import_ssh_config
        if len(args.paths) != 1:
            raise InventoryError("ssh-config takes one file", where="PATH",
                                 hint="pass the config file; its Include lines are followed")
        draft = import_ssh_config(args.paths[0])
    elif args.format == "ansible":
        from .ansible import import_ansible
        if len(args.paths) != 1:
            raise InventoryError("ansible takes one inventory file", where="PATH",
                                 hint="pass the inventory file; group_vars/ and host_vars/ "
                                      "beside it are read")
        draft = import_ansible(args.paths[0])
    else:
        from .nornir import import_nornir
        draft = import_nornir(args.paths)
    if args.known_hosts:
        draft.defaults.setdefault("known_hosts", args.known_hosts)
    text = draft.to_yaml()
    Inventory.from_text(text, f"<import of {draft.source}>")   # what we write must load
    _write(text, args.output, args.force)
    for note in draft.notes:
        print(f"phonehome-jump: not carried over: {note}", file=sys.stderr)
    n = len(draft.hosts)
    print(f"phonehome-jump: imported {n} host{'s' * (n != 1)}, {len(draft.jump_hosts)} jump "
          f"host{'s' * (len(draft.jump_hosts) != 1)}"
          + (f" into {args.output}" if args.output else ""), file=sys.stderr)
    return 0


def cmd_inventory_export(args: argparse.Namespace, inventory: Inventory) -> int:
    from .export import export_ssh_config
    _write(export_ssh_config(inventory), args.output, args.force)
    return 0
