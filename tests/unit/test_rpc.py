"""The agent protocol without a lab: framing, the Dispatcher on bad requests, error codes,
the state file, and the routing configuration (pure logic; no SSH is dialed)."""

from __future__ import annotations

import io
import json
import os
import stat
import struct

import pytest

from phonehome_jump.errors import (AgentError, ConnectError, InventoryError, LimitError,
                                   PhonehomeJumpError, SessionError, UnknownNameError,
                                   UnknownSessionError)
from phonehome_jump.inventory import Inventory
from phonehome_jump.manager import SessionManager
from phonehome_jump.routing import check_sites, parse_agents
from phonehome_jump.rpc import (MAX_FRAME, Dispatcher, FrameError, RemoteAgent, StateFile,
                                decode, encode, read_frame, remote_error)

INVENTORY = """\
defaults: {known_hosts: /nonexistent/known_hosts}
credentials:
  key: {username: ops, key_file: /nonexistent/id, use_agent: false}
  pw: {username: admin, password: "env:PHJ_TEST_RPC_PASSWORD"}
groups:
  east: {client: site-a}
hosts:
  web1: {host: 192.0.2.10, credentials: key, groups: [east]}
  web2: {host: 192.0.2.11, credentials: pw, client: site-b}
  db1: {host: 192.0.2.12, credentials: key}
  db1-admin: {host: 192.0.2.12, credentials: pw}
  db1-ops: {host: 192.0.2.12, port: 2222, credentials: key}
"""


@pytest.fixture
def dispatcher(tmp_path):
    manager = SessionManager(Inventory.from_text(INVENTORY))
    d = Dispatcher(manager, state_file=tmp_path / "state.json")
    yield d
    d.close()


def reply(d: Dispatcher, payload: bytes) -> dict:
    frame = d.respond(payload)
    (length,) = struct.unpack(">I", frame[:4])
    assert length == len(frame) - 4
    return json.loads(frame[4:])


# ----------------------------------------------------------------------------- framing

def test_encode_is_a_big_endian_length_and_utf8_json():
    frame = encode({"id": "1", "result": {"text": "é"}})
    assert frame[:4] == struct.pack(">I", len(frame) - 4)
    assert json.loads(frame[4:].decode("utf-8")) == {"id": "1", "result": {"text": "é"}}


def test_decode_splits_frames_and_waits_for_incomplete_ones():
    two = encode({"a": 1}) + encode({"b": 2})
    first, rest = decode(two)
    assert json.loads(first) == {"a": 1} and json.loads(decode(rest)[0]) == {"b": 2}
    assert decode(two[:3]) == (None, two[:3])                  # header incomplete
    assert decode(two[:6]) == (None, two[:6])                  # body incomplete
    with pytest.raises(FrameError, match="exceeds"):
        decode(struct.pack(">I", MAX_FRAME + 1))


def test_read_frame_end_of_stream_and_mid_frame():
    assert read_frame(io.BytesIO(b"")) is None
    assert read_frame(io.BytesIO(encode({"x": 1}))) == b'{"x": 1}'
    with pytest.raises(EOFError, match="header"):
        read_frame(io.BytesIO(b"\x00\x00"))
    with pytest.raises(EOFError, match="body"):
        read_frame(io.BytesIO(struct.pack(">I", 10) + b"{}"))
    with pytest.raises(FrameError):
        read_frame(io.BytesIO(struct.pack(">I", 0xFFFFFFFF)))


# ----------------------------------------------------------------------------- bad requests

@pytest.mark.parametrize("payload,code,text", [
    (b"\xff{}", -32700, "invalid JSON"),
    (b"{", -32700, "invalid JSON"),
    (b"[" * 50_000 + b"]" * 50_000, -32700, "parse error"),
    (b"[]", -32600, "expected a JSON object"),
    (b'{"id": "1"}', -32600, "'method' must be a string"),
    (b'{"method": ["x"], "id": "1"}', -32600, "'method' must be a string"),
    (b'{"method": "ssh_session_list", "id": true}', -32600, "'id' must be"),
    (b'{"method": "ssh_session_list", "params": "x", "id": "1"}', -32600, "'params' must be an object"),
    (b'{"method": "nope", "id": "1"}', -32601, "method not found: 'nope'"),
])
def test_bad_requests_get_json_rpc_codes(dispatcher, payload, code, text):
    r = reply(dispatcher, payload)
    assert r["error"]["code"] == code and text in r["error"]["message"], r
    assert "result" not in r


def test_the_request_id_comes_back_and_params_may_be_absent(dispatcher):
    for rid in ("abc", 7, None):
        r = dispatcher.handle({"method": "ssh_session_list", "id": rid})
        assert r == {"id": rid, "result": {"sessions": [], "count": 0, "pending_restore": []}}


@pytest.mark.parametrize("method,params,message", [
    ("ssh_session_command", {"session_id": "s"},
     "invalid params for ssh_session_command: missing required parameter 'command'"),
    ("ssh_session_command", {"session_id": 5, "command": "id"},
     "invalid params for ssh_session_command: parameter 'session_id': Input should be a valid string"),
    ("ssh_session_read", {"session_id": "s", "timeout": "5"},
     "invalid params for ssh_session_read: parameter 'timeout': Input should be a valid number"),
    ("ssh_session_read", {"session_id": "s", "timeout": -1},
     "invalid params for ssh_session_read: parameter 'timeout': Input should be greater than or equal to 0"),
    ("ssh_session_send", {"session_id": "s", "send_newline": 1},
     "invalid params for ssh_session_send: parameter 'send_newline': Input should be a valid boolean"),
    ("ssh_session_list", {"verbose": True},
     "invalid params for ssh_session_list: unknown parameter 'verbose' (accepted: none)"),
    ("ssh_session_close", {"sessionid": "s"},
     "invalid params for ssh_session_close: missing required parameter 'session_id'; "
     "unknown parameter 'sessionid' (accepted: session_id)"),
])
def test_param_validation_names_the_parameter(dispatcher, method, params, message):
    r = dispatcher.handle({"method": method, "params": params, "id": "1"})
    assert r["error"] == {"code": -32602, "message": message}


def test_credentials_are_refused_and_never_echoed(dispatcher, monkeypatch):
    secret = "hunter2-canary"
    for name, value in (("password", secret), ("key_file", "/root/.ssh/id_rsa"),
                        ("jump_hosts", [{"host": "b", "password": secret}])):
        r = dispatcher.handle({"method": "ssh_session_open", "id": "1",
                               "params": {"host": "web1", name: value}})
        assert r["error"]["code"] == -32602 and f"'{name}' is refused" in r["error"]["message"]
        assert secret not in json.dumps(r)
    r = dispatcher.handle({"method": "ssh_session_open", "id": "1",
                           "params": {"host": "192.0.2.11", "username": "root"}})
    assert "no inventory host at address '192.0.2.11' logs in as 'root'" in r["error"]["message"]
    assert "web2 (admin@192.0.2.11:22)" in r["error"]["message"]
    r = dispatcher.handle({"method": "ssh_session_open", "id": "1",
                           "params": {"host": "web1", "port": 2222}})
    assert "'port' 2222 differs from the inventory's 22" in r["error"]["message"]


def test_package_errors_keep_their_codes(dispatcher):
    r = dispatcher.handle({"method": "ssh_session_read", "params": {"session_id": "s-0"}, "id": 1})
    assert r["error"]["code"] == -32004 and "no open session 's-0'" in r["error"]["message"]
    r = dispatcher.handle({"method": "inventory_show", "params": {"host": "web"}, "id": 1})
    assert r["error"]["code"] == -32602 and "unknown host 'web'" in r["error"]["message"]
    r = dispatcher.handle({"method": "inventory_show", "params": {"host": "web2"}, "id": 1})
    assert r["result"]["client"] == "site-b" and r["result"]["auth"]["password"] == "env:PHJ_TEST_RPC_PASSWORD"


def test_remote_errors_keep_kind_code_and_text():
    for code, kind in ((-32004, UnknownSessionError), (-32005, LimitError), (-32002, SessionError),
                       (-32001, ConnectError), (-32602, InventoryError), (-32603, PhonehomeJumpError)):
        err = remote_error(code, "host 'x': it failed\n  try: again")
        assert isinstance(err, kind) and err.code == code
        assert str(err) == "host 'x': it failed\n  try: again"
    assert remote_error("bad", None).code == -32603


# ----------------------------------------------------------------------------- state file

def test_state_file_is_0600_and_replaced_whole(tmp_path):
    state = StateFile(tmp_path / "deep" / "agent.json")
    assert state.load() == []
    state.save([{"id": "s-1", "host": "web1", "cwd": "/tmp", "created": 1.0, "framing": "sentinel"}])
    assert stat.S_IMODE(state.path.stat().st_mode) == 0o600
    assert state.load()[0]["cwd"] == "/tmp"
    assert [p.name for p in state.path.parent.iterdir()] == ["agent.json"]   # no temp files left
    state.path.write_text("{not json")
    assert state.load() == []           # unreadable state: start empty, do not crash


def test_recorded_sessions_wait_for_restore(tmp_path, monkeypatch):
    path = tmp_path / "state.json"
    StateFile(path).save([{"id": "s-old", "host": "web2", "cwd": "/var", "created": 1.0,
                           "framing": "sentinel"}])
    d = Dispatcher(SessionManager(Inventory.from_text(INVENTORY)), state_file=path)
    try:
        r = d.handle({"method": "ssh_session_command", "id": 1,
                      "params": {"session_id": "s-old", "command": "pwd"}})
        assert r["error"]["code"] == -32004 and "call ssh_session_restore" in r["error"]["message"]
        # web2 logs in with a password: listed for a manual reopen, never dialed
        r = d.handle({"method": "ssh_session_restore", "id": 2})["result"]
        assert r["restored"] == [] and [m["session_id"] for m in r["manual_required"]] == ["s-old"]
        r = d.handle({"method": "ssh_session_close", "params": {"session_id": "s-old"}, "id": 3})
        assert r["result"] == {"session_id": "s-old", "closed": True, "host": "web2"}
        assert json.loads(path.read_text())["sessions"] == []
    finally:
        d.close()


# ----------------------------------------------------------------------------- routing config

def test_parse_agents_wants_loopback_site_addresses():
    assert parse_agents(["site-a=127.0.0.1:7022", "b.2=[::1]:7023"]) == {
        "site-a": ("127.0.0.1", 7022), "b.2": ("::1", 7023)}
    assert parse_agents(None) == {}
    for bad, text in (("site-a", "SITE=HOST:PORT"), ("=1.2.3.4:1", "SITE=HOST:PORT"),
                      ("s=10.0.0.5:7022", "loopback"), ("s=127.0.0.1:x", "HOST:PORT"),
                      ("s=127.0.0.1:0", "loopback")):
        with pytest.raises(ValueError, match=text):
            parse_agents([bad])
    with pytest.raises(ValueError, match="twice"):
        parse_agents(["s=127.0.0.1:1", "s=127.0.0.1:2"])


def test_agent_sites_must_be_named_by_the_inventory():
    inv = Inventory.from_text(INVENTORY)
    check_sites(inv, {"site-a": 1, "site-b": 2})
    with pytest.raises(InventoryError, match="no inventory host names client 'site-c'.*did you mean"):
        check_sites(inv, {"site-c": 1})


def test_an_agent_that_does_not_listen_is_named_with_what_to_try():
    import socket
    with socket.socket() as s:              # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    agent = RemoteAgent("site-x", "127.0.0.1", port)
    with pytest.raises(AgentError) as info:
        agent.list()
    text = str(info.value)
    assert text.startswith(f"site 'site-x': the agent at 127.0.0.1:{port} does not answer")
    assert "try: check that `phonehome-jump agent --listen` runs" in text
    assert info.value.code == -32006


def test_the_agent_refuses_a_non_loopback_listen_address(tmp_path, capsys):
    from phonehome_jump.cli import main
    inv = tmp_path / "inv.yaml"
    inv.write_text(INVENTORY)
    assert main(["--inventory", str(inv), "agent", "--listen", "0.0.0.0:7022",
                 "--state", str(tmp_path / "s.json")]) == 2
    err = capsys.readouterr().err
    assert "refusing to listen on 0.0.0.0" in err and "no authentication" in err
    assert not os.path.exists(tmp_path / "s.json")


@pytest.mark.parametrize("agent,text", [
    ("site-c=127.0.0.1:7022", "--agent site-c: no inventory host names client 'site-c'"),
    ("site-a=192.0.2.1:7022", "must be a loopback HOST:PORT"),
    ("site-a", "--agent wants SITE=HOST:PORT"),
])
def test_serve_checks_its_agents_before_serving(tmp_path, capsys, agent, text):
    from phonehome_jump.cli import main
    inv = tmp_path / "inv.yaml"
    inv.write_text(INVENTORY)
    assert main(["--inventory", str(inv), "serve", "--agent", "site-b=127.0.0.1:7023",
                 "--agent", agent]) == 2
    assert text in capsys.readouterr().err


def test_an_address_picks_the_inventory_host_with_that_username_and_port(dispatcher):
    pick = dispatcher._target      # the choice itself; opening would dial
    assert pick("192.0.2.12", username="admin", port=22).name == "db1-admin"
    assert pick("192.0.2.12", username="ops", port=2222).name == "db1-ops"
    assert pick("192.0.2.11", username="admin").name == "web2"
    with pytest.raises(UnknownNameError, match="2 inventory hosts match address '192.0.2.12' "
                                               "and username 'ops'") as exc:
        pick("192.0.2.12", username="ops", port=22)
    assert "db1, db1-ops" in exc.value.hint
    with pytest.raises(UnknownNameError, match="no inventory host at address '192.0.2.12' logs "
                                               "in as 'admin' on port 2222"):
        pick("192.0.2.12", username="admin", port=2222)


@pytest.mark.parametrize("payload,name", [
    (b'{"method": "ssh_session_send", "id": "u1", "params": {"session_id": "s-1", "text": "a\xffb"}}',
     "text"),
    (b'{"method": "ssh_session_send", "id": "u1", "params": {"session_id": "s-1", "text": "\\ud800"}}',
     "text"),
    (b'{"method": "ssh_session_command", "id": "u1", "params": {"session_id": "s-\xc3", "command": "id"}}',
     "session_id"),
])
def test_text_that_is_not_utf8_is_refused_by_parameter_name(dispatcher, payload, name):
    r = reply(dispatcher, payload)
    assert r["id"] == "u1" and r["error"]["code"] == -32602, r
    assert f"parameter '{name}' is not valid UTF-8" in r["error"]["message"]
    assert "nothing was sent" in r["error"]["message"]


def test_heartbeat_answers_like_the_client(dispatcher):
    assert dispatcher.handle({"method": "heartbeat", "id": "h"}) == {"id": "h", "result":
                                                                      {"status": "alive"}}


def test_a_capped_result_says_how_to_get_the_middle_without_offset(dispatcher):
    from phonehome_jump.session import CommandResult
    r = CommandResult("cat big", "head…tail", 0, False, "/", 1.0, 0, 50_000, 50_000, True,
                      (8_000, 42_000))
    note = dispatcher._output("s-1", r, 8.0)["note"]
    assert "characters 8000–42000 of 50000" in note and "offset=8000" in note
    assert "> /tmp/out.txt" in note and "sed -n 1,200p" in note
