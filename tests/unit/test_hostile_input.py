"""Hostile input (pure logic): YAML alias bombs and recursion, sizes, callers' regular expressions."""

from __future__ import annotations

import dis
import inspect
import os
import threading
import time
import types

import pytest
import yaml

from phonehome_jump import yamlload
from phonehome_jump.errors import InventoryError, PatternError, PatternTimeoutError, WorkflowError
from phonehome_jump.inventory import MAX_HOSTS, Inventory
from phonehome_jump.patterns import MATCH_TIMEOUT, MAX_PATTERN, compile_safe
from phonehome_jump.prompts import compile_pattern
from phonehome_jump.workflow import Workflow, discover, discover_loaded, load_cached

EVIL = r"(a|aa)+$"                 # exponential in Python's re (and in regex without a limit)
EVIL_TEXT = "a" * 60 + "b"

WF = """\
name: {name}
targets: {{hosts: [web1]}}
steps:
  - run: uptime
"""


def bomb(levels: int = 9) -> str:
    """The classic "billion laughs": each level is nine aliases of the previous one."""
    names = "abcdefghijklmnop"[:levels]
    lines = [f'{names[0]}: &{names[0]} ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for prev, cur in zip(names, names[1:]):
        lines.append(f"{cur}: &{cur} [" + ",".join([f"*{prev}"] * 9) + "]")
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------- YAML

def inventory_problem(text: str) -> str:
    with pytest.raises(InventoryError) as info:
        Inventory.from_text(text, "inv.yaml")
    return str(info.value)


def test_alias_bomb_is_refused_quickly_with_file_and_line():
    text = bomb()
    assert len(text) < 400
    t0 = time.monotonic()
    msg = inventory_problem(text)
    assert time.monotonic() - t0 < 10          # was minutes and gigabytes
    assert msg.startswith("inv.yaml:6: alias *e expands to more than"), msg
    assert "alias bomb" in msg
    with pytest.raises(WorkflowError) as info:
        Workflow.from_text(text, "wf.yaml")
    assert str(info.value).startswith("wf.yaml:6: alias *e expands"), info.value


@pytest.mark.parametrize("text, line", [
    ("x: &a [*a]\n", 1),
    ("hosts:\n  h: &h\n    host: x\n    tags: [*h]\n", 4),
    ("hosts:\n  h: &h\n    host: x\n    <<: *h\n", 4),
    ("a: &a {b: {c: [1, *a]}}\n", 1),
])
def test_recursive_alias_is_refused_with_its_line(text, line):
    msg = inventory_problem(text)
    assert msg.startswith(f"inv.yaml:{line}: recursive alias"), msg
    assert "cannot contain itself" in msg


def test_ordinary_alias_reuse_still_works():
    hosts = "\n".join(f"  h{i}: {{<<: *base, host: 10.0.{i // 250}.{i % 250}}}" for i in range(2000))
    inv = Inventory.from_text("groups:\n  g: &base {tags: [x, y, z], port: 2222, "
                              "description: a shared block}\nhosts:\n" + hosts + "\n", "inv.yaml")
    assert len(inv) == 2000 and inv.target("h7").endpoint.port == 2222


def test_deep_nesting_is_refused_not_a_recursion_error():
    msg = inventory_problem("x: " + "[" * 5000 + "]" * 5000 + "\n")
    assert msg == f"inv.yaml:1: nested more than {yamlload.MAX_DEPTH} levels deep"


def test_too_many_values_stop_the_parse_early(monkeypatch):
    monkeypatch.setattr(yamlload, "MAX_YAML_VALUES", 500)
    text = "hosts:\n" + "".join(f"  h{i}: {{host: x{i}}}\n" for i in range(400))
    msg = inventory_problem(text)
    assert "more than 500 values in one file" in msg and msg.startswith("inv.yaml:")


def test_file_size_limit_is_checked_before_reading(tmp_path, monkeypatch):
    monkeypatch.setattr(yamlload, "MAX_YAML_BYTES", 1000)
    big = tmp_path / "big.yaml"
    big.write_text("# " + "x" * 2000 + "\nhosts: {}\n")
    with pytest.raises(InventoryError) as info:
        Inventory.load(big)
    assert str(info.value).startswith(f"{big}: the file is 2013 bytes; the limit is 1000 bytes")


def test_host_limit(monkeypatch):
    from phonehome_jump import inventory
    monkeypatch.setattr(inventory, "MAX_HOSTS", 3)
    text = "hosts:\n" + "".join(f"  h{i}: {{host: x{i}}}\n" for i in range(4))
    assert inventory_problem(text) == ("inv.yaml:1: more than 3 hosts in the inventory; split "
                                       "the sites into several inventories (one per agent or "
                                       "MCP server)")
    assert MAX_HOSTS == 20_000


def test_non_utf8_inventory_file_names_the_byte(tmp_path):
    f = tmp_path / "inv.yaml"
    f.write_bytes(b"hosts:\n  a: {host: caf\xe9}\n")
    with pytest.raises(InventoryError) as info:
        Inventory.load(f)
    assert str(info.value) == (f"{f}:2: the file is not UTF-8 text (byte 0xe9 at offset 22)"
                               "\n  try: save it as UTF-8")


# ----------------------------------------------------------------------------- workflow dir

def test_one_bad_file_does_not_break_the_directory(tmp_path):
    (tmp_path / "good.yaml").write_text(WF.format(name="good"))
    (tmp_path / "bomb.yaml").write_text(bomb())
    (tmp_path / "loop.yaml").write_text("x: &a [*a]\n")
    (tmp_path / "dir.yaml").mkdir()                     # not a file: ignored
    found = discover_loaded(tmp_path)
    assert sorted(found) == ["bomb", "good", "loop"]
    assert isinstance(found["good"], Workflow)
    assert isinstance(found["bomb"], WorkflowError) and "alias bomb" in str(found["bomb"])
    assert "recursive alias" in str(found["loop"])
    assert discover(tmp_path)["good"] == tmp_path / "good.yaml"


def test_listing_parses_a_file_again_only_when_it_changed(tmp_path):
    f = tmp_path / "wf.yaml"
    f.write_text(WF.format(name="first"))
    one = load_cached(f)
    assert load_cached(f) is one                        # unchanged: the same object
    f.write_text(WF.format(name="second"))              # size changes
    os.utime(f, ns=(time.time_ns(), time.time_ns() + 10**9))
    two = load_cached(f)
    assert isinstance(two, Workflow) and two.name == "second"


def late_reraises(fn_or_module) -> list[str]:
    """Handlers that re-raise past position 256 of their function (see yamlload._guarded).

    In CPython 3.11 such a handler needs a new int for its position, and when that cannot be
    allocated during a MemoryError the interpreter retries the same handler for ever.
    """
    if isinstance(fn_or_module, types.ModuleType):
        path = inspect.getsourcefile(fn_or_module)
        top = compile(open(path, encoding="utf-8").read(), path, "exec")
    else:
        top = fn_or_module.__code__

    def codes(co):
        yield co
        for c in co.co_consts:
            if isinstance(c, types.CodeType):
                yield from codes(c)
    return [co.co_qualname for co in codes(top)
            if any(e.lasti and e.end > 2 * 257 for e in dis.Bytecode(co).exception_entries)]


def test_a_memory_error_while_loading_meets_no_handler_that_can_spin():
    # the check finds what it is for: a `finally` after 300 instructions
    space: dict = {}
    exec("def long_then_finally(x):\n    x = " + " + ".join(["x"] * 150) + "\n"
         "    try:\n        return x\n    finally:\n        x = None\n", space)
    assert late_reraises(space["long_then_finally"]) == ["long_then_finally"]
    assert late_reraises(yamlload) == []
    assert [q for m in (yaml.reader, yaml.scanner, yaml.parser, yaml.composer, yaml.constructor)
            for q in late_reraises(m)] in ([], ["Scanner.scan_uri_escapes"])  # tags with %xx only
    from phonehome_jump import inventory
    loading = [inventory.Inventory.load, inventory.Inventory._build.__func__, inventory._read_file,
               inventory._not_utf8, inventory._validated,
               *(f for f in vars(inventory._Builder).values() if inspect.isfunction(f))]
    assert [q for f in loading for q in late_reraises(f)] == []
    from phonehome_jump import workflow
    loading = [workflow.load_cached, workflow._remember, workflow.Workflow.load.__func__]
    assert [q for f in loading for q in late_reraises(f)] == []


def test_workflow_size_limit(tmp_path):
    f = tmp_path / "big.yaml"
    f.write_text(WF.format(name="big") + "# " + "x" * (2**20) + "\n")
    with pytest.raises(WorkflowError) as info:
        Workflow.load(f)
    assert "the limit is 1048576 bytes (1 MiB)" in str(info.value)


# ----------------------------------------------------------------------------- patterns

def test_evil_pattern_gives_up_after_its_time_limit():
    p = compile_pattern(EVIL)
    t0 = time.monotonic()
    with pytest.raises(PatternTimeoutError) as info:
        p.search(EVIL_TEXT)
    took = time.monotonic() - t0
    assert MATCH_TIMEOUT * 0.9 < took < 30     # processor time: longer on a busy machine
    msg = str(info.value)
    assert "'until' pattern '(a|aa)+$' took more than 1s" in msg and "backtracking" in msg
    assert "try: simplify the pattern" in msg


def test_matching_lets_other_threads_run():
    """The GIL is released while matching: another thread keeps ticking meanwhile."""
    ticks: list[float] = []
    stop = threading.Event()

    def tick() -> None:
        while not stop.is_set():
            ticks.append(time.monotonic())
            time.sleep(0.01)
    t = threading.Thread(target=tick)
    t.start()
    try:
        with pytest.raises(PatternTimeoutError):
            compile_safe(EVIL).search(EVIL_TEXT)
    finally:
        stop.set()
        t.join()
    gaps = [b - a for a, b in zip(ticks, ticks[1:])]
    assert len(ticks) > 20 and max(gaps) < 0.5, max(gaps)


def test_pattern_dialect_is_pythons_re():
    p = compile_safe(r"(?P<v>\d+)\.(\d+)(?=\s)", flags=0)
    m = p.search("version 12.4 ok")
    assert (m.group("v"), m.group(2), p.groups) == ("12", "4", 2)
    assert compile_safe(r"^b$", flags=__import__("phonehome_jump.patterns").patterns.MULTILINE
                        ).search("a\nb\nc")


def test_invalid_and_oversized_patterns():
    with pytest.raises(PatternError) as info:
        compile_pattern("(")
    assert str(info.value).startswith("invalid 'until' pattern '(': missing )")
    with pytest.raises(PatternError) as info:
        compile_pattern("a" * (MAX_PATTERN + 1))
    assert f"the limit is {MAX_PATTERN}" in str(info.value)


def test_workflow_pattern_limits_apply_at_load():
    text = WF.format(name="x") + "    assert: {regex: '" + "a" * (MAX_PATTERN + 1) + "'}\n"
    with pytest.raises(WorkflowError) as info:
        Workflow.from_text(text, "wf.yaml")
    assert "wf.yaml:5: steps[0].assert.regex is not a valid regular expression" in str(info.value)


# ----------------------------------------------------------------------------- numbers, names

@pytest.mark.parametrize("text, message", [
    ("hosts: {a: {host: x, port: true}}", "host 'a': port must be a number, not true"),
    ("hosts: {a: {host: x, port: 70000}}", "host 'a': port must be a whole number between 1 "
                                           "and 65535, got 70000"),
    ("defaults: {connect_timeout: 1e300}\nhosts: {a: {host: x}}",
     'defaults: connect_timeout must be at most 3600, got "1e300"'),
    ("defaults: {connect_timeout: .inf}\nhosts: {a: {host: x}}",
     "defaults: connect_timeout must be a finite number"),
    ("defaults: {connect_timeout: .nan}\nhosts: {a: {host: x}}",
     "defaults: connect_timeout must be a finite number"),
    ("defaults: {keepalive: false}\nhosts: {a: {host: x}}",
     "defaults: keepalive must be a number, not false"),
    ("audit: {path: /tmp/a.log, backups: true}", "audit: backups must be a number, not true"),
])
def test_inventory_numbers_are_strict_finite_and_in_range(text, message):
    assert inventory_problem(text).startswith(f"inv.yaml:1: {message}")


def test_inventory_numbers_that_are_fine():
    inv = Inventory.from_text("defaults: {connect_timeout: 1e3, keepalive: 0}\n"
                              "hosts: {a: {host: x, port: 2222}}", "inv.yaml")
    ep = inv.target("a").endpoint
    assert (ep.port, ep.connect_timeout, ep.keepalive) == (2222, 1000.0, 0)


@pytest.mark.parametrize("field, value, message", [
    ("concurrency", "true", "concurrency must be a number, not true"),
    ("step_timeout", ".inf", "step_timeout must be a finite number, not inf"),
    ("step_timeout", ".nan", "step_timeout must be a finite number"),
    ("step_timeout", "1e12", "step_timeout must be at most 604800"),
])
def test_workflow_numbers(field, value, message):
    with pytest.raises(WorkflowError) as info:
        Workflow.from_text(WF.format(name="n") + f"{field}: {value}\n", "wf.yaml")
    assert message in str(info.value)
    with pytest.raises(WorkflowError) as info:
        Workflow.from_text(WF.format(name="n") + "    expect_exit: [0, true, 300]\n", "wf.yaml")
    assert "expect_exit" in str(info.value)


def test_unknown_device_type_is_caught_at_load_with_the_closest_names():
    msg = inventory_problem("hosts:\n  r1: {host: x, device_type: cisco_iso}\n"
                            "  r2: {host: y, device_type: nonexistent_os}\n")
    assert "inv.yaml:2: host 'r1': unknown device_type 'cisco_iso' (did you mean 'cisco_ios'" in msg
    assert "inv.yaml:3: host 'r2': unknown device_type 'nonexistent_os'" in msg
    assert msg.count("\n") == 2          # two problems, not hundreds of platform names
    ok = Inventory.from_text("groups: {g: {device_type: juniper_junos}}\n"
                             "hosts: {a: {host: x, groups: [g]}}", "inv.yaml")
    assert ok.target("a").device_type == "juniper_junos"


def test_cli_numbers_are_checked_at_parse(capsys):
    from phonehome_jump.cli import main
    for args, message in ((["run", "--timeout", "inf", "h", "--", "true"],
                           "must be a finite number of seconds, not 'inf'"),
                          (["run", "--timeout", "1e12", "h", "--", "true"],
                           "must be at most 604800 seconds"),
                          (["run", "--timeout", "nan", "h", "--", "true"],
                           "must be a finite number of seconds"),
                          (["workflow", "run", "--concurrency", "0", "x.yaml"],
                           "must be from 1 to 100, not 0")):
        assert main(args) == 2
        assert message in capsys.readouterr().err


def test_text_checks():
    from phonehome_jump.inputs import check_text, repair_json_line
    assert check_text("café ✓ 😀", "command") == "café ✓ 😀"
    for bad, what in (("a\ud800", "a lone surrogate U+D800"), ("a\udcff", "the byte 0xff"),
                      ("a\ufffd", "U+FFFD")):
        with pytest.raises(Exception) as info:
            check_text(bad, "text", where="host 'h'")
        assert f"host 'h': text contains {what}" in str(info.value)
        str(info.value).encode("utf-8")       # the message itself can always be sent
    assert repair_json_line(r'{"a":"x\ud800y"}') == r'{"a":"x\ufffdy"}'
    assert repair_json_line(r'{"a":"\udc00"}') == r'{"a":"\ufffd"}'
    assert repair_json_line(r'{"a":"\ud83d\ude00"}') == r'{"a":"\ud83d\ude00"}'   # a pair
    assert repair_json_line(r'{"a":"\\ud800"}') == r'{"a":"\\ud800"}'          # backslash


# ----------------------------------------------------------------------------- MCP arguments

@pytest.fixture
def anyio_backend():
    return "asyncio"


@pytest.mark.anyio
async def test_mcp_numeric_and_text_arguments_are_checked():
    from mcp import Client

    from phonehome_jump.mcp_server import build_server
    inv = Inventory.from_text("hosts: {h1: {host: 192.0.2.1}}", "inv.yaml")
    async with Client(build_server(inv)) as client:
        for args, expected in (({"session_id": "s", "wait": True}, "must be a number, not true"),
                               ({"session_id": "s", "wait": -1}, "greater than or equal to 0"),
                               ({"session_id": "s", "offset": True}, "must be a number, not true")):
            r = await client.call_tool("ssh_session_read", args)
            assert r.is_error and expected in r.content[0].text, r.content
        r = await client.call_tool("inventory_show", {"host": "h1\ufffd"})
        assert r.is_error and "host contains U+FFFD" in r.content[0].text
        r = await client.call_tool("inventory_list", {"query": "x\ufffd"})
        assert r.is_error and "query contains U+FFFD" in r.content[0].text
        r = await client.call_tool("ssh_session_open", {"host": "h1\ud800"})
        assert r.is_error and "host contains a lone surrogate U+D800" in r.content[0].text


def test_a_backtracking_policy_rule_refuses_instead_of_hanging():
    from phonehome_jump.errors import PolicyError
    inv = Inventory.from_text("hosts: {h: {host: x, policy: {deny: ['(a|aa)+$']}}}", "inv.yaml")
    policy = inv.target("h").policy
    policy.check("echo fine", host="h")
    with pytest.raises(PolicyError) as info:
        policy.check("echo " + "a" * 60 + "b", host="h")
    assert "command refused: the policy rule '(a|aa)+$' took more than 1s" in str(info.value)


def test_agent_numeric_params_are_strict():
    from phonehome_jump.agent_server import CommandParams, OpenParams, ReadParams, _validate
    from phonehome_jump.wire import RpcError
    for method, model, params, expected in (
            ("ssh_session_command", CommandParams,
             {"session_id": "s", "command": "c", "timeout": True}, "must be a number, not true"),
            ("ssh_session_read", ReadParams, {"session_id": "s", "timeout": 1e400},
             "must be a finite number"),
            ("ssh_session_read", ReadParams, {"session_id": "s", "offset": False},
             "must be a number, not false"),
            ("ssh_session_open", OpenParams, {"host": "h", "port": True},
             "must be a number, not true")):
        with pytest.raises(RpcError) as info:
            _validate(method, model, params)
        assert expected in info.value.message, info.value.message


def test_var_values_must_be_text():
    from phonehome_jump.errors import InputError
    from phonehome_jump.workflow import parse_vars
    assert parse_vars(["a=café"]) == {"a": "café"}
    with pytest.raises(InputError) as info:
        parse_vars(["a=caf\udce9"])
    assert str(info.value).startswith("--var: --var a contains the byte 0xe9, which is not UTF-8")


@pytest.mark.anyio
async def test_workflow_list_over_mcp_survives_a_bad_file(tmp_path):
    from mcp import Client

    from phonehome_jump.mcp_server import build_server
    (tmp_path / "good.yaml").write_text(WF.format(name="good").replace("web1", "h1"))
    (tmp_path / "bomb.yaml").write_text(bomb())
    (tmp_path / "loop.yaml").write_text("x: &a [*a]\n")
    inv = Inventory.from_text("hosts: {h1: {host: 192.0.2.1}}", "inv.yaml")
    async with Client(build_server(inv, workflows=tmp_path)) as client:
        for _ in range(2):                        # the second listing comes from the cache
            r = await client.call_tool("workflow_list", {})
            assert not r.is_error, r.content
            found = {w["name"]: w for w in r.structured_content["workflows"]}
            assert sorted(found) == ["bomb", "good", "loop"]
            assert found["good"]["problem"] is None and found["good"]["steps"] == ["uptime"]
            assert "bomb.yaml:6: alias *e expands" in found["bomb"]["problem"]
            assert "loop.yaml:1: recursive alias" in found["loop"]["problem"]
        r = await client.call_tool("workflow_run", {"name": "bomb"})
        assert r.is_error and "alias bomb" in r.content[0].text


def test_workflow_patterns_with_variables_are_checked_as_they_will_run():
    wf = Workflow.from_text(WF.format(name="v") + "    assert: {regex: '^${sum} +x'}\n"
                            "    capture: {name: out, regex: '=${sum}'}\n", "wf.yaml")
    assert wf.spec.steps[0].assert_.regex == "^${sum} +x"


@pytest.mark.parametrize("pattern, text", [
    (r"x{ip}", "x{ip}"), (r"\${sum}", "${sum}"), (r"\N{EM DASH}", "\u2014"), (r"a{2}b", "aab"),
    (r"a{2,}b", "aaab"), (r"[{]x", "{x"), (r"\{ab\}", "{ab}"), (r"\\{x}", "\\{x}"),
])
def test_braces_mean_what_they_mean_in_re(pattern, text):
    import re
    assert re.search(pattern, text)
    assert compile_safe(pattern).search(text), pattern
