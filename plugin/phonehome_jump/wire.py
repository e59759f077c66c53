"""The ET Phone Home agent protocol's wire format, shared by both ends.

Each message is a 4-byte big-endian length, then that many bytes of UTF-8 JSON. A request is
``{"method": str, "params": {...}, "id": str}``; the reply carries the same ``id`` and either
``"result"`` or ``"error": {"code": int, "message": str}``. The server side is
:mod:`.agent_server`, the client side :mod:`.agent_client`.
"""

from __future__ import annotations

import ipaddress
import json
import struct
from typing import Any, BinaryIO

MAX_FRAME = 16 * 1024 * 1024
PARSE_ERROR, INVALID_REQUEST, METHOD_NOT_FOUND, INVALID_PARAMS, INTERNAL_ERROR = (
    -32700, -32600, -32601, -32602, -32603)
_HEADER = struct.Struct(">I")
NOT_RESTORED = "not restored yet"   # in the error for a recorded, unrestored session

class FrameError(Exception):
    """A frame that cannot be read; the connection must be closed after replying."""


def encode(message: dict[str, Any]) -> bytes:
    """One frame: 4-byte big-endian length + UTF-8 JSON (ASCII-escaped, so always encodable)."""
    body = json.dumps(message).encode("utf-8")
    if len(body) > MAX_FRAME:
        raise FrameError(f"message of {len(body)} bytes exceeds the {MAX_FRAME} byte frame limit")
    return _HEADER.pack(len(body)) + body


def decode(buffer: bytes, max_size: int = MAX_FRAME) -> tuple[bytes | None, bytes]:
    """Split one frame's payload off ``buffer``: (payload, rest), or (None, buffer) if incomplete."""
    if len(buffer) < 4:
        return None, buffer
    (length,) = _HEADER.unpack_from(buffer)
    if length > max_size:
        raise FrameError(f"frame of {length} bytes exceeds the {max_size} byte limit")
    if len(buffer) < 4 + length:
        return None, buffer
    return buffer[4:4 + length], buffer[4 + length:]


def read_frame(stream: BinaryIO, max_size: int = MAX_FRAME) -> bytes | None:
    """The next payload from a buffered stream; None at a clean end of stream.

    Raises EOFError when the peer closes inside a frame, FrameError for an oversized one.
    """
    header = stream.read(4)
    if not header:
        return None
    if len(header) < 4:
        raise EOFError("connection closed inside a frame header")
    (length,) = _HEADER.unpack(header)
    if length > max_size:
        raise FrameError(f"frame of {length} bytes exceeds the {max_size} byte limit")
    body = stream.read(length)
    if len(body) < length:
        raise EOFError("connection closed inside a frame body")
    return body


def error_reply(request_id: Any, code: int, message: str) -> dict[str, Any]:
    return {"id": request_id, "error": {"code": code, "message": message}}


class RpcError(Exception):
    """A protocol-level error (bad request or params) with its JSON-RPC code."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message



def parse_listen(text: str, option: str = "--listen") -> tuple[str, int]:
    """``HOST:PORT``, ``[v6]:PORT``, ``:PORT`` or ``PORT`` → (host, port); host defaults to
    127.0.0.1. The one parser of listen addresses (agent, ``--agent``, MCP ``--http``)."""
    host, sep, port = text.rpartition(":")
    host = host.strip("[]") if sep else ""
    if not sep:
        port = text
    if not port.isdigit() or int(port) > 65535:
        raise ValueError(f"{option} wants HOST:PORT, got {text!r}")
    return host or "127.0.0.1", int(port)


def is_loopback(host: str) -> bool:
    try:
        return host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False

