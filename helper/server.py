"""The socket side of the helper: accept loop, one thread per connection, bounds and idle exit.

Bounds per connection: message size and nesting (FrameDecoder/decode_json), a token-bucket call
rate, a read timeout for silent peers; globally: a maximum number of open connections (extra
ones are closed at once). A protocol violation gets one `ProtocolViolation` reply, then the
connection is closed; any other failure is a typed error reply and the connection goes on.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from coi.helper.identity import IdentityError, PeerIdentity
from coi.helper.interface import Err
from coi.helper.ipc.errors import ProtocolError
from coi.helper.ipc.wire import (
    DEFAULT_MAX_DEPTH,
    DEFAULT_MAX_MESSAGE,
    FrameDecoder,
    decode_json,
    encode,
    parse_call,
    reply_message,
)
from coi.helper.service import CallContext, Service

log = logging.getLogger(__name__)

# Refusals an administrator wants in the log (who tried what on which container).
AUDITED = frozenset(
    {Err.PERMISSION_DENIED, Err.INTERACTIVE_AUTH, Err.NOT_OWNER, Err.POLICY_FORBIDDEN}
)


@dataclass(frozen=True)
class ServerLimits:
    """Bounds of the IPC server."""

    max_message_bytes: int = DEFAULT_MAX_MESSAGE
    max_depth: int = DEFAULT_MAX_DEPTH
    calls_per_second: int = 50
    burst: int = 100
    max_connections: int = 128
    # One user cannot hold every slot: the others (and root) still get served.
    max_connections_per_uid: int = 32
    read_timeout: float = 120.0


class TokenBucket:
    """A per-connection call budget: `rate` calls per second, bursts up to `burst`."""

    def __init__(self, rate: float, burst: int) -> None:
        self.rate, self.burst = rate, float(burst)
        self.tokens = float(burst)
        self.stamp = time.monotonic()

    def take(self) -> bool:
        """Spend one token; False if the budget is exhausted."""
        now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens < 1:
            return False
        self.tokens -= 1
        return True


ContextFactory = Callable[[PeerIdentity], CallContext]


class Server:
    """Serves `service` on a listening Unix socket until idle for `idle_timeout` or stopped."""

    def __init__(
        self,
        listener: socket.socket,
        service: Service,
        make_context: ContextFactory,
        limits: ServerLimits = ServerLimits(),
        idle_timeout: float | None = None,
        use_pidfd: bool = True,
    ) -> None:
        self.listener = listener
        self.service = service
        self.make_context = make_context
        self.limits = limits
        self.idle_timeout = idle_timeout
        self.use_pidfd = use_pidfd
        self._lock = threading.Lock()
        self._active = 0
        self._per_uid: dict[int, int] = {}
        self._last_activity = time.monotonic()
        self._stop_r, self._stop_w = os.pipe2(os.O_CLOEXEC)

    def stop(self) -> None:
        """Ask the accept loop to return (safe from signal handlers and other threads)."""
        with contextlib.suppress(OSError):
            os.write(self._stop_w, b"x")

    @property
    def active_connections(self) -> int:
        """Connections currently being served."""
        with self._lock:
            return self._active

    def serve_forever(self) -> None:
        """Accept connections until stopped or idle."""
        self.listener.setblocking(False)
        poller = select.poll()
        poller.register(self.listener.fileno(), select.POLLIN)
        poller.register(self._stop_r, select.POLLIN)
        while True:
            events = poller.poll(1000)
            if any(fd == self._stop_r for fd, _ in events):
                return
            if events:
                self._accept()
            elif self._idle():
                log.info("idle for %.0f s, exiting", self.idle_timeout or 0)
                return

    def _idle(self) -> bool:
        if self.idle_timeout is None:
            return False
        with self._lock:
            return self._active == 0 and time.monotonic() - self._last_activity > self.idle_timeout

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                # EMFILE and friends: back off instead of spinning; the peer retries.
                log.warning("accept failed: %s", exc)
                time.sleep(0.05)
                return
            with self._lock:
                self._last_activity = time.monotonic()
                if self._active >= self.limits.max_connections:
                    conn.close()
                    continue
                self._active += 1
            thread = threading.Thread(target=self._serve_connection, args=(conn,), daemon=True)
            thread.start()

    def _serve_connection(self, conn: socket.socket) -> None:
        peer: PeerIdentity | None = None
        try:
            conn.setblocking(True)
            conn.settimeout(self.limits.read_timeout)
            try:
                peer = PeerIdentity.from_socket(conn, use_pidfd=self.use_pidfd)
            except IdentityError as exc:
                log.info("refusing connection: %s", exc)
                return
            if not self._claim(peer.uid):
                log.info("uid %d holds too many connections; closing a new one", peer.uid)
                peer.close()
                peer = None
                return
            try:
                Connection(conn, peer, self.service, self.make_context(peer), self.limits).run()
            finally:
                self._release(peer.uid)
        except Exception:
            log.exception("connection handler failed")
        finally:
            if peer is not None:
                peer.close()
            conn.close()
            with self._lock:
                self._active -= 1
                self._last_activity = time.monotonic()

    def _claim(self, uid: int) -> bool:
        with self._lock:
            held = self._per_uid.get(uid, 0)
            if uid != 0 and held >= self.limits.max_connections_per_uid:
                return False
            self._per_uid[uid] = held + 1
            return True

    def _release(self, uid: int) -> None:
        with self._lock:
            left = self._per_uid.get(uid, 1) - 1
            if left:
                self._per_uid[uid] = left
            else:
                self._per_uid.pop(uid, None)


class Connection:
    """One client connection: read frames, dispatch calls in order, write replies."""

    def __init__(
        self,
        sock: socket.socket,
        peer: PeerIdentity,
        service: Service,
        ctx: CallContext,
        limits: ServerLimits,
    ) -> None:
        self.sock = sock
        self.peer = peer
        self.service = service
        self.ctx = ctx
        self.limits = limits
        self.decoder = FrameDecoder(limits.max_message_bytes)
        self.bucket = TokenBucket(limits.calls_per_second, limits.burst)

    def run(self) -> None:
        """Serve until the peer hangs up, times out or violates the protocol."""
        while True:
            try:
                data = self.sock.recv(65536)
            except (TimeoutError, ConnectionError):
                return
            if not data:
                return
            try:
                frames = self.decoder.feed(data)
            except ProtocolError as exc:
                self._violation(str(exc))
                return
            for frame in frames:
                if not self._handle(frame):
                    return

    def _handle(self, frame: bytes) -> bool:
        try:
            call = parse_call(decode_json(frame, self.limits.max_depth))
        except ProtocolError as exc:
            self._violation(str(exc))
            return False
        if not self.bucket.take():
            if not call.oneway:
                self._send(
                    reply_message(
                        {"calls_per_second": self.limits.calls_per_second},
                        error=Err.RATE_LIMITED,
                    )
                )
            return True
        for reply in self.service.dispatch(self.ctx, call):
            if reply.get("error") in AUDITED:
                log.info(
                    "uid %d pid %d: %s refused: %s %s",
                    self.peer.uid,
                    self.peer.pid,
                    call.method,
                    str(reply["error"]).rsplit(".", 1)[-1],
                    reply.get("parameters", {}),
                )
            if not self._send(reply):
                return False
        return True

    def _violation(self, reason: str) -> None:
        log.info("protocol violation from pid %d uid %d: %s", self.peer.pid, self.peer.uid, reason)
        self._send(reply_message({"reason": reason[:512]}, error=Err.PROTOCOL_VIOLATION))

    def _send(self, message: dict[str, object]) -> bool:
        try:
            self.sock.sendall(encode(message))
            return True
        except (OSError, TimeoutError):
            return False
