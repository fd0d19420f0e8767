"""An untrusted project file cannot widen the sandbox until `coi trust`, through the real CLI."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from hostint_harness import UnixUser, coi_as, started_sandbox, unix_user

from coi.launcher.config import load_config
from coi.launcher.incus.client import IncusClient

pytestmark = pytest.mark.integration


@pytest.fixture
def user_ws() -> Iterator[tuple[UnixUser, Path, Path]]:
    user = unix_user("coit-run")
    tag = f"{os.getpid()}-{os.urandom(3).hex()}"
    ws = user.home / f"hostint-ws-{tag}"
    data = user.home / f"hostint-data-{tag}"
    for path in (ws, data):
        path.mkdir()
    (data / "marker").write_text("from the host\n")
    (ws / ".coi.toml").write_text(
        f'[network]\nmode = "open"\n\n[mounts]\n'
        f'default = [{{host = "{data}", container = "/data", readonly = true}}]\n'
    )
    for path in (ws, data, ws / ".coi.toml", data / "marker"):
        os.chown(path, user.uid, user.gid)
    trust_store = user.home / ".config/coi/trusted.toml"
    saved = trust_store.read_bytes() if trust_store.exists() else None
    try:
        yield user, ws, data
    finally:
        shutil.rmtree(ws, ignore_errors=True)
        shutil.rmtree(data, ignore_errors=True)
        if saved is None:
            trust_store.unlink(missing_ok=True)
        else:
            trust_store.write_bytes(saved)


def shown(user: UnixUser, ws: Path) -> tuple[dict[str, object], str]:
    result = coi_as(user, "config", "show", "--format", "json", cwd=ws)
    assert result.returncode == 0, result.stderr
    config: dict[str, object] = json.loads(result.stdout)["config"]
    return config, result.stderr


def test_untrusted_open_network_and_mount_ignored_until_trusted(
    client: IncusClient, user_ws: tuple[UnixUser, Path, Path]
) -> None:
    user, ws, data = user_ws
    config, stderr = shown(user, ws)
    assert config["network"]["mode"] == "restricted"  # type: ignore[index]
    assert config["mounts"]["default"] == []  # type: ignore[index]
    assert "coi trust" in stderr
    # What a session of this user would get: no host mount.
    loaded = load_config(ws, profile=None, cli_overrides={}, env={"HOME": str(user.home)})
    with started_sandbox(client, ws, loaded.config) as box:
        code, out, _ = box.as_code("cat /data/marker 2>&1")
        assert code != 0 and "from the host" not in out

    result = coi_as(user, "trust", cwd=ws)
    assert result.returncode == 0, result.stderr
    config, stderr = shown(user, ws)
    assert config["network"]["mode"] == "open"  # type: ignore[index]
    assert str(data) in json.dumps(config["mounts"])
    assert "ignored" not in stderr
    loaded = load_config(ws, profile=None, cli_overrides={}, env={"HOME": str(user.home)})
    with started_sandbox(client, ws, loaded.config) as box:
        code, out, err = box.as_code("cat /data/marker && touch /data/new")
        assert "from the host" in out
        assert code != 0 and "Read-only" in err  # readonly = true is honoured too

    # Changing the file revokes the trust.
    with (ws / ".coi.toml").open("a") as f:
        f.write("# edited\n")
    config, _ = shown(user, ws)
    assert config["network"]["mode"] == "restricted"  # type: ignore[index]
