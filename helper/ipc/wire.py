"""Varlink framing: NUL-terminated JSON messages, decoded with hard bounds.

Every limit is checked before the expensive step: the frame size before JSON parsing, the
nesting depth with a linear scan before `json.loads` (so hostile input never reaches the
recursive parser), duplicate keys and non-finite numbers are rejected while parsing.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from coi.helper.ipc.errors import FrameTooLarge, ProtocolError

DEFAULT_MAX_MESSAGE = 256 * 1024
DEFAULT_MAX_DEPTH = 16

# `interface.Method`: a valid interface name, a dot, a member name.
METHOD_NAME = re.compile(
    r"^[A-Za-z]([-]*[A-Za-z0-9])*(\.[A-Za-z0-9]([-]*[A-Za-z0-9])*)+\.[A-Z][A-Za-z0-9]*$"
)
MAX_METHOD_NAME = 255


class FrameDecoder:
    """Splits a byte stream into NUL-terminated frames, refusing frames over `max_size` bytes."""

    def __init__(self, max_size: int = DEFAULT_MAX_MESSAGE) -> None:
        self.max_size = max_size
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[bytes]:
        """Add received bytes; return the complete frames (without their NUL)."""
        self._buf += data
        frames: list[bytes] = []
        while True:
            end = self._buf.find(b"\0")
            if end < 0:
                break
            if end > self.max_size:
                raise FrameTooLarge(f"message larger than {self.max_size} bytes")
            frames.append(bytes(self._buf[:end]))
            del self._buf[: end + 1]
        if len(self._buf) > self.max_size:
            raise FrameTooLarge(f"message larger than {self.max_size} bytes")
        return frames

    @property
    def pending(self) -> int:
        """Bytes received after the last complete frame."""
        return len(self._buf)


def json_depth(data: bytes | str, limit: int) -> int:
    """Maximum nesting of arrays/objects in a JSON text (strings skipped); stops past `limit`."""
    text = data.decode("utf-8", "replace") if isinstance(data, bytes) else data
    depth = deepest = 0
    in_string = escaped = False
    for ch in text:
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in "[{":
            depth += 1
            if depth > deepest:
                deepest = depth
                if deepest > limit:
                    return deepest
        elif ch in "]}":
            depth -= 1
    return deepest


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"duplicate key {key[:64]!r}")
        out[key] = value
    return out


def decode_json(frame: bytes, max_depth: int = DEFAULT_MAX_DEPTH) -> dict[str, Any]:
    """Decode one frame into a JSON object; raises ProtocolError for anything else."""
    try:
        text = frame.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ProtocolError("message is not valid UTF-8") from exc
    if json_depth(text, max_depth) > max_depth:
        raise ProtocolError(f"message nests deeper than {max_depth} levels")
    try:
        value = json.loads(text, parse_constant=_reject_constant, object_pairs_hook=_no_duplicates)
    except (ValueError, RecursionError) as exc:
        # ValueError covers JSONDecodeError, duplicate keys and over-long integer literals.
        raise ProtocolError(f"message is not valid JSON: {str(exc)[:200]}") from exc
    if not isinstance(value, dict):
        raise ProtocolError("message must be a JSON object")
    return value


def encode(message: dict[str, Any]) -> bytes:
    """Encode one message as compact JSON plus the NUL terminator."""
    return json.dumps(message, separators=(",", ":"), allow_nan=False).encode() + b"\0"


# ---------------------------------------------------------------------------- messages
@dataclass(frozen=True)
class Call:
    """A method call as sent by a client."""

    method: str
    parameters: dict[str, Any]
    more: bool = False
    oneway: bool = False

    @property
    def interface(self) -> str:
        """The interface part of `method`."""
        return self.method.rsplit(".", 1)[0]

    @property
    def member(self) -> str:
        """The method name without its interface."""
        return self.method.rsplit(".", 1)[1]

    def to_wire(self) -> dict[str, Any]:
        """The JSON object for this call."""
        msg: dict[str, Any] = {"method": self.method}
        if self.parameters:
            msg["parameters"] = self.parameters
        if self.more:
            msg["more"] = True
        if self.oneway:
            msg["oneway"] = True
        return msg


_CALL_KEYS = {"method", "parameters", "more", "oneway", "upgrade"}


def parse_call(msg: dict[str, Any]) -> Call:
    """Turn a decoded JSON object into a Call; raises ProtocolError on any deviation."""
    unknown = set(msg) - _CALL_KEYS
    if unknown:
        raise ProtocolError(f"unknown call field {sorted(unknown)[0][:64]!r}")
    method = msg.get("method")
    if not isinstance(method, str) or len(method) > MAX_METHOD_NAME:
        raise ProtocolError("'method' must be a string of at most 255 characters")
    if not METHOD_NAME.match(method):
        raise ProtocolError("'method' must look like 'interface.name.Method'")
    params = msg.get("parameters", {})
    if params is None:
        params = {}
    if not isinstance(params, dict):
        raise ProtocolError("'parameters' must be an object")
    flags: dict[str, bool] = {}
    for key in ("more", "oneway", "upgrade"):
        value = msg.get(key, False)
        if value is None:
            value = False
        if not isinstance(value, bool):
            raise ProtocolError(f"'{key}' must be a boolean")
        flags[key] = value
    if flags["upgrade"]:
        raise ProtocolError("protocol upgrades are not supported")
    if flags["more"] and flags["oneway"]:
        raise ProtocolError("'more' and 'oneway' exclude each other")
    return Call(method, params, flags["more"], flags["oneway"])


@dataclass(frozen=True)
class Reply:
    """A reply as received by a client: parameters, or a typed error, maybe more to follow."""

    parameters: dict[str, Any]
    error: str | None = None
    continues: bool = False


def parse_reply(msg: dict[str, Any]) -> Reply:
    """Turn a decoded JSON object into a Reply; raises ProtocolError on any deviation."""
    unknown = set(msg) - {"parameters", "error", "continues"}
    if unknown:
        raise ProtocolError(f"unknown reply field {sorted(unknown)[0][:64]!r}")
    params = msg.get("parameters") or {}
    if not isinstance(params, dict):
        raise ProtocolError("reply 'parameters' must be an object")
    error = msg.get("error")
    if error is not None and not isinstance(error, str):
        raise ProtocolError("reply 'error' must be a string")
    continues = msg.get("continues", False)
    if not isinstance(continues, bool):
        raise ProtocolError("reply 'continues' must be a boolean")
    return Reply(params, error, continues)


def reply_message(
    parameters: dict[str, Any] | None = None, *, error: str | None = None, continues: bool = False
) -> dict[str, Any]:
    """The JSON object of a reply (server side)."""
    msg: dict[str, Any] = {"parameters": parameters or {}}
    if error is not None:
        msg["error"] = error
    if continues:
        msg["continues"] = True
    return msg
