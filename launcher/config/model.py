"""The typed configuration: one frozen dataclass per TOML section.

The dataclasses are the single description of the configuration: the loader validates TOML
against their type hints and field metadata, and `coi config schema` derives the JSON Schema
from them. Section fields have no Python defaults on purpose: every default lives in the
shipped ``defaults.toml``, so there is one place to change a default.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from coi.launcher.config import values as v
from coi.launcher.config.mounts import MountSpec

NetworkMode = Literal["restricted", "allowlist", "open"]
PermissionMode = Literal["bypass", "interactive"]


def meta(doc: str, check: Callable[[Any], object] | None = None, **schema: Any) -> dict[str, Any]:
    """Metadata of a section field: `doc` for humans and the schema, `check` validates each
    scalar (for a list: each element), `schema` adds JSON Schema keywords (e.g. ``minimum``)."""
    return {"doc": doc, "check": check, "schema": schema}


@dataclass(frozen=True)
class NetworkHost:
    """An exception to the network policy: a host (name, address or CIDR) and its ports."""

    host: str = field(metadata=meta("host name, IP address or CIDR network", v.check_host))
    ports: tuple[int, ...] = field(
        default=(), metadata=meta("allowed ports (empty: all)", v.check_port)
    )


@dataclass(frozen=True)
class DefaultsConfig:
    """``[defaults]``: what a session starts from."""

    image: str = field(metadata=meta("image alias the container is created from", v.check_name))
    persistent: bool = field(
        metadata=meta("keep the container after the session (false: ephemeral)")
    )
    model: str = field(metadata=meta("model name passed to tools that take one"))


@dataclass(frozen=True)
class ToolConfig:
    """``[tool]``: which agent runs and how."""

    name: str = field(
        metadata=meta(
            "tool spec name: claude, opencode, codex, aider, shell or a user spec", v.check_name
        )
    )
    permission_mode: PermissionMode = field(
        metadata=meta("bypass: the tool acts without asking; interactive: asks")
    )


@dataclass(frozen=True)
class IncusConfig:
    """``[incus]``: where containers are created."""

    remote: str = field(metadata=meta('Incus remote ("" = local)', v.optional(v.check_name)))
    project: str = field(metadata=meta('Incus project ("" = automatic)', v.optional(v.check_name)))
    code_uid: int = field(
        metadata=meta("uid of the code user in the container", minimum=0, maximum=2**31 - 1)
    )
    code_user: str = field(
        metadata=meta("name of the code user in the container", v.check_user_name)
    )
    storage_pool: str = field(
        metadata=meta('storage pool ("" = the profile\'s)', v.optional(v.check_name))
    )


@dataclass(frozen=True)
class NetworkConfig:
    """``[network]``: the container's egress policy."""

    mode: NetworkMode = field(
        metadata=meta("restricted: internet but no private ranges; allowlist; open")
    )
    allowed_domains: tuple[str, ...] = field(
        metadata=meta(
            "domains reachable in allowlist mode (*.example.com for subdomains)",
            v.check_domain_pattern,
        )
    )
    allowed_ports: tuple[int, ...] = field(
        metadata=meta("egress ports allowed in restricted mode (empty: all)", v.check_port)
    )
    block_private_networks: bool = field(
        metadata=meta("block 10/8, 172.16/12, 192.168/16, 100.64/10, fc00::/7")
    )
    block_metadata_endpoint: bool = field(metadata=meta("block 169.254.0.0/16 and fe80::/10"))
    hosts: tuple[NetworkHost, ...] = field(
        metadata=meta("exceptions: [[network.hosts]] host = ..., ports = [...]")
    )


@dataclass(frozen=True)
class MountsConfig:
    """``[mounts]``: host paths mounted into every session."""

    default: tuple[MountSpec, ...] = field(
        metadata=meta("mounts: [{host = ..., container = ..., readonly = true}]")
    )


@dataclass(frozen=True)
class SecurityConfig:
    """``[security]``: what the agent may not change in the workspace."""

    protected_paths: tuple[str, ...] = field(
        metadata=meta("workspace paths that are read-only in the container", v.check_workspace_glob)
    )
    writable_git_hooks: bool = field(metadata=meta("let the container write the protected paths"))
    secret_paths: tuple[str, ...] = field(
        metadata=meta(
            "workspace globs hidden behind empty read-only mounts", v.check_workspace_glob
        )
    )


@dataclass(frozen=True)
class SshConfig:
    """``[ssh]``: SSH agent forwarding."""

    forward_agent: bool = field(
        metadata=meta("forward the host's SSH agent socket (keys stay on the host)")
    )


@dataclass(frozen=True)
class EnvConfig:
    """``[env]``: environment variables that enter the container."""

    forward: tuple[str, ...] = field(
        metadata=meta("host variables copied by value at start", v.check_env_name)
    )
    set: Mapping[str, str] = field(
        metadata=meta("variables set in the container: KEY = value", v.check_env_name)
    )


@dataclass(frozen=True)
class LimitsConfig:
    """``[limits]``: resource limits ("" or 0 = no limit)."""

    cpu: str = field(metadata=meta('CPU count "2" or CPU set "0-3"', v.optional(v.parse_cpu)))
    cpu_allowance: str = field(
        metadata=meta('CPU time "50%" or "25ms/100ms"', v.optional(v.parse_cpu_allowance))
    )
    memory: str = field(metadata=meta('memory "2GiB" or "50%"', v.optional(v.parse_memory)))
    memory_swap: bool = field(metadata=meta("allow swapping the container's memory"))
    disk_read: str = field(
        metadata=meta('root disk read rate "10MiB" or "1000iops"', v.optional(v.parse_io_rate))
    )
    disk_write: str = field(
        metadata=meta('root disk write rate "10MiB" or "1000iops"', v.optional(v.parse_io_rate))
    )
    disk_max: str = field(
        metadata=meta("root disk combined read+write rate", v.optional(v.parse_io_rate))
    )
    disk_size: str = field(metadata=meta('root disk size quota "20GiB"', v.optional(v.parse_size)))
    processes: int = field(metadata=meta("maximum number of processes (0: no limit)", minimum=0))
    duration: str = field(
        metadata=meta('run time "2h", "30m", "20s"; stopped after it', v.optional(v.parse_duration))
    )


@dataclass(frozen=True)
class MonitoringConfig:
    """``[monitoring]``: threat detection and automatic responses."""

    enabled: bool = field(metadata=meta("watch the container's processes and network"))
    auto_pause_on_high: bool = field(metadata=meta("freeze the container on a HIGH threat"))
    auto_kill_on_critical: bool = field(metadata=meta("kill the container on a CRITICAL threat"))


@dataclass(frozen=True)
class AuditConfig:
    """``[audit]``: the per-container audit log."""

    retention_days: int = field(metadata=meta("days audit logs are kept", minimum=0))


@dataclass(frozen=True)
class Config:
    """The merged, validated configuration of one session."""

    defaults: DefaultsConfig
    tool: ToolConfig
    incus: IncusConfig
    network: NetworkConfig
    mounts: MountsConfig
    security: SecurityConfig
    ssh: SshConfig
    env: EnvConfig
    limits: LimitsConfig
    monitoring: MonitoringConfig
    audit: AuditConfig


# Section name → dataclass, in the order of config.md (also the order `config show` prints).
SECTIONS: dict[str, type[Any]] = {
    "defaults": DefaultsConfig,
    "tool": ToolConfig,
    "incus": IncusConfig,
    "network": NetworkConfig,
    "mounts": MountsConfig,
    "security": SecurityConfig,
    "ssh": SshConfig,
    "env": EnvConfig,
    "limits": LimitsConfig,
    "monitoring": MonitoringConfig,
    "audit": AuditConfig,
}
