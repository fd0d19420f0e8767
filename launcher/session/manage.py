"""Managing the user's session containers: list, pick, shut down, kill, persist, clean, and
driving their tmux from outside."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from coi.launcher.errors import CoiError, IncusError, SessionError, UsageError
from coi.launcher.incus.client import IncusClient
from coi.launcher.incus.types import InstanceInfo
from coi.launcher.progress import Progress, warn
from coi.launcher.session.naming import container_name, container_prefix
from coi.launcher.session.network import remove_orphan_policies
from coi.launcher.session.sandbox import KEY_OWNER, KEY_PERSISTENT, KEY_SLOT, KEY_WORKSPACE
from coi.launcher.session.shell import (
    KEY_IMAGE,
    KEY_SESSION,
    KEY_TOOL,
    TMUX_SESSION,
    drop_network_policy,
    run_as_code,
    save_state,
    session_of,
    tmux_running,
    update_instance_config,
)
from coi.launcher.session.store import SessionMeta, SessionStore


@dataclass(frozen=True)
class ContainerRow:
    """One line of `coi list`."""

    name: str
    state: str
    mode: str
    workspace: str
    image: str
    ipv4: str
    slot: int
    tool: str
    session: str

    def to_json(self) -> dict[str, Any]:
        """The stable JSON form."""
        return asdict(self)


def my_containers(client: IncusClient) -> list[InstanceInfo]:
    """Containers with coi's prefix that this user created (others share an admin project)."""
    uid = str(os.getuid())
    return [
        i
        for i in client.instances(container_prefix())
        if i.config.get(KEY_OWNER) == uid and KEY_WORKSPACE in i.config
    ]


def _row(client: IncusClient, info: InstanceInfo) -> ContainerRow:
    ipv4 = ""
    if info.running:
        try:
            ipv4 = ", ".join(client.instance_state(info.name).ipv4)
        except IncusError:
            ipv4 = ""
    return ContainerRow(
        name=info.name,
        state=info.status.upper(),
        mode="persistent" if info.config.get(KEY_PERSISTENT) == "true" else "ephemeral",
        workspace=info.config.get(KEY_WORKSPACE, ""),
        image=info.config.get(KEY_IMAGE, ""),
        ipv4=ipv4,
        slot=int(info.config.get(KEY_SLOT, "0") or 0),
        tool=info.config.get(KEY_TOOL, ""),
        session=info.config.get(KEY_SESSION, ""),
    )


def list_containers(client: IncusClient) -> list[ContainerRow]:
    """This user's session containers, by name."""
    return [_row(client, i) for i in sorted(my_containers(client), key=lambda i: i.name)]


def _describe(infos: Sequence[InstanceInfo]) -> str:
    return ", ".join(f"{i.name} ({i.status.lower()})" for i in infos) or "none"


def resolve_targets(client: IncusClient, names: Sequence[str], all_: bool) -> list[str]:
    """The containers NAME... or --all mean; unknown names are an error listing the known."""
    mine = my_containers(client)
    if all_ and names:
        raise UsageError("give container names or --all, not both")
    if all_:
        return [i.name for i in mine]
    if not names:
        raise UsageError(
            "name at least one container, or pass --all",
            hint=f"your containers: {_describe(mine)}",
        )
    known = {i.name for i in mine}
    unknown = [n for n in names if n not in known]
    if unknown:
        raise SessionError(
            f"no container of yours is called {unknown[0]}",
            hint=f"your containers: {_describe(mine)}",
        )
    return list(dict.fromkeys(names))


def pick_attach_target(
    client: IncusClient, store: SessionStore, name: str | None, workspace: Path, slot: int
) -> str:
    """The container `coi attach` means: NAME, the workspace's --slot, or the only running
    one; otherwise a `SessionError` that lists what exists."""
    mine = my_containers(client)
    running = [i for i in mine if i.running]
    if name:
        if name not in {i.name for i in mine}:
            raise SessionError(
                f"no session container of yours is called {name}",
                hint=f"running sessions: {_describe(running)}",
            )
        return name
    if slot:
        wanted = container_name(workspace, slot)
        if wanted not in {i.name for i in running}:
            raise SessionError(
                f"no session runs in slot {slot} of workspace {workspace}",
                hint=f"running sessions: {_describe(running)}",
            )
        return wanted
    if len(running) == 1:
        return running[0].name
    if not running:
        saved = [m for m in store.for_workspace(workspace) if m.saved_at]
        hint = "start one with `coi shell`"
        if mine:
            hint += f"; stopped containers: {_describe(mine)}"
        if saved:
            hint += f"; `coi shell --resume` continues the saved session {saved[-1].id}"
        raise SessionError("no session is running to attach to", hint=hint)
    raise SessionError(
        f"{len(running)} sessions are running; name the one to attach to",
        hint="running: " + _describe(running),
    )


def _save_before_stop(client: IncusClient, name: str, store: SessionStore) -> None:
    """Best-effort save of a running session's tool state (shutdown keeps session data)."""
    try:
        spec, meta = session_of(client, name, store)
        if not spec.state_paths:
            return
        meta = save_state(client, name, spec, store, meta)
        store.write_meta(meta.with_(status="ended", ended_at=meta.saved_at))
    except CoiError as exc:
        warn(f"could not save the session data of {name}: {exc}")


def shutdown(
    client: IncusClient,
    names: Sequence[str],
    *,
    timeout: int,
    progress: Progress,
    store: SessionStore | None = None,
) -> None:
    """Save session data, stop gracefully (forced after `timeout` s), then delete."""
    store = store or SessionStore.default()
    for name in names:
        info = client.instance(name)
        if info is None:
            continue
        if info.running:
            _save_before_stop(client, name, store)
            progress.step(f"stopping {name} (up to {timeout} s)")
            try:
                client.set_state(name, "stop", timeout=timeout)
            except IncusError:
                progress.step(f"{name} did not stop in time; forcing it")
        progress.step(f"deleting {name}")
        client.remove_instance(name)
        drop_network_policy(client, name)


def kill(client: IncusClient, names: Sequence[str], progress: Progress) -> None:
    """Force-stop and delete at once (no saving)."""
    for name in names:
        progress.step(f"killing {name}")
        client.remove_instance(name)
        drop_network_policy(client, name)


def persist(client: IncusClient, names: Sequence[str]) -> None:
    """Mark containers persistent: the session's end stops them instead of deleting them."""
    for name in names:
        update_instance_config(client, name, {KEY_PERSISTENT: "true"})


@dataclass(frozen=True)
class CleanPlan:
    """What `coi clean` removes."""

    containers: tuple[str, ...]
    sessions: tuple[SessionMeta, ...]

    def to_json(self) -> dict[str, Any]:
        """The stable JSON form."""
        return {
            "containers": list(self.containers),
            "sessions": [{"id": m.id, "tool": m.tool} for m in self.sessions],
        }


def plan_clean(
    client: IncusClient, store: SessionStore, *, containers: bool, sessions: bool
) -> CleanPlan:
    """Stopped containers of this user, and saved sessions whose container is not running."""
    mine = my_containers(client)
    running = {i.name for i in mine if i.running}
    return CleanPlan(
        containers=tuple(i.name for i in mine if not i.running) if containers else (),
        sessions=tuple(m for m in store.sessions() if m.container not in running)
        if sessions
        else (),
    )


def execute_clean(client: IncusClient, store: SessionStore, plan: CleanPlan) -> None:
    """Carry out a clean plan."""
    for name in plan.containers:
        client.remove_instance(name)
    for meta in plan.sessions:
        store.remove(meta)
    if plan.containers:
        # Also the policies of containers deleted without coi (the helper keeps them).
        try:
            remove_orphan_policies(client)
        except CoiError as exc:
            warn(f"could not remove orphaned network policies: {exc}")


def _require_tmux(client: IncusClient, name: str) -> None:
    info = client.instance(name)
    if info is None or not info.running:
        raise SessionError(f"container {name} is not running")
    if not tmux_running(client, name):
        raise SessionError(f"no tmux session runs in {name} (the tool has exited)")


def tmux_send(client: IncusClient, name: str, text: str, *, enter: bool = True) -> None:
    """Type `text` into the session (literally), then Enter unless `enter` is False."""
    _require_tmux(client, name)
    code, out = run_as_code(
        client, name, ["tmux", "send-keys", "-t", TMUX_SESSION, "-l", "--", text]
    )
    if code == 0 and enter:
        code, out = run_as_code(client, name, ["tmux", "send-keys", "-t", TMUX_SESSION, "Enter"])
    if code != 0:
        raise SessionError(f"tmux send-keys failed in {name}: {out.strip()}")


def tmux_capture(client: IncusClient, name: str, *, history: int = 0) -> str:
    """The visible pane (plus `history` lines of scrollback) as text."""
    _require_tmux(client, name)
    argv = ["tmux", "capture-pane", "-p", "-t", TMUX_SESSION]
    if history:
        argv += ["-S", f"-{history}"]
    code, out = run_as_code(client, name, argv)
    if code != 0:
        raise SessionError(f"tmux capture-pane failed in {name}: {out.strip()}")
    return out


def tmux_list(client: IncusClient) -> list[dict[str, str]]:
    """Running containers and whether their tmux session is alive."""
    rows = []
    for info in my_containers(client):
        if info.running:
            alive = tmux_running(client, info.name)
            rows.append(
                {
                    "container": info.name,
                    "tmux_session": TMUX_SESSION if alive else "",
                    "tool": info.config.get(KEY_TOOL, ""),
                }
            )
    return rows
