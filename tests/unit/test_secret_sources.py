"""keyring: and cmd: secret references: the real keyring library (a file backend set up for
the test) and real commands."""

from __future__ import annotations

import pytest

from phonehome_jump import secret_sources
from phonehome_jump.errors import SecretError
from phonehome_jump.inventory import Inventory, InventoryProblems, SecretRef
from phonehome_jump.redact import REDACTOR


@pytest.fixture
def file_keyring(tmp_path, monkeypatch):
    import keyring
    from keyrings.alt.file import PlaintextKeyring

    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    before = keyring.get_keyring()
    keyring.set_keyring(PlaintextKeyring())
    yield keyring
    keyring.set_keyring(before)


def test_keyring_reference_reads_the_keyring_and_registers_the_value(file_keyring, tmp_path):
    file_keyring.set_password("phj-test", "sl1-admin", "canary-keyring-5e1f")
    ref = SecretRef.parse("keyring:phj-test/sl1-admin")
    assert (ref.kind, str(ref)) == ("keyring", "keyring:phj-test/sl1-admin")
    assert ref.resolve("host 'sl1' password") == "canary-keyring-5e1f"
    assert "canary-keyring-5e1f" in REDACTOR
    assert list((tmp_path / "data").rglob("keyring_pass.cfg"))    # where the backend keeps it


def test_keyring_without_the_entry_says_how_to_store_it(file_keyring):
    with pytest.raises(SecretError) as info:
        SecretRef.parse("keyring:phj-test/nobody").resolve("hop 'dmz' password")
    text = str(info.value)
    assert "hop 'dmz' password" in text and "no secret for service 'phj-test', user 'nobody'" in text
    assert "keyring set phj-test nobody" in text and "PlaintextKeyring" in text


def test_cmd_reference_runs_without_a_shell(monkeypatch):
    monkeypatch.setenv("PHJ_NOT_EXPANDED", "oops")
    assert SecretRef.parse("cmd:echo canary-cmd-77a1").resolve("x") == "canary-cmd-77a1"
    assert "canary-cmd-77a1" in REDACTOR
    # no shell: $VAR, ; and quotes are the program's words, not shell syntax
    assert SecretRef.parse("cmd:echo '$PHJ_NOT_EXPANDED; true'").resolve("x") == \
        "$PHJ_NOT_EXPANDED; true"


def test_cmd_failures_never_show_its_output(tmp_path):
    script = tmp_path / "helper.sh"
    script.write_text("#!/bin/sh\necho canary-stdout-91\necho canary-stderr-91 >&2\nexit 3\n")
    script.chmod(0o700)
    with pytest.raises(SecretError) as info:
        SecretRef.parse(f"cmd:{script}").resolve("host 'h' sudo_password")
    text = str(info.value)
    assert "exited with status 3" in text and "host 'h' sudo_password" in text
    assert "canary-stdout-91" not in text and "canary-stderr-91" not in text
    for ref, words in (("cmd:/nonexistent/helper", "not found"), ("cmd:true", "printed nothing"),
                       ("cmd:printf '\\377'", "not UTF-8")):
        with pytest.raises(SecretError, match=words):
            SecretRef.parse(ref).resolve("x")


def test_cmd_that_hangs_is_stopped(monkeypatch):
    monkeypatch.setattr(secret_sources, "CMD_TIMEOUT", 0.3)
    with pytest.raises(SecretError, match="did not finish within 0.3s"):
        SecretRef.parse("cmd:sleep 5").resolve("x")
    # standard input is closed: a helper that reads it ends at once instead of hanging
    with pytest.raises(SecretError, match="printed nothing"):
        SecretRef.parse("cmd:cat").resolve("x")


def test_references_in_the_inventory_are_checked_at_load():
    inv = Inventory.from_text(
        "credentials:\n  a: {username: u, password: 'keyring:phonehome-jump/sl1', "
        "sudo_password: 'cmd:pass show lab/sl1'}\nhosts: {h: {host: 192.0.2.1, credentials: a}}\n")
    auth = inv.target("h").endpoint.auth
    assert (str(auth.password), str(auth.sudo_password)) == (
        "keyring:phonehome-jump/sl1", "cmd:pass show lab/sl1")
    for bad, words in (("keyring:no-user", "SERVICE/USERNAME"), ("cmd:", "needs a command"),
                       ("cmd:'unclosed", "cannot be split"), ("hunter2", "keyring:SERVICE")):
        with pytest.raises(InventoryProblems, match=words) as info:
            Inventory.from_text(f"credentials:\n  a: {{password: \"{bad}\"}}\n"
                                "hosts: {h: {host: 192.0.2.1, credentials: a}}\n")
        assert "hunter2" not in str(info.value)
