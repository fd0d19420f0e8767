"""`coi shell` / `coi attach` end to end: real Incus, real pty, real unprivileged user."""

from __future__ import annotations

import json
import os
import signal
import tarfile
import time
from pathlib import Path

import pexpect
import pytest
from session_harness import (
    CREDENTIAL,
    FAKE_IMAGE,
    SessionCoi,
    UnixUser,
    sh,
    wait_for,
    ws_containers,
)

pytestmark = [pytest.mark.integration]

SHELL = ("shell", "--tool", "fakeagent", "--image", FAKE_IMAGE, "--network", "open")


def prompt(child: pexpect.spawn) -> None:
    child.expect_exact("fake> ")


def ask(child: pexpect.spawn, line: str, answer: str) -> str:
    """Type a line to fakeagent and wait for `answer` (a regex); returns the match."""
    child.sendline(line)
    child.expect(answer)
    match = child.match
    assert match is not None
    prompt(child)
    return str(match.group(0))


def finish(child: pexpect.spawn, timeout: float = 120) -> int:
    child.expect(pexpect.EOF, timeout=timeout)
    child.close()
    assert child.exitstatus is not None, f"coi died of signal {child.signalstatus}"
    return int(child.exitstatus)


def saved_sessions(user: UnixUser, workspace: Path) -> list[dict[str, object]]:
    root = user.home / ".coi" / "sessions-fakeagent"
    found = [json.loads(p.read_text()) for p in root.glob("*/metadata.json")]
    return sorted(
        (m for m in found if m["workspace"] == str(workspace)), key=lambda m: str(m["started_at"])
    )


def state_files(user: UnixUser, meta: dict[str, object]) -> dict[str, bytes]:
    path = user.home / ".coi" / f"sessions-{meta['tool']}" / str(meta["id"]) / "state.tar"
    with tarfile.open(path) as tar:
        return {
            m.name: tar.extractfile(m).read()  # type: ignore[union-attr]
            for m in tar.getmembers()
            if m.isfile()
        }


def test_prompt_size_resize_context_and_ephemeral_end(
    scoi: SessionCoi, workspace: Path, run_user: UnixUser, no_leftovers: None
) -> None:
    child = scoi.spawn(*SHELL, rows=30, cols=100)
    child.expect_exact("FAKEAGENT START args=[--yolo]")
    prompt(child)
    ask(child, "size", r"SIZE\[30 100\]")
    child.setwinsize(41, 123)
    time.sleep(0.5)
    # tmux redraws the old lines after a resize: wait for the new size itself.
    ask(child, "size", r"SIZE\[41 123\]")
    # The sandbox context exists and is wired into the tool's own context file.
    ask(child, "run grep -c 'Sandbox context' ~/SANDBOX_CONTEXT.md", r"\r\n1\r\n")
    ask(child, "run grep -c coi:sandbox-context ~/.fakeagent/CONTEXT.md", r"\r\n2\r\n")
    ask(child, "run grep -o 'mounted at /workspace' ~/SANDBOX_CONTEXT.md", "mounted at /workspace")
    # Credentials copied in (0600, code's), nothing else of the host home.
    ask(child, "run stat -c %a:%U ~/.fakeagent/credentials", r"600:code")
    ask(child, "run cat ~/.fakeagent/credentials", CREDENTIAL)
    ask(child, "run test -e ~/.config/coi/tools", r"RAN\[1\]")  # the host's, not copied
    ask(child, "run echo made-inside > /workspace/made.txt", r"RAN\[0\]")
    ask(child, "note first-note", "NOTED")
    child.sendline("exit 3")
    assert finish(child) == 3
    # A failing tool's last screen is shown (tmux closed with it).
    log = str(child.logfile_read)
    assert "fakeagent exited with code 3; its last screen:" in log
    assert "  | NOTED" in log
    assert ws_containers(workspace) == []
    made = workspace / "made.txt"
    assert made.read_text() == "made-inside\n"
    assert (made.stat().st_uid, made.stat().st_gid) == (run_user.uid, run_user.gid)
    (meta,) = saved_sessions(run_user, workspace)
    assert meta["status"] == "ended" and meta["exit_code"] == 3 and meta["slot"] == 1
    saved = state_files(run_user, meta)
    assert saved[".fakeagent/notes"] == b"first-note\n"
    assert ".fakeagent/credentials" not in saved  # credentials are not kept in the store


def test_detach_attach_and_tmux_from_outside(
    scoi: SessionCoi, workspace: Path, no_leftovers: None
) -> None:
    child = scoi.spawn(*SHELL)
    prompt(child)
    ask(child, "note before-detach", "NOTED")
    child.send("\x02d")  # tmux prefix, d
    assert finish(child) == 0
    assert "coi attach" in str(child.logfile_read)
    (name,) = ws_containers(workspace)
    # Still running; drive it from outside.
    sent = scoi("tmux", "send", name, "note from-outside")
    assert sent.returncode == 0, sent.stderr
    wait_for(lambda: "from-outside" in scoi("tmux", "capture", name).stdout, what="capture")
    assert scoi("tmux", "send", name, "--", "-dash").returncode == 0  # text, not a tmux flag
    wait_for(lambda: "UNKNOWN[-dash]" in scoi("tmux", "capture", name).stdout, what="-dash")
    listed = scoi("tmux", "list", "--format", "json")
    assert {"container": name, "tmux_session": "coi", "tool": "fakeagent"} in json.loads(
        listed.stdout
    )
    child = scoi.spawn("attach", name)
    child.sendline("run cat ~/.fakeagent/notes")
    child.expect("before-detach\r\nfrom-outside\r\n")
    prompt(child)
    child.sendline("exit 0")
    assert finish(child) == 0
    assert ws_containers(workspace) == []


def has_file(container: str, path: str) -> bool:
    return sh("incus", "exec", container, "--", "test", "-e", path, check=False).returncode == 0


def test_two_slots_run_at_once_with_separate_homes(
    scoi: SessionCoi, workspace: Path, no_leftovers: None
) -> None:
    for slot in ("1", "2"):
        started = scoi(*SHELL, "--slot", slot, "--background")
        assert started.returncode == 0, started.stderr
    names = sorted(ws_containers(workspace))
    assert [n[-2:] for n in names] == ["-1", "-2"]
    assert sorted(c["slot"] for c in scoi.list_json()) == [1, 2]
    assert scoi("tmux", "send", names[0], "run touch ~/only-in-slot-1").returncode == 0
    wait_for(lambda: has_file(names[0], "/home/code/only-in-slot-1"), what="the file in slot 1")
    assert not has_file(names[1], "/home/code/only-in-slot-1")
    # Several running: attach without a name lists them instead of guessing.
    several = scoi("attach")
    assert several.returncode == 1
    assert "2 sessions are running; name the one to attach to" in several.stderr
    assert names[0] in several.stderr and names[1] in several.stderr
    # Slot taken: asking for slot 1 again is refused and changes nothing.
    taken = scoi(*SHELL, "--slot", "1", "--background")
    assert taken.returncode == 1
    assert "slot 1 of this workspace is taken" in taken.stderr
    killed = scoi("kill", "--all", "--force")
    assert killed.returncode == 0, killed.stderr
    assert ws_containers(workspace) == []
    assert scoi.list_json() == []


def test_resume_restores_saved_state(
    scoi: SessionCoi, workspace: Path, run_user: UnixUser, no_leftovers: None
) -> None:
    child = scoi.spawn(*SHELL)
    prompt(child)
    ask(child, "note remember-me", "NOTED")
    child.sendline("exit 0")
    assert finish(child) == 0
    (first,) = saved_sessions(run_user, workspace)

    child = scoi.spawn(*SHELL, "--resume")
    child.expect_exact("FAKEAGENT START args=[--yolo --resume]")
    child.expect_exact("FAKEAGENT NOTES remember-me")
    prompt(child)
    ask(child, "note second", "NOTED")
    child.sendline("exit 0")
    assert finish(child) == 0
    sessions = saved_sessions(run_user, workspace)
    assert sessions[-1]["resumed_from"] == first["id"]

    child = scoi.spawn(*SHELL, f"--resume={first['id']}")
    child.expect_exact("FAKEAGENT NOTES remember-me")
    prompt(child)
    child.sendline("exit 0")
    assert finish(child) == 0
    info = scoi("info", str(first["id"]), "--format", "json")
    assert json.loads(info.stdout)["workspace"] == str(workspace)


def test_persistent_survives_exit_and_keeps_packages(
    scoi: SessionCoi, workspace: Path, no_leftovers: None
) -> None:
    child = scoi.spawn(*SHELL, "--persistent")
    prompt(child)
    build = (
        "run mkdir -p /tmp/p/DEBIAN && printf 'Package: coi-test-pkg\\nVersion: 1\\n"
        "Architecture: all\\nMaintainer: t <t@example.org>\\nDescription: t\\n' "
        "> /tmp/p/DEBIAN/control && dpkg-deb -b /tmp/p /tmp/p.deb >/dev/null && "
        "sudo dpkg -i /tmp/p.deb >/dev/null"
    )
    ask(child, build, r"RAN\[0\]")
    child.sendline("exit 0")
    assert finish(child) == 0
    (row,) = scoi.list_json()
    assert (row["mode"], row["state"]) == ("persistent", "STOPPED")

    child = scoi.spawn(*SHELL, "--persistent")
    prompt(child)
    ask(child, "run dpkg-query -W -f '${Status}' coi-test-pkg", "install ok installed")
    child.sendline("exit 0")
    assert finish(child) == 0
    assert len(ws_containers(workspace)) == 1
    assert scoi("kill", str(row["name"])).returncode == 0


def test_poweroff_inside_ends_cleanly_and_saves(
    scoi: SessionCoi, workspace: Path, run_user: UnixUser, no_leftovers: None
) -> None:
    child = scoi.spawn(*SHELL)
    prompt(child)
    ask(child, "note before-poweroff", "NOTED")
    child.sendline("run sudo poweroff")
    assert finish(child) == 0, str(child.logfile_read)
    assert ws_containers(workspace) == []
    (meta,) = saved_sessions(run_user, workspace)
    assert meta["status"] == "ended", str(child.logfile_read)
    assert meta["saved_at"], str(child.logfile_read)
    assert state_files(run_user, meta)[".fakeagent/notes"] == b"before-poweroff\n"


def test_container_deleted_from_outside(
    scoi: SessionCoi, workspace: Path, run_user: UnixUser, no_leftovers: None
) -> None:
    scoi.sync_seconds = "1"
    child = scoi.spawn(*SHELL)
    prompt(child)
    ask(child, "note saved-by-sync", "NOTED")
    (name,) = ws_containers(workspace)

    def synced() -> bool:
        found = saved_sessions(run_user, workspace)
        return (
            bool(found)
            and bool(found[-1]["saved_at"])
            and (state_files(run_user, found[-1]).get(".fakeagent/notes") == b"saved-by-sync\n")
        )

    wait_for(synced, what="the periodic save")
    sh("incus", "delete", "--force", name)
    assert finish(child) == 1
    assert "disappeared" in str(child.logfile_read)
    assert "Traceback" not in str(child.logfile_read)
    (meta,) = saved_sessions(run_user, workspace)
    assert meta["status"] == "lost"


def _coi_pid(workspace: Path) -> int:
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().split(b"\0")
            cwd = os.readlink(entry / "cwd")
        except OSError:
            continue
        program = cmdline[0].rsplit(b"/", 1)[-1]
        is_coi = any(a.endswith(b"/coi") for a in cmdline)
        if cwd == str(workspace) and is_coi and program not in (b"setpriv", b"env"):
            return int(entry.name)
    raise AssertionError("coi process not found")


# Ctrl-C before the attach interrupts coi (cooked mode); once attached (raw mode) it is a key
# for the tool, so "attached" is interrupted by SIGTERM instead.
@pytest.mark.parametrize(
    "when", ["creating container", "waiting for the container's network", "attached"]
)
def test_terminal_restored_after_interrupt(
    scoi: SessionCoi, workspace: Path, no_leftovers: None, when: str
) -> None:
    bash = scoi.user_shell()
    bash.sendline("stty -g")
    bash.expect(r"([0-9a-f:]{20,})\r\n")
    before = bash.match.group(1)  # type: ignore[union-attr]
    bash.expect_exact("READY$ ")
    bash.sendline("$COI " + " ".join(SHELL))
    if when != "attached":
        bash.expect_exact(when)
        bash.sendcontrol("c")  # cooked mode: SIGINT to coi
    else:
        bash.expect_exact("fake> ")
        os.kill(_coi_pid(workspace), signal.SIGTERM)
    bash.expect_exact("READY$ ", timeout=120)
    bash.sendline("echo rc=$?; stty -g")
    bash.expect(r"rc=(\d+)\r\n([0-9a-f:]{20,})\r\n")
    code, after = bash.match.groups()  # type: ignore[union-attr]
    assert after == before
    assert code == ("143" if when == "attached" else "130")
    bash.sendline("exit")
    bash.expect(pexpect.EOF)
    wait_for(lambda: ws_containers(workspace) == [], what="the container to be removed")


def test_terminal_hangup_detaches(scoi: SessionCoi, workspace: Path, no_leftovers: None) -> None:
    child = scoi.spawn(*SHELL)
    prompt(child)
    ask(child, "note survives-hangup", "NOTED")
    os.kill(_coi_pid(workspace), signal.SIGHUP)
    assert finish(child) == 0
    (name,) = ws_containers(workspace)
    assert "survives-hangup" in scoi("tmux", "capture", name).stdout
    child = scoi.spawn("attach", name)
    child.sendline("run cat ~/.fakeagent/notes")
    child.expect_exact("survives-hangup")
    prompt(child)
    child.sendline("exit 0")
    assert finish(child) == 0


def test_ctrl_c_while_attached_goes_to_the_tool(
    scoi: SessionCoi, workspace: Path, no_leftovers: None
) -> None:
    child = scoi.spawn(*SHELL)
    prompt(child)
    child.sendcontrol("c")  # raw mode: a byte for the pty inside, SIGINT for fakeagent there
    assert finish(child) == 130
    assert "fakeagent exited with code 130" in str(child.logfile_read)
    assert ws_containers(workspace) == []
