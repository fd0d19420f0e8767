"""The host-integration flags of ``coi run``/``coi shell`` and the request they produce.

`app.py` adds the option types below to its command signatures, collects their values in a
`HostFlags` and calls `sandbox_request`: the configuration layers are loaded (flags on top),
their warnings printed, and the host integration planned into a `SandboxRequest`.
"""

from __future__ import annotations

import enum
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated

import typer

from coi.launcher.config import LoadedConfig, flag_overrides, load_config
from coi.launcher.errors import UsageError
from coi.launcher.incus.client import IncusClient
from coi.launcher.progress import warn
from coi.launcher.session.hostint import HostIntegration, plan_for_client
from coi.launcher.session.network import (
    NIC,
    SessionNetwork,
    network_hook,
    new_veth_name,
    pinned_nic,
    session_network,
)
from coi.launcher.session.sandbox import SandboxRequest, parse_env, resolve_workspace

STAGE_ROOT = Path("/run/coi/stage")


class NetworkChoice(enum.StrEnum):
    """Values of --network."""

    RESTRICTED = "restricted"
    ALLOWLIST = "allowlist"
    OPEN = "open"


NetworkOpt = Annotated[
    NetworkChoice | None,
    typer.Option(
        "--network",
        help="Network mode: restricted (internet, no host/private ranges), allowlist "
        "(only [network] allowed_domains), open (everything). Enforced by coi-helper.",
        case_sensitive=False,
    ),
]
MountOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--mount", help="Mount a host path: HOST:CONTAINER or HOST:CONTAINER:ro (repeatable)."
    ),
]
ForwardEnvOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--forward-env",
        help="Copy these host variables (by value, at start): NAME or NAME1,NAME2 (repeatable).",
    ),
]
SshAgentOpt = Annotated[
    bool,
    typer.Option("--ssh-agent", help="Forward your SSH agent (keys stay on the host)."),
]
WritableHooksOpt = Annotated[
    bool,
    typer.Option(
        "--writable-git-hooks",
        help="Let the sandbox write .git/hooks, .git/config and the other protected paths.",
    ),
]
ProfileOpt = Annotated[
    str | None, typer.Option("--profile", help="Configuration profile (e.g. hardened).")
]
LimitCpuOpt = Annotated[
    str | None, typer.Option("--limit-cpu", help='CPU count "2" or CPU set "0-3".')
]
LimitCpuAllowanceOpt = Annotated[
    str | None,
    typer.Option("--limit-cpu-allowance", help='CPU time "50%" or "25ms/100ms".'),
]
LimitMemoryOpt = Annotated[
    str | None, typer.Option("--limit-memory", help='Memory "2GiB" or "50%".')
]
LimitSwapOpt = Annotated[
    bool | None,
    typer.Option("--limit-swap/--no-limit-swap", help="Allow swapping the sandbox's memory."),
]
LimitDiskReadOpt = Annotated[
    str | None, typer.Option("--limit-disk-read", help='Disk read rate "10MiB" or "1000iops".')
]
LimitDiskWriteOpt = Annotated[
    str | None, typer.Option("--limit-disk-write", help='Disk write rate "10MiB" or "1000iops".')
]
LimitDiskMaxOpt = Annotated[
    str | None, typer.Option("--limit-disk-max", help="Combined disk read+write rate.")
]
LimitProcessesOpt = Annotated[
    int | None, typer.Option("--limit-processes", help="Maximum number of processes.")
]
LimitDurationOpt = Annotated[
    str | None,
    typer.Option(
        "--limit-duration",
        help='Run time "20s", "30m", "2h": the sandbox is stopped then (warned a minute before).',
    ),
]


@dataclass(frozen=True)
class HostFlags:
    """The values of the host-integration flags (None/False/empty: the files decide)."""

    profile: str | None = None
    mounts: list[str] = field(default_factory=list)
    forward_env: list[str] = field(default_factory=list)
    env: list[str] = field(default_factory=list)
    ssh_agent: bool = False
    writable_git_hooks: bool = False
    persistent: bool = False
    image: str | None = None
    limit_cpu: str | None = None
    limit_cpu_allowance: str | None = None
    limit_memory: str | None = None
    limit_swap: bool | None = None
    limit_disk_read: str | None = None
    limit_disk_write: str | None = None
    limit_disk_max: str | None = None
    limit_processes: int | None = None
    limit_duration: str | None = None
    network: NetworkChoice | str | None = None
    # `coi shell` only: --tool and --monitor.
    tool: str | None = None
    monitor: bool = False


def network_flag(value: NetworkChoice | str | None) -> str | None:
    """The --network value as a config value; UsageError for anything but the three modes."""
    if value is None:
        return None
    try:
        return NetworkChoice(str(value).lower()).value
    except ValueError:
        raise UsageError(
            f"--network {value!r} is not a network mode",
            hint="use --network restricted, allowlist or open",
        ) from None


def load_for_session(workspace: Path, flags: HostFlags) -> LoadedConfig:
    """Load the configuration layers of `workspace` with `flags` on top; print the warnings."""
    parse_env(flags.env)  # the same UsageError for a bad -e as without a config
    overrides = flag_overrides(
        ssh_agent=flags.ssh_agent,
        forward_env=flags.forward_env,
        env=flags.env,
        mounts=flags.mounts,
        writable_git_hooks=flags.writable_git_hooks,
        persistent=flags.persistent,
        image=flags.image,
        limit_cpu=flags.limit_cpu,
        limit_cpu_allowance=flags.limit_cpu_allowance,
        limit_memory=flags.limit_memory,
        limit_memory_swap=flags.limit_swap,
        limit_disk_read=flags.limit_disk_read,
        limit_disk_write=flags.limit_disk_write,
        limit_disk_max=flags.limit_disk_max,
        limit_processes=flags.limit_processes,
        limit_duration=flags.limit_duration,
        network=network_flag(flags.network),
        tool=flags.tool,
        monitor=flags.monitor,
    )
    loaded = load_config(workspace, profile=flags.profile, cli_overrides=overrides)
    for warning in loaded.warnings:
        warn(str(warning))
    warn_monitoring_unavailable(loaded.config.monitoring.enabled)
    return loaded


def warn_monitoring_unavailable(enabled: bool) -> None:
    """Threat monitoring is designed (config keys, profile) but not shipped yet: say so
    instead of letting `--monitor` or `[monitoring] enabled` look like protection."""
    if enabled:
        warn(
            "threat monitoring is not part of this version of coi: --monitor / "
            "[monitoring] enabled has no effect yet (network isolation and protected paths do)"
        )


def sandbox_request(
    client: IncusClient,
    workspace: Path,
    flags: HostFlags,
    *,
    slot: int = 0,
    wait_for_network: float = 20.0,
) -> tuple[SandboxRequest, HostIntegration]:
    """The `SandboxRequest` for `workspace` with configuration and host integration applied.

    The returned `HostIntegration` also carries what `~/SANDBOX_CONTEXT.md` shows
    (`describe()`, `protected_paths`, `limits`, `ssh_agent`); `session_request` also returns
    the session's network (`network.context_lines(...)`).
    """
    request, plan, _network = session_request(
        client, workspace, flags, slot=slot, wait_for_network=wait_for_network
    )
    return request, plan


def session_request(
    client: IncusClient,
    workspace: Path,
    flags: HostFlags,
    *,
    slot: int = 0,
    wait_for_network: float = 20.0,
    loaded: LoadedConfig | None = None,
) -> tuple[SandboxRequest, HostIntegration, SessionNetwork]:
    """`sandbox_request` plus the session's network mode and policy.

    The container's NIC gets a pinned host-side name and the helper's policy is applied before
    its first start (fail closed: restricted/allowlist sessions do not start without it).
    `loaded` is the configuration when the caller loaded it already (`load_for_session`).
    """
    workspace = resolve_workspace(workspace)
    if loaded is None:
        loaded = load_for_session(workspace, flags)
    config = loaded.config
    warnings: list[str] = []
    # Only root can build the locked workspace on the host (the helper will do it for users);
    # run as root, coi builds it itself.
    stage_root = STAGE_ROOT / "0" if os.geteuid() == 0 else None
    plan = plan_for_client(client, config, workspace, warnings=warnings, stage_root=stage_root)
    for warning in warnings:
        warn(warning)
    network = session_network(config.network)
    devices = dict(plan.devices)
    nic = pinned_nic(client, new_veth_name())
    if nic is not None and NIC not in devices:
        devices[NIC] = nic
    hook = network_hook(network, persistent=config.defaults.persistent)
    request = SandboxRequest(
        workspace=workspace,
        slot=slot,
        image=config.defaults.image,
        persistent=config.defaults.persistent,
        env=plan.env,
        wait_for_network=wait_for_network,
        devices=devices,
        config=plan.config,
        before_start=(*plan.before_start, hook),
        after_start=tuple(plan.after_start),
    )
    return request, plan, network
