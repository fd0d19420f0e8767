"""The run-time limit (``limits.duration``): the container is stopped when its time is up.

Incus has no expiry for running instances, so the launcher spawns a small detached timer
process (its own session, stdio on /dev/null) that survives the launcher: it warns inside
the container a minute before the end (``wall`` and ``~/COI_TIME_LIMIT``) and then force-stops
the container through the Incus API, as the same user. The deadline and the timer's pid are
recorded in the container's config (``user.coi.deadline``, ``user.coi.timer_pid``); the timer
exits as soon as the container is gone, replaced (other nonce) or the deadline key is removed,
which is how `cancel_duration_timer` (for ``coi kill``) cancels it. While the launcher is
attached it also prints the warning on its own stderr.

Run as ``python -m coi.launcher.session.hostint_timer SOCKET PROJECT MODE NAME NONCE DEADLINE``.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from typing import Literal, cast

from coi.launcher.errors import CoiError
from coi.launcher.incus.client import IncusClient
from coi.launcher.incus.endpoint import IncusEndpoint
from coi.launcher.progress import warn
from coi.launcher.session.hostint_incus import run_as_root, update_instance
from coi.launcher.session.phases import Teardown
from coi.launcher.session.sandbox import KEY_NONCE, AfterStart, Sandbox

KEY_DEADLINE = "user.coi.deadline"
KEY_TIMER_PID = "user.coi.timer_pid"
WARN_BEFORE = 60.0
POLL = 1.0
WARNING_FILE = "/home/code/COI_TIME_LIMIT"


def start_duration_timer(seconds: float) -> AfterStart:
    """An after-start hook that starts the timer for a run time of `seconds`."""

    def hook(client: IncusClient, sandbox: Sandbox, teardown: Teardown) -> None:
        info = client.instance(sandbox.name)
        nonce = info.config.get(KEY_NONCE, "") if info is not None else ""
        deadline = int(time.time() + seconds)
        # Recorded before the timer starts: the timer treats a missing key as "cancelled".
        update_instance(client, sandbox.name, config={KEY_DEADLINE: str(deadline)})
        endpoint = client.endpoint
        argv = [
            sys.executable,
            "-m",
            "coi.launcher.session.hostint_timer",
            endpoint.socket_path,
            endpoint.project,
            endpoint.mode,
            sandbox.name,
            nonce,
            str(deadline),
        ]
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
            close_fds=True,
        )
        update_instance(client, sandbox.name, config={KEY_TIMER_PID: str(proc.pid)})
        # The launcher's own warning, only while it is attached.
        delay = max(0.0, deadline - WARN_BEFORE - time.time())
        timers = [
            threading.Timer(delay, lambda: warn(_message(sandbox.name, deadline))),
            threading.Timer(
                max(0.0, deadline - time.time()),
                warn,
                args=(f"the run-time limit of {sandbox.name} is reached; stopping it",),
            ),
        ]
        for timer in timers:
            timer.daemon = True
            timer.start()
            teardown.push(f"stop the run-time messages of {sandbox.name}", timer.cancel)

    return hook


def _message(name: str, deadline: int) -> str:
    left = max(0, int(deadline - time.time()))
    return f"the run-time limit of {name} ends in {left} s; the container will then be stopped"


def cancel_duration_timer(client: IncusClient, name: str) -> None:
    """Cancel the timer of `name` (idempotent): drop the deadline key, end the process."""
    info = client.instance(name)
    if info is None:
        return
    pid = info.config.get(KEY_TIMER_PID, "")
    if KEY_DEADLINE in info.config or pid:
        update_instance(client, name, config={KEY_DEADLINE: "", KEY_TIMER_PID: ""})
    if pid.isdigit() and _is_our_timer(int(pid), name):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(int(pid), signal.SIGTERM)


def _is_our_timer(pid: int, name: str) -> bool:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            args = f.read().split(b"\0")
    except OSError:
        return False
    return b"coi.launcher.session.hostint_timer" in args and name.encode() in args


def _warn_inside(client: IncusClient, name: str, deadline: int) -> None:
    message = "coi: " + _message(name, deadline)
    with contextlib.suppress(CoiError):
        client.push_file(name, WARNING_FILE, (message + "\n").encode(), uid=1000, gid=1000)
    run_as_root(client, name, ["sh", "-c", 'echo "$0" | wall 2>/dev/null; true', message])


def watch(client: IncusClient, name: str, nonce: str, deadline: int) -> str:
    """Wait for the deadline, warn, stop the container; returns why it ended."""
    warned = False
    while True:
        try:
            info = client.instance(name)
        except CoiError:
            time.sleep(POLL)
            continue
        if info is None or info.config.get(KEY_NONCE, "") != nonce:
            return "gone"
        if info.config.get(KEY_DEADLINE) != str(deadline):
            return "cancelled"
        if not info.running and info.status != "Frozen":
            return "stopped"
        now = time.time()
        if not warned and now >= deadline - WARN_BEFORE:
            _warn_inside(client, name, deadline)
            warned = True
        if now >= deadline:
            client.set_state(name, "stop", force=True)
            return "expired"
        time.sleep(min(POLL, max(deadline - now, 0.05)))


def main(argv: Sequence[str]) -> int:
    """Entry point of the detached timer process."""
    socket_path, project, mode, name, nonce, deadline = argv
    endpoint = IncusEndpoint(socket_path, project, cast(Literal["admin", "user"], mode))
    try:
        watch(IncusClient(endpoint), name, nonce, int(deadline))
    except CoiError:
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
