"""phonehome-jump-reach's own options and the hook check (pure logic; no client is run)."""

from __future__ import annotations

import sys
import types

import pytest

from phonehome_jump import etphonehome


def test_phj_options_go_to_the_environment_and_the_rest_to_the_client(monkeypatch):
    for var in etphonehome.SETTINGS.values():
        monkeypatch.setenv(var, "")      # recorded, so the test's own values are undone
        monkeypatch.delenv(var)
    rest = etphonehome._settings(["--phj-inventory", "/inv", "-c", "/etc/reach.yaml",
                                  "--phj-max-wait=5", "-v"])
    assert rest == ["-c", "/etc/reach.yaml", "-v"]
    import os
    assert os.environ["PHONEHOME_JUMP_INVENTORY"] == "/inv"     # monkeypatch restores it
    assert os.environ["PHONEHOME_JUMP_MAX_WAIT"] == "5"
    with pytest.raises(SystemExit, match="--phj-state needs a value"):
        etphonehome._settings(["--phj-state"])


def test_seconds_are_checked_with_the_variable_named(monkeypatch):
    monkeypatch.setenv("PHONEHOME_JUMP_MAX_WAIT", "soon")
    with pytest.raises(ValueError, match="PHONEHOME_JUMP_MAX_WAIT='soon'"):
        etphonehome._seconds("PHONEHOME_JUMP_MAX_WAIT", 8.0)
    monkeypatch.setenv("PHONEHOME_JUMP_MAX_WAIT", "2.5")
    assert etphonehome._seconds("PHONEHOME_JUMP_MAX_WAIT", 8.0) == 2.5
    monkeypatch.delenv("PHONEHOME_JUMP_MAX_WAIT")
    assert etphonehome._seconds("PHONEHOME_JUMP_MAX_WAIT", 8.0) == 8.0


def _fake_client(monkeypatch, handle_params: str = "self, request", version: str = "0.1.13"):
    """A client layout in sys.modules (modules built here; nothing is imported from disk)."""
    ns: dict = {}
    exec(f"class Agent:\n    def handle_request({handle_params}):\n"
         "        return ('own', request.method)\n", ns)
    from dataclasses import dataclass

    @dataclass
    class Response:
        id: object = None
        result: object = None
        error: object = None
    mods = {"client": types.ModuleType("client"), "shared": types.ModuleType("shared"),
            "client.agent": types.ModuleType("client.agent"),
            "client.reach": types.ModuleType("client.reach"),
            "shared.protocol": types.ModuleType("shared.protocol"),
            "shared.version": types.ModuleType("shared.version")}
    mods["client.agent"].Agent = ns["Agent"]
    mods["client.reach"].Agent = ns["Agent"]
    mods["client.reach"].main = lambda: 0
    mods["shared.protocol"].Response = Response
    mods["shared.version"].__version__ = version
    for name, mod in mods.items():
        monkeypatch.setitem(sys.modules, name, mod)
    return ns["Agent"]


class _Dispatcher:
    def handle(self, request):
        return {"id": request["id"],
                "result": {"by": "phonehome-jump", "method": request["method"]}}


def test_install_takes_the_session_methods_and_leaves_the_rest(monkeypatch):
    agent = _fake_client(monkeypatch)
    etphonehome.install(_Dispatcher())     # type: ignore[arg-type]
    etphonehome.install(_Dispatcher())     # twice: still one layer
    req = types.SimpleNamespace(method="ssh_session_list", params={}, id="7")
    r = agent().handle_request(req)
    assert (r.id, r.error) == ("7", None)
    assert r.result == {"by": "phonehome-jump", "method": "ssh_session_list"}
    assert agent().handle_request(types.SimpleNamespace(method="heartbeat", params={}, id="8")) == \
        ("own", "heartbeat")
    etphonehome.uninstall()
    assert agent().handle_request(req) == ("own", "ssh_session_list")


def test_a_changed_hook_is_named_with_the_client_version(monkeypatch):
    _fake_client(monkeypatch, handle_params="self, request, context", version="0.3.1")
    with pytest.raises(etphonehome.ClientMismatch) as exc:
        etphonehome.check_client()
    text = str(exc.value)
    assert "ET Phone Home client 0.3.1" in text and "takes (self, request, context)" in text
    assert "client.agent.Agent.handle_request(self, request)" in text
