"""Instance updates the host integration needs and `IncusClient` does not offer (yet)."""

from __future__ import annotations

from collections.abc import Mapping

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
    client.update_instance(name, devices=devices, config=config)


def run_as_root(client: IncusClient, name: str, command: list[str]) -> tuple[int, str]:
    """Run a short command as root in the container; returns (exit code, output)."""
    try:
        code, out, err = run_captured(client, name, ExecRequest(command=command))
    except IncusError as exc:
        return 1, str(exc)
    return code, (out + err).decode(errors="replace")
