"""MCP tools for files: ``ssh_file_upload`` and ``ssh_file_download``.

Paths on "this side" are on the machine running the MCP server (not the model's client).
The inventory's policy (``files:`` rules, read-only hosts) and the audit log apply as for
commands; a size limit (``max_bytes``, default 1 GiB, ``serve --max-transfer``) keeps a call
from filling the server's disk.
"""

# no `from __future__ import annotations`: the SDK evaluates the tools' annotations, and the
# Resolve(...) markers name functions local to register()
from typing import Annotated, Any

from mcp.server.mcpserver import Context
from mcp.server.mcpserver.resolve import Elicit, ElicitationResult, Resolve
from pydantic import BaseModel, Field

from .mcp_approval import Approve, Gate, decide, question, transfer_gate

DEFAULT_MAX_BYTES = 1 << 30


class TransferOut(BaseModel):
    host: str
    direction: str = Field(description="upload or download.")
    local: str = Field(description="Path on the MCP server's machine.")
    remote: str = Field(description="Path on the host.")
    bytes: int
    sha256: str = Field(description="SHA-256 of the file, verified on both sides.")
    duration: float
    protocol: str = Field(description="sftp, or scp where the host has no SFTP.")
    resumed_from: int = 0
    mode: str | None = Field(None, description="Permission bits kept on the copy (octal).")


Host = Annotated[str, Field(description="Inventory host name (see inventory_list).")]
Resume = Annotated[bool, Field(description="Continue a partial copy left by an earlier attempt "
                                           "if its bytes match.")]
Confirm = Annotated[bool, Field(description="Only where the inventory allows it (mcp_approval: "
                                            "elicit-or-model) and this client cannot ask its "
                                            "user: confirm a copy the policy marks `confirm`. "
                                            "Otherwise the user is asked.")]


def register(mcp: Any, rt: Any, *, errors: Any, annotations: Any, actor: Any,
             max_bytes: int = DEFAULT_MAX_BYTES) -> None:
    async def copy(tool: str, ctx: Context, op: Any, g: Gate, answer: Any,
                   confirm: bool) -> TransferOut:
        """Run ``op(actor, approval)`` (a manager upload/download) in a worker thread; a
        ``confirm`` copy runs only once a person approved it (see mcp_approval)."""
        with errors(tool):
            owner = rt.owner(ctx)
            who = actor(ctx, owner)
            approval = decide(g, answer, confirm=confirm, actor=who, record=rt.manager.record)
            r = await rt.call(lambda: op(who, approval), owner=owner)   # one of its call slots
            return TransferOut(**r.to_dict())

    async def upload_gate(host: str, remote_path: str, ctx: Context) -> Gate:
        return transfer_gate(rt.inventory, "upload", host, remote_path, ctx)

    async def upload_question(g: Annotated[Gate, Resolve(upload_gate)]) -> Elicit[Approve] | str:
        return question(g)

    async def download_gate(host: str, remote_path: str, ctx: Context) -> Gate:
        return transfer_gate(rt.inventory, "download", host, remote_path, ctx)

    async def download_question(g: Annotated[Gate, Resolve(download_gate)]
                                ) -> Elicit[Approve] | str:
        return question(g)

    @mcp.tool(annotations=annotations("Upload a file to a host", destructive=True))
    async def ssh_file_upload(
        host: Host,
        local_path: Annotated[str, Field(description="File on the MCP server's machine.")],
        remote_path: Annotated[str, Field(description="Destination path on the host (an existing "
                                                      "directory keeps the file's name).")],
        ctx: Context,
        g: Annotated[Gate, Resolve(upload_gate)],
        answer: Annotated[ElicitationResult[Approve], Resolve(upload_question)],
        resume: Resume = False, confirm: Confirm = False,
    ) -> TransferOut:
        """Copy a file from the MCP server's machine to a host, through its jump chain.

        SFTP (SCP where the host lacks SFTP); SHA-256 verified; mode and mtime kept; written
        under a temporary name and renamed into place only when complete.
        """
        return await copy("ssh_file_upload", ctx, lambda who, approval: rt.manager.upload(
            host, local_path, remote_path, actor=who, confirm=approval, resume=resume,
            max_bytes=max_bytes), g, answer, confirm)

    @mcp.tool(annotations=annotations("Download a file from a host"))
    async def ssh_file_download(
        host: Host,
        remote_path: Annotated[str, Field(description="File on the host.")],
        local_path: Annotated[str, Field(description="Destination on the MCP server's machine (an "
                                                     "existing directory keeps the file's name).")],
        ctx: Context,
        g: Annotated[Gate, Resolve(download_gate)],
        answer: Annotated[ElicitationResult[Approve], Resolve(download_question)],
        resume: Resume = False, confirm: Confirm = False,
    ) -> TransferOut:
        """Copy a file from a host to the MCP server's machine, through its jump chain."""
        return await copy("ssh_file_download", ctx, lambda who, approval: rt.manager.download(
            host, remote_path, local_path, actor=who, confirm=approval, resume=resume,
            max_bytes=max_bytes), g, answer, confirm)
