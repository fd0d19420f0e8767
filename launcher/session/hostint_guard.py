"""Protected and secret workspace paths that root in the container cannot undo.

Why not simply one read-only Incus disk device per protected path: Incus (LXC) mounts every
disk device inside the container's own mount namespace, which root in the container owns, so
``umount /workspace/.git/hooks`` succeeds and the writable copy underneath, reachable through
the workspace mount, can then be changed (checked on this kernel).

What holds: the kernel *locks* mounts that a mount namespace inherits from a more privileged
one (``MNT_LOCKED``/``MNT_LOCK_READONLY``, set by ``copy_mnt_ns`` for a namespace owned by a
less privileged user namespace). A locked mount cannot be unmounted, moved or remounted
read-write, a non-recursive bind of a tree with locked children is refused, and the lock
survives ``unshare -m`` and recursive binds. So the whole workspace is built on the host, as
root, as one mount tree ("stage")::

    STAGE                 bind of the workspace (rw)
    STAGE/.git            bind of itself (rw)      every ancestor of a protected path is a
                                                   mountpoint, so it cannot be renamed away
    STAGE/.git/hooks      bind of itself, read-only
    STAGE/.git/config     bind of itself, read-only
    STAGE/.env            empty read-only file     (secret path)

and the container's workspace device points at STAGE with ``recursive=true``. Inside, every
mount below /workspace is locked; root can only unmount /workspace as a whole, which reveals
the empty directory of the container's own root file system, never a writable copy.
Verified against remount, umount (also lazy), ``mount --move``, plain and recursive binds,
``unshare -m`` and ``unshare -Urm``, ``nsenter`` into PID 1, rename/delete of the protected
path or its parents, hard links (EXDEV across mounts), ``..`` paths and reopening through
``/proc/self/fd`` (tests/hostint/test_protected_paths.py).

Building the stage needs root on the host (mount(2) in the host's mount namespace):
``coi run`` as root calls `build_stage` itself; for other users coi-helper's stager child
(`coi.helper.stager`, CAP_SYS_ADMIN only) does, after `stage_for_caller` checked the request.
Without a helper that can, the launcher falls back to plain read-only devices (see
`coi.launcher.session.hostint`), which stop the agent only as long as it does not use
root's umount. Paths are opened component by component with
``O_NOFOLLOW`` and mounted through ``/proc/self/fd``, so a symlink planted in the workspace
cannot redirect a root-made mount to another host directory.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import os
import re
import stat
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from coi.launcher.errors import SessionError

MS_RDONLY = 0x1
MS_NOSUID = 0x2
MS_NODEV = 0x4
MS_REMOUNT = 0x20
MS_BIND = 0x1000
MS_REC = 0x4000
MS_PRIVATE = 0x40000
MNT_DETACH = 0x2


@dataclass(frozen=True)
class StagePlan:
    """What the stage tree of one workspace contains (relative paths, parents first)."""

    workspace: Path
    stage: Path
    anchors: tuple[PurePosixPath, ...]  # ancestors of protected paths: rw self-binds
    protected: tuple[PurePosixPath, ...]  # read-only self-binds
    secrets: tuple[PurePosixPath, ...]  # covered by an empty read-only file or directory


_NAME_RE = re.compile(r"^[a-z][a-z0-9-]{0,62}$")


def check_container_name(container: str) -> None:
    """Raise `SessionError` unless `container` is a container name (it becomes a path part)."""
    if not _NAME_RE.match(container):
        raise SessionError(f"{container!r} is not a container name")


def stage_for_caller(
    base: Path,
    *,
    caller_uid: int,
    container: str,
    workspace: Path,
    protected: Sequence[PurePosixPath],
    secrets: Sequence[PurePosixPath],
) -> StagePlan:
    """Validate a request to build a stage on behalf of `caller_uid` (the helper's check).

    The workspace must be an absolute directory path without symlinks, owned by the caller;
    relative paths must stay inside it; the stage lives at ``base/<uid>/<container>``.
    Raises `SessionError` naming what is wrong.
    """
    check_container_name(container)
    if not workspace.is_absolute() or os.path.realpath(workspace) != str(workspace):
        raise SessionError(f"workspace {workspace} must be an absolute path without symlinks")
    try:
        info = os.stat(workspace, follow_symlinks=False)
    except OSError as exc:
        raise SessionError(f"workspace {workspace} cannot be read: {exc.strerror}") from None
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != caller_uid:
        raise SessionError(f"workspace {workspace} is not a directory owned by uid {caller_uid}")
    for rel in (*protected, *secrets):
        if rel.is_absolute() or ".." in rel.parts or not rel.parts:
            raise SessionError(f"{rel} is not a path inside the workspace")
    return StagePlan(
        workspace=workspace,
        stage=base / str(caller_uid) / container,
        anchors=anchors_of([*protected, *secrets]),
        protected=tuple(protected),
        secrets=tuple(secrets),
    )


def anchors_of(paths: Sequence[PurePosixPath]) -> tuple[PurePosixPath, ...]:
    """Every proper ancestor (below the workspace root) of `paths`, shallowest first."""
    found: set[PurePosixPath] = set()
    for path in paths:
        for parent in path.parents:
            if parent != PurePosixPath("."):
                found.add(parent)
    return tuple(sorted(found - set(paths), key=lambda p: (len(p.parts), str(p))))


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


def _mount(source: str | None, target: str, flags: int) -> None:
    libc = _libc()
    src = source.encode() if source is not None else None
    if libc.mount(src, target.encode(), None, ctypes.c_ulong(flags), None) != 0:
        err = ctypes.get_errno()
        raise SessionError(
            f"cannot build the protected workspace: mount of {target} failed: {os.strerror(err)}"
        )


def _umount(target: str) -> int:
    libc = _libc()
    if libc.umount2(target.encode(), MNT_DETACH) != 0:
        return ctypes.get_errno()
    return 0


def _open_beneath(root_fd: int, rel: PurePosixPath) -> int:
    """Open `rel` below `root_fd` as an O_PATH fd without following any symlink."""
    fd = os.dup(root_fd)
    try:
        for part in rel.parts:
            nxt = os.open(part, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
            os.close(fd)
            fd = nxt
            if stat.S_ISLNK(os.fstat(fd).st_mode):
                raise SessionError(
                    f"protected path {rel} in the workspace is a symbolic link",
                    hint="replace the link by the directory or file itself",
                )
        return fd
    except OSError as exc:
        os.close(fd)
        raise SessionError(f"cannot open {rel} in the workspace: {exc.strerror}") from exc
    except BaseException:
        os.close(fd)
        raise


def _fd_path(fd: int) -> str:
    return f"/proc/self/fd/{fd}"


def open_directory_nofollow(path: Path, owner: int | None = None) -> int:
    """Open the absolute directory `path` as an O_PATH fd, walking from ``/`` without
    following any symlink in any component; with `owner`, it must belong to that uid.

    The fd, not the path, is what gets mounted: a component swapped for a symlink after a
    check cannot redirect a root-made mount to another directory. Raises `SessionError`.
    """
    if not path.is_absolute():
        raise SessionError(f"{path} is not an absolute path")
    root = os.open("/", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        fd = _open_beneath(root, PurePosixPath(*path.parts[1:])) if path.parts[1:] else os.dup(root)
    finally:
        os.close(root)
    info = os.fstat(fd)
    if not stat.S_ISDIR(info.st_mode) or (owner is not None and info.st_uid != owner):
        os.close(fd)
        raise SessionError(f"{path} is not a directory owned by uid {owner}")
    return fd


def build_stage(plan: StagePlan, owner: int | None = None) -> None:
    """Build the stage tree (needs root in the host's mount namespace).

    With `owner`, the workspace must be a directory of that uid (checked on the opened fd).
    On failure everything mounted so far is removed again and `SessionError` is raised.
    """
    ws_fd = open_directory_nofollow(plan.workspace, owner)
    try:
        plan.stage.mkdir(mode=0o700, parents=True, exist_ok=True)
        # The stage exposes the workspace: only root (incusd) may walk into it, whatever the
        # modes of the user's own directories are.
        os.chmod(plan.stage.parent, 0o700)
        os.chmod(plan.stage, 0o700)
        _mount(_fd_path(ws_fd), str(plan.stage), MS_BIND)
    finally:
        os.close(ws_fd)
    try:
        # Private first: with shared propagation, mounts below the stage would appear in the
        # user's own workspace on the host too.
        _mount(None, str(plan.stage), MS_PRIVATE | MS_REC)
        stage_fd = os.open(plan.stage, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            for rel in plan.anchors:
                fd = _open_beneath(stage_fd, rel)
                try:
                    _mount(_fd_path(fd), _fd_path(fd), MS_BIND)
                finally:
                    os.close(fd)
            for rel in plan.protected:
                _bind_readonly(stage_fd, rel, source=None)
            for rel in plan.secrets:
                _bind_readonly(stage_fd, rel, source="secret")
        finally:
            os.close(stage_fd)
    except BaseException:
        remove_stage(plan.stage)
        raise


def _bind_readonly(stage_fd: int, rel: PurePosixPath, *, source: str | None) -> None:
    fd = _open_beneath(stage_fd, rel)
    try:
        target = _fd_path(fd)
        if source is None:
            src = target
        else:
            is_dir = stat.S_ISDIR(os.fstat(fd).st_mode)
            src = str(empty_source(is_dir))
        _mount(src, target, MS_BIND)
    finally:
        os.close(fd)
    # A bind ignores MS_RDONLY, so read-only needs a remount of the new mount; the old fd
    # still names the covered inode, hence the path is opened again.
    fd = _open_beneath(stage_fd, rel)
    try:
        _mount(
            None,
            _fd_path(fd),
            MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV,
        )
    finally:
        os.close(fd)


_EMPTY_ROOT = Path("/run/coi/empty")


def empty_source(is_dir: bool, base: Path = _EMPTY_ROOT) -> Path:
    """An empty directory (mode 0555) or file (0444) below `base` to cover secret paths with."""
    base.mkdir(mode=0o755, parents=True, exist_ok=True)
    path = base / ("dir" if is_dir else "file")
    if is_dir:
        path.mkdir(mode=0o555, exist_ok=True)
    elif not path.exists():
        path.touch(mode=0o444)
    return path


def remove_stage(stage: Path) -> None:
    """Unmount the stage tree (lazily, so a still running container keeps its view)."""
    code = _umount(str(stage))
    if code not in (0, errno.EINVAL, errno.ENOENT):
        raise SessionError(f"cannot remove the protected workspace {stage}: {os.strerror(code)}")
    with contextlib.suppress(OSError):
        stage.rmdir()
