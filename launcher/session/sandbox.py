"""Creating, starting and removing the sandbox container of a workspace slot."""

from __future__ import annotations

import os
import re
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from coi.launcher.errors import ImageError, IncusError, SessionError, UsageError, WorkspaceError
from coi.launcher.incus.client import IncusClient
from coi.launcher.incus.types import InstanceInfo, InstanceSpec
from coi.launcher.progress import Progress, warn
from coi.launcher.session.idmap import check_idmap_delegation, plan_workspace_mount
from coi.launcher.session.naming import MAX_SLOT, check_slot, container_name, container_prefix
from coi.launcher.session.phases import Teardown

CODE_USER = "code"
CODE_UID = 1000
CODE_HOME = "/home/code"
_ENV_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# Config keys coi stores on its containers (user.* keys are free-form in Incus).
KEY_WORKSPACE = "user.coi.workspace"
KEY_SLOT = "user.coi.slot"
KEY_NONCE = "user.coi.nonce"
KEY_OWNER = "user.coi.owner_uid"
KEY_PERSISTENT = "user.coi.persistent"


def parse_env(pairs: Sequence[str]) -> dict[str, str]:
    """Parse repeated `-e KEY=VALUE` flags, or raise `UsageError` naming the bad one."""
    env: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not _ENV_KEY.match(key) or "\0" in value:
            raise UsageError(
                f"invalid --env {pair!r}",
                hint="use KEY=VALUE, KEY made of letters, digits and _ (not starting with a digit)",
            )
        env[key] = value
    return env


def resolve_workspace(path: Path) -> Path:
    """The workspace as an absolute path; it must exist and be a directory."""
    absolute = Path(os.path.abspath(path))
    if not absolute.exists():
        raise WorkspaceError(
            f"workspace {absolute} does not exist", hint="create it or pass -w DIR"
        )
    if not absolute.is_dir():
        raise WorkspaceError(
            f"workspace {absolute} is not a directory", hint="pass a directory with -w DIR"
        )
    return absolute


# Hooks let other features take part in a sandbox's life without this module knowing them:
# `before_start` runs after the container exists and before its first packet (network
# policy: fail closed); `after_start` runs once it is up (credentials, ssh agent, timers).
# Each hook pushes its own undo onto the teardown.
BeforeStart = Callable[[IncusClient, str, Teardown], None]
AfterStart = Callable[[IncusClient, "Sandbox", Teardown], None]


@dataclass(frozen=True)
class SandboxRequest:
    """What the user asked for: workspace, slot, image, persistence, environment.

    `devices` and `config` are merged into the container (on top of the workspace mount);
    `before_start` / `after_start` are the hooks described above.
    """

    workspace: Path
    slot: int = 0
    image: str = "coi"
    persistent: bool = False
    env: Mapping[str, str] = field(default_factory=dict)
    wait_for_network: float = 20.0
    devices: Mapping[str, Mapping[str, str]] = field(default_factory=dict)
    config: Mapping[str, str] = field(default_factory=dict)
    before_start: Sequence[BeforeStart] = ()
    after_start: Sequence[AfterStart] = ()
    # None: an Incus-ephemeral container unless persistent. Interactive sessions pass False
    # so that a `poweroff` inside leaves a stopped container whose session data can still be
    # saved before coi deletes it.
    incus_ephemeral: bool | None = None


@dataclass(frozen=True)
class Sandbox:
    """A running sandbox container."""

    name: str
    slot: int
    workspace: Path
    persistent: bool
    created: bool

    def base_environment(self, extra: Mapping[str, str]) -> dict[str, str]:
        """The environment a command inside gets: a clean login-like set plus -e values."""
        env = {
            "HOME": CODE_HOME,
            "USER": CODE_USER,
            "LOGNAME": CODE_USER,
            "SHELL": "/bin/bash",
            "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "LANG": "C.UTF-8",
            "TERM": os.environ.get("TERM", "xterm-256color"),
            "COI_WORKSPACE": "/workspace",
            # Node-based agents use the system store too (CAs added on the host at build).
            "NODE_EXTRA_CA_CERTS": "/etc/ssl/certs/ca-certificates.crt",
            "COI_CONTAINER": self.name,
        }
        env.update(extra)
        return env


def choose_slot(
    client: IncusClient,
    workspace: Path,
    slot: int,
    persistent: bool,
    lost: frozenset[str] = frozenset(),
) -> tuple[int, InstanceInfo | None]:
    """Pick the slot: the requested one (refused if taken) or the first free of 1..10.

    A persistent container already in the slot is reused when `persistent` is asked for.
    `lost` names containers another coi created between our listing and our create.
    """
    check_slot(slot)
    prefix = container_prefix()
    existing: dict[str, InstanceInfo | None] = {i.name: i for i in client.instances(prefix)}
    existing.update(dict.fromkeys(lost))
    if slot:
        name = container_name(workspace, slot, prefix)
        if name not in existing:
            return slot, None
        info = existing[name]
        if info is None:
            raise SessionError(f"slot {slot} of this workspace was just taken by another session")
        if persistent and info.config.get(KEY_PERSISTENT) == "true":
            return slot, info
        raise SessionError(
            f"slot {slot} of this workspace is taken by container {name} ({info.status.lower()})",
            hint="pick another --slot, omit --slot for the first free one, or `coi kill "
            + name
            + "`",
        )
    if persistent:
        for n in range(1, MAX_SLOT + 1):
            info = existing.get(container_name(workspace, n, prefix))
            if info is not None and info.config.get(KEY_PERSISTENT) == "true":
                return n, info
    for n in range(1, MAX_SLOT + 1):
        if container_name(workspace, n, prefix) not in existing:
            return n, None
    raise SessionError(
        f"all {MAX_SLOT} slots of this workspace are in use",
        hint="`coi list` shows them; `coi kill NAME` frees one",
    )


def _require_image(client: IncusClient, image: str) -> None:
    if client.image_by_alias(image) is None:
        hint = (
            "build it with `coi build`"
            if image == "coi"
            else (
                f"build it with `coi build custom {image} --script FILE`, or check `coi image list`"
            )
        )
        raise ImageError(f"image {image!r} not found in Incus project {client.project}", hint=hint)


def _remove_if_ours(client: IncusClient, name: str, nonce: str) -> None:
    client.wait_instance_idle(name)
    info = client.instance(name)
    if info is not None and info.config.get(KEY_NONCE) == nonce:
        client.remove_instance(name)


def open_sandbox(
    client: IncusClient, request: SandboxRequest, teardown: Teardown, progress: Progress
) -> Sandbox:
    """Create (or reuse) and start the slot's container; register how to undo it.

    Ephemeral containers are always removed by the teardown; a newly created persistent one
    is removed only if a later phase fails (the caller discards the step on success).
    """
    workspace = resolve_workspace(request.workspace)
    _require_image(client, request.image)
    lost: set[str] = set()
    while True:
        sandbox = _create_or_reuse(client, request, workspace, frozenset(lost), teardown, progress)
        if isinstance(sandbox, Sandbox):
            break
        lost.add(sandbox)  # another coi won the race for this slot: take the next free one
    _wait_network(client, sandbox, request, progress)
    for after in request.after_start:
        after(client, sandbox, teardown)
    return sandbox


def _is_name_race(exc: IncusError) -> bool:
    text = str(exc)
    return "already exists" in text or 'busy running a "create" operation' in text


def _create_or_reuse(
    client: IncusClient,
    request: SandboxRequest,
    workspace: Path,
    lost: frozenset[str],
    teardown: Teardown,
    progress: Progress,
) -> Sandbox | str:
    """Reuse the slot's persistent container or create and start a new one.

    Returns the container's name instead of a sandbox when a parallel `coi` created that
    name first (only for an automatically chosen slot).
    """
    slot, existing = choose_slot(client, workspace, request.slot, request.persistent, lost)
    name = container_name(workspace, slot)
    if existing is not None:
        if not existing.running:
            for hook in request.before_start:
                hook(client, name, teardown)
            progress.step(f"starting persistent container {name}")
            client.set_state(name, "start")
        return Sandbox(name, slot, workspace, True, created=False)

    server = client.server_info()
    mount = plan_workspace_mount(
        workspace,
        host_uid=os.getuid(),
        host_gid=os.getgid(),
        code_uid=CODE_UID,
        restricted_project=client.endpoint.mode == "user",
        idmapped_mounts=server.idmapped_mounts,
    )
    if mount.method == "raw.idmap":
        check_idmap_delegation(os.getuid(), os.getgid())
    if mount.warning:
        warn(mount.warning)
    nonce = uuid.uuid4().hex
    spec = InstanceSpec(
        name=name,
        image=request.image,
        ephemeral=(
            not request.persistent if request.incus_ephemeral is None else request.incus_ephemeral
        ),
        config={
            **request.config,
            **mount.config,
            KEY_WORKSPACE: str(workspace),
            KEY_SLOT: str(slot),
            KEY_NONCE: nonce,
            KEY_OWNER: str(os.getuid()),
            KEY_PERSISTENT: "true" if request.persistent else "false",
        },
        devices={**request.devices, "workspace": mount.device},
    )
    progress.step(f"creating container {name} from image {request.image}")
    step = f"remove container {name}"
    teardown.push(step, lambda: _remove_if_ours(client, name, nonce))
    try:
        op = client.create_instance_async(spec)
        client.wait_operation(op, f"creating container {name}")
    except IncusError as exc:
        if request.slot == 0 and _is_name_race(exc) and len(lost) < MAX_SLOT:
            teardown.discard(step)
            return name
        raise
    for hook in request.before_start:
        hook(client, name, teardown)
    progress.step(f"starting {name}")
    try:
        client.set_state(name, "start")
    except IncusError as exc:
        raise SessionError(f"container {name} failed to start: {exc}") from exc
    return Sandbox(name, slot, workspace, request.persistent, created=True)


def _wait_network(
    client: IncusClient, sandbox: Sandbox, request: SandboxRequest, progress: Progress
) -> None:
    if request.wait_for_network <= 0:
        return
    progress.step("waiting for the container's network")
    if not client.wait_for_ipv4(sandbox.name, request.wait_for_network):
        warn(f"{sandbox.name} has no IPv4 address after {request.wait_for_network:.0f} s")
