"""`coi-helper provision-user` makes images usable in a user's restricted project.

Images are per project in incus-user projects; provisioning copies the admin's images into
the user's project (a database record: Incus keeps one set of files), keeps them current on a
re-run, prunes copies no alias names any more, and never replaces an image the user made.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from usermode_harness import (
    HELPER_BIN,
    PREFIX,
    UnixUser,
    UserCoi,
    has_image,
    image_fingerprint,
    project_of,
    sh,
    tiny_image,
)

from coi.helper.provision import COPIED_FROM, ProvisionError, provision_user

pytestmark = pytest.mark.integration

IMAGES = Path("/var/lib/incus/images")


@pytest.fixture
def scratch() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="coit-um-img-", dir="/tmp"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def cleanup_images(uma: UnixUser) -> Iterator[list[tuple[str, str]]]:
    """(project, fingerprint) pairs to delete afterwards; aliases go with their images."""
    made: list[tuple[str, str]] = []
    yield made
    for project, fp in reversed(made):
        if has_image(fp, project):
            sh("incus", "image", "delete", "--project", project, fp, check=False)


def _properties(fp: str, project: str) -> dict[str, str]:
    out = sh("incus", "query", f"/1.0/images/{fp}?project={project}").stdout
    props: dict[str, str] = json.loads(out)["properties"]
    return props


def test_rerun_changes_nothing_and_keeps_incus_user_running(uma: UnixUser) -> None:
    result = sh(HELPER_BIN, "provision-user", uma.name)
    assert "already provisioned, nothing changed" in result.stdout, result.stdout
    assert "restarted incus-user" not in result.stdout
    for alias in ("coi-base", "coi"):
        fp = image_fingerprint(alias, "default")
        assert image_fingerprint(alias, project_of(uma)) == fp, alias
        assert _properties(fp, project_of(uma)).get(COPIED_FROM) == "default"


def test_copies_follow_the_admins_alias_and_stale_ones_are_pruned(
    uma: UnixUser, scratch: Path, cleanup_images: list[tuple[str, str]]
) -> None:
    alias = f"{PREFIX}tiny-{os.getpid()}"
    first = tiny_image(scratch, "a")
    cleanup_images.append(("default", first))
    second = tiny_image(scratch, "b")
    cleanup_images.append(("default", second))
    assert first != second
    sh("incus", "image", "alias", "create", alias, first)
    cleanup_images += [(project_of(uma), first), (project_of(uma), second)]

    copied = provision_user(uma.name, images=[alias])
    assert f"image {alias} ({first[:12]}) available in {project_of(uma)}" in copied.actions
    assert not copied.restart_incus_user
    assert image_fingerprint(alias, project_of(uma)) == first
    assert _properties(first, project_of(uma))[COPIED_FROM] == "default"
    assert not provision_user(uma.name, images=[alias]).changed

    # The admin rebuilds: the alias moves to a new image.
    sh("incus", "image", "alias", "delete", alias)
    sh("incus", "image", "alias", "create", alias, second)
    moved = provision_user(uma.name, images=[alias])
    assert image_fingerprint(alias, project_of(uma)) == second
    assert not has_image(first, project_of(uma)), "the stale copy stayed in the user's project"
    assert any("outdated copy" in a for a in moved.actions), moved.actions
    # Deleting the copy left the admin's image intact, files included.
    assert has_image(first, "default")
    assert (IMAGES / first).exists()
    # And the other way round: the admin deleting an image keeps the user's copy working.
    sh("incus", "image", "delete", second)
    assert has_image(second, project_of(uma))
    assert (IMAGES / second).exists()


def test_an_image_the_user_made_is_never_replaced(
    uma: UnixUser, coi_a: UserCoi, scratch: Path, cleanup_images: list[tuple[str, str]]
) -> None:
    alias = f"{PREFIX}own-{os.getpid()}"
    admins = tiny_image(scratch, "admin")
    cleanup_images.append(("default", admins))
    sh("incus", "image", "alias", "create", alias, admins)
    # The user imports an image of her own under the same alias, into her own project.
    own_dir = uma.home / f"um-own-{os.getpid()}"
    own_dir.mkdir()
    try:
        users_fp = tiny_image(own_dir, "user")  # as root into default, to get the files
        sh("incus", "image", "delete", users_fp)
        for f in own_dir.rglob("*"):
            os.chown(f, uma.uid, uma.gid)
        os.chown(own_dir, uma.uid, uma.gid)
        imported = coi_a.incus(
            "image",
            "import",
            str(own_dir / "user" / "meta.tar.gz"),
            str(own_dir / "user" / "rootfs.tar.gz"),
            "--alias",
            alias,
        )
        assert imported.returncode == 0, imported.stderr
    finally:
        shutil.rmtree(own_dir, ignore_errors=True)
    cleanup_images.append((project_of(uma), users_fp))
    assert image_fingerprint(alias, project_of(uma)) == users_fp

    result = provision_user(uma.name, images=[alias])
    assert image_fingerprint(alias, project_of(uma)) == users_fp
    assert not has_image(admins, project_of(uma))
    assert any("left as is" in n for n in result.notes), result.notes


def test_a_missing_image_named_explicitly_is_an_error(uma: UnixUser) -> None:
    with pytest.raises(ProvisionError, match="not found in project default"):
        provision_user(uma.name, images=[f"{PREFIX}no-such-image"])
    result = sh(HELPER_BIN, "provision-user", uma.name, "--image", f"{PREFIX}nope", check=False)
    assert result.returncode != 0
    assert f"image '{PREFIX}nope' not found" in result.stderr
    assert "Traceback" not in result.stderr


def test_health_points_a_user_without_images_to_provision_user(
    umb: UnixUser, coi_b: UserCoi
) -> None:
    fp = image_fingerprint("coi", project_of(umb))
    assert fp, "coit-umb was provisioned with the coi image"
    sh("incus", "image", "delete", "--project", project_of(umb), fp)
    try:
        report = json.loads(coi_b("health", "--format", "json").stdout)
        image = next(c for c in report["checks"] if c["name"] == "image")
        assert image["status"] == "warn", image
        assert "coi-helper provision-user" in image["hint"], image
    finally:
        sh(HELPER_BIN, "provision-user", umb.name)
    assert image_fingerprint("coi", project_of(umb)) == image_fingerprint("coi", "default")
    report = json.loads(coi_b("health", "--format", "json").stdout)
    assert next(c for c in report["checks"] if c["name"] == "image")["status"] == "ok"
