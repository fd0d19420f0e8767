"""polkit `CheckAuthorization` over the system bus (jeepney, pure Python).

The subject is the connecting process: by pidfd where polkit accepts pidfd subjects (>= 124),
else `unix-process` with pid, start time and uid (the explicit uid and start time close the
classic pid-reuse race, CVE-2013-4288). No interaction is requested: a polkit challenge becomes
`InteractiveAuthenticationRequired`, never a prompt.
"""

from __future__ import annotations

import contextlib
import logging
import re
import threading
from dataclasses import dataclass
from typing import Any

from jeepney import DBusAddress, Message, new_method_call
from jeepney.io.blocking import DBusConnection, open_dbus_connection
from jeepney.low_level import MessageFlag
from jeepney.wrappers import DBusErrorResponse, Properties

from coi.helper.identity import PeerIdentity
from coi.helper.interface import Authorization

log = logging.getLogger(__name__)

AUTHORITY = DBusAddress(
    "/org/freedesktop/PolicyKit1/Authority",
    bus_name="org.freedesktop.PolicyKit1",
    interface="org.freedesktop.PolicyKit1.Authority",
)
DBUS = DBusAddress(
    "/org/freedesktop/DBus", bus_name="org.freedesktop.DBus", interface="org.freedesktop.DBus"
)
PIDFD_SUBJECT_VERSION = 124


@dataclass(frozen=True)
class Decision:
    """polkit's answer: the result and, when refused, polkit's own words."""

    result: Authorization
    detail: str = ""


def parse_version(text: str) -> int:
    """polkit's BackendVersion ('0.122', '124', '125.1') as its major release number."""
    m = re.match(r"^(?:0\.)?(\d+)", text.strip())
    return int(m.group(1)) if m else 0


class PolkitClient:
    """A thread-safe client of polkit's Authority; reconnects after bus failures."""

    def __init__(
        self, bus_address: str = "SYSTEM", timeout: float = 10.0, autostart: bool = True
    ) -> None:
        self.bus_address = bus_address
        self.timeout = timeout
        # On systemd hosts polkitd is started on demand by the bus; hosts without activation
        # (or tests) pass autostart=False so a stopped polkitd reads as "unavailable".
        self.autostart = autostart
        self._lock = threading.Lock()
        self._conn: DBusConnection | None = None
        self.version_text = ""

    def _connection(self) -> DBusConnection:
        if self._conn is None:
            self._conn = open_dbus_connection(self.bus_address, enable_fds=True)
        return self._conn

    def _send(self, msg: Message) -> Any:
        if not self.autostart:
            msg.header.flags |= MessageFlag.no_auto_start
        conn = self._connection()
        try:
            reply = conn.send_and_get_reply(msg, timeout=self.timeout)
        except (OSError, TimeoutError, ConnectionError):
            self._drop()
            raise
        if reply.header.message_type.name == "error":
            raise DBusErrorResponse(reply)
        return reply.body

    def _drop(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(OSError):
                self._conn.close()
            self._conn = None

    def close(self) -> None:
        """Close the bus connection."""
        with self._lock:
            self._drop()

    def available(self) -> bool:
        """True if polkitd owns its bus name (or the bus can start it)."""
        with self._lock:
            try:
                (owned,) = self._send(
                    new_method_call(DBUS, "NameHasOwner", "s", (AUTHORITY.bus_name,))
                )
                if not owned and not self.autostart:
                    return False
                body = self._send(Properties(AUTHORITY).get("BackendVersion"))
                self.version_text = str(body[0][1])
                return True
            except (OSError, TimeoutError, ConnectionError, DBusErrorResponse) as exc:
                log.info("polkit not reachable: %s", exc)
                return False

    @property
    def version(self) -> int:
        """Major version of polkitd (0 if unknown)."""
        return parse_version(self.version_text)

    def check(self, peer: PeerIdentity, action: str, *, use_pidfd: bool | None = None) -> Decision:
        """Ask polkit whether `peer` may perform `action` (no interaction)."""
        if use_pidfd is None:
            use_pidfd = self.version >= PIDFD_SUBJECT_VERSION and peer.pidfd is not None
        # pid + start-time + uid always (what polkit < 124 understands); the pidfd on top where
        # polkit takes it, as systemd does: polkit then pins the process by the pidfd.
        details: dict[str, tuple[str, Any]] = {
            "pid": ("u", peer.pid),
            "start-time": ("t", peer.start_time),
            "uid": ("i", peer.uid),
        }
        if use_pidfd and peer.pidfd is not None:
            details["pidfd"] = ("h", peer.pidfd)
        msg = new_method_call(
            AUTHORITY,
            "CheckAuthorization",
            "(sa{sv})sa{ss}us",
            (("unix-process", details), action, {}, 0, ""),
        )
        with self._lock:
            try:
                ((authorized, challenge, extra),) = self._send(msg)
            except DBusErrorResponse as exc:
                # e.g. the subject no longer exists, or polkitd went away.
                log.info("polkit refused to answer for pid %d: %s", peer.pid, exc)
                if exc.name in (
                    "org.freedesktop.DBus.Error.ServiceUnknown",
                    "org.freedesktop.DBus.Error.NameHasNoOwner",
                ):
                    return Decision(Authorization.UNAVAILABLE, "polkit is not running")
                return Decision(Authorization.DENIED, f"polkit error {exc.name}")
            except (OSError, TimeoutError, ConnectionError) as exc:
                return Decision(Authorization.UNAVAILABLE, f"system bus unreachable: {exc}")
        if authorized:
            return Decision(Authorization.ALLOWED)
        if challenge:
            return Decision(Authorization.CHALLENGE, "polkit requires interactive authentication")
        reason = str(dict(extra).get("polkit.dismissed", "")) if extra else ""
        return Decision(Authorization.DENIED, reason or "polkit denied the action")
