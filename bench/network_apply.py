"""Benchmark of the network engine: apply latency and its scaling with the number of containers.

Runs as root in a network namespace of its own (`coit-net-bench`, with a bridge and gateway),
so the host's firewall is never touched. Prints one JSON document:

- `apply_latency`: p50/p99 (ms) of re-applying one container's policy, per mode and backend;
- `scaling`: for 1..200 installed containers, the p50 (ms) of applying one more policy, of
  re-applying one, of reading one container's counters and of listing all policies; then one
  `reconcile` that drops half of them (a helper start after containers vanished);
- `ratios`: each scaling figure divided by the same figure at 1 container (the baseline
  measured in this run), and the command backend against the in-process one.

    python bench/network_apply.py [--sizes 1,10,50,100,200] [--repeat 30] [--out FILE]
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from coi.helper.network import (
    ContainerKey,
    NetworkEngine,
    NetworkTarget,
    Upstream,
    parse_policy,
)
from coi.helper.network.nft import LibNftables, NftBackend, NftCommand

NS = "coit-net-bench"
BRIDGE = "br0"
GW4, GW6 = ipaddress.IPv4Address("10.88.0.1"), ipaddress.IPv6Address("fd88::1")
POLICIES = {
    "restricted": {"mode": "restricted", "allowed_ports": [80, 443]},
    "allowlist": {
        "mode": "allowlist",
        "allowlist": [
            {"target": "registry.example.org"},
            {"target": "*.cdn.example.net", "ports": [443]},
            {"target": "203.0.113.0/24", "ports": [22]},
        ],
    },
    "open": {"mode": "open"},
    "blocked": {"mode": "blocked"},
}


def target(i: int) -> NetworkTarget:
    """Container i; its veth need not exist (policies are applied before start)."""
    return NetworkTarget(ContainerKey("bench", f"c{i}"), f"vb{i}", BRIDGE, GW4, GW6)


def timed(fn: Callable[[], Any], repeat: int) -> list[float]:
    """Wall-clock milliseconds of `repeat` calls."""
    out = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        out.append((time.perf_counter() - start) * 1000)
    return out


def summary(samples: list[float]) -> dict[str, float]:
    """p50 / p99 / mean of millisecond samples."""
    ordered = sorted(samples)
    p99 = ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]
    return {
        "p50_ms": round(statistics.median(ordered), 3),
        "p99_ms": round(p99, 3),
        "mean_ms": round(statistics.fmean(ordered), 3),
        "n": len(ordered),
    }


def make_engine(workdir: Path, backend: NftBackend) -> NetworkEngine:
    """A fresh engine with its own state; a dummy upstream (no query is ever made)."""
    state = Path(tempfile.mkdtemp(dir=workdir))
    return NetworkEngine(
        state / "state",
        state / "run",
        backend=backend,
        upstreams=(Upstream(ipaddress.IPv4Address("198.18.0.53")),),
    )


def bench_latency(workdir: Path, repeat: int) -> dict[str, Any]:
    """Re-apply latency of one container, per backend and mode."""
    result: dict[str, Any] = {}
    for backend in (LibNftables(), NftCommand()):
        per_mode: dict[str, Any] = {}
        for mode, raw in POLICIES.items():
            engine = make_engine(workdir, backend)
            policy = parse_policy(raw)
            engine.apply(target(0), policy)
            per_mode[mode] = summary(
                timed(lambda e=engine, p=policy: e.apply(target(0), p), repeat)
            )
            engine.remove_all()
        result[backend.name] = per_mode
    return result


def bench_scaling(workdir: Path, sizes: list[int], repeat: int) -> dict[str, Any]:
    """Apply / re-apply / counters / list p50 with n containers installed."""
    engine = make_engine(workdir, LibNftables())
    policy = parse_policy(POLICIES["restricted"])
    installed = 0
    rows = {}
    for n in sizes:
        while installed < n:
            engine.apply(target(installed), policy)
            installed += 1
        probe = n + 10_000
        add_samples = []
        for _ in range(repeat):
            start = time.perf_counter()
            engine.apply(target(probe), policy)
            add_samples.append((time.perf_counter() - start) * 1000)
            engine.remove(target(probe).key)
        rows[str(n)] = {
            "apply_new": summary(add_samples),
            "reapply": summary(timed(lambda: engine.apply(target(0), policy), repeat)),
            "read_counters": summary(timed(lambda: engine.read_counters(target(0).key), repeat)),
            "list_policies": summary(timed(engine.list_policies, max(3, repeat // 5))),
        }
    # Helper start after half the containers vanished: one reconcile pass.
    keep = [target(i).key for i in range(installed // 2)]
    start = time.perf_counter()
    report = engine.reconcile(keep)
    rows["reconcile"] = {
        "installed": installed,
        "removed": len(report.removed),
        "ms": round((time.perf_counter() - start) * 1000, 3),
    }
    engine.remove_all()
    return rows


def ratios(scaling: dict[str, Any], latency: dict[str, Any]) -> dict[str, Any]:
    """Scaling figures against the 1-container baseline; command backend against libnftables."""
    sizes = {n: row for n, row in scaling.items() if n != "reconcile"}
    first = next(iter(sizes.values()))
    by_size = {
        n: {k: round(row[k]["p50_ms"] / first[k]["p50_ms"], 2) for k in row}
        for n, row in sizes.items()
    }
    backends = {
        mode: round(latency["command"][mode]["p50_ms"] / latency["libnftables"][mode]["p50_ms"], 2)
        for mode in POLICIES
    }
    return {"vs_first_size_p50": by_size, "command_vs_libnftables_p50": backends}


def inside(args: argparse.Namespace) -> dict[str, Any]:
    """The measurements; runs inside the bench namespace."""
    sizes = [int(s) for s in args.sizes.split(",")]
    with tempfile.TemporaryDirectory(prefix="coit-net-bench-") as tmp:
        workdir = Path(tmp)
        latency = bench_latency(workdir, args.repeat)
        scaling = bench_scaling(workdir, sizes, args.repeat)
    return {
        "benchmark": "network_apply",
        "host": {
            "kernel": platform.release(),
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "nft": subprocess.run(
                ["nft", "--version"], capture_output=True, text=True
            ).stdout.strip(),
        },
        "repeat": args.repeat,
        "apply_latency": latency,
        "scaling": scaling,
        "ratios": ratios(scaling, latency),
    }


def setup() -> None:
    """The namespace with a bridge and its gateway addresses."""
    teardown()
    for cmd in (
        ["ip", "netns", "add", NS],
        ["ip", "-n", NS, "link", "set", "lo", "up"],
        ["ip", "-n", NS, "link", "add", BRIDGE, "type", "bridge"],
        ["ip", "-n", NS, "link", "set", BRIDGE, "up"],
        ["ip", "-n", NS, "addr", "add", f"{GW4}/24", "dev", BRIDGE],
        ["ip", "-n", NS, "addr", "add", f"{GW6}/64", "dev", BRIDGE, "nodad"],
    ):
        subprocess.run(cmd, check=True)


def teardown() -> None:
    """Delete the namespace (whatever the engine left in it goes with it)."""
    if Path(f"/run/netns/{NS}").exists():
        for pid in subprocess.run(
            ["ip", "netns", "pids", NS], capture_output=True, text=True
        ).stdout.split():
            os.kill(int(pid), 15)
        subprocess.run(["ip", "netns", "del", NS], check=False)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1,10,50,100,200")
    parser.add_argument("--repeat", type=int, default=30)
    parser.add_argument("--out", help="also write the JSON here")
    parser.add_argument("--inside", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.inside:
        print(json.dumps(inside(args)))
        return 0
    if os.geteuid() != 0 or shutil.which("nft") is None:
        print("network_apply needs root and nft", file=sys.stderr)
        return 2
    setup()
    try:
        proc = subprocess.run(
            [
                "ip",
                "netns",
                "exec",
                NS,
                sys.executable,
                __file__,
                "--inside",
                "--sizes",
                args.sizes,
                "--repeat",
                str(args.repeat),
            ],
            capture_output=True,
            text=True,
        )
    finally:
        teardown()
    if proc.returncode != 0:
        print(proc.stderr, file=sys.stderr)
        return proc.returncode
    result = json.loads(proc.stdout)
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
