"""Local files reported as local files, against the real lab: known_hosts read like OpenSSH
(markers, bad lines), key files named with what is wrong, before any packet is sent."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from phonehome_jump.errors import HostKeyError, LocalFileError
from phonehome_jump.inventory import Inventory
from phonehome_jump.manager import SessionManager


def with_files(lab, tmp_path: Path, *, known_hosts: str | Path | None = None,
               key_file: Path | None = None) -> Inventory:
    text = lab.inventory.read_text()
    if known_hosts is not None:
        path = known_hosts if isinstance(known_hosts, Path) else tmp_path / "known_hosts"
        if not isinstance(known_hosts, Path):
            path.write_text(known_hosts)
        text = text.replace(f"known_hosts: {lab.known_hosts}", f"known_hosts: {path}")
    if key_file is not None:
        text = text.replace(f"key_file: {lab.key_file}", f"key_file: {key_file}")
    inv = tmp_path / "inv.yaml"
    inv.write_text(text)
    return Inventory.load(inv)


def test_ca_revoked_and_truncated_lines_do_not_break_the_others(lab, tmp_path, caplog):
    good = lab.known_hosts.read_text()
    other = lab.host_key_line("target3").split(" ", 1)[1]
    extra = (f"@cert-authority *.corp.example {other}\n"
             f"@revoked 192.0.2.99 {other}\n"
             f"10.99.0.1 {other[:40]}\n")
    inv = with_files(lab, tmp_path, known_hosts=extra + good)
    with SessionManager(inv) as m:
        sid = m.open("lab-target1").id
        assert m.command(sid, "echo through").output == "through\n"
    warned = caplog.text
    assert "known_hosts:1: @cert-authority line skipped" in warned
    assert "known_hosts:3:" in warned and "truncated" in warned


@pytest.mark.parametrize("node,hop", [("jump2", "jump2"), ("target1", "lab-target1")])
def test_revoked_host_key_is_refused(lab, tmp_path, node, hop):
    key = lab.host_key_line(node).split(" ", 1)[1]
    inv = with_files(lab, tmp_path, known_hosts=lab.known_hosts.read_text() + f"@revoked * {key}\n")
    with SessionManager(inv) as m, pytest.raises(HostKeyError) as err:
        m.open("lab-target1")
    assert err.value.hop == hop and "@revoked at" in str(err.value)
    assert f"{tmp_path / 'known_hosts'}:" in str(err.value)


def test_directory_known_hosts_is_named(lab, tmp_path):
    inv = with_files(lab, tmp_path, known_hosts=tmp_path)
    with SessionManager(inv) as m, pytest.raises(LocalFileError) as err:
        m.open("lab-target1")
    assert err.value.hop == "jump1" and f"known_hosts {tmp_path} is a directory" in str(err.value)
    assert "routing" not in str(err.value)


def test_key_file_problems_are_named_not_taken_for_network_faults(lab, tmp_path):
    cases = {}
    cases["missing"] = (tmp_path / "absent", "does not exist")
    cases["directory"] = (tmp_path, "is a directory")
    junk = tmp_path / "junk"
    junk.write_text("-----BEGIN NOTHING-----\n")
    os.chmod(junk, 0o600)
    cases["not a key"] = (junk, "is not a private key")
    loose = tmp_path / "loose"
    shutil.copy(lab.key_file, loose)
    os.chmod(loose, 0o640)
    cases["group readable"] = (loose, "accessible by group or others (mode 0640)")
    for label, (path, words) in cases.items():
        inv = with_files(lab, tmp_path, key_file=path)
        with SessionManager(inv) as m, pytest.raises(LocalFileError) as err:
            m.open("lab-target1")
        text = str(err.value)
        assert err.value.hop == "jump1" and str(path) in text and words in text, (label, text)
        assert "routing" not in text and "SSH server" not in text, (label, text)
    assert "chmod 600 " + str(loose) in text


def test_inventory_check_warns_before_connecting(lab, tmp_path):
    inv = tmp_path / "inv.yaml"
    inv.write_text(lab.inventory.read_text().replace(f"key_file: {lab.key_file}",
                                                     f"key_file: {tmp_path / 'gone'}"))
    env = {k: v for k, v in os.environ.items() if k not in lab.env}
    proc = subprocess.run([str(Path(sys.executable).parent / "phonehome-jump"), "inventory",
                           "check", str(inv)], capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr
    assert "ok:" in proc.stdout
    assert f"key_file {tmp_path / 'gone'} does not exist" in proc.stderr
    assert "PHJ_LAB_PASSWORD is not set" in proc.stderr
