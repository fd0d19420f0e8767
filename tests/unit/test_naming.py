"""Container names, slots and prefixes."""

import hashlib
import os
from pathlib import Path

import pytest

from coi.launcher.errors import UsageError
from coi.launcher.session.naming import check_slot, container_name, container_prefix, slot_of


def test_name_is_prefix_hash_slot_compatible_with_code_on_incus(tmp_path: Path) -> None:
    digest = hashlib.sha256(os.path.abspath(tmp_path).encode()).hexdigest()[:8]
    assert container_name(tmp_path, 3, "coi-") == f"coi-{digest}-3"


def test_relative_and_absolute_paths_give_the_same_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    assert container_name(Path("."), 1, "coi-") == container_name(tmp_path, 1, "coi-")


def test_different_workspaces_differ(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    assert container_name(tmp_path / "a", 1, "coi-") != container_name(tmp_path / "b", 1, "coi-")


@pytest.mark.parametrize("slot", [-1, 11, 100])
def test_slot_out_of_range_is_a_usage_error(slot: int) -> None:
    with pytest.raises(UsageError, match=f"slot {slot} is out of range"):
        check_slot(slot)


def test_slot_zero_means_auto_only_where_allowed(tmp_path: Path) -> None:
    assert check_slot(0) == 0
    with pytest.raises(UsageError):
        container_name(tmp_path, 0, "coi-")


def test_prefix_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COI_CONTAINER_PREFIX", "coi-test-")
    assert container_prefix() == "coi-test-"
    monkeypatch.setenv("COI_CONTAINER_PREFIX", "Bad Prefix")
    with pytest.raises(UsageError, match="not a valid container name prefix"):
        container_prefix()


def test_slot_of_parses_the_suffix() -> None:
    assert slot_of("coi-0123abcd-7") == 7
    assert slot_of("coi-build-x") is None
