"""The sshd lab: real OpenSSH servers in network namespaces, jump1 → jump2 → targets.

    local (root ns) ──10.N.1.0/24── jump1 ──10.N.2.0/24── jump2 ──br 10.N.3.0/24── target1..N

jump1 and jump2 do not forward IP, and the root namespace has no route past jump1,
so a target is reachable only by SSH through both jumps (a test proves it). Every
server has its own host key; the lab writes a known_hosts, a client key, an inventory
and an env file (passwords) into its state directory. Users:

- ``phjkey``  key auth (on the jumps and the targets)
- ``phjpass`` password auth
- ``phjsudo`` password auth, may sudo with its password
- ``phjsane`` key auth; its login profile resets the terminal (``stty sane``), as some
  sites' profiles do (what a server that ignores the pty's requested modes looks like), sets a
  ``PS0`` and a DEBUG trap that print around each command (as prompt frameworks do), and
  its ``~/.bash_logout`` appends the shell's pid to ``$PHJ_LOGOUT_MARK`` when that is set
- ``phjash``, ``phjdash``, ``phjzsh`` key auth; their login shells are busybox ``ash``
  (routers, Alpine, appliances), ``dash`` and ``zsh`` (its ``~/.zshrc`` sets a prompt, a
  precmd hook that titles the terminal, a chpwd hook, ``print_exit_value`` and ``correct``, as
  users' own do; without one zsh asks a new user questions) (:meth:`Lab.shell_host_yaml`)

Besides target1..N, ``stock1`` is a target whose sshd keeps OpenSSH's default settings
(``MaxStartups 10:30:100``: new connections are dropped at random past 10 unauthenticated
ones), as most real servers do. :meth:`Lab.drop` makes a node silently drop every packet
(iptables DROP inside its namespace: no RST, no ICMP, like a pulled cable or a firewall);
:meth:`Lab.undrop` heals it. Its inventory entry is :meth:`Lab.stock_host_yaml` (kept out of
the lab inventory, so host counts there stay the same).

``dropbear1`` runs dropbear, not OpenSSH (as many routers and embedded hosts do), with its
own defaults (its MOTD shown at login; key auth from ``~/.ssh/authorized_keys``, where the lab
adds its client key). Its inventory entry is :meth:`Lab.dropbear_host_yaml` (kept out of the
lab inventory too).

Every node serves SFTP except target3 (``NO_SFTP``), where file copies use SCP.

Needs root, ``ip`` (iproute2), ``iptables``, ``sshd``, ``dropbear`` (dropbear-bin), ``busybox``, ``zsh`` and ``sudo``. Used by the test suite, ``make demo``
and ``bench/``.  ``python tests/lab/sshlab.py up|down|status [--state DIR] [--targets N]``.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

# PHJ_LAB_NET (a number 100-254) picks the namespace names and the 10.N.0.0/16 range, so that
# several labs (a test run, a benchmark) can be up on one machine at once.
NET = int(os.environ.get("PHJ_LAB_NET", "199"))
PREFIX = f"phj{NET}-"
LAB_NET = f"10.{NET}.0.0/16"
DEFAULT_STATE = Path(os.environ.get("PHJ_LAB_STATE", f"/tmp/phonehome-jump-lab-{NET}"))
# The lab users are machine-wide, so their passwords are too (one file for every lab).
ENV_FILE = Path("/var/lib/phonehome-jump-lab/env.json")
USERS = ("phjkey", "phjpass", "phjsudo", "phjsane", "phjash", "phjdash", "phjzsh")
#: busybox runs as ash when called by that name; a login shell's name comes from its path
ASH = Path("/usr/local/lib/phonehome-jump-lab/ash")
SHELLS = {"phjash": str(ASH), "phjdash": "/bin/dash", "phjzsh": "/usr/bin/zsh"}
#: users with key auth on the dropbear target (phjash: an OpenWrt-like login, ash on dropbear)
DROPBEAR_USERS = ("phjkey", "phjash")
#: The one node without an SFTP subsystem, so file copies fall back to SCP there.
NO_SFTP = "target3"
SSHD = shutil.which("sshd", path="/usr/sbin:/usr/bin:/sbin") or "/usr/sbin/sshd"
DROPBEAR = shutil.which("dropbear", path="/usr/sbin:/usr/bin:/sbin") or "/usr/sbin/dropbear"


def run(*args: str, check: bool = True, input: str | None = None, ns: str | None = None) -> subprocess.CompletedProcess:
    cmd = (["ip", "netns", "exec", ns] if ns else []) + list(args)
    proc = subprocess.run(cmd, input=input, capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise RuntimeError(f"lab: {' '.join(cmd)} failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc


@dataclass
class Node:
    name: str          # jump1, jump2, target1, ...
    ns: str            # network namespace
    addr: str          # where the previous hop dials it
    stock: bool = False  # sshd with OpenSSH's default limits (MaxStartups 10:30:100)
    dropbear: bool = False   # dropbear instead of OpenSSH's sshd

    @property
    def host_key(self) -> str:      # its ``.pub`` beside it is in OpenSSH's format either way
        return f"{'dropbear' if self.dropbear else 'ssh'}_host_ed25519_key_{self.name}"


@dataclass
class Lab:
    state: Path = DEFAULT_STATE
    n_targets: int = 3
    nodes: dict[str, Node] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.state = Path(self.state)
        self.nodes = {
            "jump1": Node("jump1", PREFIX + "jump1", f"10.{NET}.1.2"),
            "jump2": Node("jump2", PREFIX + "jump2", f"10.{NET}.2.2"),
        }
        for i in range(1, self.n_targets + 1):
            self.nodes[f"target{i}"] = Node(f"target{i}", f"{PREFIX}target{i}", f"10.{NET}.3.{9 + i}")
        self.nodes["stock1"] = Node("stock1", f"{PREFIX}stock1", f"10.{NET}.3.200", stock=True)
        self.nodes["dropbear1"] = Node("dropbear1", f"{PREFIX}dropbear1", f"10.{NET}.3.201",
                                       dropbear=True)

    # -- paths the tests use -------------------------------------------------
    @property
    def key_file(self) -> Path:
        return self.state / "id_ed25519"

    @property
    def known_hosts(self) -> Path:
        return self.state / "known_hosts"

    @property
    def inventory(self) -> Path:
        return self.state / "inventory" / "lab.yaml"

    @property
    def env(self) -> dict[str, str]:
        return json.loads(ENV_FILE.read_text())

    def addr(self, name: str) -> str:
        return self.nodes[name].addr

    # -- bring up / tear down ------------------------------------------------
    def up(self) -> "Lab":
        if os.geteuid() != 0:
            raise PermissionError("the sshd lab needs root (network namespaces, sshd, users)")
        if not Path(SSHD).exists():
            raise FileNotFoundError("sshd not found: apt-get install openssh-server")
        if not Path(DROPBEAR).exists():
            raise FileNotFoundError("dropbear not found: apt-get install dropbear-bin")
        self.down(quiet=True)
        self.state.mkdir(parents=True, exist_ok=True)
        os.chmod(self.state, 0o711)   # users must reach authorized_keys; secrets inside are 0600
        self._keys()
        self._users()
        self._network()
        for node in self.nodes.values():
            self._write_sshd_config(node)
            self.start_sshd(node.name)
        self._known_hosts()
        self._write_inventory()
        return self

    def down(self, quiet: bool = False) -> None:
        for node in self.nodes.values():
            self.kill_sshd(node.name)
        existing = run("ip", "netns", "list", check=False).stdout
        for node in self.nodes.values():
            if node.ns in existing:
                run("ip", "netns", "del", node.ns, check=False)
        run("ip", "link", "del", PREFIX + "l0", check=False)
        run("ip", "route", "del", "unreachable", LAB_NET, check=False)

    def _keys(self) -> None:
        for node in self.nodes.values():
            key = self.state / node.host_key
            if key.exists():
                continue
            if node.dropbear:       # its own key format; the public half as OpenSSH writes it
                run("dropbearkey", "-t", "ed25519", "-f", str(key))
                pub = next(line for line in run("dropbearkey", "-y", "-f", str(key)).stdout.splitlines()
                           if line.startswith("ssh-ed25519 "))
                key.with_name(key.name + ".pub").write_text(pub + "\n")
            else:
                run("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key))
        if not self.key_file.exists():
            run("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "phj-lab", "-f", str(self.key_file))
        env_file = ENV_FILE
        if not env_file.exists():
            env_file.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            env = {"PHJ_LAB_PASSWORD": "pw-" + secrets.token_hex(8),
                   "PHJ_LAB_SUDO_PASSWORD": "sudo-" + secrets.token_hex(8)}
            env_file.write_text(json.dumps(env))
            os.chmod(env_file, 0o600)
        auth = self.state / "authorized_keys"
        auth.write_text((self.key_file.with_suffix(".pub")).read_text())
        os.chmod(auth, 0o644)

    def _users(self) -> None:
        # machine-wide (users, /etc/shells, authorized_keys): two labs coming up at once take turns
        with (ENV_FILE.parent / "users.lock").open("w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            self._users_locked()

    def _users_locked(self) -> None:
        env = self.env
        passwords = {"phjkey": "!", "phjpass": env["PHJ_LAB_PASSWORD"], "phjsudo": env["PHJ_LAB_SUDO_PASSWORD"],
                     "phjsane": "!", "phjash": "!", "phjdash": "!", "phjzsh": "!"}
        ASH.parent.mkdir(parents=True, exist_ok=True)
        if not ASH.is_symlink():
            ASH.symlink_to(shutil.which("busybox") or "/bin/busybox")
        shells = Path("/etc/shells")        # dropbear refuses a login shell not listed there
        listed = shells.read_text().splitlines() if shells.exists() else []
        if str(ASH) not in listed:
            shells.write_text("".join(line + "\n" for line in [*listed, str(ASH)]))
        for user in USERS:
            if run("id", user, check=False).returncode != 0:
                run("useradd", "-m", "-s", SHELLS.get(user, "/bin/bash"), user)
            elif user in SHELLS:
                run("usermod", "-s", SHELLS[user], user)
            if passwords[user] != "!":
                run("chpasswd", input=f"{user}:{passwords[user]}\n")
            else:   # key-only account: unlock it without a usable password
                run("usermod", "-p", "*", user)
        # dropbear reads ~/.ssh/authorized_keys only: each lab's client key is added (labs
        # that are up at once each need theirs; the keys are the labs' own, made for them)
        ours = self.key_file.with_suffix(".pub").read_text().strip()
        for user in DROPBEAR_USERS:
            ssh_dir = Path(f"/home/{user}/.ssh")
            ssh_dir.mkdir(mode=0o700, exist_ok=True)
            shutil.chown(ssh_dir, user, user)
            keys = ssh_dir / "authorized_keys"
            have = keys.read_text().splitlines() if keys.exists() else []
            if ours not in have:
                keys.write_text("".join(line + "\n" for line in [*have, ours]))
            os.chmod(keys, 0o600)
            shutil.chown(keys, user, user)
        zshrc = Path("/home/phjzsh/.zshrc")     # as users' own do: a prompt, hooks, options
        zshrc.write_text("PROMPT='%n@%m %~ %# '\nprecmd() { print -Pn '\\e]0;%n@%m: %~\\a' }\n"
                         "chpwd() { echo '[chpwd]' }\nsetopt print_exit_value correct\n")
        shutil.chown(zshrc, "phjzsh", "phjzsh")
        Path("/etc/sudoers.d").mkdir(exist_ok=True)
        profile = Path("/home/phjsane/.bash_profile")
        # and what prompt frameworks add: a PS0 and a DEBUG trap that print around each command
        profile.write_text("stty sane\n. ~/.profile\nPS0='[ps0]'\ntrap 'printf \"[dbg]\"' DEBUG\n")
        shutil.chown(profile, "phjsane", "phjsane")
        logout = Path("/home/phjsane/.bash_logout")    # a mark for the logout tests, when asked
        logout.write_text('[ -n "$PHJ_LOGOUT_MARK" ] && echo "$$" >> "$PHJ_LOGOUT_MARK"\n')
        shutil.chown(logout, "phjsane", "phjsane")
        sudoers = Path("/etc/sudoers.d/phj-lab")
        sudoers.write_text("phjsudo ALL=(ALL) ALL\nDefaults:phjsudo !lecture, timestamp_timeout=0\n")
        os.chmod(sudoers, 0o440)

    def _network(self) -> None:
        j1, j2 = self.nodes["jump1"], self.nodes["jump2"]
        for node in self.nodes.values():
            run("ip", "netns", "add", node.ns)
            run("ip", "link", "set", "lo", "up", ns=node.ns)
            run("sysctl", "-q", "-w", "net.ipv4.ip_forward=0", ns=node.ns)
        # Nothing for the lab's range may leave through the default route: only jump1's link is reachable.
        run("ip", "route", "replace", "unreachable", LAB_NET)
        # local ↔ jump1
        run("ip", "link", "add", PREFIX + "l0", "type", "veth", "peer", "name", "eth0", "netns", j1.ns)
        run("ip", "addr", "add", f"10.{NET}.1.1/24", "dev", PREFIX + "l0")
        run("ip", "link", "set", PREFIX + "l0", "up")
        run("ip", "addr", "add", f"{j1.addr}/24", "dev", "eth0", ns=j1.ns)
        run("ip", "link", "set", "eth0", "up", ns=j1.ns)
        # jump1 ↔ jump2
        run("ip", "link", "add", "eth1", "netns", j1.ns, "type", "veth", "peer", "name", "eth0", "netns", j2.ns)
        run("ip", "addr", "add", f"10.{NET}.2.1/24", "dev", "eth1", ns=j1.ns)
        run("ip", "link", "set", "eth1", "up", ns=j1.ns)
        run("ip", "addr", "add", f"{j2.addr}/24", "dev", "eth0", ns=j2.ns)
        run("ip", "link", "set", "eth0", "up", ns=j2.ns)
        # jump2 ↔ targets, over a bridge inside jump2
        run("ip", "link", "add", "br0", "type", "bridge", ns=j2.ns)
        run("ip", "addr", "add", f"10.{NET}.3.1/24", "dev", "br0", ns=j2.ns)
        run("ip", "link", "set", "br0", "up", ns=j2.ns)
        for i, node in enumerate(n for n in self.nodes.values()
                                 if n.name.startswith(("target", "stock", "dropbear"))):
            port = f"t{i + 1}"
            run("ip", "link", "add", port, "netns", j2.ns, "type", "veth", "peer", "name", "eth0", "netns", node.ns)
            run("ip", "link", "set", port, "master", "br0", ns=j2.ns)
            run("ip", "link", "set", port, "up", ns=j2.ns)
            run("ip", "addr", "add", f"{node.addr}/24", "dev", "eth0", ns=node.ns)
            run("ip", "link", "set", "eth0", "up", ns=node.ns)

    def _write_sshd_config(self, node: Node) -> None:
        if node.dropbear:
            return                  # dropbear takes options on its command line
        cfg = f"""\
ListenAddress {node.addr}
Port 22
HostKey {self.state / node.host_key}
PidFile {self.state / (node.name + '.pid')}
AuthorizedKeysFile {self.state / 'authorized_keys'}
StrictModes no
UsePAM no
PasswordAuthentication yes
KbdInteractiveAuthentication no
PubkeyAuthentication yes
PermitRootLogin no
AllowUsers {' '.join(USERS)}
AllowTcpForwarding yes
UseDNS no
PrintMotd no
PrintLastLog no
{"" if node.name == NO_SFTP else "Subsystem sftp internal-sftp"}
""" + ("" if node.stock else "MaxStartups 200\nMaxSessions 100\n")
        (self.state / f"sshd_{node.name}.conf").write_text(cfg)

    def start_sshd(self, name: str) -> None:
        node = self.nodes[name]
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
        conf = self.state / f"sshd_{node.name}.conf"
        log = self.state / f"sshd_{node.name}.log"
        if node.dropbear:       # forks into the background; logs to the file it is given
            with log.open("a") as err:
                subprocess.run(["ip", "netns", "exec", node.ns, DROPBEAR, "-E", "-w",
                                "-r", str(self.state / node.host_key), "-p", f"{node.addr}:22",
                                "-P", str(self.state / f"{node.name}.pid")],
                               stdin=subprocess.DEVNULL, stdout=err, stderr=err, check=True)
        else:
            run(SSHD, "-f", str(conf), "-E", str(log), ns=node.ns)   # daemonises once listening
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            if run("ss", "-Hltn", "sport = :22", ns=node.ns, check=False).stdout.strip():
                return
            time.sleep(0.02)
        raise RuntimeError(f"lab: sshd on {name} did not start; see {log}")

    def kill_sshd(self, name: str) -> None:
        """Kill the listener and every connection it serves (a dead hop, as a crash would leave it)."""
        node = self.nodes[name]
        pids = run("ip", "netns", "pids", node.ns, check=False).stdout.split()
        for pid in pids:
            try:
                os.kill(int(pid), signal.SIGKILL)
            except (ProcessLookupError, ValueError):
                pass

    def stock_host_yaml(self, name: str = "lab-stock1") -> str:
        """An inventory host entry (under ``hosts:``) for the stock-sshd target.

        Not in the lab inventory itself, so host counts there stay as they are.
        """
        return (f"  {name}: {{host: {self.addr('stock1')}, groups: [lab], "
                "description: stock sshd settings (MaxStartups 10:30:100)}\n")

    def dropbear_host_yaml(self, name: str = "lab-dropbear", user: str | None = None) -> str:
        """An inventory host entry for the dropbear target (kept out of the lab inventory);
        ``user``: one of ``DROPBEAR_USERS`` other than phjkey."""
        login = f"credentials: lab-key, username: {user}, " if user else ""
        return (f"  {name}: {{host: {self.addr('dropbear1')}, groups: [lab], {login}"
                "description: dropbear sshd}\n")

    def shell_host_yaml(self, user: str) -> str:
        """An inventory host ``lab-<user>`` on target1 for a user whose login shell is not bash
        (``phjash``, ``phjdash``; kept out of the lab inventory)."""
        return (f"  lab-{user}: {{host: {self.addr('target1')}, via: jump2, credentials: lab-key, "
                f"username: {user}}}\n")

    def sane_host_yaml(self, name: str = "lab-sane") -> str:
        """An inventory host entry for ``phjsane`` on target1 (kept out of the lab inventory)."""
        return (f"  {name}: {{host: {self.addr('target1')}, via: jump2, credentials: lab-key, "
                "username: phjsane}\n")

    def drop(self, name: str) -> None:
        """Silently drop every packet into and out of node ``name`` (no RST, no ICMP)."""
        ns = self.nodes[name].ns
        for chain in ("INPUT", "OUTPUT"):
            run("iptables", "-w", "-I", chain, "-j", "DROP", ns=ns)

    def undrop(self, name: str) -> None:
        ns = self.nodes[name].ns
        for chain in ("INPUT", "OUTPUT"):
            run("iptables", "-w", "-F", chain, ns=ns)

    def _known_hosts(self) -> None:
        lines = []
        for node in self.nodes.values():
            pub = (self.state / (node.host_key + ".pub")).read_text().split()
            lines.append(f"{node.addr} {pub[0]} {pub[1]}")
        self.known_hosts.write_text("\n".join(lines) + "\n")

    def host_key_line(self, name: str) -> str:
        node = self.nodes[name]
        pub = (self.state / (node.host_key + ".pub")).read_text().split()
        return f"{node.addr} {pub[0]} {pub[1]}"

    def _write_inventory(self) -> None:
        self.inventory.parent.mkdir(exist_ok=True)
        targets = [n for n in self.nodes.values() if n.name.startswith("target")]
        hosts = []
        for n in targets:
            hosts.append(f"  lab-{n.name}: {{host: {n.addr}, groups: [lab]}}")
        first = targets[0]
        text = f"""\
# The sshd lab's inventory, written by tests/lab/sshlab.py.
defaults:
  known_hosts: {self.known_hosts}
  host_key_policy: strict
  keepalive: 15
credentials:
  lab-key: {{username: phjkey, key_file: {self.key_file}, use_agent: false}}
  lab-password: {{username: phjpass, password: "env:PHJ_LAB_PASSWORD", use_agent: false}}
  lab-sudo: {{username: phjsudo, password: "env:PHJ_LAB_SUDO_PASSWORD", sudo_password: "env:PHJ_LAB_SUDO_PASSWORD", use_agent: false}}
jump_hosts:
  jump1: {{host: {self.addr('jump1')}, credentials: lab-key}}
  jump2: {{host: {self.addr('jump2')}, credentials: lab-key, via: jump1}}
groups:
  lab: {{via: jump2, credentials: lab-key, tags: [lab]}}
hosts:
{chr(10).join(hosts)}
  lab-password: {{host: {first.addr}, via: jump2, credentials: lab-password, tags: [lab]}}
  lab-sudo: {{host: {first.addr}, via: jump2, credentials: lab-sudo, tags: [lab]}}
  lab-jump1: {{host: {self.addr('jump1')}, credentials: lab-key, tags: [lab]}}
  lab-jump2: {{host: {self.addr('jump2')}, via: jump1, credentials: lab-key, tags: [lab]}}
"""
        self.inventory.write_text(text)

    # -- emulated network devices (fakenos), inside a target's namespace ----------------
    @property
    def devices_inventory(self) -> Path:
        return self.state / "devices" / "lab-devices.yaml"

    def start_devices(self, node: str = "target3", timeout: float = 120.0) -> Path:
        """Run the fakenos devices of ``devices.py`` inside ``node``'s namespace, behind both jumps.

        Returns their inventory (the lab's jumps, then one host per device). The lab's
        ``down`` ends them with the namespace's processes.
        """
        import devices   # this directory; needs fakenos (the test extra)

        n = self.nodes[node]
        key = self.state / "device_rsa_key"
        if not key.exists():   # fakenos's server takes an RSA key in PEM form
            run("ssh-keygen", "-q", "-t", "rsa", "-b", "2048", "-m", "PEM", "-N", "", "-f", str(key))
        ready = self.state / "devices.ready"
        ready.unlink(missing_ok=True)
        log = open(self.state / "devices.log", "ab")
        env = {**os.environ, **self.env}
        subprocess.Popen(["ip", "netns", "exec", n.ns, sys.executable, str(Path(__file__).with_name("devices.py")),
                          "serve", "--addr", n.addr, "--key", str(key), "--ready", str(ready)],
                         stdout=log, stderr=log, stdin=subprocess.DEVNULL, env=env, start_new_session=True)
        deadline = time.monotonic() + timeout
        ports = devices.ports()
        while time.monotonic() < deadline:
            if ready.exists() and all(
                    run("ss", "-Hltn", f"sport = :{p}", ns=n.ns, check=False).stdout.strip() for p in ports):
                break
            time.sleep(0.05)
        else:
            raise RuntimeError(f"lab: the emulated devices did not start; see {self.state / 'devices.log'}")
        pub = key.with_suffix(".pub").read_text().split()
        known = self.state / "devices" / "known_hosts"
        known.parent.mkdir(exist_ok=True)
        lines = [self.host_key_line("jump1"), self.host_key_line("jump2")]
        lines += [f"[{n.addr}]:{p} {pub[0]} {pub[1]}" for p in ports]
        known.write_text("\n".join(lines) + "\n")
        hosts = "\n".join(f"  {name}: {{host: {h['host']}, port: {h['port']}, device_type: {h['device_type']}}}"
                          for name, h in devices.inventory_hosts(n.addr).items())
        self.devices_inventory.write_text(f"""\
# The lab's emulated network devices (fakenos), written by tests/lab/sshlab.py.
defaults:
  known_hosts: {known}
  host_key_policy: strict
  keepalive: 15
  via: jump2
  credentials: lab-device
credentials:
  lab-key: {{username: phjkey, key_file: {self.key_file}, use_agent: false}}
  lab-device: {{username: {devices.USER}, password: "env:PHJ_LAB_PASSWORD", enable_secret: "env:PHJ_LAB_SUDO_PASSWORD", use_agent: false}}
jump_hosts:
  jump1: {{host: {self.addr('jump1')}, credentials: lab-key, via: []}}
  jump2: {{host: {self.addr('jump2')}, credentials: lab-key, via: jump1}}
hosts:
{hosts}
""")
        return self.devices_inventory

    def reachable_directly(self, name: str, timeout: float = 0.5) -> bool:
        """True when a TCP connect from the local namespace reaches the node's sshd."""
        try:
            with socket.create_connection((self.addr(name), 22), timeout=timeout):
                return True
        except OSError:
            return False


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="sshd lab: jump1 → jump2 → targets in network namespaces")
    ap.add_argument("action", choices=["up", "down", "status"])
    ap.add_argument("--state", type=Path, default=DEFAULT_STATE)
    ap.add_argument("--targets", type=int, default=3)
    args = ap.parse_args(argv)
    lab = Lab(args.state, args.targets)
    if args.action == "up":
        lab.up()
        print(f"lab up: inventory {lab.inventory}; passwords in {ENV_FILE}")
    elif args.action == "down":
        lab.down()
        print("lab down")
    else:
        print(run("ip", "netns", "list").stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
