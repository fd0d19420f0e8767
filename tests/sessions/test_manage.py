"""Managing sessions from outside: list, info, persist, shutdown, clean, --debug."""

from __future__ import annotations

import json
from pathlib import Path

import pexpect
import pytest
from session_harness import FAKE_IMAGE, SessionCoi, UnixUser, ws_containers

pytestmark = [pytest.mark.integration]

SHELL = ("shell", "--tool", "fakeagent", "--image", FAKE_IMAGE, "--network", "open")


def _start_background(scoi: SessionCoi, *extra: str) -> str:
    started = scoi(*SHELL, "--background", *extra)
    assert started.returncode == 0, started.stderr
    name = started.stdout.strip()
    assert ws_containers(scoi.workspace) == [name]
    return name


def test_persist_turns_an_ephemeral_session_persistent(
    scoi: SessionCoi, workspace: Path, no_leftovers: None
) -> None:
    name = _start_background(scoi)
    (row,) = scoi.list_json()
    assert (row["mode"], row["state"], row["tool"], row["slot"]) == (
        "ephemeral", "RUNNING", "fakeagent", 1,
    )  # fmt: skip
    assert row["ipv4"]
    assert scoi("persist", name).returncode == 0
    child = scoi.spawn("attach", name)
    child.expect_exact("fake> ")
    child.sendline("exit 0")
    child.expect(pexpect.EOF, timeout=120)
    child.close()
    assert child.exitstatus == 0
    (row,) = scoi.list_json()
    assert (row["mode"], row["state"]) == ("persistent", "STOPPED")
    # clean: a dry run lists it and removes nothing; then it goes.
    dry = scoi("clean", "--dry-run")
    assert f"would remove container {name}" in dry.stdout
    assert ws_containers(workspace) == [name]
    cleaned = scoi("clean", "--force")
    assert cleaned.returncode == 0, cleaned.stderr
    assert ws_containers(workspace) == []


def test_shutdown_saves_the_session_and_deletes(
    scoi: SessionCoi, workspace: Path, run_user: UnixUser, no_leftovers: None
) -> None:
    name = _start_background(scoi)
    assert scoi("tmux", "send", name, "note kept-by-shutdown").returncode == 0
    state = run_user.home / ".coi" / "sessions-fakeagent"
    result = scoi("shutdown", name, "--timeout", "10")
    assert result.returncode == 0, result.stderr
    assert ws_containers(workspace) == []
    listed = json.loads(scoi("list", "--all", "--format", "json").stdout)
    mine = [s for s in listed["sessions"] if s["workspace"] == str(workspace)]
    assert len(mine) == 1 and mine[0]["status"] == "ended"
    info = json.loads(scoi("info", "--format", "json").stdout)
    assert info["id"] == mine[0]["id"] and info["container"] == name
    assert (state / str(info["id"]) / "state.tar").stat().st_size > 0
    # The saved state comes back on --resume.
    child = scoi.spawn(*SHELL, "--resume")
    child.expect_exact("FAKEAGENT NOTES kept-by-shutdown")
    child.expect_exact("fake> ")
    child.sendline("exit 0")
    child.expect(pexpect.EOF, timeout=120)


def test_debug_gives_bash_instead_of_the_tool(
    scoi: SessionCoi, workspace: Path, no_leftovers: None
) -> None:
    child = scoi.spawn(*SHELL, "--debug")
    child.sendline("echo DEBUG-$((6*7)) $(id -un) $PWD")
    child.expect_exact("DEBUG-42 code /workspace")
    child.sendline("exit 5")
    child.expect(pexpect.EOF, timeout=120)
    child.close()
    assert child.exitstatus == 5
    assert ws_containers(workspace) == []
