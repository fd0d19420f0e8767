"""Typed views of the Incus API objects the launcher uses."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class ServerInfo:
    """What `GET /1.0` says about the server."""

    version: str
    api_extensions: frozenset[str]
    idmapped_mounts: bool
    auth: str
    project: str

    @classmethod
    def from_api(cls, meta: Mapping[str, Any], project: str) -> ServerInfo:
        env = meta.get("environment") or {}
        features = env.get("kernel_features") or {}
        return cls(
            version=str(env.get("server_version", "unknown")),
            api_extensions=frozenset(meta.get("api_extensions") or ()),
            idmapped_mounts=str(features.get("idmapped_mounts", "false")) == "true",
            auth=str(meta.get("auth", "")),
            project=project,
        )


@dataclass(frozen=True)
class InstanceSpec:
    """Everything needed to create a container."""

    name: str
    image: str
    ephemeral: bool
    config: Mapping[str, str] = field(default_factory=dict)
    devices: Mapping[str, Mapping[str, str]] = field(default_factory=dict)
    profiles: tuple[str, ...] = ("default",)

    def to_api(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "type": "container",
            "ephemeral": self.ephemeral,
            "profiles": list(self.profiles),
            "config": dict(self.config),
            "devices": {k: dict(v) for k, v in self.devices.items()},
            "source": {"type": "image", "alias": self.image},
        }


@dataclass(frozen=True)
class InstanceInfo:
    """A container as listed by Incus."""

    name: str
    status: str
    ephemeral: bool
    config: Mapping[str, str]
    devices: Mapping[str, Mapping[str, str]]
    created_at: str
    project: str

    @classmethod
    def from_api(cls, meta: Mapping[str, Any]) -> InstanceInfo:
        return cls(
            name=str(meta["name"]),
            status=str(meta.get("status", "")),
            ephemeral=bool(meta.get("ephemeral", False)),
            config={str(k): str(v) for k, v in (meta.get("config") or {}).items()},
            devices={
                str(k): {str(a): str(b) for a, b in v.items()}
                for k, v in (meta.get("devices") or {}).items()
            },
            created_at=str(meta.get("created_at", "")),
            project=str(meta.get("project", "")),
        )

    @property
    def running(self) -> bool:
        return self.status == "Running"


@dataclass(frozen=True)
class InstanceState:
    """Runtime state: status, addresses and host-side interface names."""

    status: str
    ipv4: tuple[str, ...]
    ipv6: tuple[str, ...]
    host_interfaces: Mapping[str, str]
    pid: int

    @classmethod
    def from_api(cls, meta: Mapping[str, Any]) -> InstanceState:
        ipv4: list[str] = []
        ipv6: list[str] = []
        host_ifaces: dict[str, str] = {}
        for name, net in (meta.get("network") or {}).items():
            if name == "lo":
                continue
            if net.get("host_name"):
                host_ifaces[str(name)] = str(net["host_name"])
            for addr in net.get("addresses") or ():
                if addr.get("scope") != "global":
                    continue
                (ipv4 if addr.get("family") == "inet" else ipv6).append(str(addr["address"]))
        return cls(
            status=str(meta.get("status", "")),
            ipv4=tuple(ipv4),
            ipv6=tuple(ipv6),
            host_interfaces=host_ifaces,
            pid=int(meta.get("pid") or 0),
        )


@dataclass(frozen=True)
class ImageInfo:
    """An image in the current project."""

    fingerprint: str
    aliases: tuple[str, ...]
    properties: Mapping[str, str]
    size: int
    created_at: str

    @classmethod
    def from_api(cls, meta: Mapping[str, Any]) -> ImageInfo:
        return cls(
            fingerprint=str(meta["fingerprint"]),
            aliases=tuple(str(a["name"]) for a in meta.get("aliases") or ()),
            properties={str(k): str(v) for k, v in (meta.get("properties") or {}).items()},
            size=int(meta.get("size") or 0),
            created_at=str(meta.get("created_at", "")),
        )


@dataclass(frozen=True)
class StoragePoolInfo:
    """A storage pool and its space."""

    name: str
    driver: str
    total_bytes: int
    used_bytes: int

    @property
    def free_bytes(self) -> int:
        return max(self.total_bytes - self.used_bytes, 0)
