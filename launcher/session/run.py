"""`coi run`: one command in a fresh sandbox, output streamed, exit code propagated."""

from __future__ import annotations

import sys
from collections.abc import Sequence

from coi.launcher.incus.client import IncusClient
from coi.launcher.incus.exec import ExecRequest, ExecSession, writer_for
from coi.launcher.progress import Progress
from coi.launcher.session.phases import Teardown, phased
from coi.launcher.session.sandbox import CODE_UID, SandboxRequest, open_sandbox

DEFAULT_COMMAND = ("bash", "-l")


def run_command(
    client: IncusClient,
    request: SandboxRequest,
    command: Sequence[str],
    *,
    progress: Progress | None = None,
    stdin_fd: int | None = 0,
) -> int:
    """Run `command` as `code` in /workspace of a new sandbox; return its exit code.

    The container is removed afterwards (kept when persistent), also on Ctrl-C, SIGTERM or a
    failure in any phase.
    """
    progress = progress or Progress()
    teardown = Teardown()
    with phased(teardown):
        sandbox = open_sandbox(client, request, teardown, progress)
        argv = list(command) or list(DEFAULT_COMMAND)
        progress.step(f"running {' '.join(argv)} in {sandbox.name}")
        exec_request = ExecRequest(
            command=argv,
            environment=sandbox.base_environment(request.env),
            user=CODE_UID,
            group=CODE_UID,
            cwd="/workspace",
        )
        session = ExecSession.start(client, sandbox.name, exec_request)
        teardown.push("close command streams", session.close)
        session.pump(stdin_fd, writer_for(sys.stdout.buffer), writer_for(sys.stderr.buffer))
        code = session.wait()
        if sandbox.persistent:
            # A persistent container outlives the command; it is removed only when a phase
            # before this point failed.
            teardown.discard(f"remove container {sandbox.name}")
        return code
