"""Command policy: resolution across layers and the rules' decisions (pure logic)."""

from __future__ import annotations

import pytest

from phonehome_jump.errors import PolicyError
from phonehome_jump.inventory import Inventory, InventoryProblems
from phonehome_jump.policy import Approval, Policy, PolicySpec

INVENTORY = """
defaults:
  username: u
  policy: {deny: ['\\breboot\\b', 'rm\\s+-rf\\s+/(\\s|$)']}
groups:
  ro: {policy: {read_only: true, allow: ['^show ', '^cat ', '^ls\\b']}}
  careful: {policy: {confirm: ['\\bsystemctl\\s+(restart|stop)\\b'], read_only: false}}
hosts:
  plain: {host: 192.0.2.1}
  viewer: {host: 192.0.2.2, groups: [ro]}
  both: {host: 192.0.2.3, groups: [careful, ro]}
  rw: {host: 192.0.2.4, groups: [ro], policy: {read_only: false}}
"""


@pytest.fixture(scope="module")
def inv() -> Inventory:
    return Inventory.from_text(INVENTORY)


def refused(policy: Policy, command: str, **kw) -> PolicyError:
    with pytest.raises(PolicyError) as info:
        policy.check(command, host="h", **kw)
    return info.value


def test_deny_from_defaults_reaches_every_host_and_names_the_rule(inv):
    for name in ("plain", "viewer", "both", "rw"):
        err = refused(inv.target(name).policy, "sudo reboot")
        assert err.rule == r"\breboot\b" and not err.needs_confirm
        assert "deny rule" in str(err) and "host 'h'" in str(err)


def test_deny_is_searched_in_every_part_of_a_command_line(inv):
    p = inv.target("plain").policy
    refused(p, "ls; reboot")
    refused(p, "true && rm -rf /")
    refused(p, "echo x\nreboot now")
    p.check("rm -rf /tmp/x", host="h")          # not the root directory
    p.check("echo rebooting", host="h")          # word boundary


def test_read_only_needs_an_allow_rule_for_each_part(inv):
    p = inv.target("viewer").policy
    assert p.read_only
    p.check("ls -la /etc", host="h")
    p.check("cat /etc/hostname | cat -A", host="h")
    err = refused(p, "touch /tmp/x")
    assert err.rule == "read_only" and "'^show '" in err.hint
    refused(p, "ls; touch /tmp/x")
    refused(p, "cat $(which reboot-helper)")
    refused(p, "cat /etc/hosts > /tmp/copy")


def test_read_only_does_not_apply_to_input_of_a_running_command(inv):
    p = inv.target("viewer").policy
    p.check("y", host="h", at_prompt=False)
    refused(p, "y", at_prompt=True)
    refused(p, "reboot", at_prompt=False)       # deny still applies to typed input


def test_confirm_passes_only_when_confirmed(inv):
    p = inv.target("both").policy
    err = refused(p, "systemctl restart em7")
    assert err.needs_confirm and "a person must approve it" in err.hint
    assert "confirm=true" not in err.hint       # the model is not told to approve itself
    p.check("systemctl restart em7", host="h", confirm=True)
    refused(p, "reboot", confirm=True)          # confirm never overrides deny
    assert p.confirm_rule("systemctl restart em7", host="h") == r"\bsystemctl\s+(restart|stop)\b"
    assert p.confirm_rule("ls", host="h") is None
    assert p.confirm_rule("reboot; systemctl stop x", host="h") is None   # deny: no approval helps


def test_mcp_approval_first_layer_wins_and_defaults_to_elicit():
    inv = Inventory.from_text(
        "defaults: {username: u, policy: {mcp_approval: refuse}}\n"
        "groups: {lab: {policy: {mcp_approval: elicit-or-model}}}\n"
        "hosts:\n  a: {host: 192.0.2.1}\n  b: {host: 192.0.2.2, groups: [lab]}\n"
        "  c: {host: 192.0.2.3, groups: [lab], policy: {mcp_approval: elicit}}\n")
    assert [inv.target(h).policy.mcp_approval for h in "abc"] == [
        "refuse", "elicit-or-model", "elicit"]
    assert Policy().mcp_approval == "elicit"
    with pytest.raises(InventoryProblems, match="mcp_approval"):
        Inventory.from_text("defaults: {policy: {mcp_approval: model}}\nhosts: {a: {host: x}}\n")


def test_approvals_name_who_how_and_when():
    a = Approval("mcp-elicitation", "mcp:claude/c-1", at=0.0, command="reboot", rule="r")
    assert a.fields() == {"approved_via": "mcp-elicitation", "approved_by": "mcp:claude/c-1",
                          "approved_at": "1970-01-01T00:00:00.000+00:00"}
    assert Approval.from_wire(a.to_wire()) == Approval("mcp-elicitation", "mcp:claude/c-1", 0.0,
                                                       "reboot")
    assert Approval.from_wire({"at": "junk"}).via == "agent-protocol"


def test_read_only_first_layer_wins_and_lists_merge(inv):
    assert inv.target("both").policy.read_only is False       # careful is listed first
    assert inv.target("rw").policy.read_only is False
    assert inv.target("rw").policy.allow == ("^show ", "^cat ", r"^ls\b")
    assert inv.target("both").policy.deny == (r"\breboot\b", r"rm\s+-rf\s+/(\s|$)")
    assert inv.target("plain").summary()["policy"]["deny"] == [r"\breboot\b", r"rm\s+-rf\s+/(\s|$)"]


def test_secret_answers_are_not_matched_or_shown():
    p = Policy(deny=("hunter",), read_only=True)
    p.check("hunter2", host="h", at_prompt=False, secret=True)
    err = refused(p, "hunter2", at_prompt=True, secret=True)
    assert err.rule == "hunter"


def test_bad_patterns_and_unknown_keys_are_load_errors_with_lines():
    text = "hosts:\n  h:\n    host: 192.0.2.1\n    policy:\n      deny: ['(']\n      alow: ['^ls']\n"
    with pytest.raises(InventoryProblems) as info:
        Inventory.from_text(text, "inv.yaml")
    msg = str(info.value)
    assert "inv.yaml:5: host 'h': policy.deny has an invalid regular expression '('" in msg
    assert "inv.yaml:6: host 'h': policy.alow" in msg or "unknown key 'alow'" in msg


def test_a_single_pattern_may_be_a_string():
    assert PolicySpec.model_validate({"deny": "reboot"}).deny == ("reboot",)
