"""`coi run`, `coi build` and `coi health` for a user who is only in group `incus`.

No incus-admin, no sudo: Incus through the incus-user socket and the restricted project
`user-<uid>` that `coi-helper provision-user` prepared, the workspace mapped with raw.idmap.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from usermode_harness import (
    PREFIX,
    UnixUser,
    UserCoi,
    image_fingerprint,
    instance_names,
    project_of,
    sh,
    wait_for_instance,
)

from coi.launcher.session.naming import workspace_hash

pytestmark = pytest.mark.integration


def test_health_shows_incus_user_mode_and_the_helper(coi_a: UserCoi, uma: UnixUser) -> None:
    result = coi_a("health", "--format", "json")
    report = json.loads(result.stdout)
    checks = {c["name"]: c for c in report["checks"]}
    assert checks["incus"]["status"] == "ok", checks["incus"]
    assert checks["incus"]["details"]["mode"] == "user"
    assert checks["incus"]["details"]["project"] == project_of(uma)
    assert checks["incus"]["details"]["socket"] == "/var/lib/incus/unix.socket.user"
    assert "incus-admin" not in checks["incus"]["details"]["groups"]
    # Restricted certificates may not list pools or read network config: still healthy.
    assert checks["storage"]["status"] == "ok", checks["storage"]
    assert checks["bridge"]["status"] == "ok", checks["bridge"]
    assert checks["bridge"]["details"]["network"] == f"incusbr-{uma.uid}"
    assert checks["image"]["status"] == "ok", checks["image"]
    helper = checks["helper"]
    assert helper["status"] == "ok", helper
    assert helper["details"]["scope"] == project_of(uma)
    answers = {k.rsplit(".", 1)[-1]: v for k, v in helper["details"]["authorization"].items()}
    assert answers["network"] == answers["monitor"] == "allowed", helper
    assert answers["admin"] != "allowed", helper  # incus is not incus-admin
    assert result.returncode == 0, report
    text = coi_a("health")
    assert text.returncode == 0, text.stdout + text.stderr
    assert f"incus-user (restricted project), project {project_of(uma)}" in text.stdout
    assert f"authorised for project {project_of(uma)}" in text.stdout


def test_run_maps_the_user_onto_code(
    coi_a: UserCoi, uma: UnixUser, ws_a: Path, no_leftovers: None
) -> None:
    (ws_a / "from-host").write_text("x")
    os.chown(ws_a / "from-host", uma.uid, uma.gid)
    result = coi_a("run", "-w", str(ws_a), "--", "sh", "-c", "id -u; stat -c %u from-host")
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["1000", "1000"]
    made = coi_a(
        "run", "-w", str(ws_a), "--", "sh", "-c", "echo made > inside && mkdir d && touch d/f"
    )
    assert made.returncode == 0, made.stderr
    for path in (ws_a / "inside", ws_a / "d", ws_a / "d" / "f"):
        st = path.stat()
        assert (st.st_uid, st.st_gid) == (uma.uid, uma.gid), path
    assert (ws_a / "inside").read_text() == "made\n"


def test_the_container_lives_in_the_users_project(
    coi_a: UserCoi, uma: UnixUser, ws_a: Path, no_leftovers: None
) -> None:
    result = coi_a("run", "-w", str(ws_a), "--", "hostname")
    assert result.returncode == 0, result.stderr
    name = result.stdout.strip()
    assert name.startswith(PREFIX + workspace_hash(ws_a))
    # It ran with the user's bridge (provisioned with an explicit subnet), not coibr0.
    gateway = sh("incus", "network", "get", f"incusbr-{uma.uid}", "ipv4.address").stdout
    route = coi_a("run", "-w", str(ws_a), "--", "ip", "-4", "route", "show", "default")
    assert route.returncode == 0, route.stderr
    assert f"via {gateway.strip().split('/')[0]}" in route.stdout


@pytest.mark.parametrize("code", [0, 3, 77])
def test_exit_codes_propagate(coi_a: UserCoi, ws_a: Path, no_leftovers: None, code: int) -> None:
    result = coi_a("run", "-w", str(ws_a), "--", "sh", "-c", f"exit {code}")
    assert result.returncode == code, result.stderr


@pytest.mark.parametrize("signum,expected", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_interrupt_leaves_nothing(
    coi_a: UserCoi,
    uma: UnixUser,
    ws_a: Path,
    no_leftovers: None,
    signum: signal.Signals,
    expected: int,
) -> None:
    proc = coi_a.popen("run", "-w", str(ws_a), "--", "sleep", "120")
    prefix = PREFIX + workspace_hash(ws_a)
    wait_for_instance(project_of(uma), prefix)
    time.sleep(1)
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=90)
    assert proc.returncode == expected, err
    assert instance_names(project_of(uma), prefix) == []


def test_interrupt_while_creating_leaves_nothing(
    coi_a: UserCoi, uma: UnixUser, ws_a: Path, no_leftovers: None
) -> None:
    proc = coi_a.popen("run", "-w", str(ws_a), "--", "sleep", "120")
    time.sleep(0.8)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=90)
    assert proc.returncode == 130, err
    assert instance_names(project_of(uma), PREFIX + workspace_hash(ws_a)) == []


@pytest.fixture
def outside_ws(uma: UnixUser) -> Iterator[Path]:
    """A workspace of coit-uma's that is not under her home."""
    path = Path(tempfile.mkdtemp(prefix="coit-um-", dir="/tmp"))
    os.chown(path, uma.uid, uma.gid)
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_workspace_outside_home_is_refused_clearly(
    coi_a: UserCoi, uma: UnixUser, outside_ws: Path, no_leftovers: None
) -> None:
    outside = outside_ws
    result = coi_a("run", "-w", str(outside), "--", "true")
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert result.stderr.startswith("coi: error: "), result.stderr
    assert "restricted.devices.disk.paths" in result.stderr
    assert str(uma.home) in result.stderr
    # A symlink in the home that leads out is refused too.
    link = uma.home / f"um-link-{os.getpid()}"
    link.symlink_to(outside)
    try:
        result = coi_a("run", "-w", str(link), "--", "true")
    finally:
        link.unlink()
    assert result.returncode == 1
    assert "restricted.devices.disk.paths" in result.stderr


def test_build_goes_into_the_users_project(
    coi_a: UserCoi, uma: UnixUser, ws_a: Path, no_leftovers: None
) -> None:
    alias = f"{PREFIX}img-{uma.uid}"
    script = ws_a / "build.sh"
    script.write_text("#!/bin/sh\nset -e\necho built-by-uma > /etc/coi-um-marker\n")
    try:
        built = coi_a("build", "custom", alias, "--base", "coi-base", "--script", str(script))
        assert built.returncode == 0, built.stderr
        assert image_fingerprint(alias, project_of(uma))
        assert image_fingerprint(alias, "default") == ""
        run = coi_a("run", "-w", str(ws_a), "--image", alias, "--", "cat", "/etc/coi-um-marker")
        assert run.returncode == 0, run.stderr
        assert run.stdout == "built-by-uma\n"
    finally:
        fp = image_fingerprint(alias, project_of(uma))
        if fp:
            sh("incus", "image", "delete", "--project", project_of(uma), fp)


def test_extra_mounts_follow_the_same_rule(
    coi_a: UserCoi, uma: UnixUser, ws_a: Path, outside_ws: Path, no_leftovers: None
) -> None:
    data = ws_a.parent / f"{ws_a.name}-data"
    data.mkdir()
    try:
        (data / "marker").write_text("from-home\n")
        os.chown(data, uma.uid, uma.gid)
        mount = f"{data}:/data:ro"
        ok = coi_a("run", "-w", str(ws_a), "--mount", mount, "--", "cat", "/data/marker")
        assert ok.returncode == 0, ok.stderr
        assert ok.stdout == "from-home\n"
    finally:
        shutil.rmtree(data, ignore_errors=True)
    refused = coi_a("run", "-w", str(ws_a), "--mount", f"{outside_ws}:/data", "--", "true")
    assert refused.returncode == 1
    assert "restricted.devices.disk.paths" in refused.stderr
    assert "Traceback" not in refused.stderr
