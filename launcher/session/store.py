"""Saved sessions: `~/.coi/sessions-<tool>/<id>/` with `metadata.json` and `state.tar`.

`state.tar` is the tool's state (its `state_paths` under /home/code) as produced by tar in
the container. The host never unpacks it: it only goes back into a fresh container on
`--resume`, so a hostile archive cannot write anything on the host.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
from collections.abc import Iterator
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from coi.launcher.errors import SessionError, UsageError

_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
META_FILE = "metadata.json"
STATE_FILE = "state.tar"


def now_iso() -> str:
    """The current UTC time as an ISO 8601 string (seconds)."""
    return datetime.now(UTC).isoformat(timespec="seconds")


def new_session_id() -> str:
    """A sortable, unique session id: UTC time plus random hex."""
    return f"{datetime.now(UTC):%Y%m%d-%H%M%S}-{secrets.token_hex(3)}"


def check_session_id(session_id: str) -> str:
    """Validate an id from the command line (it becomes a directory name)."""
    if not _ID_RE.match(session_id):
        raise UsageError(
            f"invalid session id {session_id!r}",
            hint="`coi list --all` shows the ids of saved sessions",
        )
    return session_id


@dataclass(frozen=True)
class SessionMeta:
    """What is known about a session: where, which tool, when, how it ended."""

    id: str
    tool: str
    workspace: str
    slot: int
    container: str
    image: str
    persistent: bool
    started_at: str
    saved_at: str = ""
    ended_at: str = ""
    exit_code: int | None = None
    resumed_from: str = ""
    status: str = "running"  # running | ended | detached | lost

    def to_json(self) -> dict[str, Any]:
        """The stable JSON form (also written to metadata.json)."""
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> SessionMeta:
        known = {k: data[k] for k in cls.__dataclass_fields__ if k in data}
        return cls(**known)

    def with_(self, **changes: Any) -> SessionMeta:
        """A copy with some fields changed."""
        return replace(self, **changes)


class SessionStore:
    """The saved sessions of this user under one root (default ~/.coi)."""

    def __init__(self, root: Path) -> None:
        self.root = root

    @classmethod
    def default(cls) -> SessionStore:
        """The store in the invoking user's home."""
        return cls(Path(os.environ.get("HOME") or Path.home()) / ".coi")

    def directory(self, tool: str, session_id: str) -> Path:
        """Where one session's files live."""
        return self.root / f"sessions-{tool}" / check_session_id(session_id)

    def _write_atomic(self, path: Path, data: bytes) -> None:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "wb") as out:
                out.write(data)
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise

    def write_meta(self, meta: SessionMeta) -> None:
        """Write (or replace) a session's metadata."""
        text = json.dumps(meta.to_json(), indent=2, sort_keys=True) + "\n"
        self._write_atomic(self.directory(meta.tool, meta.id) / META_FILE, text.encode())

    def write_state(self, meta: SessionMeta, archive: bytes) -> None:
        """Store the tool's state archive."""
        self._write_atomic(self.directory(meta.tool, meta.id) / STATE_FILE, archive)

    def read_state(self, meta: SessionMeta) -> bytes | None:
        """The stored state archive, or None if the session saved none."""
        try:
            return (self.directory(meta.tool, meta.id) / STATE_FILE).read_bytes()
        except FileNotFoundError:
            return None

    def sessions(self) -> Iterator[SessionMeta]:
        """Every readable saved session (any tool, any workspace)."""
        if not self.root.is_dir():
            return
        for tool_dir in sorted(self.root.glob("sessions-*")):
            for meta_file in sorted(tool_dir.glob(f"*/{META_FILE}")):
                try:
                    yield SessionMeta.from_json(json.loads(meta_file.read_text()))
                except (OSError, ValueError, TypeError):
                    continue

    def find(self, session_id: str) -> SessionMeta | None:
        """The session with this id, of any tool."""
        check_session_id(session_id)
        return next((m for m in self.sessions() if m.id == session_id), None)

    def for_workspace(self, workspace: Path, tool: str | None = None) -> list[SessionMeta]:
        """Sessions of a workspace (optionally of one tool), oldest first."""
        found = [
            m
            for m in self.sessions()
            if m.workspace == str(workspace) and (tool is None or m.tool == tool)
        ]
        return sorted(found, key=lambda m: (m.started_at, m.id))

    def resolve_resume(self, workspace: Path, tool: str, session_id: str) -> SessionMeta:
        """The session `--resume[=ID]` means: the given id, or the latest of this workspace.

        Raises `SessionError` when there is none, or when the id belongs to another workspace
        or tool (sessions are workspace-scoped).
        """
        if not session_id:
            mine = [m for m in self.for_workspace(workspace, tool) if m.saved_at]
            if not mine:
                raise SessionError(
                    f"no saved {tool} session for workspace {workspace} to resume",
                    hint="start one without --resume; `coi list --all` shows saved sessions",
                )
            return mine[-1]
        meta = self.find(session_id)
        if meta is None:
            known = [m.id for m in self.for_workspace(workspace)]
            raise SessionError(
                f"no saved session {session_id!r}",
                hint=(
                    "sessions of this workspace: " + ", ".join(known)
                    if known
                    else "this workspace has no saved sessions"
                ),
            )
        if meta.workspace != str(workspace):
            raise SessionError(
                f"session {session_id} belongs to workspace {meta.workspace}, not {workspace}",
                hint=f"run coi in that workspace (-w {meta.workspace}) to resume it",
            )
        if meta.tool != tool:
            raise SessionError(
                f"session {session_id} is a {meta.tool} session, not {tool}",
                hint=f"resume it with --tool {meta.tool}",
            )
        return meta

    def remove(self, meta: SessionMeta) -> None:
        """Delete a saved session."""
        directory = self.directory(meta.tool, meta.id)
        if not directory.is_dir():
            raise SessionError(f"saved session {meta.id} is already gone")
        shutil.rmtree(directory)
