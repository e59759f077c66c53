"""Stand-in for ET Phone Home's shared/protocol.py: Request, Response, length-prefixed frames."""

import json
import struct
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class Request:
    method: str
    params: dict = field(default_factory=dict)
    id: str | None = None

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, data: str) -> "Request":
        obj = json.loads(data)
        return cls(method=obj["method"], params=obj.get("params", {}), id=obj.get("id"))


@dataclass
class Response:
    id: str | None = None
    result: Any = None
    error: dict | None = None

    def to_json(self) -> str:
        data: dict = {"id": self.id}
        if self.error:
            data["error"] = self.error
        else:
            data["result"] = self.result
        return json.dumps(data)

    @classmethod
    def from_json(cls, data: str) -> "Response":
        obj = json.loads(data)
        return cls(id=obj.get("id"), result=obj.get("result"), error=obj.get("error"))


def encode_message(text: str) -> bytes:
    body = text.encode("utf-8")
    return struct.pack(">I", len(body)) + body


def decode_message(buffer: bytes) -> tuple[str, bytes]:
    """(message, rest); ValueError while the buffer holds no whole message."""
    if len(buffer) < 4:
        raise ValueError("incomplete header")
    (length,) = struct.unpack(">I", buffer[:4])
    if len(buffer) < 4 + length:
        raise ValueError("incomplete body")
    return buffer[4:4 + length].decode("utf-8"), buffer[4 + length:]
