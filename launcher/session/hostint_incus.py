"""Instance updates the host integration needs and `IncusClient` does not offer (yet)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from coi.launcher.errors import IncusError
from coi.launcher.incus.client import IncusClient
from coi.launcher.incus.exec import ExecRequest, run_captured


def local_devices(client: IncusClient, name: str) -> dict[str, dict[str, str]]:
    """The container's own devices (not those of its profiles)."""
    meta = client.get(f"instances/{name}")
    return {
        str(k): {str(a): str(b) for a, b in v.items()}
        for k, v in (meta.get("devices") or {}).items()
    }


def update_instance(
    client: IncusClient,
    name: str,
    *,
    devices: Mapping[str, Mapping[str, str]] | None = None,
    config: Mapping[str, str] | None = None,
) -> None:
    """PATCH a container: `devices` replaces the named devices, `config` keys are merged
    (an empty value removes the key)."""
    body: dict[str, Any] = {}
    if devices is not None:
        body["devices"] = {k: dict(v) for k, v in devices.items()}
    if config is not None:
        body["config"] = dict(config)
    what = f"updating container {name}"
    # The seam has no update call yet (lead: move this into IncusClient.update_instance).
    op = client._async("patch", f"instances/{name}", body, what)
    client.wait_operation(op, what)


def run_as_root(client: IncusClient, name: str, command: list[str]) -> tuple[int, str]:
    """Run a short command as root in the container; returns (exit code, output)."""
    try:
        code, out, err = run_captured(client, name, ExecRequest(command=command))
    except IncusError as exc:
        return 1, str(exc)
    return code, (out + err).decode(errors="replace")
