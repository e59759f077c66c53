"""Other tools' inventories reach the lab: ssh_config, Nornir and Ansible imports, hosts as
hops, and the ssh_config export used by real OpenSSH."""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
import time
from pathlib import Path

import pytest

from phonehome_jump.cli import main
from phonehome_jump.interop.ansible import import_ansible
from phonehome_jump.interop.nornir import import_nornir
from phonehome_jump.interop.ssh_config import import_ssh_config
from phonehome_jump.inventory import Inventory
from phonehome_jump.manager import SessionManager


def reach(inv: Inventory, *hosts: str) -> dict[str, str]:
    """Open each host and return what `hostname -I` (its lab address) says."""
    out = {}
    with SessionManager(inv) as m:
        for h in hosts:
            sid = m.open(h).id
            r = m.command(sid, "hostname -I", wait=30)
            assert r.exit_status == 0, (h, r)
            out[h] = r.output.split()[0]
    return out


def load_draft(draft, tmp_path: Path, known_hosts: Path) -> Inventory:
    draft.defaults.setdefault("known_hosts", str(known_hosts))
    path = tmp_path / "imported.yaml"
    path.write_text(draft.to_yaml())
    return Inventory.load(path)


def ssh_g(conf: Path, host: str) -> dict[str, str]:
    out = subprocess.run(["ssh", "-G", "-F", str(conf), host], capture_output=True, text=True,
                         check=True).stdout
    return dict(line.split(" ", 1) for line in out.splitlines() if " " in line)


def ssh_chain(conf: Path, host: str) -> list[tuple[str, str, str]]:
    """The hops OpenSSH goes through for ``host`` (hostname, user, port), first hop first."""
    g = ssh_g(conf, host)
    jump = g.get("proxyjump", "none")
    if jump == "none":
        return []
    elements = jump.split(",")
    first = ssh_chain(conf, elements[0]) + [_hop(conf, elements[0])]
    return first + [_hop(conf, e) for e in elements[1:]]


def _hop(conf: Path, element: str) -> tuple[str, str, str]:
    """One ProxyJump element as OpenSSH prints it: [user@]host[:port], host maybe in []."""
    user, _, rest = element.rpartition("@")
    host, port = (rest[1:].split("]", 1) if rest.startswith("[") else (rest, ""))
    if not rest.startswith("["):
        host, _, port = rest.partition(":")
    g = ssh_g(conf, host)
    return g["hostname"], user or g["user"], port.lstrip(":") or g["port"]


@pytest.fixture
def agent(lab, monkeypatch):
    """An ssh-agent holding the lab key, as Ansible users rely on for -J jumps."""
    sock = Path(f"/tmp/phj-agent-{os.getpid()}.sock")
    sock.unlink(missing_ok=True)
    proc = subprocess.Popen(["ssh-agent", "-D", "-a", str(sock)], stdout=subprocess.DEVNULL)
    try:
        # the socket file appears before the agent listens on it: add until it answers
        deadline = time.monotonic() + 30
        while True:
            add = subprocess.run(["ssh-add", "-q", str(lab.key_file)], capture_output=True,
                                 text=True, env={**os.environ, "SSH_AUTH_SOCK": str(sock)})
            if add.returncode == 0:
                break
            assert proc.poll() is None, "ssh-agent exited"
            assert time.monotonic() < deadline, add.stderr
            threading.Event().wait(0.05)
        monkeypatch.setenv("SSH_AUTH_SOCK", str(sock))
        yield sock
    finally:
        proc.terminate()
        proc.wait(10)
        sock.unlink(missing_ok=True)


def test_200_host_ssh_config_matches_ssh_G_and_reaches_targets(lab, tmp_path):
    j1, j2 = lab.addr("jump1"), lab.addr("jump2")
    targets = [lab.addr(f"target{i}") for i in (1, 2, 3)]
    lines = [f"Host jump1\n  HostName {j1}\n",
             f"Host jump2\n  HostName {j2}\n  ProxyJump jump1\n"]
    for i in range(200):
        jump = ("jump2", "jump1,jump2", f"jump1,phjkey@{j2}")[i % 3]
        lines.append(f"Host node{i:03d}\n  HostName {targets[i % 3]}\n  ProxyJump {jump}\n")
    lines.append(f"Host *\n  User phjkey\n  IdentityFile {lab.key_file}\n"
                 f"  UserKnownHostsFile {lab.known_hosts}\n  ForwardAgent no\n")
    conf = tmp_path / "config"
    conf.write_text("\n".join(lines))
    draft = import_ssh_config(conf)
    assert len(draft.hosts) == 202
    assert any("forwardagent" in n.what for n in draft.notes)          # listed, not dropped
    inv = load_draft(draft, tmp_path, lab.known_hosts)
    if shutil.which("ssh"):
        for name in inv.names():
            t = inv.target(name)
            ours = [(h.host, h.username, str(h.port)) for h in t.chain]
            assert ours == ssh_chain(conf, name), name
            assert (t.endpoint.host, t.endpoint.username) == (ssh_g(conf, name)["hostname"],
                                                              ssh_g(conf, name)["user"])
    got = reach(inv, "node000", "node001", "node002")
    assert got == {"node000": targets[0], "node001": targets[1], "node002": targets[2]}


def test_nornir_inventory_reaches_targets_through_hosts_as_hops(lab, tmp_path):
    d = tmp_path / "nornir"
    d.mkdir()
    (d / "defaults.yaml").write_text(
        f"username: phjkey\nconnection_options:\n  netmiko:\n    extras: {{key_file: {lab.key_file}}}\n")
    (d / "groups.yaml").write_text("lab:\n  platform: linux\n  data: {proxyjump: jump2}\n")
    (d / "hosts.yaml").write_text(
        f"jump1: {{hostname: {lab.addr('jump1')}}}\n"
        f"jump2: {{hostname: {lab.addr('jump2')}, data: {{via: jump1}}}}\n"
        f"t1: {{hostname: {lab.addr('target1')}, groups: [lab]}}\n"
        f"t2: {{hostname: {lab.addr('target2')}, groups: [lab], port: 22}}\n")
    inv = load_draft(import_nornir([str(d)]), tmp_path, lab.known_hosts)
    assert [h.name for h in inv.target("t1").chain] == ["jump1", "jump2"]
    assert reach(inv, "t1", "t2") == {"t1": lab.addr("target1"), "t2": lab.addr("target2")}


@pytest.mark.parametrize("form", ["ini", "yaml"])
def test_ansible_inventory_with_children_and_jump_args_reaches_targets(lab, tmp_path, agent, form):
    jumps = f"-J phjkey@{lab.addr('jump1')},phjkey@{lab.addr('jump2')}"
    if form == "ini":
        text = (f"[web]\nt1 ansible_host={lab.addr('target1')}\n"
                f"[db]\nt3 ansible_host={lab.addr('target3')} ansible_port=22\n"
                f"[lab:children]\nweb\ndb\n"
                f"[lab:vars]\nansible_user=phjkey\nansible_ssh_private_key_file={lab.key_file}\n"
                f"ansible_ssh_common_args='{jumps}'\n")
        path = tmp_path / "hosts.ini"
    else:
        text = (f"all:\n  vars: {{ansible_user: phjkey, ansible_ssh_private_key_file: {lab.key_file}}}\n"
                f"  children:\n    lab:\n      vars: {{ansible_ssh_common_args: '{jumps}'}}\n"
                f"      children:\n        web:\n          hosts:\n"
                f"            t1: {{ansible_host: {lab.addr('target1')}}}\n"
                f"        db:\n          hosts:\n            t3: {{ansible_host: {lab.addr('target3')}}}\n")
        path = tmp_path / "inventory.yml"
    path.write_text(text)
    inv = load_draft(import_ansible(path), tmp_path, lab.known_hosts)
    assert set(inv.target("t1").groups) == {"lab", "web"}
    assert [t.name for t in inv.targets(group="db")] == ["t3"]
    assert len(inv.target("t3").chain) == 2
    assert reach(inv, "t1", "t3") == {"t1": lab.addr("target1"), "t3": lab.addr("target3")}


def test_a_lab_host_used_as_a_hop(lab, tmp_path):
    text = lab.inventory.read_text() + (
        f"  via-host: {{host: {lab.addr('target2')}, via: lab-jump2, credentials: lab-key}}\n")
    path = tmp_path / "inv.yaml"
    path.write_text(text)
    inv = Inventory.load(path)
    assert [h.name for h in inv.target("via-host").chain] == ["jump1", "lab-jump2"]
    assert reach(inv, "via-host") == {"via-host": lab.addr("target2")}


def test_export_ssh_config_is_used_by_real_openssh(lab, tmp_path, capsys):
    if not shutil.which("ssh"):
        pytest.fail("OpenSSH client missing (make system installs it)")
    out = tmp_path / "ssh_config"
    assert main(["--inventory", str(lab.inventory), "inventory", "export", "ssh-config",
                 "-o", str(out)]) == 0
    proc = subprocess.run(["ssh", "-F", str(out), "-o", "BatchMode=yes", "lab-target1",
                           "hostname -I"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split()[0] == lab.addr("target1")
