"""``phonehome-jump inventory check --keys``: every hop's host key at once (keyscan.py)."""

from __future__ import annotations

import sys
from collections.abc import Sequence

import paramiko

from .chain import fingerprint
from .inventory import Endpoint, Inventory
from .keyscan import scan, write_lines

PROG = "phonehome-jump"


def _ask(ep: Endpoint, role: str, key: paramiko.PKey) -> bool:
    """On a terminal, the person confirms a new key; otherwise nothing is trusted."""
    if not sys.stdin.isatty():
        return False
    print(f"{role} {ep.name} ({ep.username}@{ep.host}:{ep.port}) offers {key.get_name()} "
          f"{fingerprint(key)}, which {ep.known_hosts} does not have.", flush=True)
    try:
        answer = input("Is this its key (checked with its owner)? Trust it for this check "
                       "[y/N] ")
    except EOFError:
        return False
    return answer.strip().lower() in ("y", "yes")


def check_keys(inv: Inventory, hosts: Sequence[str], *, write: bool = False) -> int:
    for name in hosts:
        inv.target(name)                      # unknown names: exit 2 before connecting
    result = scan(inv, hosts, _ask)
    try:
        for r in result.reports:
            text = f"{r.label}: "
            if r.status == "ok":
                text += f"ok, {r.key_type} {r.fingerprint}"
            elif r.status == "missing":
                text += (f"MISSING from {r.endpoint.known_hosts}: {r.key_type} {r.fingerprint}"
                         + (" (confirmed)" if r.confirmed else " (not confirmed)"))
            elif r.status == "changed":
                text += f"CHANGED: offers {r.key_type} {r.fingerprint}; {r.detail}"
            else:
                text += f"{r.status}: {r.detail}"
            if r.status in ("ok", "missing") and r.detail:
                text += f"; {r.detail}"
            print(text)
    finally:
        result.close()
    confirmed = [r for r in result.reports if r.status == "missing" and r.confirmed]
    if confirmed and write:
        for path, count in write_lines(confirmed).items():
            print(f"added {count} key{'s' * (count != 1)} to {path}")
    elif confirmed:
        print("\nknown_hosts lines for the keys you confirmed (or rerun with --write):")
        by_file: dict[str, list[str]] = {}
        for r in confirmed:
            by_file.setdefault(str(r.endpoint.known_hosts), []).append(r.line or "")
        for path, lines in by_file.items():
            print(f"# {path}")
            print("\n".join(lines))
    unconfirmed = [r for r in result.reports if r.status == "missing" and not r.confirmed]
    if unconfirmed:
        print(f"\n{len(unconfirmed)} key{'s' * (len(unconfirmed) != 1)} not confirmed"
              + ("" if sys.stdin.isatty() else " (run on a terminal to confirm them one by one)")
              + "; their lines, once you have checked the fingerprints:")
        for r in unconfirmed:
            print(f"# {r.endpoint.known_hosts}\n{r.line}")
    if result.ok:
        return 0
    return 0 if write and all(r.status == "ok" or (r.status == "missing" and r.confirmed)
                              for r in result.reports) else 1
