"""known_hosts read like OpenSSH (markers, patterns, hashed names, bad lines) and local key checks."""

import base64
import os
import subprocess
from pathlib import Path

import paramiko
import pytest

from phonehome_jump import known_hosts as kh
from phonehome_jump.inventory import Inventory
from phonehome_jump.localfiles import key_file_problem, preflight

KEY = "AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl"
OTHER = "AAAAC3NzaC1lZDI1NTE5AAAAIHb3Dyw8nS3kXDVqAQKKBbuq1lJNzFqjt2QTw5Ld2iBe"


def test_markers_patterns_and_bad_lines():
    text = "\n".join([
        "# comment",
        f"10.0.0.1,gw.example.net ssh-ed25519 {KEY}",
        f"@cert-authority *.example.net ssh-ed25519 {OTHER}",
        f"[10.0.0.2]:2222 ssh-ed25519 {KEY}",
        f"*.lab,!bad.lab ssh-ed25519 {KEY}",
        f"truncated ssh-ed25519 {KEY[:-8]}",
        f"badb64 ssh-ed25519 {KEY[:-1]}",
        "@nonsense h ssh-ed25519 AAAA",
        "onlyhost",
    ]) + "\n"
    parsed = kh.parse(text, "kh")
    assert [w.split(":")[1] for w in parsed.warnings] == ["3", "6", "7", "8", "9"]
    assert "@cert-authority" in parsed.warnings[0] and "kh:6" in parsed.warnings[1]
    assert [e.where for e in parsed.host_entries("gw.example.net", 22)] == ["kh:2"]
    assert [e.where for e in parsed.host_entries("10.0.0.2", 2222)] == ["kh:4"]
    assert parsed.host_entries("10.0.0.2", 22) == []
    assert [e.where for e in parsed.host_entries("x.lab", 22)] == ["kh:5"]
    assert parsed.host_entries("bad.lab", 22) == []           # negated pattern vetoes the line


def test_hashed_names_match():
    hashed = paramiko.HostKeys.hash_host("10.9.9.9")
    parsed = kh.parse(f"{hashed} ssh-ed25519 {KEY}\n", "kh")
    assert len(parsed.host_entries("10.9.9.9", 22)) == 1
    assert parsed.host_entries("10.9.9.8", 22) == []


def test_revoked_key_is_never_trusted():
    parsed = kh.parse(f"h1 ssh-ed25519 {KEY}\n@revoked * ssh-ed25519 {KEY}\nh1 ssh-ed25519 {OTHER}\n",
                      "kh")
    assert [e.where for e in parsed.host_entries("h1", 22)] == ["kh:3"]
    key = paramiko.PKey.from_type_string("ssh-ed25519", base64.b64decode(KEY))
    assert parsed.revoked_entry(key).where == "kh:2"


def test_directory_and_missing_file(tmp_path):
    with pytest.raises(kh.KnownHostsFileError, match="is a directory"):
        kh.load(tmp_path)
    assert kh.load(tmp_path / "absent").entries == []


@pytest.fixture
def keyfile(tmp_path) -> Path:
    path = tmp_path / "id_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)], check=True)
    return path


def test_key_file_problems(tmp_path, keyfile):
    assert key_file_problem(keyfile) is None
    assert "does not exist" in key_file_problem(tmp_path / "nope")[0]
    assert "is a directory" in key_file_problem(tmp_path)[0]
    os.chmod(keyfile, 0o644)
    what, hint = key_file_problem(keyfile)
    assert "group or others" in what and hint == f"chmod 600 {keyfile}"
    junk = tmp_path / "junk"
    junk.write_text("not a key\n")
    os.chmod(junk, 0o600)
    assert "not a private key" in key_file_problem(junk)[0]
    pub = keyfile.with_suffix(".pub")
    os.chmod(pub, 0o600)
    assert "not a private key" in key_file_problem(pub)[0]


def test_encrypted_key_needs_a_passphrase(tmp_path):
    path = tmp_path / "enc"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "s3cret-pass", "-f", str(path)],
                   check=True)
    assert "encrypted and no passphrase" in key_file_problem(path)[0]
    assert key_file_problem(path, have_passphrase=True) is None
    assert key_file_problem(path, passphrase="s3cret-pass") is None


def test_preflight_warns_before_connecting(tmp_path, monkeypatch):
    monkeypatch.delenv("PHJ_UNSET_FOR_TEST", raising=False)
    khf = tmp_path / "kh"
    khf.write_text(f"h ssh-ed25519 {KEY[:-8]}\n")
    inv = Inventory.from_text(f"""
defaults: {{known_hosts: {khf}}}
credentials:
  k: {{username: u, key_file: {tmp_path}/missing_key, use_agent: false}}
  p: {{username: u, password: "env:PHJ_UNSET_FOR_TEST", use_agent: false}}
jump_hosts:
  gw: {{host: gw.example.net, credentials: k}}
hosts:
  a: {{host: 10.0.0.1, via: gw, credentials: p}}
""", "inv.yaml")
    out = preflight(inv)
    assert any("gw (inv.yaml:" in w and "missing_key does not exist" in w for w in out), out
    assert any("a (inv.yaml:" in w and "PHJ_UNSET_FOR_TEST is not set" in w for w in out), out
    assert any(f"{khf}:1" in w and "truncated" in w for w in out), out
