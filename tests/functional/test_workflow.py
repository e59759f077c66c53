"""Workflows against the real sshd lab: CLI exit codes, parallel hosts, captures, sudo answers,
failing asserts, dry runs, invalid files, the lock, reports, and the MCP tools."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from mcp import Client

from phonehome_jump.errors import WorkflowLockedError
from phonehome_jump.mcp_server import build_server
from phonehome_jump.workflow import Workflow, WorkflowLock, run_workflow

from .mcp_calls import ok

SCRIPT = Path(sys.executable).parent / "phonehome-jump"
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def state_dir(tmp_path, monkeypatch):
    """Locks go to a directory of this test's own."""
    monkeypatch.setenv("PHONEHOME_JUMP_STATE", str(tmp_path / "state"))
    return tmp_path / "state"


def wf_file(tmp_path: Path, text: str, name: str = "wf.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def cli(lab, *argv: str, inventory: Path | None = None,
        timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PHONEHOME_JUMP_INVENTORY=str(inventory or lab.inventory))
    proc = subprocess.run([str(SCRIPT), *argv], capture_output=True, text=True, env=env,
                          timeout=timeout, stdin=subprocess.DEVNULL)
    assert "Traceback" not in proc.stdout + proc.stderr
    return proc


PARALLEL = """\
name: parallel
targets: {group: lab}
concurrency: 3
steps:
  - run: cd /tmp
  - run: sleep 1.5; echo "${host} $(hostname -I)"
  - run: pwd
    assert: {regex: '^/tmp$'}
"""


def test_hosts_run_in_parallel_each_in_its_own_persistent_session(lab, lab_inventory):
    wf = Workflow.from_text(PARALLEL, "parallel.yaml")
    events = []
    t0 = time.monotonic()
    r = run_workflow(wf, lab_inventory, on_event=events.append)
    wall = time.monotonic() - t0
    assert r.ok and r.exit_code == 0 and r.failed_hosts == []
    assert list(r.hosts) == ["lab-target1", "lab-target2", "lab-target3"]
    for i, (name, hr) in enumerate(r.hosts.items(), 1):
        assert hr.status == "passed" and [s.status for s in hr.steps] == ["passed"] * 3
        assert hr.steps[1].output.split() == [name, lab.addr(f"target{i}")]
        assert hr.steps[2].output == "/tmp\n"           # the cd of step 1 carried over
    # three 1.5 s steps one after the other would take 4.5 s
    assert wall < 4.0, wall
    ends = [e for e in events if e.kind == "host_end"]
    assert sorted(e.host for e in ends) == list(r.hosts)


CAPTURE = """\
name: capture
targets: {hosts: [lab-target1, lab-target2]}
vars: {greeting: hello}
steps:
  - run: id -un
    capture: user
  - run: echo "size=$(stat -c %s /etc/hostname) x"
    capture: {name: size, regex: 'size=(\\d+)'}
  - run: echo "${greeting} ${user} ${size} ${host} ${workflow} $HOME"
    assert: {regex: '^hello phjkey \\d+ lab-target\\d capture /home/phjkey$'}
"""


def test_capture_and_reuse_in_later_steps(lab, lab_inventory):
    r = run_workflow(Workflow.from_text(CAPTURE, "c.yaml"), lab_inventory)
    assert r.ok, r.to_dict()
    hr = r.hosts["lab-target2"]
    assert hr.steps[0].captured == {"user": "phjkey"}
    size = hr.steps[1].captured["size"]
    assert size.isdigit()
    assert hr.steps[2].output == f"hello phjkey {size} lab-target2 capture /home/phjkey\n"
    assert hr.vars == {"user": "phjkey", "size": size}


def test_sudo_prompt_answered_from_a_secret_reference_and_masked(lab, tmp_path):
    password = lab.env["PHJ_LAB_SUDO_PASSWORD"]
    path = wf_file(tmp_path, """\
name: sudo
targets: {hosts: [lab-sudo]}
steps:
  - run: sudo -k; sudo id -un
    answer:
      - {prompt: '\\[sudo\\] password', send: env:PHJ_LAB_SUDO_PASSWORD}
    assert: {regex: '^root$'}
  - run: "sudo -k; sudo -p 'again: ' whoami"
    answer:
      - {prompt: 'again: $', send: inventory:sudo_password}
""")
    report, junit = tmp_path / "r.json", tmp_path / "r.xml"
    proc = cli(lab, "workflow", "run", str(path), "--report", str(report), "--junit", str(junit))
    assert proc.returncode == 0, proc.stderr
    text = report.read_text()
    assert password not in text + junit.read_text() + proc.stdout + proc.stderr
    steps = json.loads(text)["hosts"]["lab-sudo"]["steps"]
    assert steps[0]["output"].endswith("root\n") and "[sudo] password" in steps[0]["output"]
    assert steps[1]["output"].endswith("root\n")


def test_a_prompt_no_answer_matches_fails_the_step_and_interrupts(lab, lab_inventory):
    wf = Workflow.from_text("""\
name: unanswered
targets: {hosts: [lab-sudo]}
steps:
  - run: sudo -k; sudo id -un
    on_fail: continue
  - run: echo still usable
""", "u.yaml")
    r = run_workflow(wf, lab_inventory)
    s1, s2 = r.hosts["lab-sudo"].steps
    assert s1.status == "failed" and "no answer matches" in s1.message
    assert (s2.status, s2.output) == ("passed", "still usable\n")
    assert r.failed_hosts == ["lab-sudo"]


ASSERT_ONE = """\
name: one-fails
targets: {group: lab}
steps:
  - run: echo ${host}
    assert: {regex: '^lab-target[13]$'}
    on_fail: continue
  - run: echo after
  - run: "false"
    expect_exit: [1]
  - run: exit_with() { return $1; }; exit_with 7
    on_fail: stop
  - run: echo never
"""


def test_assert_fails_on_one_host_only_exit_1_and_the_others_still_run(lab, tmp_path):
    path = wf_file(tmp_path, ASSERT_ONE)
    report, junit = tmp_path / "r.json", tmp_path / "r.xml"
    proc = cli(lab, "workflow", "run", str(path), "--report", str(report), "--junit", str(junit))
    assert proc.returncode == 1, proc.stderr
    assert "0/3 hosts passed" in proc.stdout
    assert "failed: lab-target1, lab-target2, lab-target3" in proc.stdout
    data = json.loads(report.read_text())
    # step 4 exits 7 everywhere (stop): every host fails there; step 1 fails on target2 only
    for host, hr in data["hosts"].items():
        statuses = [s["status"] for s in hr["steps"]]
        first = "failed" if host == "lab-target2" else "passed"
        assert statuses == [first, "passed", "passed", "failed", "skipped"], (host, statuses)
        assert hr["steps"][1]["output"] == "after\n"
        assert hr["steps"][3]["message"] == "exit status 7, expected 0"
        assert hr["steps"][3]["exit_status"] == 7
    assert "does not match" in data["hosts"]["lab-target2"]["steps"][0]["message"]
    assert data["failed_hosts"] == ["lab-target1", "lab-target2", "lab-target3"]
    # the JUnit file says the same
    root = ET.parse(junit).getroot()
    assert int(root.get("tests")) == 15 and int(root.get("failures")) == 4
    by_host = {s.get("hostname"): s for s in root.iter("testsuite")}
    assert set(by_host) == set(data["hosts"])
    for host, suite in by_host.items():
        cases = suite.findall("testcase")
        assert [c.get("name")[:2] for c in cases] == ["01", "02", "03", "04", "05"]
        failed = [c.get("name")[:2] for c in cases if c.find("failure") is not None]
        assert failed == (["01", "04"] if host == "lab-target2" else ["04"])
        assert cases[4].find("skipped") is not None
        assert float(suite.get("time")) == pytest.approx(data["hosts"][host]["duration"], abs=1e-3)
    # timestamped progress lines when stderr is not a terminal
    assert any(line.split(" ", 1)[1].startswith("lab-target2: step 1/5 failed")
               for line in proc.stderr.splitlines())


def test_dry_run_touches_no_host(lab, tmp_path):
    path = wf_file(tmp_path, PARALLEL)
    logs = {n: (lab.state / f"sshd_{n}.log") for n in ("jump1", "jump2", "target1")}
    sizes = {n: p.stat().st_size for n, p in logs.items()}
    report = tmp_path / "r.json"
    proc = cli(lab, "workflow", "run", str(path), "--dry-run", "--report", str(report))
    assert proc.returncode == 0, proc.stderr
    assert 'lab-target3: step 2: sleep 1.5; echo "lab-target3 $(hostname -I)"' in proc.stdout
    assert "nothing was run" in proc.stdout
    assert json.loads(report.read_text())["dry_run"] is True
    time.sleep(0.2)
    assert {n: p.stat().st_size for n, p in logs.items()} == sizes   # no connection logged


@pytest.mark.parametrize("text,line,what", [
    (PARALLEL.replace("concurrency: 3", "concurency: 3"), 3, "unknown key 'concurency'"),
    (PARALLEL.replace("run: pwd", "run: cd ${dir}"), 7, "undefined variable 'dir'"),
    (PARALLEL.replace("{group: lab}", "{hosts: [lab-target1, lab-target9]}"), 2,
     "unknown host 'lab-target9'"),
])
def test_invalid_workflow_exit_2_with_file_and_line(lab, tmp_path, text, line, what):
    path = wf_file(tmp_path, text)
    for action in ("check", "run"):
        proc = cli(lab, "workflow", action, str(path))
        assert proc.returncode == 2 and f"{path}:{line}: " in proc.stderr and what in proc.stderr


def test_check_ok_and_var_from_the_command_line(lab, tmp_path):
    path = wf_file(tmp_path, PARALLEL.replace("run: pwd", "run: cd ${dir}"))
    proc = cli(lab, "workflow", "check", str(path), "--var", "dir=/tmp")
    assert proc.returncode == 0 and "3 steps on 3 hosts" in proc.stdout


def test_invalid_inventory_is_exit_2(lab, tmp_path):
    bad = wf_file(tmp_path, "hosts:\n  x: {hots: 1}\n", "inv.yaml")
    proc = cli(lab, "workflow", "run", str(wf_file(tmp_path, PARALLEL)), inventory=bad)
    assert proc.returncode == 2 and "unknown key 'hots'" in proc.stderr


def test_overlapping_runs_are_blocked_by_the_lock(lab, tmp_path):
    path = wf_file(tmp_path, PARALLEL)
    with WorkflowLock(Workflow.load(path)).acquire("the nightly run"):
        proc = cli(lab, "workflow", "run", str(path))
        assert proc.returncode == 3
        assert "another run holds the lock" in proc.stderr and "the nightly run" in proc.stderr
        assert f"pid {os.getpid()}" in proc.stderr
        with pytest.raises(WorkflowLockedError):
            run_lock = WorkflowLock(Workflow.load(path))
            run_lock.acquire()


def test_a_running_workflow_blocks_a_second_one(lab, tmp_path):
    path = wf_file(tmp_path, PARALLEL.replace("sleep 1.5", "sleep 4"))
    lock_file = WorkflowLock(Workflow.load(path)).path
    env = dict(os.environ, PHONEHOME_JUMP_INVENTORY=str(lab.inventory))
    first = subprocess.Popen([str(SCRIPT), "workflow", "run", str(path)], env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30       # until the first run has written itself in
        while time.monotonic() < deadline and f'"pid": {first.pid}' not in (
                lock_file.read_text() if lock_file.exists() else ""):
            time.sleep(0.05)
        second = cli(lab, "workflow", "run", str(path))
        assert second.returncode == 3, second.stderr
        assert f"pid {first.pid}" in second.stderr
    finally:
        out, err = first.communicate(timeout=60)
    assert first.returncode == 0, err


# ----------------------------------------------------------------------------- MCP

@pytest.fixture
def anyio_backend():
    return "asyncio"


@pytest.fixture
def wf_dir(tmp_path):
    d = tmp_path / "workflows"
    d.mkdir()
    (d / "parallel.yaml").write_text(PARALLEL)
    (d / "one.yaml").write_text(ASSERT_ONE)
    (d / "broken.yaml").write_text("name: broken\ntargets: {group: nope}\nsteps: [{run: x}]\n")
    return d


@pytest.mark.anyio
async def test_mcp_workflow_list_run_and_status(lab, wf_dir):
    server = build_server(lab.inventory, workflows=wf_dir)
    async with Client(server) as client:
        listed = {w["name"]: w for w in (await ok(client, "workflow_list"))["workflows"]}
        assert set(listed) == {"parallel", "one-fails", "broken"}, listed
        assert listed["parallel"]["steps"] == ["cd /tmp", 'sleep 1.5; echo "${host} $(hostname -I)"',
                                               "pwd"] and listed["parallel"]["problem"] is None
        assert "unknown group 'nope'" in listed["broken"]["problem"]
        # bounded by wait: returns running with a run id, status collects the rest
        r = await ok(client, "workflow_run", name="parallel", wait=0)
        assert r["running"] and r["run_id"] and "workflow_status" in r["note"]
        # every host is in the result from the start (filled before the worker thread runs)
        assert list(r["hosts"]) == ["lab-target1", "lab-target2", "lab-target3"]
        assert {h["status"] for h in r["hosts"].values()} <= {"pending", "running"}
        while r["running"]:
            r = await ok(client, "workflow_status", run_id=r["run_id"], wait=10)
        assert r["ok"] and r["failed_hosts"] == [] and len(r["hosts"]) == 3
        assert r["hosts"]["lab-target1"]["steps"][2]["output"] == "/tmp\n"
        # the same per-host results as the CLI, in one call when it is quick enough
        r = await ok(client, "workflow_run", name="one-fails", hosts=["lab-target2"], wait=30)
        assert not r["running"] and r["failed_hosts"] == ["lab-target2"]
        assert [s["status"] for s in r["hosts"]["lab-target2"]["steps"]] == \
            ["failed", "passed", "passed", "failed", "skipped"]
        assert (await ok(client, "ssh_session_list"))["sessions"] == []   # closed per host
        bad = await client.call_tool("workflow_run", {"name": "paralel"})
        assert bad.is_error and "did you mean 'parallel'" in bad.content[0].text
        bad = await client.call_tool("workflow_run", {"name": "parallel", "hosts": ["lab-sudo"]})
        assert bad.is_error and "not a target" in bad.content[0].text
        bad = await client.call_tool("workflow_status", {"run_id": "w-nope"})
        assert bad.is_error and "no workflow run" in bad.content[0].text


@pytest.mark.anyio
async def test_mcp_workflow_run_respects_the_lock(lab, wf_dir):
    server = build_server(lab.inventory, workflows=wf_dir)
    with WorkflowLock(Workflow.load(wf_dir / "parallel.yaml")).acquire("cron"):
        async with Client(server) as client:
            r = await client.call_tool("workflow_run", {"name": "parallel"})
            assert r.is_error and "another run holds the lock" in r.content[0].text


def test_example_lab_workflows_pass_on_the_lab(lab, lab_inventory):
    for name in ("lab-health.yaml", "lab-sudo.yaml"):
        r = run_workflow(Workflow.load(REPO / "workflows" / name), lab_inventory)
        assert r.ok, r.to_dict()


def test_a_missing_secret_fails_its_step_and_names_the_variable(lab, lab_inventory, monkeypatch):
    monkeypatch.delenv("PHJ_WF_UNSET", raising=False)
    wf = Workflow.from_text(wf_text := """\
name: unset
targets: {hosts: [lab-sudo]}
steps:
  - run: sudo -k; sudo id -un
    answer: [{prompt: 'password', send: env:PHJ_WF_UNSET}]
  - run: echo never
""", "unset.yaml")
    r = run_workflow(wf, lab_inventory)
    hr = r.hosts["lab-sudo"]
    # a failed step (the session is fine), not a host error; on_fail: stop skips the rest
    assert r.failed_hosts == ["lab-sudo"] and hr.error is None
    assert [s.status for s in hr.steps] == ["failed", "skipped"]
    assert "PHJ_WF_UNSET is not set" in hr.steps[0].message
    # on_fail: continue: the sudo prompt was interrupted, the session goes on
    wf = Workflow.from_text(wf_text.replace("send: env:PHJ_WF_UNSET}]",
                                            "send: env:PHJ_WF_UNSET}]\n    on_fail: continue"),
                            "unset.yaml")
    hr = run_workflow(wf, lab_inventory).hosts["lab-sudo"]
    assert [s.status for s in hr.steps] == ["failed", "passed"], hr.to_dict()
    assert "password" in hr.steps[0].output
    assert hr.steps[1].output == "never\n" and hr.error is None


def lab_inventory_with(lab, tmp_path: Path, extra: str) -> Path:
    """The lab inventory with ``extra`` (indented lines) added to its defaults."""
    text = lab.inventory.read_text()
    assert "  keepalive: 15\n" in text
    path = tmp_path / "inventory.yaml"
    path.write_text(text.replace("  keepalive: 15\n", "  keepalive: 15\n" + extra))
    return path


MISTAKES = """\
name: mistakes
targets: {hosts: [lab-target1, lab-target2]}
steps:
  - run: echo '1.2.3 (beta'
    capture: {name: tag, regex: '(\\(\\S+)'}
  - run: echo 'x (beta'
    assert: {regex: ' ${tag}$'}
  - run: echo 1.2.3
    capture: v
  - run: echo 1x2y3
    assert: {not_regex: '^${v}$'}
  - run: echo 1x2y3
    capture: {name: ver, regex: 'release (\\S+)'}
    on_fail: continue
  - run: echo "using ${ver}"
    on_fail: continue
  - run: echo a; reboot
    on_fail: continue
  - run: pwd
"""


def test_step_mistakes_fail_their_step_and_the_run_ends_with_exit_1_and_reports(lab, tmp_path):
    """A capture that failed, regex characters in a value, a policy refusal: failed steps."""
    inventory = lab_inventory_with(lab, tmp_path, "  policy: {deny: ['\\breboot\\b']}\n")
    path = wf_file(tmp_path, MISTAKES)
    report, junit = tmp_path / "r.json", tmp_path / "r.xml"
    proc = cli(lab, "workflow", "run", str(path), "--report", str(report), "--junit", str(junit),
               inventory=inventory)
    assert proc.returncode == 1, proc.stderr             # not 70 (internal error)
    assert "0/2 hosts passed" in proc.stdout
    data = json.loads(report.read_text())
    for host in ("lab-target1", "lab-target2"):
        hr = data["hosts"][host]
        assert hr["error"] is None
        assert [s["status"] for s in hr["steps"]] == \
            ["passed", "passed", "passed", "passed", "failed", "failed", "failed", "passed"], hr
        assert hr["steps"][0]["captured"] == {"tag": "(beta"}
        assert hr["steps"][5]["message"] == "variable 'ver' was not captured (step 5 failed)"
        assert "deny rule" in hr["steps"][6]["message"]
        assert hr["steps"][7]["output"] == "/home/phjkey\n"      # the session went on
    root = ET.parse(junit).getroot()
    assert (root.get("errors"), root.get("failures")) == ("0", "6")
    assert "connect" not in [c.get("name") for c in root.iter("testcase")]
    assert any("step 7/8 failed" in line for line in proc.stderr.splitlines())


# -- output of any size: bounded step results, whole text only for what needs it -------------

BIG = """\
name: big
targets: {hosts: [lab-target1]}
steps:
  - run: seq 1 2000000
  - name: big with an assert
    run: seq 1 2000000
    assert: {regex: '^2000000$'}
    on_fail: continue
  - run: seq 1 30000
    assert: {regex: '^15000$'}
    capture: {name: mid, regex: '^(1500\\d)$'}
  - run: echo "after ${mid}"
"""


def test_a_huge_step_output_is_bounded_exact_at_both_ends_and_never_joined(lab_inventory):
    import tracemalloc

    from phonehome_jump.manager import SessionManager

    big = "".join(f"{i}\n" for i in range(1, 2_000_001))           # 14,888,896 characters
    mid = "".join(f"{i}\n" for i in range(1, 30_001))               # 168,894: above the view
    keep = 65_536
    wf = Workflow.from_text(BIG, "big.yaml")
    with SessionManager(lab_inventory, output_memory=200_000) as m:
        tracemalloc.start()
        try:
            r = run_workflow(wf, manager=m)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    s1, s2, s3, s4 = r.hosts["lab-target1"].steps
    view = (big[:keep] + f"\n[… {len(big) - 2 * keep} characters omitted "
            f"({keep}–{len(big) - keep}) …]\n" + big[-keep:])
    # no assert: passes on its exit status, with the head and tail and honest offsets
    assert (s1.status, s1.exit_status, s1.message) == ("passed", 0, None)
    assert s1.output == view and s1.truncated and s1.omitted == (keep, len(big) - keep)
    # an assert over 14.9 MB with output_memory 200,000: the step fails saying why, unjoined
    assert (s2.status, s2.exit_status, s2.output, s2.omitted) == ("failed", 0, view, s1.omitted)
    assert s2.message == (
        f"step 2 (big with an assert): its output is {len(big):,} characters, more than "
        "output_memory (200,000); assert would need all of it in memory, so the step was not "
        "checked (try: filter the output on the host, e.g. `... | grep PATTERN` or "
        "`... | tail -n 100`, or raise output_memory / $PHONEHOME_JUMP_OUTPUT_MEMORY)")
    # within output_memory: assert and capture see the whole output (15000 is in the middle
    # the result leaves out), the result keeps head and tail
    assert (s3.status, s3.message, s3.captured) == ("passed", None, {"mid": "15000"})
    assert s3.output == (mid[:keep] + f"\n[… {len(mid) - 2 * keep} characters omitted "
                         f"({keep}–{len(mid) - keep}) …]\n" + mid[-keep:])
    assert "\n15000\n" not in s3.output and s3.omitted == (keep, len(mid) - keep)
    # small outputs are whole, as before
    assert (s4.status, s4.output, s4.truncated, s4.omitted) == ("passed", "after 15000\n",
                                                                False, None)
    # memory: the 14.9 MB outputs were never held whole. Joining one takes two copies (its
    # pages and the joined text, as before); the sessions and the SSH channels' own buffers
    # account for the few MB measured here
    assert peak < len(big), peak
    # reports carry the new fields and stay valid
    d = json.loads(json.dumps(r.to_dict()))["hosts"]["lab-target1"]["steps"]
    assert [(x["truncated"], x["omitted"]) for x in d] == [
        (True, [keep, len(big) - keep]), (True, [keep, len(big) - keep]),
        (True, [keep, len(mid) - keep]), (False, None)]
    from phonehome_jump.workflow import junit_xml
    cases = ET.fromstring(junit_xml(r)).findall("testsuite/testcase")
    assert cases[1].find("failure").get("message") == s2.message
    assert cases[0].find("system-out").text == view
