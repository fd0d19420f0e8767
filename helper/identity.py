"""Who is on the other end of a connection: SO_PEERCRED plus a pidfd or the pid's start time.

The identity is pinned to the exact process that connected. A pidfd (SO_PEERPIDFD, kernel >= 6.5)
cannot point to a different process after the pid is reused; without it, the start time from
/proc/<pid>/stat plays that role. `PeerIdentity.verify()` runs before every authorised call, so a
socket handed to another process, or kept after its owner exited, loses its authorisation.
"""

from __future__ import annotations

import os
import select
import signal
import socket
import struct
from dataclasses import dataclass

SO_PEERPIDFD = getattr(socket, "SO_PEERPIDFD", 77)


class IdentityError(Exception):
    """The peer cannot be identified, or is no longer the process that connected."""


def read_start_time(pid: int) -> int:
    """Start time of `pid` in clock ticks since boot (field 22 of /proc/<pid>/stat)."""
    with open(f"/proc/{pid}/stat", "rb") as f:
        data = f.read()
    # comm (field 2) may hold spaces and parentheses: split after the last ')'.
    rest = data[data.rindex(b")") + 2 :].split()
    return int(rest[19])


def read_groups(pid: int) -> tuple[int, ...]:
    """Supplementary groups of `pid` (the `Groups:` line of /proc/<pid>/status)."""
    with open(f"/proc/{pid}/status", encoding="ascii", errors="replace") as f:
        for line in f:
            if line.startswith("Groups:"):
                return tuple(int(g) for g in line.split()[1:])
    return ()


@dataclass(frozen=True)
class PeerIdentity:
    """The process that opened a connection, as the kernel reports it."""

    pid: int
    uid: int
    gid: int
    start_time: int
    groups: tuple[int, ...]
    pidfd: int | None = None

    @classmethod
    def from_socket(cls, sock: socket.socket, *, use_pidfd: bool = True) -> PeerIdentity:
        """Identify the peer of a connected Unix socket; raises IdentityError."""
        try:
            creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        except OSError as exc:
            raise IdentityError(f"SO_PEERCRED failed: {exc}") from exc
        pid, uid, gid = struct.unpack("3i", creds)
        if pid <= 0:
            raise IdentityError("the peer has no pid in this pid namespace")
        pidfd: int | None = None
        if use_pidfd:
            try:
                raw = sock.getsockopt(socket.SOL_SOCKET, SO_PEERPIDFD, struct.calcsize("i"))
                pidfd = struct.unpack("i", raw)[0]
            except OSError:
                pidfd = None  # kernel < 6.5: the start time alone pins the process
        try:
            start_time = read_start_time(pid)
            groups = read_groups(pid)
        except (OSError, ValueError, IndexError) as exc:
            if pidfd is not None:
                os.close(pidfd)
            raise IdentityError(f"peer pid {pid} vanished while connecting") from exc
        ident = cls(pid, uid, gid, start_time, groups, pidfd)
        # What we read from /proc must belong to the process that connected.
        ident.verify()
        return ident

    def alive(self) -> bool:
        """True while the process that connected still runs (and its pid was not reused)."""
        if self.pidfd is not None:
            try:
                signal.pidfd_send_signal(self.pidfd, 0)
            except ProcessLookupError:
                return False
            except PermissionError:
                pass  # the process exists; signalling it is just not allowed
            poller = select.poll()
            poller.register(self.pidfd, select.POLLIN)
            # A pidfd becomes readable once its process has exited (zombies included).
            if poller.poll(0):
                return False
        try:
            return read_start_time(self.pid) == self.start_time
        except (OSError, ValueError, IndexError):
            return False

    def verify(self) -> None:
        """Raise IdentityError unless the connecting process still runs."""
        if not self.alive():
            raise IdentityError(f"peer process {self.pid} exited; its connection is not trusted")

    def close(self) -> None:
        """Release the pidfd."""
        if self.pidfd is not None:
            os.close(self.pidfd)
            object.__setattr__(self, "pidfd", None)
