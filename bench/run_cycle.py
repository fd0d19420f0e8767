#!/usr/bin/env python3
"""Measure `coi run -- true` against a bare Incus cycle measured in the same run.

Baseline: the `incus` CLI doing what `coi run` does at minimum (launch an ephemeral container
from the same image with the workspace disk, exec `true`, delete). Subject: `coi run -- true`
end to end (config, slot choice, idmap plan, network wait, exec websockets, teardown).
Both alternate, so drift on the host affects them alike. Output: JSON on stdout (and in
bench/results/run_cycle.json), with medians, p90 and the ratio subject / baseline.

Usage: bench/run_cycle.py [--iterations N] [--image coi] [--no-wait-network]
Run as a user who may use Incus (root works); needs the image (coi build).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def timed(argv: list[str], env: dict[str, str] | None = None) -> float:
    start = time.perf_counter()
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    return time.perf_counter() - start


def baseline_cycle(image: str, workspace: Path, n: int) -> float:
    name = f"coi-bench-base-{os.getpid()}-{n}"
    start = time.perf_counter()
    quiet = {"check": True, "stdout": subprocess.DEVNULL}
    subprocess.run(["incus", "init", image, name, "--ephemeral", "-q"], **quiet)  # type: ignore[call-overload]
    subprocess.run(
        [
            "incus",
            "config",
            "device",
            "add",
            name,
            "workspace",
            "disk",
            f"source={workspace}",
            "path=/workspace",
            "shift=true",
        ],
        **quiet,  # type: ignore[call-overload]
    )
    subprocess.run(["incus", "start", name], **quiet)  # type: ignore[call-overload]
    subprocess.run(
        ["incus", "exec", name, "--user", "1000", "--cwd", "/workspace", "--", "true"], check=True
    )
    subprocess.run(["incus", "delete", "--force", name], check=True)
    return time.perf_counter() - start


def summary(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    return {
        "median_s": round(statistics.median(ordered), 4),
        "p90_s": round(ordered[min(len(ordered) - 1, int(len(ordered) * 0.9))], 4),
        "min_s": round(ordered[0], 4),
        "n": len(ordered),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=5)
    parser.add_argument("--image", default="coi")
    parser.add_argument("--no-wait-network", action="store_true")
    args = parser.parse_args()
    coi = shutil.which("coi") or str(Path(sys.executable).with_name("coi"))
    workspace = Path(tempfile.mkdtemp(prefix="coi-bench-"))
    env = {**os.environ, "COI_CONTAINER_PREFIX": "coi-bench-"}
    argv = [coi, "run", "-w", str(workspace), "--image", args.image]
    if args.no_wait_network:
        argv.append("--no-wait-network")
    argv += ["--", "true"]
    base: list[float] = []
    subject: list[float] = []
    try:
        for i in range(args.iterations):
            base.append(baseline_cycle(args.image, workspace, i))
            subject.append(timed(argv, env))
    finally:
        shutil.rmtree(workspace, ignore_errors=True)
    result = {
        "benchmark": "run_cycle",
        "baseline": {"what": "incus launch --ephemeral + exec true + delete", **summary(base)},
        "subject": {"what": " ".join(["coi", *argv[1:]]), **summary(subject)},
        "ratio_median": round(statistics.median(subject) / statistics.median(base), 3),
        "wait_network": not args.no_wait_network,
    }
    out = Path(__file__).with_name("results")
    out.mkdir(exist_ok=True)
    (out / "run_cycle.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
