"""The locked-workspace methods of `org.codeonincus.Helper`: StageWorkspace, UnstageWorkspace.

The serving helper holds CAP_NET_ADMIN only; the mounts are made by its stager child
(`coi.helper.stager`), which holds CAP_SYS_ADMIN only and talks to nobody but this process.
Here the caller is identified (SO_PEERCRED, never a uid from the request), authorised (polkit
action network, as for the container's network policy), its ownership of the project and of
the container checked with Incus, and the request validated with
`hostint_guard.stage_for_caller` before the stager sees it (the stager validates again).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from coi.helper.app import CallerContext, HelperApp
from coi.helper.interface import INTERFACE, Action, Err
from coi.helper.ipc.errors import VarlinkError
from coi.helper.names import check_instance_name, check_project_name
from coi.helper.service import Contribution, MethodSpec
from coi.helper.stager import STAGE_BASE, Stager, StageRequest, StagerError, list_records
from coi.launcher.errors import SessionError
from coi.launcher.session.hostint_guard import stage_for_caller

log = logging.getLogger("coi.helper.guard")

WORKSPACE_REFUSED = f"{INTERFACE}.WorkspaceRefused"
GUARD_UNAVAILABLE = f"{INTERFACE}.WorkspaceGuardUnavailable"


@dataclass(frozen=True)
class StageWorkspaceIn:
    """Parameters of StageWorkspace."""

    instance: str
    project: str
    workspace: str
    protected: list[str] = field(default_factory=list)
    secrets: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class StageWorkspaceOut:
    """Reply of StageWorkspace."""

    stage: str


@dataclass(frozen=True)
class UnstageWorkspaceIn:
    """Parameters of UnstageWorkspace."""

    instance: str
    project: str


@dataclass(frozen=True)
class UnstageWorkspaceOut:
    """Reply of UnstageWorkspace."""

    removed: bool


class GuardMethods:
    """Handlers bound to one `HelperApp` (its `stager` is None when none runs)."""

    def __init__(self, app: HelperApp) -> None:
        self.app = app

    def _stager(self) -> Stager:
        stager = self.app.stager
        if stager is None or not stager.alive:
            raise VarlinkError(GUARD_UNAVAILABLE, {"reason": self.app.stager_error or "no stager"})
        return stager

    def _failed(self, exc: StagerError) -> VarlinkError:
        stager = self.app.stager
        if stager is None or not stager.alive:
            return VarlinkError(GUARD_UNAVAILABLE, {"reason": str(exc)})
        return VarlinkError(WORKSPACE_REFUSED, {"reason": str(exc)})

    def stage(self, ctx: CallerContext, params: StageWorkspaceIn) -> StageWorkspaceOut:
        """Build the stage of a container the caller owns over a workspace it owns."""
        instance = check_instance_name(params.instance, "instance")
        project = check_project_name(params.project, "project")
        ctx.check_owner(project, instance)
        stager = self._stager()
        uid = ctx.peer.uid
        if uid == 0:
            raise VarlinkError(
                WORKSPACE_REFUSED, {"reason": "root builds its locked workspace itself"}
            )
        # The container must exist in that project (raises NoSuchInstance otherwise).
        self.app.instances.describe(project, instance)
        try:
            stage_for_caller(
                STAGE_BASE,
                caller_uid=uid,
                container=instance,
                workspace=Path(params.workspace),
                protected=[PurePosixPath(p) for p in params.protected],
                secrets=[PurePosixPath(p) for p in params.secrets],
            )
        except SessionError as exc:
            raise VarlinkError(WORKSPACE_REFUSED, {"reason": str(exc)}) from None
        request = StageRequest(
            uid=uid,
            instance=instance,
            project=project,
            workspace=params.workspace,
            protected=tuple(params.protected),
            secrets=tuple(params.secrets),
            # Admins' projects take any disk source; incus-user projects only their home.
            in_home=not ctx.admin,
        )
        try:
            path = stager.build(request)
        except StagerError as exc:
            raise self._failed(exc) from None
        log.info("staged %s/%s for uid %d at %s", project, instance, uid, path)
        return StageWorkspaceOut(stage=str(path))

    def unstage(self, ctx: CallerContext, params: UnstageWorkspaceIn) -> UnstageWorkspaceOut:
        """Remove the caller's stage of a container (idempotent)."""
        instance = check_instance_name(params.instance, "instance")
        project = check_project_name(params.project, "project")
        ctx.check_owner(project, instance)
        stager = self._stager()
        if ctx.peer.uid == 0:
            return UnstageWorkspaceOut(removed=False)
        try:
            removed = stager.remove(ctx.peer.uid, instance)
        except StagerError as exc:
            raise self._failed(exc) from None
        return UnstageWorkspaceOut(removed=bool(removed))


def reconcile_stages(app: HelperApp) -> list[str]:
    """Remove the stages of containers Incus no longer has; returns "project/instance" of each.

    Run once at start. A container Incus cannot answer for (unreachable) keeps its stage.
    """
    stager = app.stager
    if stager is None:
        return []
    removed = []
    for uid, instance, project in list_records(STAGE_BASE):
        try:
            app.instances.describe(project, instance)
            continue
        except VarlinkError as exc:
            if exc.name != Err.NO_SUCH_INSTANCE:
                continue
        try:
            stager.remove(uid, instance)
            removed.append(f"{project}/{instance}")
        except StagerError as exc:
            log.warning("cannot remove the stale stage of %s/%s: %s", project, instance, exc)
    return removed


def helper_methods(app: HelperApp) -> list[Contribution]:
    """The locked-workspace methods, for `HelperApp.contributions`.

    None without a stager: the methods then answer MethodNotImplemented, and GetInfo reports
    workspace_guard false (callers check that first).
    """
    if app.stager is None:
        return []
    m = GuardMethods(app)
    return [
        Contribution(
            MethodSpec("StageWorkspace", Action.NETWORK, m.stage),
            StageWorkspaceIn,
            StageWorkspaceOut,
        ),
        Contribution(
            MethodSpec("UnstageWorkspace", Action.NETWORK, m.unstage),
            UnstageWorkspaceIn,
            UnstageWorkspaceOut,
        ),
    ]
