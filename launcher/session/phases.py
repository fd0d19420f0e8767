"""Phases with teardown: Ctrl-C, SIGTERM or a failure in any phase undoes the earlier ones.

A session is a sequence of phases (create container, start, exec, ...). Each phase that
changes the world registers its undo step on a `Teardown` stack. On any exit path the stack
runs in reverse with SIGINT/SIGTERM/SIGHUP blocked, so a second Ctrl-C cannot leave a
half-removed container behind.
"""

from __future__ import annotations

import signal
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import FrameType

from coi.launcher.errors import CoiError, Interrupted

_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class Terminated(BaseException):
    """Raised in the main thread when SIGTERM or SIGHUP arrives."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def _raise_terminated(signum: int, _frame: FrameType | None) -> None:
    raise Terminated(signum)


@contextmanager
def signals_raise() -> Iterator[None]:
    """SIGTERM/SIGHUP raise `Terminated` (SIGINT already raises KeyboardInterrupt)."""
    old = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGHUP)}
    for s in old:
        signal.signal(s, _raise_terminated)
    try:
        yield
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)


@contextmanager
def signals_blocked() -> Iterator[None]:
    """Defer SIGINT/SIGTERM/SIGHUP until the block ends (they are delivered afterwards)."""
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, _SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


class Teardown:
    """A stack of undo steps, run in reverse order."""

    def __init__(self) -> None:
        self._steps: list[tuple[str, Callable[[], object]]] = []

    def push(self, description: str, undo: Callable[[], object]) -> None:
        """Register how to undo what a phase just did."""
        self._steps.append((description, undo))

    def discard(self, description: str) -> None:
        """Forget an undo step (e.g. a persistent container is kept on success)."""
        self._steps = [s for s in self._steps if s[0] != description]

    def run(self) -> list[str]:
        """Run every step (newest first); returns the failures as sentences, never raises."""
        failures = []
        with signals_blocked():
            while self._steps:
                description, undo = self._steps.pop()
                try:
                    undo()
                except (CoiError, OSError) as exc:
                    failures.append(f"{description}: {exc}")
        return failures


@contextmanager
def phased(teardown: Teardown, *, on_failure_only: bool = False) -> Iterator[Teardown]:
    """Run a block of phases; undo them on any exit (or only on failure/interrupt).

    Ctrl-C and SIGTERM/SIGHUP become `Interrupted` (exit 130/143) after the undo ran.
    """
    ok = False
    try:
        with signals_raise():
            yield teardown
        ok = True
    except KeyboardInterrupt:
        _report(teardown.run())
        raise Interrupted("interrupted; everything this command set up was removed") from None
    except Terminated as exc:
        _report(teardown.run())
        err = Interrupted(f"stopped by signal {signal.Signals(exc.signum).name}; cleaned up")
        err.exit_code = 128 + exc.signum
        raise err from None
    finally:
        if not ok or not on_failure_only:
            _report(teardown.run())


def _report(failures: list[str]) -> None:
    for failure in failures:
        print(f"coi: cleanup failed: {failure}", file=sys.stderr)
