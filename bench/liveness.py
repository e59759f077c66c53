"""How fast a silent drop is detected, per link, on the sshd lab (medians; not a test).

    PHJ_LAB_NET=N python bench/liveness.py [--runs 5] [--interval 1] [--count 3]

For each of jump1, jump2 and target1: open a session to lab-target1, run ``sleep 120`` with a
long wait, add an iptables DROP of every packet inside that node's namespace, and time from
the rule being in place to the waiting call's error that names the link. Prints a Markdown
table for the README ("Field reliability").
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "lab"))
from sshlab import Lab  # noqa: E402

from phonehome_jump.errors import SessionDeadError  # noqa: E402
from phonehome_jump.inventory import Inventory  # noqa: E402
from phonehome_jump.manager import SessionManager  # noqa: E402

BLAME = {"jump1": "hop 'jump1'", "jump2": "hop 'jump2'", "target1": "target 'lab-target1'"}


def once(lab: Lab, inv: Inventory, node: str) -> float:
    with SessionManager(inv) as m:
        sid = m.open("lab-target1").id
        box: dict = {}

        def wait() -> None:
            try:
                m.command(sid, "sleep 120", wait=100)
            except SessionDeadError as exc:
                box["error"], box["at"] = exc, time.monotonic()
        th = threading.Thread(target=wait, daemon=True)
        th.start()
        deadline = time.monotonic() + 5
        while not m.session(sid).running and time.monotonic() < deadline:
            time.sleep(0.01)
        lab.drop(node)
        t0 = time.monotonic()
        try:
            th.join(120)
        finally:
            lab.undrop(node)
        err = box.get("error")
        if err is None or BLAME[node] not in str(err):
            raise SystemExit(f"{node}: wrong or no error: {err}")
        return box["at"] - t0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--interval", type=int, default=1)
    ap.add_argument("--count", type=int, default=3)
    args = ap.parse_args()
    state = Path(os.environ.get("PHJ_LAB_STATE", tempfile.gettempdir())) / "liveness-bench"
    lab = Lab(state, n_targets=3).up()
    os.environ.update(lab.env)
    try:
        text = lab.inventory.read_text().replace(
            "  keepalive: 15\n", f"  keepalive: {args.interval}\n  keepalive_count: {args.count}\n")
        path = state / "bench-inv.yaml"
        path.write_text(text)
        inv = Inventory.load(path)
        limit = args.interval * args.count
        print(f"| silent drop of | detected after (median of {args.runs}) | limit (interval × count) |")
        print("|---|---|---|")
        for node in ("jump1", "jump2", "target1"):
            times = [once(lab, inv, node) for _ in range(args.runs)]
            print(f"| {node} | {statistics.median(times):.2f} s (max {max(times):.2f} s) "
                  f"| {limit:g} s |", flush=True)
    finally:
        lab.down()
    return 0


if __name__ == "__main__":
    sys.exit(main())
