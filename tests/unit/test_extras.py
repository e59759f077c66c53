"""The client side runs without the MCP SDK; `serve` without it says what to install."""

from __future__ import annotations

import subprocess
import sys

BLOCK_MCP = ("import sys\n"
             "for name in ('mcp', 'mcp_types', 'anyio'):\n"
             "    sys.modules[name] = None      # as if not installed\n")


def run(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", BLOCK_MCP + code], capture_output=True,
                          text=True, timeout=120)


def test_the_client_side_imports_without_the_mcp_sdk():
    proc = run("import phonehome_jump.etphonehome, phonehome_jump.agent_server, "
               "phonehome_jump.agent_client, phonehome_jump.cli, phonehome_jump.rpc\n"
               "assert not [m for m in sys.modules if m.split('.')[0] == 'mcp' "
               "and sys.modules[m] is not None]\nprint('ok')")
    assert proc.returncode == 0 and proc.stdout == "ok\n", proc.stderr


def test_serve_without_the_mcp_sdk_names_the_extra():
    proc = run("from phonehome_jump.cli import main\n"
               "sys.exit(main(['--inventory', '/nonexistent', 'serve']))")
    assert proc.returncode == 2, proc.stderr
    assert "pip install 'phonehome-jump[mcp]'" in proc.stderr and "Traceback" not in proc.stderr
