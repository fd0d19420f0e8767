"""A session's network isolation: `[network]` config → typed policy → coi-helper, fail closed.

`session_network(config)` turns the merged `[network]` section into the policy the helper
enforces. `pinned_nic(...)` is the container's `eth0` with a host-side name of our choosing:
the helper keys its rules on that name, so they can be installed before the container's first
start and hold from its first packet. `network_hook(...)` is the `before_start` hook that
applies the policy (and registers its removal for ephemeral sessions); if the helper is
missing or refuses, restricted and allowlist sessions do not start. `open` needs no helper.

For other commands: `remove_network_policy` (kill, shutdown), `remove_orphan_policies`
(clean), `check_network_isolation` (health) and `context_lines` (~/SANDBOX_CONTEXT.md).
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import secrets
import shutil
import socket
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from coi.launcher.config.model import NetworkConfig, NetworkHost
from coi.launcher.errors import CoiError, HelperError, IncusError
from coi.launcher.health.checks import CheckResult, Status
from coi.launcher.helper_client import (
    HelperClient,
    HelperNotRunning,
    NetworkAllowEntry,
    NetworkHostException,
    NetworkMode,
    NetworkPolicy,
)
from coi.launcher.incus.client import IncusClient
from coi.launcher.incus.types import InstanceSpec
from coi.launcher.session.phases import Teardown

NIC = "eth0"
# Host-side interface names: "coi" + 12 hex digits = 15, the kernel's limit (IFNAMSIZ - 1).
VETH_PREFIX = "coi"
HEALTH_PREFIX = "coi-health-net-"

Resolver = Callable[[str], list[str]]
HelperFactory = Callable[[], HelperClient]


class NetworkPolicyError(HelperError):
    """The session's network policy could not be put in place; the session does not start."""


@dataclass(frozen=True)
class SessionNetwork:
    """The network mode of a session and the policy the helper enforces for it."""

    mode: NetworkMode
    policy: NetworkPolicy
    allowed_domains: tuple[str, ...] = ()
    hosts: tuple[NetworkHost, ...] = ()

    @property
    def needs_helper(self) -> bool:
        """restricted and allowlist are enforced by the helper; open is not."""
        return self.mode is not NetworkMode.OPEN


def _resolve(name: str) -> list[str]:
    """The addresses of `name` on the host (a `[[network.hosts]]` entry given by name)."""
    try:
        infos = socket.getaddrinfo(name, None, proto=socket.IPPROTO_TCP)
    except socket.gaierror as exc:
        raise NetworkPolicyError(
            f"network host exception {name!r} does not resolve on this host ({exc.strerror})",
            hint="fix [[network.hosts]] (`coi config show` names its source) or use an address",
        ) from exc
    return sorted({str(info[4][0]) for info in infos})


def _is_address(text: str) -> bool:
    try:
        ipaddress.ip_network(text, strict=False)
    except ValueError:
        return False
    return True


def _ports(ports: Iterable[int]) -> list[int] | None:
    listed = sorted(set(ports))
    return listed or None


def _host_exceptions(hosts: Iterable[NetworkHost], resolve: Resolver) -> list[NetworkHostException]:
    """Addresses and CIDRs pass as they are; names are resolved now (the label keeps the name)."""
    out: list[NetworkHostException] = []
    for host in hosts:
        if _is_address(host.host):
            out.append(NetworkHostException(host.host, _ports(host.ports)))
            continue
        label = host.host[:63]
        for address in resolve(host.host):
            out.append(NetworkHostException(address, _ports(host.ports), label))
    return out


def session_network(config: NetworkConfig, resolve: Resolver = _resolve) -> SessionNetwork:
    """The typed policy of a merged `[network]` section (fields a mode ignores stay unset)."""
    mode = NetworkMode(config.mode)
    if mode is NetworkMode.OPEN:
        policy = NetworkPolicy(mode, block_metadata_endpoint=config.block_metadata_endpoint)
    elif mode is NetworkMode.ALLOWLIST:
        policy = NetworkPolicy(
            mode,
            allowlist=[NetworkAllowEntry(d) for d in dict.fromkeys(config.allowed_domains)],
            hosts=_host_exceptions(config.hosts, resolve) or None,
        )
    else:
        policy = NetworkPolicy(
            mode,
            allowed_ports=_ports(config.allowed_ports),
            hosts=_host_exceptions(config.hosts, resolve) or None,
            block_private_networks=config.block_private_networks,
            block_metadata_endpoint=config.block_metadata_endpoint,
        )
    return SessionNetwork(mode, policy, tuple(config.allowed_domains), tuple(config.hosts))


def new_veth_name() -> str:
    """A fresh host-side interface name for a container's NIC (15 characters)."""
    return VETH_PREFIX + secrets.token_hex(6)


def pinned_nic(client: IncusClient, veth: str, profile: str = "default") -> dict[str, str] | None:
    """The profile's `eth0` with its host-side name pinned to `veth`; None without such NIC.

    Created with this device, the container's veth has a name the helper can key its rules on
    before the container ever starts.
    """
    devices: Mapping[str, Mapping[str, str]] = client.profile(profile).get("devices") or {}
    nic = devices.get(NIC)
    if nic is None or nic.get("type") != "nic":
        return None
    return {**{str(k): str(v) for k, v in nic.items()}, "host_name": veth}


def _explain(exc: HelperError, mode: NetworkMode) -> NetworkPolicyError:
    fix = exc.hint or "see `coi health`"
    return NetworkPolicyError(
        f"network mode {mode.value} cannot be enforced, so the session does not start: {exc}",
        hint=f"{fix}; or, for a project you trust, run with --network open",
    )


def _stop_then_remove(client: IncusClient, name: str, project: str, helper: HelperFactory) -> None:
    # The container must be stopped before its rules go: a running container without them
    # would be unrestricted until the next teardown step deletes it.
    info = client.instance(name)
    if info is not None and info.status not in ("Stopped", ""):
        try:
            client.set_state(name, "stop", force=True)
        except IncusError:
            if client.instance(name) is not None:
                raise  # keep the rules: fail closed
    with helper() as h:
        h.remove_network_policy(name, project)


def network_hook(
    network: SessionNetwork,
    *,
    persistent: bool,
    helper: HelperFactory = HelperClient,
) -> Callable[[IncusClient, str, Teardown], None]:
    """The `before_start` hook that puts the session's policy in place (fail closed).

    Ephemeral sessions: the teardown stops the container and removes the policy. Persistent
    ones keep it (the hook applies it again at every restart). A failed apply is undone at
    once (the container has not started) and stops the session.
    """

    def before_start(client: IncusClient, name: str, teardown: Teardown) -> None:
        project = client.project
        if not network.needs_helper:
            _drop_stale_policy(name, project, helper)
            return
        try:
            with helper() as h:
                h.apply_network_policy(name, project, network.policy)
        except HelperError as exc:
            # The container has not started: undo a half-applied policy (say, its resolver
            # failed) right away, quietly; a refusal or a missing helper left nothing.
            with contextlib.suppress(HelperError), helper() as h:
                h.remove_network_policy(name, project)
            raise _explain(exc, network.mode) from exc
        if not persistent:
            teardown.push(
                f"remove network policy of {name}",
                lambda: _stop_then_remove(client, name, project, helper),
            )

    return before_start


def _drop_stale_policy(name: str, project: str, helper: HelperFactory) -> None:
    """`open`: a persistent container may still carry an earlier session's policy; drop it
    if a helper answers. `open` never depends on the helper: if it is missing or refuses,
    an old policy stays (stricter, never looser) and the session starts anyway."""
    with contextlib.suppress(HelperError), helper() as h:
        h.remove_network_policy(name, project)


# ---------------------------------------------------------------- other commands
def remove_network_policy(
    helper: HelperClient | None, name: str, project: str, *, missing_helper_ok: bool = True
) -> bool:
    """Remove a container's policy for `coi kill`/`shutdown`/`clean`; True if one was removed.

    Call it after the container is stopped or deleted (never before: a running container
    without its rules is unrestricted). `helper` None opens a client on the default socket.
    Without a running helper this returns False when `missing_helper_ok` (an `open` container
    has no policy; the helper's reconcile at start drops those of vanished containers), else
    raises `NetworkPolicyError`, as it does for any refusal.
    """
    try:
        if helper is not None:
            return helper.remove_network_policy(name, project)
        with HelperClient() as own:
            return own.remove_network_policy(name, project)
    except HelperNotRunning:
        if missing_helper_ok:
            return False
        raise
    except HelperError as exc:
        raise NetworkPolicyError(
            f"could not remove the network policy of {name}: {exc}", hint=exc.hint
        ) from exc


def remove_orphan_policies(client: IncusClient, helper: HelperClient | None = None) -> list[str]:
    """`coi clean`: remove the policies of this project's containers that no longer exist.

    Returns the names whose policy was removed; [] when no helper runs.
    """
    try:
        own = helper or HelperClient()
        entries = own.list_network_policies()
    except HelperNotRunning:
        return []
    removed: list[str] = []
    try:
        for entry in entries:
            if entry.project != client.project or client.instance(entry.instance) is not None:
                continue
            if own.remove_network_policy(entry.instance, entry.project):
                removed.append(entry.instance)
    finally:
        if helper is None:
            own.close()
    return removed


def context_lines(network: SessionNetwork) -> list[str]:
    """Markdown lines for ~/SANDBOX_CONTEXT.md: the mode and what it lets the agent reach."""
    lines = [
        f"- Network mode: **{network.mode.value}** (enforced on the host; root inside "
        "cannot change it)."
    ]
    policy = network.policy
    if network.mode is NetworkMode.OPEN:
        lines.append("- The network is not restricted.")
        if policy.block_metadata_endpoint:
            lines.append("- Except the cloud metadata addresses (169.254.0.0/16, fe80::/10).")
    elif network.mode is NetworkMode.ALLOWLIST:
        lines.append(
            "- Only these names (and their subdomains; `*.x` only subdomains) resolve "
            "and connect; every other name fails to resolve:"
        )
        lines += [f"  - `{e.target}`" for e in policy.allowlist or []]
    else:
        lines.append(
            "- The internet is reachable; the host, other containers, private "
            "networks and cloud metadata are not (connections are refused)."
        )
        if policy.allowed_ports:
            ports = ", ".join(map(str, policy.allowed_ports))
            lines.append(f"- Only these destination ports: {ports}.")
        if policy.block_private_networks is False:
            lines.append("- Private networks (10/8, 172.16/12, 192.168/16) are reachable.")
    for host in network.hosts:
        ports = ", ".join(map(str, host.ports)) or "all ports"
        lines.append(f"- Also reachable: `{host.host}` ({ports}).")
    if network.mode is not NetworkMode.OPEN:
        lines.append(
            "- Need another host? Ask the user to change `[network]` in the coi "
            "configuration; you cannot change it from inside."
        )
    return lines


# ------------------------------------------------------------------------ health
@dataclass(frozen=True)
class _EmptySpec(InstanceSpec):
    """A container without a root file system: never started, created in milliseconds."""

    def to_api(self) -> dict[str, Any]:
        data = super().to_api()
        data["source"] = {"type": "none"}
        return data


def _nft_present() -> bool:
    return bool(shutil.which("nft") or os.path.exists("/usr/sbin/nft"))


def check_network_isolation(client: IncusClient | None) -> CheckResult:
    """`coi health`: nftables present, and the helper applies and removes a policy for a
    throwaway, never-started container in this user's project."""
    name = "network-isolation"
    if not _nft_present():
        return CheckResult(
            name,
            Status.FAIL,
            "nftables (nft) is not installed",
            "`sudo apt-get install nftables python3-nftables` (the helper enforces with it)",
        )
    if client is None:
        return CheckResult(name, Status.FAIL, "not checked: Incus is not reachable")
    veth = new_veth_name()
    nic = pinned_nic(client, veth)
    if nic is None:
        return CheckResult(
            name,
            Status.FAIL,
            "the default profile has no eth0 NIC to isolate",
            "run `sudo packaging/host-setup` (or add eth0 on a managed bridge to the profile)",
        )
    probe = HEALTH_PREFIX + secrets.token_hex(4)
    details = {"project": client.project, "container": probe}
    try:
        client.create_instance(
            _EmptySpec(name=probe, image="", ephemeral=False, devices={NIC: nic})
        )
    except CoiError as exc:
        return CheckResult(
            name, Status.FAIL, f"could not create a test container: {exc}", exc.hint or "", details
        )
    try:
        with HelperClient() as helper:
            helper.apply_network_policy(
                probe, client.project, NetworkPolicy(NetworkMode.RESTRICTED)
            )
            removed = helper.remove_network_policy(probe, client.project)
    except HelperError as exc:
        return CheckResult(
            name,
            Status.FAIL,
            f"the helper cannot isolate this user's containers: {exc}",
            (exc.hint or "see the helper check") + "; restricted and allowlist sessions "
            "will refuse to start",
            details,
        )
    finally:
        with contextlib.suppress(CoiError):
            client.remove_instance(probe)
    if not removed:
        return CheckResult(
            name,
            Status.WARN,
            "the helper applied a policy but did not report it on removal",
            "restart coi-helper",
            details,
        )
    return CheckResult(
        name,
        Status.OK,
        f"the helper applies and removes policies in project {client.project}",
        details=details,
    )


def network_isolation_check() -> CheckResult:
    """`check_network_isolation` with this user's own Incus connection (for `run_checks`)."""
    try:
        client: IncusClient | None = IncusClient.connect()
    except CoiError:
        client = None
    return check_network_isolation(client)
