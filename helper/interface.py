"""The `org.codeonincus.Helper` contract: the interface text and its typed dataclasses.

Shared by the helper and the launcher's `HelperClient`; imports nothing server-only.
`check_contract()` proves that every dataclass here has exactly the fields of the interface
text, and both sides run it, so the two cannot drift apart.
"""

from __future__ import annotations

import enum
import functools
from dataclasses import dataclass, field
from importlib import resources

from coi.helper.ipc.idl import Interface, parse_interface
from coi.helper.ipc.typed import check_dataclass

INTERFACE = "org.codeonincus.Helper"
SERVICE_INTERFACE = "org.varlink.service"
DEFAULT_SOCKET = "/run/coi/helper.sock"


class Action(enum.StrEnum):
    """polkit actions of the helper (see polkit/org.codeonincus.helper.policy)."""

    NETWORK = "org.codeonincus.helper.network"
    MONITOR = "org.codeonincus.helper.monitor"
    ADMIN = "org.codeonincus.helper.admin"


class Authorization(enum.StrEnum):
    """polkit's answer for one action and one caller."""

    ALLOWED = "allowed"
    CHALLENGE = "challenge"
    DENIED = "denied"
    UNAVAILABLE = "unavailable"


class Err:
    """Fully qualified names of the typed errors."""

    NOT_OWNER = f"{INTERFACE}.NotOwner"
    NO_SUCH_INSTANCE = f"{INTERFACE}.NoSuchInstance"
    INVALID_NAME = f"{INTERFACE}.InvalidName"
    PERMISSION_DENIED = f"{INTERFACE}.PermissionDenied"
    INTERACTIVE_AUTH = f"{INTERFACE}.InteractiveAuthenticationRequired"
    POLICY_FORBIDDEN = f"{INTERFACE}.PolicyForbidden"
    RATE_LIMITED = f"{INTERFACE}.RateLimited"
    PROTOCOL_VIOLATION = f"{INTERFACE}.ProtocolViolation"
    INCUS_UNAVAILABLE = f"{INTERFACE}.IncusUnavailable"
    INTERNAL = f"{INTERFACE}.InternalError"
    # org.varlink.service errors
    INTERFACE_NOT_FOUND = f"{SERVICE_INTERFACE}.InterfaceNotFound"
    METHOD_NOT_FOUND = f"{SERVICE_INTERFACE}.MethodNotFound"
    METHOD_NOT_IMPLEMENTED = f"{SERVICE_INTERFACE}.MethodNotImplemented"
    INVALID_PARAMETER = f"{SERVICE_INTERFACE}.InvalidParameter"
    EXPECTED_MORE = f"{SERVICE_INTERFACE}.ExpectedMore"


@dataclass(frozen=True)
class Caller:
    """Who the helper thinks the caller is, and polkit's answer per action."""

    uid: int
    gid: int
    pid: int
    admin: bool
    project: str
    authorization: dict[str, Authorization] = field(default_factory=dict)


@dataclass(frozen=True)
class Features:
    """Kernel and system features the helper found."""

    kernel: str
    peer_pidfd: bool
    proc_connector_unprivileged: bool
    polkit: bool
    polkit_version: str
    polkit_pidfd_subject: bool
    capabilities: list[str]
    no_new_privs: bool
    workspace_guard: bool = False
    stager_capabilities: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class AdminPolicy:
    """The administrator's policy as the helper enforces it."""

    path: str
    loaded: bool
    allowed_modes: list[str]
    monitoring: str
    max_allowlist_entries: int


@dataclass(frozen=True)
class Limits:
    """Bounds of the helper's IPC."""

    max_message_bytes: int
    max_depth: int
    max_string: int
    max_items: int
    calls_per_second: int


@dataclass(frozen=True)
class Nic:
    """One network interface of a container."""

    name: str
    host_name: str
    network: str
    hwaddr: str
    addresses: list[str]


@dataclass(frozen=True)
class InstanceInfo:
    """What the helper derived from Incus about one container."""

    name: str
    project: str
    status: str
    pid: int
    nics: list[Nic]
    cgroup: str


@dataclass(frozen=True)
class GetInfoIn:
    """No parameters."""


@dataclass(frozen=True)
class GetInfoOut:
    """Reply of GetInfo."""

    version: str
    features: Features
    policy: AdminPolicy
    limits: Limits
    caller: Caller


@dataclass(frozen=True)
class PingIn:
    """Parameters of Ping."""

    ping: str


@dataclass(frozen=True)
class PingOut:
    """Reply of Ping."""

    pong: str


@dataclass(frozen=True)
class DescribeInstanceIn:
    """Parameters of DescribeInstance."""

    instance: str
    project: str


@dataclass(frozen=True)
class DescribeInstanceOut:
    """Reply of DescribeInstance."""

    instance: InstanceInfo


# method name -> (input dataclass, output dataclass) of the methods HelperApp implements itself.
# Feature packages bring their own dataclasses with their methods (coi.helper.app.EXTENSIONS).
METHOD_TYPES: dict[str, tuple[type, type]] = {
    "GetInfo": (GetInfoIn, GetInfoOut),
    "Ping": (PingIn, PingOut),
    "DescribeInstance": (DescribeInstanceIn, DescribeInstanceOut),
}


def _read(name: str) -> str:
    return resources.files("coi.helper").joinpath(name).read_text(encoding="utf-8")


@functools.cache
def helper_interface() -> Interface:
    """The parsed `org.codeonincus.Helper` interface (from the packaged .varlink file)."""
    return parse_interface(_read(f"{INTERFACE}.varlink"))


@functools.cache
def service_interface() -> Interface:
    """The parsed `org.varlink.service` interface."""
    return parse_interface(_read(f"{SERVICE_INTERFACE}.varlink"))


def check_contract() -> None:
    """Raise TypeError if a dataclass above and the interface text disagree."""
    iface = helper_interface()
    for name, (tin, tout) in METHOD_TYPES.items():
        if name not in iface.methods:
            raise TypeError(f"{INTERFACE}.{name} has dataclasses but no interface lines")
        method = iface.methods[name]
        check_dataclass(iface, method.input, tin, f"{name} input")
        check_dataclass(iface, method.output, tout, f"{name} output")
