"""Which container a policy is for, and where it is attached on the host.

The IPC layer fills a `NetworkTarget` from Incus (never from the client): the instance and
project, the host-side veth of its NIC (pinned with the NIC's `host_name`, so it is known before
the container starts), the bridge that NIC is attached to and the bridge's gateway addresses.
`inspect_attachment` re-checks all of it against the kernel before anything is installed, and
refuses (fail closed) when the facts do not fit together.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import re
import subprocess
from dataclasses import dataclass
from typing import Any

from coi.helper.network.errors import InvalidTarget

# Linux interface names: at most 15 bytes, no '/', ':' or whitespace. Stricter here on purpose.
_IFNAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,14}$")
_REF_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")
_MAC = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")

# Packet marks set on every frame from a coi veth; the top bits make them recognisable.
MARK_BASE = 0xC0000000
MARK_MASK = 0x3FFFFFFF


@dataclass(frozen=True)
class ContainerKey:
    """A container's identity: its Incus project and instance name."""

    project: str
    instance: str

    def __post_init__(self) -> None:
        for what, value in (("project", self.project), ("instance", self.instance)):
            if not _REF_NAME.match(value):
                raise InvalidTarget(
                    f"the {what} name {value!r} is not a valid Incus name "
                    "(1-63 letters, digits, '.', '_' or '-')"
                )

    @property
    def cid(self) -> str:
        """The stable id that names the container's chains, sets and resolver (12 hex digits)."""
        digest = hashlib.sha256(f"{self.project}\0{self.instance}".encode()).hexdigest()
        return digest[:12]

    @property
    def mark(self) -> int:
        """The packet mark of the container's frames (unique per cid with high probability)."""
        return mark_of(self.cid)


def mark_of(cid: str) -> int:
    """The packet mark that belongs to a container id."""
    return MARK_BASE | (int(cid[:8], 16) & MARK_MASK)


@dataclass(frozen=True)
class NetworkTarget:
    """Where one container is attached: the facts the IPC layer read from Incus."""

    key: ContainerKey
    veth: str
    bridge: str
    gateway4: ipaddress.IPv4Address | None
    gateway6: ipaddress.IPv6Address | None = None

    def __post_init__(self) -> None:
        for what, name in (("veth", self.veth), ("bridge", self.bridge)):
            if not _IFNAME.match(name) or name == "lo":
                raise InvalidTarget(f"the {what} name {name!r} is not a valid interface name")
        if self.veth == self.bridge:
            raise InvalidTarget("the veth and the bridge must be different interfaces")
        if self.gateway4 is None and self.gateway6 is None:
            raise InvalidTarget("the bridge needs an IPv4 or IPv6 gateway address")
        if self.gateway4 is not None and not isinstance(self.gateway4, ipaddress.IPv4Address):
            raise InvalidTarget(f"gateway4 {self.gateway4!r} is not an IPv4 address")
        if self.gateway6 is not None and not isinstance(self.gateway6, ipaddress.IPv6Address):
            raise InvalidTarget(f"gateway6 {self.gateway6!r} is not an IPv6 address")

    def to_dict(self) -> dict[str, Any]:
        """JSON shape for the state file."""
        return {
            "project": self.key.project,
            "instance": self.key.instance,
            "veth": self.veth,
            "bridge": self.bridge,
            "gateway4": str(self.gateway4) if self.gateway4 else None,
            "gateway6": str(self.gateway6) if self.gateway6 else None,
        }

    @staticmethod
    def from_dict(raw: dict[str, Any]) -> NetworkTarget:
        """Inverse of `to_dict`."""
        g4, g6 = raw.get("gateway4"), raw.get("gateway6")
        return NetworkTarget(
            key=ContainerKey(project=str(raw["project"]), instance=str(raw["instance"])),
            veth=str(raw["veth"]),
            bridge=str(raw["bridge"]),
            gateway4=ipaddress.IPv4Address(g4) if g4 else None,
            gateway6=ipaddress.IPv6Address(g6) if g6 else None,
        )


@dataclass(frozen=True)
class Attachment:
    """What the kernel says about the target's bridge and veth."""

    bridge_mac: str
    veth_exists: bool


def _ip_json(*args: str) -> list[dict[str, Any]]:
    proc = subprocess.run(
        ["ip", "-j", *args], capture_output=True, text=True, check=False, timeout=10
    )
    if proc.returncode != 0:
        return []
    data = json.loads(proc.stdout or "[]")
    return data if isinstance(data, list) else []


def inspect_attachment(target: NetworkTarget) -> Attachment:
    """Check the target against the kernel (bridge, gateway addresses, veth port) or refuse."""
    links = _ip_json("-d", "addr", "show", "dev", target.bridge)
    if not links:
        raise InvalidTarget(f"the bridge {target.bridge!r} does not exist on this host")
    bridge = links[0]
    if bridge.get("linkinfo", {}).get("info_kind") != "bridge":
        raise InvalidTarget(f"{target.bridge!r} is not a bridge")
    mac = str(bridge.get("address", "")).lower()
    if not _MAC.match(mac):
        raise InvalidTarget(f"the bridge {target.bridge!r} has no Ethernet address")
    have = {str(a.get("local")) for a in bridge.get("addr_info", [])}
    for gateway in (target.gateway4, target.gateway6):
        if gateway is not None and str(gateway) not in have:
            raise InvalidTarget(
                f"the gateway {gateway} is not an address of the bridge {target.bridge!r}"
            )
    veths = _ip_json("-d", "link", "show", "dev", target.veth)
    if veths:
        master = veths[0].get("master")
        if master != target.bridge:
            raise InvalidTarget(
                f"the veth {target.veth!r} is attached to {master!r}, not to {target.bridge!r}"
            )
    return Attachment(bridge_mac=mac, veth_exists=bool(veths))
