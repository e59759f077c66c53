"""Stand-in for the ET Phone Home server's side of the tunnel, driven by JSON lines on stdin.

``python server.py PORT`` connects to 127.0.0.1:PORT (the client's reverse-forwarded tunnel
port, so run it where that port listens). Each stdin line is ``{"tag": T, "op": NAME,
"args": {...}}``; each op runs as its own task (so calls queue on the shared connection's
lock as the server's tool calls do) and prints ``{"tag": T, "result": ...}``, ``{"tag": T,
"error": MESSAGE}`` (the client answered with an error) or ``{"tag": T, "exception": NAME}``
(the call failed: timeout, connection refused), each with ``"elapsed"`` seconds.

Ops: the server's session methods with its parameter shapes and defaults, ``health_check``
(the health monitor's heartbeat: timeout lowered to 10 s, put back only on success),
``raw`` (any method and params, e.g. the client's own methods), ``set_timeout`` (the
shared connection's timeout, as the health monitor changes it) and ``retarget`` (the client
re-registered with a new tunnel port).
"""

import asyncio
import json
import struct
import sys
import time

REQUEST_TIMEOUT = 30.0      # ClientConnection's default
HEARTBEAT_TIMEOUT = 10.0    # HealthMonitorConfig.heartbeat_timeout


class ClientError(Exception):
    pass


class ClientConnection:
    """One connection to the tunnel, shared by every tool call and the health monitor."""

    def __init__(self, port: int, timeout: float = REQUEST_TIMEOUT) -> None:
        self.port = port
        self.timeout = timeout
        self._reader = self._writer = None
        self._lock = asyncio.Lock()
        self._request_id = 0

    async def connect(self) -> None:
        self._reader, self._writer = await asyncio.wait_for(
            asyncio.open_connection("127.0.0.1", self.port), timeout=self.timeout)

    async def disconnect(self) -> None:
        if self._writer is not None:
            self._writer.close()
            try:
                await self._writer.wait_closed()
            except Exception:
                pass
        self._reader = self._writer = None

    async def send_request(self, method: str, params: dict | None = None) -> dict:
        async with self._lock:
            if self._writer is None:
                await self.connect()
            self._request_id += 1
            body = json.dumps({"method": method, "params": params or {},
                               "id": str(self._request_id)}).encode()
            try:
                self._writer.write(struct.pack(">I", len(body)) + body)
                await self._writer.drain()
                # the timeout in force once this request is on the wire, as the server reads it
                return await asyncio.wait_for(self._read_response(), timeout=self.timeout)
            except Exception:
                await self.disconnect()
                raise

    async def _read_response(self) -> dict:
        header = await self._reader.readexactly(4)
        body = await self._reader.readexactly(int.from_bytes(header, "big"))
        return json.loads(body.decode("utf-8"))

    async def call(self, method: str, params: dict) -> dict:
        response = await self.send_request(method, params)
        if response.get("error"):
            raise ClientError(response["error"]["message"])
        return response.get("result")

    # -- the server's session methods, with its parameter shapes and defaults ---------------
    async def ssh_session_open(self, host, username, password=None, key_file=None, port=22,
                               jump_hosts=None):
        params = {"host": host, "username": username, "port": port}
        if password:
            params["password"] = password
        if key_file:
            params["key_file"] = key_file
        if jump_hosts:
            params["jump_hosts"] = jump_hosts
        return await self.call("ssh_session_open", params)

    async def ssh_session_command(self, session_id, command, timeout=300):
        return await self.call("ssh_session_command",
                               {"session_id": session_id, "command": command, "timeout": timeout})

    async def ssh_session_send(self, session_id, text, send_newline=True):
        return await self.call("ssh_session_send", {"session_id": session_id, "text": text,
                                                    "send_newline": send_newline})

    async def ssh_session_read(self, session_id, timeout=0.5):
        return await self.call("ssh_session_read", {"session_id": session_id, "timeout": timeout})

    async def ssh_session_list(self):
        return await self.call("ssh_session_list", {})

    async def ssh_session_close(self, session_id):
        return await self.call("ssh_session_close", {"session_id": session_id})

    async def ssh_session_restore(self):
        return await self.call("ssh_session_restore", {})

    async def health_check(self):
        """The health monitor: a heartbeat under a 10 s timeout, restored only on success."""
        original = self.timeout
        self.timeout = HEARTBEAT_TIMEOUT
        response = await self.send_request("heartbeat")
        self.timeout = original
        return response["result"]["status"] == "alive"

    async def raw(self, method, params=None):
        return await self.send_request(method, params or {})


async def run_op(conn: ClientConnection, msg: dict) -> None:
    tag, op, args = msg.get("tag"), msg["op"], msg.get("args") or {}
    started = time.monotonic()
    out: dict = {"tag": tag}
    try:
        if op == "retarget":
            await conn.disconnect()
            conn.port = int(args["port"])
            out["result"] = True
        elif op == "set_timeout":               # as the health monitor sets it
            conn.timeout = float(args["seconds"])
            out["result"] = True
        else:
            out["result"] = await getattr(conn, op)(**args)
    except ClientError as exc:
        out["error"] = str(exc)
    except Exception as exc:
        out["exception"] = type(exc).__name__
        out["message"] = str(exc)
    out["elapsed"] = round(time.monotonic() - started, 3)
    print(json.dumps(out), flush=True)


async def main() -> None:
    conn = ClientConnection(int(sys.argv[1]))
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    tasks = set()
    print(json.dumps({"ready": True}), flush=True)
    while line := await reader.readline():
        task = asyncio.create_task(run_op(conn, json.loads(line)))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
        await asyncio.sleep(0.05)     # ops start in the order they were given
    await asyncio.gather(*tasks)
    await conn.disconnect()


if __name__ == "__main__":
    asyncio.run(main())
