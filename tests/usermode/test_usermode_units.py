"""Unit tests of the restricted-project checks (no Incus needed)."""

from __future__ import annotations

import os
import pwd
import re
from pathlib import Path

import pytest

from coi.launcher.errors import WorkspaceError
from coi.launcher.session.idmap import check_restricted_disk_path, plan_workspace_mount


def test_paths_under_an_allowed_path_pass(tmp_path: Path) -> None:
    home = tmp_path / "home" / "u"
    (home / "src" / "app").mkdir(parents=True)
    check_restricted_disk_path(home, 1234, [str(home)])
    check_restricted_disk_path(home / "src" / "app", 1234, [str(home)])
    check_restricted_disk_path(home / "src", 1234, ["/elsewhere", str(home) + "/"])


@pytest.mark.parametrize("other", ["u2", "u-other", "u.bak"])
def test_a_sibling_with_the_same_prefix_is_outside(tmp_path: Path, other: str) -> None:
    home = tmp_path / "u"
    sibling = tmp_path / other
    home.mkdir()
    sibling.mkdir()
    with pytest.raises(WorkspaceError, match=r"restricted\.devices\.disk\.paths") as err:
        check_restricted_disk_path(sibling, 1234, [str(home)])
    assert "user-1234" in str(err.value)
    assert err.value.hint and "home" in err.value.hint


def test_a_symlink_leading_out_is_outside(tmp_path: Path) -> None:
    home = tmp_path / "home"
    out = tmp_path / "out"
    home.mkdir()
    out.mkdir()
    (home / "link").symlink_to(out)
    with pytest.raises(WorkspaceError, match=r"-> .*out"):
        check_restricted_disk_path(home / "link", 1234, [str(home)])


def test_dot_dot_cannot_climb_out(tmp_path: Path) -> None:
    home = tmp_path / "home"
    (home / "a").mkdir(parents=True)
    (tmp_path / "b").mkdir()
    with pytest.raises(WorkspaceError):
        check_restricted_disk_path(home / "a" / ".." / ".." / "b", 1234, [str(home)])


def test_no_allowed_path_refuses_everything(tmp_path: Path) -> None:
    with pytest.raises(WorkspaceError, match="no path at all"):
        check_restricted_disk_path(tmp_path, 1234, [])


def test_default_is_the_users_home() -> None:
    home = Path(pwd.getpwuid(os.getuid()).pw_dir)
    check_restricted_disk_path(home, os.getuid())
    with pytest.raises(WorkspaceError, match=re.escape(str(home))):
        check_restricted_disk_path(Path("/"), os.getuid())


def test_plan_checks_only_restricted_projects(tmp_path: Path) -> None:
    def plan(restricted: bool) -> str:
        return plan_workspace_mount(
            tmp_path,
            host_uid=1234,
            host_gid=1234,
            code_uid=1000,
            restricted_project=restricted,
            idmapped_mounts=True,
            allowed_disk_paths=[str(tmp_path / "home")],
        ).method

    assert plan(False) == "raw.idmap"
    with pytest.raises(WorkspaceError):
        plan(True)


def test_the_error_names_what_was_refused(tmp_path: Path) -> None:
    with pytest.raises(WorkspaceError, match=r"^mount source .* is outside") as err:
        check_restricted_disk_path(tmp_path, 1234, ["/nowhere"], what="mount source")
    assert err.value.hint and err.value.hint.startswith("put the mount source under")


def test_a_linked_home_still_allows_its_own_tree(tmp_path: Path) -> None:
    real_home = tmp_path / "data" / "u"
    (real_home / "ws").mkdir(parents=True)
    (tmp_path / "home").symlink_to(tmp_path / "data")
    linked = tmp_path / "home" / "u"
    check_restricted_disk_path(linked / "ws", 1234, [str(linked)])
    # The resolved path is not the allowed path as written: Incus refuses that form too.
    with pytest.raises(WorkspaceError):
        check_restricted_disk_path(real_home / "ws", 1234, [str(linked)])
