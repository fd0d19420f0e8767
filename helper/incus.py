"""What the helper asks Incus (admin socket, pylxd): which project, veths, addresses and cgroup a
container has. Nothing here comes from the client except the validated instance and project
names; everything returned is Incus' own answer (plus the kernel's cgroup of the init pid)."""

from __future__ import annotations

import ipaddress
import logging
from dataclasses import dataclass
from typing import Any, Protocol

from coi.helper.interface import Err, InstanceInfo, Nic
from coi.helper.ipc.errors import VarlinkError

log = logging.getLogger(__name__)

ADMIN_SOCKET = "/var/lib/incus/unix.socket"


@dataclass(frozen=True)
class Attachment:
    """Where a container's NIC meets the host, as Incus configures it (helper-internal).

    `veth` is the pinned host-side name (device key host_name) or the live one; the bridge's
    gateway addresses come from the Incus network's own configuration.
    """

    project: str
    instance: str
    nic: str
    veth: str
    bridge: str
    gateway4: str | None
    gateway6: str | None


class InstanceSource(Protocol):
    """The seam the helper's methods use to learn about containers."""

    def describe(self, project: str, instance: str) -> InstanceInfo:
        """Describe one instance; raises NoSuchInstance or IncusUnavailable."""

    def attachment(self, project: str, instance: str, nic: str = "eth0") -> Attachment:
        """The host side of one NIC; raises NoSuchInstance, IncusUnavailable or
        NetworkSetupFailed-style VarlinkErrors when it cannot be determined."""


def cgroup_of(pid: int) -> str:
    """The cgroup v2 path of `pid` ('' if it has none or vanished)."""
    if pid <= 0:
        return ""
    try:
        with open(f"/proc/{pid}/cgroup", encoding="utf-8") as f:
            for line in f:
                if line.startswith("0::"):
                    path = line[3:].strip()
                    # The init process of an Incus container sits in the container's
                    # own cgroup or a child of it ("/init.scope" under systemd guests).
                    return path.removesuffix("/init.scope")
    except OSError:
        return ""
    return ""


def _gateway(value: str) -> str | None:
    """The address part of an Incus ipv4.address/ipv6.address value ('none'/'' -> None)."""
    if not value or value in ("none", "auto"):
        return None
    try:
        return str(ipaddress.ip_interface(value).ip)
    except ValueError:
        return None


class PylxdInstances:
    """InstanceSource backed by Incus' admin socket through pylxd."""

    def __init__(self, socket_path: str = ADMIN_SOCKET, timeout: float = 10.0) -> None:
        self.socket_path = socket_path
        self.timeout = timeout

    def _client(self, project: str) -> Any:
        import pylxd  # imported lazily: the launcher's client side never needs it

        return pylxd.Client(endpoint=self.socket_path, project=project, timeout=self.timeout)

    def _get(self, project: str, instance: str, *path: str) -> dict[str, Any]:
        """GET /1.0/<path...> in `project`, mapping Incus failures to typed errors."""
        import pylxd.exceptions

        try:
            node = self._client(project).api
            for part in path:
                node = node[part]
            metadata: dict[str, Any] = node.get().json()["metadata"]
            return metadata
        except pylxd.exceptions.NotFound as exc:
            raise VarlinkError(
                Err.NO_SUCH_INSTANCE, {"instance": instance, "project": project}
            ) from exc
        except pylxd.exceptions.LXDAPIException as exc:
            if getattr(exc.response, "status_code", 0) == 404:
                raise VarlinkError(
                    Err.NO_SUCH_INSTANCE, {"instance": instance, "project": project}
                ) from exc
            raise VarlinkError(Err.INCUS_UNAVAILABLE, {"reason": str(exc)[:300]}) from exc
        except (pylxd.exceptions.ClientConnectionFailed, OSError) as exc:
            raise VarlinkError(
                Err.INCUS_UNAVAILABLE,
                {"reason": f"cannot reach Incus at {self.socket_path}: {str(exc)[:200]}"},
            ) from exc

    def describe(self, project: str, instance: str) -> InstanceInfo:
        """Describe `instance` in `project` from Incus' own state."""
        data = self._get(project, instance, "instances", instance)
        state = self._get(project, instance, "instances", instance, "state")
        return instance_info(project, data, state)

    def attachment(self, project: str, instance: str, nic: str = "eth0") -> Attachment:
        """Host veth, bridge and gateways of the NIC named `nic` inside the container."""
        data = self._get(project, instance, "instances", instance)
        state = self._get(project, instance, "instances", instance, "state")
        info = instance_info(project, data, state)
        found = [n for n in info.nics if n.name == nic]
        if not found or not found[0].network:
            raise VarlinkError(
                Err.INCUS_UNAVAILABLE,
                {"reason": f"{instance} has no NIC {nic} on an Incus-managed bridge"},
            )
        if not found[0].host_name:
            raise VarlinkError(
                Err.INCUS_UNAVAILABLE,
                {"reason": f"{instance}'s {nic} has no pinned host_name and is not running"},
            )
        net = self._get(project, instance, "networks", found[0].network)
        config = net.get("config") or {}
        return Attachment(
            project=project,
            instance=instance,
            nic=nic,
            veth=found[0].host_name,
            bridge=found[0].network,
            gateway4=_gateway(str(config.get("ipv4.address", ""))),
            gateway6=_gateway(str(config.get("ipv6.address", ""))),
        )


def instance_info(project: str, data: dict[str, Any], state: dict[str, Any]) -> InstanceInfo:
    """Build InstanceInfo from Incus' instance and state documents."""
    pid = int(state.get("pid") or 0)
    nics: list[Nic] = []
    devices = data.get("expanded_devices") or {}
    networks = state.get("network") or {}
    config = data.get("config") or {}
    for dev_name in sorted(devices):
        dev = devices[dev_name]
        if dev.get("type") != "nic":
            continue
        inside = str(dev.get("name") or dev_name)
        net = networks.get(inside) or {}
        # A pinned name is known before the container starts (policies are applied then);
        # otherwise only a running container's live veth counts, never a stale volatile key.
        host_name = str(dev.get("host_name") or "")
        if not host_name and pid > 0:
            host_name = str(
                net.get("host_name") or config.get(f"volatile.{dev_name}.host_name") or ""
            )
        addresses = [
            f"{a['address']}/{a['netmask']}"
            for a in net.get("addresses") or []
            if a.get("scope") == "global" and a.get("family") in ("inet", "inet6")
        ]
        hwaddr = str(net.get("hwaddr") or config.get(f"volatile.{dev_name}.hwaddr") or "")
        nics.append(
            Nic(
                name=inside,
                host_name=host_name,
                network=str(dev.get("network") or ""),
                hwaddr=hwaddr,
                addresses=addresses,
            )
        )
    return InstanceInfo(
        name=str(data.get("name", "")),
        project=project,
        status=str(state.get("status") or data.get("status") or ""),
        pid=pid,
        nics=nics,
        cgroup=cgroup_of(pid),
    )
