"""Network devices: phonehome-jump vs netmiko ``send_command`` on the same emulated device.

A benchmark, not a test. It brings up the sshd lab with the fakenos devices of
``tests/lab/devices.py`` inside a target's namespace (behind jump1 → jump2), then per
platform times, in the same run and alternating in blocks, the round trip of one show
command through

* phonehome-jump: ``SessionManager.command()`` in an open session, and
* netmiko: ``send_command()`` on a ``ConnectHandler`` connected over the same jump chain
  (a ``direct-tcpip`` channel from the same jump2 transport),

and checks that both outputs are the device's output (netmiko strips the trailing newline).

    sudo .venv/bin/python bench/devices.py [--rounds 30] [--markdown]

Needs root. Lab number ``PHJ_LAB_NET`` (default 197), state ``$PHJ_LAB_STATE`` or
/tmp/phonehome-jump-lab-devbench.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("PHJ_LAB_NET", "197")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "lab"))
sys.path.insert(0, str(ROOT / "plugin"))

import devices  # noqa: E402
from sshlab import Lab  # noqa: E402

from phonehome_jump.chain import credentials, open_tunnel  # noqa: E402
from phonehome_jump.inventory import Inventory  # noqa: E402
from phonehome_jump.manager import SessionManager  # noqa: E402

BLOCK = 5


def netmiko_conn(m: SessionManager, name: str):
    from netmiko import ConnectHandler
    target = m.inventory.target(name)
    hops = m.pool.acquire(target.chain)
    ep = target.endpoint
    sock = open_tunnel(hops[-1].transport, ep, target.chain[-1])
    c = credentials(ep)
    conn = ConnectHandler(device_type=target.device_type, host=ep.host, port=ep.port, sock=sock,
                          username=c["username"], password=c["password"], ssh_strict=True,
                          system_host_keys=False, alt_host_keys=True,
                          alt_key_file=str(ep.known_hosts), fast_cli=True)
    return conn, hops


def median_ms(xs: list[float]) -> str:
    q = statistics.quantiles(xs, n=10)[-1] if len(xs) >= 10 else max(xs)
    return f"{statistics.median(xs) * 1000:.0f} ms (p90 {q * 1000:.0f}, n={len(xs)})"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--markdown", action="store_true")
    ap.add_argument("--only", help="comma-separated device names")
    a = ap.parse_args(argv)
    state = Path(os.environ.get("PHJ_LAB_STATE", "/tmp/phonehome-jump-lab-devbench"))
    lab = Lab(state / os.environ["PHJ_LAB_NET"], n_targets=3)
    lab.up()
    rows = []
    try:
        os.environ.update(lab.env)
        inv = Inventory.load(lab.start_devices())
        m = SessionManager(inv)
        names = a.only.split(",") if a.only else list(devices.DEVICES)
        for name in names:
            d = devices.DEVICES[name]
            command = d.show[0]
            want = devices.expected(name, command)
            sid = m.open(name).id
            conn, hops = netmiko_conn(m, name)
            ours: list[float] = []
            theirs: list[float] = []
            ours_ok = theirs_ok = 0
            failures: list[str] = []
            for i in range(a.rounds // BLOCK):
                for _ in range(BLOCK):
                    t = time.perf_counter()
                    r = m.command(sid, command, wait=30)
                    ours.append(time.perf_counter() - t)
                    ours_ok += r.output == want
                for _ in range(BLOCK):
                    t = time.perf_counter()
                    try:
                        out = conn.send_command(command, read_timeout=10)
                    except Exception as exc:   # netmiko lost the device's echo: count it, reconnect
                        failures.append(type(exc).__name__)
                        conn.disconnect()
                        m.pool.release(hops)
                        conn, hops = netmiko_conn(m, name)
                        continue
                    theirs.append(time.perf_counter() - t)
                    theirs_ok += out == want.rstrip("\n")
            conn.disconnect()
            m.pool.release(hops)
            m.close(sid)
            ratio = statistics.median(ours) / statistics.median(theirs)
            exact = f"{ours_ok}/{len(ours)} · {theirs_ok}/{len(theirs) + len(failures)}"
            if failures:
                exact += f" ({len(failures)} {failures[0]})"
            rows.append((name, d.device_type, command, median_ms(ours), median_ms(theirs),
                         f"{ratio:.2f}×", exact))
            print(f"{name}: phj {median_ms(ours)}, netmiko {median_ms(theirs)}, {ratio:.2f}×, "
                  f"exact (phj · netmiko) {exact}", file=sys.stderr, flush=True)
        m.shutdown()
    finally:
        lab.down()
    head = ("device", "device_type", "command", "phonehome-jump command()", "netmiko send_command()",
            "ratio", "exact outputs (phj · netmiko)")
    if a.markdown:
        print("| " + " | ".join(head) + " |")
        print("|" + "---|" * len(head))
        for row in rows:
            print("| " + " | ".join(f"`{c}`" if j == 2 else c for j, c in enumerate(row)) + " |")
    else:
        for row in rows:
            print("  ".join(row))
    return 0


if __name__ == "__main__":
    sys.exit(main())
