"""Network devices: fakenos's emulated OSes (and a scripted device) behind both jumps.

Every result is compared byte for byte with what the device wrote for that command (fakenos's
output lines, CR/LF as LF): exact output is also the proof that no result holds another
command's output, an echo, a prompt or a context line.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parents[1] / "lab"))
import devices as lab_devices  # noqa: E402
import scripted  # noqa: E402

from phonehome_jump.errors import SessionError  # noqa: E402
from phonehome_jump.manager import SessionManager  # noqa: E402
from phonehome_jump.mcp_server import build_server  # noqa: E402

DEVICES = list(lab_devices.DEVICES)
SCRIPT = Path(sys.executable).parent / "phonehome-jump"
TOP = {"exec", "enable", "user-view"}    # the modes a session may start in


def expected(name: str, command: str) -> str:
    return lab_devices.expected(name, command)


def whole(m: SessionManager, sid: str, r) -> str:
    """The command's whole output (past the result's head/tail cap)."""
    return m.session(sid).output_text() if r.truncated else r.output


def exact(m: SessionManager, sid: str, name: str, command: str) -> None:
    r = m.command(sid, command, wait=30)
    assert not r.running, (name, command)
    assert whole(m, sid, r) == expected(name, command), (name, command, r.output[:400])
    assert not r.error_detected and r.error is None, (name, command, r.error)
    assert r.notice is None, (name, command, r.notice)
    assert r.mode in TOP, (name, command, r.mode)


def config_text(name: str) -> str:
    return {"juniper_junos": "show configuration", "huawei_vrp": "display current-configuration",
            "hp_comware": "display current-configuration"}.get(
        lab_devices.DEVICES[name].platform, "show running-config")


CONFIG = {"cisco_ios": ["interface GigabitEthernet0/1", "description uplink"],
          "arista_eos": ["interface GigabitEthernet0/1", "description uplink"],
          "cisco_nxos": ["interface GigabitEthernet0/1", "description uplink"],
          "juniper_junos": ["set interfaces ge-0/0/0 description uplink", "show | compare"],
          "huawei_vrp": ["interface GigabitEthernet0/0/1", "description uplink"],
          "hp_comware": ["interface GigabitEthernet0/0/1", "description uplink"]}


# ----------------------------------------------------------------------------- exact output

@pytest.mark.parametrize("name", DEVICES)
def test_show_commands_are_byte_exact(devices, name):
    d = lab_devices.DEVICES[name]
    s = devices.open(name)
    assert s.framing == "native" and s.chain == ["jump1", "jump2"]
    for command in d.show:
        exact(devices, s.id, name, command)


@pytest.mark.parametrize("name", DEVICES)
def test_unknown_command_is_an_error_detected(devices, name):
    s = devices.open(name)
    r = devices.command(s.id, "show no-such-thing here", wait=30)
    assert r.output == lab_devices.DEVICES[name].unknown
    assert r.error_detected and r.error and r.error in r.output
    assert r.exit_status is None and not r.running
    exact(devices, s.id, name, lab_devices.DEVICES[name].show[0])   # and the next is clean


@pytest.mark.parametrize("name", DEVICES)
def test_first_command_of_fresh_sessions(devices, name):
    command = lab_devices.DEVICES[name].show[0]
    for _ in range(5):
        s = devices.open(name)
        exact(devices, s.id, name, command)
        devices.close(s.id)


@pytest.mark.parametrize("name", DEVICES)
def test_fifty_commands_without_desync(devices, name):
    d = lab_devices.DEVICES[name]
    cycle = list(d.show) + [config_text(name), "show no-such-thing"]
    s = devices.open(name)
    for i in range(50):
        command = cycle[i % len(cycle)]
        r = devices.command(s.id, command, wait=30)
        assert not r.running and r.notice is None, (i, command)
        assert whole(devices, s.id, r) == expected(name, command), (i, command, r.output[:300])
        assert r.error_detected == (command == "show no-such-thing"), (i, command)


@pytest.mark.parametrize("name", DEVICES)
def test_lines_that_look_like_the_prompt_do_not_end_a_command(devices, name):
    d = lab_devices.DEVICES[name]
    command = config_text(name)
    text = expected(name, command)
    prompt_line = d.prompts["exec"].replace("{b}", d.base).replace("{{", "{").replace("}}", "}")
    assert prompt_line.strip().splitlines()[-1] + "\n" in text     # the banner holds the prompt
    s = devices.open(name)
    for _ in range(3):
        r = devices.command(s.id, command, wait=30)
        assert whole(devices, s.id, r) == text and r.notice is None
        exact(devices, s.id, name, d.show[1])


# ----------------------------------------------------------------------------- modes

@pytest.mark.parametrize("name", DEVICES)
def test_config_mode_round_trip(devices, name):
    d = lab_devices.DEVICES[name]
    p = d.platform
    s = devices.open(name)
    start = devices.list()[0].mode
    if "enable" in d.prompts and start == "exec":
        r = devices.enable(s.id)
        assert r.mode == "enable" and not r.error_detected
        assert os.environ["PHJ_LAB_SUDO_PASSWORD"] not in r.output       # masked
        start = "enable"
    top = start
    enter = {"juniper_junos": "configure", "huawei_vrp": "system-view",
             "hp_comware": "system-view"}.get(p, "configure terminal")
    leave = {"juniper_junos": "exit configuration-mode", "huawei_vrp": "return",
             "hp_comware": "return"}.get(p, "end")
    r = devices.command(s.id, enter)
    assert r.mode in ("config", "system-view") and not r.error_detected
    assert r.output == expected(name, enter)             # no [edit] / {master:0} in it
    r = devices.command(s.id, leave)
    assert r.mode == top and r.output == expected(name, leave)
    # the helper: lines in configuration mode, back to where it started
    c = devices.config(s.id, CONFIG[p], commit=p == "juniper_junos")
    assert not c.error_detected and c.mode == top and [x.line for x in c.lines][:2] == CONFIG[p]
    assert all(x.error is None for x in c.lines)
    if p == "juniper_junos":
        assert c.committed and c.lines[1].output == "[edit interfaces ge-0/0/0]\n+   description uplink;\n"
        assert c.lines[2].output == "commit complete\n"
    # a rejected line: detected, the rest not sent, back at the top
    c = devices.config(s.id, [CONFIG[p][0], "bogus config line", CONFIG[p][1]])
    assert c.error_detected and c.error.startswith("bogus config line: ")
    assert c.not_sent == [CONFIG[p][1]] and c.mode == top
    assert c.rolled_back == (p == "juniper_junos")
    exact(devices, s.id, name, d.show[0])


def test_enable_without_a_secret_in_the_inventory_is_a_clear_error(device_lab, lab):
    text = device_lab.read_text().replace(', enable_secret: "env:PHJ_LAB_SUDO_PASSWORD"', "")
    inv = device_lab.with_name("no-secret.yaml")
    inv.write_text(text)
    from phonehome_jump.inventory import Inventory
    m = SessionManager(Inventory.load(inv))
    try:
        s = m.open("lab-ios")
        with pytest.raises(SessionError, match="enable secret and the inventory has none") as err:
            m.enable(s.id)
        assert "enable_secret" in err.value.hint
    finally:
        m.shutdown()


def test_multiline_command_is_refused_on_a_device(devices):
    s = devices.open("lab-ios")
    with pytest.raises(SessionError, match="one command line at a time"):
        devices.command(s.id, "show version\nshow clock")
    exact(devices, s.id, "lab-ios", "show version")          # nothing was sent


def test_exit_at_the_top_level_says_the_device_closed_the_session(devices):
    s = devices.open("lab-junos")
    r = devices.command(s.id, "exit", wait=20)
    assert not r.running
    assert devices.list()[0].state == "dead"
    assert "closed the session after 'exit'" in devices.list()[0].dead_reason


def test_config_helper_checks_the_policy_before_sending(device_lab):
    text = device_lab.read_text().replace(
        "  lab-ios: {", "  lab-ios: {policy: {deny: ['^no ']}, ")
    inv = device_lab.with_name("policy.yaml")
    inv.write_text(text)
    from phonehome_jump.errors import PolicyError
    from phonehome_jump.inventory import Inventory
    m = SessionManager(Inventory.load(inv))
    try:
        s = m.open("lab-ios")
        m.enable(s.id)
        with pytest.raises(PolicyError):
            m.config(s.id, ["interface GigabitEthernet0/1", "no shutdown"])
        assert m.list()[0].mode == "enable"                 # nothing was sent
    finally:
        m.shutdown()


# ----------------------------------------------------------------------------- parsing

@pytest.mark.parametrize("name", DEVICES)
def test_parse_show_version_and_interfaces(devices, name):
    d = lab_devices.DEVICES[name]
    s = devices.open(name)
    for command in d.parse:
        p = devices.parse(s.id, command)
        assert p.rows and p.result.output == expected(name, command)
        assert p.platform == {"huawei": "huawei_vrp"}.get(d.device_type, d.device_type)
    if "version" in d.parse[0]:
        row = devices.parse(s.id, d.parse[0]).rows[0]
        assert any(v for v in row.values())


def test_parse_without_a_template_is_a_clear_error(devices):
    s = devices.open("lab-ios")
    with pytest.raises(SessionError, match="no template for cisco_ios 'show running-config'"):
        devices.parse(s.id, "show running-config")


# ----------------------------------------------------------------------------- CLI and MCP

def cli(inventory: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PHONEHOME_JUMP_INVENTORY=str(inventory))
    return subprocess.run([str(SCRIPT), *argv], capture_output=True, text=True, env=env,
                          timeout=120, input="")


@pytest.mark.parametrize("name", DEVICES)
def test_cli_run_equals_the_api(device_lab, name):
    d = lab_devices.DEVICES[name]
    proc = cli(device_lab, "run", name, "--", d.show[0])
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == expected(name, d.show[0])
    proc = cli(device_lab, "run", name, "--", "show no-such-thing")
    assert proc.returncode == 1 and proc.stdout == d.unknown
    assert "the device reported an error" in proc.stderr and "Traceback" not in proc.stderr


def test_cli_shell_scripted_equals_the_api(device_lab):
    d = lab_devices.DEVICES["lab-eos"]
    env = dict(os.environ, PHONEHOME_JUMP_INVENTORY=str(device_lab))
    proc = subprocess.run([str(SCRIPT), "shell", "lab-eos"], input="\n".join(d.show[:3]) + "\n",
                          capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "".join(expected("lab-eos", c) for c in d.show[:3])


def test_cli_run_json_parse(device_lab):
    proc = cli(device_lab, "run", "--parse", "lab-ios", "--", "show ip interface brief")
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert data["output"] == expected("lab-ios", "show ip interface brief")
    assert data["error_detected"] is False and data["mode"] == "exec"
    assert {"interface", "ip_address", "status"} <= set(data["parsed"][0])


@pytest.fixture
def anyio_backend():
    return "asyncio"


@pytest.mark.anyio
async def test_mcp_enable_config_parse(device_lab):
    from mcp import Client
    server = build_server(device_lab)
    async with Client(server) as client:
        async def ok(tool, **args):
            r = await client.call_tool(tool, args)
            assert not r.is_error, r.content[0].text
            return r.structured_content
        s = await ok("ssh_session_open", host="lab-ios")
        sid = s["session_id"]
        assert s["framing"] == "native" and s["mode"] == "exec"
        r = await ok("ssh_session_command", session_id=sid, command="show version")
        assert r["output"] == expected("lab-ios", "show version") and r["mode"] == "exec"
        r = await ok("ssh_session_command", session_id=sid, command="show nonsense")
        assert r["error_detected"] and "% Invalid input" in r["error"]
        r = await ok("ssh_session_enable", session_id=sid)
        assert r["mode"] == "enable"
        r = await ok("ssh_session_command", session_id=sid, command="show running-config")
        assert r["output"] == expected("lab-ios", "show running-config")
        c = await ok("ssh_session_config", session_id=sid,
                     lines=["interface GigabitEthernet0/1", "descripton typo"])
        assert c["error_detected"] and c["error"].startswith("descripton typo") and c["mode"] == "enable"
        p = await ok("ssh_session_parse", session_id=sid, command="show ip interface brief")
        assert p["platform"] == "cisco_ios" and p["parsed"][0]["interface"]
        r = await client.call_tool("ssh_session_parse", {"session_id": sid, "command": "show running-config"})
        assert r.is_error and "no template for cisco_ios" in r.content[0].text


# ----------------------------------------------------------------------------- workflows

def test_workflow_parse_assert_capture_and_config(device_lab):
    from phonehome_jump.inventory import Inventory
    from phonehome_jump.workflow import Workflow, run_workflow
    wf = Workflow.from_text("""\
name: device-check
targets: {hosts: [lab-ios]}
steps:
  - run: show ip interface brief
    parse: true
    assert: {row: {interface: Ethernet0/0, status: up}, no_row: {status: '^bogus$'}}
    capture: {name: first, field: interface}
  - run: show version
    parse: true
    capture: {name: devname, field: hostname}
  - run: enable
    answer: [{prompt: 'Password:', send: 'env:PHJ_LAB_SUDO_PASSWORD'}]
  - run: |
      interface GigabitEthernet0/1
      description ${first} on ${devname}
    config: true
    on_fail: continue
  - run: show no-such-thing
    on_fail: continue
""")
    result = run_workflow(wf, Inventory.load(device_lab))
    steps = result.hosts["lab-ios"].steps
    assert [s.status for s in steps[:3]] == ["passed", "passed", "passed"], [s.message for s in steps]
    assert steps[0].captured == {"first": "Ethernet0/0"} and steps[0].parsed
    assert steps[1].captured == {"devname": "ios-r1"}
    # the config step's second line is not known to the device: detected, the step fails
    assert steps[3].status == "failed" and "description Ethernet0/0 on ios-r1" in steps[3].message
    assert steps[4].status == "failed" and "the device reported an error" in steps[4].message


# ----------------------------------------------------------------------------- scripted device

@pytest.mark.parametrize("command", ["show paged", "show slow", "show late", "show split"])
def test_scripted_device_pager_slow_output_and_split_prompt(devices, command):
    s = devices.open("lab-paged")
    r = devices.command(s.id, command, wait=30)
    assert not r.running and r.output == scripted.expected(command) and r.notice is None
    r = devices.command(s.id, "show paged", wait=30)
    assert r.output == scripted.expected("show paged")


def test_scripted_device_slow_output_returns_running_then_completes(devices):
    s = devices.open("lab-paged")
    r = devices.command(s.id, "show slow", wait=0.5)
    assert r.running
    parts = [r.output]
    while r.running:
        r = devices.read(s.id, wait=5)
        parts.append(r.output)
    assert "".join(parts) == scripted.expected("show slow")


# ----------------------------------------------------------------------------- every fakenos platform

@pytest.mark.parametrize("platform", lab_devices.stock_platforms())
def test_every_fakenos_platform_as_shipped_is_byte_exact(devices, platform):
    """fakenos's platforms with its own generic prompts: the families' modules and the generic
    rule must hold on prompts and device types nobody tuned them for."""
    s = devices.open("stock-" + lab_devices.stock_base(platform))
    commands = lab_devices.stock_commands(platform)
    assert commands
    for command in commands + commands[:1]:
        r = devices.command(s.id, command, wait=30)
        assert not r.running and r.notice is None, (platform, command)
        assert whole(devices, s.id, r) == lab_devices.stock_expected(platform, command), (platform, command)


def test_interactive_shell_is_the_devices_own_terminal(device_lab):
    """On a terminal the shell is the device's own (like ssh -t): its prompt, its echo and a
    command's output; ~. leaves. (The terminal goes straight to the device: its connection
    is not sent the pty `true` hops get, which a device takes for a command and which made
    the emulator's shell silent.)"""
    import pty
    import re
    import select
    import time
    master, slave = pty.openpty()
    env = dict(os.environ, PHONEHOME_JUMP_INVENTORY=str(device_lab))
    proc = subprocess.Popen([str(SCRIPT), "shell", "lab-eos"], stdin=slave, stdout=slave,
                            stderr=subprocess.PIPE, env=env)
    seen = ""

    def expect(pattern: str, timeout: float = 30) -> str:
        nonlocal seen
        start, deadline = len(seen), time.monotonic() + timeout
        while not (m := re.search(pattern, seen[start:])):
            remaining = deadline - time.monotonic()
            assert remaining > 0, f"no {pattern!r} in {seen[start:]!r}"
            if select.select([master], [], [], remaining)[0]:
                seen += os.read(master, 65536).decode("utf-8", "replace")
        return seen[start:][: m.end()]
    try:
        os.write(master, b"\r")
        expect(r"eos-s1> ?$")
        os.write(master, b"show version\r")
        out = expect(r"eos-s1> ?$")
        assert "show version" in out and "Arista vEOS" in out, out
        for ch in "show":                        # the device's own echo, key by key
            os.write(master, ch.encode())
            expect(re.escape(ch))
        os.write(master, b"\x15\r~.")           # drop the line; ssh's escape leaves, 255 like ssh
        assert proc.wait(timeout=30) == 255
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stderr.close()
        os.close(master)
        os.close(slave)
