"""Processes of the ET Phone Home stand-in (tests/etphonehome_standin) around the sshd lab.

The client runs as ``phonehome-jump-reach`` (the unmodified stand-in client with the plugin
added), reverse-forwards a port over a real SSH connection to jump1 (an sshd of its own on
port 2222, so jump1's port 22 can go down without taking the tunnel along), and the server
runs inside jump1's network namespace, where that port listens.
"""

from __future__ import annotations

import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

STANDIN = Path(__file__).resolve().parent.parent / "etphonehome_standin"
REACH = str(Path(sys.executable).parent / "phonehome-jump-reach")
TUNNEL_PORT = 2222


def start_tunnel_sshd(lab) -> tuple[str, Path]:
    """A second sshd on jump1 (port 2222) for the tunnel; returns (address, known_hosts)."""
    conf = (lab.state / "sshd_jump1.conf").read_text()
    pidfile = lab.state / "jump1-tunnel.pid"
    conf = conf.replace("Port 22\n", f"Port {TUNNEL_PORT}\n").replace(
        str(lab.state / "jump1.pid"), str(pidfile))
    path = lab.state / "sshd_jump1_tunnel.conf"
    path.write_text(conf)
    stop_tunnel_sshd(lab)
    ns = lab.nodes["jump1"].ns
    subprocess.run(["ip", "netns", "exec", ns, "/usr/sbin/sshd", "-f", str(path), "-E",
                    str(lab.state / "sshd_jump1_tunnel.log")], check=True)
    deadline = time.monotonic() + 10
    while not subprocess.run(["ip", "netns", "exec", ns, "ss", "-Hltn", f"sport = :{TUNNEL_PORT}"],
                             capture_output=True, text=True).stdout.strip():
        assert time.monotonic() < deadline, "the tunnel sshd did not start"
        time.sleep(0.05)
    addr = lab.addr("jump1")
    key = lab.host_key_line("jump1").split(None, 1)[1]
    known = lab.state / "known_hosts_tunnel"
    known.write_text(f"[{addr}]:{TUNNEL_PORT} {key}\n")
    return addr, known


def stop_tunnel_sshd(lab) -> None:
    pidfile = lab.state / "jump1-tunnel.pid"
    try:
        os.kill(int(pidfile.read_text()), signal.SIGTERM)
    except (FileNotFoundError, ProcessLookupError, ValueError):
        pass


def copy_standin(dest: Path) -> Path:
    """A private copy of the stand-in client (its updater rewrites its own files)."""
    shutil.copytree(STANDIN, dest, ignore=shutil.ignore_patterns("__pycache__", "server.py"))
    return dest


class Client:
    """``phonehome-jump-reach`` running the stand-in client; ``port`` is its tunnel port."""

    def __init__(self, lab, tunnel: tuple[str, Path], client_path: Path, state: Path,
                 inventory: Path, **env: str) -> None:
        addr, known = tunnel
        self.lines: queue.Queue[str] = queue.Queue()
        self.log: list[str] = []
        self.proc = subprocess.Popen(
            [REACH, "-s", addr, "-p", str(TUNNEL_PORT), "-u", "phjkey", "-k", str(lab.key_file),
             "--known-hosts", str(known)],
            stderr=subprocess.PIPE, text=True,
            env={**os.environ, "PHONEHOME_JUMP_INVENTORY": str(inventory),
                 "PHONEHOME_JUMP_AGENT_STATE": str(state),
                 "PHONEHOME_JUMP_CLIENT_PATH": str(client_path), **env})
        threading.Thread(target=self._drain, daemon=True).start()
        self.port = self.wait_port()

    def _drain(self) -> None:
        for line in self.proc.stderr:
            self.log.append(line)
            self.lines.put(line)
        self.lines.put("")

    def wait_for(self, text: str, timeout: float = 30) -> str:
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self.lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"no {text!r} from the client:\n{''.join(self.log)}") from None
            if line == "":
                raise AssertionError(f"the client ended:\n{''.join(self.log)}")
            if text in line:
                return line

    def wait_port(self) -> int:
        return int(self.wait_for("Tunnel port:").rsplit(":", 1)[1])

    def stop(self, sig: int = signal.SIGTERM) -> str:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        self.proc.wait(timeout=30)
        time.sleep(0)   # the drain thread ends with the pipe
        text = "".join(self.log)
        assert "Traceback" not in text, text
        return text


class Server:
    """The stand-in server inside jump1's namespace, connected to the client's tunnel port."""

    def __init__(self, lab, port: int) -> None:
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", lab.nodes["jump1"].ns, sys.executable,
             str(STANDIN / "server.py"), str(port)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.replies: dict[Any, dict] = {}
        self.cond = threading.Condition()
        self.n = 0
        assert json.loads(self.proc.stdout.readline()) == {"ready": True}
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            msg = json.loads(line)
            with self.cond:
                self.replies[msg["tag"]] = msg
                self.cond.notify_all()

    def start(self, op: str, **args: Any) -> int:
        self.n += 1
        self.proc.stdin.write(json.dumps({"tag": self.n, "op": op, "args": args}) + "\n")
        self.proc.stdin.flush()
        return self.n

    def wait(self, tag: int, timeout: float = 90) -> dict:
        with self.cond:
            assert self.cond.wait_for(lambda: tag in self.replies, timeout), f"no reply to {tag}"
            return self.replies.pop(tag)

    def call(self, op: str, timeout: float = 90, **args: Any) -> dict:
        return self.wait(self.start(op, **args), timeout)

    def ok(self, op: str, **args: Any) -> Any:
        reply = self.call(op, **args)
        assert "result" in reply, reply
        return reply["result"]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.close()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
