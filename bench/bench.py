"""Benchmark: phonehome-jump vs OpenSSH over the two-hop sshd lab, in one run.

    .venv/bin/python bench/bench.py [--rounds N] [--targets N] [--markdown]

Brings up its own lab (tests/lab/sshlab.py; state dir $PHJ_LAB_STATE or
/tmp/phonehome-jump-lab-bench), measures, prints a table of medians (p90, n) next to
OpenSSH measured in the same run, and tears the lab down (also on error and Ctrl-C).
This is a benchmark, not a test: it prints targets met/missed and exits 0 unless the
run itself fails. Needs root (network namespaces). See bench/README.md.
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import math
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# A lab of its own (namespaces phj198-*, 10.198.0.0/16), apart from the test suite's default 199.
os.environ.setdefault("PHJ_LAB_NET", "198")
sys.path.insert(0, str(ROOT / "tests" / "lab"))
from sshlab import PREFIX, Lab  # noqa: E402

from phonehome_jump import chain  # noqa: E402
from phonehome_jump.inventory import Inventory  # noqa: E402
from phonehome_jump.manager import SessionManager  # noqa: E402
from phonehome_jump.redact import add_secret  # noqa: E402
from phonehome_jump.workflow import Workflow, run_workflow  # noqa: E402

SSH = shutil.which("ssh") or "/usr/bin/ssh"
SEQ_N = 5000
SEQ_EXPECTED = "".join(f"{i}\n" for i in range(1, SEQ_N + 1))
FANOUT = 50
FILE_MB = 100         # the file copy rows: MiB each way
WF_HOSTS = 20           # inventory entries behind one shared two-hop chain (spread over targets)
WF_TEXT = """\
name: bench
targets: {hosts: [%s]}
concurrency: %d
steps:
  - run: cd /tmp
  - run: pwd
    capture: cwd
  - run: echo "${host} ${cwd}"
    assert: {regex: '^wf-\\d+ /tmp$'}
  - run: uname -s
    assert: {regex: '^Linux$'}
  - run: test -d ${cwd}
"""
MCP_BLOCK = 50          # MCP and core `echo hi` alternate in blocks of this many rounds
SVC_CLIENTS = 10        # service row: 1 probing client + 9 loading clients (2 sessions each)
SVC_CALLS = 240         # calls the loading clients run between them
SVC_PROBES = 50         # unloaded echo rounds of the probing client
SVC_LOAD = "sleep 0.2; echo x"
BIG_CAP = 1_000_000     # the bench returns whole outputs so it can check them (default cap 16,000)
SCALES = (1_000, 10_000, 100_000, 1_000_000, 10_000_000)   # `seq 1 N` output scaling rows
PAGE_N = 4_000_000      # `seq 1 4000000`: 30.9 MB paged through with read(offset=)
THROUGHPUT_N = 1_000_000   # `seq 1 1000000`: 6.9 MB, the transport variants


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------- stats

@dataclass
class Sample:
    values: list[float] = field(default_factory=list)   # seconds (or KiB for RSS)
    unit: str = "ms"
    failed: int = 0                                      # runs that failed (fan-out ssh under load)
    extra: str = ""                                      # appended to the cell (peak RSS)

    def add(self, v: float) -> None:
        self.values.append(v)

    @property
    def median(self) -> float:
        return statistics.median(self.values)

    @property
    def p90(self) -> float:
        v = sorted(self.values)
        if len(v) == 1:
            return v[0]
        return statistics.quantiles(v, n=10, method="inclusive")[8]

    def cell(self) -> str:
        if not self.values:
            return "—"
        n = len(self.values)
        if self.unit == "KiB":
            return f"{self.median:,.0f} KiB (n={n})"
        cell = f"{fmt_time(self.median)} (p90 {fmt_time(self.p90)}, n={n})"
        return cell + (f" — {self.failed} ssh failed" if self.failed else "") + self.extra


def p99(values: list[float]) -> float:
    v = sorted(values)
    return v[0] if len(v) == 1 else statistics.quantiles(v, n=100, method="inclusive")[98]


def fmt_time(seconds: float) -> str:
    ms = seconds * 1000
    if ms < 10:
        return f"{ms:.2f} ms"
    if ms < 1000:
        return f"{ms:.1f} ms"
    return f"{seconds:.2f} s"


def timed(fn: Callable[[], object]) -> tuple[float, object]:
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def _busy_jiffies() -> tuple[int, int]:
    """(busy, total) CPU time of the whole machine so far, from /proc/stat."""
    v = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return sum(v) - v[3] - v[4], sum(v)


def settle(busy_below: float = 0.15, window: float = 0.25, limit: float = 10.0) -> None:
    """Wait until the machine is quiet: a run that starts while sshds still tear down the
    previous run's sessions (logout scripts, ptys) measures that run's tail, not its own."""
    end = time.monotonic() + limit
    while time.monotonic() < end:
        b0, t0 = _busy_jiffies()
        time.sleep(window)
        b1, t1 = _busy_jiffies()
        if t1 > t0 and (b1 - b0) / (t1 - t0) < busy_below:
            return
    log(f"  (the machine stayed busy for {limit:g}s; measuring anyway)")


@dataclass
class CpuUse:
    """CPU seconds used during a ``with machine_cpu()`` block: this process's, the rest of the
    machine's (the lab's sshds and shells, the kernel, ssh clients), and how busy it was."""
    self: float = 0.0
    rest: float = 0.0
    busy: float = 0.0          # share of all CPUs' time, 0..100


@contextmanager
def machine_cpu() -> Iterator[CpuUse]:
    use = CpuUse()
    tick = os.sysconf("SC_CLK_TCK")
    b0, t0 = _busy_jiffies()
    p0 = time.process_time()
    try:
        yield use
    finally:
        b1, t1 = _busy_jiffies()
        use.self = time.process_time() - p0
        use.rest = max((b1 - b0) / tick - use.self, 0.0)
        use.busy = 100.0 * (b1 - b0) / max(t1 - t0, 1)


def rss_kib(field: str = "VmRSS") -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def reset_peak_rss() -> None:
    """Make VmHWM (peak RSS) start again from the current RSS (Linux clear_refs 5)."""
    Path("/proc/self/clear_refs").write_text("5")


def mib(kib: float) -> str:
    return f"{kib / 1024:,.1f} MiB"


_SEQ: dict[int, tuple[int, str]] = {}


def seq_digest(n: int) -> tuple[int, str]:
    """Length and SHA-256 of `seq 1 n`'s output, computed in blocks (never all in memory)."""
    if n not in _SEQ:
        h, length = hashlib.sha256(), 0
        for lo in range(1, n + 1, 100_000):
            block = "".join(f"{i}\n" for i in range(lo, min(lo + 100_000, n + 1))).encode()
            h.update(block)
            length += len(block)
        _SEQ[n] = (length, h.hexdigest())
    return _SEQ[n]


def file_digest(path: Path) -> tuple[int, str]:
    h, length = hashlib.sha256(), 0
    with path.open("rb") as fh:
        while block := fh.read(1 << 20):
            h.update(block)
            length += len(block)
    return length, h.hexdigest()


def run_child(argv: list[str], out: Path, env: dict[str, str] | None = None) -> tuple[float, int]:
    """Run argv with stdout to ``out``; (wall seconds, the child's peak RSS in KiB).

    The peak is the child's VmHWM, polled from /proc until it exits (a high-water mark, so
    polling loses at most the last few ms); ru_maxrss would include the forked bench's own.
    """
    peak = [0]
    with out.open("wb") as fh:
        t0 = time.perf_counter()
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=fh, stderr=subprocess.PIPE,
                                env=env)
        status = Path(f"/proc/{proc.pid}/status")

        def poll() -> None:
            mine = Path("/proc/self/cmdline").read_bytes()
            while proc.returncode is None:
                try:
                    if Path(f"/proc/{proc.pid}/cmdline").read_bytes() == mine:
                        time.sleep(0.001)        # still the forked bench, before exec
                        continue
                    for line in status.read_text().splitlines():
                        if line.startswith("VmHWM:"):
                            peak[0] = max(peak[0], int(line.split()[1]))
                except (OSError, ValueError):
                    pass
                time.sleep(0.005)

        watcher = threading.Thread(target=poll, daemon=True)
        watcher.start()
        _, err = proc.communicate()
        elapsed = time.perf_counter() - t0
        watcher.join()
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv[:6])} … failed ({proc.returncode}): {err.decode()[-300:]}")
    return elapsed, peak[0]


# ----------------------------------------------------------------------------- OpenSSH

class OpenSSH:
    """ssh(1) over the same lab: an ssh_config with the lab's key, known_hosts and hops."""

    def __init__(self, lab: Lab, tmp: Path) -> None:
        self.lab, self.tmp = lab, tmp
        self.cfg = tmp / "ssh_config"
        self.cm_target = tmp / "cm-target1"      # ControlMaster socket: the target itself
        self.cm_jump2 = tmp / "cm-jump2"         # ControlMaster socket: the last hop
        targets = [n for n in lab.nodes if n.startswith("target")]
        blocks = [f"""\
Host jump1
  HostName {lab.addr('jump1')}
Host jump2
  HostName {lab.addr('jump2')}
  ProxyJump jump1
# jump2 through its own persistent master: "the chain is already up"
Host hop-jump2
  HostName {lab.addr('jump2')}
  ProxyJump jump1
  ControlMaster auto
  ControlPath {self.cm_jump2}
  ControlPersist 600
# target1 through one persistent master (ControlMaster reuse)
Host cm-target1
  HostName {lab.addr('target1')}
  ProxyJump jump1,jump2
  ControlMaster auto
  ControlPath {self.cm_target}
  ControlPersist 600
"""]
        blocks += [f"Host {t}\n  HostName {lab.addr(t)}\n  ProxyJump jump1,jump2\n" for t in targets]
        # one master per target through the jump2 master: the fan-out with logins shared
        blocks += [f"Host fan-{t}\n  HostName {lab.addr(t)}\n  ProxyJump hop-jump2\n"
                   f"  ControlPath {self.fan_master(t)}\n" for t in targets]
        blocks.append(f"""\
Host *
  User phjkey
  IdentityFile {lab.key_file}
  IdentitiesOnly yes
  IdentityAgent none
  UserKnownHostsFile {lab.known_hosts}
  GlobalKnownHostsFile /dev/null
  StrictHostKeyChecking yes
  CheckHostIP no
  BatchMode yes
  ControlMaster no
  ControlPath none
  LogLevel ERROR
  ConnectTimeout 30
""")
        self.cfg.write_text("".join(blocks))

    def run(self, *args: str, check_out: str | None = None) -> str:
        proc = subprocess.run([SSH, "-F", str(self.cfg), *args], stdin=subprocess.DEVNULL,
                              capture_output=True, text=True, timeout=60)
        if proc.returncode != 0:
            raise RuntimeError(f"ssh {' '.join(args)} failed ({proc.returncode}): {proc.stderr.strip()}")
        if check_out is not None and proc.stdout != check_out:
            raise RuntimeError(f"ssh {' '.join(args)}: unexpected output {proc.stdout[:80]!r}")
        return proc.stdout

    # the three ways to reach a target
    def cm(self, cmd: str, **kw: str) -> str:           # over the ControlMaster to target1
        return self.run("-S", str(self.cm_target), "cm-target1", cmd, **kw)

    def fresh(self, target: str, cmd: str, **kw: str) -> str:     # ssh -J, nothing shared
        return self.run("-J", "jump1,jump2", f"phjkey@{self.lab.addr(target)}", cmd, **kw)

    def via_jump2_master(self, target: str, cmd: str, **kw: str) -> str:   # hops shared, new target login
        return self.run("-J", "hop-jump2", f"phjkey@{self.lab.addr(target)}", cmd, **kw)

    def fan_master(self, target: str) -> Path:
        return self.tmp / f"cm-fan-{target}"

    def via_target_master(self, target: str, cmd: str, **kw: str) -> str:   # a channel on its master
        return self.run("-S", str(self.fan_master(target)), f"fan-{target}", cmd, **kw)

    def start_master(self, host: str, sock: Path) -> None:
        # -f forks after auth; its output goes to a file so no pipe outlives the call (a
        # ProxyJump child through another master keeps the stderr it was given)
        errors = self.tmp / f"{sock.name}.err"
        with errors.open("w") as err:
            proc = subprocess.run([SSH, "-F", str(self.cfg), "-M", "-N", "-f", "-S", str(sock), host],
                                  stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                  stderr=err, timeout=60)
        if proc.returncode != 0:
            raise RuntimeError(f"ControlMaster to {host} failed: {errors.read_text().strip()}")
        self.run("-S", str(sock), "-O", "check", host)

    def stop_master(self, host: str, sock: Path) -> None:
        if sock.exists():
            subprocess.run([SSH, "-F", str(self.cfg), "-S", str(sock), "-O", "exit", host],
                           stdin=subprocess.DEVNULL, capture_output=True, timeout=30)


# ----------------------------------------------------------------------------- lab

def wait_for_free_lab(timeout: float) -> None:
    """Only one lab fits on the machine (fixed netns names): wait until nobody else's is up."""
    deadline = time.monotonic() + timeout
    said = False
    while True:
        out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
        busy = [ln.split()[0] for ln in out.splitlines() if ln.startswith(PREFIX)]
        if not busy:
            return
        if time.monotonic() > deadline:
            raise SystemExit(f"bench: another sshd lab is up ({', '.join(busy)}); "
                             f"gave up after {timeout:g}s. Never tearing down a lab this run did not bring up.")
        if not said:
            log(f"another lab is up ({', '.join(busy)}): waiting for it to go (up to {timeout:g}s)")
            said = True
        time.sleep(2)


def machine() -> list[str]:
    def ver(pkg: str) -> str:
        try:
            return metadata.version(pkg)
        except metadata.PackageNotFoundError:
            return "?"
    ssh_v = subprocess.run([SSH, "-V"], capture_output=True, text=True).stderr.strip()
    cpu = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return [
        f"machine: {len(os.sched_getaffinity(0))} CPUs (nproc) · {cpu} · Linux {platform.release()}",
        f"python {platform.python_version()} · paramiko {ver('paramiko')} · paramiko-jump {ver('paramiko-jump')}"
        f" · netmiko {ver('netmiko')} · {ssh_v.split(',')[0]}",
    ]


# ----------------------------------------------------------------------------- measurements

class Bench:
    def __init__(self, lab: Lab, ossh: OpenSSH, args: argparse.Namespace) -> None:
        self.lab, self.ossh, self.args = lab, ossh, args
        self.inv = Inventory.load(lab.inventory)
        self.targets = [f"lab-{n}" for n in lab.nodes if n.startswith("target")]
        self.raw_targets = [n for n in lab.nodes if n.startswith("target")]
        self.r: dict[str, Sample] = {}
        self.notes: list[str] = []

    def s(self, key: str, unit: str = "ms") -> Sample:
        return self.r.setdefault(key, Sample(unit=unit))

    def warm_up(self) -> None:
        log("warm-up (imports, ARP, page cache)")
        with SessionManager(self.inv) as m:
            sid = m.open(self.targets[0]).id
            for _ in range(5):
                m.command(sid, "echo hi")
        self.ossh.fresh("target1", "true")

    def commands(self) -> None:
        a = self.args
        log(f"open session: {a.rounds} × echo hi, {a.seq} × seq 1 {SEQ_N}")
        with SessionManager(self.inv, cap=BIG_CAP) as m:
            sid = m.open(self.targets[0]).id
            for _ in range(10):
                m.command(sid, "echo hi")
            for _ in range(a.rounds):
                dt, res = timed(lambda: m.command(sid, "echo hi"))
                assert res.output == "hi\n" and res.exit_status == 0, res   # type: ignore[union-attr]
                self.s("echo/phj").add(dt)
            ok = 0
            for _ in range(a.seq):
                dt, res = timed(lambda: m.command(sid, f"seq 1 {SEQ_N}"))
                ok += res.output == SEQ_EXPECTED and not res.truncated    # type: ignore[union-attr]
                self.s("seq/phj").add(dt)
            complete = len(self.notes)
            self.notes.append(f"seq 1 {SEQ_N} output complete: phonehome-jump {ok}/{a.seq}")

        log(f"OpenSSH ControlMaster: {a.rounds} × echo hi, {a.seq} × seq")
        self.ossh.start_master("cm-target1", self.ossh.cm_target)
        try:
            for _ in range(5):
                self.ossh.cm("echo hi")
            for _ in range(a.rounds):
                dt, _ = timed(lambda: self.ossh.cm("echo hi", check_out="hi\n"))
                self.s("echo/cm").add(dt)
            ok = 0
            for _ in range(a.seq):
                dt, out = timed(lambda: self.ossh.cm(f"seq 1 {SEQ_N}"))
                ok += out == SEQ_EXPECTED
                self.s("seq/cm").add(dt)
            self.notes[complete] += f", OpenSSH ControlMaster {ok}/{a.seq}"
            # Where the ControlMaster time goes: the same round trip without output.
            quiet = Sample()
            for _ in range(min(a.rounds, 50)):
                quiet.add(timed(lambda: self.ossh.cm("true"))[0])
            self.notes.append(f"OpenSSH ControlMaster `true` (no output): {quiet.cell()}; "
                              f"`echo hi`: {self.s('echo/cm').cell()}")
        finally:
            self.ossh.stop_master("cm-target1", self.ossh.cm_target)

        log(f"OpenSSH fresh -J: {a.fresh} × echo hi, {a.fresh} × seq")
        for _ in range(a.fresh):
            dt, _ = timed(lambda: self.ossh.fresh("target1", "echo hi", check_out="hi\n"))
            self.s("echo/fresh").add(dt)
        ok = 0
        for _ in range(a.fresh):
            dt, out = timed(lambda: self.ossh.fresh("target1", f"seq 1 {SEQ_N}"))
            ok += out == SEQ_EXPECTED
            self.s("seq/fresh").add(dt)
        self.notes[complete] += f", OpenSSH fresh -J {ok}/{a.fresh}"

    def mcp(self) -> None:
        """`echo hi` through `phonehome-jump serve` over stdio, beside the core in-process.

        Both sessions go to target1 through the same two jumps. MCP and core calls alternate in
        blocks of MCP_BLOCK, so drift on the machine hits both alike, while the server's work after
        each reply (on 2 CPUs) does not land in the core's timings as it would call by call.
        """
        import anyio
        from mcp import Client, StdioServerParameters

        a = self.args
        n_list = min(a.rounds, 50)
        log(f"MCP over stdio: {a.rounds} × echo hi via ssh_session_command, alternating with "
            f"{a.rounds} × core, in blocks of {MCP_BLOCK}; {n_list} × ssh_session_list")
        cli = Path(sys.executable).parent / "phonehome-jump"
        params = StdioServerParameters(command=str(cli),
                                       args=["--inventory", str(self.lab.inventory), "serve"],
                                       env=dict(os.environ))    # carries the lab's secrets (lab.env)

        async def call(client: Client, tool: str, **args: object) -> dict:
            r = await client.call_tool(tool, args)
            if r.is_error:
                raise RuntimeError(f"MCP {tool}: {r.content[0].text}")
            return r.structured_content   # type: ignore[return-value]

        async def run() -> None:
            with SessionManager(self.inv) as m:
                core_sid = m.open(self.targets[0]).id
                async with Client(params) as client:
                    sid = (await call(client, "ssh_session_open", host=self.targets[0]))["session_id"]
                    try:
                        for _ in range(10):
                            await call(client, "ssh_session_command", session_id=sid, command="echo hi")
                            m.command(core_sid, "echo hi")
                        done = 0
                        while done < a.rounds:
                            block = min(MCP_BLOCK, a.rounds - done)
                            for _ in range(block):
                                t0 = time.perf_counter()
                                r = await call(client, "ssh_session_command", session_id=sid,
                                               command="echo hi", wait=20)
                                self.s("mcp/mcp").add(time.perf_counter() - t0)
                                assert r["output"] == "hi\n" and r["exit_status"] == 0, r
                            for _ in range(block):
                                dt, res = timed(lambda: m.command(core_sid, "echo hi"))
                                assert res.output == "hi\n" and res.exit_status == 0, res  # type: ignore[union-attr]
                                self.s("mcp/core").add(dt)
                            done += block
                        # the MCP round trip with no SSH in it: stdio, JSON-RPC, a worker thread
                        for _ in range(n_list):
                            t0 = time.perf_counter()
                            await call(client, "ssh_session_list")
                            self.s("mcp/list").add(time.perf_counter() - t0)
                    finally:
                        await call(client, "ssh_session_close", session_id=sid)

        anyio.run(run)
        self.notes.append(f"MCP `echo hi` via ssh_session_command over stdio: {self.s('mcp/mcp').cell()}; "
                          f"core `SessionManager.command`, alternating: {self.s('mcp/core').cell()}; "
                          f"MCP `ssh_session_list` (no SSH): {self.s('mcp/list').cell()}")

    def service(self) -> None:
        """The MCP server as a shared service over streamable HTTP: `echo hi` on an idle session
        of one client while SVC_CLIENTS - 1 other clients run SVC_CALLS calls over two sessions
        each, beside the same echo with no load, in the same run."""
        import socket

        import anyio
        from mcp import Client
        from mcp.client.streamable_http import streamable_http_client

        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        cli = Path(sys.executable).parent / "phonehome-jump"
        url = f"http://127.0.0.1:{port}/mcp"
        loaders = SVC_CLIENTS - 1
        log(f"MCP over HTTP: echo on an idle session, unloaded, then while {loaders} clients run "
            f"{SVC_CALLS} calls (`{SVC_LOAD}`) over {2 * loaders} sessions")
        proc = subprocess.Popen([str(cli), "--inventory", str(self.lab.inventory), "serve",
                                 "--http", f"127.0.0.1:{port}"], env=dict(os.environ),
                                stderr=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 30
            while True:
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                    break
                except OSError:
                    if proc.poll() is not None or time.monotonic() > deadline:
                        raise RuntimeError("phonehome-jump serve --http did not start")
                    time.sleep(0.1)

            async def call(client: Client, tool: str, **args: object) -> dict:
                r = await client.call_tool(tool, args)
                if r.is_error:
                    raise RuntimeError(f"MCP {tool}: {r.content[0].text}")
                return r.structured_content   # type: ignore[return-value]

            async def echo(client: Client, sid: str, key: str) -> None:
                t0 = time.perf_counter()
                r = await call(client, "ssh_session_command", session_id=sid, command="echo hi")
                self.s(key).add(time.perf_counter() - t0)
                assert r["output"] == "hi\n", r

            async def run() -> None:
                from contextlib import AsyncExitStack
                async with AsyncExitStack() as stack:
                    clients = [await stack.enter_async_context(Client(streamable_http_client(url)))
                               for _ in range(SVC_CLIENTS)]
                    probe, *load = clients
                    psid = (await call(probe, "ssh_session_open", host=self.targets[0]))["session_id"]
                    sessions = []
                    for i, c in enumerate(load):
                        for j in range(2):
                            host = self.targets[(2 * i + j) % len(self.targets)]
                            sessions.append((c, (await call(c, "ssh_session_open", host=host))["session_id"]))
                    for _ in range(10):
                        await echo(probe, psid, "svc/warm")
                    for _ in range(SVC_PROBES):
                        await echo(probe, psid, "svc/idle")
                    queue = list(range(SVC_CALLS))
                    done = anyio.Event()

                    async def worker(c: Client, sid: str) -> None:
                        while queue:
                            queue.pop()
                            r = await call(c, "ssh_session_command", session_id=sid, command=SVC_LOAD)
                            assert r["output"] == "x\n", r

                    async def probing() -> None:
                        while not done.is_set():
                            await echo(probe, psid, "svc/phj")

                    t0 = time.perf_counter()
                    async with anyio.create_task_group() as tg:
                        tg.start_soon(probing)
                        async with anyio.create_task_group() as workers:
                            for c, sid in sessions:
                                workers.start_soon(worker, c, sid)
                        self.s("svc/wall", "s").add(time.perf_counter() - t0)
                        done.set()

            anyio.run(run)
        finally:
            proc.terminate()
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
        wall = self.r["svc/wall"].values[0]
        loaded, idle = self.s("svc/phj"), self.s("svc/idle")
        self.notes.append(
            f"MCP service over HTTP: {SVC_CLIENTS - 1} clients ran {SVC_CALLS} × `{SVC_LOAD}` over "
            f"{2 * (SVC_CLIENTS - 1)} sessions in {wall:.2f} s ({SVC_CALLS / wall:.1f} calls/s); meanwhile a "
            f"10th client's `echo hi` on its idle session: {loaded.cell()}, p99 {fmt_time(p99(loaded.values))}; "
            f"unloaded: {idle.cell()}, p99 {fmt_time(p99(idle.values))}")

    def opens(self) -> None:
        a = self.args
        log(f"session open: {a.opens} × cold, {a.opens} × chain up")
        for _ in range(a.opens):
            m = SessionManager(self.inv)
            try:
                dt, _ = timed(lambda: m.open(self.targets[0]))
                self.s("cold/phj").add(dt)
            finally:
                m.shutdown()
        with SessionManager(self.inv) as m:
            m.open(self.targets[1 % len(self.targets)])      # holds jump1 and jump2 open
            for _ in range(a.opens):
                dt, info = timed(lambda: m.open(self.targets[0]))
                self.s("warm/phj").add(dt)
                m.close(info.id)                                # type: ignore[union-attr]
            m.open(self.targets[0])                             # its login, to share
            for _ in range(a.opens):
                dt, info = timed(lambda: m.open(self.targets[0]))
                self.s("share/phj").add(dt)
                m.close(info.id)                                # type: ignore[union-attr]
        log(f"OpenSSH open: {a.opens} × fresh -J true, {a.opens} × via a jump2 master")
        for _ in range(a.opens):
            dt, _ = timed(lambda: self.ossh.fresh("target1", "true"))
            self.s("cold/fresh").add(dt)
        self.ossh.start_master("hop-jump2", self.ossh.cm_jump2)
        try:
            for _ in range(a.opens):
                dt, _ = timed(lambda: self.ossh.via_jump2_master("target1", "true"))
                self.s("warm/cm").add(dt)
        finally:
            self.ossh.stop_master("hop-jump2", self.ossh.cm_jump2)
        self.ossh.start_master("cm-target1", self.ossh.cm_target)
        try:
            for _ in range(a.opens):
                dt, _ = timed(lambda: self.ossh.cm("true"))
                self.s("share/cm").add(dt)
        finally:
            self.ossh.stop_master("cm-target1", self.ossh.cm_target)

    def fanout(self) -> None:
        a = self.args
        n_t = len(self.targets)
        log(f"fan-out: {a.fanouts} × {FANOUT} sessions + 1 command, over {n_t} targets, one chain")
        for rnd in range(a.fanouts):
            for key, shared in (("fan", True), ("fan1", False)):     # alternating
                gc.collect()
                settle()
                before = rss_kib()
                m = SessionManager(self.inv, max_sessions=FANOUT * 2, max_per_host=FANOUT,
                                   share_logins=shared)

                def one(i: int) -> None:
                    sid = m.open(self.targets[i % n_t]).id
                    res = m.command(sid, f"echo {i}")
                    assert res.output == f"{i}\n", res

                try:
                    with ThreadPoolExecutor(max_workers=FANOUT) as pool:
                        t0 = time.perf_counter()
                        list(pool.map(one, range(FANOUT)))
                        self.s(f"{key}/phj").add(time.perf_counter() - t0)
                    after = rss_kib()
                    assert len(m.list()) == FANOUT
                    per = (after - before) / FANOUT
                    if rnd == 0 and shared:   # later rounds reuse memory freed by the first
                        self.s("rss/phj", "KiB").add(per)
                    else:
                        self.notes.append(f"RSS per session, fan-out round {rnd + 1}"
                                          f"{'' if shared else ', own logins'}: {per:,.0f} KiB")
                finally:
                    m.shutdown()

        log(f"OpenSSH fan-out: {a.ssh_fanouts} × {FANOUT} ssh processes (master on jump2 / fresh -J)")

        for _ in range(a.ssh_fanouts):
            settle()
            t0 = time.perf_counter()
            self.ossh.start_master("hop-jump2", self.ossh.cm_jump2)   # the shared chain, timed
            try:
                self._ssh_all("fan1/cm", FANOUT, lambda i: self.ossh.via_jump2_master(
                    self.raw_targets[i % n_t], f"echo {i}", check_out=f"{i}\n"), t0)
            finally:
                self.ossh.stop_master("hop-jump2", self.ossh.cm_jump2)
            settle()
            t0 = time.perf_counter()
            self.ossh.start_master("hop-jump2", self.ossh.cm_jump2)   # the shared chain, timed
            masters = self.raw_targets[:n_t]
            try:
                with ThreadPoolExecutor(max_workers=n_t) as pool:    # a master per target, timed
                    list(pool.map(lambda t: self.ossh.start_master(f"fan-{t}", self.ossh.fan_master(t)),
                                  masters))
                self._ssh_all("fan/cm", FANOUT, lambda i: self.ossh.via_target_master(
                    self.raw_targets[i % n_t], f"echo {i}", check_out=f"{i}\n"), t0)
            finally:
                for t in masters:
                    self.ossh.stop_master(f"fan-{t}", self.ossh.fan_master(t))
                self.ossh.stop_master("hop-jump2", self.ossh.cm_jump2)
            settle()
            self._ssh_all("fan1/fresh", FANOUT, lambda i: self.ossh.fresh(
                self.raw_targets[i % n_t], f"echo {i}", check_out=f"{i}\n"))


    def _ssh_all(self, key: str, n: int, fn: Callable[[int], str], t0: float | None = None) -> None:
        """Run fn(0..n-1) in parallel (ssh processes), timed from ``t0`` (default: now); a
        failed ssh (a timeout under load) is counted in the cell, not fatal."""
        def one(i: int) -> str | None:
            try:
                fn(i)
                return None
            except Exception as exc:
                return str(exc)
        with ThreadPoolExecutor(max_workers=n) as pool:
            t0 = time.perf_counter() if t0 is None else t0
            errors = [e for e in pool.map(one, range(n)) if e]
            elapsed = time.perf_counter() - t0
        sample = self.s(key)
        sample.add(elapsed)
        if errors:
            sample.failed += len(errors)
            self.notes.append(f"{key}: {len(errors)}/{n} ssh failed, e.g. {errors[0][:120]}")

    def workflow(self) -> None:
        """A 5-step workflow over WF_HOSTS hosts through jump1 → jump2, from a cold start."""
        a = self.args
        names = [f"wf-{i:02d}" for i in range(1, WF_HOSTS + 1)]
        text = self.lab.inventory.read_text().rstrip("\n") + "\n" + "".join(
            f"  {n}: {{host: {self.lab.addr(self.raw_targets[i % len(self.raw_targets)])}, "
            f"groups: [lab]}}\n" for i, n in enumerate(names))
        inv = Inventory.from_text(text, "bench-workflow-inventory")
        wf = Workflow.from_text(WF_TEXT % (", ".join(names), WF_HOSTS), "bench-workflow.yaml")
        log(f"workflow: {a.workflows} × 5 steps on {WF_HOSTS} hosts over {len(self.raw_targets)} "
            "targets, one chain, each run from a new manager (cold); OpenSSH doing the same "
            "commands, alternating")
        hosts = [self.raw_targets[i % len(self.raw_targets)] for i in range(WF_HOSTS)]
        # OpenSSH: each host's 5 commands as one exec (no pty, no login shell: its cheapest way)
        script = "cd /tmp && pwd && echo \"wf-{i:02d} $(pwd)\" && uname -s && test -d /tmp"
        expect = "/tmp\nwf-{i:02d} /tmp\nLinux\n"
        for _ in range(a.workflows):
            settle()
            with machine_cpu() as cpu:
                t0 = time.perf_counter()
                r = run_workflow(wf, inv)
                self.s("wf/phj").add(time.perf_counter() - t0)
            self.s("wf/cpu-self", "cpu").add(cpu.self)
            self.s("wf/cpu-rest", "cpu").add(cpu.rest)
            self.s("wf/busy", "%").add(cpu.busy)
            assert r.ok and len(r.hosts) == WF_HOSTS, r.to_dict()
            for hr in r.hosts.values():
                steps = sum(st.duration for st in hr.steps)
                self.s("wf/host").add(hr.duration)
                self.s("wf/overhead").add(hr.duration - steps)
                self.s("wf/steps").add(steps)
            settle()
            with machine_cpu() as cpu:
                t0 = time.perf_counter()
                self.ossh.start_master("hop-jump2", self.ossh.cm_jump2)   # the chain, timed
                try:
                    self._ssh_all("wf/cm", WF_HOSTS, lambda i: self.ossh.via_jump2_master(
                        hosts[i], script.format(i=i + 1), check_out=expect.format(i=i + 1)), t0)
                finally:
                    self.ossh.stop_master("hop-jump2", self.ossh.cm_jump2)
            self.s("wf/cpu-cm", "cpu").add(cpu.self + cpu.rest)
            settle()
            self._ssh_all("wf/fresh", WF_HOSTS, lambda i: self.ossh.fresh(
                hosts[i], script.format(i=i + 1), check_out=expect.format(i=i + 1)))


    # -- output of any size (issue: linear time, bounded memory) ------------------------

    def _page_digest(self, m: SessionManager, sid: str, total: int) -> tuple[int, str]:
        h, offset = hashlib.sha256(), 0
        while offset < total:
            page = m.read(sid, offset=offset)
            h.update(page.output.encode())
            offset = page.next_offset
        return total, h.hexdigest()

    def output(self) -> None:
        """`seq 1 N`, N = 1e3 … 1e7, in an open session (default cap: head and tail returned)
        beside OpenSSH ControlMaster writing to a file; time and peak RSS. The rounds of the
        two (and of the ControlMaster with a pty) alternate, so a machine whose speed drifts
        during the section weighs on both alike."""
        a = self.args
        scales = [n for n in SCALES if n <= a.max_lines]
        rounds = {1_000: 20, 10_000: 10, 100_000: 5, 1_000_000: 9, 10_000_000: 3}
        log(f"output scaling: seq 1 N for N in {', '.join(f'{n:.0e}' for n in scales)}")
        self.ossh.start_master("cm-target1", self.ossh.cm_target)
        out = self.ossh.tmp / "seq.out"
        try:
            with SessionManager(self.inv) as m:
                sid = m.open(self.targets[0]).id
                for n in scales:
                    want = seq_digest(n)
                    peak = cm_peak = tt_ok = 0
                    for _ in range(rounds.get(n, 3)):
                        gc.collect()
                        base = rss_kib()
                        reset_peak_rss()
                        dt, res = timed(lambda: m.command(sid, f"seq 1 {n}", wait=600))
                        peak = max(peak, rss_kib("VmHWM") - base)
                        assert res.exit_status == 0 and res.total == want[0], res.total  # type: ignore[union-attr]
                        self.s(f"out{n}/phj").add(dt)
                        dt, rss = run_child([SSH, "-F", str(self.ossh.cfg), "-S", str(self.ossh.cm_target),
                                             "cm-target1", f"seq 1 {n}"], out)
                        assert file_digest(out) == want
                        cm_peak = max(cm_peak, rss)
                        self.s(f"out{n}/cm").add(dt)
                        if n >= 100_000:     # the same through a pty, as a session's shell has one
                            dt, _ = run_child([SSH, "-tt", "-F", str(self.ossh.cfg), "-S",
                                               str(self.ossh.cm_target), "cm-target1",
                                               f"stty -onlcr; seq 1 {n}"], out)
                            tt_ok += file_digest(out) == want
                            self.s(f"out{n}/cmtt").add(dt)
                    got = self._page_digest(m, sid, want[0])          # complete and exact (untimed)
                    assert got == want, f"seq 1 {n}: output differs from seq's"
                    self.s(f"out{n}/phj").extra = f"; peak RSS +{mib(peak)}"
                    self.s(f"out{n}/phjpeak", "KiB").add(peak)
                    self.s(f"out{n}/cm").extra = f"; ssh peak RSS {mib(cm_peak)}"
                    if n >= 100_000:
                        self.notes.append(f"`seq 1 {n}` over the ControlMaster with a pty (`ssh -tt`, "
                                          f"`stty -onlcr`), as a session's shell has one: "
                                          f"{self.s(f'out{n}/cmtt').cell()}, output exact {tt_ok}/{rounds.get(n, 3)}")
        finally:
            out.unlink(missing_ok=True)
            self.ossh.stop_master("cm-target1", self.ossh.cm_target)
        self.notes.append("output rows: phonehome-jump, the ControlMaster and (from 1e5 lines) the "
                          "ControlMaster with a pty take turns, round by round. Every phonehome-jump "
                          "output was paged through afterwards "
                          "(read with offset=) and its SHA-256 matched seq's; every OpenSSH output "
                          "file too. Peak RSS: phonehome-jump = VmHWM above the RSS before the "
                          "command (in-process); OpenSSH = the ssh client's own peak (its VmHWM, polled from /proc)")

    def paging(self) -> None:
        """Page through 30.9 MB with read(offset=), without and then with two secrets."""
        n = PAGE_N
        want = seq_digest(n)
        log(f"paging: seq 1 {n} ({want[0] / 1e6:.1f} MB) in pages, without and with 2 secrets")
        with SessionManager(self.inv) as m:
            sid = m.open(self.targets[0]).id
            res = m.command(sid, f"seq 1 {n}", wait=600)
            assert res.total == want[0]
            for key, label in (("page", "no secrets"), ("pages", "2 secrets")):
                if key == "pages":
                    add_secret("canary-bench-secret-one")   # registered: every page is masked
                    add_secret("canary-bench-secret-two")
                per_page, h, offset = Sample(), hashlib.sha256(), 0
                t0 = time.perf_counter()
                while offset < res.total:
                    dt, page = timed(lambda: m.read(sid, offset=offset))
                    per_page.add(dt)
                    h.update(page.output.encode())          # type: ignore[union-attr]
                    offset = page.next_offset               # type: ignore[union-attr]
                self.s(f"{key}/phj").add(time.perf_counter() - t0)
                assert (res.total, h.hexdigest()) == want
                first, last = Sample(per_page.values[:200]), Sample(per_page.values[-200:])
                self.s(f"{key}/phj").extra = (f"; {len(per_page.values)} pages, per page: first 200 "
                                              f"{fmt_time(first.median)}, last 200 {fmt_time(last.median)}")

    def throughput(self) -> None:
        """6.9 MB through both hops with transport variants: cipher, window, max packet."""
        n = THROUGHPUT_N
        want = seq_digest(n)
        variants = [
            ("aes128-gcm@openssh.com first (default)", None, None, None),
            ("aes128-ctr + hmac-sha2-256 (paramiko's order)", "aes128-ctr", None, None),
            ("aes128-gcm, window 8 MiB", None, 8 << 20, None),
            ("aes128-gcm, window 512 KiB", None, 512 << 10, None),
            ("aes128-gcm, max packet 64 KiB", None, None, 64 << 10),
        ]
        log(f"throughput: seq 1 {n} with {len(variants)} transport variants")
        orig = chain.AnsweringTransport
        results = []
        for _ in range(self.args.variant_rounds):
            for label, cipher, window, packet in variants:
                class Variant(orig):           # type: ignore[misc, valid-type]
                    if cipher:
                        _preferred_ciphers = (cipher,)

                    def __init__(self, *args, **kw):   # type: ignore[no-untyped-def]
                        if window:
                            kw["default_window_size"] = window
                        if packet:
                            kw["default_max_packet_size"] = packet
                        super().__init__(*args, **kw)
                chain.AnsweringTransport = Variant     # what hops and targets are built with
                try:
                    with SessionManager(self.inv) as m:
                        sid = m.open(self.targets[0]).id
                        m.command(sid, "seq 1 1000")
                        for _ in range(3):
                            dt, res = timed(lambda: m.command(sid, f"seq 1 {n}", wait=600))
                            assert res.total == want[0]  # type: ignore[union-attr]
                            self.s(f"tp/{label}").add(dt)
                finally:
                    chain.AnsweringTransport = orig
        self._floor(n, want)
        for label, *_ in variants:
            results.append(f"{label} {self.s(f'tp/{label}').cell()}")
        self.notes.append(f"transport variants, seq 1 {n} ({want[0] / 1e6:.1f} MB) in an open "
                          "session to target1 through both jumps, all in this run: " + "; ".join(results))

    def _floor(self, n: int, want: tuple[int, str]) -> None:
        """The transports alone: the same bytes over an exec channel (no pty) on an open
        connection to target1, beside `ssh -S` over a ControlMaster, interleaved."""
        from phonehome_jump.direct import DirectChannel

        rounds = 2 * self.args.variant_rounds + 1
        log(f"throughput floor: {rounds} × seq 1 {n} over an exec channel, and over a ControlMaster")
        out = self.ossh.tmp / "floor.out"
        self.ossh.start_master("cm-target1", self.ossh.cm_target)
        try:
            with SessionManager(self.inv) as m:
                target = m.inventory.target(self.targets[0])
                held = DirectChannel(m, target)
                held.connect()                      # the open connection every exec reuses

                def once() -> tuple[int, str]:
                    d = DirectChannel(m, target)
                    try:
                        chan, h, length = d.exec(f"seq 1 {n}"), hashlib.sha256(), 0
                        while data := chan.recv(1 << 20):
                            h.update(data)
                            length += len(data)
                        return length, h.hexdigest()
                    finally:
                        d.close()
                try:
                    once()
                    for _ in range(rounds):
                        dt, got = timed(once)
                        assert got == want, "exec channel output differs from seq's"
                        self.s("floor/phj").add(dt)
                        dt, _ = run_child([SSH, "-F", str(self.ossh.cfg), "-S", str(self.ossh.cm_target),
                                           "cm-target1", f"seq 1 {n}"], out)
                        assert file_digest(out) == want
                        self.s("floor/cm").add(dt)
                finally:
                    held.close()
        finally:
            self.ossh.stop_master("cm-target1", self.ossh.cm_target)
            out.unlink(missing_ok=True)

    def oneshot(self) -> None:
        """`phonehome-jump run` (a new process each time) against `ssh -J`: start and bulk."""
        a = self.args
        cli = str(Path(sys.executable).parent / "phonehome-jump")
        env = dict(os.environ)
        run = [cli, "--inventory", str(self.lab.inventory), "run", self.targets[0], "--"]
        ssh = [SSH, "-F", str(self.ossh.cfg), "-J", "jump1,jump2", f"phjkey@{self.lab.addr('target1')}"]
        out = self.ossh.tmp / "oneshot.out"
        log(f"one-shot: {a.fresh} × run true and ssh -J true")
        base_rss = 0
        for _ in range(a.fresh):
            dt, rss = run_child([*run, "true"], out, env)
            base_rss = max(base_rss, rss)
            self.s("runtrue/phj").add(dt)
            dt, _ = run_child([*ssh, "true"], out)
            self.s("runtrue/fresh").add(dt)
        n = min(10_000_000, a.max_lines)
        want = seq_digest(n)
        log(f"one-shot: 3 × run seq 1 {n} and ssh -J seq 1 {n}, output to a file")
        peak = ssh_peak = 0
        for _ in range(3):
            dt, rss = run_child([*run, f"seq 1 {n}"], out, env)
            assert file_digest(out) == want, "run: output differs from seq's"
            peak = max(peak, rss)
            self.s("runbig/phj").add(dt)
            dt, rss = run_child([*ssh, f"seq 1 {n}"], out)
            assert file_digest(out) == want
            ssh_peak = max(ssh_peak, rss)
            self.s("runbig/fresh").add(dt)
        out.unlink()
        self.s("runbig/phj").extra = f"; peak RSS {mib(peak)} (+{mib(peak - base_rss)} over `run true`)"
        self.s("runbig/fresh").extra = f"; ssh peak RSS {mib(ssh_peak)}"
        self.s("runtrue/phj").extra = f"; peak RSS {mib(base_rss)}"

    def files(self) -> None:
        """FILE_MB MiB up and down through jump1 → jump2, cold (a new manager each copy), beside
        ``scp -J jump1,jump2`` (three fresh logins each); bytes checked on both sides."""
        n = self.args.file_rounds
        src = Path(tempfile.mkdtemp(prefix="phj-bench-files-")) / "blob"
        try:
            with open(src, "wb") as fh:
                for _ in range(FILE_MB):
                    fh.write(os.urandom(1 << 20))
            digest = hashlib.sha256(src.read_bytes()).hexdigest()
            back = src.with_name("back")
            remote = "/tmp/phj-bench-blob"
            log(f"files: {n} × {FILE_MB} MiB upload and download, phonehome-jump and scp -J")
            for _ in range(n):
                with SessionManager(self.inv) as m:
                    dt, res = timed(lambda: m.upload(self.targets[0], str(src), remote))
                assert res.sha256 == digest, res                       # type: ignore[union-attr]
                self.s("up/phj").add(dt)
                with SessionManager(self.inv) as m:
                    dt, res = timed(lambda: m.download(self.targets[0], remote, str(back)))
                assert res.sha256 == digest, res                       # type: ignore[union-attr]
                self.s("down/phj").add(dt)
                back.unlink()
            scp = [shutil.which("scp") or "scp", "-q", "-F", str(self.ossh.cfg), "-J", "jump1,jump2"]
            dest = f"phjkey@{self.lab.addr('target1')}:{remote}"
            for _ in range(n):
                dt, _ = timed(lambda: subprocess.run([*scp, str(src), dest], check=True,
                                                     stdin=subprocess.DEVNULL, timeout=600))
                self.s("up/fresh").add(dt)
                dt, _ = timed(lambda: subprocess.run([*scp, dest, str(back)], check=True,
                                                     stdin=subprocess.DEVNULL, timeout=600))
                self.s("down/fresh").add(dt)
                assert hashlib.sha256(back.read_bytes()).hexdigest() == digest
                back.unlink()
            for key in ("up", "down"):
                ratio = self.r[f"{key}/phj"].median / self.r[f"{key}/fresh"].median
                self.notes.append(f"{FILE_MB} MiB {key}load: phonehome-jump / scp -J = {ratio:.2f}× "
                                  "(target ≤ 1.5×)")
        finally:
            shutil.rmtree(src.parent, ignore_errors=True)


# ----------------------------------------------------------------------------- report

def _bytes(n: int) -> str:
    """Size of `seq 1 n`'s output: numbers of d digits, plus a newline each."""
    size = sum((min(n, 10**d - 1) - 10**(d - 1) + 1) * (d + 1)
               for d in range(1, len(str(n)) + 1) if n >= 10**(d - 1))
    return f"{size / 1e6:.1f} MB" if size >= 1e6 else f"{size / 1e3:.1f} kB"


ROWS: list[tuple[str, str, Any]] = [
    # key, label, target: seconds, ("×", factor, column) against OpenSSH's median, or None
    ("echo", "`echo hi` round trip, open session", 0.010),
    ("seq", f"`seq 1 {SEQ_N}` ({len(SEQ_EXPECTED):,} B), open session", 0.030),
    ("cold", "open session, cold (no hops up)", 0.100),
    ("warm", "open session, chain already up", 0.040),
    ("share", "open a second session to a host (its login shared)", None),
    ("fan", f"{FANOUT} sessions + 1 command each, concurrent (logins shared: one per host)", 0.8),
    ("fan1", "the same, every session its own login", 0.8),
    ("mcp", "MCP overhead of ssh_session_command (stdio)", 0.003),
    ("svc", f"MCP over HTTP: `echo hi` on an idle session while {SVC_CLIENTS - 1} clients run "
            f"{SVC_CALLS} calls (unloaded in brackets)", 0.100),
    ("wf", f"5-step workflow, {WF_HOSTS} hosts, one shared two-hop chain (wall)", 0.400),
    ("rss", "RSS per session (50 open)", None),
    *[(f"out{n}", f"`seq 1 {n:.0e}`".replace("e+0", "e") + f" ({_bytes(n)}), open session",
       ("×", 1.5, "cm") if n == 1_000_000 else ("rss", 64 << 10) if n == 10_000_000 else None)
      for n in SCALES],
    ("floor", f"`seq 1 {THROUGHPUT_N:.0e}`".replace("e+0", "e") + " (6.9 MB), exec channel on an "
              "open connection (no pty): the transports' throughput", ("×", 1.5, "cm")),
    ("page", f"page through `seq 1 {PAGE_N:.0e}`".replace("e+0", "e") + " (30.9 MB), read(offset=)", None),
    ("pages", "the same, 2 secrets registered", None),
    ("runtrue", "`phonehome-jump run HOST -- true` (new process) vs `ssh -J`", ("×", 1.0, "fresh")),
    ("runbig", "`run HOST -- seq 1 1e7` (78.9 MB) to a file vs `ssh -J`", ("×", 2.0, "fresh")),
    ("up", "100 MiB upload, cold, two jumps (SFTP vs scp -J)", None),
    ("down", "100 MiB download, cold, two jumps (SFTP vs scp -J)", None),
]


def table(b: Bench, markdown: bool) -> str:
    head = ["measurement", "phonehome-jump", "OpenSSH ControlMaster", "OpenSSH fresh -J", "target"]
    rows = []
    for key, label, target in ROWS:
        if not any(k.startswith(key + "/") for k in b.r):
            continue                            # a section that did not run (--only)
        phj = b.r.get(f"{key}/phj", Sample())
        value, cell = (phj.median, phj.cell()) if phj.values else (None, "—")
        if key == "mcp":      # the difference of two medians measured side by side
            via, core = b.r.get("mcp/mcp", Sample()), b.r.get("mcp/core", Sample())
            if via.values and core.values:
                value = via.median - core.median
                cell = (f"{fmt_time(value)} (MCP {fmt_time(via.median)} vs core {fmt_time(core.median)}, "
                        f"n={len(via.values)})")
        if key == "svc" and phj.values:   # loaded beside unloaded, with p99 and the load's throughput
            idle, wall = b.r["svc/idle"], b.r["svc/wall"].values[0]
            cell = (f"{fmt_time(phj.median)} (p99 {fmt_time(p99(phj.values))}, n={len(phj.values)}) "
                    f"[{fmt_time(idle.median)}, p99 {fmt_time(p99(idle.values))}]; load "
                    f"{SVC_CALLS / wall:.1f} calls/s")
        tgt = "—"
        if isinstance(target, tuple) and target[0] == "rss":     # peak RSS above baseline
            peak = b.r.get(f"{key}/phjpeak", Sample())
            tgt = f"peak RSS ≤ +{mib(target[1])}"
            if peak.values:
                tgt += " ✓" if max(peak.values) <= target[1] else " ✗ missed"
        elif isinstance(target, tuple):        # relative to OpenSSH's median in this run
            _, factor, col = target
            other = b.r.get(f"{key}/{col}", Sample())
            tgt = f"≤ {factor:g}× {'ControlMaster' if col == 'cm' else 'ssh -J'}"
            if value is not None and other.values:
                ratio = value / other.median
                tgt += f" ({ratio:.2f}×)" + (" ✓" if ratio <= factor else " ✗ missed")
        elif target is not None:
            tgt = f"≤ {fmt_time(target).replace('.00 ', ' ').replace('.0 ', ' ')}"
            if value is not None:
                tgt += " ✓" if value <= target else " ✗ missed"
        rows.append([label, cell, b.r.get(f"{key}/cm", Sample()).cell(),
                     b.r.get(f"{key}/fresh", Sample()).cell(), tgt])
    if markdown:
        out = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
        out += ["| " + " | ".join(r) + " |" for r in rows]
        return "\n".join(out)
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    line = lambda r: "  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip()  # noqa: E731
    return "\n".join([line(head), "  ".join("-" * w for w in widths), *map(line, rows)])


LEGEND = [
    "cells: median (p90, n). OpenSSH cells include starting the ssh process (what a script pays).",
    "ControlMaster column: echo/seq over a master to target1 (`ssh -S`); open with the chain up and the "
    "fan-out with own logins = `ssh -J hop-jump2` through a master on jump2 (new target login, hops shared); "
    "second session = `ssh -S` `true` on a master to target1; fan-out with logins shared = a master per "
    "target through the jump2 master, then `ssh -S`; fan-outs include starting their masters.",
    "fresh -J column: `ssh -J jump1,jump2 target …`, nothing shared (three SSH logins per command).",
    "phonehome-jump fan-out starts from a fresh SessionManager (chain dialed once, shared by all 50); "
    "logins shared: a login per host and its shells as channels on it, like a ControlMaster per target.",
    "MCP row: median of `echo hi` via an MCP client → `phonehome-jump serve` (stdio) minus median of "
    "`SessionManager.command` in-process, alternating in blocks of 50, both to target1 through both jumps.",
    f"service row: `phonehome-jump serve --http`, {SVC_CLIENTS} MCP clients (streamable HTTP); "
    f"{SVC_CLIENTS - 1} of them run {SVC_CALLS} × `{SVC_LOAD}` over 2 sessions each while the "
    "10th times `echo hi` on its idle session to target1; unloaded = the same echo before the load; "
    "load = calls/s of the loading clients.",
    f"workflow row: `run_workflow` of a 5-step workflow (cd, pwd + capture, echo + assert, uname + assert, "
    f"test) on {WF_HOSTS} inventory hosts spread over the targets, all behind jump1 → jump2, concurrency "
    f"{WF_HOSTS}, each run from a new SessionManager (chain dialed once per run, shared by all hosts); "
    f"OpenSSH, alternating run by run: the same {WF_HOSTS} hosts in parallel, each host's commands as "
    "one exec (`cd /tmp && pwd && echo … && uname -s && test -d /tmp`, output checked; no pty, no login "
    "shell: less work than a session), through a master on jump2 started in the timed part "
    "(ControlMaster column) or `ssh -J jump1,jump2` (fresh column).",
]


# ----------------------------------------------------------------------------- main

def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt

def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=200,
                    help="echo rounds (default 200); the other counts scale with it: seq N/7, opens and "
                         "fresh ssh N/10, fan-outs 3 (1 for OpenSSH), unless set below")
    ap.add_argument("--seq", type=int, help="seq 1 5000 rounds")
    ap.add_argument("--opens", type=int, help="session opens per variant")
    ap.add_argument("--fresh", type=int, help="fresh ssh -J rounds for echo/seq")
    ap.add_argument("--fanouts", type=int, help="phonehome-jump fan-out rounds")
    ap.add_argument("--ssh-fanouts", type=int, help="OpenSSH fan-out rounds (each: master + fresh)")
    ap.add_argument("--workflows", type=int, default=5, help="workflow runs (default 5)")
    ap.add_argument("--file-rounds", type=int, default=3, help="100 MiB copies each way (default 3)")
    ap.add_argument("--only", metavar="LIST",
                    help="comma-separated sections to run: commands,mcp,service,opens,fanout,"
                         "workflow,output,paging,throughput,oneshot,files (default all)")
    ap.add_argument("--max-lines", type=int, default=10_000_000,
                    help="largest `seq 1 N` of the output and one-shot rows (default 1e7)")
    ap.add_argument("--variant-rounds", type=int, default=2,
                    help="rounds over the transport variants (3 commands each; default 2)")
    ap.add_argument("--targets", type=int, default=5, help="lab targets (default 5)")
    ap.add_argument("--markdown", action="store_true", help="print a Markdown table")
    ap.add_argument("--wait", type=float, default=900, help="seconds to wait for another lab to go away")
    a = ap.parse_args(argv)
    a.seq = a.seq if a.seq is not None else max(3, math.ceil(a.rounds / 7))
    a.opens = a.opens if a.opens is not None else max(3, math.ceil(a.rounds / 10))
    a.fresh = a.fresh if a.fresh is not None else max(3, math.ceil(a.rounds / 10))
    a.fanouts = a.fanouts if a.fanouts is not None else 3
    a.ssh_fanouts = a.ssh_fanouts if a.ssh_fanouts is not None else 1

    if os.geteuid() != 0:
        print("bench: the sshd lab needs root (network namespaces, sshd)", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, _interrupt)     # SIGTERM tears down like Ctrl-C does

    state = Path(os.environ.get("PHJ_LAB_STATE", "/tmp/phonehome-jump-lab-bench"))
    lab = Lab(state, n_targets=a.targets)
    wait_for_free_lab(a.wait)
    t_start = time.perf_counter()
    load0 = os.getloadavg()[0]
    brought_up = False
    tmp = Path(tempfile.mkdtemp(prefix="phj-bench-"))
    bench = None
    try:
        log(f"lab up: {a.targets} targets, state {state}")
        brought_up = True          # up() may fail half-way: tear down whatever it made
        lab.up()
        os.environ.update(lab.env)
        ossh = OpenSSH(lab, tmp)
        bench = Bench(lab, ossh, a)
        bench.warm_up()
        only = set(a.only.split(",")) if a.only else None
        for section in ("commands", "mcp", "service", "opens", "fanout", "workflow", "output",
                        "throughput", "oneshot", "files", "paging"):   # paging last: it registers secrets
            if only is None or section in only:
                settle()
                getattr(bench, section)()
    except KeyboardInterrupt:
        log("interrupted: tearing down")
        return 130
    finally:
        if bench is not None:
            for host, sock in (("cm-target1", bench.ossh.cm_target), ("hop-jump2", bench.ossh.cm_jump2)):
                try:
                    bench.ossh.stop_master(host, sock)
                except Exception:
                    pass
        if brought_up:
            log("lab down")
            lab.down()
        shutil.rmtree(tmp, ignore_errors=True)
    elapsed = time.perf_counter() - t_start
    assert bench is not None
    out = [*machine(), f"lab: local → jump1 → jump2 → {a.targets} targets (OpenSSH sshd in netns); "
           f"run took {elapsed:.0f} s; load average {load0:.1f} at start, {os.getloadavg()[0]:.1f} at end", ""]
    out.append(table(bench, a.markdown))
    out.append("")
    if "wf/phj" in bench.r:
        r = bench.r
        bench.notes.append(
            f"workflow per host ({WF_HOSTS} hosts × {a.workflows} runs): {r['wf/host'].cell()} "
            f"from open to close; of which session open and bookkeeping (host time minus its "
            f"steps' command times) {r['wf/overhead'].cell()}, the 5 commands {r['wf/steps'].cell()}")
        own, rest = r["wf/cpu-self"].median, r["wf/cpu-rest"].median
        cm = r.get("wf/cpu-cm", Sample())
        bench.notes.append(
            f"workflow CPU per run (medians, {os.cpu_count()} CPUs): this process {fmt_time(own)}, "
            f"the rest of the machine (the lab's sshds and shells, the kernel) {fmt_time(rest)}; "
            f"the machine {r['wf/busy'].median:.0f}% busy through the run. Even a client that used "
            f"no CPU could not finish much below {fmt_time(rest / (os.cpu_count() or 1))} here, the rest's "
            f"CPU spread over all cores"
            + (f"; OpenSSH doing the same work through the jump2 master: {fmt_time(cm.median)} of "
               f"CPU in all" if cm.values else ""))
    out += [("- " if a.markdown else "") + n for n in LEGEND + bench.notes]
    print("\n".join(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
