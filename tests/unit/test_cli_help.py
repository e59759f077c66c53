"""Help texts and messages a new user meets first (no lab)."""

from __future__ import annotations

import sys
from pathlib import Path

from phonehome_jump.cli import main
from phonehome_jump.workflow import Workflow, plan

ROOT = Path(__file__).resolve().parents[2]


def test_top_level_help_lists_every_exit_code(capsys):
    assert main(["--help"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    for code in ("1 error", "2 usage", "70 internal", "77 refused", "124 timeout",
                 "130 interrupted", "141 stdout closed", "255 connect failed"):
        assert code in out


def test_run_help_shows_every_option_in_its_usage(capsys):
    assert main(["run", "--help"]) == 0
    usage = capsys.readouterr().out.split("\n\n")[0]
    for option in ("--timeout", "--confirm", "--sudo-password"):
        assert option in usage


def test_unknown_group_points_at_groups_not_hosts(capsys):
    code = main(["--inventory", str(ROOT / "inventory"), "inventory", "list", "--group", "nosuch"])
    err = capsys.readouterr().err
    assert code == 2 and "unknown group 'nosuch'" in err
    assert "host list" not in err and "groups" in err


def test_step_names_get_their_variables(capsys):
    wf = Workflow.load(ROOT / "workflows" / "sl1-health.yaml")
    result = plan(wf, ["sl1-prod"])
    names = [s.name for s in result.hosts["sl1-prod"].steps]
    assert "root file system below 90%" in names
    assert not any("${max_disk}" in n for n in names)


def test_dry_run_counts_in_words(capsys):
    wf = ROOT / "workflows" / "sl1-health.yaml"
    assert main(["--inventory", str(ROOT / "inventory"), "workflow", "run", str(wf),
                 "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert out.rstrip().endswith("steps on 1 host; nothing was run")


def test_demo_as_non_root_is_one_clear_line(capsys, monkeypatch):
    sys.path.insert(0, str(ROOT / "tests" / "lab"))
    try:
        import demo
    finally:
        sys.path.remove(str(ROOT / "tests" / "lab"))
    monkeypatch.setattr(demo.os, "geteuid", lambda: 1000)
    assert demo.main() == 1
    err = capsys.readouterr().err
    assert "needs root" in err and "sudo make demo" in err and "Traceback" not in err
