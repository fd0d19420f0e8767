"""Each mode's reachability matrix, from inside a stand-in container, over real nftables.

c1 is the container under policy; c2 is a neighbour on the same bridge. Every destination is
an address the lab created (tests/network/network_lab.py).
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from typing import Any

import network_lab as L
import pytest
from network_lab import LabEngine, key_of

pytestmark = pytest.mark.integration

Apply = Callable[[str, dict[str, Any]], Any]


def matrix(ns: str, cases: list[tuple[str, str]]) -> dict[tuple[str, str], bool]:
    return {(kind, addr): L.reachable(ns, kind, addr) for kind, addr in cases}


INTERNET = [
    ("tcp", L.NET4),
    ("udp", L.NET4),
    ("icmp", L.NET4),
    ("tcp", L.NET6),
    ("udp", L.NET6),
    ("icmp", L.NET6),
]
PRIVATE = [
    ("tcp", L.PRIV4),
    ("udp", L.PRIV4),
    ("icmp", L.PRIV4),
    ("tcp", L.PRIV6),
    ("icmp", L.PRIV6),
]
METADATA = [("tcp", L.META4), ("udp", L.META4), ("icmp", L.META4)]
GATEWAY = [("tcp", L.GW4), ("udp", L.GW4), ("icmp", L.GW4), ("tcp", L.GW6), ("icmp", L.GW6)]
NEIGHBOUR = [("tcp", L.C2_4), ("udp", L.C2_4), ("icmp", L.C2_4), ("tcp", L.C2_6), ("icmp", L.C2_6)]


def test_without_policy_everything_is_reachable(lab: L.Lab, engine: LabEngine) -> None:
    """The baseline: the lab itself works, so every refusal below is the policy's doing."""
    cases = INTERNET + PRIVATE + METADATA + GATEWAY + NEIGHBOUR
    result = matrix(L.C1, cases)
    assert all(result.values()), {k: v for k, v in result.items() if not v}


def test_restricted_matrix(lab: L.Lab, engine: LabEngine, apply: Apply) -> None:
    apply("c1", {"mode": "restricted"})
    result = matrix(L.C1, INTERNET)
    assert all(result.values()), result
    refused = matrix(L.C1, PRIVATE + METADATA + GATEWAY + NEIGHBOUR)
    assert not any(refused.values()), {k: v for k, v in refused.items() if v}
    # DNS to the bridge gateway is the one host service allowed (udp and tcp).
    assert L.probe(L.C1, "dns", L.GW4, "gw.test")["answers"] == [L.NET4]
    assert L.probe(L.C1, "dns", L.GW4, "gw.test", "53", "tcp")["answers"] == [L.NET4]
    counters = engine.read_counters(key_of("c1"))
    assert counters.packets_out > 0
    assert counters.packets_rejected > 0
    assert counters.packets_l2_dropped > 0  # the neighbour, refused at layer 2
    assert counters.packets_in > 0
    # The neighbour (no policy of its own) still reaches the internet.
    assert L.reachable(L.C2, "tcp", L.NET4)


def test_marks_do_not_leak_past_prerouting(lab: L.Lab, engine: LabEngine, apply: Apply) -> None:
    """Routing and other firewalls never see coi's packet marks."""
    apply("c1", {"mode": "open"})
    L.nsexec(L.RTR, "nft", "add", "table", "inet", "coit_watch")
    hook = "{ type filter hook forward priority 0; }"
    L.nsexec(L.RTR, "nft", "add", "chain", "inet", "coit_watch", "watch", hook)
    L.nsexec(
        L.RTR,
        "nft",
        "add",
        "rule",
        "inet",
        "coit_watch",
        "watch",
        "meta",
        "mark",
        "!=",
        "0",
        "counter",
    )
    try:
        assert L.reachable(L.C1, "tcp", L.NET4) and L.reachable(L.C1, "udp", L.PRIV4)
        listing = L.nsexec(L.RTR, "nft", "list", "table", "inet", "coit_watch").stdout
        assert "counter packets 0 bytes 0" in listing, listing
    finally:
        L.nsexec(L.RTR, "nft", "delete", "table", "inet", "coit_watch")


def test_restricted_allowed_ports_and_host_exceptions(
    lab: L.Lab, engine: LabEngine, apply: Apply
) -> None:
    apply(
        "c1",
        {
            "mode": "restricted",
            "allowed_ports": [L.TCP_PORT],
            "hosts": [{"target": L.PRIV4, "ports": [L.TCP_PORT], "name": "git"}],
        },
    )
    assert L.reachable(L.C1, "tcp", L.NET4)
    assert not L.probe(L.C1, "tcp", L.NET4, str(L.OTHER_PORT))["ok"]
    assert not L.reachable(L.C1, "udp", L.NET4)  # 9090 is not allowed
    assert L.reachable(L.C1, "tcp", L.PRIV4)  # the exception
    assert not L.probe(L.C1, "tcp", L.PRIV4, str(L.OTHER_PORT))["ok"]
    assert not L.reachable(L.C1, "tcp", L.PRIV6)


def test_restricted_private_networks_opt_out(lab: L.Lab, engine: LabEngine, apply: Apply) -> None:
    apply("c1", {"mode": "restricted", "block_private_networks": False})
    assert L.reachable(L.C1, "tcp", L.PRIV4)
    assert L.reachable(L.C1, "tcp", L.PRIV6)
    # Host, neighbours and metadata stay refused.
    assert not L.reachable(L.C1, "tcp", L.GW4)
    assert not L.reachable(L.C1, "tcp", L.C2_4)
    assert not L.reachable(L.C1, "tcp", L.META4)


def test_open_matrix(lab: L.Lab, engine: LabEngine, apply: Apply) -> None:
    apply("c1", {"mode": "open"})
    result = matrix(L.C1, INTERNET + PRIVATE + GATEWAY + NEIGHBOUR)
    assert all(result.values()), {k: v for k, v in result.items() if not v}
    # The metadata endpoint stays blocked unless asked for.
    assert not any(matrix(L.C1, METADATA).values())
    apply("c1", {"mode": "open", "block_metadata_endpoint": False})
    assert all(matrix(L.C1, METADATA).values())


def test_blocked_matrix_cuts_established_connections(
    lab: L.Lab, engine: LabEngine, apply: Apply
) -> None:
    apply("c1", {"mode": "restricted"})
    assert L.reachable(L.C1, "tcp", L.NET4)
    engine.quarantine(key_of("c1"))
    result = matrix(L.C1, INTERNET + PRIVATE + METADATA + GATEWAY + NEIGHBOUR)
    assert not any(result.values()), {k: v for k, v in result.items() if v}
    assert not L.probe(L.C1, "dns", L.GW4, "gw.test")["ok"]
    entry = engine.get(key_of("c1"))
    assert entry is not None and entry.policy.mode.value == "blocked" and entry.generation == 2


def test_quarantine_cuts_an_open_connection(lab: L.Lab, engine: LabEngine, apply: Apply) -> None:
    apply("c1", {"mode": "restricted"})
    holder = subprocess.Popen(
        [
            "ip",
            "netns",
            "exec",
            L.C1,
            sys.executable,
            str(L.HERE / "probe.py"),
            "hold",
            L.NET4,
            str(L.TCP_PORT),
            "1.5",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout is not None
    assert json.loads(holder.stdout.readline()) == {"connected": True}
    engine.quarantine(key_of("c1"))
    out, _ = holder.communicate(timeout=30)
    assert json.loads(out)["ok"] is False
    # The control: without quarantine, the same held connection keeps working.
    apply("c1", {"mode": "restricted"})
    assert L.probe(L.C1, "hold", L.NET4, str(L.TCP_PORT), "0.2")["ok"]


def test_policies_are_per_container(lab: L.Lab, engine: LabEngine, apply: Apply) -> None:
    apply("c1", {"mode": "blocked"})
    apply("c2", {"mode": "restricted"})
    assert not L.reachable(L.C1, "tcp", L.NET4)
    assert L.reachable(L.C2, "tcp", L.NET4)
    assert not L.reachable(L.C2, "tcp", L.PRIV4)
    assert engine.remove(key_of("c1"))
    assert L.reachable(L.C1, "tcp", L.PRIV4)
    assert not L.reachable(L.C2, "tcp", L.PRIV4)
    assert [p.to_entry() for p in engine.list_policies()] == [
        {
            "instance": "coit-net-c2",
            "project": "coit-net",
            "policy": {
                "mode": "restricted",
                "allowed_ports": [],
                "block_private_networks": True,
                "block_metadata_endpoint": True,
                "hosts": [],
            },
            "generation": 1,
            "installed": True,
            "resolver_running": False,
        }
    ]
