"""Export an inventory as an OpenSSH client config, so ssh, scp and rsync reach every host
through the same chain.

Every hop and host becomes a ``Host`` block named like the inventory entry, with its
address, port, user, key, known_hosts and host-key policy; a host's chain is written as
one ``ProxyJump`` list of hop names, first hop first (OpenSSH then reaches the first hop
with its own settings and each next hop through the previous one, as phonehome-jump does).
Passwords, device types and policies have no ssh_config form: they appear as comments.
"""

from __future__ import annotations

from ..inventory import Endpoint, Inventory

_POLICY = {"strict": "yes", "accept-new": "accept-new"}


def _block(ep: Endpoint, chain: tuple[Endpoint, ...], comments: list[str]) -> list[str]:
    lines = [f"Host {ep.name}"] + [f"  # {c}" for c in comments]
    lines += [f"  HostName {ep.host}", f"  Port {ep.port}", f"  User {ep.username}"]
    if ep.auth.key_file is not None:
        lines += [f"  IdentityFile {ep.auth.key_file}", "  IdentitiesOnly yes"]
    if ep.auth.password is not None:
        lines.append(f"  # password: {ep.auth.password} (a reference; ssh will ask for it)")
    lines += [f"  UserKnownHostsFile {ep.known_hosts}",
              f"  StrictHostKeyChecking {_POLICY.get(ep.host_key_policy, 'yes')}",
              f"  ConnectTimeout {max(1, round(ep.connect_timeout))}"]
    if ep.keepalive:
        lines.append(f"  ServerAliveInterval {ep.keepalive}")
    lines.append(f"  ProxyJump {','.join(h.name for h in chain)}" if chain else "  ProxyJump none")
    return lines


def export_ssh_config(inventory: Inventory) -> str:
    """The inventory as an OpenSSH config (hops first, then hosts, in name order)."""
    out = ["# OpenSSH client config exported by phonehome-jump from "
           + (", ".join(str(s) for s in inventory.sources) or "an inventory"),
           "# Use it with: ssh -F THIS_FILE HOST  (or Include it from ~/.ssh/config)", ""]
    targets = [inventory.target(n) for n in inventory.names()]
    hops: dict[str, tuple[Endpoint, tuple[Endpoint, ...]]] = {}
    for t in targets:
        for i, hop in enumerate(t.chain):
            hops.setdefault(hop.name, (hop, t.chain[:i]))
    names = {t.name for t in targets}
    for name, (hop, chain) in sorted(hops.items()):
        if name not in names:                     # a host used as a hop is written once, below
            out += _block(hop, chain, ["jump host"]) + [""]
    for t in targets:
        comments = [f"device_type {t.device_type}"] if t.device_type != "linux" else []
        if t.description:
            comments.append(t.description.replace("\n", " "))
        out += _block(t.endpoint, t.chain, comments) + [""]
    return "\n".join(out)
