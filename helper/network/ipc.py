"""The network methods of `org.codeonincus.Helper`, contributed to the helper's service.

`coi.helper.app` imports this module (it is named in its EXTENSIONS) and calls
`helper_methods(app)`. Each handler checks names and ownership, enforces the admin policy,
derives the container's attachment from Incus through `app.instances` (never from the client),
and maps engine errors to the interface's typed errors. The dataclasses mirror the interface
text; the service checks them against it when it starts.
"""

from __future__ import annotations

import enum
import ipaddress
from dataclasses import dataclass, field
from typing import Any

from coi.helper.app import CallerContext, HelperApp, user_project
from coi.helper.interface import INTERFACE, Action, Err
from coi.helper.ipc.errors import VarlinkError
from coi.helper.ipc.typed import to_wire
from coi.helper.names import check_instance_name, check_project_name
from coi.helper.network.engine import AppliedPolicy, Counters, NetworkEngine
from coi.helper.network.errors import InvalidPolicy, NetworkError
from coi.helper.network.policy import NetworkMode, NetworkPolicy, blocked_policy, parse_policy
from coi.helper.network.target import ContainerKey, NetworkTarget
from coi.helper.service import Contribution, MethodSpec

INVALID_POLICY = f"{INTERFACE}.InvalidPolicy"
NETWORK_SETUP_FAILED = f"{INTERFACE}.NetworkSetupFailed"


class NetworkModeW(enum.StrEnum):
    """Wire form of NetworkPolicy.mode."""

    RESTRICTED = "restricted"
    ALLOWLIST = "allowlist"
    OPEN = "open"
    BLOCKED = "blocked"


@dataclass(frozen=True)
class NetworkAllowEntryW:
    """Wire form of NetworkAllowEntry."""

    target: str
    ports: list[int] | None = None


@dataclass(frozen=True)
class NetworkHostExceptionW:
    """Wire form of NetworkHostException."""

    target: str
    ports: list[int] | None = None
    name: str | None = None


@dataclass(frozen=True)
class NetworkPolicyW:
    """Wire form of NetworkPolicy (validated again, strictly, by `parse_policy`)."""

    mode: NetworkModeW
    allowed_ports: list[int] | None = None
    allowlist: list[NetworkAllowEntryW] | None = None
    hosts: list[NetworkHostExceptionW] | None = None
    block_private_networks: bool | None = None
    block_metadata_endpoint: bool | None = None


@dataclass(frozen=True)
class NetworkPolicyEntryW:
    """Wire form of NetworkPolicyEntry."""

    instance: str
    project: str
    policy: NetworkPolicyW
    generation: int
    installed: bool
    resolver_running: bool


@dataclass(frozen=True)
class InstanceRefIn:
    """(instance, project) parameters."""

    instance: str
    project: str


@dataclass(frozen=True)
class ApplyNetworkPolicyIn:
    instance: str
    project: str
    policy: NetworkPolicyW


@dataclass(frozen=True)
class GenerationOut:
    generation: int


@dataclass(frozen=True)
class RemoveNetworkPolicyOut:
    removed: bool


@dataclass(frozen=True)
class NoParamsIn:
    pass


@dataclass(frozen=True)
class ListNetworkPoliciesOut:
    policies: list[NetworkPolicyEntryW] = field(default_factory=list)


@dataclass(frozen=True)
class ReadCountersOut:
    # The engine's own Counters has exactly the fields of NetworkCounters.
    counters: Counters


@dataclass(frozen=True)
class ReconcileOut:
    removed: list[str] = field(default_factory=list)
    reapplied: list[str] = field(default_factory=list)


def _policy_w(policy: NetworkPolicy) -> NetworkPolicyW:
    raw = policy.to_dict()
    return NetworkPolicyW(
        mode=NetworkModeW(raw["mode"]),
        allowed_ports=raw.get("allowed_ports"),
        allowlist=[NetworkAllowEntryW(**e) for e in raw.get("allowlist", [])]
        if "allowlist" in raw
        else None,
        hosts=[NetworkHostExceptionW(**h) for h in raw.get("hosts", [])]
        if "hosts" in raw
        else None,
        block_private_networks=raw.get("block_private_networks"),
        block_metadata_endpoint=raw.get("block_metadata_endpoint"),
    )


def _entry_w(entry: AppliedPolicy) -> NetworkPolicyEntryW:
    return NetworkPolicyEntryW(
        instance=entry.key.instance,
        project=entry.key.project,
        policy=_policy_w(entry.policy),
        generation=entry.generation,
        installed=entry.installed,
        resolver_running=entry.resolver_pid is not None,
    )


def _setup_failed(exc: NetworkError) -> VarlinkError:
    return VarlinkError(NETWORK_SETUP_FAILED, {"reason": str(exc)})


class NetworkMethods:
    """Handlers of the network methods, around one NetworkEngine."""

    def __init__(self, app: HelperApp, engine: NetworkEngine | None = None) -> None:
        self.app = app
        self._engine = engine

    @property
    def engine(self) -> NetworkEngine:
        """The engine, created on first use (registration itself touches nothing)."""
        if self._engine is None:
            self._engine = NetworkEngine()
        return self._engine

    def _key(self, ctx: CallerContext, instance: str, project: str) -> ContainerKey:
        instance = check_instance_name(instance, "instance")
        project = check_project_name(project, "project")
        ctx.check_owner(project, instance)
        return ContainerKey(project=project, instance=instance)

    def _target(self, key: ContainerKey) -> NetworkTarget:
        found = self.app.instances.attachment(key.project, key.instance)
        try:
            return NetworkTarget(
                key=key,
                veth=found.veth,
                bridge=found.bridge,
                gateway4=ipaddress.IPv4Address(found.gateway4) if found.gateway4 else None,
                gateway6=ipaddress.IPv6Address(found.gateway6) if found.gateway6 else None,
            )
        except (ValueError, NetworkError) as exc:
            raise VarlinkError(NETWORK_SETUP_FAILED, {"reason": str(exc)}) from exc

    def apply(self, ctx: CallerContext, params: ApplyNetworkPolicyIn) -> GenerationOut:
        """ApplyNetworkPolicy: validate, check the admin policy, install before start."""
        key = self._key(ctx, params.instance, params.project)
        raw: dict[str, Any] = to_wire(params.policy)
        try:
            policy = parse_policy(raw)
        except InvalidPolicy as exc:
            raise VarlinkError(INVALID_POLICY, {"field": exc.field, "reason": exc.reason}) from exc
        self.app.policy.check_mode(policy.mode.value)
        if policy.mode is NetworkMode.ALLOWLIST:
            self.app.policy.check_allowlist_size(len(policy.allowlist) + len(policy.hosts))
        target = self._target(key)
        try:
            return GenerationOut(self.engine.apply(target, policy).generation)
        except NetworkError as exc:
            raise _setup_failed(exc) from exc

    def remove(self, ctx: CallerContext, params: InstanceRefIn) -> RemoveNetworkPolicyOut:
        """RemoveNetworkPolicy (idempotent)."""
        key = self._key(ctx, params.instance, params.project)
        try:
            return RemoveNetworkPolicyOut(self.engine.remove(key))
        except NetworkError as exc:
            raise _setup_failed(exc) from exc

    def quarantine(self, ctx: CallerContext, params: InstanceRefIn) -> GenerationOut:
        """Quarantine: mode blocked now (also for a container that had no policy yet)."""
        key = self._key(ctx, params.instance, params.project)
        try:
            if self.engine.get(key) is None:
                return GenerationOut(
                    self.engine.apply(self._target(key), blocked_policy()).generation
                )
            return GenerationOut(self.engine.quarantine(key).generation)
        except NetworkError as exc:
            raise _setup_failed(exc) from exc

    def list_policies(self, ctx: CallerContext, _params: NoParamsIn) -> ListNetworkPoliciesOut:
        """ListNetworkPolicies: the caller's own containers only (all for admins)."""
        own = user_project(ctx.peer.uid)
        entries = [
            _entry_w(e) for e in self.engine.list_policies() if ctx.admin or e.key.project == own
        ]
        return ListNetworkPoliciesOut(policies=entries)

    def read_counters(self, ctx: CallerContext, params: InstanceRefIn) -> ReadCountersOut:
        """ReadCounters of a container with a policy."""
        key = self._key(ctx, params.instance, params.project)
        try:
            counters = self.engine.read_counters(key)
        except NetworkError as exc:
            raise _setup_failed(exc) from exc
        return ReadCountersOut(counters)

    def reconcile(
        self, _ctx: CallerContext | None = None, _params: NoParamsIn | None = None
    ) -> ReconcileOut:
        """Reconcile: keep the containers Incus still has (or cannot tell about), drop the rest.

        Also what the helper should run once when it starts.
        """
        keep: list[ContainerKey] = []
        for entry in self.engine.list_policies():
            try:
                self.app.instances.describe(entry.key.project, entry.key.instance)
            except VarlinkError as exc:
                if exc.name == Err.NO_SUCH_INSTANCE:
                    continue
                # Incus did not answer: never drop a container's rules on a guess.
            keep.append(entry.key)
        try:
            report = self.engine.reconcile(keep)
        except NetworkError as exc:
            raise _setup_failed(exc) from exc
        return ReconcileOut(
            removed=[f"{k.project}/{k.instance}" for k in report.removed],
            reapplied=[f"{k.project}/{k.instance}" for k in report.reapplied],
        )

    def contributions(self) -> list[Contribution]:
        """The methods with their actions and wire dataclasses."""
        table: list[tuple[str, Action | None, Any, type, type]] = [
            ("ApplyNetworkPolicy", Action.NETWORK, self.apply, ApplyNetworkPolicyIn, GenerationOut),
            (
                "RemoveNetworkPolicy",
                Action.NETWORK,
                self.remove,
                InstanceRefIn,
                RemoveNetworkPolicyOut,
            ),
            ("Quarantine", Action.MONITOR, self.quarantine, InstanceRefIn, GenerationOut),
            ("ListNetworkPolicies", None, self.list_policies, NoParamsIn, ListNetworkPoliciesOut),
            ("ReadCounters", Action.MONITOR, self.read_counters, InstanceRefIn, ReadCountersOut),
            ("Reconcile", Action.ADMIN, self.reconcile, NoParamsIn, ReconcileOut),
        ]
        return [
            Contribution(MethodSpec(name, action, handler), tin, tout)
            for name, action, handler, tin, tout in table
        ]


def helper_methods(app: HelperApp) -> list[Contribution]:
    """The hook `coi.helper.app` calls: the network methods of this helper."""
    return NetworkMethods(app).contributions()
