"""The command-line layer: global flags of ``coi shell``/``coi run`` as configuration overrides.

Keeping the flag → key mapping here means the CLI only collects flag values, and `load_config`
validates them like any other layer (a bad ``--limit-memory`` gets the same message as a bad
``limits.memory`` in a file).
"""

from __future__ import annotations

from collections.abc import Sequence


def flag_overrides(
    *,
    network: str | None = None,
    ssh_agent: bool = False,
    forward_env: Sequence[str] = (),
    env: Sequence[str] = (),
    mounts: Sequence[str] = (),
    monitor: bool = False,
    writable_git_hooks: bool = False,
    persistent: bool = False,
    tool: str | None = None,
    image: str | None = None,
    limit_cpu: str | None = None,
    limit_cpu_allowance: str | None = None,
    limit_memory: str | None = None,
    limit_memory_swap: bool | None = None,
    limit_disk_read: str | None = None,
    limit_disk_write: str | None = None,
    limit_disk_max: str | None = None,
    limit_disk_size: str | None = None,
    limit_processes: int | None = None,
    limit_duration: str | None = None,
) -> dict[str, object]:
    """`cli_overrides` for `load_config` from flag values.

    On/off flags (``--ssh-agent``, ``--monitor``, ``--writable-git-hooks``, ``--persistent``)
    only turn things on: absent, the files decide. ``--forward-env A,B`` may be repeated;
    ``-e KEY=VALUE`` and ``--mount HOST:CONTAINER[:ro]`` add to the files' lists.
    """
    names = [n.strip() for item in forward_env for n in item.split(",") if n.strip()]
    overrides: dict[str, object | None] = {
        "network.mode": network,
        "ssh.forward_agent": True if ssh_agent else None,
        "env.forward": names or None,
        "env.set": list(env) or None,
        "mounts.default": list(mounts) or None,
        "monitoring.enabled": True if monitor else None,
        "security.writable_git_hooks": True if writable_git_hooks else None,
        "defaults.persistent": True if persistent else None,
        "tool.name": tool,
        "defaults.image": image,
        "limits.cpu": limit_cpu,
        "limits.cpu_allowance": limit_cpu_allowance,
        "limits.memory": limit_memory,
        "limits.memory_swap": limit_memory_swap,
        "limits.disk_read": limit_disk_read,
        "limits.disk_write": limit_disk_write,
        "limits.disk_max": limit_disk_max,
        "limits.disk_size": limit_disk_size,
        "limits.processes": limit_processes,
        "limits.duration": limit_duration,
    }
    return {k: v for k, v in overrides.items() if v is not None}
