"""Validation of -e/--env and of the workspace argument."""

from pathlib import Path

import pytest

from coi.launcher.errors import UsageError, WorkspaceError
from coi.launcher.session.sandbox import parse_env, resolve_workspace


def test_env_pairs_parse() -> None:
    assert parse_env(["A=1", "B_2=x=y", "EMPTY="]) == {"A": "1", "B_2": "x=y", "EMPTY": ""}


@pytest.mark.parametrize("bad", ["NOEQUALS", "=v", "1A=x", "A-B=x", "A B=x", "A=\0"])
def test_invalid_env_is_a_usage_error_naming_it(bad: str) -> None:
    with pytest.raises(UsageError) as err:
        parse_env(["OK=1", bad])
    assert repr(bad) in str(err.value)
    assert err.value.exit_code == 2


def test_workspace_missing(tmp_path: Path) -> None:
    with pytest.raises(WorkspaceError, match="does not exist"):
        resolve_workspace(tmp_path / "nope")


def test_workspace_is_a_file(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("x")
    with pytest.raises(WorkspaceError, match="is not a directory"):
        resolve_workspace(tmp_path / "f")


def test_workspace_is_made_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert resolve_workspace(Path(".")) == tmp_path
