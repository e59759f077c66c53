"""Benchmark of the ssh-like command line: `phonehome-jump run` beside `ssh -J`, in one run.

Both start a process, dial jump1 → jump2 → target1 and run one command, as a script pays for
them. Rows: `true` (start, three logins, exit status), `cat` of 20 MB piped through stdin
(stdin forwarding and output streaming), 100 MB of stdin to `cat > /dev/null` (upload), and
`seq 1 2000000 | head -c10` (SIGPIPE: how fast an early-closed stdout ends the remote
command). Medians (p90, n). Needs root (the lab).

    sudo .venv/bin/python bench/cli_bench.py [--rounds N] [--markdown]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "lab"))
from sshlab import Lab  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench import OpenSSH  # noqa: E402

CLI = str(Path(sys.executable).parent / "phonehome-jump")


def timed(argv: list[str], *, input: bytes | None = None, shell: bool = False,
          env: dict[str, str]) -> float:
    t0 = time.perf_counter()
    proc = subprocess.run(argv if not shell else ["bash", "-c", argv[0]], input=input,
                          stdin=None if input is not None else subprocess.DEVNULL,
                          capture_output=True, env=env)
    elapsed = time.perf_counter() - t0
    if proc.returncode not in (0, 141) and not shell:
        raise SystemExit(f"failed ({proc.returncode}): {argv}: {proc.stderr[-500:]!r}")
    return elapsed


def cell(samples: list[float]) -> str:
    s = sorted(samples)
    p90 = s[min(len(s) - 1, int(round(0.9 * (len(s) - 1))))]
    return f"{statistics.median(s) * 1000:.0f} ms (p90 {p90 * 1000:.0f} ms, n={len(s)})"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--markdown", action="store_true")
    args = ap.parse_args()
    os.environ.setdefault("PHJ_LAB_NET", "197")
    lab = Lab(Path(os.environ.get("PHJ_LAB_STATE", "/tmp/phonehome-jump-lab-clibench"))
              / os.environ["PHJ_LAB_NET"], n_targets=1)
    lab.up()
    try:
        env = dict(os.environ, **lab.env, PHONEHOME_JUMP_INVENTORY=str(lab.inventory))
        with tempfile.TemporaryDirectory() as tmp:
            cfg = OpenSSH(lab, Path(tmp)).cfg     # the same ssh_config as bench.py's rows
            ssh = ["ssh", "-F", str(cfg), "target1"]
            phj = [CLI, "run", "lab-target1", "--"]
            data = os.urandom(20 << 20)
            upload = os.urandom(100 << 20)
            rows = []
            for label, kw_phj, kw_ssh in (
                    ("`true`", dict(argv=phj + ["true"]), dict(argv=ssh + ["true"])),
                    ("`cat` of 20 MB from stdin", dict(argv=phj + ["cat"], input=data),
                     dict(argv=ssh + ["cat"], input=data)),
                    ("`cat > /dev/null` of 100 MB from stdin (upload only)",
                     dict(argv=phj + ["cat > /dev/null"], input=upload),
                     dict(argv=ssh + ["cat > /dev/null"], input=upload)),
                    ("`seq 1 2000000 \\| head -c10` (SIGPIPE)",
                     dict(argv=[" ".join(phj) + " seq 1 2000000 | head -c10"], shell=True),
                     dict(argv=[" ".join(ssh) + " seq 1 2000000 | head -c10"], shell=True))):
                a, b = [], []
                for _ in range(args.rounds):          # alternating, so load hits both alike
                    a.append(timed(env=env, **kw_phj))
                    b.append(timed(env=env, **kw_ssh))
                rows.append((label, cell(a), cell(b)))
    finally:
        lab.down()
    head = ("| `run` (a new process each, three logins) | phonehome-jump run | OpenSSH `ssh -J` |",
            "|---|---|---|")
    lines = [*head, *(f"| {r[0]} | {r[1]} | {r[2]} |" for r in rows)]
    print("\n".join(lines) if args.markdown else "\n".join(" · ".join(r) for r in rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
