"""`coi run` end to end: real Incus, real unprivileged user, real image."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest
from run_harness import PREFIX, Coi, UnixUser, incus_names, sh

from coi.launcher.session.naming import workspace_hash

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("coi_image")]


def test_command_runs_as_code_in_workspace(coi: Coi, workspace: Path, no_leftovers: None) -> None:
    result = coi("run", "-w", str(workspace), "--", "sh", "-c", "id -u; id -un; pwd; echo $HOME")
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["1000", "code", "/workspace", "/home/code"]


def test_exit_code_is_propagated(coi: Coi, workspace: Path, no_leftovers: None) -> None:
    result = coi("run", "-w", str(workspace), "--", "sh", "-c", "exit 7")
    assert result.returncode == 7


def test_stdout_stderr_separate_and_stdin_passed(
    coi: Coi, workspace: Path, no_leftovers: None
) -> None:
    result = coi(
        "run",
        "-w",
        str(workspace),
        "--",
        "sh",
        "-c",
        "echo to-out; echo to-err >&2; tr a-z A-Z",
        input="piped input\n",
    )
    assert result.returncode == 0
    assert result.stdout == "to-out\nPIPED INPUT\n"
    assert result.stderr.strip().splitlines()[-1] == "to-err"
    assert "to-out" not in result.stderr


def test_files_created_inside_belong_to_the_user(
    coi: Coi, workspace: Path, run_user: UnixUser, no_leftovers: None
) -> None:
    (workspace / "from-host.txt").write_text("hello")
    os.chown(workspace / "from-host.txt", run_user.uid, run_user.gid)
    result = coi(
        "run",
        "-w",
        str(workspace),
        "--",
        "sh",
        "-c",
        "stat -c %u from-host.txt && echo made > inside.txt && mkdir d && touch d/f",
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "1000"  # the host user's file is code's inside
    for path in (workspace / "inside.txt", workspace / "d", workspace / "d/f"):
        st = path.stat()
        assert (st.st_uid, st.st_gid) == (run_user.uid, run_user.gid), path
    assert (workspace / "inside.txt").read_text() == "made\n"


def test_env_flag_reaches_the_command(coi: Coi, workspace: Path, no_leftovers: None) -> None:
    result = coi(
        "run",
        "-w",
        str(workspace),
        "-e",
        "GREETING=hi there",
        "--",
        "sh",
        "-c",
        'printf %s "$GREETING"',
    )
    assert result.stdout == "hi there"


def test_failing_command_leaves_nothing(coi: Coi, workspace: Path, no_leftovers: None) -> None:
    result = coi("run", "-w", str(workspace), "--", "false")
    assert result.returncode == 1


def test_network_works_inside(coi: Coi, workspace: Path, no_leftovers: None) -> None:
    gateway = sh("incus", "network", "get", "coibr0", "ipv4.address").stdout.strip().split("/")[0]
    result = coi("run", "-w", str(workspace), "--", "sh", "-c", "ip -4 route show default")
    assert result.returncode == 0
    assert f"via {gateway}" in result.stdout


@pytest.mark.parametrize("delay", [0.3, 1.0, 3.0])
def test_ctrl_c_at_any_phase_removes_the_container(
    coi: Coi, workspace: Path, no_leftovers: None, delay: float
) -> None:
    proc = coi.popen("run", "-w", str(workspace), "--", "sleep", "60")
    time.sleep(delay)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=90)
    assert proc.returncode == 130, err
    assert "interrupted" in err


def test_sigterm_during_the_command_removes_the_container(
    coi: Coi, workspace: Path, no_leftovers: None
) -> None:
    proc = coi.popen("run", "-w", str(workspace), "--", "sleep", "60")
    prefix = PREFIX + workspace_hash(workspace)
    deadline = time.monotonic() + 60
    while not incus_names(prefix) and time.monotonic() < deadline:
        time.sleep(0.2)
    time.sleep(2)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=90)
    assert proc.returncode == 143, err


def test_persistent_keeps_and_reuses_the_container(
    coi: Coi, workspace: Path, no_leftovers: None
) -> None:
    first = coi(
        "run",
        "-w",
        str(workspace),
        "--persistent",
        "--",
        "sh",
        "-c",
        "sudo touch /etc/kept-marker && hostname",
    )
    assert first.returncode == 0, first.stderr
    name = first.stdout.strip()
    assert incus_names(name) == [name]
    second = coi(
        "run",
        "-w",
        str(workspace),
        "--persistent",
        "--",
        "sh",
        "-c",
        "test -f /etc/kept-marker && hostname",
    )
    assert second.returncode == 0, second.stderr
    assert second.stdout.strip() == name
    # The same slot without --persistent is taken.
    taken = coi("run", "-w", str(workspace), "--slot", name.rsplit("-", 1)[1], "--", "true")
    assert taken.returncode != 0
    assert "is taken" in taken.stderr
    sh("incus", "delete", "--force", name)


def test_parallel_runs_get_different_slots(coi: Coi, workspace: Path, no_leftovers: None) -> None:
    procs = [
        coi.popen("run", "-w", str(workspace), "--", "sh", "-c", "sleep 3; hostname")
        for _ in range(2)
    ]
    outs = [p.communicate(timeout=120) for p in procs]
    names = sorted(o[0].strip() for o in outs)
    assert all(p.returncode == 0 for p in procs), outs
    assert len(set(names)) == 2
    assert {n.rsplit("-", 1)[1] for n in names} == {"1", "2"}


# --------------------------------------------------------------------------- bad input


def _one_clear_error(result: object) -> str:
    err: str = result.stderr  # type: ignore[attr-defined]
    assert "Traceback" not in err
    assert err.startswith("coi: error: "), err
    return err


def test_workspace_missing(coi: Coi, workspace: Path, no_leftovers: None) -> None:
    result = coi("run", "-w", str(workspace / "nope"), "--", "true")
    assert result.returncode == 1
    assert "does not exist" in _one_clear_error(result)


def test_workspace_is_a_file(coi: Coi, workspace: Path, no_leftovers: None) -> None:
    (workspace / "file").write_text("x")
    result = coi("run", "-w", str(workspace / "file"), "--", "true")
    assert result.returncode == 1
    assert "is not a directory" in _one_clear_error(result)


def test_image_missing_says_how_to_build(coi: Coi, workspace: Path, no_leftovers: None) -> None:
    result = coi("run", "-w", str(workspace), "--image", "no-such-image", "--", "true")
    assert result.returncode == 1
    err = _one_clear_error(result)
    assert "image 'no-such-image' not found" in err and "coi build custom" in err


@pytest.mark.parametrize("slot", ["11", "-1"])
def test_slot_out_of_range(coi: Coi, workspace: Path, no_leftovers: None, slot: str) -> None:
    result = coi("run", "-w", str(workspace), "--slot", slot, "--", "true")
    assert result.returncode == 2
    assert "out of range" in _one_clear_error(result)


def test_invalid_env(coi: Coi, workspace: Path, no_leftovers: None) -> None:
    result = coi("run", "-w", str(workspace), "-e", "NOT VALID", "--", "true")
    assert result.returncode == 2
    assert "invalid --env 'NOT VALID'" in _one_clear_error(result)


def test_user_without_incus_access_is_told_why(outsider: UnixUser, tmp_path: Path) -> None:
    ws = outsider.home / "ws"
    ws.mkdir(exist_ok=True)
    result = Coi(outsider)("run", "-w", str(ws), "--", "true")
    assert result.returncode == 1
    err = _one_clear_error(result)
    assert "not in the group incus" in err or "incus-user" in err
    assert "host-setup" in err or "systemctl" in err


def test_incus_socket_given_but_missing(coi: Coi, workspace: Path) -> None:
    proc = coi.argv(["run", "-w", str(workspace), "--", "true"])
    import subprocess

    env_at = proc.index("/usr/bin/env") + 1
    proc.insert(env_at, "COI_INCUS_SOCKET=/nonexistent/unix.socket")
    result = subprocess.run(proc, text=True, capture_output=True, timeout=60)
    assert result.returncode == 1
    assert "COI_INCUS_SOCKET" in _one_clear_error(result)


def test_health_json(coi: Coi) -> None:
    import json

    result = coi("health", "--format", "json")
    report = json.loads(result.stdout)
    names = {c["name"]: c for c in report["checks"]}
    assert names["incus"]["status"] == "ok"
    assert names["incus"]["details"]["mode"] == "admin"
    assert names["image"]["status"] == "ok"
    assert result.returncode in (0, 1)
    assert report["status"] in ("healthy", "degraded")
