"""Tamper check of protected paths when they are only plain read-only mounts.

Without the locked workspace (an unprivileged launcher alone), root in the sandbox can unmount
a protected path and change it. The launcher cannot prevent that, but it can notice: it
records the protected trees when the session starts and compares them when the session ends.
Changes are reported with the original content saved under ``~/.cache/coi/protected/`` — never
restored automatically, because the user's own git on the host may have changed the same files
(``git push -u`` writes .git/config) and silently undoing that would lose their work.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import stat
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

# Larger files are compared by hash only (their original cannot be saved).
MAX_SAVED_BYTES = 1 << 20
MAX_ENTRIES = 10_000


@dataclass(frozen=True)
class Entry:
    """One path below a protected root: its type, mode, content hash (or link target)."""

    kind: str  # "file", "dir", "link", "other"
    mode: int
    digest: str
    content: bytes | None = None


def snapshot(workspace: Path, roots: Sequence[PurePosixPath]) -> dict[str, Entry]:
    """Every path at or below `roots` (never following symlinks), at most `MAX_ENTRIES`."""
    entries: dict[str, Entry] = {}
    pending = [str(root) for root in roots]
    while pending and len(entries) < MAX_ENTRIES:
        rel = pending.pop()
        path = workspace / rel
        try:
            info = os.lstat(path)
        except OSError:
            continue
        if stat.S_ISDIR(info.st_mode):
            entries[rel] = Entry("dir", stat.S_IMODE(info.st_mode), "")
            with contextlib.suppress(OSError):
                pending.extend(f"{rel}/{name}" for name in os.listdir(path))
        elif stat.S_ISLNK(info.st_mode):
            entries[rel] = Entry("link", 0, os.readlink(path))
        elif stat.S_ISREG(info.st_mode):
            entries[rel] = _file_entry(path, info)
        else:
            entries[rel] = Entry("other", stat.S_IMODE(info.st_mode), "")
    return entries


def _file_entry(path: Path, info: os.stat_result) -> Entry:
    digest = hashlib.sha256()
    content = bytearray()
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return Entry("file", stat.S_IMODE(info.st_mode), "unreadable")
    with os.fdopen(fd, "rb") as f:
        while chunk := f.read(65536):
            digest.update(chunk)
            if len(content) <= MAX_SAVED_BYTES:
                content += chunk
    keep = bytes(content) if len(content) <= MAX_SAVED_BYTES else None
    return Entry("file", stat.S_IMODE(info.st_mode), digest.hexdigest(), keep)


def changes(before: dict[str, Entry], after: dict[str, Entry]) -> list[str]:
    """Paths added, removed or changed (content, type or mode), sorted."""
    return sorted(
        rel
        for rel in set(before) | set(after)
        if (b := before.get(rel)) is None
        or (a := after.get(rel)) is None
        or (a.kind, a.mode, a.digest) != (b.kind, b.mode, b.digest)
    )


def save_originals(before: dict[str, Entry], changed: Sequence[str], base: Path) -> Path:
    """Write the original content of changed files below a new directory in `base`."""
    target = base / time.strftime("%Y%m%d-%H%M%S")
    for rel in changed:
        entry = before.get(rel)
        if entry is None or entry.kind != "file" or entry.content is None:
            continue
        dest = target / rel
        dest.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        dest.write_bytes(entry.content)
        dest.chmod(entry.mode & 0o755)
    return target
