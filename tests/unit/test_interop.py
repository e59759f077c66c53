"""Importers and the exporter without a lab: what is carried over, what is noted, what is refused."""

from __future__ import annotations

from pathlib import Path

import pytest

from phonehome_jump.cli import main
from phonehome_jump.errors import InventoryError
from phonehome_jump.interop import device_type_for, load_yaml
from phonehome_jump.interop.ansible import import_ansible
from phonehome_jump.interop.export import export_ssh_config
from phonehome_jump.interop.nornir import import_nornir
from phonehome_jump.interop.ssh_config import import_ssh_config
from phonehome_jump.inventory import Inventory


def imported(draft) -> Inventory:
    return Inventory.from_text(draft.to_yaml(), "imported.yaml")


def test_ssh_config_match_exec_is_never_run_and_left_out_noted(tmp_path):
    canary = tmp_path / "ran"
    conf = tmp_path / "config"
    conf.write_text(f"""\
Host a
  HostName 192.0.2.1
  User ops
Match exec "touch {canary}"
  User evil
Host b
  HostName 192.0.2.2
  ProxyCommand ssh -W %h:%p a
  StrictHostKeyChecking no
  IdentityFile ~/.ssh/one
  IdentityFile ~/.ssh/two
  Compression yes
""")
    draft = import_ssh_config(conf)
    assert not canary.exists()
    notes = "\n".join(map(str, draft.notes))
    for what in ("Match block", "ProxyCommand", "StrictHostKeyChecking no", ".ssh/two",
                 "compression"):
        assert what in notes, what
    inv = imported(draft)
    assert inv.target("a").endpoint.username == "ops"          # not "evil"
    assert "# Not carried over" in draft.to_yaml()


def test_ssh_config_include_and_jump_elements(tmp_path):
    (tmp_path / "inc.conf").write_text("Host gw\n  HostName 198.51.100.1\n  User gwuser\n")
    conf = tmp_path / "config"
    conf.write_text(f"Include {tmp_path}/inc.conf\nHost t\n  HostName 10.0.0.5\n"
                    "  ProxyJump gw,admin@10.0.0.9:2200\n")
    inv = imported(import_ssh_config(conf))
    chain = inv.target("t").chain
    assert [(h.host, h.username, h.port) for h in chain] == [
        ("198.51.100.1", "gwuser", 22), ("10.0.0.9", "admin", 2200)]


def test_ssh_config_without_hosts_is_a_clear_error(tmp_path):
    conf = tmp_path / "config"
    conf.write_text("Host *\n  User x\n")
    with pytest.raises(InventoryError, match="no concrete Host"):
        import_ssh_config(conf)


def test_ansible_ini_ranges_children_vars_and_passwords(tmp_path):
    inv_file = tmp_path / "hosts"
    inv_file.write_text("""\
[web]
web[1:3] ansible_user=deploy
[routers]
r1 ansible_host=10.0.0.1 ansible_network_os=cisco.ios.ios ansible_password=hunter2
[routers:vars]
ansible_user=netops
ansible_connection=network_cli
ansible_foo=1
[site:children]
web
routers
[site:vars]
ansible_port=2222
""")
    draft = import_ansible(inv_file)
    text = draft.to_yaml()
    assert "hunter2" not in text and "env:PHJ_R1_PASSWORD" in text
    inv = imported(draft)
    assert inv.names() == ["r1", "web1", "web2", "web3"]
    r1 = inv.target("r1")
    assert (r1.device_type, r1.endpoint.username, r1.endpoint.port) == ("cisco_ios", "netops", 2222)
    assert inv.target("web2").groups == ("site", "web")
    assert any("ansible_foo" in n.what for n in draft.notes)


def test_ansible_yaml_host_vars_dir_wins(tmp_path):
    (tmp_path / "host_vars").mkdir()
    (tmp_path / "host_vars" / "db1.yml").write_text("ansible_user: fromhostvars\n")
    path = tmp_path / "inv.yml"
    path.write_text("all:\n  vars: {ansible_user: admin}\n  children:\n    db:\n"
                    "      hosts:\n        db1: {ansible_host: 10.1.1.1}\n")
    assert imported(import_ansible(path)).target("db1").endpoint.username == "fromhostvars"


def test_nornir_resolution_and_unknown_platform(tmp_path):
    (tmp_path / "hosts.yaml").write_text("r1: {hostname: 10.0.0.1, groups: [g], platform: weird_os}\n")
    (tmp_path / "groups.yaml").write_text("g: {username: fromgroup, port: 830}\n")
    (tmp_path / "defaults.yaml").write_text("username: fromdefaults\n")
    draft = import_nornir([str(tmp_path)])
    r1 = imported(draft).target("r1")
    assert (r1.endpoint.username, r1.endpoint.port, r1.device_type) == ("fromgroup", 830, "linux")
    assert any("weird_os" in n.what for n in draft.notes)


@pytest.mark.parametrize("text,match", [
    ("a: &a [x, x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]\n"
     "c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]\nd: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c]\n"
     "e: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d]\nf: [*e, *e, *e, *e, *e, *e, *e, *e, *e]\n",
     "expands to more than"),
    ("x: &a [*a]\n", "cannot contain itself"),
    ("x: " + "[" * 150 + "]" * 150 + "\n", "nested"),
])
def test_imported_yaml_refuses_alias_bombs(text, match):
    with pytest.raises(InventoryError, match=match):
        load_yaml(text, "bomb.yaml")


def test_platform_names():
    assert device_type_for("eos") == "arista_eos"
    assert device_type_for("junipernetworks.junos.junos") == "juniper_junos"
    assert device_type_for("cisco_ios") == "cisco_ios"        # already a netmiko name
    assert device_type_for("nonsense") is None


def test_export_writes_proxyjump_lists_and_no_secrets(tmp_path):
    inv = Inventory.load(Path(__file__).resolve().parents[2] / "inventory" / "example.yaml")
    text = export_ssh_config(inv)
    block = text.split("Host sl1-prod\n", 1)[1].split("\n\n", 1)[0]
    assert "ProxyJump bastion,dmz-gw" in block and "HostName 192.0.2.10" in block
    assert "# password: env:SL1_PASSWORD" in block


def test_cli_import_refuses_to_overwrite(tmp_path, capsys):
    conf = tmp_path / "config"
    conf.write_text("Host a\n  HostName 192.0.2.1\n")
    out = tmp_path / "inv.yaml"
    out.write_text("keep me")
    assert main(["inventory", "import", "ssh-config", str(conf), "-o", str(out)]) == 2
    assert out.read_text() == "keep me" and "--force" in capsys.readouterr().err
    assert main(["inventory", "import", "ssh-config", str(conf), "-o", str(out), "--force"]) == 0
    assert Inventory.load(out).names() == ["a"]
