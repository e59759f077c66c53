"""The MCP service without a lab: inventory_list within its budget at 2,000 hosts, tool titles,
the pinned client-connection API, and the serve options for limits and timeouts."""

from __future__ import annotations

import json
from importlib.metadata import version

import anyio
import pytest
from mcp import Client
from mcp.server.mcpserver import Context

from phonehome_jump import mcp_server, mcp_service
from phonehome_jump.cli import build_parser
from phonehome_jump.inventory import Inventory
from phonehome_jump.mcp_server import INVENTORY_BUDGET, RESULT_BUDGET, build_server, service_options

from .test_mcp_server import INVENTORY, TOOLS


def big_inventory(n: int = 2000) -> Inventory:
    """n hosts in 40 groups behind two jumps, with tags and long-ish descriptions."""
    lines = ["jump_hosts:", "  bastion: {host: bastion.invalid, username: ops}",
             "  dmz: {host: 203.0.113.5, username: ops, via: bastion}", "groups:"]
    lines += [f"  site{g:02d}: {{via: dmz, tags: [site{g:02d}, {'prod' if g % 2 else 'dev'}]}}"
              for g in range(40)]
    lines.append("hosts:")
    lines += [f"  host{i:04d}: {{host: 10.{i // 250}.{i % 250}.1, groups: [site{i % 40:02d}], "
              f"description: 'SL1 collector {i} in rack {i % 17}, row {i % 5}, '}}"
              for i in range(n)]
    return Inventory.from_text("\n".join(lines) + "\n")


def call(server, tool: str, args: dict | None = None):
    async def go():
        async with Client(server) as client:
            return await client.call_tool(tool, args or {})
    return anyio.run(go)


def pages(server, **args) -> list:
    """Every page of inventory_list(**args), following next_offset, over one client."""
    async def go():
        out, offset = [], 0
        async with Client(server) as client:
            while offset is not None:
                r = await client.call_tool("inventory_list", {**args, "offset": offset})
                assert not r.is_error, r.content[0].text
                out.append(r)
                offset = r.structured_content["next_offset"]
        return out
    return anyio.run(go)


@pytest.fixture(scope="module")
def big():
    return big_inventory()


@pytest.mark.parametrize("args", [{}, {"detail": True}, {"limit": 500}, {"limit": 500, "detail": True}])
def test_inventory_list_of_2000_hosts_pages_within_the_budget(big, args):
    server = build_server(big)
    result = pages(server, **args)
    names = [h["name"] for r in result for h in r.structured_content["hosts"]]
    assert names == [f"host{i:04d}" for i in range(2000)]       # every host once, in order
    for r in result:
        s = r.structured_content
        assert s["total"] == 2000 and s["groups_total"] == 40
        assert len(json.dumps(s, separators=(",", ":"))) <= INVENTORY_BUDGET
        wire = len(r.model_dump_json(by_alias=True, exclude_none=True))
        assert wire <= RESULT_BUDGET, wire                     # text block included
    first = result[0].structured_content["hosts"][0]
    if args.get("detail"):
        assert {"host", "port", "username", "groups", "client"} <= set(first)
    else:
        assert set(first) == {"name", "device_type", "chain", "tags", "description"}
        assert first["chain"] == ["bastion", "dmz"]


def test_inventory_list_filters_before_paging(big):
    server = build_server(big)
    result = pages(server, group="site07", tag="prod", limit=20)
    names = [h["name"] for r in result for h in r.structured_content["hosts"]]
    assert names == [f"host{i:04d}" for i in range(7, 2000, 40)] and len(result) == 3
    r = call(server, "inventory_list", {"query": "host1999"}).structured_content
    assert ([h["name"] for h in r["hosts"]], r["total"], r["next_offset"]) == (["host1999"], 1, None)
    r = call(server, "inventory_list", {"limit": 0})
    assert r.is_error and "limit" in r.content[0].text


def test_every_tool_has_a_top_level_title():
    async def go():
        async with Client(build_server(Inventory.from_text(INVENTORY))) as client:
            return (await client.list_tools()).tools
    tools = {t.name: t for t in anyio.run(go)}
    assert set(tools) == set(TOOLS)
    for t in tools.values():
        assert t.title and t.title == t.annotations.title, t.name


def test_the_client_connection_api_is_pinned_and_gives_each_connection_its_owner():
    """SDK 2.3 hides the per-client connection behind ctx.session._connection: pinned in
    pyproject (<2.4) and proven here, so an SDK upgrade fails this test, not ownership."""
    assert version("mcp").startswith("2.3.")
    server = build_server(Inventory.from_text(INVENTORY))
    rt = server.phonehome_jump

    @server.tool()
    async def whoami(ctx: Context) -> str:
        return rt.owner(ctx)

    async def go():
        async with Client(server, mode="legacy") as a, Client(server, mode="legacy") as b:
            owners = [(await c.call_tool("whoami", {})).content[0].text for c in (a, b, a)]
            assert set(rt._names) == set(owners)
        return owners
    a1, b1, a2 = anyio.run(go)
    assert a1 == a2 != b1 and a1.startswith("c-")
    assert rt._names == {}                      # both connections ended: released

    class Bare:
        session = object()
    with pytest.raises(RuntimeError, match="refusing rather than sharing sessions"):
        mcp_service.connection(Bare())


def test_serve_options_reach_the_manager_and_override_the_inventory():
    args = build_parser().parse_args(["serve", "--idle-timeout", "30", "--running-timeout", "600",
                                      "--max-sessions", "7", "--max-per-client", "2",
                                      "--calls-per-client", "3", "--client-timeout", "9"])
    opts = service_options(args)
    assert opts["limits"] == {"idle_timeout": 30.0, "running_timeout": 600.0, "max_sessions": 7,
                              "max_per_client": 2}
    assert (opts["calls_per_client"], opts["client_timeout"], opts["full_text_results"]) == (3, 9.0, False)
    inv = Inventory.from_text(INVENTORY + "limits: {idle_timeout: 5, max_per_host: 4, max_sessions: 50}\n")
    server = build_server(inv, calls_per_client=3, **opts["limits"])
    rt = server.phonehome_jump

    async def go():
        async with Client(server):
            m = rt.manager
            return (m.idle_timeout, m.running_timeout, m.max_sessions, m.max_per_host,
                    m.max_per_client, rt.calls_per_client)
    assert anyio.run(go) == (30.0, 600.0, 7, 4, 2, 3)
    for bad in (["--idle-timeout", "0"], ["--max-sessions", "x"], ["--client-timeout", "nan"]):
        with pytest.raises(SystemExit):
            build_parser().parse_args(["serve", *bad])


def test_result_budget_covers_a_capped_output():
    # a capped output is 16,000 characters; JSON escaping of newlines can add one per line
    assert mcp_server.RESULT_BUDGET >= 2 * 16_000


def test_http_connections_get_tcp_keepalive_from_the_listening_socket():
    """A peer that vanishes without closing (asleep, unplugged) is found by keepalive probes."""
    import socket
    listener = mcp_server._listen("127.0.0.1", 0)
    with listener, socket.create_connection(listener.getsockname()):
        accepted, _ = listener.accept()
        with accepted:
            opts = [accepted.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE)] + [
                accepted.getsockopt(socket.IPPROTO_TCP, getattr(socket, n))
                for n in ("TCP_KEEPIDLE", "TCP_KEEPINTVL", "TCP_KEEPCNT", "TCP_USER_TIMEOUT")]
    assert opts[0] == 1 and tuple(opts[1:]) == (*mcp_server.KEEPALIVE, mcp_server.USER_TIMEOUT_MS)


def test_call_slots_refusals_and_cancellation():
    """The service's worker-thread plumbing: own slots, the shared pool, an abandoned call."""
    import threading
    import time
    from functools import partial

    from phonehome_jump.callstate import caller_gone
    from phonehome_jump.errors import LimitError

    server = build_server(Inventory.from_text(INVENTORY), calls_per_client=1)
    rt = server.phonehome_jump
    release = threading.Event()
    seen: dict = {}

    def hold() -> str:
        release.wait(10)
        seen["gone"] = caller_gone()
        return "held"

    async def held(limiter_of, n: int = 1) -> None:       # poll, no fixed sleep
        deadline = time.monotonic() + 5
        while (lim := limiter_of()) is None or lim.borrowed_tokens != n:
            assert time.monotonic() < deadline, "the holding call never started"
            await anyio.sleep(0.01)

    async def go():
        async with Client(server):
            async with anyio.create_task_group() as tg:
                tg.start_soon(partial(rt.call, hold, owner="c-a"))
                await held(lambda: rt._clients.get("c-a"))
                t0 = time.monotonic()
                with pytest.raises(LimitError, match=r"c-a has 1 calls running, its own limit is 1"):
                    await rt.call(lambda: "x", owner="c-a", wait=0)
                assert 0.9 < time.monotonic() - t0 < 2.0          # QUEUE_GRACE, not forever
                assert await rt.call(lambda: "other client", owner="c-b", wait=0) == "other client"
                release.set()
            release.clear()
            rt.limiter = anyio.CapacityLimiter(1)                 # a full shared pool
            async with anyio.create_task_group() as tg:
                tg.start_soon(partial(rt.call, hold, owner="c-a"))
                await held(lambda: rt.limiter)
                with pytest.raises(LimitError, match=r"all 1 worker threads .* \(yours: 0\)"):
                    await rt.call(lambda: "x", owner="c-b", wait=0)
                release.set()
            release.clear()
            seen.clear()
            with anyio.move_on_after(0.2):                       # the client gives up
                await rt.call(hold, owner="c-a", wait=5)
            assert rt._clients["c-a"].borrowed_tokens == 1        # its thread still runs
            release.set()
            deadline = time.monotonic() + 5
            while rt._clients["c-a"].borrowed_tokens:           # freed when the thread ends
                assert time.monotonic() < deadline
                await anyio.sleep(0.02)
            assert seen == {"gone": True}          # the core would have sent nothing for it
    anyio.run(go)
