"""Choosing shift=true or raw.idmap for the workspace mount."""

from pathlib import Path

import pytest

from coi.launcher.errors import SessionError
from coi.launcher.session import idmap
from coi.launcher.session.idmap import plan_workspace_mount

WS = Path("/home/u/project")


def plan(
    uid: int, gid: int = 100, restricted: bool = False, idmapped: bool = True
) -> idmap.WorkspaceMount:
    return plan_workspace_mount(
        WS,
        host_uid=uid,
        host_gid=gid,
        code_uid=1000,
        restricted_project=restricted,
        idmapped_mounts=idmapped,
        allowed_disk_paths=["/home/u"],
    )


def test_same_uid_on_admin_socket_uses_shift() -> None:
    mount = plan(1000)
    assert mount.method == "shift"
    assert mount.device == {
        "type": "disk",
        "source": str(WS),
        "path": "/workspace",
        "shift": "true",
    }
    assert mount.config == {}


def test_other_uid_maps_the_user_onto_code() -> None:
    mount = plan(1234, 555)
    assert mount.method == "raw.idmap"
    assert "shift" not in mount.device
    assert mount.config == {"raw.idmap": "uid 1234 1000\ngid 555 1000"}


def test_restricted_project_never_uses_shift() -> None:
    assert plan(1000, restricted=True).method == "raw.idmap"


def test_no_idmapped_mounts_falls_back_to_raw_idmap() -> None:
    assert plan(1000, idmapped=False).method == "raw.idmap"


def test_root_gets_shift_with_a_warning_and_is_never_mapped() -> None:
    mount = plan(0, 0)
    assert mount.method == "shift" and "raw.idmap" not in mount.config
    assert "root" in mount.warning
    with pytest.raises(SessionError):
        plan(0, 0, restricted=True)


def test_delegation_check_reads_ranges(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    subuid = tmp_path / "subuid"
    subgid = tmp_path / "subgid"
    subuid.write_text("root:1000000:1000000000\nroot:1234:1\n")
    subgid.write_text("root:1000000:1000000000\n")
    real = idmap._delegated

    def fake(path: str, owner: str, ident: int) -> bool:
        return real(str(subuid if path.endswith("subuid") else subgid), owner, ident)

    monkeypatch.setattr(idmap, "_delegated", fake)
    with pytest.raises(SessionError, match="root:555:1 in /etc/subgid") as err:
        idmap.check_idmap_delegation(1234, 555)
    assert "subuid" not in str(err.value)
    subgid.write_text("root:500:100\n")
    idmap.check_idmap_delegation(1234, 555)
