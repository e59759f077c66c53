"""Hostile input (pure logic): YAML alias bombs and recursion, sizes, callers' regular expressions."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest

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
    assert f"wf.yaml:5: steps[0].assert.regex is not a valid regular expression" in str(info.value)
