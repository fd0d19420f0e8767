"""Resource limits in a real container: memory enforced, run time stops the container."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hostint_harness import config_for, started_sandbox, wait_gone

from coi.launcher.incus.client import IncusClient
from coi.launcher.session.hostint_timer import (
    KEY_DEADLINE,
    KEY_TIMER_PID,
    cancel_duration_timer,
)

pytestmark = pytest.mark.integration

ALLOC = (
    "python3 -c 'import sys; b = bytearray({mib} * 2**20); "
    'b[::4096] = b"x" * len(b[::4096]); print("allocated")\''
)


def test_memory_limit_is_enforced(client: IncusClient, host_ws: Path) -> None:
    config = config_for(
        host_ws,
        {
            "limits.memory": "128MiB",
            "limits.memory_swap": "false",
            "limits.processes": "200",
            "limits.cpu": "1",
            "limits.disk_write": "50MiB",
        },
    )
    with started_sandbox(client, host_ws, config) as box:
        meta = client.get(f"instances/{box.name}")
        assert meta["config"]["limits.memory"] == f"{128 * 2**20}B"
        assert meta["config"]["limits.memory.swap"] == "false"
        assert meta["config"]["limits.processes"] == "200"
        assert meta["devices"]["root"]["limits.write"] == f"{50 * 2**20}B"
        code, out, err = box.as_code(ALLOC.format(mib=32))
        assert code == 0 and "allocated" in out, out + err
        code, out, err = box.as_code(ALLOC.format(mib=400))
        assert code != 0 and "allocated" not in out, (code, out, err)
        assert any("memory: 128 MiB" in line for line in box.plan.describe())


def _timer_alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return b"hostint_timer" in f.read()
    except OSError:
        return False


def test_duration_stops_the_container(
    client: IncusClient, host_ws: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    config = config_for(host_ws, {"limits.duration": "20s"})
    with started_sandbox(client, host_ws, config) as box:
        started = time.monotonic()
        info = client.instance(box.name)
        assert info is not None
        pid = int(info.config[KEY_TIMER_PID])
        assert int(info.config[KEY_DEADLINE]) - time.time() == pytest.approx(20, abs=3)
        # Less than a minute: the warning comes at once, inside and on the launcher's stderr.
        deadline = time.monotonic() + 10
        warning = ""
        while time.monotonic() < deadline and "run-time limit" not in warning:
            time.sleep(0.5)
            _, warning, _ = box.as_code("cat ~/COI_TIME_LIMIT 2>/dev/null; true")
        assert "run-time limit" in warning
        assert "run-time limit" in capfd.readouterr().err
        elapsed = time.monotonic() - started + wait_gone(client, box.name, 60)
        assert 15 <= elapsed <= 35, elapsed
        # The timer ends with the container.
        for _ in range(20):
            if not _timer_alive(pid):
                break
            time.sleep(0.5)
        assert not _timer_alive(pid)


def test_duration_timer_survives_the_launcher_and_can_be_cancelled(
    client: IncusClient, host_ws: Path
) -> None:
    config = config_for(host_ws, {"limits.duration": "15s"})
    with started_sandbox(client, host_ws, config) as box:
        info = client.instance(box.name)
        assert info is not None
        pid = int(info.config[KEY_TIMER_PID])
        # Detached: its own session, not a child process group of ours.
        assert os.getsid(pid) == pid
        cancel_duration_timer(client, box.name)
        time.sleep(20)
        info = client.instance(box.name)
        assert info is not None and info.running
        assert KEY_DEADLINE not in info.config
        assert not _timer_alive(pid)


DRIVER = """
import os, sys
from pathlib import Path
from coi.launcher.incus.client import IncusClient
from coi.launcher.progress import Progress
from coi.launcher.session.hostint import GitIdentity, plan_for_client
from coi.launcher.session.phases import Teardown
from coi.launcher.session.sandbox import SandboxRequest, open_sandbox
from hostint_harness import config_for

ws = Path(sys.argv[1])
client = IncusClient.connect()
plan = plan_for_client(client, config_for(ws, {"limits.duration": "15s"}), ws, warnings=[],
                       environ={}, git_identity=GitIdentity())
request = SandboxRequest(workspace=ws, persistent=True, devices=plan.devices, config=plan.config,
                         before_start=plan.before_start, after_start=plan.after_start,
                         wait_for_network=0)
sandbox = open_sandbox(client, request, Teardown(), Progress(enabled=False))
print(sandbox.name)
os._exit(0)  # the launcher is gone at once: no teardown, no timer thread
"""


def test_duration_outlives_the_launcher(client: IncusClient, host_ws: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parent)}
    started = time.monotonic()
    out = subprocess.run(
        [sys.executable, "-c", DRIVER, str(host_ws)],
        check=True,
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    name = out.stdout.strip().splitlines()[-1]
    try:
        info = client.instance(name)
        assert info is not None and info.running
        elapsed = time.monotonic() - started + wait_gone(client, name, 60)
        assert 10 <= elapsed <= 35, elapsed
        info = client.instance(name)
        assert info is not None and info.status == "Stopped"  # persistent: stopped, kept
    finally:
        client.remove_instance(name)
