"""The launcher's client of coi-helper (varlink over /run/coi/helper.sock).

Typed on both ends: calls take and return the dataclasses of `coi.helper.interface`, which are
checked against the interface text (`check_contract`) before the first call, and
`verify_server_contract()` compares the running helper's own description with ours. Every
failure becomes a `HelperError` subclass with one actionable sentence. Imports nothing
server-only (no jeepney, pylxd or server modules).
"""

from __future__ import annotations

import enum
import functools
import os
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, TypeVar

from coi.helper.interface import (
    DEFAULT_SOCKET,
    INTERFACE,
    AdminPolicy,
    Authorization,
    DescribeInstanceIn,
    DescribeInstanceOut,
    Err,
    Features,
    GetInfoIn,
    GetInfoOut,
    InstanceInfo,
    PingIn,
    PingOut,
    check_contract,
    helper_interface,
)
from coi.helper.ipc.client import VarlinkConnection
from coi.helper.ipc.errors import IpcError, ProtocolError, VarlinkError
from coi.helper.ipc.typed import check_dataclass, from_wire, to_wire
from coi.launcher.errors import HelperError

SOCKET_ENV = "COI_HELPER_SOCKET"
START_HINT = (
    "start it with `systemctl start coi-helper.socket`, or on hosts without systemd "
    "`coi-helper serve --socket /run/coi/helper.sock` as root"
)

T = TypeVar("T")


class HelperNotRunning(HelperError):
    """Nothing answers on the helper's socket."""


class HelperNotAuthorised(HelperError):
    """polkit refused the action for this user (or interactive authentication is needed)."""


class HelperNotOwner(HelperError):
    """The container belongs to another user's project."""


class HelperPolicyForbidden(HelperError):
    """The administrator's policy (/etc/coi/policy.toml) forbids the request."""


class HelperRequestError(HelperError):
    """The helper refused the request for another reason (bad name, no such container...)."""


class HelperContractMismatch(HelperError):
    """The running helper speaks a different version of the interface."""


class HelperWorkspaceRefused(HelperError):
    """The helper refused to stage the workspace (ownership, symlinks, paths)."""


class HelperGuardUnavailable(HelperError):
    """The helper runs without its stager: no locked workspaces."""


# ----------------------------------------------------------------- network wire types
# The launcher's typed view of the network methods (the helper keeps its own server-side
# copies); `_contract_checked` proves both against the interface text, so they cannot drift.
class NetworkMode(enum.StrEnum):
    """NetworkPolicy.mode."""

    RESTRICTED = "restricted"
    ALLOWLIST = "allowlist"
    OPEN = "open"
    BLOCKED = "blocked"


@dataclass(frozen=True)
class NetworkAllowEntry:
    """An allowlist entry: DNS name (`*.` wildcard), address or CIDR, optional ports."""

    target: str
    ports: list[int] | None = None


@dataclass(frozen=True)
class NetworkHostException:
    """An address or CIDR reachable despite the mode's blocks, optional ports and label."""

    target: str
    ports: list[int] | None = None
    name: str | None = None


@dataclass(frozen=True)
class NetworkPolicy:
    """What a container may reach; fields its mode does not use stay None."""

    mode: NetworkMode
    allowed_ports: list[int] | None = None
    allowlist: list[NetworkAllowEntry] | None = None
    hosts: list[NetworkHostException] | None = None
    block_private_networks: bool | None = None
    block_metadata_endpoint: bool | None = None


@dataclass(frozen=True)
class NetworkPolicyEntry:
    """One of the caller's containers' policies as the helper holds it."""

    instance: str
    project: str
    policy: NetworkPolicy
    generation: int
    installed: bool
    resolver_running: bool


@dataclass(frozen=True)
class NetworkCounters:
    """Traffic of one container since its policy was first applied."""

    packets_out: int
    bytes_out: int
    packets_rejected: int
    bytes_rejected: int
    packets_l2_dropped: int
    bytes_l2_dropped: int
    packets_in: int
    bytes_in: int


@dataclass(frozen=True)
class _InstanceRef:
    instance: str
    project: str


@dataclass(frozen=True)
class _ApplyIn:
    instance: str
    project: str
    policy: NetworkPolicy


@dataclass(frozen=True)
class _GenerationOut:
    generation: int


@dataclass(frozen=True)
class _RemovedOut:
    removed: bool


@dataclass(frozen=True)
class _NoParams:
    pass


@dataclass(frozen=True)
class _PoliciesOut:
    policies: list[NetworkPolicyEntry]


@dataclass(frozen=True)
class _CountersOut:
    counters: NetworkCounters


_NETWORK_TYPES: dict[str, tuple[type, type]] = {
    "ApplyNetworkPolicy": (_ApplyIn, _GenerationOut),
    "RemoveNetworkPolicy": (_InstanceRef, _RemovedOut),
    "Quarantine": (_InstanceRef, _GenerationOut),
    "ListNetworkPolicies": (_NoParams, _PoliciesOut),
    "ReadCounters": (_InstanceRef, _CountersOut),
}


@dataclass(frozen=True)
class _StageIn:
    instance: str
    project: str
    workspace: str
    protected: list[str]
    secrets: list[str]


@dataclass(frozen=True)
class _StageOut:
    stage: str


_GUARD_TYPES: dict[str, tuple[type, type]] = {
    "StageWorkspace": (_StageIn, _StageOut),
    "UnstageWorkspace": (_InstanceRef, _RemovedOut),
}
_WORKSPACE_REFUSED = f"{INTERFACE}.WorkspaceRefused"
_GUARD_UNAVAILABLE = f"{INTERFACE}.WorkspaceGuardUnavailable"
_INVALID_POLICY = f"{INTERFACE}.InvalidPolicy"
_NETWORK_SETUP_FAILED = f"{INTERFACE}.NetworkSetupFailed"


@functools.cache
def _contract_checked() -> bool:
    check_contract()
    iface = helper_interface()
    for name, (tin, tout) in (_NETWORK_TYPES | _GUARD_TYPES).items():
        method = iface.methods[name]
        check_dataclass(iface, method.input, tin, f"{name} input")
        check_dataclass(iface, method.output, tout, f"{name} output")
    return True


def default_socket() -> str:
    """The helper socket: $COI_HELPER_SOCKET or /run/coi/helper.sock."""
    return os.environ.get(SOCKET_ENV) or DEFAULT_SOCKET


def _translate(exc: VarlinkError, what: str) -> HelperError:
    p = exc.parameters
    if exc.name == Err.PERMISSION_DENIED:
        return HelperNotAuthorised(
            f"not authorised: polkit refused {p.get('action', what)} ({p.get('reason', '')})",
            hint="ask an administrator to add you to the `incus` group and install "
            "polkit/50-coi-incus-group.rules, or run from an active local session",
        )
    if exc.name == Err.INTERACTIVE_AUTH:
        return HelperNotAuthorised(
            f"not authorised: {p.get('action', what)} needs administrator authentication",
            hint="add your user to the `incus` group (with polkit/50-coi-incus-group.rules "
            "installed) or run from an active local session",
        )
    if exc.name == Err.NOT_OWNER:
        return HelperNotOwner(
            f"container {p.get('instance')} is in project {p.get('project')}, "
            f"which uid {p.get('uid')} does not own"
        )
    if exc.name == Err.POLICY_FORBIDDEN:
        return HelperPolicyForbidden(
            f"the administrator's policy {p.get('path')} forbids this "
            f"({p.get('rule')}): {p.get('reason')}"
        )
    if exc.name == Err.NO_SUCH_INSTANCE:
        return HelperRequestError(
            f"Incus has no container {p.get('instance')} in project {p.get('project')}"
        )
    if exc.name == Err.INVALID_NAME:
        return HelperRequestError(f"invalid {p.get('parameter')}: {p.get('reason')}")
    if exc.name == Err.INCUS_UNAVAILABLE:
        return HelperRequestError(f"the helper cannot reach Incus: {p.get('reason')}")
    if exc.name == _INVALID_POLICY:
        return HelperRequestError(
            f"the helper refused the network policy: {p.get('field')} {p.get('reason')}",
            hint="fix the [network] settings (`coi config show` names their source)",
        )
    if exc.name == _NETWORK_SETUP_FAILED:
        return HelperRequestError(f"the helper could not set up the network: {p.get('reason')}")
    if exc.name == _WORKSPACE_REFUSED:
        return HelperWorkspaceRefused(
            f"the helper refused to build the locked workspace: {p.get('reason')}"
        )
    if exc.name == _GUARD_UNAVAILABLE:
        return HelperGuardUnavailable(
            f"the helper cannot build locked workspaces: {p.get('reason')}"
        )
    if exc.name == Err.METHOD_NOT_IMPLEMENTED and str(p.get("method", "")).endswith(
        ("StageWorkspace", "UnstageWorkspace")
    ):
        return HelperGuardUnavailable(
            "the helper runs without its stager: no locked workspaces "
            "(its GetInfo reports workspace_guard false; its log says why)"
        )
    if exc.name in (Err.METHOD_NOT_FOUND, Err.METHOD_NOT_IMPLEMENTED):
        # An older helper still running after an upgrade knows the name but not the method.
        return HelperContractMismatch(
            f"the running helper does not know {p.get('method')}",
            hint="upgrade coi-helper and restart it",
        )
    return HelperRequestError(f"coi-helper refused {what}: {exc}")


class HelperClient:
    """Blocking, typed client of org.codeonincus.Helper; one connection, opened lazily."""

    def __init__(self, socket_path: str | None = None, timeout: float = 10.0) -> None:
        _contract_checked()
        self.socket_path = socket_path or default_socket()
        self.timeout = timeout
        self._conn: VarlinkConnection | None = None

    def __enter__(self) -> HelperClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close the connection (a later call reconnects)."""
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def _connection(self) -> VarlinkConnection:
        if self._conn is None:
            try:
                self._conn = VarlinkConnection(self.socket_path, self.timeout)
            except (FileNotFoundError, ConnectionRefusedError) as exc:
                raise HelperNotRunning(
                    f"helper not running: nothing listens on {self.socket_path}", hint=START_HINT
                ) from exc
            except PermissionError as exc:
                raise HelperNotRunning(
                    f"helper socket {self.socket_path} is not accessible to this user",
                    hint="the socket must be mode 0666 (coi-helper.socket sets it)",
                ) from exc
            except OSError as exc:
                raise HelperNotRunning(
                    f"cannot connect to the helper at {self.socket_path}: {exc.strerror or exc}",
                    hint=START_HINT,
                ) from exc
        return self._conn

    def raw_call(self, method: str, parameters: dict[str, Any] | None = None) -> dict[str, Any]:
        """Call a fully qualified method with wire parameters; HelperError on failure."""
        conn = self._connection()
        try:
            return conn.call(method, parameters)
        except VarlinkError as exc:
            raise _translate(exc, method) from exc
        except TimeoutError as exc:
            self.close()
            raise HelperError(
                f"the helper did not answer {method} within {self.timeout:.0f} s"
            ) from exc
        except (ProtocolError, OSError, IpcError) as exc:
            self.close()
            raise HelperNotRunning(
                f"the helper closed the connection during {method}: {exc}", hint=START_HINT
            ) from exc

    def call(self, name: str, params: Any, out_type: type[T]) -> T:
        """Call `org.codeonincus.Helper.<name>` with a dataclass, returning `out_type`."""
        return from_wire(out_type, self.raw_call(f"{INTERFACE}.{name}", to_wire(params)))

    # ----------------------------------------------------------------------- methods
    def get_info(self) -> GetInfoOut:
        """Version, features, admin policy, limits and this caller's polkit answers."""
        return self.call("GetInfo", GetInfoIn(), GetInfoOut)

    def ping(self, text: str = "ping") -> str:
        """Round-trip check."""
        return self.call("Ping", PingIn(ping=text), PingOut).pong

    def describe_instance(self, instance: str, project: str) -> InstanceInfo:
        """What the helper derives from Incus about one of the caller's containers."""
        out = self.call(
            "DescribeInstance",
            DescribeInstanceIn(instance=instance, project=project),
            DescribeInstanceOut,
        )
        return out.instance

    def apply_network_policy(self, instance: str, project: str, policy: NetworkPolicy) -> int:
        """Install or replace a container's network policy (before it starts); the generation."""
        out = self.call("ApplyNetworkPolicy", _ApplyIn(instance, project, policy), _GenerationOut)
        return out.generation

    def remove_network_policy(self, instance: str, project: str) -> bool:
        """Remove a container's network policy; False if it had none (idempotent)."""
        return self.call(
            "RemoveNetworkPolicy", _InstanceRef(instance, project), _RemovedOut
        ).removed

    def quarantine(self, instance: str, project: str) -> int:
        """Cut a container off the network at once (mode blocked); the generation."""
        return self.call("Quarantine", _InstanceRef(instance, project), _GenerationOut).generation

    def list_network_policies(self) -> list[NetworkPolicyEntry]:
        """The caller's own containers' policies (every project's for admins)."""
        return self.call("ListNetworkPolicies", _NoParams(), _PoliciesOut).policies

    def read_counters(self, instance: str, project: str) -> NetworkCounters:
        """A container's traffic counters."""
        return self.call("ReadCounters", _InstanceRef(instance, project), _CountersOut).counters

    def stage_workspace(
        self,
        instance: str,
        project: str,
        workspace: str,
        protected: list[str],
        secrets: list[str],
    ) -> str:
        """Have the helper build the locked workspace of one of the caller's containers over
        a workspace the caller owns; the path to use as the workspace device's source."""
        params = _StageIn(instance, project, workspace, list(protected), list(secrets))
        return self.call("StageWorkspace", params, _StageOut).stage

    def unstage_workspace(self, instance: str, project: str) -> bool:
        """Remove a container's locked workspace; False if it had none (idempotent)."""
        return self.call("UnstageWorkspace", _InstanceRef(instance, project), _RemovedOut).removed

    def verify_server_contract(self) -> None:
        """Raise HelperContractMismatch unless the helper serves exactly our interface text."""
        reply = self.raw_call(
            "org.varlink.service.GetInterfaceDescription", {"interface": INTERFACE}
        )
        if reply.get("description") != helper_interface().text:
            raise HelperContractMismatch(
                f"the running coi-helper speaks a different version of {INTERFACE} than this coi",
                hint="restart the helper after upgrading (systemctl restart coi-helper)",
            )


# ------------------------------------------------------------------------------ health
@dataclass(frozen=True)
class HelperHealth:
    """What `coi health` reports about the helper."""

    socket: str
    reachable: bool
    error: str = ""
    hint: str = ""
    version: str = ""
    contract_ok: bool = False
    authorization: dict[str, str] = field(default_factory=dict)
    admin: bool = False
    project: str = ""
    policy: AdminPolicy | None = None
    features: Features | None = None

    @property
    def authorised(self) -> bool:
        """True if the network and monitor actions are allowed for this user."""
        needed = ("org.codeonincus.helper.network", "org.codeonincus.helper.monitor")
        return all(self.authorization.get(a) == Authorization.ALLOWED.value for a in needed)


def helper_health(socket_path: str | None = None, timeout: float = 3.0) -> HelperHealth:
    """Probe the helper for `coi health`: never raises, reports what failed and how to fix it."""
    path = socket_path or default_socket()
    try:
        with HelperClient(path, timeout) as client:
            info = client.get_info()
            try:
                client.verify_server_contract()
                contract_ok = True
            except HelperContractMismatch:
                contract_ok = False
    except HelperError as exc:
        return HelperHealth(path, False, error=str(exc), hint=exc.hint or "")
    return HelperHealth(
        socket=path,
        reachable=True,
        version=info.version,
        contract_ok=contract_ok,
        authorization={k: v.value for k, v in info.caller.authorization.items()},
        admin=info.caller.admin,
        project=info.caller.project,
        policy=info.policy,
        features=info.features,
    )
