"""Session commands of the `coi` CLI: shell, attach, list, info, shutdown, kill, persist,
clean and tmux. Parsing and printing only; the work is in `coi.launcher.session`.

`register(app)` adds them to the main Typer app.
"""

from __future__ import annotations

import json
import os
import sys
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer
from typer import _click
from typer.core import TyperCommand

from coi.launcher.cli.run_options import (
    ForwardEnvOpt,
    HostFlags,
    LimitCpuAllowanceOpt,
    LimitCpuOpt,
    LimitDiskMaxOpt,
    LimitDiskReadOpt,
    LimitDiskWriteOpt,
    LimitDurationOpt,
    LimitMemoryOpt,
    LimitProcessesOpt,
    LimitSwapOpt,
    MountOpt,
    NetworkOpt,
    ProfileOpt,
    SshAgentOpt,
    WritableHooksOpt,
    load_for_session,
    session_request,
)
from coi.launcher.errors import SessionError, UsageError
from coi.launcher.incus.client import IncusClient
from coi.launcher.progress import Progress
from coi.launcher.session import manage
from coi.launcher.session.naming import check_slot
from coi.launcher.session.network import context_lines
from coi.launcher.session.sandbox import resolve_workspace
from coi.launcher.session.shell import (
    DEFAULT_SYNC_SECONDS,
    ShellRequest,
    run_attach,
    run_shell,
)
from coi.launcher.session.store import SessionStore, check_session_id
from coi.launcher.session.tools import resolve_tool


class OutputFormat(StrEnum):
    """Output formats of listing commands."""

    text = "text"
    json = "json"


class OptionalValueCommand(TyperCommand):
    """A command whose `--resume`/`--continue` take an optional `=ID`.

    Click options either always or never take a value; a bare `--resume` is rewritten to
    `--resume=` (empty: the latest session of the workspace) before parsing.
    """

    optional_value = ("--resume", "--continue")

    def parse_args(self, ctx: _click.Context, args: list[str]) -> list[str]:
        rewritten = []
        for i, arg in enumerate(args):
            if arg == "--":
                rewritten += args[i:]
                break
            rewritten.append(f"{arg}=" if arg in self.optional_value else arg)
        return super().parse_args(ctx, rewritten)


WorkspaceOpt = Annotated[
    Path, typer.Option("--workspace", "-w", help="Project directory mounted at /workspace.")
]
SlotOpt = Annotated[
    int, typer.Option("--slot", help="Slot 1..10 for parallel sessions; 0 = first free.")
]
FormatOpt = Annotated[OutputFormat, typer.Option("--format", help="Output format.")]
NamesArg = Annotated[list[str] | None, typer.Argument(help="Container names.")]
AllOpt = Annotated[bool, typer.Option("--all", help="Every session container of yours.")]


def sync_seconds() -> float:
    """Seconds between background saves (COI_SESSION_SYNC_SECONDS, default 60)."""
    raw = os.environ.get("COI_SESSION_SYNC_SECONDS", "")
    try:
        return float(raw) if raw else DEFAULT_SYNC_SECONDS
    except ValueError:
        raise UsageError(f"COI_SESSION_SYNC_SECONDS={raw!r} is not a number") from None


def shell(
    workspace: WorkspaceOpt = Path("."),
    slot: SlotOpt = 0,
    persistent: Annotated[
        bool, typer.Option("--persistent", help="Keep the container (and what is installed).")
    ] = False,
    resume: Annotated[
        str | None,
        typer.Option(
            "--resume",
            "--continue",
            help="Continue a saved session: bare = the latest of this workspace, =ID a given one.",
        ),
    ] = None,
    tool: Annotated[str | None, typer.Option("--tool", help="Agent tool spec to run.")] = None,
    image: Annotated[str | None, typer.Option("--image", help="Image alias.")] = None,
    profile: ProfileOpt = None,
    env: Annotated[
        list[str] | None, typer.Option("--env", "-e", help="KEY=VALUE inside (repeatable).")
    ] = None,
    mount: MountOpt = None,
    network: NetworkOpt = None,
    ssh_agent: SshAgentOpt = False,
    forward_env: ForwardEnvOpt = None,
    monitor: Annotated[
        bool, typer.Option("--monitor", help="Threat monitoring (not in this version yet: warns).")
    ] = False,
    writable_git_hooks: WritableHooksOpt = False,
    limit_cpu: LimitCpuOpt = None,
    limit_cpu_allowance: LimitCpuAllowanceOpt = None,
    limit_memory: LimitMemoryOpt = None,
    limit_swap: LimitSwapOpt = None,
    limit_disk_read: LimitDiskReadOpt = None,
    limit_disk_write: LimitDiskWriteOpt = None,
    limit_disk_max: LimitDiskMaxOpt = None,
    limit_processes: LimitProcessesOpt = None,
    limit_duration: LimitDurationOpt = None,
    debug: Annotated[bool, typer.Option("--debug", help="Run bash instead of the tool.")] = False,
    background: Annotated[
        bool, typer.Option("--background", help="Start detached; `coi attach` later.")
    ] = False,
) -> None:
    """Start the agent in a tmux session in the workspace's sandbox and attach to it.

    Detach with the tmux prefix then d (Ctrl-b d); `coi attach` returns. When the tool exits
    its state is saved to ~/.coi/sessions-<tool>/<id>/ and the container is deleted (kept
    and stopped with --persistent).
    """
    check_slot(slot)
    if resume:
        check_session_id(resume)
    flags = HostFlags(
        profile=profile,
        mounts=mount or [],
        forward_env=forward_env or [],
        env=env or [],
        ssh_agent=ssh_agent,
        writable_git_hooks=writable_git_hooks,
        persistent=persistent,
        image=image,
        limit_cpu=limit_cpu,
        limit_cpu_allowance=limit_cpu_allowance,
        limit_memory=limit_memory,
        limit_swap=limit_swap,
        limit_disk_read=limit_disk_read,
        limit_disk_write=limit_disk_write,
        limit_disk_max=limit_disk_max,
        limit_processes=limit_processes,
        limit_duration=limit_duration,
        network=network,
        tool=tool,
        monitor=monitor,
    )
    ws = resolve_workspace(workspace)
    loaded = load_for_session(ws, flags)
    config = loaded.config
    spec = resolve_tool(config.tool.name)
    client = IncusClient.connect()
    sandbox, plan, session_net = session_request(client, ws, flags, slot=slot, loaded=loaded)
    request = ShellRequest(
        sandbox=sandbox,
        tool=spec,
        permission_mode=config.tool.permission_mode,
        model=config.defaults.model,
        debug=debug,
        background=background,
        resume=resume,
        network_mode=config.network.mode,
        limits=plan.limits,
        protected_paths=plan.protected_paths,
        ssh_agent=plan.ssh_agent,
        host_notes=tuple(plan.describe()),
        network_lines=tuple(context_lines(session_net)),
        sync_seconds=sync_seconds(),
    )
    raise typer.Exit(run_shell(client, request, Progress()))


def attach(
    name: Annotated[str | None, typer.Argument(help="Container (default: the only one).")] = None,
    workspace: WorkspaceOpt = Path("."),
    slot: SlotOpt = 0,
    bash: Annotated[bool, typer.Option("--bash", help="Open bash instead of the tool.")] = False,
) -> None:
    """Re-attach to a running session (the only one, NAME, or the workspace's --slot)."""
    check_slot(slot)
    client = IncusClient.connect()
    target = manage.pick_attach_target(
        client, SessionStore.default(), name, Path(os.path.abspath(workspace)), slot
    )
    raise typer.Exit(run_attach(client, target, bash=bash, sync_seconds=sync_seconds()))


def _table(rows: list[list[str]]) -> None:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())


def list_cmd(
    all_: Annotated[bool, typer.Option("--all", help="Also list saved sessions.")] = False,
    fmt: FormatOpt = OutputFormat.text,
) -> None:
    """Your session containers (name, state, mode, workspace, image, IPv4, slot)."""
    rows = manage.list_containers(IncusClient.connect())
    sessions = list(SessionStore.default().sessions()) if all_ else []
    if fmt is OutputFormat.json:
        data: dict[str, Any] = {"containers": [r.to_json() for r in rows]}
        if all_:
            data["sessions"] = [m.to_json() for m in sessions]
        print(json.dumps(data, indent=2))
        return
    if rows:
        head = ["NAME", "STATE", "MODE", "SLOT", "TOOL", "IMAGE", "IPV4", "WORKSPACE"]
        body = [
            [r.name, r.state, r.mode, str(r.slot), r.tool, r.image, r.ipv4, r.workspace]
            for r in rows
        ]
        _table([head, *body])
    else:
        print("no session containers", file=sys.stderr)
    if all_:
        print()
        if sessions:
            head = ["SESSION", "TOOL", "STATUS", "STARTED", "SAVED", "WORKSPACE"]
            body = [
                [m.id, m.tool, m.status, m.started_at, m.saved_at or "-", m.workspace]
                for m in sorted(sessions, key=lambda m: m.started_at)
            ]
            _table([head, *body])
        else:
            print("no saved sessions", file=sys.stderr)


def info(
    session_id: Annotated[str | None, typer.Argument(help="Session id (default: latest).")] = None,
    workspace: WorkspaceOpt = Path("."),
    fmt: FormatOpt = OutputFormat.text,
) -> None:
    """Details of a saved session (the latest of this workspace if omitted)."""
    store = SessionStore.default()
    if session_id:
        meta = store.find(check_session_id(session_id))
        if meta is None:
            raise SessionError(
                f"no saved session {session_id!r}", hint="`coi list --all` shows saved sessions"
            )
    else:
        ws = resolve_workspace(workspace)
        found = store.for_workspace(ws)
        if not found:
            raise SessionError(
                f"workspace {ws} has no saved sessions", hint="`coi list --all` shows all"
            )
        meta = found[-1]
    directory = store.directory(meta.tool, meta.id)
    data = {**meta.to_json(), "path": str(directory)}
    if fmt is OutputFormat.json:
        print(json.dumps(data, indent=2))
    else:
        for key, value in data.items():
            print(f"{key + ':':14} {'' if value is None else value}")


def shutdown(
    names: NamesArg = None,
    all_: AllOpt = False,
    timeout: Annotated[
        int, typer.Option("--timeout", help="Seconds to wait before forcing.", min=0)
    ] = 60,
) -> None:
    """Stop sessions gracefully (forced after --timeout), save their data, delete them."""
    client = IncusClient.connect()
    targets = manage.resolve_targets(client, names or [], all_)
    manage.shutdown(client, targets, timeout=timeout, progress=Progress())
    for name in targets:
        print(f"shut down {name}")


def _confirm(what: str, force: bool) -> None:
    if force:
        return
    if not sys.stdin.isatty():
        raise UsageError(f"refusing to {what} without confirmation", hint="add --force")
    if not typer.confirm(f"{what}?", default=False):
        raise typer.Exit(1)


def kill(
    names: NamesArg = None,
    all_: AllOpt = False,
    force: Annotated[bool, typer.Option("--force", help="Do not ask for --all.")] = False,
) -> None:
    """Force-stop and delete containers at once (session data is not saved)."""
    client = IncusClient.connect()
    targets = manage.resolve_targets(client, names or [], all_)
    if all_ and targets:
        _confirm(f"kill {len(targets)} container(s): {', '.join(targets)}", force)
    manage.kill(client, targets, Progress())
    for name in targets:
        print(f"killed {name}")


def persist(names: NamesArg = None, all_: AllOpt = False) -> None:
    """Make running ephemeral sessions persistent (stopped, not deleted, at their end)."""
    client = IncusClient.connect()
    targets = manage.resolve_targets(client, names or [], all_)
    manage.persist(client, targets)
    for name in targets:
        print(f"{name} is now persistent")


def clean(
    sessions: Annotated[
        bool, typer.Option("--sessions", help="Remove saved sessions (not the containers).")
    ] = False,
    all_: Annotated[bool, typer.Option("--all", help="Containers and saved sessions.")] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Only show what would go.")] = False,
    force: Annotated[bool, typer.Option("--force", help="Do not ask.")] = False,
    fmt: FormatOpt = OutputFormat.text,
) -> None:
    """Remove stopped session containers (default), saved sessions (--sessions), or both."""
    client = IncusClient.connect()
    store = SessionStore.default()
    plan = manage.plan_clean(
        client, store, containers=all_ or not sessions, sessions=all_ or sessions
    )
    if fmt is OutputFormat.json:
        print(json.dumps({**plan.to_json(), "dry_run": dry_run}))
    else:
        for name in plan.containers:
            print(f"{'would remove' if dry_run else 'removing'} container {name}")
        for meta in plan.sessions:
            print(f"{'would remove' if dry_run else 'removing'} session {meta.tool}/{meta.id}")
        if not plan.containers and not plan.sessions:
            print("nothing to clean", file=sys.stderr)
    if dry_run or (not plan.containers and not plan.sessions):
        return
    count = len(plan.containers) + len(plan.sessions)
    _confirm(f"remove {count} item(s)", force)
    manage.execute_clean(client, store, plan)


tmux_app = typer.Typer(help="Drive a session's tmux from outside (for automation).")


@tmux_app.command("send")
def tmux_send(
    name: Annotated[str, typer.Argument(help="Container.")],
    text: Annotated[str, typer.Argument(help="Text to type.")],
    no_enter: Annotated[bool, typer.Option("--no-enter", help="Do not press Enter.")] = False,
) -> None:
    """Type TEXT into the session, then Enter."""
    client = IncusClient.connect()
    manage.resolve_targets(client, [name], False)
    manage.tmux_send(client, name, text, enter=not no_enter)


@tmux_app.command("capture")
def tmux_capture(
    name: Annotated[str, typer.Argument(help="Container.")],
    history: Annotated[int, typer.Option("--history", help="Scrollback lines.", min=0)] = 0,
) -> None:
    """Print the session's screen."""
    client = IncusClient.connect()
    manage.resolve_targets(client, [name], False)
    sys.stdout.write(manage.tmux_capture(client, name, history=history))


@tmux_app.command("list")
def tmux_list(fmt: FormatOpt = OutputFormat.text) -> None:
    """Running containers and their tmux session."""
    rows = manage.tmux_list(IncusClient.connect())
    if fmt is OutputFormat.json:
        print(json.dumps(rows, indent=2))
        return
    for row in rows:
        print(f"{row['container']}  {row['tmux_session'] or '(no tmux session)'}  {row['tool']}")


SUBCOMMANDS = ("-h", "--help", "--install-completion", "--show-completion")


def default_to_shell(argv: list[str]) -> list[str]:
    """Bare `coi` (or `coi -w DIR ...`, only options) means `coi shell`."""
    if not argv:
        return ["shell"]
    if argv[0].startswith("-") and argv[0] not in SUBCOMMANDS:
        return ["shell", *argv]
    return argv


def register(app: typer.Typer) -> None:
    """Add the session commands to the main app."""
    app.command("shell", cls=OptionalValueCommand)(shell)
    app.command("attach")(attach)
    app.command("list")(list_cmd)
    app.command("ls", hidden=True)(list_cmd)
    app.command("info")(info)
    app.command("shutdown")(shutdown)
    app.command("kill")(kill)
    app.command("persist")(persist)
    app.command("clean")(clean)
    app.add_typer(tmux_app, name="tmux")
