"""The network methods through the helper's real varlink service, onto a real engine.

Seams faked: Incus (which container sits where) and polkit's answers. Everything else is real:
dispatch, wire validation, ownership, the admin policy, the engine and the kernel (the lab).
"""

from __future__ import annotations

import os
from typing import Any

import network_lab as L
import pytest
from network_lab import LabEngine

from coi.helper.app import HelperApp
from coi.helper.authz import Authorizer
from coi.helper.identity import PeerIdentity, read_start_time
from coi.helper.incus import Attachment
from coi.helper.interface import Authorization, Err, Features, InstanceInfo, Nic
from coi.helper.ipc.errors import VarlinkError
from coi.helper.ipc.wire import Call
from coi.helper.network.ipc import INVALID_POLICY, NetworkMethods
from coi.helper.policy import Policy
from coi.helper.polkit import Decision
from coi.helper.server import ServerLimits

pytestmark = pytest.mark.integration

H = "org.codeonincus.Helper."
OWNER, OTHER = 1000, 1001
PROJECT, NAME = f"user-{OWNER}", "coit-net-ipc"
FEATURES = Features("6.18", True, True, True, "122", False, ["cap_net_admin"], True)


class LabInstances:
    """Incus as the helper would see it: one container, attached where lab container c1 is."""

    def __init__(self) -> None:
        self.exists = True

    def describe(self, project: str, instance: str) -> InstanceInfo:
        if not self.exists or (project, instance) != (PROJECT, NAME):
            raise VarlinkError(Err.NO_SUCH_INSTANCE, {"instance": instance, "project": project})
        nic = Nic("eth0", "vc1", "br0", "02:00:00:00:77:11", [f"{L.C1_4}/24"])
        return InstanceInfo(NAME, PROJECT, "Running", 1, [nic], "")

    def attachment(self, project: str, instance: str, nic: str = "eth0") -> Attachment:
        self.describe(project, instance)
        return Attachment(project, instance, nic, "vc1", "br0", L.GW4, L.GW6)


class Polkit:
    """Allows network and monitor to the two test users, nothing else."""

    def check(self, peer: PeerIdentity, action: str) -> Decision:
        allowed = peer.uid in (OWNER, OTHER) and not action.endswith(".admin")
        return Decision(Authorization.ALLOWED if allowed else Authorization.DENIED, "test")


def peer(uid: int) -> PeerIdentity:
    pid = os.getpid()
    return PeerIdentity(pid, uid, uid, read_start_time(pid), (), None)


@pytest.fixture
def app(engine: LabEngine) -> tuple[HelperApp, LabInstances, NetworkMethods]:
    instances = LabInstances()
    helper = HelperApp(
        policy=Policy(allowed_modes=("restricted", "allowlist", "blocked")),
        authorizer=Authorizer(Polkit()),  # type: ignore[arg-type]
        instances=instances,
        features=FEATURES,
        limits=ServerLimits(),
        extensions=(),
    )
    methods = NetworkMethods(helper, engine)  # type: ignore[arg-type]
    helper.contributions = methods.contributions  # type: ignore[method-assign]
    return helper, instances, methods


def call(helper: HelperApp, uid: int, method: str, params: dict[str, Any]) -> dict[str, Any]:
    with L.in_netns(L.RTR):
        (reply,) = helper.service().dispatch(helper.context(peer(uid)), Call(H + method, params))
    return reply


def test_network_methods_end_to_end(app: tuple[HelperApp, LabInstances, NetworkMethods]) -> None:
    helper, instances, _ = app
    ref = {"instance": NAME, "project": PROJECT}
    reply = call(helper, OWNER, "ApplyNetworkPolicy", {**ref, "policy": {"mode": "restricted"}})
    assert reply["parameters"] == {"generation": 1}
    assert not L.reachable(L.C1, "tcp", L.PRIV4) and L.reachable(L.C1, "tcp", L.NET4)

    # Someone else's container, a broken policy, a mode the admin forbids.
    assert (
        call(helper, OTHER, "ApplyNetworkPolicy", {**ref, "policy": {"mode": "open"}})["error"]
        == Err.NOT_OWNER
    )
    bad = {"mode": "allowlist", "allowlist": [{"target": "a..b"}]}
    reply = call(helper, OWNER, "ApplyNetworkPolicy", {**ref, "policy": bad})
    assert reply["error"] == INVALID_POLICY
    assert reply["parameters"]["field"] == "allowlist[0].target"
    reply = call(helper, OWNER, "ApplyNetworkPolicy", {**ref, "policy": {"mode": "open"}})
    assert reply["error"] == Err.POLICY_FORBIDDEN
    assert not L.reachable(L.C1, "tcp", L.PRIV4)  # nothing changed

    listed = call(helper, OWNER, "ListNetworkPolicies", {})["parameters"]["policies"]
    assert [(p["instance"], p["policy"]["mode"], p["installed"]) for p in listed] == [
        (NAME, "restricted", True)
    ]
    assert call(helper, OTHER, "ListNetworkPolicies", {})["parameters"]["policies"] == []

    assert call(helper, OWNER, "Quarantine", ref)["parameters"] == {"generation": 2}
    assert not L.reachable(L.C1, "tcp", L.NET4)
    counters = call(helper, OWNER, "ReadCounters", ref)["parameters"]["counters"]
    assert counters["packets_rejected"] > 0 and counters["packets_out"] > 0

    # Only an admin may reconcile; it keeps what Incus still has, drops what vanished.
    assert call(helper, OWNER, "Reconcile", {})["error"] == Err.PERMISSION_DENIED
    assert call(helper, 0, "Reconcile", {})["parameters"] == {"removed": [], "reapplied": []}
    instances.exists = False
    assert call(helper, 0, "Reconcile", {})["parameters"]["removed"] == [f"{PROJECT}/{NAME}"]
    assert L.reachable(L.C1, "tcp", L.PRIV4)
    instances.exists = True

    assert call(helper, OWNER, "ApplyNetworkPolicy", {**ref, "policy": {"mode": "restricted"}})[
        "parameters"
    ] == {"generation": 1}
    assert call(helper, OWNER, "RemoveNetworkPolicy", ref)["parameters"] == {"removed": True}
    assert call(helper, OWNER, "RemoveNetworkPolicy", ref)["parameters"] == {"removed": False}
    assert L.reachable(L.C1, "tcp", L.PRIV4)


def test_quarantine_without_a_policy_derives_the_target(
    app: tuple[HelperApp, LabInstances, NetworkMethods],
) -> None:
    helper, _, _ = app
    ref = {"instance": NAME, "project": PROJECT}
    assert call(helper, OWNER, "Quarantine", ref)["parameters"] == {"generation": 1}
    assert not L.reachable(L.C1, "tcp", L.NET4)


def test_the_helper_discovers_the_network_methods() -> None:
    """`coi.helper.app` loads this package's methods through its extension hook."""
    helper = HelperApp(
        policy=Policy(),
        authorizer=Authorizer(Polkit()),  # type: ignore[arg-type]
        instances=LabInstances(),
        features=FEATURES,
        limits=ServerLimits(),
    )
    names = {c.spec.name for c in helper.contributions()}
    assert names == {
        "ApplyNetworkPolicy",
        "RemoveNetworkPolicy",
        "Quarantine",
        "ListNetworkPolicies",
        "ReadCounters",
        "Reconcile",
    }
    helper.service()  # the dataclasses agree with the interface text
