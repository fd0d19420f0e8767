"""Build a `NetworkTarget` from what Incus says about a container and its network.

The IPC layer fetches the instance (`GET /1.0/instances/<name>?project=<p>`: `expanded_devices`,
`config`) and its managed network (`GET /1.0/networks/<name>`: `config`) with its own Incus
client and hands the JSON here; nothing in a target ever comes from the helper's client.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from typing import Any

from coi.helper.network.errors import InvalidTarget
from coi.helper.network.target import ContainerKey, NetworkTarget


def nic_of(expanded_devices: Mapping[str, Any]) -> tuple[str, Mapping[str, Any]]:
    """The container's one NIC (name, device). Fail closed on none or several."""
    nics = [(name, dev) for name, dev in expanded_devices.items() if dev.get("type") == "nic"]
    if len(nics) != 1:
        raise InvalidTarget(
            f"a coi container needs exactly one network interface, this one has {len(nics)}"
        )
    return nics[0]


def bridge_of(device: Mapping[str, Any]) -> str:
    """The host bridge a NIC device is attached to (managed `network` or `parent`)."""
    network = device.get("network") or ""
    nictype = device.get("nictype") or ""
    if network:
        return str(network)
    if nictype == "bridged" and device.get("parent"):
        return str(device["parent"])
    raise InvalidTarget("the container's NIC is not attached to a bridge (nictype bridged)")


def _gateway(value: object, version: int) -> Any:
    text = str(value or "").strip()
    if text in ("", "none", "auto"):
        return None
    try:
        iface = ipaddress.ip_interface(text)
    except ValueError:
        raise InvalidTarget(f"the network's address {text!r} is not an address/prefix") from None
    if iface.version != version:
        raise InvalidTarget(f"the network's IPv{version} address {text!r} has the wrong family")
    return iface.ip


def target_from_incus(
    project: str,
    instance: str,
    expanded_devices: Mapping[str, Any],
    config: Mapping[str, Any],
    network_config: Mapping[str, Any],
) -> NetworkTarget:
    """The target of a container from its Incus instance and network records.

    The host-side veth is the NIC's pinned `host_name` (set it at creation, so the policy can
    be applied before the first start) or, for a running container, `volatile.<nic>.host_name`.
    """
    name, device = nic_of(expanded_devices)
    veth = device.get("host_name") or config.get(f"volatile.{name}.host_name")
    if not veth:
        raise InvalidTarget(
            f"the NIC {name} has no host-side name yet; set its host_name so the policy can be "
            "applied before the container starts"
        )
    return NetworkTarget(
        key=ContainerKey(project=project, instance=instance),
        veth=str(veth),
        bridge=bridge_of(device),
        gateway4=_gateway(network_config.get("ipv4.address"), 4),
        gateway6=_gateway(network_config.get("ipv6.address"), 6),
    )
