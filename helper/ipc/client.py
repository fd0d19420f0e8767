"""A small blocking varlink client over a Unix stream socket (used by the launcher and tests)."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from types import TracebackType
from typing import Any

from coi.helper.ipc.errors import ProtocolError, VarlinkError
from coi.helper.ipc.wire import (
    DEFAULT_MAX_DEPTH,
    Call,
    FrameDecoder,
    Reply,
    decode_json,
    encode,
    parse_reply,
)

# Replies may be larger than calls (interface descriptions, counters); still bounded.
MAX_REPLY = 4 * 1024 * 1024


class VarlinkConnection:
    """One connection to a varlink service; calls are sequential (varlink has no call ids)."""

    def __init__(self, path: str, timeout: float = 10.0) -> None:
        self.path = path
        self.timeout = timeout
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        self._sock.settimeout(timeout)
        deadline = time.monotonic() + timeout
        while True:
            try:
                self._sock.connect(path)
                break
            except BlockingIOError:
                # The service's listen backlog is full (a burst of clients): retry briefly.
                if time.monotonic() > deadline:
                    self._sock.close()
                    raise
                time.sleep(0.01)
            except BaseException:
                self._sock.close()
                raise
        self._decoder = FrameDecoder(MAX_REPLY)
        self._frames: list[bytes] = []

    def close(self) -> None:
        """Close the socket."""
        self._sock.close()

    def __enter__(self) -> VarlinkConnection:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def send(self, call: Call) -> None:
        """Send one call without waiting for its reply."""
        self._sock.sendall(encode(call.to_wire()))

    def receive(self) -> Reply:
        """Wait for the next reply; raises ProtocolError if the service hangs up."""
        while not self._frames:
            data = self._sock.recv(65536)
            if not data:
                raise ProtocolError("the service closed the connection")
            self._frames.extend(self._decoder.feed(data))
        return parse_reply(decode_json(self._frames.pop(0), DEFAULT_MAX_DEPTH * 4))

    def call(self, method: str, parameters: dict[str, Any] | None = None) -> dict[str, Any]:
        """Call `method` and return its reply parameters; raises VarlinkError for error replies."""
        self.send(Call(method, parameters or {}))
        reply = self.receive()
        if reply.error is not None:
            raise VarlinkError(reply.error, reply.parameters)
        params: dict[str, Any] = reply.parameters
        return params

    def call_more(
        self, method: str, parameters: dict[str, Any] | None = None
    ) -> Iterator[dict[str, Any]]:
        """Call `method` with `more` and yield each reply until the last one."""
        self.send(Call(method, parameters or {}, more=True))
        while True:
            reply = self.receive()
            if reply.error is not None:
                raise VarlinkError(reply.error, reply.parameters)
            yield reply.parameters
            if not reply.continues:
                return

    def call_oneway(self, method: str, parameters: dict[str, Any] | None = None) -> None:
        """Call `method` without a reply."""
        self.send(Call(method, parameters or {}, oneway=True))
