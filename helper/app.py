"""The helper's state and the handlers of `org.codeonincus.Helper`.

`HelperApp` holds what every call needs (policy, polkit, Incus, features) and builds the
`Service`. Ownership lives here too: a caller reaches project `user-<uid>` only, unless it is
root or in `incus-admin` (which is root-equivalent through Incus already).
"""

from __future__ import annotations

import grp
import importlib
from dataclasses import dataclass
from typing import TYPE_CHECKING

from coi.helper import __version__
from coi.helper.authz import Authorizer, DecisionCache
from coi.helper.identity import PeerIdentity
from coi.helper.incus import InstanceSource
from coi.helper.interface import (
    METHOD_TYPES,
    Action,
    Authorization,
    Caller,
    DescribeInstanceIn,
    DescribeInstanceOut,
    Err,
    Features,
    GetInfoIn,
    GetInfoOut,
    Limits,
    PingIn,
    PingOut,
    helper_interface,
)
from coi.helper.ipc.errors import VarlinkError
from coi.helper.ipc.idl import Bounds
from coi.helper.names import check_instance_name, check_project_name
from coi.helper.policy import Policy
from coi.helper.server import ServerLimits
from coi.helper.service import Contribution, MethodSpec, Service

if TYPE_CHECKING:
    from coi.helper.stager import Stager

ADMIN_GROUP = "incus-admin"

# Feature packages add methods without editing this file: each module named here (if it exists)
# defines `helper_methods(app: HelperApp) -> list[Contribution]`; the interface lines of those
# methods live in org.codeonincus.Helper.varlink like all others.
EXTENSIONS = ("coi.helper.network.ipc", "coi.helper.monitor.ipc", "coi.helper.guard_ipc")


def user_project(uid: int) -> str:
    """The incus-user project of `uid`."""
    return f"user-{uid}"


def group_id(name: str) -> int | None:
    """gid of group `name`, or None if the host has no such group."""
    try:
        return grp.getgrnam(name).gr_gid
    except KeyError:
        return None


@dataclass
class CallerContext:
    """Per-connection context handed to handlers."""

    peer: PeerIdentity
    app: HelperApp
    cache: DecisionCache

    def require(self, action: Action) -> None:
        """Raise the typed error unless this caller may use `action`."""
        self.app.authorizer.require(self.peer, action, self.cache)

    @property
    def admin(self) -> bool:
        """Root, or a member of incus-admin: reaches every project."""
        return self.app.is_admin(self.peer)

    def check_owner(self, project: str, instance: str) -> None:
        """Raise NotOwner unless this caller may act on containers of `project`."""
        if self.admin or project == user_project(self.peer.uid):
            return
        raise VarlinkError(
            Err.NOT_OWNER, {"instance": instance, "project": project, "uid": self.peer.uid}
        )


class HelperApp:
    """Everything the helper's methods need, and the method table."""

    def __init__(
        self,
        *,
        policy: Policy,
        authorizer: Authorizer,
        instances: InstanceSource,
        features: Features,
        limits: ServerLimits,
        bounds: Bounds | None = None,
        admin_group: str = ADMIN_GROUP,
        extensions: tuple[str, ...] = EXTENSIONS,
        stager: Stager | None = None,
        stager_error: str = "",
    ) -> None:
        self.policy = policy
        self.authorizer = authorizer
        self.instances = instances
        self.features = features
        self.limits = limits
        self.bounds = bounds or Bounds()
        self.admin_gid = group_id(admin_group)
        self.extensions = extensions
        # The child that makes locked workspace mounts (coi.helper.stager); None if it
        # did not start, `stager_error` then says why.
        self.stager = stager
        self.stager_error = stager_error

    def is_admin(self, peer: PeerIdentity) -> bool:
        """True for root and for processes holding the incus-admin group."""
        if peer.uid == 0:
            return True
        gid = self.admin_gid
        return gid is not None and (peer.gid == gid or gid in peer.groups)

    def context(self, peer: PeerIdentity) -> CallerContext:
        """A fresh context for a new connection."""
        return CallerContext(peer, self, DecisionCache())

    def methods(self) -> list[MethodSpec]:
        """The method table of org.codeonincus.Helper; new methods add one entry each."""
        return [
            MethodSpec("GetInfo", None, self.get_info),
            MethodSpec("Ping", None, self.ping),
            MethodSpec("DescribeInstance", Action.MONITOR, self.describe_instance),
        ]

    def contributions(self) -> list[Contribution]:
        """Methods contributed by the feature modules in `extensions` that are installed."""
        found: list[Contribution] = []
        for name in self.extensions:
            try:
                module = importlib.import_module(name)
            except ModuleNotFoundError as exc:
                if exc.name is not None and name.startswith(exc.name):
                    continue  # that feature is not part of this build
                raise
            found.extend(module.helper_methods(self))
        return found

    def service(self) -> Service:
        """The varlink service with org.codeonincus.Helper registered (TypeError on drift)."""
        svc = Service(
            vendor="coi (code on incus)",
            product="coi-helper",
            version=__version__,
            url="https://github.com/code-on-incus/coi",
            bounds=self.bounds,
        )
        specs = self.methods()
        types = dict(METHOD_TYPES)
        for extra in self.contributions():
            if extra.spec.name in types:
                raise TypeError(f"{extra.spec.name} is contributed twice")
            specs.append(extra.spec)
            types[extra.spec.name] = (extra.input_type, extra.output_type)
        svc.add_interface(helper_interface(), specs, types)
        return svc

    def ipc_limits(self) -> Limits:
        """The IPC bounds as reported by GetInfo."""
        return Limits(
            max_message_bytes=self.limits.max_message_bytes,
            max_depth=self.limits.max_depth,
            max_string=self.bounds.max_string,
            max_items=self.bounds.max_items,
            calls_per_second=self.limits.calls_per_second,
        )

    # ------------------------------------------------------------------------ handlers
    def get_info(self, ctx: CallerContext, _: GetInfoIn) -> GetInfoOut:
        """Version, features, admin policy, limits and the caller's polkit answers."""
        answers: dict[str, Authorization] = {}
        for action in Action:
            answers[action.value] = self.authorizer.decide(ctx.peer, action, ctx.cache).result
        caller = Caller(
            uid=ctx.peer.uid,
            gid=ctx.peer.gid,
            pid=ctx.peer.pid,
            admin=ctx.admin,
            project=user_project(ctx.peer.uid),
            authorization=answers,
        )
        return GetInfoOut(
            version=__version__,
            features=self.features,
            policy=self.policy.describe(),
            limits=self.ipc_limits(),
            caller=caller,
        )

    def ping(self, _ctx: CallerContext, params: PingIn) -> PingOut:
        """Echo."""
        return PingOut(pong=params.ping)

    def describe_instance(
        self, ctx: CallerContext, params: DescribeInstanceIn
    ) -> DescribeInstanceOut:
        """Project, veths, addresses and cgroup of a container the caller owns."""
        instance = check_instance_name(params.instance, "instance")
        project = check_project_name(params.project, "project")
        # Ownership is decided on the project name before Incus is asked, so a caller cannot
        # even learn whether a container exists in someone else's project.
        ctx.check_owner(project, instance)
        return DescribeInstanceOut(instance=self.instances.describe(project, instance))
