"""The CLI without a lab: inventory commands, error handling and exit codes, the line editor."""

from __future__ import annotations

import json
import logging
import socket
import subprocess
from pathlib import Path

import pytest

from phonehome_jump.prompts import asks_for_secret

from phonehome_jump import __version__, cli
from phonehome_jump.cli import main
from phonehome_jump.errors import (AuthError, ConnectError, HostKeyError, InventoryError,
                                   SecretError, SessionDeadError, UnknownNameError)

CANARY = "canary-Secret-7f3a9c"

INVENTORY = """\
defaults:
  known_hosts: /nonexistent/known_hosts
credentials:
  ops-key: {username: ops, key_file: /nonexistent/id_ed25519, use_agent: false}
  admin: {username: admin, password: "env:PHJ_TEST_CLI_PASSWORD", sudo_password: "env:PHJ_TEST_CLI_PASSWORD"}
jump_hosts:
  bastion: {host: bastion.example.net, credentials: ops-key}
  dmz-gw: {host: 203.0.113.5, credentials: ops-key, via: bastion}
groups:
  sl1: {via: dmz-gw, credentials: admin, tags: [sciencelogic]}
hosts:
  sl1-prod:
    host: 192.0.2.10
    groups: [sl1]
    tags: [prod]
    description: SL1 production database
  sl1-dev: {host: 192.0.2.11, groups: [sl1], tags: [dev]}
  core-rtr1: {host: 198.51.100.1, port: 2222, device_type: cisco_ios, credentials: ops-key, via: bastion}
  local-box: {host: 127.0.0.1, credentials: ops-key}
"""


@pytest.fixture
def inv(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "inv.yaml"
    path.write_text(INVENTORY)
    monkeypatch.setenv("PHJ_TEST_CLI_PASSWORD", CANARY)
    monkeypatch.delenv("PHONEHOME_JUMP_INVENTORY", raising=False)
    return path


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    return code, out, err


# ----------------------------------------------------------------------------- global

def test_version(capsys):
    code, out, _ = run(capsys, "--version")
    assert code == 0 and out.strip() == f"phonehome-jump {__version__}"


def test_no_command_is_a_usage_error(capsys):
    code, _, err = run(capsys)
    assert code == 2 and "usage:" in err


def test_run_needs_a_command(capsys, inv):
    code, _, err = run(capsys, "--inventory", str(inv), "run", "sl1-prod")
    assert code == 2 and "COMMAND" in err


def test_run_rejects_a_bad_timeout(capsys, inv):
    code, _, err = run(capsys, "--inventory", str(inv), "run", "--timeout", "0", "sl1-prod",
                       "--", "true")
    assert code == 2 and "--timeout" in err


# ----------------------------------------------------------------------------- inventory check

def test_check_ok(capsys, inv):
    code, out, err = run(capsys, "inventory", "check", str(inv))
    # valid, so exit 0; what can be seen without connecting comes as warnings on stderr
    assert code == 0 and err.startswith("warning: ") and "/nonexistent/id_ed25519 does not exist" in err
    assert out.count("\n") == 1
    assert out.startswith("ok: 4 hosts, 1 group in 1 file: ") and str(inv) in out


def test_check_uses_global_inventory_then_env(capsys, inv, tmp_path, monkeypatch):
    code, out, _ = run(capsys, "--inventory", str(inv), "inventory", "check")
    assert code == 0 and str(inv) in out
    code, out, _ = run(capsys, "inventory", "check", "--inventory", str(inv))  # after the command
    assert code == 0 and str(inv) in out
    monkeypatch.setenv("PHONEHOME_JUMP_INVENTORY", str(inv))
    code, out, _ = run(capsys, "inventory", "check")
    assert code == 0 and str(inv) in out


def test_check_directory_merges_files(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("PHJ_TEST_CLI_PASSWORD", CANARY)
    d = tmp_path / "inventory"
    d.mkdir()
    (d / "10-hops.yaml").write_text("jump_hosts:\n  bastion: {host: b.example.net}\n")
    (d / "20-hosts.yml").write_text("hosts:\n  a: {host: 192.0.2.1, via: bastion}\n")
    code, out, _ = run(capsys, "inventory", "check", str(d))
    assert code == 0 and "1 host, 0 groups in 2 files" in out
    monkeypatch.chdir(tmp_path)            # default: ./inventory/
    code, out, _ = run(capsys, "inventory", "check")
    assert code == 0 and "10-hops.yaml" in out and "20-hosts.yml" in out


def test_check_broken_file_points_at_the_line(capsys, tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("hosts:\n  a: {host: 192.0.2.1}\n  b:\n    host: 192.0.2.2\n    prot: 22\n")
    code, out, err = run(capsys, "inventory", "check", str(path))
    assert code == 2 and out == ""
    assert err.startswith("phonehome-jump: ")
    assert f"{path}:5" in err and "prot" in err and "'port'" in err


def test_check_invalid_yaml(capsys, tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("hosts:\n  a: {host: [\n")
    code, _, err = run(capsys, "inventory", "check", str(path))
    assert code == 2 and str(path) in err and "invalid YAML" in err


def test_check_missing_inventory(capsys, tmp_path, monkeypatch):
    monkeypatch.delenv("PHONEHOME_JUMP_INVENTORY", raising=False)
    monkeypatch.chdir(tmp_path)
    code, _, err = run(capsys, "inventory", "check")
    assert code == 2 and "no such inventory" in err and "PHONEHOME_JUMP_INVENTORY" in err


# ----------------------------------------------------------------------------- inventory list

def test_list_table(capsys, inv):
    code, out, _ = run(capsys, "--inventory", str(inv), "inventory", "list")
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split() == ["NAME", "HOST", "DEVICE_TYPE", "CHAIN", "TAGS"]
    rows = {line.split()[0]: line for line in lines[1:]}
    assert list(rows) == ["core-rtr1", "local-box", "sl1-dev", "sl1-prod"]
    assert "198.51.100.1:2222" in rows["core-rtr1"] and "cisco_ios" in rows["core-rtr1"]
    assert "bastion → dmz-gw" in rows["sl1-prod"] or "bastion -> dmz-gw" in rows["sl1-prod"]
    assert rows["sl1-prod"].rstrip().endswith("prod,sciencelogic")
    assert rows["local-box"].split()[3] == "direct"
    # columns line up
    assert len({line.index(line.split()[1]) for line in lines}) == 1


def test_list_filters(capsys, inv):
    code, out, _ = run(capsys, "--inventory", str(inv), "inventory", "list", "--group", "sl1")
    assert code == 0 and [line.split()[0] for line in out.splitlines()[1:]] == ["sl1-dev", "sl1-prod"]
    code, out, _ = run(capsys, "--inventory", str(inv), "inventory", "list", "--tag", "prod")
    assert [line.split()[0] for line in out.splitlines()[1:]] == ["sl1-prod"]
    code, out, _ = run(capsys, "--inventory", str(inv), "inventory", "list", "--query", "DATABASE")
    assert [line.split()[0] for line in out.splitlines()[1:]] == ["sl1-prod"]
    code, out, err = run(capsys, "--inventory", str(inv), "inventory", "list", "--tag", "nope")
    assert code == 0 and out == "" and "no hosts match" in err


def test_list_unknown_group(capsys, inv):
    code, out, err = run(capsys, "--inventory", str(inv), "inventory", "list", "--group", "sl")
    assert code == 2 and out == "" and "unknown group 'sl'" in err and "sl1" in err


def test_list_json(capsys, inv):
    code, out, _ = run(capsys, "--inventory", str(inv), "inventory", "list", "--json")
    assert code == 0
    data = json.loads(out)
    assert [d["name"] for d in data] == ["core-rtr1", "local-box", "sl1-dev", "sl1-prod"]
    prod = data[-1]
    assert [h["name"] for h in prod["chain"]] == ["bastion", "dmz-gw"]
    assert prod["auth"]["password"] == "env:PHJ_TEST_CLI_PASSWORD"
    assert CANARY not in out
    code, out, _ = run(capsys, "--inventory", str(inv), "inventory", "list", "--json", "--tag", "x")
    assert code == 0 and json.loads(out) == []


# ----------------------------------------------------------------------------- inventory show

def test_show_text(capsys, inv):
    code, out, err = run(capsys, "--inventory", str(inv), "inventory", "show", "sl1-prod")
    assert code == 0 and err == ""
    fields = dict(line.split(":", 1) for line in out.splitlines())
    fields = {k: v.strip() for k, v in fields.items()}
    assert fields["host"] == "admin@192.0.2.10:22"
    assert "bastion (ops@bastion.example.net:22)" in fields["chain"]
    assert "dmz-gw (ops@203.0.113.5:22)" in fields["chain"]
    assert "password=env:PHJ_TEST_CLI_PASSWORD" in fields["auth"]
    assert fields["source"] == f"{inv}:12"
    assert fields["tags"] == "prod, sciencelogic"


def test_show_direct_host(capsys, inv):
    code, out, _ = run(capsys, "--inventory", str(inv), "inventory", "show", "local-box")
    assert code == 0 and "chain:       direct" in out and "key_file=/nonexistent/id_ed25519" in out


def test_show_json(capsys, inv):
    code, out, _ = run(capsys, "--inventory", str(inv), "inventory", "show", "sl1-prod", "--json")
    assert code == 0
    data = json.loads(out)
    assert data["name"] == "sl1-prod" and data["source"] == f"{inv}:12"
    assert data["auth"] == {"agent": True, "password": "env:PHJ_TEST_CLI_PASSWORD",
                            "sudo_password": "env:PHJ_TEST_CLI_PASSWORD"}


@pytest.mark.parametrize("extra", [[], ["--json"]])
def test_show_never_prints_a_secret_value(capsys, inv, tmp_path, monkeypatch, extra):
    secret_file = tmp_path / "pass"
    secret_file.write_text(CANARY + "\n")
    secret_file.chmod(0o600)
    path = tmp_path / "with-file.yaml"
    path.write_text(INVENTORY.replace('"env:PHJ_TEST_CLI_PASSWORD", sudo_password',
                                      f'"file:{secret_file}", sudo_password'))
    for p, host in ((inv, "sl1-prod"), (path, "sl1-dev")):
        code, out, err = run(capsys, "-vv", "--inventory", str(p), "inventory", "show", host, *extra)
        assert code == 0
        assert CANARY not in out + err


def test_unknown_host_suggests_the_closest_name(capsys, inv):
    code, out, err = run(capsys, "--inventory", str(inv), "inventory", "show", "sl1-prd")
    assert code == 2 and out == ""
    assert err.startswith("phonehome-jump: unknown host 'sl1-prd'")
    assert "did you mean 'sl1-prod'" in err


def test_unknown_host_for_run_and_shell_is_an_inventory_error(capsys, inv):
    code, _, err = run(capsys, "--inventory", str(inv), "run", "sl1-prd", "--", "true")
    assert code == 2 and "did you mean 'sl1-prod'" in err
    code, _, err = run(capsys, "--inventory", str(inv), "shell", "core-rtr")
    assert code == 2 and "did you mean 'core-rtr1'" in err


def test_connect_failure_exits_255(capsys, inv):
    with socket.socket() as s:      # a port nobody listens on: connection refused
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    key = inv.parent / "id_ed25519"            # a real key file: the refusal is what fails
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    inv.write_text(INVENTORY.replace("{host: 127.0.0.1,", f"{{host: 127.0.0.1, port: {port},")
                   .replace("key_file: /nonexistent/id_ed25519", f"key_file: {key}"))
    code, out, err = run(capsys, "--inventory", str(inv), "run", "local-box", "--", "true")
    assert code == 255 and out == ""
    assert err.startswith("phonehome-jump: host 'local-box'") and "refused" in err   # the target, not a hop


# ----------------------------------------------------------------------------- error mapping

@pytest.mark.parametrize("err,code", [
    (InventoryError("bad"), 2),
    (UnknownNameError("unknown host 'x'"), 2),
    (ConnectError("refused", hop="jump1", reason="refused"), 255),
    (AuthError("no", hop="jump1"), 255),
    (HostKeyError("changed", hop="jump1", fingerprint="SHA256:x"), 255),
    (SecretError("not set"), 1),
    (SessionDeadError("dead"), 1),
])
def test_errors_map_to_exit_codes(capsys, inv, monkeypatch, err, code):
    def boom(args):
        raise err
    monkeypatch.setattr(cli, "cmd_inventory_list", boom)
    rc, out, stderr = run(capsys, "--inventory", str(inv), "inventory", "list")
    assert rc == code
    assert stderr == f"phonehome-jump: {err}\n"


def test_internal_error_is_one_line(capsys, inv, monkeypatch):
    def boom(args):
        raise ValueError("something broke\nsecond line")
    monkeypatch.setattr(cli, "cmd_inventory_list", boom)
    code, out, err = run(capsys, "--inventory", str(inv), "inventory", "list")
    assert code == 70
    assert err == ("phonehome-jump: internal error: ValueError: something broke "
                   "(run with -v for details)\n")


def test_internal_error_traceback_with_verbose(capsys, inv, monkeypatch):
    def boom(args):
        raise ValueError("something broke")
    monkeypatch.setattr(cli, "cmd_inventory_list", boom)
    code = main(["-v", "--inventory", str(inv), "inventory", "list"])
    err = capsys.readouterr().err
    assert code == 70 and "Traceback" in err and "internal error: ValueError" in err


def test_keyboard_interrupt(capsys, inv, monkeypatch):
    def boom(args):
        raise KeyboardInterrupt
    monkeypatch.setattr(cli, "cmd_inventory_show", boom)
    code, _, err = run(capsys, "--inventory", str(inv), "inventory", "show", "sl1-prod")
    assert code == 130 and "interrupted" in err


def test_logging_is_restored(capsys, inv):
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    main(["-vv", "--inventory", str(inv), "inventory", "list"])
    assert root.handlers == handlers and root.level == level
    assert logging.getLogger("paramiko").level == logging.NOTSET


def test_verbose_logs_to_stderr(capsys, inv):
    code, out, err = run(capsys, "-v", "--inventory", str(inv), "inventory", "check")
    assert code == 0 and f"INFO phonehome_jump.cli: loading inventory {inv}" in err
    code, out, err = run(capsys, "inventory", "list", "-v", "--inventory", str(inv))
    assert code == 0 and "loading inventory" in err
    code, out, err = run(capsys, "--inventory", str(inv), "inventory", "list")
    assert code == 0 and err == ""


# ----------------------------------------------------------------------------- scripted shell

class FakeManager:
    """Just enough of SessionManager for the scripted shell and run's output streaming: each
    command's results in order (the last one repeats: a command that stays running); a
    result's ``output`` is all of the command's output so far unless it is ``truncated``
    (then ``full`` is)."""

    def __init__(self, results, full=None):
        self.results = list(results)
        self.commands: list[str] = []
        self.full = full
        self.reads = 0

    def _next(self):
        r = self.results.pop(0) if len(self.results) > 1 else self.results[0]
        if not r.truncated:
            self.full = r.output
        return r

    def command(self, sid, command, wait, confirm=False):
        self.commands.append(command)
        return self._next()

    def read(self, sid, offset=None, wait=0.0):
        if offset is None:
            self.reads += 1
            return self._next()
        text = self.full
        page = text[offset: offset + 10]
        nxt = offset + len(page)
        return cli.CommandResult(None, page, 0, False, "/", 0.0, offset=offset, total=len(text),
                                 next_offset=nxt if nxt < len(text) else len(text),
                                 truncated=nxt < len(text))


def result(output, status=0, running=False, truncated=False, awaiting=False):
    return cli.CommandResult("x", output, status, running, "/tmp", 0.1, truncated=truncated,
                             awaiting_input=awaiting)


INFO = cli.SessionInfo(id="s-1", host="h1", chain=["j1"], created=0, last_activity=0,
                       state="idle", cwd="/", framing="sentinel", owner=None)


def test_scripted_runs_each_line_and_returns_the_last_status(capsys):
    m = FakeManager([result(""), result("/tmp\n"), result("", 3)])
    status = cli._scripted(m, INFO, ["cd /tmp\n", "  \n", "pwd\n", "false\r\n"], 5)
    assert status == 3 and m.commands == ["cd /tmp", "pwd", "false"]
    assert capsys.readouterr().out == "/tmp\n"


def test_scripted_timeout_and_input_prompt(capsys):
    m = FakeManager([result("partial", None, running=True)])
    with pytest.raises(cli._Timeout):
        cli._scripted(m, INFO, ["sleep 100\n"], 0.05)
    out, err = capsys.readouterr()
    assert out == "partial" and "still running after 0.05s" in err
    m = FakeManager([result("[sudo] password for x: ", None, running=True, awaiting=True)])
    with pytest.raises(cli._Timeout):
        cli._run_one(m, INFO, "sudo true", 600)
    assert "waiting for input" in capsys.readouterr().err


def test_truncated_output_is_paged_in_full(capsys):
    m = FakeManager([result("head…[omitted]…tail", truncated=True)], full="0123456789" * 5 + "end\n")
    cli._run_one(m, INFO, "seq", 5)
    assert capsys.readouterr().out == m.full


def test_output_is_written_as_it_arrives_each_character_once(capsys):
    """A running command's output is written page by page as it grows, never twice, and
    the result is the final one."""
    m = FakeManager([result("line 1\n", None, running=True),
                     result("line 1\nline 2 is longer\n", None, running=True),
                     result("line 1\nline 2 is longer\nend\n", 0)])
    assert cli._run_one(m, INFO, "prog", 5) == 0
    assert capsys.readouterr().out == "line 1\nline 2 is longer\nend\n"
    assert m.reads == 2


def test_json_output_is_streamed_into_valid_json(capsys):
    full = "".join(f"{i} \u00e9\t\"q\"\n" for i in range(40))
    m = FakeManager([result("head…tail", truncated=True)], full=full)
    cli._run_one(m, INFO, "seq", 5, as_json=True)
    doc = json.loads(capsys.readouterr().out)
    assert doc["output"] == full and doc["host"] == "h1" and doc["exit_status"] == 0
    assert (doc["truncated"], doc["omitted"]) == (False, None)


@pytest.mark.parametrize("tail,secret", [
    ("[sudo] password for phjsudo: ", True),
    ("Password: ", True),
    ("Enter passphrase for key '/x': ", True),
    ("Continue? [y/n] ", False),
    ("password set\n$ ", False),
    ("[sudo] password for phjsudo: \n", False),     # answered: sudo printed its newline
])
def test_secret_prompt_detection(tail, secret):
    assert asks_for_secret(tail) is secret


def test_start_imports_only_what_the_command_needs(tmp_path):
    """One-shot start time: the CLI imports paramiko only for commands that connect, and
    never paramiko's optional invoke (used only for ssh_config `Match exec`)."""
    import subprocess
    import sys

    script = (
        "import sys\n"
        "from phonehome_jump import cli\n"
        "assert 'paramiko' not in sys.modules, 'paramiko imported at start'\n"
        "rc = cli.main(['--help'])\n"
        "assert rc == 0, rc\n"
        "assert 'paramiko' not in sys.modules and 'netmiko' not in sys.modules\n"
        "rc = cli.main(['--inventory', 'missing-dir', 'run', 'h', '--', 'true'])\n"
        "assert rc == 2, rc      # no inventory: a usage error, after the start-up path\n"
        "import paramiko\n"
        "assert 'invoke' not in sys.modules or sys.modules['invoke'] is None\n"
        "print('ok')\n")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         cwd=tmp_path, timeout=60)
    assert out.stdout.strip().endswith("ok"), out.stderr
