"""How the workspace is mounted so that files keep the right owner on both sides.

Inside, the agent runs as `code` (uid 1000); on the host, files it creates must belong to the
invoking user. Two mechanisms:
- `shift=true` (idmapped mount): host uid N appears as N inside. Correct only when the host
  user's uid equals the code uid, and refused by Incus in restricted (incus-user) projects.
- `raw.idmap` "uid <host uid> 1000 / gid <host gid> 1000": maps the host user onto `code`.
  Needs `root:<uid>:1` in /etc/subuid and `root:<gid>:1` in /etc/subgid (host setup adds them).
  In a restricted project Incus also checks this against restricted.idmap.uid/gid.
Restricted projects mount disks only under restricted.devices.disk.paths (the user's home).
"""

from __future__ import annotations

import os
import pwd
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from coi.launcher.errors import SessionError, WorkspaceError

WORKSPACE_PATH = "/workspace"


@dataclass(frozen=True)
class WorkspaceMount:
    """The disk device and instance config that mount a workspace."""

    device: dict[str, str]
    config: dict[str, str] = field(default_factory=dict)
    method: str = "shift"
    warning: str = ""


def plan_workspace_mount(
    workspace: Path,
    *,
    host_uid: int,
    host_gid: int,
    code_uid: int,
    restricted_project: bool,
    idmapped_mounts: bool,
    allowed_disk_paths: Sequence[str] | None = None,
) -> WorkspaceMount:
    """Choose shift or raw.idmap for this user and server.

    In a restricted project the workspace must also lie under `allowed_disk_paths` (the
    project's restricted.devices.disk.paths; None: the user's home, as incus-user sets it).
    """
    device = {"type": "disk", "source": str(workspace), "path": WORKSPACE_PATH}
    if host_uid == 0:
        # Mapping host root into a container would hand it root-owned files; keep the
        # identity shift instead and say what that means.
        if restricted_project or not idmapped_mounts:
            raise SessionError(
                "running coi as root needs idmapped mounts on an unrestricted project",
                hint="run coi as your own user (see README, Host setup)",
            )
        return WorkspaceMount(
            {**device, "shift": "true"},
            method="shift",
            warning=f"running as root: new workspace files will be owned by uid {code_uid}",
        )
    if restricted_project:
        check_restricted_disk_path(workspace, host_uid, allowed_disk_paths)
    if host_uid == code_uid and idmapped_mounts and not restricted_project:
        return WorkspaceMount({**device, "shift": "true"}, method="shift")
    raw = f"uid {host_uid} {code_uid}\ngid {host_gid} {code_uid}"
    return WorkspaceMount(device, {"raw.idmap": raw}, method="raw.idmap")


def _home_of(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_dir
    except KeyError:
        return ""


def _under(path: str, parent: str) -> bool:
    parent = os.path.normpath(parent)
    return parent != "" and (path == parent or path.startswith(parent.rstrip("/") + "/"))


def check_restricted_disk_path(
    workspace: Path,
    host_uid: int,
    allowed: Sequence[str] | None = None,
    *,
    what: str = "workspace",
) -> None:
    """Refuse, before Incus does, a disk source a restricted project may not mount.

    Incus allows disk devices only under the project's restricted.devices.disk.paths (the
    user's home for incus-user projects). Both the path as given and its target after
    symlinks must lie there (the allowed path itself may be a link, e.g. a home under a
    linked /home), so a link in the home does not lead elsewhere. `what` names the
    path in the error ("workspace", "mount source", ...).
    """
    paths = [p for p in (allowed if allowed is not None else [_home_of(host_uid)]) if p]
    given = os.path.normpath(str(workspace))
    real = os.path.realpath(given)
    # Like Incus: the path as given lies under an allowed path, and what it resolves to lies
    # beneath that path resolved (Incus opens it with RESOLVE_BENEATH when the disk starts).
    if any(_under(given, a) and _under(real, os.path.realpath(a)) for a in paths):
        return
    where = ", ".join(paths) or "no path at all"
    shown = given if given == real else f"{given} (-> {real})"
    raise WorkspaceError(
        f"{what} {shown} is outside the paths your restricted Incus project "
        f"user-{host_uid} may mount (restricted.devices.disk.paths: {where})",
        hint=f"put the {what} under your home directory, or ask the administrator to "
        f"extend restricted.devices.disk.paths of project user-{host_uid}",
    )


def _delegated(path: str, owner: str, ident: int) -> bool:
    try:
        lines = Path(path).read_text().splitlines()
    except OSError:
        return False
    for line in lines:
        parts = line.strip().split(":")
        if len(parts) != 3 or parts[0] != owner:
            continue
        try:
            start, count = int(parts[1]), int(parts[2])
        except ValueError:
            continue
        if start <= ident < start + count:
            return True
    return False


def check_idmap_delegation(host_uid: int, host_gid: int) -> None:
    """Fail early, with the fix, when Incus may not map this user (raw.idmap would fail)."""
    missing = []
    if not _delegated("/etc/subuid", "root", host_uid):
        missing.append(f"root:{host_uid}:1 in /etc/subuid")
    if not _delegated("/etc/subgid", "root", host_gid):
        missing.append(f"root:{host_gid}:1 in /etc/subgid")
    if missing:
        raise SessionError(
            "Incus may not map your user into the container (missing "
            + " and ".join(missing)
            + ")",
            hint="run `sudo packaging/host-setup --user $USER` once",
        )
