"""`make demo`: bring up the sshd lab and work on a target through two jump hosts.

Shows the CLI (inventory, one-shot run) and a persistent session through the core API
(cd/export persisting, an interactive prompt answered, a long command that keeps running),
then tears the lab down.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from sshlab import Lab  # noqa: E402

from phonehome_jump.inventory import Inventory  # noqa: E402
from phonehome_jump.manager import SessionManager  # noqa: E402

CLI = str(Path(sys.executable).parent / "phonehome-jump")


def say(text: str) -> None:
    print(f"\n\033[1m## {text}\033[0m" if sys.stdout.isatty() else f"\n## {text}", flush=True)


def cli(*args: str) -> None:
    print("$ phonehome-jump " + " ".join(args), flush=True)
    subprocess.run([CLI, *args], check=False)


def main() -> int:
    lab = Lab()
    say("bringing up the lab: local → jump1 → jump2 → target1..3 (real OpenSSH in network namespaces)")
    lab.up()
    os.environ.update(lab.env)
    os.environ["PHONEHOME_JUMP_INVENTORY"] = str(lab.inventory)
    try:
        say("the inventory, and the resolved chain of one host (secrets shown as references)")
        cli("inventory", "list")
        cli("inventory", "show", "lab-target1")
        say("one-shot command through both jumps; the exit status comes back")
        cli("run", "lab-target1", "--", "echo I am $(id -un) at $(hostname -I)")
        say("a persistent session through the core API")
        with SessionManager(Inventory.load(lab.inventory)) as manager:
            t0 = time.perf_counter()
            info = manager.open("lab-target1")
            print(f"opened {info.id} to {info.host} via {' → '.join(info.chain)} "
                  f"in {(time.perf_counter() - t0) * 1000:.0f} ms, cwd {info.cwd}")
            for command in ("cd /tmp", "pwd", "export GREETING=persisted", "echo $GREETING",
                            "ls /nonexistent"):
                r = manager.command(info.id, command)
                print(f"$ {command}\n{r.output}[exit {r.exit_status}, cwd {r.cwd}, "
                      f"{r.duration * 1000:.1f} ms]")
            r = manager.command(info.id, "read -p 'Proceed? [y/n] ' a; echo answer=$a")
            print(f"$ read -p ...\n{r.output}   [running={r.running}, awaiting_input={r.awaiting_input}]")
            manager.send(info.id, "y")
            r = manager.read(info.id, wait=5)
            print(f"> y\n{r.output}[exit {r.exit_status}]")
            r = manager.command(info.id, "for i in 1 2 3; do echo tick $i; sleep 0.5; done", wait=0.6)
            print(f"$ for ... sleep\n{r.output}[running={r.running} after the 0.6 s wait]")
            r = manager.read(info.id, wait=5)
            print(f"{r.output}[finished: exit {r.exit_status}]")
            print(f"sessions: {[(s.id, s.host, s.state) for s in manager.list()]}")
    finally:
        say("tearing the lab down")
        lab.down()
    return 0


if __name__ == "__main__":
    sys.exit(main())
