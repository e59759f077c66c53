"""Emulated network devices for the lab: fakenos SSH servers inside a target namespace.

Each device is one of fakenos's platforms (its command outputs, its paramiko SSH server and
CLI shell) with the prompts and modes the real OS shows, which fakenos's platform files keep
generic (``{base_prompt}>`` everywhere): ``<huawei-r1>`` / ``[huawei-r1]`` user and system
views, Junos ``user@host> `` with ``[edit]`` and the virtual chassis' ``{master:0}`` context
lines, IOS enable behind a ``Password:`` prompt, configuration modes and their commands, each
platform's error text for an unknown command, and a ``show running-config`` whose banner
holds lines that look exactly like the prompt.

``expected(name, command)`` gives what the device writes for a command (the lines fakenos's
shell writes, CR/LF as LF), for byte-for-byte comparisons. Run as a script (``serve``) inside
a namespace by :meth:`sshlab.Lab.start_devices`; the lab's ``down`` kills it with the namespace.

What fakenos cannot emulate (a pager prompt, slow output) ``scripted.py`` does.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import signal
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

BASE_PORT = 6001
USER = "phjdev"


@dataclass(frozen=True)
class Device:
    name: str              # inventory host name
    platform: str          # fakenos platform whose commands it serves
    device_type: str       # netmiko device_type the inventory gives it
    base: str              # base prompt (hostname, or user@hostname on Junos)
    port: int
    prompts: dict[str, str]          # mode -> prompt as the device prints it
    unknown: str                     # what it prints for an unknown command
    show: tuple[str, ...]            # show commands with fixed output, for exact comparisons
    parse: tuple[str, ...] = ()      # commands ntc-templates has a template for
    enable_secret: bool = False      # enable asks for Password:


_IOS_ERR = "        ^\n% Invalid input detected at '^' marker.\n"

DEVICES: dict[str, Device] = {d.name: d for d in (
    Device("lab-ios", "cisco_ios", "cisco_ios", "ios-r1", BASE_PORT,
           {"exec": "{b}>", "enable": "{b}#", "config": "{b}(config)#", "config-if": "{b}(config-if)#"},
           _IOS_ERR,
           ("show version", "show ip interface brief", "show ip route", "show interfaces",
            "show vlan", "show cdp neighbors", "show inventory", "show ip bgp summary"),
           parse=("show version", "show ip interface brief"), enable_secret=True),
    Device("lab-eos", "arista_eos", "arista_eos", "eos-s1", BASE_PORT + 1,
           {"exec": "{b}>", "enable": "{b}#", "config": "{b}(config)#", "config-if": "{b}(config-if-Et1)#"},
           "% Invalid input\n",
           ("show version", "show ip interface brief", "show interfaces", "show vlan",
            "show ip route", "show lldp neighbors", "show mlag", "show inventory"),
           parse=("show version", "show ip interface brief")),
    Device("lab-junos", "juniper_junos", "juniper_junos", "labuser@junos-r1", BASE_PORT + 2,
           {"exec": "{b}> ", "config": "\n[edit]\n{b}# ", "config-if": "\n[edit interfaces ge-0/0/0]\n{b}# "},
           "                 ^\nunknown command.\n",
           ("show version", "show system uptime", "show interfaces", "show chassis firmware",
            "show chassis hardware", "show lldp neighbors", "show vlans", "show arp no-resolve"),
           parse=("show version",)),
    Device("lab-junos-vc", "juniper_junos", "juniper_junos", "labuser@junos-vc", BASE_PORT + 3,
           {"exec": "\n{{master:0}}\n{b}> ", "config": "\n{{master:0}}[edit]\n{b}# ",
            "config-if": "\n{{master:0}}[edit interfaces ge-0/0/0]\n{b}# "},
           "                 ^\nunknown command.\n",
           ("show version", "show system uptime", "show interfaces", "show chassis firmware",
            "show lldp neighbors", "show ethernet-switching table"),
           parse=("show version",)),
    Device("lab-vrp", "huawei_vrp", "huawei", "huawei-r1", BASE_PORT + 4,
           {"exec": "<{b}>", "config": "[{b}]", "config-if": "[{b}-GigabitEthernet0/0/1]"},
           "                  ^\nError: Unrecognized command found at '^' position.\n",
           ("display version", "display interface brief", "display vlan", "display arp all",
            "display lldp neighbor", "display ip vpn-instance", "display mac-address"),
           parse=("display version", "display interface brief")),
    Device("lab-comware", "hp_comware", "hp_comware", "comware-s1", BASE_PORT + 5,
           {"exec": "<{b}>", "config": "[{b}]", "config-if": "[{b}-GigabitEthernet1/0/1]"},
           "                  ^\n % Unrecognized command found at '^' position.\n",
           ("display interface brief", "display vlan all", "display arp", "display clock",
            "display ip routing-table", "display device manuinfo", "display mac-address"),
           parse=("display interface brief",)),
    Device("lab-nxos", "cisco_nxos", "cisco_nxos", "nxos-s1", BASE_PORT + 6,
           {"exec": "{b}#", "config": "{b}(config)#", "config-if": "{b}(config-if)#"},
           "                ^\n% Invalid command at '^' marker.\n",
           ("show version", "show ip interface brief", "show interface brief", "show vlan",
            "show ip route", "show cdp neighbors", "show inventory", "show vpc"),
           parse=("show version", "show ip interface brief")),
)}


# Where fakenos's sample output does not match the ntc-templates template (its EOS sample
# lacks the "Arista" model line; its Junos one indents "Hostname:"), a real device's shape.
OUTPUTS: dict[str, dict[str, str]] = {
    "lab-eos": {"show version": """Arista vEOS
Hardware version:
Serial number:
System MAC address:  5254.0012.3456

Software image version: 4.21.1.1F
Architecture:           i386
Internal build version: 4.21.1.1F-10146868.42111F
Internal build ID:      6f5fe7f1-2f4d-4b3c-a1d5-5e3b2b1d3c4f

Uptime:                 0 weeks, 1 days, 2 hours and 3 minutes
Total memory:           2017324 kB
Free memory:            1198700 kB"""},
    "lab-junos": {"show version": """Hostname: junos-r1
Model: mx480
Junos: 18.2R3-S3.11
JUNOS OS Kernel 64-bit  [20191216.e8f9b29_builder_stable_11]
JUNOS OS libs [20191216.e8f9b29_builder_stable_11]"""},
    "lab-junos-vc": {"show version": """fpc0:
--------------------------------------------------------------------------
Hostname: junos-vc
Model: ex4300-48t
Junos: 18.4R2-S2.3
JUNOS EX  Software Suite [18.4R2-S2.3]

fpc1:
--------------------------------------------------------------------------
Hostname: junos-vc
Model: ex4300-48t
Junos: 18.4R2-S2.3
JUNOS EX  Software Suite [18.4R2-S2.3]"""},
}


def _running_config(d: Device) -> str:
    """A configuration whose banner holds lines that look exactly like the device's prompts."""
    prompts = [p.replace("{b}", d.base).replace("{{", "{").replace("}}", "}").strip().splitlines()[-1]
               for p in d.prompts.values()]
    lines = ["Building configuration...", "", "Current configuration : 1337 bytes", "!",
             f"hostname {d.base}", "!", "banner motd ^C"]
    lines += prompts + [prompts[0], "", prompts[0] + " show version", "^C", "!",
                        "interface GigabitEthernet0/1", " description uplink", "!", "end"]
    return "\n".join(lines)


def _mode_commands(d: Device) -> dict[str, dict[str, Any]]:
    """The commands that move between modes, and a few configuration lines, per family."""
    P = {m: p.replace("{b}", "{base_prompt}") for m, p in d.prompts.items()}
    cfg = [P["config"], P["config-if"]]
    cmds: dict[str, dict[str, Any]] = {}
    if d.platform in ("cisco_ios", "arista_eos", "cisco_nxos"):
        top = P["enable"] if "enable" in P else P["exec"]
        if "enable" in P:
            if d.enable_secret:
                cmds["enable"] = {"output": None, "new_prompt": "Password: ", "prompt": P["exec"]}
                cmds[os.environ.get("PHJ_LAB_SUDO_PASSWORD", "enable-secret")] = {
                    "output": None, "new_prompt": P["enable"], "prompt": "Password: "}
            else:
                cmds["enable"] = {"output": None, "new_prompt": P["enable"], "prompt": P["exec"]}
            cmds["disable"] = {"output": None, "new_prompt": P["exec"], "prompt": P["enable"]}
        cmds["configure terminal"] = {
            "output": "Enter configuration commands, one per line.  End with CNTL/Z.",
            "new_prompt": P["config"], "prompt": top}
        cmds["interface GigabitEthernet0/1"] = {"output": None, "new_prompt": P["config-if"], "prompt": cfg}
        cmds["description uplink"] = {"output": None, "prompt": P["config-if"]}
        cmds["ip address 192.0.2.1 255.255.255.0"] = {"output": None, "prompt": P["config-if"]}
        cmds["exit"] = {"output": None, "new_prompt": P["config"], "prompt": P["config-if"]}
        cmds["end"] = {"output": None, "new_prompt": top, "prompt": cfg}
        cmds["show running-config"] = {"output": _running_config(d), "prompt": [P["exec"], top]}
    elif d.platform == "juniper_junos":
        cmds["configure"] = {"output": "Entering configuration mode", "new_prompt": P["config"],
                             "prompt": P["exec"]}
        cmds["set system host-name junos-r1"] = {"output": None, "prompt": cfg}
        cmds["set interfaces ge-0/0/0 description uplink"] = {"output": None, "prompt": cfg}
        cmds["edit interfaces ge-0/0/0"] = {"output": None, "new_prompt": P["config-if"], "prompt": cfg}
        cmds["show | compare"] = {"output": "[edit interfaces ge-0/0/0]\n+   description uplink;",
                                  "prompt": cfg}
        cmds["commit"] = {"output": "commit complete", "prompt": cfg}
        cmds["rollback 0"] = {"output": "load complete", "prompt": cfg}
        cmds["exit configuration-mode"] = {"output": "Exiting configuration mode",
                                           "new_prompt": P["exec"], "prompt": cfg}
        cmds["show configuration"] = {"output": _running_config(d), "prompt": [P["exec"]]}
    else:   # huawei_vrp, hp_comware: user view <x>, system view [x]
        cmds["system-view"] = {"output": "Enter system view, return user view with Ctrl+Z.",
                               "new_prompt": P["config"], "prompt": P["exec"]}
        cmds["interface GigabitEthernet0/0/1"] = {"output": None, "new_prompt": P["config-if"], "prompt": cfg}
        cmds["description uplink"] = {"output": None, "prompt": P["config-if"]}
        cmds["quit"] = {"output": None, "new_prompt": P["config"], "prompt": P["config-if"]}
        cmds["return"] = {"output": None, "new_prompt": P["exec"], "prompt": cfg}
        cmds["display current-configuration"] = {"output": _running_config(d), "prompt": [P["exec"]]}
    return cmds


def build_nos(d: Device) -> Any:
    """fakenos's platform (commands and outputs), with the real prompts and modes."""
    from fakenos.core.nos import Nos
    from fakenos.plugins.nos import nos_plugins

    nos = Nos(filename=list(nos_plugins[d.platform]))
    P = {m: p.replace("{b}", "{base_prompt}") for m, p in d.prompts.items()}
    shows = [P["exec"]] + ([P["enable"]] if "enable" in P else [])
    commands: dict[str, Any] = {}
    for name, data in nos.commands.items():
        data = dict(data)
        if name in ("enable",):
            continue
        data["prompt"] = shows
        data.pop("new_prompt", None)
        commands[name] = data
    commands.update(_mode_commands(d))
    for name, text in OUTPUTS.get(d.name, {}).items():
        commands[name] = {"output": text, "help": name, "prompt": shows}
    commands["_default_"] = {"output": d.unknown.rstrip("\n"), "help": "unknown command"}
    nos.name = "lab_" + d.name.replace("-", "_")
    nos.commands = commands
    nos.initial_prompt = P["exec"]
    return nos


def expected(name: str, command: str) -> str:
    """What the device writes for ``command`` in its first mode: fakenos's lines, each + LF."""
    d = DEVICES[name]
    nos = _nos_cache.get(name) or _nos_cache.setdefault(name, build_nos(d))
    data = nos.commands.get(command, nos.commands["_default_"])
    out = data.get("output")
    if callable(out):
        prompt = d.prompts["exec"].replace("{b}", d.base)
        out = out(nos.device, base_prompt=d.base, current_prompt=prompt, command=command)
        if isinstance(out, dict):
            out = out["output"]
    if out is None or out is True:
        return ""
    out = str(out).replace("{base_prompt}", d.base)
    return "".join(line + "\n" for line in out.splitlines())


_nos_cache: dict[str, Any] = {}


SCRIPTED = ("lab-paged", BASE_PORT + 20)    # scripted.py: pager, slow output, split prompt

# Every other fakenos platform, as fakenos ships it ("{base_prompt}>" prompts), for the generic
# rule and the families on prompts their modules do not expect. Left out: linux (sentinel
# framing) and six that netmiko itself cannot log in to or prepare on fakenos (auth, login
# pattern or closed socket in ConnectHandler, before phonehome-jump frames anything).
NETMIKO_CANNOT = ("dell_powerconnect", "paloalto_panos", "juniper_screenos", "mikrotik_routeros",
                  "fortinet", "yamaha")
STOCK_PORT = BASE_PORT + 100
_PREP = ("terminal", "screen", "set cli", "enable", "exit", "ex", "disable", "paging", "no page",
         "config", "console")


def stock_platforms() -> list[str]:
    from fakenos.core.nos import available_platforms
    return [p for p in available_platforms if p != "linux" and p not in NETMIKO_CANNOT]


def stock_base(platform: str) -> str:
    return platform.replace("_", "-")


def stock_commands(platform: str) -> list[str]:
    """Up to four commands with fixed, non-empty output that run at the first prompt."""
    nos = _stock_nos(platform)
    out = []
    for name, data in nos.commands.items():
        prompt = data.get("prompt")
        prompts = prompt if isinstance(prompt, list) else [prompt]
        if (isinstance(data.get("output"), str) and data["output"].strip()
                and not name.startswith(_PREP) and not name.startswith("_")
                and (prompt is None or nos.initial_prompt in prompts)):
            out.append(name)
    return out[:4]


def stock_expected(platform: str, command: str) -> str:
    out = _stock_nos(platform).commands[command]["output"].replace("{base_prompt}", stock_base(platform))
    return "".join(line + "\n" for line in out.splitlines())


def _stock_nos(platform: str) -> Any:
    from fakenos.core.nos import Nos
    from fakenos.plugins.nos import nos_plugins
    key = "stock:" + platform
    if key not in _nos_cache:
        _nos_cache[key] = Nos(filename=list(nos_plugins[platform]))
    return _nos_cache[key]


def ports() -> list[int]:
    return ([d.port for d in DEVICES.values()] + [SCRIPTED[1]]
            + [STOCK_PORT + i for i in range(len(stock_platforms()))])


def inventory_hosts(addr: str) -> dict[str, dict[str, Any]]:
    hosts = {d.name: {"host": addr, "port": d.port, "device_type": d.device_type}
             for d in DEVICES.values()}
    hosts[SCRIPTED[0]] = {"host": addr, "port": SCRIPTED[1], "device_type": "cisco_ios"}
    for i, p in enumerate(stock_platforms()):
        hosts["stock-" + stock_base(p)] = {"host": addr, "port": STOCK_PORT + i, "device_type": p}
    return hosts


def serve(addr: str, password: str, key_file: str, ready: Path) -> None:
    """Run every device on ``addr`` until SIGTERM (inside the target's namespace)."""
    from fakenos import FakeNOS

    plugins = [build_nos(d) for d in DEVICES.values()]
    inventory = {
        "default": {"username": USER, "password": password,
                    "server": {"plugin": "ParamikoSshServer",
                               "configuration": {"address": addr, "timeout": 1,
                                                 "ssh_key_file": key_file,
                                                 "ssh_banner": "lab device"}}},
        "hosts": {d.name: {"port": d.port, "nos": {"plugin": p.name},
                           "shell": {"plugin": "CMDShell",
                                     "configuration": {"base_prompt": d.base}}}
                  for d, p in zip(DEVICES.values(), plugins)},
    }
    net = FakeNOS(inventory=copy.deepcopy(inventory), plugins=plugins)
    net.start()
    import scripted
    scripted.serve(addr, SCRIPTED[1], key_file, USER, password)
    stock = FakeNOS(inventory={
        "default": inventory["default"],
        "hosts": {"stock-" + stock_base(p): {
            "port": STOCK_PORT + i, "platform": p,
            "shell": {"plugin": "CMDShell", "configuration": {"base_prompt": stock_base(p)}}}
            for i, p in enumerate(stock_platforms())}})
    stock.start()
    ready.write_text(json.dumps(sorted(net.hosts)))
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    stop.wait()
    net.stop()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("action", choices=["serve"])
    ap.add_argument("--addr", required=True)
    ap.add_argument("--key", required=True)
    ap.add_argument("--ready", required=True, type=Path)
    a = ap.parse_args(argv)
    serve(a.addr, os.environ["PHJ_LAB_PASSWORD"], a.key, a.ready)
    return 0


if __name__ == "__main__":
    sys.exit(main())
