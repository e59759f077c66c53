"""Inventory loading, validation, resolution and secret references."""

from __future__ import annotations

import json
from pathlib import Path
from textwrap import dedent

import pytest

from phonehome_jump import inventory as inv_mod
from phonehome_jump.errors import InventoryError, SecretError, UnknownNameError
from phonehome_jump.inventory import Inventory, InventoryProblems, SecretRef, json_schema

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = Path(__file__).parent / "fixtures"


def load(text: str) -> Inventory:
    """Line 1 is the first line after the opening triple quote."""
    return Inventory.from_text(dedent(text).lstrip("\n"), "inv.yaml")


def problems(text: str) -> list[tuple[str, str]]:
    with pytest.raises(InventoryProblems) as info:
        load(text)
    return info.value.problems


HOPS = """
credentials:
  ops-key: {username: ops, key_file: ~/.ssh/ops_ed25519}
jump_hosts:
  bastion: {host: bastion.example.net, credentials: ops-key}
  dmz-gw: {host: 203.0.113.5, credentials: ops-key, via: bastion}
  core-gw: {host: 203.0.113.6}
"""


# ----------------------------------------------------------------------------- resolution

def test_resolution_order_host_then_groups_in_order_then_defaults() -> None:
    inv = load("""
        defaults: {port: 22, keepalive: 5, device_type: linux, tags: [all]}
        groups:
          a: {port: 2201, tags: [ga]}
          b: {port: 2202, device_type: cisco_ios, connect_timeout: 3, tags: [gb, ga]}
        hosts:
          h1: {host: 192.0.2.1, groups: [a, b]}
          h2: {host: 192.0.2.2, groups: [b, a]}
          h3: {host: 192.0.2.3, groups: [a, b], port: 2222, tags: [mine]}
          h4: {host: 192.0.2.4}
        """)
    h1, h2, h3, h4 = (inv.target(n) for n in ("h1", "h2", "h3", "h4"))
    assert (h1.endpoint.port, h2.endpoint.port, h3.endpoint.port, h4.endpoint.port) == (
        2201, 2202, 2222, 22)
    assert h1.device_type == "cisco_ios" and h4.device_type == "linux"  # b fills what a lacks
    assert h1.endpoint.keepalive == 5 and h1.endpoint.connect_timeout == 3.0
    assert h4.endpoint.connect_timeout == 10.0
    assert h3.tags == ("mine", "ga", "gb", "all")
    assert h4.endpoint.host_key_policy == "strict"
    assert h4.endpoint.known_hosts == Path("~/.ssh/known_hosts").expanduser()
    assert h1.groups == ("a", "b")


def test_username_precedence(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(inv_mod.getpass, "getuser", lambda: "localme")
    text = """
        credentials:
          c: {username: from-cred}
          nouser: {use_agent: true}
        groups:
          g: {username: from-group}
          gc: {username: from-group, credentials: c}
        hosts:
          explicit: {host: x, username: from-host, groups: [gc]}
          cred: {host: x, groups: [gc]}
          group: {host: x, groups: [g], credentials: nouser}
          local: {host: x}
        """
    inv = load(text)
    got = {n: inv.target(n).endpoint.username for n in inv.names()}
    assert got == {"explicit": "from-host", "cred": "from-cred", "group": "from-group",
                   "local": "localme"}
    with_defaults = "defaults: {username: from-defaults}\n        credentials:"
    inv = load(text.replace("credentials:", with_defaults, 1))
    assert inv.target("local").endpoint.username == "from-defaults"
    assert inv.target("group").endpoint.username == "from-group"


def test_chain_flattening_zero_one_two_hops_and_lists() -> None:
    inv = load(HOPS + """
hosts:
  direct: {host: 192.0.2.1}
  one: {host: 192.0.2.2, via: bastion}
  two: {host: 192.0.2.3, via: dmz-gw}
  listed: {host: 192.0.2.4, via: [bastion, dmz-gw]}
  free: {host: 192.0.2.5, via: [bastion, core-gw]}
  empty: {host: 192.0.2.6, via: []}
""")
    chains = {n: [e.name for e in inv.target(n).chain] for n in inv.names()}
    assert chains == {"direct": [], "one": ["bastion"], "two": ["bastion", "dmz-gw"],
                      "listed": ["bastion", "dmz-gw"], "free": ["bastion", "core-gw"],
                      "empty": []}
    hop = inv.target("two").chain[1]
    assert (hop.host, hop.port, hop.username) == ("203.0.113.5", 22, "ops")
    assert hop.auth.key_file == Path("~/.ssh/ops_ed25519").expanduser()
    assert hop.key == ("dmz-gw", "203.0.113.5", 22, "ops")
    assert hop.source == "inv.yaml:5"


def test_host_via_overrides_group_via_and_empty_list_means_direct() -> None:
    inv = load(HOPS + """
defaults: {via: bastion}
groups:
  g: {via: dmz-gw}
hosts:
  from-defaults: {host: x}
  from-group: {host: x, groups: [g]}
  direct: {host: x, groups: [g], via: []}
""")
    assert [e.name for e in inv.target("from-defaults").chain] == ["bastion"]
    assert [e.name for e in inv.target("from-group").chain] == ["bastion", "dmz-gw"]
    assert inv.target("direct").chain == ()
    assert inv.target("direct").endpoint.name == "direct"
    # defaults.via never applies to jump hosts themselves
    assert [e.name for e in inv.target("from-group").chain][0] == "bastion"


def test_via_list_conflict_is_explained() -> None:
    (where, what), = problems(HOPS + """
hosts:
  bad: {host: x, via: [core-gw, dmz-gw]}
""")
    assert where == "inv.yaml:9"
    assert "via lists 'dmz-gw' after core-gw" in what and "reached via bastion" in what


def test_via_cycle_names_the_cycle() -> None:
    (where, what), = problems("""
        jump_hosts:
          a: {host: a.example.net, via: b}
          b: {host: b.example.net, via: a}
        hosts:
          h: {host: x, via: a}
        """)
    assert where == "inv.yaml:2"
    assert "via cycle: a -> b -> a" in what


# ----------------------------------------------------------------------------- hosts as hops

def test_a_host_can_be_a_hop_and_keeps_its_own_login_and_via() -> None:
    inv = load(HOPS.replace("credentials:\n", "credentials:\n  admin: {username: admin, "
                                               "key_file: ~/.ssh/admin}\n") + """
groups:
  behind: {via: dmz-gw, credentials: admin}
hosts:
  gw-box: {host: 198.51.100.7, groups: [behind], port: 2222}
  app: {host: 10.0.0.5, via: gw-box}
  app2: {host: 10.0.0.6, via: [gw-box]}
""")
    app = inv.target("app")
    assert [e.name for e in app.chain] == ["bastion", "dmz-gw", "gw-box"]
    hop = app.chain[-1]
    assert (hop.host, hop.port, hop.username) == ("198.51.100.7", 2222, "admin")
    assert hop == inv.target("gw-box").endpoint          # one login, shared as a hop
    assert [e.name for e in inv.target("app2").chain] == ["bastion", "dmz-gw", "gw-box"]


def test_a_host_hop_inheriting_defaults_via_through_itself_is_a_cycle_with_a_hint() -> None:
    found = problems("""
        defaults: {via: bastion}
        hosts:
          bastion: {host: 192.0.2.1}
          app: {host: 10.0.0.5}
        """)
    assert any("via cycle: bastion -> bastion" in what and "via: []" in what
               for _, what in found)
    inv = load("""
        defaults: {via: bastion}
        hosts:
          bastion: {host: 192.0.2.1, via: []}
          app: {host: 10.0.0.5}
        """)
    assert [e.name for e in inv.target("app").chain] == ["bastion"]
    assert inv.target("bastion").chain == ()


def test_a_name_that_is_a_jump_host_and_a_host_is_ambiguous_in_via() -> None:
    found = problems("""
        jump_hosts:
          gw: {host: 192.0.2.1}
        hosts:
          gw: {host: 192.0.2.1}
          app: {host: 10.0.0.5, via: gw}
        """)
    (where, what), = found
    assert where == "inv.yaml:5" and "ambiguous" in what and "inv.yaml:2" in what


def test_host_hop_cycle_between_hosts() -> None:
    found = problems("""
        hosts:
          a: {host: 192.0.2.1, via: b}
          b: {host: 192.0.2.2, via: a}
        """)
    assert any("via cycle:" in what and "a" in what and "b" in what for _, what in found)


# ----------------------------------------------------------------------------- files

def test_directory_merge_two_files() -> None:
    inv = Inventory.load(FIXTURES / "merge")
    assert inv.names() == ["web1", "web2"]
    assert [p.name for p in inv.sources] == ["10-hops.yaml", "20-hosts.yml"]
    web1 = inv.target("web1")
    assert [e.name for e in web1.chain] == ["bastion"]
    assert web1.endpoint.username == "em7admin"  # defaults from the other file
    assert web1.source == f"{FIXTURES / 'merge' / '20-hosts.yml'}:2"


def test_duplicate_name_across_files_names_both_locations() -> None:
    with pytest.raises(InventoryError) as info:
        Inventory.load(FIXTURES / "dup")
    a, b = FIXTURES / "dup" / "a.yaml", FIXTURES / "dup" / "b.yaml"
    assert info.value.where == f"{b}:5"
    assert f"host 'shared' is defined twice: {a}:3 and {b}:5" in str(info.value)


def test_missing_path_has_hint(tmp_path: Path) -> None:
    with pytest.raises(InventoryError) as info:
        Inventory.load(tmp_path / "nope.yaml")
    assert "nope.yaml: no such inventory" in str(info.value)
    assert "--inventory PATH" in str(info.value) and "PHONEHOME_JUMP_INVENTORY" in str(info.value)


def test_empty_file_is_fine(tmp_path: Path) -> None:
    (tmp_path / "empty.yaml").write_text("# nothing yet\n")
    inv = Inventory.load(tmp_path / "empty.yaml")
    assert inv.names() == [] and inv.sources == [tmp_path / "empty.yaml"]


def test_example_yaml_loads() -> None:
    inv = Inventory.load(ROOT / "inventory" / "example.yaml")
    sl1 = inv.target("sl1-prod")
    assert [e.name for e in sl1.chain] == ["bastion", "dmz-gw"]
    assert str(sl1.endpoint.auth.password) == "env:SL1_PASSWORD"
    assert sl1.endpoint.username == "em7admin" and "sciencelogic" in sl1.tags
    rtr = inv.target("core-rtr1")
    assert rtr.device_type == "cisco_ios" and [e.name for e in rtr.chain] == ["bastion"]
    assert (ROOT / "inventory" / "example.yaml").read_text().startswith(
        "# yaml-language-server: $schema=./schema.json\n")


def test_schema_file_is_up_to_date() -> None:
    committed = json.loads((ROOT / "inventory" / "schema.json").read_text())
    assert committed == json_schema(), (
        "inventory/schema.json is stale: run "
        "`python -m phonehome_jump.inventory --schema > inventory/schema.json`")
    assert "description" in json_schema()["$defs"]["HostSpec"]["properties"]["via"]


# ----------------------------------------------------------------------------- validation

def test_duplicate_key_in_one_mapping() -> None:
    (where, what), = problems("""
        hosts:
          h1:
            host: 192.0.2.1
            port: 22
            port: 2222
        """)
    assert where == "inv.yaml:5"
    assert "duplicate key 'port' in hosts.h1 (first at line 4)" in what


def test_unknown_key_suggests_and_points_at_line() -> None:
    (where, what), = problems("""
        groups:
          sl1:
            credentials: c
            vai: bastion
        credentials:
          c: {username: x}
        """)
    assert where == "inv.yaml:4"
    assert what == "group 'sl1': unknown key 'vai' (did you mean 'via'?)"


def test_unknown_top_level_section() -> None:
    (where, what), = problems("hosts: {}\nhost: {}\n")
    assert where == "inv.yaml:2" and "unknown section 'host' (did you mean 'hosts'?)" in what


def test_unknown_group_hop_and_credentials_are_suggested() -> None:
    found = problems(HOPS + """
groups:
  sl1: {}
hosts:
  h1: {host: x, groups: [sl1, sl2]}
  h2: {host: x, via: [bastoin]}
  h3: {host: x, credentials: ops-kye}
""")
    assert found == [
        ("inv.yaml:11", "host 'h1': unknown group 'sl2' (did you mean 'sl1'?)"),
        ("inv.yaml:12", "host 'h2': unknown jump host 'bastoin' (did you mean 'bastion'?)"),
        ("inv.yaml:13", "host 'h3': unknown credentials 'ops-kye' (did you mean 'ops-key'?)"),
    ]


@pytest.mark.parametrize("port", ["0", "70000", "abc"])
def test_bad_port_has_line_and_plain_words(port: str) -> None:
    (where, what), = problems(f"""
        hosts:
          ok: {{host: 192.0.2.1}}
          bad:
            host: 192.0.2.2
            port: {port}
        """)
    assert where == "inv.yaml:5"
    assert what.startswith("host 'bad': port must be a whole number between 1 and 65535, got ")
    assert "pydantic" not in what and "Input should" not in what


def test_missing_host_and_all_problems_in_one_error() -> None:
    with pytest.raises(InventoryProblems) as info:
        load("""
            hosts:
              h1: {port: 22}
              h2: {host: x, keepalive: -1}
            """)
    err = info.value
    assert err.problems == [("inv.yaml:2", "host 'h1': missing required key 'host'"),
                            ("inv.yaml:3", "host 'h2': keepalive must be at least 0, got -1")]
    assert err.where == "inv.yaml:2"
    assert str(err).splitlines() == [
        "2 problems in the inventory (fix all, then reload):",
        "  inv.yaml:2: host 'h1': missing required key 'host'",
        "  inv.yaml:3: host 'h2': keepalive must be at least 0, got -1"]


def test_literal_password_is_refused_without_echoing_it() -> None:
    found = problems("""
        credentials:
          sl1-admin:
            username: em7admin
            password: Hunter2-secret
            sudo_password: 12345678
        """)
    assert [w for w, _ in found] == ["inv.yaml:4", "inv.yaml:5"]
    text = "\n".join(w for _, w in found)
    assert "password must be a reference" in text and "env:VAR_NAME" in text
    assert "file:/path/to/secret" in text
    assert "Hunter2" not in text and "12345678" not in text
    with pytest.raises(InventoryError) as info:
        load("credentials:\n  c: {password: Hunter2-secret}\n")
    # no chained pydantic error (its text would carry input_value=...)
    assert info.value.__cause__ is None and info.value.__context__ is None
    assert "Hunter2" not in str(info.value)


def test_invalid_entry_still_has_its_references_checked() -> None:
    found = problems("""
        groups:
          sl1: {vai: bastion, credentials: sl1-admn}
        credentials:
          sl1-admin: {username: em7admin}
        """)
    assert found == [
        ("inv.yaml:2", "group 'sl1': unknown key 'vai' (did you mean 'via'?)"),
        ("inv.yaml:2", "group 'sl1': unknown credentials 'sl1-admn' (did you mean 'sl1-admin'?)")]


def test_credentials_must_allow_some_auth() -> None:
    (where, what), = problems("credentials:\n  c: {use_agent: false}\n")
    assert where == "inv.yaml:2" and "no way to log in" in what


def test_password_on_a_host_points_to_credentials() -> None:
    (where, what), = problems("hosts:\n  h: {host: x, password: env:PW}\n")
    assert where == "inv.yaml:2" and "it belongs in a credentials entry" in what


def test_malformed_yaml_reports_line() -> None:
    (where, what), = problems("""
        hosts:
          a: {host: x
          b: 1
        """)
    assert where == "inv.yaml:3" and what.startswith("invalid YAML: ")


def test_top_level_and_section_must_be_mappings() -> None:
    assert problems("- a\n- b\n")[0][1].startswith("the top level must be a mapping")
    assert problems("hosts: [a, b]\n") == [
        ("inv.yaml:1", "section 'hosts' must be a mapping of name: settings")]


# ----------------------------------------------------------------------------- secrets

def test_secret_ref_env(monkeypatch: pytest.MonkeyPatch) -> None:
    ref = SecretRef.parse("env:SL1_PASSWORD")
    assert (ref.kind, ref.name, str(ref)) == ("env", "SL1_PASSWORD", "env:SL1_PASSWORD")
    monkeypatch.setenv("SL1_PASSWORD", "s3cr3t-value")
    assert ref.resolve("hop 'x' password") == "s3cr3t-value"
    assert "s3cr3t" not in repr(ref) and "s3cr3t" not in str(ref)


def test_secret_ref_missing_env_says_what_to_do(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SL1_PASSWORD", raising=False)
    with pytest.raises(SecretError) as info:
        SecretRef.parse("env:SL1_PASSWORD").resolve("credentials 'sl1-admin'")
    msg = str(info.value)
    assert msg.startswith("credentials 'sl1-admin': environment variable SL1_PASSWORD is not set")
    assert "export SL1_PASSWORD=..." in msg


def test_secret_ref_file(tmp_path: Path) -> None:
    secret = tmp_path / "pw"
    secret.write_text("file-secret\n\n")
    secret.chmod(0o600)
    ref = SecretRef.parse(f"file:{secret}")
    assert ref.resolve("ctx") == "file-secret\n"  # exactly one trailing newline stripped
    assert repr(ref) == f"SecretRef('file:{secret}')"
    with pytest.raises(SecretError) as info:
        SecretRef.parse(f"file:{tmp_path / 'missing'}").resolve("ctx")
    assert "cannot read secret file" in str(info.value) and "0600" in str(info.value)


def test_secret_ref_reads_at_call_time(monkeypatch: pytest.MonkeyPatch) -> None:
    ref = SecretRef.parse("env:LATE_SECRET")
    # values no test output contains: resolving registers them for masking, process-wide
    monkeypatch.setenv("LATE_SECRET", "late-secret-1-q8Zv")
    assert ref.resolve("c") == "late-secret-1-q8Zv"
    monkeypatch.setenv("LATE_SECRET", "late-secret-2-q8Zv")
    assert ref.resolve("c") == "late-secret-2-q8Zv"


def test_summary_has_references_not_values(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SL1_PASSWORD", "do-not-leak-me")
    inv = Inventory.load(ROOT / "inventory" / "example.yaml")
    summary = inv.target("sl1-prod").summary()
    text = json.dumps(summary)  # JSON-safe
    assert "do-not-leak-me" not in text and "do-not-leak-me" not in repr(inv.target("sl1-prod"))
    assert summary["auth"] == {"agent": False, "password": "env:SL1_PASSWORD",
                               "sudo_password": "env:SL1_PASSWORD"}
    assert [{k: hop[k] for k in ("name", "host", "port", "username")}
            for hop in summary["chain"]] == [
        {"name": "bastion", "host": "bastion.example.net", "port": 22, "username": "ops"},
        {"name": "dmz-gw", "host": "203.0.113.5", "port": 22, "username": "ops"}]
    assert [hop["host_key_policy"] for hop in summary["chain"]] == ["strict", "accept-new"]
    line = (ROOT / "inventory" / "example.yaml").read_text().splitlines().index("  sl1-prod:") + 1
    assert summary["source"].endswith(f"example.yaml:{line}")
    assert summary["policy"]["confirm"] == [r"\bsystemctl\s+(restart|stop)\b"]
    assert {"name", "host", "port", "username", "device_type", "groups", "tags",
            "description"} <= summary.keys()


# ----------------------------------------------------------------------------- queries

def test_targets_filters_and_unknown_names() -> None:
    inv = Inventory.load(ROOT / "inventory" / "example.yaml")
    assert [t.name for t in inv.targets()] == ["core-rtr1", "sl1-prod"]
    assert [t.name for t in inv.targets(group="sl1")] == ["sl1-prod"]
    assert [t.name for t in inv.targets(tag="network")] == ["core-rtr1"]
    assert [t.name for t in inv.targets(query="ROUTER")] == ["core-rtr1"]
    assert [t.name for t in inv.targets(query="192.0.2.")] == ["sl1-prod"]
    assert inv.targets(tag="network", group="sl1") == []
    assert inv.groups() == ["sl1"]
    with pytest.raises(UnknownNameError) as info:
        inv.target("sl1-prd")
    assert "did you mean 'sl1-prod'?" in str(info.value)
    assert "inventory list" in str(info.value)
    with pytest.raises(UnknownNameError, match="did you mean 'sl1'"):
        inv.targets(group="sl2")


def test_main_prints_schema(capsys: pytest.CaptureFixture[str]) -> None:
    assert inv_mod.main(["--schema"]) == 0
    assert json.loads(capsys.readouterr().out) == json_schema()


def test_secret_file_others_can_read_is_refused(tmp_path: Path) -> None:
    secret = tmp_path / "pw"
    secret.write_text("file-secret\n")
    secret.chmod(0o644)
    with pytest.raises(SecretError) as info:
        SecretRef.parse(f"file:{secret}").resolve("hop 'bastion' password")
    msg = str(info.value)
    assert "mode 0644" in msg and f"chmod 600 {secret}" in msg and "file-secret" not in msg
    assert msg.startswith("hop 'bastion' password: ")
