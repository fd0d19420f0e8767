"""Network isolation engine of coi-helper.

Public API (the IPC layer and tests use only these names)::

    engine = NetworkEngine(state_dir, run_dir)            # one per helper process
    engine.apply(NetworkTarget(...), parse_policy(raw))  -> AppliedPolicy
    engine.remove(ContainerKey(project, instance))       -> bool
    engine.quarantine(ContainerKey(...))                 -> AppliedPolicy
    engine.list_policies()                               -> list[AppliedPolicy]
    engine.get(ContainerKey(...))                        -> AppliedPolicy | None
    engine.read_counters(ContainerKey(...))              -> Counters
    engine.reconcile(keep: Iterable[ContainerKey])       -> ReconcileReport
    target_from_incus(project, instance, expanded_devices, config, network_config)
                                                         -> NetworkTarget
"""

from coi.helper.network.engine import AppliedPolicy, Counters, NetworkEngine, ReconcileReport
from coi.helper.network.errors import (
    FirewallError,
    InvalidPolicy,
    InvalidTarget,
    NetworkError,
    ResolverError,
)
from coi.helper.network.incus import target_from_incus
from coi.helper.network.policy import (
    AllowEntry,
    HostException,
    NetworkMode,
    NetworkPolicy,
    blocked_policy,
    parse_policy,
)
from coi.helper.network.resolver import Upstream, host_upstreams
from coi.helper.network.ruleset import NFLOG_GROUP
from coi.helper.network.target import ContainerKey, NetworkTarget

__all__ = [
    "NFLOG_GROUP",
    "AllowEntry",
    "AppliedPolicy",
    "ContainerKey",
    "Counters",
    "FirewallError",
    "HostException",
    "InvalidPolicy",
    "InvalidTarget",
    "NetworkEngine",
    "NetworkError",
    "NetworkMode",
    "NetworkPolicy",
    "NetworkTarget",
    "ReconcileReport",
    "ResolverError",
    "Upstream",
    "blocked_policy",
    "host_upstreams",
    "parse_policy",
    "target_from_incus",
]
