"""Resource limits: the parsed form of ``[limits]`` and its mapping to Incus configuration.

Incus key names (checked against the Incus instance-options and disk-device documentation):
instance ``limits.cpu`` (count or CPU set), ``limits.cpu.allowance`` (``50%`` or
``25ms/100ms``), ``limits.memory``, ``limits.memory.swap`` (boolean), ``limits.processes``;
root disk device ``limits.read``, ``limits.write``, ``limits.max`` (bytes/s or ``Niops``) and
``size``. ``duration`` is not an Incus setting: the session enforces it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta

from coi.launcher.config import values as v
from coi.launcher.config.model import LimitsConfig


@dataclass(frozen=True)
class ResourceLimits:
    """Parsed limits; None (or False for swap) means "no limit"."""

    cpu: v.CpuLimit | None = None
    cpu_allowance: str | None = None  # kept verbatim: Incus takes both syntaxes as they are
    memory_bytes: int | None = None
    memory_share: float | None = None  # a share of host memory ("50%" → 0.5)
    memory_swap: bool = True
    disk_read: v.IoRate | None = None
    disk_write: v.IoRate | None = None
    disk_max: v.IoRate | None = None
    disk_size_bytes: int | None = None
    processes: int | None = None
    duration: timedelta | None = None


@dataclass(frozen=True)
class IncusLimits:
    """Incus settings for the limits: instance config keys and root disk device keys."""

    instance: dict[str, str] = field(default_factory=dict)
    root_disk: dict[str, str] = field(default_factory=dict)


def resource_limits(cfg: LimitsConfig) -> ResourceLimits:
    """Parse the validated ``[limits]`` section into typed values."""
    memory = v.parse_memory(cfg.memory) if cfg.memory else None
    return ResourceLimits(
        cpu=v.parse_cpu(cfg.cpu) if cfg.cpu else None,
        cpu_allowance=cfg.cpu_allowance or None,
        memory_bytes=memory if isinstance(memory, int) else None,
        memory_share=memory if isinstance(memory, float) else None,
        memory_swap=cfg.memory_swap,
        disk_read=v.parse_io_rate(cfg.disk_read) if cfg.disk_read else None,
        disk_write=v.parse_io_rate(cfg.disk_write) if cfg.disk_write else None,
        disk_max=v.parse_io_rate(cfg.disk_max) if cfg.disk_max else None,
        disk_size_bytes=v.parse_size(cfg.disk_size) if cfg.disk_size else None,
        processes=cfg.processes or None,
        duration=v.parse_duration(cfg.duration) if cfg.duration else None,
    )


def incus_limits(limits: ResourceLimits) -> IncusLimits:
    """Map limits to Incus keys (pure; unset limits produce no key)."""
    instance: dict[str, str] = {}
    disk: dict[str, str] = {}
    if limits.cpu is not None:
        instance["limits.cpu"] = limits.cpu.incus_value()
    if limits.cpu_allowance is not None:
        instance["limits.cpu.allowance"] = limits.cpu_allowance
    if limits.memory_bytes is not None:
        instance["limits.memory"] = f"{limits.memory_bytes}B"
    elif limits.memory_share is not None:
        instance["limits.memory"] = f"{round(limits.memory_share * 100)}%"
    # Incus' own default is true; say so explicitly only when swap is turned off.
    if not limits.memory_swap:
        instance["limits.memory.swap"] = "false"
    if limits.processes is not None:
        instance["limits.processes"] = str(limits.processes)
    for key, rate in (
        ("limits.read", limits.disk_read),
        ("limits.write", limits.disk_write),
        ("limits.max", limits.disk_max),
    ):
        if rate is not None:
            disk[key] = rate.incus_value()
    if limits.disk_size_bytes is not None:
        disk["size"] = f"{limits.disk_size_bytes}B"
    return IncusLimits(instance=instance, root_disk=disk)


def describe_limits(limits: ResourceLimits) -> list[str]:
    """Human-readable lines for ``coi info`` and ``~/SANDBOX_CONTEXT.md`` (empty: no limits)."""
    lines: list[str] = []
    if limits.cpu is not None:
        cpus = limits.cpu.incus_value()
        lines.append(f"CPU: {cpus} CPUs" if limits.cpu.count else f"CPU: pinned to {cpus}")
    if limits.cpu_allowance:
        lines.append(f"CPU time: {limits.cpu_allowance}")
    if limits.memory_bytes is not None:
        lines.append(f"memory: {limits.memory_bytes / 2**20:.0f} MiB")
    elif limits.memory_share is not None:
        lines.append(f"memory: {limits.memory_share:.0%} of the host")
    if not limits.memory_swap:
        lines.append("swap: off")
    for label, rate in (
        ("disk read", limits.disk_read),
        ("disk write", limits.disk_write),
        ("disk I/O", limits.disk_max),
    ):
        if rate is not None:
            amount = (
                f"{rate.amount} IOPS" if rate.unit == "iops" else f"{rate.amount / 2**20:.1f} MiB/s"
            )
            lines.append(f"{label}: {amount}")
    if limits.disk_size_bytes is not None:
        lines.append(f"disk size: {limits.disk_size_bytes / 2**30:.1f} GiB")
    if limits.processes is not None:
        lines.append(f"processes: {limits.processes}")
    if limits.duration is not None:
        lines.append(f"run time: {limits.duration}")
    return lines
