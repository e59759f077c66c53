"""Tool calls through a real MCP client, for the MCP tests: the result, or the error text."""

from __future__ import annotations

from mcp import Client


async def ok(client: Client, tool: str, **args) -> dict:
    r = await client.call_tool(tool, args)
    assert not r.is_error, r.content[0].text
    return r.structured_content


async def error(client: Client, tool: str, **args) -> str:
    r = await client.call_tool(tool, args)
    assert r.is_error, r.structured_content
    return r.content[0].text
