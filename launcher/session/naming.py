"""Container names and slots: `{prefix}{sha256(abspath(workspace))[:8]}-{slot}`."""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

from coi.launcher.errors import UsageError

MAX_SLOT = 10
DEFAULT_PREFIX = "coi-"
# Incus instance names: letters, digits and dashes, not starting with a digit or dash.
_PREFIX_RE = re.compile(r"^[a-z][a-z0-9-]{0,30}$")


def container_prefix() -> str:
    """The name prefix: `coi-`, or COI_CONTAINER_PREFIX (tests use `coi-test-`)."""
    prefix = os.environ.get("COI_CONTAINER_PREFIX", DEFAULT_PREFIX)
    if not _PREFIX_RE.match(prefix):
        raise UsageError(
            f"COI_CONTAINER_PREFIX={prefix!r} is not a valid container name prefix",
            hint="use lower-case letters, digits and dashes, starting with a letter",
        )
    return prefix


def workspace_hash(workspace: Path) -> str:
    """First 8 hex digits of sha256 of the workspace's absolute path (not resolved: compatible
    with code-on-incus, which uses os.path.abspath)."""
    return hashlib.sha256(os.path.abspath(workspace).encode()).hexdigest()[:8]


def container_name(workspace: Path, slot: int, prefix: str | None = None) -> str:
    """The container name of a workspace's slot."""
    check_slot(slot, allow_auto=False)
    return (
        f"{prefix if prefix is not None else container_prefix()}{workspace_hash(workspace)}-{slot}"
    )


def check_slot(slot: int, *, allow_auto: bool = True) -> int:
    """Validate a slot number: 1..10, or 0 for "first free" when `allow_auto`."""
    low = 0 if allow_auto else 1
    if not low <= slot <= MAX_SLOT:
        raise UsageError(
            f"slot {slot} is out of range",
            hint=f"use a slot from 1 to {MAX_SLOT}"
            + (", or 0 for the first free one" if allow_auto else ""),
        )
    return slot


def slot_of(name: str) -> int | None:
    """The slot number encoded in a container name, if any."""
    head, _, tail = name.rpartition("-")
    return int(tail) if head and tail.isdigit() else None
