"""The MCP server without a lab: tool list, inventory tools, errors, the HTTP gate and serve()."""

from __future__ import annotations

import json
import logging

import anyio
import httpx2
import pytest
from mcp import Client

from phonehome_jump import mcp_server
from phonehome_jump.inventory import Inventory
from phonehome_jump.manager import SessionManager
from phonehome_jump.mcp_server import build_server, is_loopback, parse_http, serve

CANARY = "canary-Secret-51d0e2"

INVENTORY = """\
defaults:
  known_hosts: /nonexistent/known_hosts
credentials:
  ops-key: {username: ops, key_file: /nonexistent/id_ed25519, use_agent: false}
  admin: {username: admin, password: "env:PHJ_TEST_MCP_PASSWORD"}
jump_hosts:
  bastion: {host: bastion.invalid, credentials: ops-key}
  dmz-gw: {host: 203.0.113.5, credentials: ops-key, via: bastion}
groups:
  sl1: {via: dmz-gw, credentials: admin, tags: [sciencelogic]}
hosts:
  sl1-prod: {host: 192.0.2.10, groups: [sl1], tags: [prod], description: SL1 production database}
  sl1-dev: {host: 192.0.2.11, groups: [sl1], tags: [dev]}
  core-rtr1: {host: 198.51.100.1, port: 2222, device_type: cisco_ios, credentials: ops-key, via: bastion}
"""

TOOLS = {   # name: (readOnly, destructive, idempotent, openWorld)
    "inventory_list": (True, False, True, False),
    "inventory_show": (True, False, True, False),
    "ssh_session_open": (False, False, False, True),
    "ssh_session_command": (False, True, False, True),
    "ssh_session_send": (False, True, False, True),
    "ssh_session_read": (True, False, False, True),
    "ssh_session_list": (True, False, True, False),
    "ssh_session_close": (False, True, True, True),
    "ssh_session_revive": (False, False, False, True),
    "ssh_run": (False, True, False, True),
    "ssh_file_upload": (False, True, False, True),
    "ssh_file_download": (False, False, False, True),
}


@pytest.fixture
def server(monkeypatch):
    monkeypatch.setenv("PHJ_TEST_MCP_PASSWORD", CANARY)
    return build_server(Inventory.from_text(INVENTORY))


def call(server, tool: str, args: dict | None = None, **client_kwargs):
    async def go():
        async with Client(server, **client_kwargs) as client:
            return await client.call_tool(tool, args or {})
    return anyio.run(go)


def test_tools_have_schemas_annotations_and_descriptions(server):
    async def go():
        async with Client(server) as client:
            return (await client.list_tools()).tools
    tools = {t.name: t for t in anyio.run(go)}
    assert set(tools) == set(TOOLS)
    for name, (ro, destructive, idem, open_world) in TOOLS.items():
        t = tools[name]
        a = t.annotations
        assert (a.read_only_hint, a.destructive_hint, a.idempotent_hint, a.open_world_hint) == \
            (ro, destructive, idem, open_world), name
        assert a.title and t.description and len(t.description) > 30, name
        assert t.output_schema and t.output_schema["type"] == "object", name
        for pname, prop in t.input_schema.get("properties", {}).items():
            assert prop.get("description"), f"{name}.{pname}"
        assert "ctx" not in t.input_schema.get("properties", {})
    command = tools["ssh_session_command"].input_schema
    assert command["required"] == ["session_id", "command"]
    assert command["properties"]["wait"]["default"] == 20
    assert {"output", "exit_status", "running", "awaiting_input", "total", "truncated", "omitted",
            "next_offset", "cwd", "duration"} <= set(tools["ssh_session_command"].output_schema["properties"])


def test_inventory_list_and_filters(server):
    r = call(server, "inventory_list")
    assert not r.is_error
    hosts = {h["name"]: h for h in r.structured_content["hosts"]}
    assert set(hosts) == {"sl1-prod", "sl1-dev", "core-rtr1"}
    assert hosts["sl1-prod"]["chain"] == ["bastion", "dmz-gw"]
    assert hosts["core-rtr1"]["device_type"] == "cisco_ios"
    assert r.structured_content["groups"] == ["sl1"]
    names = lambda **kw: [h["name"] for h in call(server, "inventory_list", kw).structured_content["hosts"]]  # noqa: E731
    assert names(tag="prod") == ["sl1-prod"]
    assert names(group="sl1") == ["sl1-dev", "sl1-prod"]
    assert names(query="production") == ["sl1-prod"]
    r = call(server, "inventory_list", {"group": "sl"})
    assert r.is_error and "unknown group 'sl'" in r.content[0].text and "sl1" in r.content[0].text


def test_inventory_show_has_the_chain_and_no_secrets(server):
    r = call(server, "inventory_show", {"host": "sl1-prod"})
    s = r.structured_content
    assert [h["name"] for h in s["chain"]] == ["bastion", "dmz-gw"]
    assert s["chain"][1] == {"name": "dmz-gw", "host": "203.0.113.5", "port": 22, "username": "ops"}
    assert s["username"] == "admin" and s["auth"]["password"] == "env:PHJ_TEST_MCP_PASSWORD"
    assert CANARY not in json.dumps(s) + r.content[0].text


def test_unknown_host_suggests_the_closest_names(server):
    for tool, args in [("inventory_show", {"host": "sl1-prd"}),
                       ("ssh_session_open", {"host": "sl1-prd"}),
                       ("ssh_run", {"host": "sl1-prd", "command": "id"})]:
        r = call(server, tool, args)
        assert r.is_error, tool
        assert "unknown host 'sl1-prd'" in r.content[0].text and "'sl1-prod'" in r.content[0].text


def test_unknown_session_says_so(server):
    for tool, args in [("ssh_session_command", {"session_id": "s-nope", "command": "id"}),
                       ("ssh_session_read", {"session_id": "s-nope"}),
                       ("ssh_session_send", {"session_id": "s-nope", "text": "y"}),
                       ("ssh_session_close", {"session_id": "s-nope"})]:
        r = call(server, tool, args)
        assert r.is_error, tool
        assert "no open session 's-nope'" in r.content[0].text
        assert "no sessions are open" in r.content[0].text
    assert call(server, "ssh_session_list").structured_content == {"sessions": []}


def test_a_hop_failure_names_the_hop(server):
    r = call(server, "ssh_session_open", {"host": "sl1-prod"})
    # the key file is checked before dialing: a missing one is named, not taken for a DNS fault
    assert r.is_error and "hop 'bastion'" in r.content[0].text
    assert "key_file /nonexistent/id_ed25519 does not exist" in r.content[0].text


def test_internal_error_hides_details_and_logs_them(server, monkeypatch, caplog):
    def boom(self, **kw):
        raise RuntimeError(f"password={CANARY}")
    monkeypatch.setattr(SessionManager, "list", boom)
    with caplog.at_level(logging.ERROR, logger="phonehome_jump.mcp_server"):
        r = call(server, "ssh_session_list")
    text = r.content[0].text
    assert r.is_error and "internal error in ssh_session_list (ref " in text and "server log" in text
    assert CANARY not in text and "Traceback" not in text and "RuntimeError" not in text
    assert CANARY in caplog.text            # the details are in the server log


def test_manager_lives_in_the_lifespan_shared_by_clients(server):
    rt = server.phonehome_jump

    async def go():
        async with Client(server), Client(server, mode="legacy"):
            manager = rt.manager
            assert manager._reaper is not None and manager._reaper.is_alive()
        return manager
    manager = anyio.run(go)
    assert manager._stop.is_set()            # shut down when the last client left
    with pytest.raises(RuntimeError):
        rt.manager


def test_wait_is_capped():
    assert mcp_server._wait(600) == mcp_server.MAX_WAIT == 50
    assert mcp_server._wait(-1) == 0


# ----------------------------------------------------------------------------- HTTP and serve()

@pytest.mark.parametrize("text,expected", [("127.0.0.1:8080", ("127.0.0.1", 8080)),
                                           (":9000", ("127.0.0.1", 9000)), ("9000", ("127.0.0.1", 9000)),
                                           ("[::1]:80", ("::1", 80)), ("0.0.0.0:1", ("0.0.0.0", 1))])
def test_parse_http(text, expected):
    assert parse_http(text) == expected


def test_loopback():
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("10.0.0.1") and not is_loopback("example.net")


@pytest.fixture
def inv_file(tmp_path, monkeypatch):
    path = tmp_path / "inv.yaml"
    path.write_text(INVENTORY)
    monkeypatch.delenv(mcp_server.DEFAULT_TOKEN_ENV, raising=False)
    return path


def test_serve_refuses_beyond_loopback_without_a_token(inv_file, capsys):
    assert serve(str(inv_file), http="0.0.0.0:0") == 2
    err = capsys.readouterr().err
    assert "refusing to serve MCP on 0.0.0.0:0 without a bearer token" in err
    assert "--token-file" in err and mcp_server.DEFAULT_TOKEN_ENV in err


@pytest.mark.parametrize("kwargs,message", [
    ({"token_file": "/nonexistent/token"}, "cannot read the token file"),
    ({"token_env": "PHJ_TEST_NO_SUCH_VAR"}, "PHJ_TEST_NO_SUCH_VAR (--token-env) is not set"),
    ({"token_env": "PHJ_TEST_SHORT_TOKEN"}, "shorter than 16 characters"),
])
def test_serve_token_problems(inv_file, capsys, monkeypatch, kwargs, message):
    monkeypatch.setenv("PHJ_TEST_SHORT_TOKEN", "short")
    assert serve(str(inv_file), http="0.0.0.0:0", **kwargs) == 2
    assert message in capsys.readouterr().err


def test_serve_reports_a_bad_inventory(tmp_path, capsys):
    assert serve(str(tmp_path / "missing.yaml")) == 2
    err = capsys.readouterr().err
    assert err.startswith("phonehome-jump: ") and "missing.yaml" in err and "Traceback" not in err


def test_http_gate_requires_the_token_and_the_handshake_era():
    seen = []

    async def app(scope, receive, send):
        seen.append(scope["path"])
        await mcp_server._respond(send, 200, {"ok": True})

    gate = mcp_server._HttpGate(app, "t" * 32)

    async def go():
        async with httpx2.AsyncClient(transport=httpx2.ASGITransport(app=gate),
                                      base_url="http://127.0.0.1") as http:
            no = await http.post("/mcp", json={})
            wrong = await http.post("/mcp", json={}, headers={"Authorization": "Bearer " + "x" * 32})
            ok = await http.post("/mcp", json={}, headers={"Authorization": "Bearer " + "t" * 32})
            modern = await http.post("/mcp", json={"jsonrpc": "2.0", "id": 7, "method": "server/discover"},
                                     headers={"Authorization": "Bearer " + "t" * 32,
                                              "MCP-Protocol-Version": "2026-07-28"})
            return no, wrong, ok, modern
    no, wrong, ok, modern = anyio.run(go)
    assert (no.status_code, wrong.status_code, ok.status_code) == (401, 401, 200)
    assert no.headers["www-authenticate"] == "Bearer"
    assert modern.status_code == 400
    error = modern.json()
    assert error["id"] == 7 and error["error"]["code"] == -32022
    assert "2025-11-25" in error["error"]["data"]["supported"]
    assert seen == ["/mcp"]
