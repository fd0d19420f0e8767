"""The administrator's policy, `/etc/coi/policy.toml`, read by the helper only.

Example:

    allowed_modes = ["restricted", "allowlist", "blocked"]
    monitoring = "required"
    max_allowlist_entries = 256

A missing file means the defaults (every mode allowed, monitoring optional). A file that exists but
does not parse, or has unknown keys or wrong values, stops the helper: an administrator's
restriction must never be silently ignored.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from typing import Any

from coi.helper.interface import AdminPolicy, Err
from coi.helper.ipc.errors import VarlinkError

DEFAULT_PATH = "/etc/coi/policy.toml"
NETWORK_MODES = ("restricted", "allowlist", "open", "blocked")
MONITORING = ("optional", "required")
MAX_FILE = 64 * 1024


class PolicyFileError(Exception):
    """The policy file exists but is invalid; the message names the file and the problem."""


@dataclass(frozen=True)
class Policy:
    """The enforced admin policy."""

    path: str = DEFAULT_PATH
    loaded: bool = False
    allowed_modes: tuple[str, ...] = NETWORK_MODES
    monitoring: str = "optional"
    max_allowlist_entries: int = 256

    def describe(self) -> AdminPolicy:
        """The policy as reported by GetInfo."""
        return AdminPolicy(
            path=self.path,
            loaded=self.loaded,
            allowed_modes=list(self.allowed_modes),
            monitoring=self.monitoring,
            max_allowlist_entries=self.max_allowlist_entries,
        )

    def forbid(self, rule: str, reason: str) -> VarlinkError:
        """The PolicyForbidden error naming this policy file and rule."""
        return VarlinkError(
            Err.POLICY_FORBIDDEN, {"rule": rule, "path": self.path, "reason": reason}
        )

    def check_mode(self, mode: str) -> None:
        """Raise PolicyForbidden unless network mode `mode` is allowed."""
        if mode not in self.allowed_modes:
            raise self.forbid(
                "allowed_modes",
                f"network mode '{mode}' is not allowed on this host "
                f"(allowed: {', '.join(self.allowed_modes)})",
            )

    def check_allowlist_size(self, entries: int) -> None:
        """Raise PolicyForbidden if an allowlist has more entries than allowed."""
        if entries > self.max_allowlist_entries:
            raise self.forbid(
                "max_allowlist_entries",
                f"{entries} allowlist entries exceed the limit of {self.max_allowlist_entries}",
            )

    def check_monitoring(self, enabled: bool) -> None:
        """Raise PolicyForbidden if monitoring is required and the request turns it off."""
        if self.monitoring == "required" and not enabled:
            raise self.forbid("monitoring", "monitoring is required on this host")


def load_policy(path: str = DEFAULT_PATH) -> Policy:
    """Read the policy file; defaults if it does not exist; PolicyFileError if it is invalid."""
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_FILE + 1)
    except FileNotFoundError:
        return Policy(path=path)
    except OSError as exc:
        raise PolicyFileError(f"cannot read admin policy {path}: {exc.strerror}") from exc
    if len(raw) > MAX_FILE:
        raise PolicyFileError(f"admin policy {path} is larger than {MAX_FILE} bytes")
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise PolicyFileError(f"admin policy {path} is not valid TOML: {exc}") from exc
    return parse_policy(data, path)


def parse_policy(data: dict[str, Any], path: str) -> Policy:
    """Validate decoded TOML as a policy; PolicyFileError names the offending key."""
    known = {"allowed_modes", "monitoring", "max_allowlist_entries"}
    unknown = sorted(set(data) - known)
    if unknown:
        raise PolicyFileError(f"admin policy {path}: unknown key '{unknown[0]}'")
    modes = data.get("allowed_modes", list(NETWORK_MODES))
    if (
        not isinstance(modes, list)
        or not modes
        or not all(isinstance(m, str) and m in NETWORK_MODES for m in modes)
    ):
        raise PolicyFileError(
            f"admin policy {path}: allowed_modes must be a non-empty list of "
            f"{', '.join(NETWORK_MODES)}"
        )
    monitoring = data.get("monitoring", "optional")
    if monitoring not in MONITORING:
        raise PolicyFileError(f"admin policy {path}: monitoring must be 'optional' or 'required'")
    limit = data.get("max_allowlist_entries", 256)
    if isinstance(limit, bool) or not isinstance(limit, int) or not 0 <= limit <= 65536:
        raise PolicyFileError(
            f"admin policy {path}: max_allowlist_entries must be an integer 0-65536"
        )
    ordered = tuple(m for m in NETWORK_MODES if m in modes)
    return Policy(path, True, ordered, str(monitoring), limit)
