"""MCP argument errors name the parameter and the problem, never the value (a secret)."""

from __future__ import annotations

import logging

import anyio
import pytest
from mcp import Client

from phonehome_jump.inventory import Inventory
from phonehome_jump.mcp_server import build_server

CANARY = "canary-validation-3f9e1a"


@pytest.fixture
def server():
    return build_server(Inventory.from_text("defaults: {username: u}\n"
                                            "hosts: {a: {host: 192.0.2.1}}\n"))


@pytest.mark.parametrize("tool,args,names", [
    ("ssh_session_send", {"session_id": "s", "text": CANARY, "secret": "yes-please"}, ["secret"]),
    ("ssh_session_send", {"session_id": 5, "text": [CANARY], "secret": True},
     ["session_id", "text"]),
    ("ssh_session_send", {"text": CANARY, "secret": True}, ["session_id"]),
    ("ssh_session_send", {"session_id": "s", "text": {"x": CANARY}, "sudo_password": CANARY},
     ["text", "sudo_password"]),
    ("ssh_session_command", {"session_id": "s", "command": f"echo {CANARY}", "wait": CANARY},
     ["wait"]),
    ("ssh_run", {"host": ["a"], "command": CANARY, "confirm": CANARY}, ["host", "confirm"]),
])
def test_invalid_arguments_never_echo_a_value(server, caplog, tool, args, names):
    caplog.set_level(logging.DEBUG)

    async def go():
        async with Client(server) as client:
            return await client.call_tool(tool, args)
    r = anyio.run(go)
    text = r.content[0].text
    assert r.is_error and "invalid arguments" in text
    assert all(f"{name}: " in text for name in names), text
    assert CANARY not in text and CANARY not in caplog.text
