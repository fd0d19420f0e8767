"""Bridging the user's terminal to an interactive exec in a container.

The local terminal goes into raw mode, so every key (Ctrl-C, Ctrl-Z, Ctrl-D included) travels
as a byte to the pty inside the container; the window size is sent at start and on every
SIGWINCH. The terminal's previous modes come back on every exit path (normal end, exception,
SIGTERM/SIGHUP raised as exceptions by the caller's signal handling).
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import termios
import threading
import tty
from collections.abc import Callable, Iterator
from types import FrameType
from typing import Any

from coi.launcher.errors import IncusError
from coi.launcher.incus.client import IncusClient
from coi.launcher.incus.exec import ExecRequest, ExecSession
from coi.launcher.session.phases import signals_blocked


def terminal_size(fd: int = 1) -> tuple[int, int]:
    """(columns, rows) of the terminal on `fd`, or 80x24 when it is not a terminal."""
    for candidate in (fd, 0, 2):
        with contextlib.suppress(OSError):
            size = os.get_terminal_size(candidate)
            if size.columns and size.lines:
                return size.columns, size.lines
    return 80, 24


@contextlib.contextmanager
def raw_mode(fd: int) -> Iterator[None]:
    """Put terminal `fd` into raw mode for the block; restore the saved modes afterwards."""
    if not os.isatty(fd):
        yield
        return
    saved = termios.tcgetattr(fd)
    try:
        tty.setraw(fd, termios.TCSANOW)
        yield
    finally:
        with contextlib.suppress(termios.error):
            termios.tcsetattr(fd, termios.TCSADRAIN, saved)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        try:
            written = os.write(fd, view)
        except BlockingIOError:
            select.select([], [fd], [], 1.0)
            continue
        view = view[written:]


class _Waker:
    """A self-pipe: signal handlers and threads wake the select loop through it.

    Threads of an abandoned exec may still call `wake` after the bridge returned; once
    closed, the waker ignores them, so they never write into a reused descriptor number.
    """

    def __init__(self) -> None:
        self.read_fd, self.write_fd = os.pipe()
        os.set_blocking(self.read_fd, False)
        os.set_blocking(self.write_fd, False)
        # Re-entrant: a signal handler may run in the main thread while it holds the lock.
        self._lock = threading.RLock()
        self._closed = False

    def wake(self, what: bytes) -> None:
        with self._lock:
            if self._closed:
                return
            with contextlib.suppress(OSError):  # a full pipe already wakes the loop
                os.write(self.write_fd, what)

    def drain(self) -> bytes:
        try:
            return os.read(self.read_fd, 4096)
        except (BlockingIOError, OSError):
            return b""

    def close(self) -> None:
        with self._lock:
            self._closed = True
            for fd in (self.read_fd, self.write_fd):
                with contextlib.suppress(OSError):
                    os.close(fd)


class TerminalExec(ExecSession):
    """An interactive exec that tells when its output stream ended.

    Incus completes an interactive exec only after the client closed its input side too, so
    the bridge must send end-of-input as soon as the command's output ends.
    """

    def __init__(self, client: IncusClient, op_id: str, sockets: dict[str, Any]) -> None:
        super().__init__(client, op_id, sockets)
        self.output_done = threading.Event()
        self.on_output_done: Callable[[], None] = lambda: None

    @classmethod
    def open(cls, client: IncusClient, instance: str, request: ExecRequest) -> TerminalExec:
        """Start an interactive `request` (see `ExecSession.start`)."""
        # Not interruptible half-way (see `exec_as_code` in coi.launcher.session.context).
        with signals_blocked():
            session = cls.start(client, instance, request)
        assert isinstance(session, TerminalExec)
        return session

    def _spawn(self, target: Callable[..., None], *args: Any) -> None:
        def tracked() -> None:
            try:
                target(*args)
            finally:
                self.output_done.set()
                self.on_output_done()

        super()._spawn(tracked)


class Hangup(Exception):
    """The user's terminal went away (SIGHUP, or EIO on reading it) while bridged."""


def bridge(session: TerminalExec, *, stdin_fd: int = 0, stdout_fd: int = 1) -> int:
    """Connect the local terminal to an interactive exec until it ends; return its exit code.

    Keys go to the exec through a pipe that this loop feeds (so no thread is left blocked on
    the terminal after the exec ended); output is written to `stdout_fd` as it arrives.
    Raises `IncusError` when the exec ends without an exit code (container gone), and
    `Hangup` when the terminal went away (the exec is abandoned, not stopped: for tmux that
    is a detach).
    """
    waker = _Waker()
    feed_r, feed_w = os.pipe()
    codes: list[int] = []
    errors: list[IncusError] = []
    done = threading.Event()

    hung_up = threading.Event()

    def on_winch(_signum: int, _frame: FrameType | None) -> None:
        waker.wake(b"w")

    def on_hup(_signum: int, _frame: FrameType | None) -> None:
        hung_up.set()
        waker.wake(b"h")

    def wait() -> None:
        try:
            codes.append(session.wait())
        except IncusError as exc:
            errors.append(exc)
        finally:
            done.set()
            waker.wake(b"d")

    previous = signal.signal(signal.SIGWINCH, on_winch)
    previous_hup = signal.signal(signal.SIGHUP, on_hup)
    stdin_open = True
    session.on_output_done = lambda: waker.wake(b"o")
    try:
        session.pump(feed_r, lambda data: _write_all(stdout_fd, data))
        session.resize(*terminal_size(stdout_fd))
        threading.Thread(target=wait, daemon=True).start()
        with raw_mode(stdin_fd):
            while not done.is_set() and not hung_up.is_set():
                watched = [waker.read_fd, stdin_fd] if stdin_open else [waker.read_fd]
                try:
                    readable, _, _ = select.select(watched, [], [], 1.0)
                except InterruptedError:
                    continue
                if waker.read_fd in readable and b"w" in waker.drain():
                    session.resize(*terminal_size(stdout_fd))
                if session.output_done.is_set() and stdin_open:
                    # The command ended: close our input so Incus completes the exec.
                    os.close(feed_w)
                    feed_w = -1
                    stdin_open = False
                if stdin_open and stdin_fd in readable:
                    try:
                        data = os.read(stdin_fd, 65536)
                    except OSError:  # EIO: the terminal is gone
                        hung_up.set()
                        break
                    if data:
                        _write_all(feed_w, data)
                    else:  # EOF on our stdin: tell the exec, keep showing its output
                        os.close(feed_w)
                        feed_w = -1
                        stdin_open = False
    finally:
        signal.signal(signal.SIGWINCH, previous)
        signal.signal(signal.SIGHUP, previous_hup)
        if feed_w != -1:
            os.close(feed_w)
        waker.close()
        if not done.is_set():
            session.close()
        # feed_r stays open: the pump thread may still be reading it (it sees EOF now that
        # feed_w is closed), and closing it under the thread could hand the number to
        # another file. One descriptor per bridge, freed when coi exits.
    if hung_up.is_set() and not done.is_set():
        raise Hangup("the terminal went away")
    if errors or not codes:
        raise errors[0] if errors else IncusError("the terminal session ended unexpectedly")
    return codes[0]
