"""What the helper asks Incus (admin socket, pylxd): which project, veths, addresses and cgroup a
container has. Nothing here comes from the client except the validated instance and project
names; everything returned is Incus' own answer (plus the kernel's cgroup of the init pid)."""

from __future__ import annotations

import logging
from typing import Any, Protocol

from coi.helper.interface import Err, InstanceInfo, Nic
from coi.helper.ipc.errors import VarlinkError

log = logging.getLogger(__name__)

ADMIN_SOCKET = "/var/lib/incus/unix.socket"


class InstanceSource(Protocol):
    """The seam the helper's methods use to learn about containers."""

    def describe(self, project: str, instance: str) -> InstanceInfo:
        """Describe one instance; raises NoSuchInstance or IncusUnavailable."""


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


class PylxdInstances:
    """InstanceSource backed by Incus' admin socket through pylxd."""

    def __init__(self, socket_path: str = ADMIN_SOCKET, timeout: float = 10.0) -> None:
        self.socket_path = socket_path
        self.timeout = timeout

    def _client(self, project: str) -> Any:
        import pylxd  # imported lazily: the launcher's client side never needs it

        return pylxd.Client(endpoint=self.socket_path, project=project, timeout=self.timeout)

    def describe(self, project: str, instance: str) -> InstanceInfo:
        """Describe `instance` in `project` from Incus' own state."""
        import pylxd.exceptions

        try:
            client = self._client(project)
            resp = client.api.instances[instance].get()
            data = resp.json()["metadata"]
            state = client.api.instances[instance].state.get().json()["metadata"]
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
        return instance_info(project, data, state)


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
        host_name = str(net.get("host_name") or config.get(f"volatile.{dev_name}.host_name") or "")
        if pid <= 0:
            host_name = ""  # a stopped container has no veth; a stale volatile key is no answer
        addresses = [
            f"{a['address']}/{a['netmask']}"
            for a in net.get("addresses") or []
            if a.get("scope") == "global" and a.get("family") in ("inet", "inet6")
        ]
        hwaddr = str(net.get("hwaddr") or config.get(f"volatile.{dev_name}.hwaddr") or "")
        nics.append(Nic(name=inside, host_name=host_name, hwaddr=hwaddr, addresses=addresses))
    return InstanceInfo(
        name=str(data.get("name", "")),
        project=project,
        status=str(state.get("status") or data.get("status") or ""),
        pid=pid,
        nics=nics,
        cgroup=cgroup_of(pid),
    )
