"""Two incus-user users on one host: neither sees nor touches the other's containers.

coit-uma keeps a sandbox running; coit-umb tries to list, exec into and delete it through
Incus (incus-user socket), to mount uma's workspace, and to have coi-helper describe it.
"""

from __future__ import annotations

import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from usermode_harness import (
    PREFIX,
    UnixUser,
    UserCoi,
    instance_names,
    project_of,
    wait_for_instance,
)

from coi.launcher.session.naming import workspace_hash

pytestmark = pytest.mark.integration

DESCRIBE = """
import json, sys
from coi.launcher.helper_client import HelperClient, HelperNotOwner, HelperRequestError
name, project = sys.argv[1:3]
try:
    with HelperClient() as client:
        info = client.describe_instance(name, project)
    print(json.dumps({"ok": True, "project": info.project, "status": info.status}))
except HelperNotOwner as exc:
    print(json.dumps({"ok": False, "error": "NotOwner", "message": str(exc)}))
except HelperRequestError as exc:
    print(json.dumps({"ok": False, "error": "Request", "message": str(exc)}))
"""


@pytest.fixture
def uma_sandbox(coi_a: UserCoi, uma: UnixUser, ws_a: Path, no_leftovers: None) -> Iterator[str]:
    """A running `coi run` of coit-uma's; interrupted (and checked gone) afterwards."""
    proc = coi_a.popen("run", "-w", str(ws_a), "--", "sleep", "300")
    try:
        name = wait_for_instance(project_of(uma), PREFIX + workspace_hash(ws_a))
        yield name
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            _, err = proc.communicate(timeout=90)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
    assert proc.returncode == 130, err
    assert instance_names(project_of(uma), name) == []


def test_other_user_cannot_see_or_touch_the_container(
    coi_b: UserCoi, uma: UnixUser, umb: UnixUser, uma_sandbox: str
) -> None:
    name = uma_sandbox
    own = coi_b.incus("list", "--format", "csv", "--columns", "n")
    assert own.returncode == 0, own.stderr
    assert name not in own.stdout.split()
    for args in (
        ("list", "--project", project_of(uma), "--format", "csv"),
        ("exec", "--project", project_of(uma), name, "--", "true"),
        ("delete", "--force", "--project", project_of(uma), name),
        ("exec", name, "--", "true"),
        ("delete", "--force", name),
    ):
        result = coi_b.incus(*args)
        assert result.returncode != 0, (args, result.stdout)
    assert instance_names(project_of(uma), name) == [name]


def test_helper_refuses_the_other_users_container(
    coi_a: UserCoi, coi_b: UserCoi, uma: UnixUser, umb: UnixUser, uma_sandbox: str
) -> None:
    name = uma_sandbox
    mine = coi_a.python(DESCRIBE, name, project_of(uma))
    assert mine == {"ok": True, "project": project_of(uma), "status": "Running"}
    theirs = coi_b.python(DESCRIBE, name, project_of(uma))
    assert theirs["ok"] is False and theirs["error"] == "NotOwner", theirs
    assert str(umb.uid) in theirs["message"]
    # In umb's own project the name does not exist.
    missing = coi_b.python(DESCRIBE, name, project_of(umb))
    assert missing["ok"] is False and missing["error"] == "Request", missing


def test_each_user_runs_in_their_own_project(
    coi_b: UserCoi, uma: UnixUser, umb: UnixUser, ws_b: Path, uma_sandbox: str
) -> None:
    result = coi_b("run", "-w", str(ws_b), "--", "sh", "-c", "hostname; id -u; touch made")
    assert result.returncode == 0, result.stderr
    name, uid = result.stdout.split()
    assert uid == "1000"
    assert name.startswith(PREFIX + workspace_hash(ws_b))
    assert (ws_b / "made").stat().st_uid == umb.uid
    assert uma_sandbox in instance_names(project_of(uma))


def test_other_users_workspace_is_refused(
    coi_b: UserCoi, uma: UnixUser, ws_a: Path, no_leftovers: None
) -> None:
    result = coi_b("run", "-w", str(ws_a), "--", "true")
    assert result.returncode == 1
    assert "restricted.devices.disk.paths" in result.stderr
    assert instance_names(project_of(uma)) == []
