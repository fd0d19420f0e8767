"""Finding the Incus socket this user may use, and explaining why when there is none."""

from __future__ import annotations

import grp
import os
import shutil
from dataclasses import dataclass
from typing import Literal

from coi.launcher.errors import IncusUnavailable

ADMIN_SOCKET = "/var/lib/incus/unix.socket"
USER_SOCKET = "/var/lib/incus/unix.socket.user"
SETUP_HINT = "run `sudo packaging/host-setup --user $USER` (see README, Host setup)"


@dataclass(frozen=True)
class IncusEndpoint:
    """Where the launcher talks to Incus, and as whom.

    `mode` is "admin" for the full-access socket (root or group incus-admin) and "user" for
    the incus-user socket, which confines the caller to the project `user-<uid>`.
    """

    socket_path: str
    project: str
    mode: Literal["admin", "user"]


def _can_connect(path: str) -> bool:
    return os.path.exists(path) and os.access(path, os.R_OK | os.W_OK)


def _in_group(name: str) -> bool:
    try:
        gid = grp.getgrnam(name).gr_gid
    except KeyError:
        return False
    return gid in os.getgroups() or gid == os.getgid()


def _configured_member(name: str) -> bool:
    """True if /etc/group lists the user in `name`, even if this login does not have it yet."""
    try:
        members = grp.getgrnam(name).gr_mem
    except KeyError:
        return False
    user = os.environ.get("USER") or os.environ.get("LOGNAME") or ""
    return user in members


def discover_endpoint(project: str = "") -> IncusEndpoint:
    """Pick the Incus socket for this user, or raise `IncusUnavailable` saying why and the fix.

    Order: $COI_INCUS_SOCKET (explicit), the admin socket when accessible, the incus-user
    socket (project `user-<uid>`).
    """
    explicit = os.environ.get("COI_INCUS_SOCKET", "")
    if explicit:
        if not _can_connect(explicit):
            raise IncusUnavailable(
                f"cannot use the Incus socket {explicit} given by COI_INCUS_SOCKET",
                hint="check that the path exists and that you may read and write it",
            )
        mode: Literal["admin", "user"] = "user" if explicit.endswith(".user") else "admin"
        return IncusEndpoint(explicit, project or _default_project(mode), mode)
    if _can_connect(ADMIN_SOCKET):
        return IncusEndpoint(ADMIN_SOCKET, project or "default", "admin")
    if _can_connect(USER_SOCKET):
        return IncusEndpoint(USER_SOCKET, project or _default_project("user"), "user")
    raise _why_unavailable()


def _default_project(mode: str) -> str:
    return f"user-{os.getuid()}" if mode == "user" else "default"


def _why_unavailable() -> IncusUnavailable:
    installed = shutil.which("incus") or os.path.exists("/usr/libexec/incus/incusd")
    if not installed:
        return IncusUnavailable("Incus is not installed on this host", hint=SETUP_HINT)
    if not os.path.exists(ADMIN_SOCKET) and not os.path.exists(USER_SOCKET):
        return IncusUnavailable(
            "Incus is installed but not running (no socket in /var/lib/incus)",
            hint="start it: `sudo systemctl start incus incus-user.socket`, "
            "or re-run `sudo packaging/host-setup` on hosts without systemd",
        )
    if not os.path.exists(USER_SOCKET) and not _in_group("incus-admin"):
        return IncusUnavailable(
            "the incus-user daemon is not running, and you are not in group incus-admin",
            hint="start it: `sudo systemctl start incus-user.socket`, "
            "or re-run `sudo packaging/host-setup`",
        )
    if _configured_member("incus") or _configured_member("incus-admin"):
        return IncusUnavailable(
            "you were added to the incus group, but this login session does not have it yet",
            hint="log out and back in, or run `newgrp incus`",
        )
    return IncusUnavailable(
        "you may not use the Incus socket: you are not in the group incus", hint=SETUP_HINT
    )
