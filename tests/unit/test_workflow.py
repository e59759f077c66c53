"""Workflow files: loading, validation with file:line, substitution, lock, reports (pure logic)."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from phonehome_jump.errors import InventoryError, WorkflowLockedError
from phonehome_jump.inventory import Inventory
from phonehome_jump.workflow import (HostResult, RunResult, StepResult, Workflow, WorkflowLock,
                                     WorkflowProblems, junit_xml, names_in, parse_vars, plan,
                                     substitute)

REPO = Path(__file__).resolve().parents[2]

INV = Inventory.from_text("""
jump_hosts:
  hop: {host: 10.0.0.1}
groups:
  web: {via: hop, tags: [prod]}
hosts:
  web1: {host: 10.0.1.1, groups: [web]}
  web2: {host: 10.0.1.2, groups: [web], tags: [eu]}
  db1: {host: 10.0.2.1}
""", "inv.yaml")

GOOD = """\
name: demo
targets: {group: web}
vars: {service: em7}
steps:
  - run: cd /opt/${service}
  - run: systemctl is-active ${service}
    capture: state
  - run: echo "${state} on ${host}"
    assert: {regex: '^active'}
    on_fail: continue
"""


def problems(text: str, **check) -> list[tuple[str, str]]:
    with pytest.raises(WorkflowProblems) as info:
        wf = Workflow.from_text(text, "wf.yaml")
        wf.check(INV, **check)
    return info.value.problems


def test_good_file_loads_with_defaults():
    wf = Workflow.from_text(GOOD, "wf.yaml")
    assert wf.name == "demo" and wf.spec.concurrency == 10
    s = wf.spec.steps
    assert s[0].expect_exit == (0,) and s[0].on_fail == "stop" and s[0].answer == ()
    assert s[1].capture.name == "state" and s[2].assert_.regex == "^active"
    assert wf.check(INV) == ["web1", "web2"]
    assert wf.check(INV, hosts=["web2"]) == ["web2"]


def test_models_are_frozen():
    wf = Workflow.from_text(GOOD, "wf.yaml")
    with pytest.raises(Exception):
        wf.spec.steps[0].run = "rm -rf /"  # type: ignore[misc]


def test_substitution_is_braced_only_and_leaves_the_shell_alone():
    text = 'echo ${x} $HOME $? $(date) $1 $$ $${y} "${x}"'
    assert substitute(text, {"x": "X"}) == 'echo X $HOME $? $(date) $1 $$ ${y} "X"'
    assert names_in(text) == ["x"]


def test_unknown_key_names_line_and_suggests():
    [(where, what)] = problems(GOOD.replace("    on_fail: continue", "    on_fial: continue"))
    assert where == "wf.yaml:10" and "unknown key 'on_fial'" in what and "'on_fail'" in what


def test_all_problems_at_once_each_with_its_line():
    text = """\
name: x
targets: {group: web}
concurrency: 0
steps:
  - run: echo ${nope}
  - run: y
    expect_exit: [0, x]
  - run: z
    assert: {regex: '('}
"""
    got = problems(text)
    wheres = [w for w, _ in got]
    assert wheres == ["wf.yaml:3", "wf.yaml:7", "wf.yaml:9"], got
    assert "at least 1" in got[0][1]
    assert "expect_exit must be a whole number, a list of whole numbers, or 'any'" in got[1][1]
    assert "not a valid regular expression" in got[2][1]


def test_undefined_variables_name_line_and_how_to_fix():
    text = GOOD.replace('echo "${state} on ${host}"', 'echo "${stat} ${late}"') + \
        "  - run: echo\n    capture: late\n"
    got = problems(text)
    assert [w for w, _ in got] == ["wf.yaml:8", "wf.yaml:8"]
    assert "undefined variable 'stat'" in got[0][1] and "did you mean 'state'" in got[0][1]
    assert "'late'" in got[1][1] and "captured only by step 4, later" in got[1][1]


def test_var_on_the_command_line_defines_a_variable():
    wf = Workflow.from_text(GOOD.replace("cd /opt/${service}", "cd ${base}"), "wf.yaml")
    assert "undefined variable 'base'" in str(problems(wf_text := GOOD.replace(
        "cd /opt/${service}", "cd ${base}")))
    assert wf.check(INV, vars={"base": "/srv"}) == ["web1", "web2"]
    assert plan(wf, ["web1"], {"base": "/srv"}).hosts["web1"].steps[0].command == "cd /srv"
    assert "${base}" in wf_text
    assert parse_vars(["base=/srv", "x=a=b"]) == {"base": "/srv", "x": "a=b"}
    with pytest.raises(InventoryError, match="NAME=VALUE"):
        parse_vars(["novalue"])


def test_unknown_hosts_groups_and_tags_against_the_inventory():
    got = problems(GOOD.replace("{group: web}", "{hosts: [web1, wbe2]}"))
    assert got == [("wf.yaml:2", "targets.hosts: unknown host 'wbe2' in the inventory "
                                 "(did you mean 'web2'?)")]
    got = problems(GOOD.replace("{group: web}", "{group: wbe}"))
    assert got[0][0] == "wf.yaml:2" and "unknown group 'wbe'" in got[0][1]
    got = problems(GOOD.replace("{group: web}", "{tags: [prod, us]}"))
    assert "no inventory host has every tag" in got[0][1]
    assert Workflow.from_text(GOOD.replace("{group: web}", "{tags: [prod, eu]}"),
                              "w").check(INV) == ["web2"]
    got = problems(GOOD, hosts=["db1"])
    assert got[0][0] == "--hosts" and "not a target" in got[0][1]


def test_targets_need_exactly_one_selector():
    got = problems(GOOD.replace("{group: web}", "{group: web, hosts: [db1]}"))
    assert "exactly one of group, hosts or tags" in got[0][1]


def test_literal_secret_is_refused_without_echoing_it():
    text = GOOD + "  - run: sudo true\n    answer: [{prompt: 'password', send: hunter2}]\n"
    got = problems(text)
    assert got[0][0] == "wf.yaml:12" and "reference" in got[0][1]
    assert "hunter2" not in str(got)


def test_answer_needs_send_or_text_and_a_valid_ref():
    base = GOOD + "  - run: x\n    answer: [{prompt: 'p'%s}]\n"
    assert "exactly one of send" in problems(base % "")[0][1]
    assert "exactly one of send" in problems(base % ", send: 'env:A', text: y")[0][1]
    assert "inventory:sudo_password" in problems(base % ", send: 'inventory:key'")[0][1]
    Workflow.from_text(base % ", send: 'inventory:sudo_password'", "w")
    Workflow.from_text(base % ", text: 'y'", "w")


def test_yaml_errors_and_duplicate_keys_have_lines():
    assert problems("name: [x\n")[0][1].startswith("invalid YAML")
    got = problems(GOOD.replace("vars: {service: em7}", "vars: {service: em7}\nname: again"))
    assert got[0][0] == "wf.yaml:4" and "duplicate key 'name'" in got[0][1]
    assert "must be a mapping" in problems("- a\n")[0][1]


def test_problems_are_inventory_errors_for_exit_2():
    with pytest.raises(InventoryError):
        Workflow.from_text("name: x\n", "wf.yaml")


def test_example_workflows_load():
    for f in sorted((REPO / "workflows").glob("*.yaml")):
        assert Workflow.load(f).spec.steps
    sl1 = Workflow.load(REPO / "workflows" / "sl1-health.yaml")
    assert sl1.check(Inventory.load(REPO / "inventory" / "example.yaml")) == ["sl1-prod"]


def test_plan_substitutes_and_keeps_captures_open():
    wf = Workflow.from_text(GOOD, "wf.yaml")
    r = plan(wf, ["web1"], {"service": "nginx"})
    cmds = [s.command for s in r.hosts["web1"].steps]
    assert cmds == ["cd /opt/nginx", "systemctl is-active nginx", 'echo "${state} on web1"']
    assert r.dry_run and all(s.status == "skipped" for s in r.hosts["web1"].steps)


def test_lock_blocks_a_second_holder_and_names_the_first(tmp_path):
    wf = Workflow.from_text(GOOD, str(tmp_path / "wf.yaml"))
    with WorkflowLock(wf, tmp_path).acquire("first run"):
        with pytest.raises(WorkflowLockedError) as info:
            WorkflowLock(wf, tmp_path).acquire("second")
        assert "first run" in str(info.value) and "pid" in str(info.value)
    WorkflowLock(wf, tmp_path).acquire().release()   # free again


def _result() -> RunResult:
    ok = HostResult("a", "passed", [StepResult(1, "one", "true", "passed", "hi\x01\n", 0, 0.01)])
    bad = HostResult("b", "failed", [
        StepResult(1, "one", "true", "failed", "boom\n", 1, 0.02, message="exit status 1"),
        StepResult(2, "two", "x", "skipped", message="step 1 failed")], 0.5)
    down = HostResult("c", "failed", [StepResult(1, "one", "true", "skipped")],
                      error="hop 'j': refused")
    return RunResult("wf", "wf.yaml", 0.0, {"a": ok, "b": bad, "c": down}, 1.0, finished=True)


def test_run_result_aggregates_failed_hosts_and_serialises():
    r = _result()
    assert r.failed_hosts == ["b", "c"] and not r.ok and r.exit_code == 1
    d = json.loads(json.dumps(r.to_dict()))
    assert d["hosts"]["b"]["steps"][0]["message"] == "exit status 1"


def test_junit_matches_the_result_and_survives_control_characters():
    root = ET.fromstring(junit_xml(_result()))
    assert (root.get("tests"), root.get("failures"), root.get("errors")) == ("4", "1", "1")
    suites = {s.get("hostname"): s for s in root.iter("testsuite")}
    assert suites["b"].find("testcase/failure").get("message") == "exit status 1"
    assert suites["b"].get("skipped") == "1"
    assert suites["a"].find("testcase/system-out").text == "hi\\x01\n"
    assert suites["c"].find("testcase/error") is not None


def test_mcp_workflow_tools_are_typed_annotated_and_only_with_a_directory():
    import anyio
    from mcp import Client

    from phonehome_jump.mcp_server import build_server

    async def tools(server):
        async with Client(server) as client:
            return {t.name: t for t in (await client.list_tools()).tools}

    assert "workflow_run" not in anyio.run(tools, build_server(INV))
    got = anyio.run(tools, build_server(INV, workflows=REPO / "workflows"))
    expect = {"workflow_list": (True, False, True, False), "workflow_run": (False, True, False, True),
              "workflow_status": (True, False, False, False)}
    for name, hints in expect.items():
        t, a = got[name], got[name].annotations
        assert (a.read_only_hint, a.destructive_hint, a.idempotent_hint, a.open_world_hint) == hints
        assert t.description and t.output_schema["type"] == "object"
        props = t.input_schema.get("properties", {})
        assert "ctx" not in props and all(p.get("description") for p in props.values()), name
    assert got["workflow_run"].input_schema["required"] == ["name"]


# ----------------------------------------------------------------------------- running steps
# A scripted stand-in for SessionManager (no SSH): `echo X` prints X, `fail` exits 1, `ask`
# waits at 'Password: ' until Ctrl-C (exit 130); the inventory's policy is checked as the
# manager does. The run logic is what is tested, not the sessions.

class FakeManager:
    output_memory = 4_000_000

    def __init__(self, inventory: Inventory, audit_error: bool = False) -> None:
        from phonehome_jump.session import CommandResult

        self.inventory, self.audit_error, self.CR = inventory, audit_error, CommandResult
        self.sent: list[tuple[str, str]] = []       # (command or typed text, host)
        self.open_ids: dict[str, str] = {}
        self.running: dict[str, bool] = {}

    def _res(self, output="", status=0, running=False, awaiting=False):
        return self.CR(None, output, None if running else status, running, "/", 0.0,
                       awaiting_input=awaiting)

    def open(self, host, *, owner=None, actor=None):
        from types import SimpleNamespace
        sid = f"s{len(self.open_ids) + 1}"
        self.open_ids[sid], self.running[sid] = host, False
        return SimpleNamespace(id=sid)

    def close(self, sid, *, owner=None):
        self.open_ids.pop(sid)

    def record(self, *a, **k):
        pass

    def command(self, sid, command, *, owner=None, wait=20.0, until=None, confirm=False):
        from phonehome_jump.errors import AuditError
        host = self.open_ids[sid]
        self.inventory.target(host).policy.check(command, host=host, confirm=confirm)
        if self.audit_error:
            raise AuditError("cannot write the audit log", where="audit.jsonl")
        self.sent.append((command, host))
        if command.startswith("echo "):
            return self._res(command[5:] + "\n")
        if command == "fail":
            return self._res(status=1)
        if command == "ask":
            self.running[sid] = True
            return self._res("Password: ", running=True, awaiting=True)
        return self._res()

    def read(self, sid, *, owner=None, wait=0.0, until=None, offset=None):
        if self.running[sid]:
            return self._res(running=True, awaiting=True)
        return self._res()

    def send(self, sid, text="", *, owner=None, newline=True, control=None, secret=False,
             confirm=False):
        self.sent.append((f"^{control}" if control else text, self.open_ids[sid]))
        if control == "c" and self.running[sid]:
            self.running[sid] = False


RUN_INV = Inventory.from_text("""
defaults: {policy: {deny: ['\\breboot\\b']}}
hosts:
  h1: {host: 10.0.0.1}
  h2: {host: 10.0.0.2}
""", "inv.yaml")


def run(text: str, **kw):
    from phonehome_jump.workflow import run_workflow

    m = FakeManager(RUN_INV, **{k: kw.pop(k) for k in ("audit_error",) if k in kw})
    r = run_workflow(Workflow.from_text(text, "wf.yaml"), manager=m, **kw)
    assert not m.open_ids                   # every session closed
    return r, m


def steps(r: RunResult, host: str = "h1") -> list[tuple[str, str | None]]:
    return [(s.status, s.message) for s in r.hosts[host].steps]


def test_regex_substitution_escapes_the_values():
    assert substitute("^${v}$", {"v": "1.2.3"}, regex=True) == r"^1\.2\.3$"
    assert substitute("x ${v}", {"v": "(beta"}, regex=True) == r"x \(beta"
    assert substitute("echo ${v}", {"v": "1.2.3"}) == "echo 1.2.3"      # run: as it is


def test_a_capture_that_failed_fails_the_step_using_it_and_on_fail_decides():
    r, m = run("""\
name: a
targets: {hosts: [h1, h2]}
steps:
  - run: echo version 8.12
    capture: {name: ver, regex: 'release (\\S+)'}
    on_fail: continue
  - run: echo using ${ver}
    on_fail: continue
  - run: echo after
  - run: echo ${ver} again
  - run: echo never
""")
    for host in ("h1", "h2"):                   # the run finished: every host has a result
        got = steps(r, host)
        assert got[0][0] == "failed" and "did not match" in got[0][1]
        assert got[1] == ("failed", "variable 'ver' was not captured (step 1 failed)")
        assert got[2] == ("passed", None)
        assert got[3] == ("failed", "variable 'ver' was not captured (step 1 failed)")
        assert got[4] == ("skipped", "step 4 failed")          # on_fail: stop (default)
        assert r.hosts[host].error is None
        assert r.hosts[host].steps[1].command == "echo using ${ver}"  # never sent
    assert r.finished and r.failed_hosts == ["h1", "h2"] and r.exit_code == 1
    assert sorted(c for c, _ in m.sent) == ["echo after"] * 2 + ["echo version 8.12"] * 2


def test_captured_values_match_literally_in_assert_and_capture_regexes():
    r, _ = run("""\
name: b
targets: {hosts: [h1]}
steps:
  - run: echo (beta
    capture: tag
  - run: echo x (beta y
    assert: {regex: ' ${tag} '}
  - run: echo 1.2.3
    capture: v
  - run: echo 1x2y3
    assert: {not_regex: '^${v}$'}
  - run: echo v1.2.3-rc
    capture: {name: rest, regex: 'v${v}(\\S*)'}
  - run: echo 1x2y3
    assert: {regex: '^${v}$'}
""")
    got = steps(r)
    assert got[:5] == [("passed", None)] * 5
    assert r.hosts["h1"].vars["rest"] == "-rc"
    assert got[5] == ("failed", "assert: '^${v}$' does not match the output")


def test_a_variable_in_a_capture_regex_is_checked_before_the_run():
    [(where, what)] = problems("""\
name: c
targets: {hosts: [web1]}
steps:
  - run: echo x
    capture: {name: v, regex: '${nope}(\\d+)'}
""")
    assert where == "wf.yaml:5" and "undefined variable 'nope'" in what


def test_a_policy_refusal_is_a_failed_step_and_on_fail_continue_goes_on():
    r, m = run("""\
name: p
targets: {hosts: [h1]}
steps:
  - run: echo a; reboot
    on_fail: continue
  - run: echo still here
""")
    hr = r.hosts["h1"]
    assert hr.error is None and hr.status == "failed"
    (s1, msg), s2 = steps(r)[0], steps(r)[1]
    assert s1 == "failed" and "deny rule" in msg and "reboot" in msg and "host 'h1'" not in msg
    assert s2 == ("passed", None) and ("echo a; reboot", "h1") not in m.sent
    root = ET.fromstring(junit_xml(r))
    assert root.get("errors") == "0" and root.get("failures") == "1"
    assert "connect" not in [c.get("name") for c in root.iter("testcase")]


def test_an_unset_secret_fails_its_step_interrupts_the_command_and_on_fail_applies(monkeypatch):
    monkeypatch.delenv("PHJ_UNIT_UNSET", raising=False)
    text = """\
name: s
targets: {hosts: [h1]}
steps:
  - run: ask
    answer: [{prompt: 'Password', send: env:PHJ_UNIT_UNSET}]
    on_fail: continue
  - run: echo next
"""
    r, m = run(text)
    (s1, msg), s2 = steps(r)
    assert s1 == "failed" and "PHJ_UNIT_UNSET" in msg and r.hosts["h1"].error is None
    assert s2 == ("passed", None)
    assert m.sent == [("ask", "h1"), ("^c", "h1"), ("echo next", "h1")]   # Ctrl-C, then on
    assert r.hosts["h1"].steps[0].output.startswith("Password: ")
    r, m = run(text.replace("    on_fail: continue\n", ""))                 # stop: the rest skip
    assert [s for s, _ in steps(r)] == ["failed", "skipped"]


def test_an_audit_failure_stops_the_host_fail_closed():
    r, m = run("""\
name: au
targets: {hosts: [h1]}
steps:
  - run: echo one
    on_fail: continue
  - run: echo two
""", audit_error=True)
    hr = r.hosts["h1"]
    assert "cannot write the audit log" in hr.error and m.sent == []
    assert [s for s, _ in steps(r)] == ["failed", "skipped"]
    root = ET.fromstring(junit_xml(r))
    assert [c.get("name") for c in root.iter("testcase")][0] == "session"   # not 'connect'


def test_an_empty_hosts_list_is_refused_not_every_target(tmp_path):
    from phonehome_jump.workflow import run_workflow

    [(where, what)] = problems(GOOD, hosts=[])
    assert what == "hosts is empty: omit it to run on every target" and "demo" in where
    wf = Workflow.from_text(GOOD, "wf.yaml")
    m = FakeManager(INV)
    with pytest.raises(WorkflowProblems, match="hosts is empty"):
        run_workflow(wf, manager=m, hosts=[])
    assert m.open_ids == {} and m.sent == []

    import anyio
    from mcp import Client

    from phonehome_jump.mcp_server import build_server

    (tmp_path / "demo.yaml").write_text(GOOD)

    async def call():
        async with Client(build_server(INV, workflows=tmp_path)) as client:
            return await client.call_tool("workflow_run", {"name": "demo", "hosts": []})

    r = anyio.run(call)
    assert r.is_error and "hosts is empty: omit it to run on every target" in r.content[0].text


def test_to_dict_is_safe_while_another_thread_fills_the_result():
    import sys
    import threading

    r = RunResult("wf", "wf.yaml", 0.0, {})
    stop = threading.Event()

    def fill():                   # what a run does: hosts appear, steps are appended
        i = 0
        while not stop.is_set():
            i += 1
            hr = r.hosts.setdefault(f"h{i % 300}", HostResult(f"h{i % 300}", "pending"))
            hr.steps.append(StepResult(len(hr.steps) + 1, "s", "true", "passed"))
            if i % 900 == 0:
                r.hosts.clear()

    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)   # switch threads often
    t = threading.Thread(target=fill)
    t.start()
    try:
        for _ in range(100):
            r.to_dict()
            assert isinstance(r.failed_hosts, list)
    finally:
        stop.set()
        t.join()
        sys.setswitchinterval(old)


def test_the_lock_is_per_workflow_name_in_the_state_directory(tmp_path, monkeypatch):
    monkeypatch.setenv("PHONEHOME_JUMP_STATE", str(tmp_path / "state"))
    a = Workflow.from_text(GOOD, str(tmp_path / "a" / "wf.yaml"))
    copy = Workflow.from_text(GOOD, str(tmp_path / "b" / "copy.yaml"))     # same name
    other = Workflow.from_text(GOOD.replace("name: demo", "name: other"), str(tmp_path / "o.yaml"))
    odd = Workflow.from_text(GOOD.replace("name: demo", "name: 'sl1 / nightly'"), "x.yaml")
    assert WorkflowLock(a).path == tmp_path / "state" / "locks" / "demo.lock"
    assert WorkflowLock(odd).path.name.startswith("sl1___nightly-")
    with WorkflowLock(a).acquire("cron"):
        with pytest.raises(WorkflowLockedError, match="cron"):
            WorkflowLock(copy).acquire("MCP")
        WorkflowLock(other).acquire().release()
    # another state directory is another lock
    monkeypatch.setenv("PHONEHOME_JUMP_STATE", str(tmp_path / "elsewhere"))
    with WorkflowLock(a).acquire("cron"):
        monkeypatch.setenv("PHONEHOME_JUMP_STATE", str(tmp_path / "state"))
        WorkflowLock(copy).acquire("MCP").release()


@pytest.mark.parametrize("state_mode,locks_mode,file_mode", [
    (0o700, 0o700, 0o600),            # private state directory: private locks
    (0o770, 0o770, 0o660),            # the group may use it: so it may use the locks
    (0o2770, 0o2770, 0o660),          # setgid kept, so lock files get the shared group
])
def test_lock_files_follow_the_state_directorys_group_access(tmp_path, monkeypatch, state_mode,
                                                             locks_mode, file_mode):
    import os
    import stat as st

    state = tmp_path / "state"
    state.mkdir()
    os.chmod(state, state_mode)
    monkeypatch.setenv("PHONEHOME_JUMP_STATE", str(state))
    old = os.umask(0o077)             # the group bits are set past a strict umask
    try:
        lock = WorkflowLock(Workflow.from_text(GOOD, "wf.yaml")).acquire()
        lock.release()
    finally:
        os.umask(old)
    assert st.S_IMODE(lock.path.parent.stat().st_mode) == locks_mode
    assert st.S_IMODE(lock.path.stat().st_mode) == file_mode


def test_the_lock_never_follows_a_symlink(tmp_path):
    victim = tmp_path / "victim"
    victim.write_text("keep me")
    wf = Workflow.from_text(GOOD, "wf.yaml")
    (tmp_path / "demo.lock").symlink_to(victim)
    with pytest.raises(WorkflowLockedError, match="cannot create the lock file"):
        WorkflowLock(wf, tmp_path).acquire()
    assert victim.read_text() == "keep me"
