"""Host integration: what a loaded `Config` means for the sandbox container.

`plan_host_integration` turns the configuration into Incus devices and config keys, the
environment of the agent, and hooks that run around the container's start:

- host mounts (``[mounts]``, ``--mount``): disk devices with the workspace's ownership mapping;
- protected paths (``.git/hooks``...) read-only and secret paths hidden, either as a stage
  tree built by root on the host that root in the container cannot undo (see
  `coi.launcher.session.hostint_guard`), or, for an unprivileged launcher alone, as plain
  read-only devices (a weaker guard: root inside can unmount them; `describe` says so);
- credentials: only the variables asked for (``--forward-env``, ``-e``, ``[env]``), the SSH
  agent through an Incus proxy device (the key never enters), git user.name/user.email;
- limits: Incus instance and root-disk keys, and a run-time limit enforced by a detached
  timer (`coi.launcher.session.hostint_timer`) that outlives the launcher.

Planning makes no Incus call (it only creates the empty placeholders of missing protected
paths, removed again by a teardown step); the hooks do their work when the sandbox starts.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import stat
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from coi.launcher.config.limits import describe_limits, incus_limits, resource_limits
from coi.launcher.config.model import Config
from coi.launcher.errors import HelperError, SessionError
from coi.launcher.helper_client import HelperClient
from coi.launcher.incus.client import IncusClient
from coi.launcher.progress import warn
from coi.launcher.session import hostint_watch as watch
from coi.launcher.session.hostint_guard import (
    StagePlan,
    anchors_of,
    build_stage,
    empty_source,
    remove_stage,
)
from coi.launcher.session.hostint_incus import local_devices, update_instance
from coi.launcher.session.hostint_timer import start_duration_timer
from coi.launcher.session.idmap import (
    WORKSPACE_PATH,
    check_restricted_disk_path,
    plan_workspace_mount,
)
from coi.launcher.session.phases import Teardown
from coi.launcher.session.sandbox import AfterStart, BeforeStart, Sandbox

CODE_HOME = PurePosixPath("/home/code")
# The agent socket lives in the code user's home: /run and /tmp are replaced or cleaned by
# systemd at boot, after the proxy device has created its socket.
SSH_AGENT_PATH = CODE_HOME / ".coi-ssh-agent.sock"
_GLOB_CHARS = frozenset("*?[")


@dataclass
class HostIntegration:
    """Everything the sandbox needs from the configuration.

    Merge `devices` and `config` into `SandboxRequest.devices/config`, `env` into
    `SandboxRequest.env` (``-e`` values given on the command line win), and append
    `before_start` / `after_start` to the request's hooks.
    """

    devices: dict[str, dict[str, str]] = field(default_factory=dict)
    config: dict[str, str] = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict)
    before_start: list[BeforeStart] = field(default_factory=list)
    after_start: list[AfterStart] = field(default_factory=list)
    lines: list[str] = field(default_factory=list)
    # For `SandboxContext`: protected paths inside, limits by label, agent forwarded or not.
    protected_paths: list[str] = field(default_factory=list)
    limits: dict[str, str] = field(default_factory=dict)
    ssh_agent: bool = False

    def describe(self) -> list[str]:
        """Lines for ``~/SANDBOX_CONTEXT.md`` and ``coi info`` (what the sandbox may use)."""
        return list(self.lines)


@dataclass(frozen=True)
class GitIdentity:
    """The host user's git ``user.name`` and ``user.email`` (either may be empty)."""

    name: str = ""
    email: str = ""

    def gitconfig(self) -> str:
        """A ``.gitconfig`` holding only the identity."""
        lines = ["[user]"]
        for key, value in (("name", self.name), ("email", self.email)):
            if value:
                escaped = value.replace("\\", "\\\\").replace('"', '\\"')
                lines.append(f'\t{key} = "{escaped}"')
        return "\n".join(lines) + "\n"


def host_git_identity() -> GitIdentity:
    """Read user.name/user.email from the host's git config (nothing else is taken)."""
    git = shutil.which("git")
    if git is None:
        return GitIdentity()

    def get(key: str) -> str:
        try:
            out = subprocess.run(
                [git, "config", "--get", key], capture_output=True, text=True, timeout=10
            )
        except (OSError, subprocess.TimeoutExpired):
            return ""
        return out.stdout.strip() if out.returncode == 0 else ""

    return GitIdentity(get("user.name"), get("user.email"))


def plan_host_integration(
    config: Config,
    workspace: Path,
    *,
    host_uid: int,
    host_gid: int,
    warnings: list[str],
    restricted_project: bool = False,
    idmapped_mounts: bool = True,
    stage_root: Path | None = None,
    helper_guard: HelperGuard | None = None,
    environ: Mapping[str, str] | None = None,
    git_identity: GitIdentity | None = None,
) -> HostIntegration:
    """Plan devices, config, environment and hooks for `config` in `workspace`.

    `restricted_project`/`idmapped_mounts` describe the Incus endpoint (as for the workspace
    mount) so extra mounts get the same ownership mapping. `stage_root`, when given, is a
    directory where root builds the locked workspace tree (the caller must be root there,
    e.g. coi run as root); without it, `helper_guard` has coi-helper build that tree, and
    without either protected paths are plain read-only devices. `environ`
    (default ``os.environ``) is where forwarded variables and ``SSH_AUTH_SOCK`` are read;
    `git_identity` defaults to the host's git config. Problems that do not stop the session
    are appended to `warnings`.
    """
    environ = os.environ if environ is None else environ
    workspace = Path(os.path.realpath(workspace))
    plan = HostIntegration()
    shift = (
        plan_workspace_mount(
            workspace,
            host_uid=host_uid,
            host_gid=host_gid,
            code_uid=config.incus.code_uid,
            restricted_project=restricted_project,
            idmapped_mounts=idmapped_mounts,
        ).method
        == "shift"
    )
    if restricted_project:
        for spec in config.mounts.default:
            check_restricted_disk_path(spec.host, host_uid)
    _plan_mounts(plan, config, shift)
    _plan_protection(plan, config, workspace, shift, stage_root, helper_guard, warnings)
    _plan_env(plan, config, environ, warnings)
    if restricted_project and config.ssh.forward_agent:
        # Restricted (incus-user) projects block proxy devices, and must: a proxy device
        # connects on the host, by default as root. Creating it is a job for the helper.
        warnings.append(
            "--ssh-agent is not available through the incus-user socket (proxy devices are "
            "blocked in restricted projects); not forwarded"
        )
    else:
        _plan_ssh_agent(plan, config, environ, host_uid, host_gid, warnings)
    identity = host_git_identity() if git_identity is None else git_identity
    if identity.name or identity.email:
        plan.after_start.append(_seed_git_identity(identity, config.incus.code_uid))
        plan.lines.append(f"git identity: {identity.name} <{identity.email}> (from the host)")
    _plan_limits(plan, config)
    return plan


# ---------------------------------------------------------------------------- mounts
def _disk(
    source: Path | str, path: PurePosixPath | str, *, readonly: bool, shift: bool
) -> dict[str, str]:
    device = {"type": "disk", "source": str(source), "path": str(path)}
    if readonly:
        device["readonly"] = "true"
    if shift:
        device["shift"] = "true"
    return device


def _plan_mounts(plan: HostIntegration, config: Config, shift: bool) -> None:
    for index, spec in enumerate(config.mounts.default):
        plan.devices[f"coi-mount-{index}"] = _disk(
            spec.host, spec.container, readonly=spec.readonly, shift=shift
        )
        plan.lines.append(
            f"host mount: {spec.container} ({'read-only' if spec.readonly else 'read-write'})"
        )


# ---------------------------------------------------------------------------- protection
def _relative_matches(workspace: Path, pattern: str) -> list[PurePosixPath]:
    """Workspace-relative paths matching `pattern`, none of them through a symlink."""
    found = []
    for match in sorted(
        glob.glob(pattern, root_dir=workspace, recursive=True, include_hidden=True)
    ):
        rel = PurePosixPath(match)
        if ".." in rel.parts or rel == PurePosixPath("."):
            continue
        if os.path.realpath(workspace / rel) != str(workspace / rel):
            continue  # a symlink (or below one): protecting it would protect something else
        found.append(rel)
    return found


def protected_paths(
    workspace: Path,
    patterns: tuple[str, ...],
    warnings: list[str],
    missing: list[PurePosixPath] | None = None,
) -> tuple[list[PurePosixPath], list[PurePosixPath]]:
    """The protected paths present in `workspace`, and the placeholders created for them.

    A missing protected path whose parent exists (``.husky`` in a workspace without one,
    ``.git/hooks`` in a repository without hooks) is created as an empty directory: an
    agent could otherwise create it and plant files the host runs later. Protecting
    ``.git/hooks`` or ``.git/config`` also protects the files that redirect git elsewhere
    (see `_GIT_REDIRECTS`). Paths that cannot be protected because their parent is missing
    (``.git/hooks`` outside a repository) are appended to `missing`.
    """
    paths: list[PurePosixPath] = []
    created: list[PurePosixPath] = []
    missing = [] if missing is None else missing
    for pattern in patterns:
        matches = _relative_matches(workspace, pattern)
        if not matches and not _GLOB_CHARS & set(pattern):
            rel = PurePosixPath(pattern)
            parent = workspace / rel.parent
            if os.path.realpath(parent) == str(parent) and parent.is_dir():
                try:
                    (workspace / rel).mkdir(mode=0o755)
                except OSError as exc:
                    warnings.append(f"cannot create protected placeholder {rel}: {exc.strerror}")
                else:
                    created.append(rel)
                    matches = [rel]
            elif not (workspace / rel).exists():
                missing.append(rel)
        for rel in matches:
            if rel not in paths:
                paths.append(rel)
    if {".git/hooks", ".git/config"} & set(patterns):
        for rel in _git_redirects(workspace, created, warnings):
            if rel not in paths:
                paths.append(rel)
    # A protected directory covers everything below it.
    paths = [p for p in paths if not any(q in p.parents for q in paths)]
    return paths, created


# Files through which git finds hooks and config somewhere else: protecting .git/hooks and
# .git/config means nothing if an agent can write them. `commondir` is read in every git
# directory (checked: a `.git/commondir` pointing at a planted directory makes the host's
# `git commit` run that directory's hooks), so a missing one is created as "." (the git
# directory itself: git behaves exactly as without it). Submodules keep their own git
# directories (hooks, config) below .git/modules; linked worktrees their own commondir.
_GIT_REDIRECTS = (
    ".git/modules/*/hooks",
    ".git/modules/*/config",
    ".git/modules/*/commondir",
    ".git/worktrees/*/commondir",
)
COMMONDIR_PLACEHOLDER = b".\n"


def _git_redirects(
    workspace: Path, created: list[PurePosixPath], warnings: list[str]
) -> list[PurePosixPath]:
    git = workspace / ".git"
    if git.is_symlink():
        warnings.append(".git is a symbolic link: its hooks and config are not protected")
        return []
    if git.is_file():
        # A worktree's or submodule's "gitdir:" pointer: rewritten, it would send the
        # host's git to a git directory planted in the workspace.
        return [PurePosixPath(".git")]
    if not git.is_dir():
        return []
    paths = [rel for pattern in _GIT_REDIRECTS for rel in _relative_matches(workspace, pattern)]
    commondir = PurePosixPath(".git/commondir")
    if os.path.lexists(workspace / commondir):
        paths.extend(_relative_matches(workspace, str(commondir)))
        return paths
    try:
        fd = os.open(
            workspace / commondir, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644
        )
    except OSError as exc:
        warnings.append(f"cannot create .git/commondir placeholder: {exc.strerror}")
        return paths
    with os.fdopen(fd, "wb") as f:
        f.write(COMMONDIR_PLACEHOLDER)
    created.append(commondir)
    paths.append(commondir)
    return paths


def _plan_protection(
    plan: HostIntegration,
    config: Config,
    workspace: Path,
    shift: bool,
    stage_root: Path | None,
    helper_guard: HelperGuard | None,
    warnings: list[str],
) -> None:
    protected: list[PurePosixPath] = []
    created: list[PurePosixPath] = []
    if config.security.writable_git_hooks:
        plan.lines.append("protected paths: none (writable git hooks were asked for)")
    else:
        missing: list[PurePosixPath] = []
        protected, created = protected_paths(
            workspace, tuple(config.security.protected_paths), warnings, missing
        )
        if missing:
            # Not a warning on every run outside a repository: stated in `describe`.
            plan.lines.append(
                "not protected (missing, an agent could create them): "
                + ", ".join(f"/workspace/{p}" for p in missing)
            )
    secrets: list[PurePosixPath] = []
    for pattern in config.security.secret_paths:
        for rel in _relative_matches(workspace, pattern):
            if rel not in secrets and rel not in protected:
                secrets.append(rel)
    if created:
        # Registered before the stage hook, so its undo runs after the stage is unmounted
        # (a directory that is a mountpoint on the host cannot be removed).
        plan.before_start.append(_remove_placeholders(workspace, created))
    if not protected and not secrets:
        return
    plan.protected_paths = [str(_inside(p)) for p in protected]
    for rel in _hard_linked(workspace, protected):
        warnings.append(
            f"protected file {rel} has other hard links: it stays writable through them; "
            "replace the link by a copy"
        )
    if protected:
        plan.lines.append(
            "read-only (protected): " + ", ".join(f"/workspace/{p}" for p in protected)
        )
    if secrets:
        plan.lines.append("hidden (secret): " + ", ".join(f"/workspace/{p}" for p in secrets))
    if stage_root is not None:
        stage = StagePlan(
            workspace=workspace,
            stage=stage_root,
            anchors=anchors_of([*protected, *secrets]),
            protected=tuple(protected),
            secrets=tuple(secrets),
        )
        plan.before_start.append(_use_stage(stage, shift))
        plan.lines.append("protection: locked mounts (root in the sandbox cannot remove them)")
        return
    # Not a warning on every run: `describe` (coi info, SANDBOX_CONTEXT.md) states it.
    weak_line = (
        "protection: read-only mounts; root in the sandbox (sudo) could unmount them "
        "(the locked workspace built by root on the host closes this)"
    )
    plan.lines.append(
        "protection: locked mounts built by coi-helper (root in the sandbox cannot remove them)"
        if helper_guard is not None
        else weak_line
    )
    weak: dict[str, dict[str, str]] = {}
    for index, rel in enumerate(anchors_of([*protected, *secrets])):
        # Ancestors as mountpoints: a mountpoint cannot be renamed, so `.git` cannot be moved
        # aside with its read-only hooks and replaced by a writable copy.
        weak[f"coi-anchor-{index}"] = _disk(
            workspace / rel, _inside(rel), readonly=False, shift=shift
        )
    for index, rel in enumerate(protected):
        weak[f"coi-protect-{index}"] = _disk(
            workspace / rel, _inside(rel), readonly=True, shift=shift
        )
    for index, rel in enumerate(secrets):
        source = _user_empty_source((workspace / rel).is_dir())
        weak[f"coi-secret-{index}"] = _disk(source, _inside(rel), readonly=True, shift=False)
    if protected:
        plan.before_start.append(_tamper_check(workspace, protected))
    if helper_guard is None:
        plan.devices.update(weak)
        return
    # The read-only devices are what the sandbox gets if the helper refuses (with a warning).
    stage = StagePlan(
        workspace=workspace,
        stage=Path(),
        anchors=(),
        protected=tuple(protected),
        secrets=tuple(secrets),
    )
    plan.before_start.append(_use_helper_stage(helper_guard, stage, shift, plan, weak, weak_line))


def _hard_linked(workspace: Path, protected: list[PurePosixPath]) -> list[PurePosixPath]:
    """Protected regular files with more than one link (a path outside the read-only mount
    reaches the same inode). The agent cannot add links (EXDEV across mounts), only these."""
    found = []
    for entry in watch.snapshot(workspace, protected):
        path = workspace / entry
        with contextlib.suppress(OSError):
            info = os.lstat(path)
            if stat.S_ISREG(info.st_mode) and info.st_nlink > 1:
                found.append(PurePosixPath(entry))
    return sorted(found)


def _inside(rel: PurePosixPath) -> PurePosixPath:
    return PurePosixPath(WORKSPACE_PATH) / rel


def _user_empty_source(is_dir: bool) -> Path:
    """An empty directory or file below the user's cache (Incus restricts disk sources to
    the home directory in incus-user projects)."""
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    path: Path = empty_source(is_dir, cache / "coi" / "empty")
    return path


def _remove_placeholders(workspace: Path, created: list[PurePosixPath]) -> BeforeStart:
    def hook(client: IncusClient, name: str, teardown: Teardown) -> None:
        def undo() -> None:
            # Another sandbox of this workspace may have its read-only mount on a placeholder:
            # removing the directory on the host would silently drop that mount.
            siblings = name.rsplit("-", 1)[0] + "-"
            if any(i.name != name for i in client.instances(siblings)):
                return
            for rel in reversed(created):
                path = workspace / rel
                with contextlib.suppress(OSError):
                    if path.is_dir() and not path.is_symlink():
                        path.rmdir()  # only if still empty
                    elif path.read_bytes() == COMMONDIR_PLACEHOLDER:
                        path.unlink()

        teardown.push(f"remove empty protected placeholders of {name}", undo)

    return hook


def _tamper_check(workspace: Path, protected: list[PurePosixPath]) -> BeforeStart:
    """Record the protected trees before the start; report changes when the session ends."""

    def hook(_client: IncusClient, name: str, teardown: Teardown) -> None:
        before = watch.snapshot(workspace, protected)

        def check() -> None:
            changed = watch.changes(before, watch.snapshot(workspace, protected))
            if not changed:
                return
            cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
            saved = watch.save_originals(before, changed, cache / "coi" / "protected" / name)
            shown = ", ".join(changed[:5]) + (
                f" and {len(changed) - 5} more" if len(changed) > 5 else ""
            )
            warn(
                f"protected paths in {workspace} changed during the session ({shown}); "
                f"review them before running git on the host; originals saved in {saved}"
            )

        teardown.push(f"check the protected paths of {name}", check)

    return hook


def _use_stage(stage: StagePlan, shift: bool) -> BeforeStart:
    """Build the stage tree and point the workspace device at it (recursive bind)."""

    def hook(client: IncusClient, name: str, teardown: Teardown) -> None:
        target = stage.stage / name
        plan = StagePlan(stage.workspace, target, stage.anchors, stage.protected, stage.secrets)
        remove_stage(target)  # left over by a crashed session of a persistent container
        build_stage(plan)
        teardown.push(f"remove the protected workspace of {name}", lambda: remove_stage(target))
        devices = local_devices(client, name)
        workspace = dict(devices.get("workspace") or {})
        if not workspace:
            raise SessionError(f"container {name} has no workspace device to protect")
        workspace.update(source=str(target), recursive="true")
        if shift:
            workspace["shift"] = "true"
        devices["workspace"] = workspace
        update_instance(client, name, devices=devices)

    return hook


@dataclass(frozen=True)
class HelperGuard:
    """coi-helper builds the locked workspace (launcher not root): where and for which project.

    `in_home`: the caller is not an Incus admin (incus-user project), so the helper mounts the
    stage over a directory the launcher creates at `mountpoint(name)` in the home
    (restricted projects accept disk sources only there).
    """

    project: str
    in_home: bool
    socket: str | None = None
    home: Path = field(default_factory=lambda: Path(pwd.getpwuid(os.getuid()).pw_dir))

    def mountpoint(self, name: str) -> Path:
        """The directory in the home the helper mounts the stage of `name` over."""
        return self.home / ".coi-stage" / name


def _use_helper_stage(
    guard: HelperGuard,
    stage: StagePlan,
    shift: bool,
    plan: HostIntegration,
    weak: Mapping[str, Mapping[str, str]],
    weak_line: str,
) -> BeforeStart:
    """Ask coi-helper for the stage and point the workspace device at it (recursive bind);
    if the helper refuses, add the plain read-only devices `weak` instead and warn."""

    def hook(client: IncusClient, name: str, teardown: Teardown) -> None:
        mountpoint = guard.mountpoint(name) if guard.in_home else None
        if mountpoint is not None:
            # The helper's stager holds no DAC capability: it must be able to search the
            # parent (not list it); the mountpoint itself stays the user's own.
            mountpoint.parent.mkdir(mode=0o711, exist_ok=True)
            os.chmod(mountpoint.parent, 0o711)
            mountpoint.mkdir(mode=0o700, exist_ok=True)
            teardown.push(f"remove the stage mountpoint of {name}", lambda: _rmdir(mountpoint))
        try:
            with HelperClient(guard.socket) as helper:
                with contextlib.suppress(HelperError):
                    helper.unstage_workspace(name, guard.project)  # left by a crashed session
                source = helper.stage_workspace(
                    name,
                    guard.project,
                    str(stage.workspace),
                    [str(p) for p in stage.protected],
                    [str(p) for p in stage.secrets],
                )
        except HelperError as exc:
            warn(
                f"{exc}; protected paths are plain read-only mounts that root in the sandbox "
                "could unmount"
            )
            plan.lines[:] = [
                weak_line if line.startswith("protection: locked") else line for line in plan.lines
            ]
            devices = {key: dict(dev) for key, dev in weak.items()}
            workspace = dict(local_devices(client, name).get("workspace") or {})
            if workspace.get("recursive") == "true":
                # A persistent container staged by an earlier session: back to the workspace.
                workspace.pop("recursive")
                workspace["source"] = str(stage.workspace)
                devices["workspace"] = workspace
            update_instance(client, name, devices=devices)
            return

        def unstage() -> None:
            with HelperClient(guard.socket) as helper:
                helper.unstage_workspace(name, guard.project)

        teardown.push(f"remove the protected workspace of {name}", unstage)
        devices = local_devices(client, name)
        workspace = dict(devices.get("workspace") or {})
        if not workspace:
            raise SessionError(f"container {name} has no workspace device to protect")
        workspace.update(source=source, recursive="true")
        if shift:
            workspace["shift"] = "true"
        devices["workspace"] = workspace
        update_instance(client, name, devices=devices)

    return hook


def _rmdir(path: Path) -> None:
    with contextlib.suppress(OSError):
        path.rmdir()  # only if empty, i.e. nothing is mounted on it any more


# ---------------------------------------------------------------------------- credentials
def _plan_env(
    plan: HostIntegration, config: Config, environ: Mapping[str, str], warnings: list[str]
) -> None:
    forwarded = []
    for name in config.env.forward:
        if name in environ:
            plan.env[name] = environ[name]
            forwarded.append(name)
        else:
            warnings.append(f"--forward-env {name}: not set on the host, not forwarded")
    plan.env.update(config.env.set)
    names = sorted({*forwarded, *config.env.set})
    if names:
        plan.lines.append("environment from the host: " + ", ".join(names))


def _plan_ssh_agent(
    plan: HostIntegration,
    config: Config,
    environ: Mapping[str, str],
    host_uid: int,
    host_gid: int,
    warnings: list[str],
) -> None:
    if not config.ssh.forward_agent:
        return
    sock = environ.get("SSH_AUTH_SOCK", "")
    try:
        is_socket = bool(sock) and stat.S_ISSOCK(os.stat(sock).st_mode)
    except OSError:
        is_socket = False
    if not is_socket:
        warnings.append("--ssh-agent: SSH_AUTH_SOCK is not a running agent's socket; not forwarded")
        return
    code = str(config.incus.code_uid)
    plan.devices["coi-ssh-agent"] = {
        "type": "proxy",
        "bind": "container",
        "listen": f"unix:{SSH_AGENT_PATH}",
        "connect": f"unix:{os.path.realpath(sock)}",
        # The host side connects as the user (ssh-agent refuses other uids but root).
        "security.uid": str(host_uid),
        "security.gid": str(host_gid),
        "uid": code,
        "gid": code,
        "mode": "0600",
    }
    plan.env["SSH_AUTH_SOCK"] = str(SSH_AGENT_PATH)
    plan.ssh_agent = True
    plan.lines.append(f"SSH agent: forwarded at {SSH_AGENT_PATH} (keys stay on the host)")


def _seed_git_identity(identity: GitIdentity, code_uid: int) -> AfterStart:
    def hook(client: IncusClient, sandbox: Sandbox, _teardown: Teardown) -> None:
        client.push_file(
            sandbox.name,
            f"{CODE_HOME}/.gitconfig",
            identity.gitconfig().encode(),
            uid=code_uid,
            gid=code_uid,
            mode=0o644,
        )

    return hook


# ---------------------------------------------------------------------------- limits
def _plan_limits(plan: HostIntegration, config: Config) -> None:
    limits = resource_limits(config.limits)
    keys = incus_limits(limits)
    plan.config.update(keys.instance)
    for line in describe_limits(limits):
        label, _, value = line.partition(": ")
        plan.limits[label] = value
        plan.lines.append(f"limit: {line}")
    if keys.root_disk:
        plan.before_start.append(_root_disk_limits(keys.root_disk))
    if limits.duration is not None:
        plan.after_start.append(start_duration_timer(limits.duration.total_seconds()))


def _root_disk_limits(keys: Mapping[str, str]) -> BeforeStart:
    """Override the profile's root device with the limit keys added."""

    def hook(client: IncusClient, name: str, _teardown: Teardown) -> None:
        meta = client.get(f"instances/{name}")
        root = dict((meta.get("expanded_devices") or {}).get("root") or {})
        if not root:
            raise SessionError(f"container {name} has no root disk to limit")
        root.update(keys)
        devices = local_devices(client, name)
        devices["root"] = root
        update_instance(client, name, devices=devices)

    return hook


def plan_for_client(
    client: IncusClient,
    config: Config,
    workspace: Path,
    *,
    warnings: list[str],
    stage_root: Path | None = None,
    environ: Mapping[str, str] | None = None,
    git_identity: GitIdentity | None = None,
    use_helper: bool = True,
) -> HostIntegration:
    """`plan_host_integration` for the calling user and the endpoint `client` talks to.

    Without `stage_root`, not root and with `use_helper`, the locked workspace is built by
    coi-helper when it runs with its stager (`helper_guard_for`).
    """
    guard = None
    if stage_root is None and use_helper and os.geteuid() != 0:
        guard = helper_guard_for(client.project, admin=client.endpoint.mode != "user")
    return plan_host_integration(
        config,
        workspace,
        host_uid=os.getuid(),
        host_gid=os.getgid(),
        warnings=warnings,
        restricted_project=client.endpoint.mode == "user",
        idmapped_mounts=client.server_info().idmapped_mounts,
        stage_root=stage_root,
        helper_guard=guard,
        environ=environ,
        git_identity=git_identity,
    )


def helper_guard_for(project: str, *, admin: bool) -> HelperGuard | None:
    """A `HelperGuard` if coi-helper answers and reports `workspace_guard` (else None: the
    read-only devices, as stated in `describe`)."""
    try:
        with HelperClient(timeout=3.0) as helper:
            if not helper.get_info().features.workspace_guard:
                return None
    except HelperError:
        return None
    return HelperGuard(project=project, in_home=not admin)


_LIMIT_LABELS = {
    "limits.cpu": "CPU",
    "limits.cpu.allowance": "CPU time",
    "limits.memory": "memory",
    "limits.memory.swap": "swap",
    "limits.processes": "processes",
}


def describe_instance(
    config: Mapping[str, str], devices: Mapping[str, Mapping[str, str]], *, now: float
) -> list[str]:
    """What `coi list`/`coi info` show of a running sandbox, read back from its Incus config:
    limits, time left, host mounts, protected and hidden paths, SSH agent."""
    lines = [
        f"limit: {label}: {config[key]}" for key, label in _LIMIT_LABELS.items() if key in config
    ]
    root = devices.get("root") or {}
    for key in ("limits.read", "limits.write", "limits.max", "size"):
        if key in root:
            lines.append(f"limit: disk {key.removeprefix('limits.')}: {root[key]}")
    deadline = config.get("user.coi.deadline", "")
    if deadline.isdigit():
        lines.append(f"run time left: {max(0, int(deadline) - int(now))} s")
    for name, device in sorted(devices.items()):
        path = device.get("path", "")
        ro = device.get("readonly") == "true"
        if name.startswith("coi-mount-"):
            lines.append(f"host mount: {path} ({'read-only' if ro else 'read-write'})")
        elif name.startswith("coi-protect-"):
            lines.append(f"read-only (protected): {path}")
        elif name.startswith("coi-secret-"):
            lines.append(f"hidden (secret): {path}")
        elif name == "coi-ssh-agent":
            lines.append("SSH agent: forwarded")
        elif name == "workspace" and device.get("recursive") == "true":
            lines.append("protection: locked mounts")
    return lines
