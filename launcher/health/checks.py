"""`coi health`: diagnostics of the host, each check one typed result."""

from __future__ import annotations

import grp
import os
import shutil
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from enum import IntEnum
from typing import Any

from coi.launcher.errors import CoiError, IncusError
from coi.launcher.incus.client import IncusClient
from coi.launcher.incus.endpoint import discover_endpoint

GIB = 1024**3


class Status(IntEnum):
    """Ordered so that the worst status of a report is its max."""

    OK = 0
    WARN = 1
    FAIL = 2


@dataclass(frozen=True)
class CheckResult:
    """One diagnostic: what was checked, how it went, what to do about it."""

    name: str
    status: Status
    message: str
    hint: str = ""
    details: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["status"] = self.status.name.lower()
        return data


@dataclass(frozen=True)
class HealthReport:
    """All checks; `exit_code` is 0 healthy, 1 degraded, 2 unhealthy."""

    checks: list[CheckResult]

    @property
    def status(self) -> Status:
        return max((c.status for c in self.checks), default=Status.OK)

    @property
    def exit_code(self) -> int:
        return int(self.status)

    def to_json(self) -> dict[str, Any]:
        names = {Status.OK: "healthy", Status.WARN: "degraded", Status.FAIL: "unhealthy"}
        return {"status": names[self.status], "checks": [c.to_json() for c in self.checks]}


def _groups() -> list[str]:
    names = []
    for gid in os.getgroups():
        try:
            names.append(grp.getgrgid(gid).gr_name)
        except KeyError:
            continue
    return names


def check_access() -> tuple[CheckResult, IncusClient | None]:
    """Which socket this user reaches Incus through, and as which project."""
    try:
        endpoint = discover_endpoint()
        client = IncusClient(endpoint)
    except CoiError as exc:
        return CheckResult("incus", Status.FAIL, str(exc), exc.hint or ""), None
    info = client.server_info()
    mode = "admin socket" if endpoint.mode == "admin" else "incus-user (restricted project)"
    groups = [g for g in _groups() if g.startswith("incus")]
    return (
        CheckResult(
            "incus",
            Status.OK,
            f"Incus {info.version} reachable via {mode}, project {endpoint.project}",
            details={
                "version": info.version,
                "socket": endpoint.socket_path,
                "mode": endpoint.mode,
                "project": endpoint.project,
                "groups": groups,
                "uid": os.getuid(),
                "idmapped_mounts": info.idmapped_mounts,
            },
        ),
        client,
    )


def check_storage(client: IncusClient) -> CheckResult:
    """The default profile's root pool exists and has room."""
    profile = client.profile("default")
    root = next(
        (
            d
            for d in profile.get("devices", {}).values()
            if d.get("type") == "disk" and d.get("path") == "/"
        ),
        None,
    )
    if root is None:
        return CheckResult(
            "storage",
            Status.FAIL,
            "the default profile has no root disk",
            "re-run `sudo packaging/host-setup` (creates pool `coi`)",
        )
    try:
        pools = {p.name: p for p in client.storage_pools()}
    except IncusError:
        # A restricted (incus-user) certificate may not list pools at all.
        pools = {}
    pool = pools.get(root.get("pool", ""))
    if pool is None:
        # Restricted users may not inspect pools; the profile still names one.
        return CheckResult("storage", Status.OK, f"root disk on pool {root.get('pool')}")
    free = pool.free_bytes / GIB
    details = {"pool": pool.name, "driver": pool.driver, "free_gib": round(free, 2)}
    if pool.total_bytes and free < 1:
        return CheckResult(
            "storage",
            Status.FAIL,
            f"pool {pool.name} has only {free:.1f} GiB free",
            "free space or grow the pool (`incus storage set ... size=`)",
            details,
        )
    if pool.total_bytes and free < 5:
        return CheckResult(
            "storage",
            Status.WARN,
            f"pool {pool.name} has {free:.1f} GiB free (image builds need ~3 GiB)",
            "free space or grow the pool",
            details,
        )
    return CheckResult(
        "storage",
        Status.OK,
        f"pool {pool.name} ({pool.driver}), {free:.1f} GiB free",
        details=details,
    )


def check_bridge(client: IncusClient) -> CheckResult:
    """The default profile's NIC is on a bridge with an explicit IPv4 subnet and NAT."""
    profile = client.profile("default")
    nic = next((d for d in profile.get("devices", {}).values() if d.get("type") == "nic"), None)
    if nic is None:
        return CheckResult(
            "bridge",
            Status.FAIL,
            "the default profile has no network interface",
            "re-run `sudo packaging/host-setup` (creates bridge coibr0)",
        )
    name = nic.get("network") or nic.get("parent") or ""
    network = client.network(name)
    if network is None:
        return CheckResult("bridge", Status.OK, f"containers attach to {name}")
    config = network.get("config") or {}
    subnet = config.get("ipv4.address", "")
    if not config and client.endpoint.mode == "user":
        # Restricted projects see networks without their config; the bridge's live
        # addresses still show whether it has an IPv4 subnet.
        subnet = _bridge_ipv4(client, name)
    details = {"network": name, "ipv4": subnet, "nat": config.get("ipv4.nat", "")}
    if not subnet or subnet in ("auto", "none"):
        return CheckResult(
            "bridge",
            Status.FAIL,
            f"bridge {name} has no explicit IPv4 subnet ({subnet or 'unset'})",
            f"`incus network set {name} ipv4.address=10.x.y.1/24 ipv4.nat=true`",
            details,
        )
    return CheckResult("bridge", Status.OK, f"bridge {name} {subnet}", details=details)


def _bridge_ipv4(client: IncusClient, name: str) -> str:
    try:
        state = client.get(f"networks/{name}/state")
    except IncusError:
        return ""
    for addr in state.get("addresses") or []:
        if addr.get("family") == "inet" and addr.get("scope") == "global":
            return f"{addr.get('address')}/{addr.get('netmask')}"
    return ""


def check_image(client: IncusClient, alias: str = "coi") -> CheckResult:
    """The sandbox image (and its base) are present."""
    image = client.image_by_alias(alias)
    if image is None:
        base = client.image_by_alias("coi-base")
        hint = "`coi build`" if base else "`sudo packaging/host-setup`, then `coi build`"
        if client.endpoint.mode == "user":
            # Images are per project: the administrator's builds reach this one by a copy.
            hint = "ask the administrator to run `sudo coi-helper provision-user $USER`"
            hint += " (copies coi-base and coi into your project)"
            if base:
                hint += ", or `coi build`"
        return CheckResult("image", Status.WARN, f"image {alias!r} not built yet", hint)
    details = {
        "fingerprint": image.fingerprint[:12],
        "size_mib": image.size // 2**20,
        "built_at": image.properties.get("coi.built_at", ""),
    }
    return CheckResult(
        "image", Status.OK, f"image {alias!r} present ({image.fingerprint[:12]})", details=details
    )


def check_nftables() -> CheckResult:
    """The nft tool used by the helper for network isolation."""
    if shutil.which("nft") or os.path.exists("/usr/sbin/nft"):
        return CheckResult("nftables", Status.OK, "nft available")
    return CheckResult(
        "nftables",
        Status.WARN,
        "nftables (nft) is not installed",
        "`sudo apt-get install nftables` (needed for network isolation)",
    )


def check_helper() -> CheckResult:
    """coi-helper reachable, speaking our contract, and authorising this user."""
    from coi.launcher.helper_client import helper_health

    health = helper_health()
    if not health.reachable:
        return CheckResult(
            "helper",
            Status.FAIL,
            f"coi-helper not reachable ({health.error})",
            health.hint,
            {"socket": health.socket},
        )
    details: dict[str, Any] = {
        "socket": health.socket,
        "version": health.version,
        "authorization": health.authorization,
        "scope": "all projects" if health.admin else health.project,
    }
    if health.policy is not None:
        details["policy"] = {
            "path": health.policy.path,
            "loaded": health.policy.loaded,
            "allowed_modes": list(health.policy.allowed_modes),
            "monitoring": health.policy.monitoring,
        }
    if not health.contract_ok:
        return CheckResult(
            "helper",
            Status.FAIL,
            f"coi-helper {health.version} speaks a different interface than this coi",
            "install the same coi version for the helper and restart it",
            details,
        )
    if not health.authorised:
        refused = ", ".join(
            f"{action.rsplit('.', 1)[-1]}: {answer}"
            for action, answer in sorted(health.authorization.items())
        )
        return CheckResult(
            "helper",
            Status.WARN,
            f"coi-helper reachable, but not authorised ({refused})",
            "ask the administrator to install polkit/50-coi-incus-group.rules "
            "(grants network and monitor to group incus)",
            details,
        )
    scope = "every project" if health.admin else f"project {health.project}"
    return CheckResult(
        "helper",
        Status.OK,
        f"coi-helper {health.version} reachable, authorised for {scope}",
        details=details,
    )


HelperCheck = Callable[[], CheckResult]


def run_checks(extra: list[HelperCheck] | None = None, image: str = "coi") -> HealthReport:
    """Run every check; later checks that need Incus are skipped when it is unreachable."""
    access, client = check_access()
    checks = [access]
    if client is not None:
        for check in (check_storage, check_bridge):
            try:
                checks.append(check(client))
            except CoiError as exc:
                checks.append(
                    CheckResult(check.__name__[6:], Status.FAIL, str(exc), exc.hint or "")
                )
        checks.append(check_image(client, image))
    checks.append(check_nftables())
    checks.append(check_helper())
    for check_fn in extra or []:
        checks.append(check_fn())
    return HealthReport(checks)
