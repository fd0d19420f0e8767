"""Trust of project configuration files, and which settings widen the sandbox.

A project's ``.coi.toml`` arrives with the repository, and the agent inside the container can
write it too, so it is untrusted: its settings that would give the sandbox more access than the
user's own configuration are dropped with a warning. ``coi trust`` pins the sha256 of the exact
file content; any edit changes the hash and the file is untrusted again.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from coi.launcher.config import values as v
from coi.launcher.config.layers import Setting, Source
from coi.launcher.config.mounts import MountSpec, is_inside
from coi.launcher.errors import ConfigError

WarningKind = Literal["untrusted", "unknown-env", "ignored-file"]


@dataclass(frozen=True)
class ConfigWarning:
    """Something the user should know about the configuration (printed by the CLI).

    `kind` is ``"untrusted"`` (a project setting was dropped), ``"unknown-env"`` (a
    ``COI_<SECTION>_<KEY>`` variable names no setting) or ``"ignored-file"``.
    """

    kind: WarningKind
    key: str
    source: Source
    message: str

    def __str__(self) -> str:
        parts = [self.source.location() or self.source.layer, self.key, self.message]
        return ": ".join(p for p in parts if p)


# --- the trust store --------------------------------------------------------------------


class TrustStore:
    """``trusted.toml``: absolute path of a project file → sha256 of its trusted content."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def entries(self) -> dict[str, str]:
        """All pinned files (path → sha256); an absent store is empty."""
        try:
            data = tomllib.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as err:
            raise ConfigError(
                f"the trust store {str(self.path)!r} is unreadable: {err}",
                hint="fix or delete it, then run `coi trust` again",
            ) from None
        trusted = data.get("trusted", {})
        return {str(k): str(val) for k, val in trusted.items()} if isinstance(trusted, dict) else {}

    def is_trusted(self, file: Path, sha256: str) -> bool:
        """Whether `file` is pinned with exactly this content hash."""
        return self.entries().get(str(file)) == sha256

    def trust(self, file: Path, sha256: str) -> None:
        """Pin `file` at `sha256`."""
        entries = self.entries()
        entries[str(file)] = sha256
        self._write(entries)

    def untrust(self, file: Path) -> bool:
        """Remove `file`'s pin; False if it was not pinned."""
        entries = self.entries()
        if entries.pop(str(file), None) is None:
            return False
        self._write(entries)
        return True

    def _write(self, entries: Mapping[str, str]) -> None:
        # Written to a temporary file and renamed so a crash never leaves half a store.
        self.path.parent.mkdir(parents=True, exist_ok=True)
        body = "# Project config files trusted with `coi trust` (path = sha256 of content).\n"
        body += "[trusted]\n" + "".join(
            f"{_toml_string(k)} = {_toml_string(val)}\n" for k, val in sorted(entries.items())
        )
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".trusted.", suffix=".tmp")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as out:
                out.write(body)
            os.chmod(tmp, 0o600)
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


def _toml_string(text: str) -> str:
    escaped = text.replace("\\", "\\\\").replace('"', '\\"')
    return '"' + "".join(c if c.isprintable() else f"\\u{ord(c):04x}" for c in escaped) + '"'


def file_sha256(path: Path) -> str:
    """The sha256 of a file's content."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


# --- what widens access -----------------------------------------------------------------

# allowlist reaches only listed domains, restricted the public internet, open everything.
_NETWORK_RANK = {"allowlist": 0, "restricted": 1, "open": 2}

Rule = Callable[[Any, Any, Path], str | None]


def _turned_on(what: str) -> Rule:
    return lambda old, new, _ws: f"it turns on {what}" if new and not old else None


def _turned_off(what: str) -> Rule:
    return lambda old, new, _ws: f"it turns off {what}" if old and not new else None


def _adds(what: str) -> Rule:
    def rule(old: Any, new: Any, _ws: Path) -> str | None:
        added = [x for x in new if x not in old]
        return f"it adds {what} {', '.join(map(str, added))}" if added else None

    return rule


def _removes(what: str) -> Rule:
    def rule(old: Any, new: Any, _ws: Path) -> str | None:
        removed = [x for x in old if x not in new]
        return f"it removes {what} {', '.join(map(str, removed))}" if removed else None

    return rule


def _network_mode(old: str, new: str, _ws: Path) -> str | None:
    if _NETWORK_RANK[new] > _NETWORK_RANK[old]:
        return f'network mode "{new}" allows more than "{old}"'
    return None


def _allowed_ports(old: tuple[int, ...], new: tuple[int, ...], ws: Path) -> str | None:
    if not old:  # no port restriction yet: any list narrows
        return None
    if not new:
        return "it lifts the egress port restriction"
    return _adds("egress ports")(old, new, ws)


def _mounts(old: tuple[MountSpec, ...], new: tuple[MountSpec, ...], ws: Path) -> str | None:
    outside = [str(m.host) for m in new if m not in old and not is_inside(m.host, ws)]
    return f"it mounts host paths outside the workspace: {', '.join(outside)}" if outside else None


def _changes(what: str) -> Rule:
    return lambda old, new, _ws: f"it changes {what}" if old != new else None


def _limit(parse: Callable[[str], tuple[str, float]]) -> Rule:
    """A limit widens when it is removed ("" = none), grows, or changes kind (% vs bytes)."""

    def rule(old: str, new: str, _ws: Path) -> str | None:
        if old == "":
            return None
        if new == "":
            return f'it removes the limit "{old}"'
        (old_kind, old_amount), (new_kind, new_amount) = parse(old), parse(new)
        if old_kind != new_kind or new_amount > old_amount:
            return f'"{new}" is larger than "{old}"'
        return None

    return rule


def _memory_key(text: str) -> tuple[str, float]:
    value = v.parse_memory(text)
    return ("share", value) if isinstance(value, float) else ("bytes", value)


def _io_key(text: str) -> tuple[str, float]:
    rate = v.parse_io_rate(text)
    return rate.unit, rate.amount


def _processes(old: int, new: int, _ws: Path) -> str | None:
    if old == 0:
        return None
    if new == 0 or new > old:
        return f"{new or 'unlimited'} processes is more than {old}"
    return None


WIDENING_RULES: dict[str, Rule] = {
    "incus.remote": _changes("the Incus remote"),
    "incus.project": _changes("the Incus project"),
    "incus.storage_pool": _changes("the storage pool"),
    "incus.code_uid": _changes("the container user's uid"),
    "incus.code_user": _changes("the container user"),
    "network.mode": _network_mode,
    "network.allowed_domains": _adds("domains"),
    "network.allowed_ports": _allowed_ports,
    "network.block_private_networks": _turned_off("blocking of private networks"),
    "network.block_metadata_endpoint": _turned_off("blocking of the metadata endpoint"),
    "network.hosts": _adds("host exceptions"),
    "mounts.default": _mounts,
    "security.protected_paths": _removes("protected paths"),
    "security.writable_git_hooks": _turned_on("writable git hooks"),
    "security.secret_paths": _removes("secret paths"),
    "ssh.forward_agent": _turned_on("SSH agent forwarding"),
    "env.forward": _adds("forwarded host variables"),
    "limits.cpu": _limit(lambda t: ("cpus", v.parse_cpu(t).width)),
    "limits.cpu_allowance": _limit(lambda t: ("share", v.parse_cpu_allowance(t))),
    "limits.memory": _limit(_memory_key),
    "limits.memory_swap": _turned_on("swap"),
    "limits.disk_read": _limit(_io_key),
    "limits.disk_write": _limit(_io_key),
    "limits.disk_max": _limit(_io_key),
    "limits.disk_size": _limit(lambda t: ("bytes", v.parse_size(t))),
    "limits.processes": _processes,
    "limits.duration": _limit(lambda t: ("seconds", v.parse_duration(t).total_seconds())),
    "monitoring.enabled": _turned_off("monitoring"),
    "monitoring.auto_pause_on_high": _turned_off("automatic pausing"),
    "monitoring.auto_kill_on_critical": _turned_off("automatic killing"),
}


def widening_reason(key: str, old: Any, new: Any, workspace: Path) -> str | None:
    """Why setting `key` from `old` to `new` gives the sandbox more access, or None."""
    rule = WIDENING_RULES.get(key)
    return rule(old, new, workspace) if rule else None


def filter_untrusted(
    settings: Mapping[str, Setting],
    baseline: Mapping[str, Setting],
    workspace: Path,
    *,
    what: str,
) -> tuple[dict[str, Setting], list[ConfigWarning]]:
    """Keep the settings of an untrusted file that do not widen `baseline`; warn about the rest."""
    kept: dict[str, Setting] = {}
    warnings: list[ConfigWarning] = []
    for key, setting in settings.items():
        old = baseline[key].value
        reason = widening_reason(key, old, setting.value, workspace)
        if reason is None:
            kept[key] = setting
            continue
        warnings.append(
            ConfigWarning(
                "untrusted",
                key,
                setting.source,
                f"ignored from the untrusted {what} because {reason}; "
                "review the file and run `coi trust` to allow it",
            )
        )
    return kept, warnings
