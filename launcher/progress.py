"""Progress lines for long work: shown on a terminal, silent in pipes (stderr only)."""

from __future__ import annotations

import os
import sys
import time


class Progress:
    """Prints `coi: <step>` lines to stderr when stderr is a terminal (or when forced)."""

    def __init__(self, enabled: bool | None = None) -> None:
        if enabled is None:
            enabled = sys.stderr.isatty() or os.environ.get("COI_PROGRESS") == "1"
        self.enabled = enabled
        self._started = time.monotonic()

    def step(self, message: str) -> None:
        """Announce the next step of the work."""
        if self.enabled:
            elapsed = time.monotonic() - self._started
            print(f"\033[2mcoi [{elapsed:5.1f}s]\033[0m {message}", file=sys.stderr, flush=True)


def warn(message: str) -> None:
    """A warning always reaches stderr, terminal or not."""
    print(f"coi: warning: {message}", file=sys.stderr, flush=True)
