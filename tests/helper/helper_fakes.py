"""Seams for unit tests: a fake Incus instance source and a scripted polkit. The code under
test (dispatch, validation, authorisation, ownership) is always the real one."""

from __future__ import annotations

import os
from dataclasses import dataclass

from coi.helper.app import CallerContext, HelperApp
from coi.helper.authz import Authorizer
from coi.helper.identity import PeerIdentity, read_start_time
from coi.helper.incus import Attachment
from coi.helper.interface import Action, Authorization, Err, Features, InstanceInfo, Nic
from coi.helper.ipc.errors import VarlinkError
from coi.helper.policy import Policy
from coi.helper.polkit import Decision
from coi.helper.server import ServerLimits
from coi.helper.service import Contribution, MethodSpec

FEATURES = Features(
    kernel="6.18.0",
    peer_pidfd=True,
    proc_connector_unprivileged=True,
    polkit=True,
    polkit_version="122",
    polkit_pidfd_subject=False,
    capabilities=["cap_net_admin"],
    no_new_privs=True,
)


class FakeInstances:
    """Containers by (project, name)."""

    def __init__(self) -> None:
        self.items: dict[tuple[str, str], InstanceInfo] = {}
        self.asked: list[tuple[str, str]] = []

    def add(self, project: str, name: str) -> InstanceInfo:
        info = InstanceInfo(
            name=name,
            project=project,
            status="Running",
            pid=1,
            nics=[Nic("eth0", "veth1234", "coibr0", "10:66:6a:00:00:01", ["10.0.0.2/24"])],
            cgroup=f"/lxc.payload.{project}_{name}",
        )
        self.items[(project, name)] = info
        return info

    def describe(self, project: str, instance: str) -> InstanceInfo:
        self.asked.append((project, instance))
        try:
            return self.items[(project, instance)]
        except KeyError:
            raise VarlinkError(
                Err.NO_SUCH_INSTANCE, {"instance": instance, "project": project}
            ) from None

    def attachment(self, project: str, instance: str, nic: str = "eth0") -> Attachment:
        info = self.describe(project, instance)
        found = next(n for n in info.nics if n.name == nic)
        return Attachment(project, instance, nic, found.host_name, found.network, "10.0.0.1", None)


class ScriptedPolkit:
    """Answers CheckAuthorization from a table keyed by (uid, action)."""

    def __init__(self, answers: dict[tuple[int, str], Authorization] | None = None) -> None:
        self.answers = answers or {}
        self.calls = 0

    def check(self, peer: PeerIdentity, action: str) -> Decision:
        self.calls += 1
        return Decision(self.answers.get((peer.uid, action), Authorization.DENIED), "scripted")


def peer_as(uid: int, gid: int | None = None, groups: tuple[int, ...] = ()) -> PeerIdentity:
    """An identity pinned to this (live) test process but claiming another uid."""
    pid = os.getpid()
    return PeerIdentity(pid, uid, uid if gid is None else gid, read_start_time(pid), groups, None)


def make_app(
    polkit: ScriptedPolkit | None = None,
    instances: FakeInstances | None = None,
    policy: Policy | None = None,
    extensions: tuple[str, ...] = (),
) -> HelperApp:
    return HelperApp(
        policy=policy or Policy(),
        authorizer=Authorizer(polkit),  # type: ignore[arg-type]
        instances=instances or FakeInstances(),
        features=FEATURES,
        limits=ServerLimits(),
        extensions=extensions,
    )


def context(app: HelperApp, peer: PeerIdentity) -> CallerContext:
    return app.context(peer)


# ----------------------------------------------------- a feature module contributing a method
@dataclass(frozen=True)
class ReconcileIn:
    """No parameters."""


@dataclass(frozen=True)
class ReconcileOut:
    removed: list[str]
    reapplied: list[str]


def helper_methods(app: HelperApp) -> list[Contribution]:
    """What a feature package's `ipc` module provides (here: Reconcile, admin action)."""

    def reconcile(ctx: CallerContext, _params: ReconcileIn) -> ReconcileOut:
        return ReconcileOut(removed=["gone"], reapplied=[])

    return [
        Contribution(MethodSpec("Reconcile", Action.ADMIN, reconcile), ReconcileIn, ReconcileOut)
    ]
