"""The stager: a tiny child of the helper that builds and removes locked workspace trees.

Privilege separation. Building a workspace stage (see `coi.launcher.session.hostint_guard`)
needs mount(2) in the host's mount namespace, i.e. CAP_SYS_ADMIN, which the serving helper
must never hold. So before the helper drops to CAP_NET_ADMIN it forks this child, which:

- closes every file descriptor but its end of a SOCK_SEQPACKET socketpair (and stdio);
- dies with its parent (PR_SET_PDEATHSIG) and exits when the parent's end closes;
- keeps CAP_SYS_ADMIN only (locked securebits, empty bounding set otherwise), no-new-privs,
  non-dumpable: it runs as uid 0 but without CAP_DAC_OVERRIDE / CAP_DAC_READ_SEARCH, so it
  reaches a user's workspace only through directories "others" may search;
- speaks one protocol to its parent only: one JSON object per datagram (at most
  `MAX_MESSAGE` bytes), exactly two operations, every field type- and bound-checked again
  here (the parent's checks are not trusted):

    {"op": "build", "uid": N, "instance": NAME, "project": NAME, "workspace": ABS,
     "protected": [REL...], "secrets": [REL...], "in_home": BOOL}
        -> {"ok": true, "stage": PATH}
    {"op": "remove", "uid": N, "instance": NAME} -> {"ok": true, "removed": BOOL}
    failures -> {"ok": false, "error": ONE SENTENCE}

What the stager can be made to do, even by a compromised parent: bind a directory owned by
a non-root uid (opened without following symlinks, ownership checked on the fd) below
``BASE/<uid>/<instance>`` and, with ``in_home``, over a directory owned by that uid at
``<home of uid>/.coi-stage/<instance>``, never over anything else; and detach such mounts
again.

Why ``in_home``: incus-user projects accept disk sources only below the user's home
(``restricted.devices.disk.paths``). The stage is built under root-owned BASE (0700) as
always, then bound recursively over a directory the launcher created in the user's home
(``~/.coi-stage``, mode 0711: the stager, without DAC capabilities, must search it).
The user cannot swap it afterwards: a mountpoint cannot be renamed or removed (EBUSY), its
ancestors are walked without following symlinks, the directory is mounted through the fd
that was checked (not its path), and after mounting the path is opened again and must show
the workspace's own inode; renaming an ancestor away only makes the user's own container
start without protection, which the user could ask for anyway (--writable-git-hooks). The
directory must lie outside the workspace, so the agent in the container cannot touch it.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import json
import logging
import os
import pwd
import signal
import socket
import struct
import threading
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from coi.helper.hardening import CAP_NAMES, HardeningError, cap_names, drop_privileges
from coi.launcher.errors import SessionError
from coi.launcher.session.hostint_guard import (
    MNT_DETACH,
    MS_BIND,
    MS_PRIVATE,
    MS_REC,
    _mount,
    build_stage,
    check_container_name,
    open_directory_nofollow,
    remove_stage,
    stage_for_caller,
)

log = logging.getLogger("coi.helper.stager")

STAGE_BASE = Path("/run/coi/stage")
INCUS_SOCKET = "/var/lib/incus/unix.socket"
# Where the launcher of an incus-user creates the (empty) mountpoint, relative to its home.
HOME_STAGE = PurePosixPath(".coi-stage")
CAP_SYS_ADMIN = CAP_NAMES.index("sys_admin")
# mount(2) is all the stager does; path walks need no DAC capability (see module docstring).
STAGER_KEEP = (CAP_SYS_ADMIN,)
MAX_MESSAGE = 64 * 1024
MAX_PATHS = 256
MAX_PATH_CHARS = 1024
PR_SET_PDEATHSIG = 1
REPLY_TIMEOUT = 30.0


class StagerError(Exception):
    """The stager refused a request or is not running; the message says why."""


@dataclass(frozen=True)
class StageRequest:
    """A validated request to build the stage of one container for one user."""

    uid: int
    instance: str
    project: str
    workspace: str
    protected: tuple[str, ...]
    secrets: tuple[str, ...]
    in_home: bool


def home_stage_path(uid: int, instance: str) -> Path:
    """Where the stage of `instance` appears in the home of `uid` (incus-user projects)."""
    return Path(pwd.getpwuid(uid).pw_dir) / HOME_STAGE / instance


# --------------------------------------------------------------------- protocol checks
def _str(msg: dict[str, Any], key: str, limit: int = MAX_PATH_CHARS) -> str:
    value = msg.get(key)
    if not isinstance(value, str) or not value or len(value) > limit or "\0" in value:
        raise StagerError(f"field {key} must be a non-empty string of at most {limit} chars")
    return value


def _uid(msg: dict[str, Any]) -> int:
    value = msg.get("uid")
    if type(value) is not int or not 0 < value < 2**32 - 1:
        raise StagerError("field uid must be a non-root uid")
    return value


def _paths(msg: dict[str, Any], key: str) -> tuple[str, ...]:
    value = msg.get(key)
    if not isinstance(value, list) or len(value) > MAX_PATHS:
        raise StagerError(f"field {key} must be a list of at most {MAX_PATHS} paths")
    out = []
    for item in value:
        if not isinstance(item, str) or not item or len(item) > MAX_PATH_CHARS or "\0" in item:
            raise StagerError(f"field {key} holds an invalid path")
        out.append(item)
    return tuple(out)


def parse_request(data: bytes) -> tuple[str, StageRequest | tuple[int, str]]:
    """Decode and validate one datagram: ("build", StageRequest) or ("remove", (uid, name))."""
    if len(data) > MAX_MESSAGE:
        raise StagerError("message too large")
    try:
        msg = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise StagerError("message is not JSON (or nested too deeply)") from None
    if not isinstance(msg, dict):
        raise StagerError("message is not an object")
    op = msg.get("op")
    if op == "remove":
        if set(msg) != {"op", "uid", "instance"}:
            raise StagerError("remove takes exactly uid and instance")
        return "remove", (_uid(msg), _str(msg, "instance", 63))
    if op != "build":
        raise StagerError("unknown operation")
    expected = {"op", "uid", "instance", "project", "workspace", "protected", "secrets", "in_home"}
    if set(msg) != expected:
        raise StagerError("build takes exactly " + ", ".join(sorted(expected - {"op"})))
    if type(msg["in_home"]) is not bool:
        raise StagerError("field in_home must be a boolean")
    return "build", StageRequest(
        uid=_uid(msg),
        instance=_str(msg, "instance", 63),
        project=_str(msg, "project", 63),
        workspace=_str(msg, "workspace"),
        protected=_paths(msg, "protected"),
        secrets=_paths(msg, "secrets"),
        in_home=msg["in_home"],
    )


# --------------------------------------------------------------------- the work
def _record_path(base: Path, uid: int, instance: str) -> Path:
    return base / str(uid) / f"{instance}.json"


def build(base: Path, req: StageRequest) -> str:
    """Build the stage for `req` (in the stager); returns the path Incus should mount."""
    plan = stage_for_caller(
        base,
        caller_uid=req.uid,
        container=req.instance,
        workspace=Path(req.workspace),
        protected=[PurePosixPath(p) for p in req.protected],
        secrets=[PurePosixPath(p) for p in req.secrets],
    )
    home_target = home_stage_path(req.uid, req.instance) if req.in_home else None
    if home_target is not None and (
        home_target.is_relative_to(plan.workspace) or plan.workspace.is_relative_to(home_target)
    ):
        raise StagerError(f"the workspace {plan.workspace} must not contain {home_target}")
    remove(base, req.uid, req.instance)  # left over by a crashed session
    build_stage(plan, owner=req.uid)
    ws = os.stat(plan.stage)
    record = {
        "project": req.project,
        "workspace": str(plan.workspace),
        "home_target": str(home_target or ""),
        "dev": ws.st_dev,
        "ino": ws.st_ino,
    }
    record_path = _record_path(base, req.uid, req.instance)
    fd = os.open(record_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(record, f)
    if home_target is None:
        return str(plan.stage)
    try:
        _bind_into_home(plan.stage, home_target, req.uid, (ws.st_dev, ws.st_ino))
    except BaseException:
        remove(base, req.uid, req.instance)
        raise
    return str(home_target)


def _bind_into_home(stage: Path, target: Path, uid: int, inode: tuple[int, int]) -> None:
    fd = open_directory_nofollow(target, owner=uid)
    try:
        info = os.fstat(fd)
        if (info.st_dev, info.st_ino) == inode:
            raise StagerError(f"{target} is mounted already")
        _mount(str(stage), f"/proc/self/fd/{fd}", MS_BIND | MS_REC)
    finally:
        os.close(fd)
    # Opened again by path: it must now show the workspace (the user did not swap it).
    fd = open_directory_nofollow(target)
    try:
        info = os.fstat(fd)
        if (info.st_dev, info.st_ino) != inode:
            raise StagerError(f"{target} was replaced while the stage was mounted on it")
        _mount(None, f"/proc/self/fd/{fd}", MS_PRIVATE | MS_REC)
    finally:
        os.close(fd)


def _umount_home(target: Path, inode: tuple[int, int]) -> None:
    try:
        fd = open_directory_nofollow(target)
    except SessionError:
        return  # gone or replaced by the user: nothing of ours is reachable there
    try:
        info = os.fstat(fd)
        if (info.st_dev, info.st_ino) != inode:
            return  # not our mount (any more)
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.umount2(f"/proc/self/fd/{fd}".encode(), MNT_DETACH) != 0:
            code = ctypes.get_errno()
            if code not in (errno.EINVAL, errno.ENOENT):
                raise StagerError(f"cannot unmount {target}: {os.strerror(code)}")
    finally:
        os.close(fd)


def remove(base: Path, uid: int, instance: str) -> bool:
    """Detach the stage of `instance` of `uid` (also its home mount); True if one existed."""
    check_container_name(instance)
    record_path = _record_path(base, uid, instance)
    stage = base / str(uid) / instance
    existed = stage.exists() or record_path.exists()
    record: dict[str, Any] = {}
    with contextlib.suppress(OSError, ValueError):
        record = json.loads(record_path.read_text())
    home = record.get("home_target")
    if isinstance(home, str) and home:
        _umount_home(Path(home), (int(record.get("dev", -1)), int(record.get("ino", -1))))
    remove_stage(stage)
    with contextlib.suppress(FileNotFoundError):
        record_path.unlink()
    return existed


def list_records(base: Path = STAGE_BASE) -> list[tuple[int, str, str]]:
    """(uid, instance, project) of every stage recorded below `base` (for reconcile)."""
    found = []
    with contextlib.suppress(OSError):
        for user_dir in base.iterdir():
            if not user_dir.name.isdigit():
                continue
            for rec in user_dir.glob("*.json"):
                with contextlib.suppress(OSError, ValueError):
                    project = json.loads(rec.read_text()).get("project", "")
                    if isinstance(project, str):
                        found.append((int(user_dir.name), rec.stem, project))
    return sorted(found)


# --------------------------------------------------------------------- child process
def _handle(base: Path, data: bytes) -> dict[str, Any]:
    try:
        op, arg = parse_request(data)
        if op == "build":
            assert isinstance(arg, StageRequest)
            return {"ok": True, "stage": build(base, arg)}
        assert isinstance(arg, tuple)
        return {"ok": True, "removed": remove(base, *arg)}
    except (StagerError, SessionError) as exc:
        return {"ok": False, "error": str(exc)[:2000]}
    except OSError as exc:
        return {"ok": False, "error": f"stager: {exc.strerror or exc}"[:2000]}
    except Exception as exc:  # a request must never end the stager
        return {"ok": False, "error": f"stager: unexpected {type(exc).__name__}"}


def _close_other_fds(keep: int) -> None:
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        if fd > 2 and fd != keep:
            with contextlib.suppress(OSError):
                os.close(fd)


def _child_main(sock: socket.socket, base: Path, parent: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent:
        return
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    _close_other_fds(sock.fileno())
    try:
        caps = drop_privileges(keep=STAGER_KEEP, ambient=())
    except HardeningError as exc:
        sock.send(json.dumps({"ok": False, "error": str(exc)}).encode())
        return
    sock.send(json.dumps({"ok": True, "caps": cap_names(caps.effective)}).encode())
    while True:
        data = sock.recv(MAX_MESSAGE + 1)
        if not data:
            return  # the parent is gone
        sock.send(json.dumps(_handle(base, data)).encode())


class Stager:
    """The parent's handle on the stager child: one request at a time, bounded replies."""

    def __init__(self, sock: socket.socket, pid: int, caps: list[str]) -> None:
        self.sock: socket.socket | None = sock
        self.pid = pid
        self.capabilities = caps
        self._lock = threading.Lock()

    @property
    def alive(self) -> bool:
        """False once the channel to the stager failed (it is never used again)."""
        return self.sock is not None

    def _call(self, msg: dict[str, Any]) -> dict[str, Any]:
        with self._lock:
            if self.sock is None:
                raise StagerError("the stager is not running (it failed earlier)")
            try:
                self.sock.send(json.dumps(msg).encode())
                data = self.sock.recv(MAX_MESSAGE)
            except OSError as exc:
                # A late reply would answer the next request: never use this channel again.
                self.sock.close()
                self.sock = None
                raise StagerError(f"the stager is not running: {exc.strerror or exc}") from exc
            if not data:
                self.sock.close()
                self.sock = None
                raise StagerError("the stager is not running (it exited)")
        try:
            reply = json.loads(data)
        except ValueError:
            reply = None
        if not isinstance(reply, dict):
            raise StagerError("the stager answered garbage")
        if not reply.get("ok"):
            raise StagerError(str(reply.get("error", "the stager refused the request")))
        return reply

    def build(self, req: StageRequest) -> str:
        """Build the stage; the path Incus should mount (StagerError when refused)."""
        msg: dict[str, Any] = {"op": "build", **req.__dict__}
        msg["protected"] = list(req.protected)
        msg["secrets"] = list(req.secrets)
        return str(self._call(msg)["stage"])

    def remove(self, uid: int, instance: str) -> bool:
        """Detach a stage; False if none existed."""
        return bool(self._call({"op": "remove", "uid": uid, "instance": instance})["removed"])


def same_mount_namespace_as(incus_socket: str) -> bool:
    """True if this process sees the mounts incusd sees (a systemd unit with ProtectSystem=
    etc. runs in a namespace of its own, where a stage would be invisible to incusd). incusd
    is found as the peer of its own socket; without it, PID 1 is compared."""
    pid = 1
    with contextlib.suppress(OSError), socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.connect(incus_socket)
        creds = s.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        pid = struct.unpack("3i", creds)[0]
    try:
        return os.readlink("/proc/self/ns/mnt") == os.readlink(f"/proc/{pid}/ns/mnt")
    except OSError:
        return False


def start_stager(base: Path = STAGE_BASE, incus_socket: str = INCUS_SOCKET) -> Stager:
    """Fork the stager (call as root, before the helper drops privileges and before any
    thread exists). Raises StagerError if it cannot run; the helper then serves without it."""
    if not same_mount_namespace_as(incus_socket):
        raise StagerError("the helper does not run in the mount namespace of incusd")
    parent_sock, child_sock = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    parent = os.getpid()
    pid = os.fork()
    if pid == 0:  # the stager
        code = 0
        try:
            parent_sock.close()
            _child_main(child_sock, base, parent)
        except BaseException:  # the child must never return into the helper
            code = 1
        finally:
            os._exit(code)
    child_sock.close()
    parent_sock.settimeout(REPLY_TIMEOUT)
    try:
        hello = json.loads(parent_sock.recv(MAX_MESSAGE) or b"{}")
    except (OSError, ValueError) as exc:
        hello = {"ok": False, "error": str(exc)}
    if not hello.get("ok"):
        parent_sock.close()
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, 0)
        raise StagerError(f"the stager did not start: {hello.get('error', 'it exited')}")
    caps = [str(c) for c in hello.get("caps", [])]
    return Stager(parent_sock, pid, caps)
