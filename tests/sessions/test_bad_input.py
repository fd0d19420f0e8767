"""Bad input to the session commands: one clear sentence, non-zero exit, nothing left."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from session_harness import FAKE_IMAGE, SessionCoi, UnixUser, ws_containers

pytestmark = [pytest.mark.integration]

SHELL = ("shell", "--tool", "fakeagent", "--image", FAKE_IMAGE, "--network", "open")


def error_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.startswith("coi: error: ")]
    assert len(lines) == 1, stderr
    assert "Traceback" not in stderr
    return lines[0]


def test_attach_without_a_session(scoi: SessionCoi, no_leftovers: None) -> None:
    result = scoi("attach", "--slot", "1")
    assert result.returncode == 1
    assert "no session runs in slot 1 of workspace" in error_line(result.stderr)
    assert "running sessions:" in result.stderr


def test_attach_unknown_name_lists_running(scoi: SessionCoi, no_leftovers: None) -> None:
    result = scoi("attach", "coi-test-sess-nosuch-1")
    assert result.returncode == 1
    assert "no session container of yours is called coi-test-sess-nosuch-1" in result.stderr


def test_resume_unknown_id(scoi: SessionCoi, workspace: Path, no_leftovers: None) -> None:
    result = scoi(*SHELL, "--resume=20200101-000000-abcdef", "--background")
    assert result.returncode == 1
    assert "no saved session '20200101-000000-abcdef'" in error_line(result.stderr)
    assert ws_containers(workspace) == []


def test_resume_id_of_another_workspace(
    scoi: SessionCoi, run_user: UnixUser, workspace: Path, no_leftovers: None
) -> None:
    session_dir = run_user.home / ".coi" / "sessions-fakeagent" / "20200101-000000-0ther0"
    session_dir.mkdir(parents=True, exist_ok=True)
    meta = {
        "id": "20200101-000000-0ther0",
        "tool": "fakeagent",
        "workspace": "/home/coit-run/some-other-project",
        "slot": 1,
        "container": "coi-test-sess-00000000-1",
        "image": FAKE_IMAGE,
        "persistent": False,
        "started_at": "2020-01-01T00:00:00+00:00",
        "saved_at": "2020-01-01T00:01:00+00:00",
    }
    (session_dir / "metadata.json").write_text(json.dumps(meta))
    for path in (session_dir.parent, session_dir, session_dir / "metadata.json"):
        os.chown(path, run_user.uid, run_user.gid)
    try:
        result = scoi(*SHELL, "--resume=20200101-000000-0ther0", "--background")
        assert result.returncode == 1
        assert "belongs to workspace /home/coit-run/some-other-project" in error_line(result.stderr)
        assert ws_containers(workspace) == []
    finally:
        (session_dir / "metadata.json").unlink()
        session_dir.rmdir()


def test_resume_with_nothing_saved(scoi: SessionCoi, no_leftovers: None) -> None:
    result = scoi(*SHELL, "--resume", "--background")
    assert result.returncode == 1
    assert "no saved fakeagent session for workspace" in error_line(result.stderr)


def test_invalid_session_id(scoi: SessionCoi, no_leftovers: None) -> None:
    result = scoi(*SHELL, "--resume=../../etc", "--background")
    assert result.returncode == 2
    assert "invalid session id" in error_line(result.stderr)


def test_unknown_tool_lists_the_known(scoi: SessionCoi, no_leftovers: None) -> None:
    result = scoi("shell", "--tool", "nosuch", "--background")
    assert result.returncode == 2
    assert (
        "unknown tool 'nosuch'; known tools: aider, claude, codex, fakeagent, opencode, shell"
        in error_line(result.stderr)
    )


def test_tool_binary_missing_says_rebuild(
    scoi: SessionCoi, workspace: Path, no_leftovers: None
) -> None:
    result = scoi(*SHELL[:2], "aider", *SHELL[3:], "--background")
    assert result.returncode == 1
    assert "needs the command 'aider', which is not in image" in error_line(result.stderr)
    assert "coi build" in result.stderr
    assert ws_containers(workspace) == []


def test_shell_without_a_terminal(scoi: SessionCoi, workspace: Path, no_leftovers: None) -> None:
    result = scoi(*SHELL)
    assert result.returncode == 2
    assert "coi shell needs a terminal" in error_line(result.stderr)
    assert ws_containers(workspace) == []


def test_kill_unknown_container(scoi: SessionCoi, no_leftovers: None) -> None:
    result = scoi("kill", "coi-test-sess-nosuch-1")
    assert result.returncode == 1
    assert "no container of yours is called coi-test-sess-nosuch-1" in error_line(result.stderr)


def test_kill_all_needs_force_without_a_terminal(
    scoi: SessionCoi, workspace: Path, no_leftovers: None
) -> None:
    started = scoi(*SHELL, "--background")
    assert started.returncode == 0, started.stderr
    refused = scoi("kill", "--all")
    assert refused.returncode == 2
    assert "refusing to kill" in error_line(refused.stderr)
    assert len(ws_containers(workspace)) == 1
    assert scoi("kill", "--all", "--force").returncode == 0
