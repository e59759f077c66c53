"""Stand-in for ET Phone Home's client/reach.py: connect, reverse-forward, serve in-process."""

import argparse
import logging
import os
import signal
import sys
import threading
from pathlib import Path

import paramiko

from client.agent import Agent
from shared.protocol import Request, decode_message, encode_message
from shared.version import __version__

log = logging.getLogger("reach")


def _auto_update() -> bool:
    """The updater replaces the install folder, then the caller restarts the process."""
    marker = Path(__file__).resolve().parent.parent / "UPDATE"
    if not marker.exists():
        return False
    version = marker.read_text().strip()
    (marker.parent / "shared" / "version.py").write_text(f'__version__ = "{version}"\n')
    marker.unlink()
    return True


def _handle_channel(chan, request_handler, running) -> None:
    buffer = b""
    try:
        while running.is_set():
            data = chan.recv(4096)
            if not data:
                break
            buffer += data
            while len(buffer) >= 4:
                try:
                    msg, buffer = decode_message(buffer)
                except ValueError:
                    break
                response = request_handler(Request.from_json(msg))
                chan.sendall(encode_message(response.to_json()))
    except Exception as exc:   # the original logs and closes the channel
        log.error("Error handling channel: %s", exc)
    finally:
        chan.close()


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("-s", "--server", required=True)
    parser.add_argument("-p", "--port", type=int, default=22)
    parser.add_argument("-u", "--user", required=True)
    parser.add_argument("-k", "--key", required=True)
    parser.add_argument("--known-hosts", required=True)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="reach: %(message)s")
    log.info("Reach v%s", __version__)
    if _auto_update():
        log.info("Update installed. Restarting...")
        os.execv(sys.executable, [sys.executable] + sys.argv)

    agent = Agent()
    ssh = paramiko.SSHClient()
    ssh.load_host_keys(args.known_hosts)
    ssh.set_missing_host_key_policy(paramiko.RejectPolicy())
    ssh.connect(args.server, args.port, username=args.user, key_filename=args.key,
                allow_agent=False, look_for_keys=False, timeout=10)
    transport = ssh.get_transport()
    tunnel_port = transport.request_port_forward("127.0.0.1", 0)
    log.info("Connected! Tunnel port: %d", tunnel_port)

    running = threading.Event()
    running.set()
    signal.signal(signal.SIGTERM, lambda *_: running.clear())
    signal.signal(signal.SIGINT, lambda *_: running.clear())
    while running.is_set() and transport.is_active():
        chan = transport.accept(timeout=0.2)
        if chan is not None:
            threading.Thread(target=_handle_channel, args=(chan, agent.handle_request, running),
                             daemon=True).start()
    ssh.close()
    log.info("Goodbye!")
    return 0
