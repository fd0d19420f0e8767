"""`coi shell` and `coi attach`: an agent in a tmux session inside the sandbox, bridged to
the user's terminal through the Incus exec websocket API.

Life of a session: create (or reuse) the slot's container → check the tool's binary → copy
credentials, restore saved state (`--resume`), write ~/SANDBOX_CONTEXT.md → start the tool in
tmux as `code` → attach. When the attach ends, what happened decides the rest:
- detached (tmux prefix d): everything stays; `coi attach` returns to it;
- the tool exited: its state is saved, then the container is deleted (ephemeral) or
  stopped (persistent);
- `sudo poweroff` inside: the stopped container is started once more to save the state;
- the container vanished: the state saved by the periodic sync is what remains.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from enum import StrEnum
from pathlib import Path

from coi.launcher.errors import CoiError, IncusError, SessionError, UsageError
from coi.launcher.incus.client import IncusClient
from coi.launcher.incus.exec import ExecRequest
from coi.launcher.progress import Progress, warn
from coi.launcher.session.context import (
    SandboxContext,
    binary_present,
    capture_state,
    code_environment,
    copy_credentials,
    exec_as_code,
    install_context,
    restore_state,
)
from coi.launcher.session.network import remove_network_policy
from coi.launcher.session.phases import Teardown, phased
from coi.launcher.session.sandbox import (
    CODE_UID,
    KEY_PERSISTENT,
    KEY_SLOT,
    KEY_WORKSPACE,
    Sandbox,
    SandboxRequest,
    open_sandbox,
    resolve_workspace,
)
from coi.launcher.session.store import (
    SessionMeta,
    SessionStore,
    check_session_id,
    new_session_id,
    now_iso,
)
from coi.launcher.session.tools import ToolSpec, known_tools
from coi.launcher.terminal import Hangup, TerminalExec, bridge, terminal_size

TMUX_SESSION = "coi"
TMUX_CONF = "/etc/coi-tmux.conf"
EXIT_FILE = "/tmp/coi-tool-exit"
# The pane's last screen when the tool failed: tmux closes with the tool, so without it the
# user would never read why (e.g. "cannot reach api.anthropic.com").
SCREEN_FILE = "/tmp/coi-tool-screen"
KEY_SESSION = "user.coi.session"
KEY_TOOL = "user.coi.tool"
KEY_IMAGE = "user.coi.image"
# Seconds between background saves of the tool's state while a session is attached.
DEFAULT_SYNC_SECONDS = 60.0
# The status line would take a row from the pane: the tool sees exactly the outer size.
TMUX_CONFIG = b"""\
set -g status off
set -g history-limit 50000
set -sg escape-time 10
set -g window-size latest
setw -g aggressive-resize on
set -g default-terminal "screen-256color"
"""


@dataclass(frozen=True)
class ShellRequest:
    """A `coi shell`: the sandbox, the tool and how to run it."""

    sandbox: SandboxRequest
    tool: ToolSpec
    permission_mode: str = "bypass"
    model: str = ""
    debug: bool = False
    background: bool = False
    resume: str | None = None  # None: fresh; "": latest of this workspace; else an id
    network_mode: str = "restricted"
    limits: Mapping[str, str] = field(default_factory=dict)
    protected_paths: Sequence[str] = ()
    ssh_agent: bool = False
    host_notes: Sequence[str] = ()  # what the host integration set up, for the context file
    network_lines: Sequence[str] = ()  # the network engine's lines for the context file
    host_home: Path = field(default_factory=Path.home)
    sync_seconds: float = DEFAULT_SYNC_SECONDS


class Outcome(StrEnum):
    """How an attach ended."""

    DETACHED = "detached"
    ENDED = "ended"
    POWERED_OFF = "powered-off"
    LOST = "lost"


def update_instance_config(client: IncusClient, name: str, changes: Mapping[str, str]) -> None:
    """Set config keys on an existing container (PATCH keeps the other keys)."""
    client.update_instance(name, config=changes)


def drop_network_policy(client: IncusClient, name: str) -> None:
    """Remove a deleted container's network policy (warn, never fail: it is already gone)."""
    try:
        remove_network_policy(None, name, client.project)
    except CoiError as exc:
        warn(f"{exc}; `coi clean` retries")


def run_as_code(client: IncusClient, name: str, argv: Sequence[str]) -> tuple[int, str]:
    """Run a short command as `code`; (exit code, stdout+stderr text)."""
    code, out, err = exec_as_code(client, name, argv)
    return code, (out + err).decode(errors="replace")


def tmux_running(client: IncusClient, name: str) -> bool:
    """Whether the session's tmux session exists in the container."""
    code, _ = run_as_code(client, name, ["tmux", "has-session", "-t", TMUX_SESSION])
    return code == 0


def _tool_exit_code(client: IncusClient, name: str) -> int:
    try:
        return int(client.pull_file(name, EXIT_FILE).decode().strip() or 0)
    except (IncusError, ValueError):
        return 0


# ---------------------------------------------------------------------------- saving
def save_state(
    client: IncusClient, name: str, spec: ToolSpec, store: SessionStore, meta: SessionMeta
) -> SessionMeta:
    """Copy the tool's state out of the container into the store; returns the new meta."""
    archive = capture_state(client, name, spec)
    store.write_state(meta, archive)
    saved = meta.with_(saved_at=now_iso())
    store.write_meta(saved)
    return saved


class PeriodicSave:
    """Saves the tool's state every `interval` seconds in a thread (own Incus connection),
    so a container deleted from outside still leaves recent session data."""

    def __init__(
        self,
        client: IncusClient,
        name: str,
        spec: ToolSpec,
        store: SessionStore,
        meta: SessionMeta,
        interval: float,
    ) -> None:
        self._args = (name, spec, store)
        self._endpoint = client.endpoint
        self.meta = meta
        self._interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        try:
            client = IncusClient(self._endpoint)
        except CoiError:
            return
        name, spec, store = self._args
        while not self._stop.wait(self._interval):
            try:
                self.meta = save_state(client, name, spec, store, self.meta)
            except CoiError:
                continue

    def __enter__(self) -> PeriodicSave:
        if self._interval > 0:
            self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=30)


# ---------------------------------------------------------------------------- attaching
def attach_terminal(client: IncusClient, name: str, *, bash: bool = False) -> int:
    """Bridge this terminal to the container's tmux session (or a new bash with `bash`)."""
    width, height = terminal_size()
    command = ["bash", "-l"] if bash else ["tmux", "attach-session", "-t", TMUX_SESSION]
    session = TerminalExec.open(
        client,
        name,
        ExecRequest(
            command=command,
            environment=code_environment(),
            user=CODE_UID,
            group=CODE_UID,
            cwd="/workspace",
            interactive=True,
            width=width,
            height=height,
        ),
    )
    return bridge(session)


def say(message: str) -> None:
    """A status line on stderr; silent when the terminal is gone (after a hangup)."""
    with contextlib.suppress(OSError):
        print(message, file=sys.stderr, flush=True)


def _show_last_screen(client: IncusClient, name: str, tool: str, code: int) -> None:
    try:
        screen = client.pull_file(name, SCREEN_FILE).decode(errors="replace")
    except IncusError:
        return
    # The file is the agent's to write: drop control characters so that no escape sequence
    # reaches the user's terminal.
    printable = "".join(c if c.isprintable() or c in "\n\t" else "?" for c in screen)
    lines = [line.rstrip() for line in printable.splitlines() if line.strip()][-20:]
    if lines:
        say(f"coi: {tool} exited with code {code}; its last screen:")
        for line in lines:
            say(f"  | {line}")


def _has_exit_file(client: IncusClient, name: str) -> bool:
    try:
        client.pull_file(name, EXIT_FILE)
    except IncusError:
        return False
    return True


def classify(client: IncusClient, name: str, *, settle: float = 15.0) -> Outcome:
    """What state the session is in after an attach ended.

    A container that is shutting down (poweroff inside, or a delete from outside, which
    stops it first) is watched until it settled, at most `settle` seconds.
    """
    deadline = time.monotonic() + settle
    while True:
        client.wait_instance_idle(name, timeout=settle)
        info = client.instance(name)
        if info is None:
            return Outcome.LOST
        if info.status == "Stopped":
            # `incus delete --force` stops first, then deletes: give the delete a moment.
            time.sleep(1.0)
            client.wait_instance_idle(name, timeout=settle)
            return Outcome.LOST if client.instance(name) is None else Outcome.POWERED_OFF
        if info.running:
            try:
                if tmux_running(client, name):
                    return Outcome.DETACHED
                if _has_exit_file(client, name):
                    return Outcome.ENDED
            except IncusError:
                pass
        # Neither attached nor a recorded exit: the container is probably going down.
        if time.monotonic() >= deadline:
            return Outcome.ENDED if info.running else Outcome.POWERED_OFF
        time.sleep(0.3)


def _stop(client: IncusClient, name: str) -> None:
    try:
        client.set_state(name, "stop", timeout=10)
    except IncusError:
        client.set_state(name, "stop", force=True)


def conclude(
    client: IncusClient,
    name: str,
    outcome: Outcome,
    spec: ToolSpec,
    store: SessionStore,
    meta: SessionMeta,
    *,
    release: Callable[[], object] | None = None,
    progress: Progress | None = None,
) -> int:
    """Finish a session after its attach ended; returns coi's exit code.

    `release` undoes what the `coi shell` that created the container set up (its teardown,
    which deletes an ephemeral container too); without it the container alone is deleted.
    """
    progress = progress or Progress()
    if outcome is Outcome.DETACHED:
        store.write_meta(meta.with_(status="detached"))
        say(f"coi: detached; `coi attach {name}` returns to the session")
        return 0
    if outcome is Outcome.LOST:
        store.write_meta(meta.with_(status="lost", ended_at=now_iso()))
        when = f"saved at {meta.saved_at}" if meta.saved_at else "none was saved"
        say(
            f"coi: container {name} disappeared (deleted from outside?); the session ended "
            f"and its data is in {store.directory(meta.tool, meta.id)} ({when})",
        )
        if release is not None:
            release()
        else:
            drop_network_policy(client, name)
        return 1
    code = 0
    if outcome is Outcome.POWERED_OFF:
        progress.step(f"{name} was powered off; starting it once more to save the session")
        try:
            client.set_state(name, "start")
        except IncusError:
            if client.instance(name) is None:
                return conclude(client, name, Outcome.LOST, spec, store, meta, release=release)
            raise
    else:
        code = _tool_exit_code(client, name)
        if code != 0:
            _show_last_screen(client, name, spec.name, code)
    progress.step(f"saving {spec.name} session data")
    saved = True
    try:
        meta = save_state(client, name, spec, store, meta)
    except CoiError as exc:
        saved = False
        warn(f"could not save the session data: {exc}")
    store.write_meta(meta.with_(status="ended", ended_at=now_iso(), exit_code=code))
    info = client.instance(name)
    persistent = info is not None and info.config.get(KEY_PERSISTENT) == "true"
    if persistent:
        progress.step(f"stopping persistent container {name}")
        _stop(client, name)
    else:
        progress.step(f"deleting container {name}")
    if release is not None:
        release()
    elif not persistent:
        client.remove_instance(name)
        drop_network_policy(client, name)
    if saved:
        say(f"coi: session {meta.id} saved; `coi shell --resume` continues it")
    return code


# ---------------------------------------------------------------------------- coi shell
def _start_tool(client: IncusClient, sandbox: Sandbox, request: ShellRequest, resume: bool) -> None:
    argv = (
        ["bash", "-l"]
        if request.debug
        else request.tool.command(
            permission_mode=request.permission_mode, model=request.model, resume=resume
        )
    )
    env = sandbox.base_environment({**request.tool.env, **request.sandbox.env})
    width, height = terminal_size()
    script = (
        # `trap :` (a handler, reset on exec) keeps this wrapper alive when Ctrl-C ends the
        # tool, so the exit code is still recorded; the tool itself gets the default action.
        f'trap : INT; rm -f {EXIT_FILE} {SCREEN_FILE}; "$@"; rc=$?; '
        f"[ $rc -eq 0 ] || tmux capture-pane -p > {SCREEN_FILE}; echo $rc > {EXIT_FILE}"
    )
    command = [
        "tmux", "-f", TMUX_CONF, "new-session", "-d", "-s", TMUX_SESSION,
        "-x", str(width), "-y", str(height), "-c", "/workspace",
        "bash", "-c", script, "coi-tool", *argv,
    ]  # fmt: skip
    code, out, err = exec_as_code(client, sandbox.name, command, environment=env, cwd="/workspace")
    if code != 0:
        raise SessionError(
            f"could not start {shlex.join(argv)} in tmux in {sandbox.name}: "
            f"{(out + err).decode(errors='replace').strip()[:300]}"
        )


def _prepare(
    client: IncusClient,
    sandbox: Sandbox,
    request: ShellRequest,
    store: SessionStore,
    resumed: SessionMeta | None,
    progress: Progress,
) -> None:
    spec = request.tool
    if not request.debug and not binary_present(client, sandbox.name, spec.binary):
        raise SessionError(
            f"tool {spec.name} needs the command {spec.binary!r}, which is not in image "
            f"{request.sandbox.image!r}",
            hint="rebuild the image (`coi build --force`), or build a custom image that "
            "installs it (`coi build custom NAME --script FILE`)",
        )
    client.push_file(sandbox.name, TMUX_CONF, TMUX_CONFIG, mode=0o644)
    if resumed is not None:
        archive = store.read_state(resumed)
        if archive:
            progress.step(f"restoring session {resumed.id}")
            restore_state(client, sandbox.name, archive)
    copied = copy_credentials(client, sandbox.name, spec, request.host_home)
    if copied:
        progress.step(f"copied {spec.name} credentials: {', '.join(copied)}")
    install_context(
        client,
        sandbox.name,
        spec,
        SandboxContext(
            container=sandbox.name,
            workspace=str(sandbox.workspace),
            slot=sandbox.slot,
            tool=spec.name,
            persistent=sandbox.persistent,
            network_mode=request.network_mode,
            limits=request.limits,
            protected_paths=request.protected_paths,
            ssh_agent=request.ssh_agent,
            notes=request.host_notes,
            network_lines=request.network_lines,
        ),
    )


def _open_session(
    client: IncusClient,
    request: ShellRequest,
    store: SessionStore,
    resumed: SessionMeta | None,
    teardown: Teardown,
    progress: Progress,
) -> tuple[Sandbox, SessionMeta]:
    """Create or reuse the container and start the tool in tmux (or find it running)."""
    spec = request.tool
    session_id = new_session_id()
    sandbox_request = replace(
        request.sandbox,
        incus_ephemeral=False,
        config={
            **request.sandbox.config,
            KEY_SESSION: session_id,
            KEY_TOOL: spec.name,
            KEY_IMAGE: request.sandbox.image,
        },
    )
    sandbox = open_sandbox(client, sandbox_request, teardown, progress)
    if not sandbox.created and tmux_running(client, sandbox.name):
        progress.step(f"rejoining the running session in {sandbox.name}")
        return sandbox, session_of(client, sandbox.name, store)[1]
    if not sandbox.created:
        update_instance_config(client, sandbox.name, {KEY_SESSION: session_id, KEY_TOOL: spec.name})
    meta = SessionMeta(
        id=session_id,
        tool=spec.name,
        workspace=str(sandbox.workspace),
        slot=sandbox.slot,
        container=sandbox.name,
        image=request.sandbox.image,
        persistent=sandbox.persistent,
        started_at=now_iso(),
        resumed_from=resumed.id if resumed else "",
    )
    _prepare(client, sandbox, request, store, resumed, progress)
    progress.step(f"starting {'bash' if request.debug else spec.name} in {sandbox.name}")
    _start_tool(client, sandbox, request, resume=resumed is not None)
    store.write_meta(meta)
    return sandbox, meta


def _attach_and_conclude(
    client: IncusClient,
    sandbox: Sandbox,
    request: ShellRequest,
    store: SessionStore,
    meta: SessionMeta,
    teardown: Teardown,
    progress: Progress,
) -> int:
    """Bridge the terminal until the attach ends, then finish the session accordingly."""
    spec, name = request.tool, sandbox.name
    # SIGTERM while attached: the session data is saved before the teardown removes things.
    teardown.push("save session data", lambda: save_state(client, name, spec, store, meta))
    # An IncusError from the attach means the container went away: classify() says so.
    with (
        PeriodicSave(client, name, spec, store, meta, request.sync_seconds) as sync,
        contextlib.suppress(IncusError, Hangup),
    ):
        attach_terminal(client, name)
    teardown.discard("save session data")
    outcome = classify(client, name)
    if outcome is Outcome.DETACHED:
        return conclude(client, name, outcome, spec, store, sync.meta, progress=progress)
    info = client.instance(name)
    if info is not None and info.config.get(KEY_PERSISTENT) == "true":
        teardown.discard(f"remove container {name}")
    return conclude(
        client, name, outcome, spec, store, sync.meta, release=teardown.run, progress=progress
    )


def run_shell(client: IncusClient, request: ShellRequest, progress: Progress | None = None) -> int:
    """`coi shell`: start (or rejoin) the slot's session and attach this terminal to it."""
    progress = progress or Progress()
    if not request.background and not (os.isatty(0) and os.isatty(1)):
        raise UsageError(
            "coi shell needs a terminal on stdin and stdout",
            hint="use `coi run -- CMD` for non-interactive work, or `coi shell --background`",
        )
    store = SessionStore.default()
    workspace = resolve_workspace(request.sandbox.workspace)
    request = replace(request, sandbox=replace(request.sandbox, workspace=workspace))
    resumed = (
        store.resolve_resume(workspace, request.tool.name, request.resume)
        if request.resume is not None
        else None
    )
    teardown = Teardown()
    with phased(teardown, on_failure_only=True):
        sandbox, meta = _open_session(client, request, store, resumed, teardown, progress)
        if not request.background:
            return _attach_and_conclude(client, sandbox, request, store, meta, teardown, progress)
        store.write_meta(meta.with_(status="detached"))
        print(sandbox.name)
        say(
            f"coi: {request.tool.name} runs in the background in {sandbox.name}; "
            f"`coi attach {sandbox.name}` connects to it"
        )
        return 0


# ---------------------------------------------------------------------------- coi attach
def session_of(client: IncusClient, name: str, store: SessionStore) -> tuple[ToolSpec, SessionMeta]:
    """The tool spec and saved-session record of a running container (created if missing)."""
    info = client.instance(name)
    if info is None:
        raise SessionError(f"container {name} does not exist", hint="`coi list` shows sessions")
    tool_name = info.config.get(KEY_TOOL, "shell")
    tools = known_tools()
    spec = tools.get(tool_name) or tools["shell"]
    session_id = info.config.get(KEY_SESSION, "")
    meta = None
    try:
        meta = store.find(check_session_id(session_id)) if session_id else None
    except UsageError:
        meta = None
    if meta is None:
        meta = SessionMeta(
            id=session_id or new_session_id(),
            tool=spec.name,
            workspace=info.config.get(KEY_WORKSPACE, ""),
            slot=int(info.config.get(KEY_SLOT, "0") or 0),
            container=name,
            image=info.config.get(KEY_IMAGE, ""),
            persistent=info.config.get(KEY_PERSISTENT) == "true",
            started_at=info.created_at,
        )
    return spec, meta


def run_attach(
    client: IncusClient,
    name: str,
    *,
    bash: bool = False,
    sync_seconds: float = DEFAULT_SYNC_SECONDS,
    progress: Progress | None = None,
) -> int:
    """`coi attach NAME`: rejoin a session; finish it when the tool ended meanwhile."""
    progress = progress or Progress()
    if not (os.isatty(0) and os.isatty(1)):
        raise UsageError("coi attach needs a terminal on stdin and stdout")
    store = SessionStore.default()
    spec, meta = session_of(client, name, store)
    info = client.instance(name)
    if info is None or not info.running:
        raise SessionError(
            f"container {name} is not running",
            hint="`coi shell --persistent` restarts a persistent session",
        )
    if not bash and not tmux_running(client, name):
        raise SessionError(
            f"no tmux session runs in {name} (the tool has exited)",
            hint=f"`coi attach {name} --bash` opens a shell there; `coi shutdown {name}` ends it",
        )
    with PeriodicSave(client, name, spec, store, meta, sync_seconds) as sync:
        try:
            code = attach_terminal(client, name, bash=bash)
        except (IncusError, Hangup):
            code = 1
    if bash:
        return code
    return conclude(client, name, classify(client, name), spec, store, sync.meta, progress=progress)
