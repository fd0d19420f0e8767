"""Running commands in a container through the Incus exec websocket API.

Incus protocol (shared/ws in the Incus tree): data are binary messages; an empty text message
is the end-of-stream "barrier"; a close frame also ends a stream. Non-interactive execs get one
websocket per fd (0, 1, 2) plus `control`; interactive ones get a single pty websocket `0` plus
`control`, which carries window-resize and signal messages. The exit code is the operation's
`metadata.return`.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, BinaryIO

from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, unix_connect

from coi.launcher.errors import IncusError
from coi.launcher.incus.client import IncusClient

Sink = Callable[[bytes], None]
_DEFERRED_SIGNALS = {signal.SIGINT, signal.SIGTERM, signal.SIGHUP}


@dataclass(frozen=True)
class ExecRequest:
    """A command to run in a container."""

    command: Sequence[str]
    environment: Mapping[str, str] = field(default_factory=dict)
    user: int = 0
    group: int = 0
    cwd: str = ""
    interactive: bool = False
    width: int = 80
    height: int = 24

    def to_api(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "command": list(self.command),
            "environment": dict(self.environment),
            "wait-for-websocket": True,
            "interactive": self.interactive,
            "user": self.user,
            "group": self.group,
            "record-output": False,
        }
        if self.cwd:
            body["cwd"] = self.cwd
        if self.interactive:
            body["width"] = self.width
            body["height"] = self.height
        return body


def _connect(client: IncusClient, op_id: str, secret: str) -> ClientConnection:
    try:
        return unix_connect(
            client.endpoint.socket_path,
            client.websocket_uri(op_id, secret),
            max_size=None,
            compression=None,
            open_timeout=30,
            close_timeout=2,
            # Incus answers pings only on streams it reads; output streams would time out.
            ping_interval=None,
            # The connection outlives this function (pumps, control channel): direct return.
            legacy=True,
        )
    except (OSError, TimeoutError) as exc:
        raise IncusError(f"cannot attach to the command's streams: {exc}") from exc


def _pump_out(ws: ClientConnection, sink: Sink) -> None:
    """Copy a websocket's binary messages to `sink` until the barrier or close."""
    try:
        while True:
            msg = ws.recv()
            if isinstance(msg, str):  # barrier: end of this stream
                return
            sink(msg)
    except (ConnectionClosed, OSError):
        return


def _pump_in(ws: ClientConnection, source_fd: int, stop: threading.Event) -> None:
    """Copy `source_fd` into a websocket; send the barrier at EOF."""
    try:
        while not stop.is_set():
            data = os.read(source_fd, 65536)
            if not data:
                break
            ws.send(data)
        ws.send("")
    except (ConnectionClosed, OSError):
        return


def writer_for(stream: BinaryIO) -> Sink:
    """A sink writing to a binary stream and flushing at once (interactive feel)."""

    def write(data: bytes) -> None:
        stream.write(data)
        stream.flush()

    return write


class ExecSession:
    """A running exec: its websockets, the control channel and the operation."""

    def __init__(self, client: IncusClient, op_id: str, sockets: dict[str, ClientConnection]):
        self._client = client
        self.op_id = op_id
        self._sockets = sockets
        self._threads: list[threading.Thread] = []
        self._stop = threading.Event()

    @classmethod
    def start(cls, client: IncusClient, instance: str, request: ExecRequest) -> ExecSession:
        """Start `request` in `instance` and connect all its websockets."""
        # Signals wait until every stream is connected: an interrupt between the exec request
        # and its websockets leaves Incus waiting for the missing connections, and its
        # operations API unresponsive, until this process exits.
        previous = signal.pthread_sigmask(signal.SIG_BLOCK, _DEFERRED_SIGNALS)
        try:
            op_id, secrets = client.exec_start(instance, request.to_api())
            sockets: dict[str, ClientConnection] = {}
            try:
                # Incus starts the command only once every websocket is connected.
                order = ["control", *sorted(k for k in secrets if k != "control")]
                for key in order:
                    if key in secrets:
                        sockets[key] = _connect(client, op_id, secrets[key])
            except BaseException:
                for ws in sockets.values():
                    ws.close()
                raise
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, previous)
        return cls(client, op_id, sockets)

    def _spawn(self, target: Callable[..., None], *args: Any) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True)
        thread.start()
        self._threads.append(thread)

    def pump(self, stdin_fd: int | None, stdout: Sink, stderr: Sink | None = None) -> None:
        """Start copying: our stdin into the command, its stdout/stderr to the sinks.

        For interactive (pty) execs, fd 0 carries both directions and `stderr` is unused.
        """
        main = self._sockets["0"]
        if "1" in self._sockets:
            self._spawn(_pump_out, self._sockets["1"], stdout)
            self._spawn(_pump_out, self._sockets["2"], stderr or stdout)
            if stdin_fd is None:
                # A fast command may have ended and closed its streams already.
                with contextlib.suppress(ConnectionClosed, OSError):
                    main.send("")
            else:
                # Not joined: a read blocked on a terminal must not hold up the exit.
                threading.Thread(
                    target=_pump_in, args=(main, stdin_fd, self._stop), daemon=True
                ).start()
        else:
            self._spawn(_pump_out, main, stdout)
            if stdin_fd is not None:
                threading.Thread(
                    target=_pump_in, args=(main, stdin_fd, self._stop), daemon=True
                ).start()

    def send_control(self, command: str, **fields: Any) -> None:
        """Send a control message (window-resize, signal); ignored once the command ended."""
        message = {"command": command, **fields}
        try:
            self._sockets["control"].send(json.dumps(message))
        except (ConnectionClosed, OSError, KeyError):
            return

    def resize(self, width: int, height: int) -> None:
        """Tell the pty its new size."""
        self.send_control("window-resize", args={"width": str(width), "height": str(height)})

    def signal(self, signum: int) -> None:
        """Deliver a signal to the command."""
        self.send_control("signal", signal=signum)

    def wait(self, timeout: float = 86400 * 7) -> int:
        """Wait for the command to end, drain its output and return its exit code."""
        meta = self._client.wait_operation(self.op_id, "running the command", timeout=timeout)
        for thread in self._threads:
            thread.join(timeout=5)
        self.close()
        code = (meta.get("metadata") or {}).get("return")
        if code is None:
            raise IncusError("the command ended without an exit code (container stopped?)")
        return int(code)

    def close(self) -> None:
        """Close every websocket (idempotent)."""
        self._stop.set()
        for ws in self._sockets.values():
            with contextlib.suppress(OSError, RuntimeError):
                ws.close()


def _feed(fd: int, data: bytes) -> None:
    try:
        with open(fd, "wb", closefd=True) as pipe:
            pipe.write(data)
    except OSError:
        return


def run_captured(
    client: IncusClient, instance: str, request: ExecRequest, stdin: bytes = b""
) -> tuple[int, bytes, bytes]:
    """Run a command to completion and return (exit code, stdout, stderr).

    `stdin` is fed through a pipe by a writer thread, so any size works.
    """
    out: list[bytes] = []
    err: list[bytes] = []
    session = ExecSession.start(client, instance, request)
    read_fd: int | None = None
    try:
        if stdin:
            read_fd, write_fd = os.pipe()
            threading.Thread(target=_feed, args=(write_fd, stdin), daemon=True).start()
        session.pump(read_fd, out.append, err.append)
        code = session.wait()
    finally:
        session.close()
        if read_fd is not None:
            with contextlib.suppress(OSError):
                os.close(read_fd)
    return code, b"".join(out), b"".join(err)
