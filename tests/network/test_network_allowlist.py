"""Allowlist mode through the per-container resolver, and what root in the container can't undo."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import network_lab as L
import pytest
from network_lab import LabEngine, key_of

pytestmark = pytest.mark.integration

Apply = Callable[[str, dict[str, Any]], Any]

ALLOWLIST = {
    "mode": "allowlist",
    "allowlist": [
        {"target": "a.allowed.test"},
        {"target": "*.sub.allowed.test", "ports": [L.TCP_PORT]},
        {"target": L.STATIC4, "ports": [L.TCP_PORT]},
    ],
}


def test_allowlist_names_resolve_and_connect(lab: L.Lab, engine: LabEngine, apply: Apply) -> None:
    apply("c1", ALLOWLIST)
    # Before any lookup, the allowed name's address is not reachable: raw IPs are refused.
    assert not L.reachable(L.C1, "tcp", L.NET4)
    answer = L.probe(L.C1, "dns", L.GW4, "a.allowed.test")
    assert answer["answers"] == [L.NET4], answer
    assert L.reachable(L.C1, "tcp", L.NET4)
    assert L.reachable(L.C1, "udp", L.NET4)
    # IPv6: the AAAA answer lands in the v6 set.
    assert L.probe(L.C1, "dns6", L.GW4, "a.allowed.test")["answers"] == [L.NET6]
    assert L.reachable(L.C1, "tcp", L.NET6)
    # Wildcard: any name under sub.allowed.test, only on its port.
    assert L.probe(L.C1, "dns", L.GW4, "x.sub.allowed.test")["answers"] == [L.SUB4]
    assert L.probe(L.C1, "tcp", L.SUB4, str(L.TCP_PORT))["ok"]
    assert not L.probe(L.C1, "tcp", L.SUB4, str(L.OTHER_PORT))["ok"]
    # The wildcard does not cover the apex.
    assert L.probe(L.C1, "dns", L.GW4, "sub.allowed.test")["rcode"] == "NXDOMAIN"
    # Literal address with port.
    assert L.probe(L.C1, "tcp", L.STATIC4, str(L.TCP_PORT))["ok"]
    assert not L.probe(L.C1, "tcp", L.STATIC4, str(L.OTHER_PORT))["ok"]


def test_allowlist_refuses_everything_else(lab: L.Lab, engine: LabEngine, apply: Apply) -> None:
    apply("c1", ALLOWLIST)
    before = engine.read_counters(key_of("c1")).packets_rejected
    evil = L.probe(L.C1, "dns", L.GW4, "evil.test")
    assert evil["rcode"] == "NXDOMAIN" and evil["answers"] == []
    # An address the resolver never answered, even one the upstream knows for evil.test.
    for addr in (L.EVIL4, L.RAW4, L.PRIV4, L.META4, L.GW4, L.C2_4):
        assert not L.reachable(L.C1, "tcp", addr), addr
    assert not L.reachable(L.C1, "icmp", L.RAW4)
    assert not L.reachable(L.C1, "tcp", L.PRIV6)
    assert engine.read_counters(key_of("c1")).packets_rejected > before


def test_other_dns_servers_are_redirected_to_the_resolver(
    lab: L.Lab, engine: LabEngine, apply: Apply
) -> None:
    apply("c1", ALLOWLIST)
    # Asking the upstream directly (udp and tcp) still lands at the container's resolver.
    direct = L.probe(L.C1, "dns", L.NET4, "evil.test")
    assert direct["rcode"] == "NXDOMAIN", direct
    assert L.probe(L.C1, "dns", L.NET4, "evil.test", "53", "tcp")["rcode"] == "NXDOMAIN"
    assert L.probe(L.C1, "dns", L.PRIV4, "a.allowed.test")["answers"] == [L.NET4]
    # Over IPv6 too: to the gateway and to an address with no DNS server at all.
    assert L.probe(L.C1, "dns", L.GW6, "evil.test")["rcode"] == "NXDOMAIN"
    assert L.probe(L.C1, "dns", L.NET6, "a.allowed.test")["answers"] == [L.NET4]
    assert "evil.test" not in lab.upstream_queries()


def test_random_subdomain_burst_never_leaves_the_host(
    lab: L.Lab, engine: LabEngine, apply: Apply
) -> None:
    apply("c1", ALLOWLIST)
    before = len(lab.upstream_queries())
    result = L.probe(L.C1, "burst", L.GW4, "500", "exfil.evil.test")
    assert result["answered"] > 450  # answered (NXDOMAIN) locally, quickly
    leaked = [q for q in lab.upstream_queries()[before:] if q.endswith("evil.test")]
    assert leaked == []


def test_root_in_the_container_cannot_undo_the_policy(
    lab: L.Lab, engine: LabEngine, apply: Apply
) -> None:
    apply("c1", {"mode": "restricted"})
    try:
        # Its own firewall is its own business; ours is not in its namespace.
        L.nsexec(L.C1, "nft", "flush", "ruleset")
        assert not L.reachable(L.C1, "tcp", L.PRIV4)
        # A new MAC address.
        L.sh("ip", "-n", L.C1, "link", "set", "eth0", "address", "02:00:00:00:77:99")
        assert not L.reachable(L.C1, "tcp", L.PRIV4)
        assert L.reachable(L.C1, "tcp", L.NET4)
        # Another IPv4 address, even the neighbour's.
        L.sh("ip", "-n", L.C1, "addr", "del", f"{L.C1_4}/24", "dev", "eth0")
        L.sh("ip", "-n", L.C1, "addr", "add", f"{L.C2_4}/24", "dev", "eth0")
        L.sh("ip", "-n", L.C1, "route", "add", "default", "via", L.GW4)
        assert not L.reachable(L.C1, "tcp", L.PRIV4)
        assert not L.reachable(L.C1, "tcp", L.GW4)
        # More IPv6 addresses.
        L.sh("ip", "-n", L.C1, "addr", "add", "fd77::99/64", "dev", "eth0", "nodad")
        L.sh("ip", "-n", L.C1, "addr", "add", "2001:2::99/64", "dev", "eth0", "nodad")
        assert not L.reachable(L.C1, "tcp", L.PRIV6)
        assert not L.reachable(L.C1, "tcp", L.GW6)
    finally:
        L.sh("ip", "-n", L.C1, "addr", "flush", "dev", "eth0", "scope", "global")
        L.sh("ip", "-n", L.C1, "link", "set", "eth0", "address", "02:00:00:00:77:11")
        L.sh("ip", "-n", L.C1, "addr", "add", f"{L.C1_4}/24", "dev", "eth0")
        L.sh("ip", "-n", L.C1, "addr", "add", f"{L.C1_6}/64", "dev", "eth0", "nodad")
        L.sh("ip", "-n", L.C1, "route", "replace", "default", "via", L.GW4)
        L.sh("ip", "-n", L.C1, "route", "replace", "default", "via", L.GW6)
    # And the allowlist's DNS redirect holds whatever resolver it configures.
    apply("c1", ALLOWLIST)
    assert L.probe(L.C1, "dns", L.PRIV4, "evil.test")["rcode"] == "NXDOMAIN"
