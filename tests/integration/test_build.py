"""`coi build`: the real image, custom builds, and failures that leave nothing behind."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import pytest
from run_harness import Coi, incus_names, sh

pytestmark = pytest.mark.integration


def images() -> set[str]:
    out = json.loads(sh("incus", "image", "list", "--format", "json").stdout)
    return {a["name"] for image in out for a in image.get("aliases") or []}


def image_count() -> int:
    return len(json.loads(sh("incus", "image", "list", "--format", "json").stdout))


@pytest.mark.usefixtures("coi_image")
@pytest.mark.parametrize(
    "cli", [["claude", "--version"], ["opencode", "--version"], ["codex", "--version"]]
)
def test_agent_clis_run_in_the_coi_image(
    coi: Coi, workspace: Path, no_leftovers: None, cli: list[str]
) -> None:
    result = coi("run", "-w", str(workspace), "--", *cli)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip()


@pytest.mark.usefixtures("coi_image")
def test_coi_image_has_the_promised_tools(coi: Coi, workspace: Path, no_leftovers: None) -> None:
    result = coi(
        "run",
        "-w",
        str(workspace),
        "--",
        "sh",
        "-c",
        "tmux -V && git --version && curl --version >/dev/null && node --version && "
        "npm --version && cc --version >/dev/null && make --version >/dev/null && "
        "sudo -n true && echo sudo-ok",
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().endswith("sudo-ok")


def test_custom_build_then_run(
    coi: Coi, workspace: Path, tmp_path: Path, no_leftovers: None
) -> None:
    alias = "coi-test-custom-ok"
    script = tmp_path / "ok.sh"
    script.write_text("#!/bin/sh\nset -e\necho custom-marker > /etc/coi-test-marker\n")
    script.chmod(0o644)
    try:
        built = sh(
            str(Path(coi.argv([])[-1])),
            "build",
            "custom",
            alias,
            "--script",
            str(script),
            "--base",
            "coi-base",
            "--format",
            "json",
            check=False,
        )
        assert built.returncode == 0, built.stderr
        report = json.loads(built.stdout)
        assert report["alias"] == alias and report["built"] is True
        again = sh(
            str(Path(coi.argv([])[-1])),
            "build",
            "custom",
            alias,
            "--script",
            str(script),
            "--base",
            "coi-base",
            "--format",
            "json",
            check=False,
        )
        assert json.loads(again.stdout)["built"] is False
        run = coi(
            "run", "-w", str(workspace), "--image", alias, "--", "cat", "/etc/coi-test-marker"
        )
        assert run.stdout.strip() == "custom-marker", run.stderr
    finally:
        sh("incus", "image", "delete", alias, check=False)
    assert not incus_names("coi-build-coi-test-custom")


def test_failing_build_leaves_no_image_and_no_container(tmp_path: Path, coi: Coi) -> None:
    alias = "coi-test-custom-bad"
    script = tmp_path / "bad.sh"
    script.write_text("#!/bin/sh\necho about-to-fail\nexit 3\n")
    before = image_count()
    result = sh(
        coi.argv([])[-1],
        "build",
        "custom",
        alias,
        "--script",
        str(script),
        "--base",
        "coi-base",
        check=False,
    )
    assert result.returncode == 1
    assert "failed with exit code 3" in result.stderr
    assert "about-to-fail" in result.stderr  # the log's tail is shown
    assert alias not in images()
    assert image_count() == before
    assert not incus_names("coi-build-coi-test-custom-bad")


def test_interrupted_build_leaves_nothing(tmp_path: Path, coi: Coi) -> None:
    import subprocess

    alias = "coi-test-custom-int"
    script = tmp_path / "slow.sh"
    script.write_text("#!/bin/sh\necho '==> sleeping'\nsleep 120\n")
    before = image_count()
    proc = subprocess.Popen(
        [coi.argv([])[-1], "build", "custom", alias, "--script", str(script), "--base", "coi-base"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 60
    while not incus_names("coi-build-coi-test-custom-int") and time.monotonic() < deadline:
        time.sleep(0.2)
    time.sleep(3)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert not incus_names("coi-build-coi-test-custom-int")
    assert alias not in images()
    assert image_count() == before


def test_missing_base_image_is_explained(tmp_path: Path, coi: Coi) -> None:
    script = tmp_path / "x.sh"
    script.write_text("true\n")
    result = sh(
        coi.argv([])[-1],
        "build",
        "custom",
        "coi-test-x",
        "--script",
        str(script),
        "--base",
        "no-such-base",
        check=False,
    )
    assert result.returncode == 1
    assert "base image 'no-such-base' not found" in result.stderr


def test_missing_script_is_explained(coi: Coi, tmp_path: Path) -> None:
    result = sh(
        coi.argv([])[-1],
        "build",
        "custom",
        "coi-test-x",
        "--script",
        str(tmp_path / "missing.sh"),
        check=False,
    )
    assert result.returncode == 1
    assert "cannot read build script" in result.stderr
