"""`make demo`: the main job, end to end, on the bundled sshd lab.

Brings up the lab (local → jump1 → jump2 → targets, real OpenSSH in network namespaces),
starts `phonehome-jump serve` as an MCP server over stdio, and drives it with the MCP SDK's
client the way Claude would: find a host, open a session through both jumps, keep state
across commands, answer a prompt, follow a long command, page a large output, close. Prints
the transcript, then tears the lab down.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import anyio
from mcp import Client, StdioServerParameters

sys.path.insert(0, str(Path(__file__).parent))
from sshlab import Lab  # noqa: E402

CLI = str(Path(sys.executable).parent / "phonehome-jump")


def say(text: str) -> None:
    print(f"\n\033[1m## {text}\033[0m" if sys.stdout.isatty() else f"\n## {text}", flush=True)


async def call(client: Client, tool: str, show: tuple[str, ...] = (), **args: Any) -> dict[str, Any]:
    """Call a tool, print the call and the chosen result fields (the transcript)."""
    print(f"→ {tool}({', '.join(f'{k}={v!r}' for k, v in args.items())})")
    r = await client.call_tool(tool, args)
    if r.is_error:
        print(f"← error: {r.content[0].text}")
        return {}
    data = r.structured_content or {}
    fields = {k: data[k] for k in show if k in data} if show else data
    for key, value in fields.items():
        text = value if isinstance(value, str) else json.dumps(value)
        if key == "output" and "\n" in text.rstrip("\n"):
            print("← output:\n" + "\n".join("    " + line for line in text.rstrip("\n").split("\n")))
        else:
            print(f"← {key}: {text!r}" if isinstance(value, str) else f"← {key}: {text}")
    return data


async def drive(lab: Lab) -> None:
    params = StdioServerParameters(command=CLI, args=["--inventory", str(lab.inventory), "serve"],
                                   env=dict(os.environ))
    async with Client(params) as client:
        tools = await client.list_tools()
        print("tools:", ", ".join(t.name for t in tools.tools))
        say("find the host and its chain")
        await call(client, "inventory_show", ("name", "chain", "auth"), host="lab-target1")
        say("a persistent session through jump1 → jump2")
        s = await call(client, "ssh_session_open", ("session_id", "chain", "cwd"), host="lab-target1")
        sid = s["session_id"]
        out = ("output", "exit_status", "cwd", "running")
        for command in ("cd /tmp", "pwd", "export GREETING=persisted", "echo $GREETING",
                        "ls /nonexistent"):
            await call(client, "ssh_session_command", out, session_id=sid, command=command)
        say("an interactive prompt, answered")
        await call(client, "ssh_session_command", out + ("awaiting_input",), session_id=sid,
                   command="read -p 'Proceed? [y/n] ' a; echo answer=$a")
        await call(client, "ssh_session_send", (), session_id=sid, text="y")
        await call(client, "ssh_session_read", out, session_id=sid, wait=5)
        say("a long command: returns running, then the rest")
        await call(client, "ssh_session_command", out, session_id=sid,
                   command="for i in 1 2 3; do echo tick $i; sleep 1; done", wait=1.5)
        await call(client, "ssh_session_read", out, session_id=sid, wait=10)
        say("a large output: head and tail, then paged")
        r = await call(client, "ssh_session_command", ("total", "truncated", "omitted", "note"),
                       session_id=sid, command="seq 1 20000")
        if r.get("omitted"):
            await call(client, "ssh_session_read", ("offset", "next_offset", "total"), session_id=sid,
                       offset=r["omitted"][0])
        await call(client, "ssh_session_list", ())
        await call(client, "ssh_session_close", (), session_id=sid)


def main() -> int:
    lab = Lab()
    say("bringing up the lab: local → jump1 → jump2 → target1..3 (real OpenSSH in network namespaces)")
    try:
        lab.up()
    except (PermissionError, FileNotFoundError) as exc:   # not root, or no sshd: say so, no traceback
        print(f"make demo: {exc}; run it as root (e.g. sudo make demo)", file=sys.stderr)
        return 1
    os.environ.update(lab.env)
    os.environ["PHONEHOME_JUMP_INVENTORY"] = str(lab.inventory)
    try:
        say("the CLI: the inventory and a one-shot command through both jumps")
        for args in (["inventory", "list"], ["run", "lab-target1", "--", "echo I am $(id -un) at $(hostname -I)"]):
            print("$ phonehome-jump " + " ".join(args), flush=True)
            subprocess.run([CLI, *args], check=False)
        say("the MCP server (`phonehome-jump serve`, stdio) driven by an MCP client, as Claude would")
        anyio.run(drive, lab)
        say("a scheduled runbook: workflows/lab-health.yaml on every lab target in parallel")
        args = ["workflow", "run", str(Path(__file__).resolve().parents[2] / "workflows" / "lab-health.yaml")]
        print("$ phonehome-jump " + " ".join(args), flush=True)
        subprocess.run([CLI, *args], check=False)
    finally:
        say("tearing the lab down")
        lab.down()
    return 0


if __name__ == "__main__":
    sys.exit(main())
