"""Host mounts: parsing ``HOST:CONTAINER[:ro]`` and refusing mounts that would expose the host.

A mount is checked on the path it really points at: symlinks are resolved first, so a link in
the workspace pointing at ``/etc`` or at the home directory is refused like the target itself.
The launcher must hand Incus the resolved `MountSpec.host` (not the path the user typed), so a
symlink swapped after the check cannot redirect the mount.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from coi.launcher.errors import ConfigError

# Host trees that are never mounted into a sandbox, neither whole nor in part.
_HOST_DENIED_TREES = tuple(
    Path(p)
    for p in (
        "/etc",
        "/proc",
        "/sys",
        "/dev",
        "/boot",
        "/run",
        "/var/run",
        "/root",
        "/var/lib/incus",
    )
)
# Container paths that a mount must not cover: the system's own directories (exactly these, or
# anything below the pseudo filesystems), the workspace mount point and the code user's home.
_CONTAINER_DENIED_TREES = tuple(PurePosixPath(p) for p in ("/proc", "/sys", "/dev"))
_CONTAINER_DENIED_EXACT = frozenset(
    PurePosixPath(p)
    for p in (
        "/",
        "/etc",
        "/usr",
        "/bin",
        "/sbin",
        "/lib",
        "/lib64",
        "/boot",
        "/run",
        "/var",
        "/tmp",
        "/home",
        "/root",
        "/workspace",
        "/home/code",
    )
)


@dataclass(frozen=True)
class MountSpec:
    """One host directory or file mounted into the container."""

    host: Path
    container: PurePosixPath
    readonly: bool = False

    def __str__(self) -> str:
        return f"{self.host}:{self.container}{':ro' if self.readonly else ''}"


def parse_mount_spec(text: str, *, base: Path | None = None, home: Path | None = None) -> MountSpec:
    """Parse ``HOST:CONTAINER`` or ``HOST:CONTAINER:ro`` (``:rw`` is accepted too).

    A relative host path is taken relative to `base` (default: the current directory) and a
    leading ``~`` means `home`. The container path is checked here; the host path is checked
    by `validate_mount`.
    """
    parts = text.split(":")
    readonly = False
    if len(parts) == 3 and parts[2] in ("ro", "rw"):
        readonly = parts.pop() == "ro"
    if len(parts) != 2 or not parts[0] or not parts[1]:
        raise ConfigError(
            f"mount {text!r} is not HOST:CONTAINER[:ro]",
            hint="write it like --mount ~/data:/data:ro",
        )
    return MountSpec(
        host=anchor_host_path(parts[0], base=base, home=home),
        container=check_container_path(parts[1]),
        readonly=readonly,
    )


def anchor_host_path(text: str, *, base: Path | None, home: Path | None) -> Path:
    """Make a host path absolute: ``~`` is `home`, a relative path is relative to `base`."""
    if text == "~" or text.startswith("~/"):
        if home is None:
            home = Path.home()
        return home / text[2:] if text != "~" else home
    path = Path(text)
    if not path.is_absolute():
        path = (base or Path.cwd()) / path
    return path


def check_container_path(path: PurePosixPath | str) -> PurePosixPath:
    """Return `path` if it is an absolute, normal container path that a mount may cover."""
    text = str(path)
    pure = PurePosixPath(text)
    if not pure.is_absolute():
        raise ConfigError(f"container path {text!r} must be absolute (start with /)")
    if ".." in pure.parts or os.path.normpath(text) != text or "//" in text:
        raise ConfigError(
            f"container path {text!r} is not in normal form",
            hint=f"write it as {os.path.normpath(text)!r}",
        )
    if pure in _CONTAINER_DENIED_EXACT or any(
        pure == tree or tree in pure.parents for tree in _CONTAINER_DENIED_TREES
    ):
        raise ConfigError(
            f"container path {text!r} is a system directory and cannot be a mount target",
            hint="mount below it instead, e.g. /mnt/NAME or /home/code/NAME",
        )
    return pure


def validate_mount(spec: MountSpec, *, home: Path, protected: Sequence[Path] = ()) -> MountSpec:
    """Check a mount and return it with its host path resolved through every symlink.

    Refused: a host path that does not exist; ``/`` or any directory containing the home
    directory (``/home``); the home directory itself; system trees (``/etc``, ``/proc``,
    ``/sys``, ``/dev``, ``/run``, ``/boot``, ``/root``, Incus' state); sockets, FIFOs and device
    nodes (agent sockets go through ``--ssh-agent``, which uses an Incus proxy device); and
    anything inside, or containing, a `protected` directory (coi's own configuration and trust
    store: a sandbox that can write them could loosen its next sandbox).
    """
    try:
        host = Path(os.path.realpath(spec.host, strict=True))
    except OSError as err:
        raise ConfigError(
            f"mount source {str(spec.host)!r} cannot be resolved: {err.strerror or err}",
            hint="create it first or fix the path",
        ) from None
    real_home = Path(os.path.realpath(home))
    via = "" if host == spec.host else f" (through a symlink to {str(host)!r})"
    if host == Path("/") or host in real_home.parents:
        raise ConfigError(
            f"mount source {str(spec.host)!r}{via} would expose the whole host filesystem",
            hint="mount the one directory the agent needs",
        )
    if host == real_home:
        raise ConfigError(
            f"mount source {str(spec.host)!r}{via} is your whole home directory",
            hint="mount the one directory below it that the agent needs",
        )
    for tree in _HOST_DENIED_TREES:
        if host == tree or tree in host.parents:
            raise ConfigError(
                f"mount source {str(spec.host)!r}{via} lies in the system directory {str(tree)!r}",
                hint="copy what the agent needs into the workspace instead",
            )
    for directory in protected:
        real_dir = Path(os.path.realpath(directory))
        if host == real_dir or real_dir in host.parents or host in real_dir.parents:
            raise ConfigError(
                f"mount source {str(spec.host)!r}{via} overlaps coi's own files in "
                f"{str(directory)!r}",
                hint="a sandbox must not see or change its own configuration",
            )
    mode = os.stat(host).st_mode
    if not (stat.S_ISDIR(mode) or stat.S_ISREG(mode)):
        kind = "socket" if stat.S_ISSOCK(mode) else "device or FIFO"
        raise ConfigError(
            f"mount source {str(spec.host)!r}{via} is a {kind}, not a file or directory",
            hint="use --ssh-agent for the SSH agent; other sockets are not mounted",
        )
    container = check_container_path(spec.container)
    return MountSpec(host=host, container=container, readonly=spec.readonly)


def is_inside(path: Path, directory: Path) -> bool:
    """Whether `path`, with symlinks resolved, is `directory` or lies below it."""
    real = Path(os.path.realpath(path))
    real_dir = Path(os.path.realpath(directory))
    return real == real_dir or real_dir in real.parents
