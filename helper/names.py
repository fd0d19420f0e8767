"""Incus' own naming rules for instances and projects, applied before anything reaches Incus.

Instance names follow Incus' `validate.IsHostname` (1-63 characters, letters, digits and
hyphens, no leading or trailing hyphen, not a number). Project names follow Incus'
`projectValidateName` (no slash, space, underscore, quote, not `*`, `.` or `..`), and on top of
it the helper refuses control characters and names over 63 characters: it never needs them.
"""

from __future__ import annotations

import re

from coi.helper.interface import Err
from coi.helper.ipc.errors import VarlinkError

_HOSTNAME = re.compile(r"^[A-Za-z0-9-]+$")
MAX_NAME = 63


def instance_name_problem(name: str) -> str | None:
    """Why `name` is not a valid Incus instance name, or None if it is."""
    if not 1 <= len(name) <= MAX_NAME:
        return f"must be 1-{MAX_NAME} characters long"
    if name.startswith("-") or name.endswith("-"):
        return "must not start or end with '-'"
    if not _HOSTNAME.match(name):
        return "may only contain letters, digits and '-'"
    if name.isdigit():
        return "cannot be a number"
    return None


def project_name_problem(name: str) -> str | None:
    """Why `name` is not a valid Incus project name, or None if it is."""
    if not name:
        return "must not be empty"
    if len(name) > MAX_NAME:
        return f"must be at most {MAX_NAME} characters long"
    for ch, what in (("/", "slashes"), (" ", "spaces"), ("_", "underscores")):
        if ch in name:
            return f"may not contain {what}"
    if "'" in name or '"' in name:
        return "may not contain quotes"
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in name):
        return "may not contain control characters"
    if name in ("*", ".", ".."):
        return "is reserved"
    return None


def check_instance_name(name: str, parameter: str = "instance") -> str:
    """Return `name` or raise the typed InvalidName error."""
    problem = instance_name_problem(name)
    if problem is not None:
        raise VarlinkError(Err.INVALID_NAME, {"parameter": parameter, "reason": problem})
    return name


def check_project_name(name: str, parameter: str = "project") -> str:
    """Return `name` or raise the typed InvalidName error."""
    problem = project_name_problem(name)
    if problem is not None:
        raise VarlinkError(Err.INVALID_NAME, {"parameter": parameter, "reason": problem})
    return name
