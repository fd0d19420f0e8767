"""`coi run`'s path for an unprivileged user: flags → config → host integration → container.

Runs `run_options.sandbox_request` + `run_command` (what `coi run` calls) as the real user
`coit-run` (raw.idmap ownership mapping, no root anywhere on the host side).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
from hostint_harness import COI, HelperProcess, UnixUser, as_user, helper_dir, unix_user

pytestmark = pytest.mark.integration

DRIVER = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from coi.launcher.cli.run_options import HostFlags, sandbox_request
    from coi.launcher.incus.client import IncusClient
    from coi.launcher.session.run import run_command

    ws, data, script = sys.argv[1:4]
    client = IncusClient.connect()
    flags = HostFlags(
        forward_env=["COIT_FWD"],
        env=["COIT_SET=1"],
        mounts=[data + ":/data:ro"],
        limit_memory="256MiB",
    )
    request, plan = sandbox_request(client, Path(ws), flags, wait_for_network=0)
    for line in plan.describe():
        print("DESCRIBE " + line, file=sys.stderr)
    sys.exit(run_command(client, request, ["sh", "-c", script], stdin_fd=None))
    """
)

INSIDE = """
set -u
echo "uid=$(id -u) owner=$(stat -c %u README)"
echo "fwd=${COIT_FWD:-} set=${COIT_SET:-} other=${COIT_OTHER:-}"
echo "data=$(cat /data/marker)"
echo "env=$(cat .env | wc -c)"
if echo x > .git/hooks/pre-commit 2>/dev/null; then echo hook=written; else echo hook=refused; fi
if mv .git .git-moved 2>/dev/null; then echo git=moved; else echo git=kept; fi
echo made > made-inside
"""


@pytest.fixture
def user_ws() -> Iterator[tuple[UnixUser, Path, Path]]:
    user = unix_user("coit-run")
    tag = f"{os.getpid()}-{os.urandom(3).hex()}"
    ws = user.home / f"hostint-run-{tag}"
    data = user.home / f"hostint-rdata-{tag}"
    data.mkdir()
    (data / "marker").write_text("host data\n")
    subprocess.run(["git", "init", "-q", str(ws)], check=True)
    (ws / ".git/hooks/pre-commit").write_text("#!/bin/sh\n")
    (ws / "README").write_text("hi\n")
    (ws / ".env").write_text("TOKEN=secret\n")
    (ws / ".coi.toml").write_text('[security]\nsecret_paths = [".env"]\n')
    subprocess.run(["chown", "-R", f"{user.uid}:{user.gid}", str(ws), str(data)], check=True)
    try:
        yield user, ws, data
    finally:
        shutil.rmtree(ws, ignore_errors=True)
        shutil.rmtree(data, ignore_errors=True)


@pytest.fixture(scope="module")
def helper_without_stager() -> Iterator[HelperProcess]:
    """A helper that serves the network but cannot build locked workspaces."""
    helper = HelperProcess(helper_dir() / "no-stager-run", "--no-stager")
    try:
        yield helper
    finally:
        helper.stop()


def test_unprivileged_run_gets_the_host_integration(
    user_ws: tuple[UnixUser, Path, Path], helper_without_stager: HelperProcess
) -> None:
    """Without a stager in the helper: plain read-only devices, and `describe` says so
    (tests/hostint/test_helper_guard.py covers the helper's locked workspace)."""
    user, ws, data = user_ws
    python = str(Path(COI).with_name("python3"))
    extra = {
        "COIT_FWD": "forwarded",
        "COIT_OTHER": "not asked for",
        "COI_HELPER_SOCKET": helper_without_stager.socket,
    }
    argv = [
        *as_user(user, extra),
        python,
        "-c",
        DRIVER,
        str(ws),
        str(data),
        INSIDE,
    ]
    result = subprocess.run(argv, capture_output=True, text=True, cwd=ws, timeout=180)
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.split("\n")
    assert "uid=1000 owner=1000" in lines
    assert "fwd=forwarded set=1 other=" in lines
    assert "data=host data" in lines
    assert "env=0" in lines  # the secret file is hidden behind an empty one
    assert "hook=refused" in lines
    assert "git=kept" in lines
    assert (ws / ".git/hooks/pre-commit").read_text() == "#!/bin/sh\n"
    assert (ws / ".env").read_text() == "TOKEN=secret\n"
    assert (ws / "made-inside").stat().st_uid == user.uid
    assert "DESCRIBE limit: memory: 256 MiB" in result.stderr
    assert "could unmount them" in result.stderr  # the weaker guard is stated
