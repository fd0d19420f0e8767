"""The policy model: strict parsing, bounds, clear errors, round trips (no root needed)."""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Any

import pytest

from coi.helper.network import (
    AllowEntry,
    AppliedPolicy,
    ContainerKey,
    Counters,
    InvalidPolicy,
    InvalidTarget,
    NetworkMode,
    NetworkTarget,
    parse_policy,
)
from coi.helper.network.incus import target_from_incus
from coi.helper.network.policy import MAX_ALLOWLIST_ENTRIES
from coi.helper.network.resolver import ResolverSpec, Upstream, render_config


def test_default_is_restricted_with_both_blocks() -> None:
    policy = parse_policy({})
    assert policy.mode is NetworkMode.RESTRICTED
    assert policy.block_private_networks and policy.block_metadata_endpoint


def test_allowlist_entries_are_classified_and_normalised() -> None:
    policy = parse_policy(
        {
            "mode": "allowlist",
            "allowlist": [
                {"target": "API.Example.com.", "ports": [443, 443, 80]},
                {"target": "*.pkg.example.org"},
                {"target": "203.0.113.0/24"},
                {"target": "2001:db8::1", "ports": [22]},
            ],
            "hosts": [{"target": "10.1.2.3", "ports": [22], "name": "git.internal"}],
        }
    )
    names = [e.target for e in policy.names]
    assert names == ["api.example.com", "*.pkg.example.org"]
    assert policy.names[0].ports == (80, 443)
    assert [str(e.network) for e in policy.addresses] == ["203.0.113.0/24", "2001:db8::1/128"]
    assert policy.hosts[0].network == ipaddress.ip_network("10.1.2.3/32")


def test_round_trip_through_json_shape() -> None:
    raw = {
        "mode": "allowlist",
        "allowlist": [{"target": "a.example.com", "ports": [443]}, {"target": "198.51.100.7"}],
        "hosts": [{"target": "10.1.2.0/24", "ports": [22], "name": "git"}],
    }
    policy = parse_policy(raw)
    assert parse_policy(policy.to_dict()) == policy
    assert policy.to_dict() == raw


@pytest.mark.parametrize(
    ("raw", "field", "words"),
    [
        ({"mode": "paranoid"}, "mode", "must be one of"),
        ({"mode": "restricted", "colour": 1}, "colour", "unknown"),
        ({"mode": "allowlist"}, "allowlist", "at least one"),
        ({"mode": "allowlist", "allowlist": [{"target": "a..b"}]}, "allowlist[0].target", "label"),
        (
            {"mode": "allowlist", "allowlist": [{"target": "*.com"}]},
            "allowlist[0].target",
            "two labels",
        ),
        (
            {"mode": "allowlist", "allowlist": [{"target": "a.*.com"}]},
            "allowlist[0].target",
            "wildcard",
        ),
        (
            {"mode": "allowlist", "allowlist": [{"target": "0.0.0.0/0"}]},
            "allowlist[0].target",
            "open",
        ),
        (
            {"mode": "allowlist", "allowlist": [{"target": "10.0.0.1/8"}]},
            "allowlist[0].target",
            "valid",
        ),
        (
            {"mode": "allowlist", "allowlist": [{"target": "a.com", "port": 1}]},
            "allowlist[0].port",
            "unknown",
        ),
        (
            {"mode": "allowlist", "allowlist": [{"target": "a.com", "ports": [0]}]},
            "allowlist[0].ports",
            "1-65535",
        ),
        (
            {"mode": "allowlist", "allowlist": [{"target": "a.com", "ports": [True]}]},
            "allowlist[0].ports",
            "port",
        ),
        (
            {"mode": "allowlist", "allowlist": [{"target": "a.com"}, {"target": "A.com"}]},
            "allowlist[1]",
            "repeats",
        ),
        ({"mode": "restricted", "allowed_ports": "443"}, "allowed_ports", "list"),
        (
            {"mode": "restricted", "hosts": [{"target": "git.internal"}]},
            "hosts[0].target",
            "IP address",
        ),
        (
            {"mode": "restricted", "hosts": [{"target": "10.0.0.1", "name": "a b"}]},
            "hosts[0].name",
            "label",
        ),
        ({"mode": "open", "allowlist": [{"target": "a.com"}]}, "allowlist", "does not apply"),
        (
            {
                "mode": "allowlist",
                "allowlist": [{"target": "a.com"}],
                "block_private_networks": False,
            },
            "block_private_networks",
            "does not apply",
        ),
        (
            {"mode": "restricted", "block_metadata_endpoint": "yes"},
            "block_metadata_endpoint",
            "true or false",
        ),
        ("restricted", "policy", "object"),
    ],
)
def test_invalid_policies_name_the_field(raw: Any, field: str, words: str) -> None:
    with pytest.raises(InvalidPolicy) as info:
        parse_policy(raw)
    assert info.value.field == field
    assert words in str(info.value)


def test_bounds() -> None:
    too_many = [{"target": f"h{i}.example.com"} for i in range(MAX_ALLOWLIST_ENTRIES + 1)]
    with pytest.raises(InvalidPolicy, match="limit"):
        parse_policy({"mode": "allowlist", "allowlist": too_many})
    with pytest.raises(InvalidPolicy, match="characters"):
        parse_policy({"mode": "allowlist", "allowlist": [{"target": "a." * 127 + "com"}]})


@pytest.mark.parametrize(
    ("text", "target", "ports"),
    [
        ("api.example.com", "api.example.com", ()),
        ("api.example.com:443", "api.example.com", (443,)),
        ("198.51.100.7:8080", "198.51.100.7", (8080,)),
        ("[2001:db8::1]:443", "2001:db8::1", (443,)),
        ("2001:db8::/32", "2001:db8::/32", ()),
    ],
)
def test_config_shorthand(text: str, target: str, ports: tuple[int, ...]) -> None:
    entry = AllowEntry.parse(text)
    assert (entry.target, entry.ports) == (target, ports)


def test_targets_are_validated() -> None:
    key = ContainerKey("user-1000", "coi-abc-1")
    gw = ipaddress.IPv4Address("10.0.0.1")
    for veth, bridge in (("a/b", "br0"), ("veth0", "lo"), ("x" * 16, "br0"), ("br0", "br0")):
        with pytest.raises(InvalidTarget):
            NetworkTarget(key, veth, bridge, gw)
    with pytest.raises(InvalidTarget):
        NetworkTarget(key, "veth0", "br0", None, None)
    with pytest.raises(InvalidTarget):
        ContainerKey("user 1000", "c")
    assert len(key.cid) == 12 and key.cid == ContainerKey("user-1000", "coi-abc-1").cid
    assert key.cid != ContainerKey("user-1001", "coi-abc-1").cid


def test_resolver_config_forwards_only_allowed_names() -> None:
    spec = ResolverSpec(
        cid="0123456789ab",
        listen=(ipaddress.IPv4Address("10.0.0.1"),),
        port=30053,
        name_sets=(("n4_x_0", "n6_x_0", ("a.example.com", "*.cdn.example.net")),),
        upstreams=(Upstream(ipaddress.IPv4Address("192.0.2.53")),),
    )
    conf = render_config(spec, pid_file=Path("/run/x.pid"), user="nobody", group="nogroup")
    lines = conf.splitlines()
    assert "address=/#/" in lines and "no-resolv" in lines
    assert "server=/a.example.com/192.0.2.53#53" in lines
    assert "server=/*.cdn.example.net/192.0.2.53#53" in lines
    assert "nftset=/cdn.example.net/4#inet#coi#n4_x_0,6#inet#coi#n6_x_0" in lines
    assert not [line for line in lines if line.startswith("server=") and "example" not in line]


# Shaped like Incus 6.0's answers for a container on the managed bridge coibr0.
DEVICES = {
    "eth0": {"name": "eth0", "network": "coibr0", "type": "nic", "host_name": "coi1234abcd"},
    "root": {"path": "/", "pool": "coi", "type": "disk"},
}
NETWORK = {"ipv4.address": "10.211.47.1/24", "ipv4.nat": "true", "ipv6.address": "none"}


def test_target_from_incus_records() -> None:
    target = target_from_incus("user-1000", "coi-abc-1", DEVICES, {}, NETWORK)
    assert target.veth == "coi1234abcd" and target.bridge == "coibr0"
    assert target.gateway4 == ipaddress.IPv4Address("10.211.47.1") and target.gateway6 is None
    # A running container without a pinned name: Incus' volatile key.
    unpinned = {"eth0": {"network": "coibr0", "type": "nic"}}
    running = target_from_incus(
        "p", "c", unpinned, {"volatile.eth0.host_name": "veth1a2b3c4d"}, NETWORK
    )
    assert running.veth == "veth1a2b3c4d"
    dual = target_from_incus("p", "c", DEVICES, {}, {**NETWORK, "ipv6.address": "fd42::1/64"})
    assert dual.gateway6 == ipaddress.IPv6Address("fd42::1")


@pytest.mark.parametrize(
    ("devices", "config", "network", "words"),
    [
        ({"root": {"type": "disk"}}, {}, NETWORK, "exactly one"),
        ({**DEVICES, "eth1": {"type": "nic", "network": "coibr0"}}, {}, NETWORK, "exactly one"),
        ({"eth0": {"type": "nic", "network": "coibr0"}}, {}, NETWORK, "host_name"),
        (
            {"eth0": {"type": "nic", "nictype": "macvlan", "parent": "eth0", "host_name": "x"}},
            {},
            NETWORK,
            "bridge",
        ),
        (DEVICES, {}, {"ipv4.address": "none", "ipv6.address": "none"}, "gateway"),
        (DEVICES, {}, {"ipv4.address": "fd00::1/64"}, "family"),
    ],
)
def test_target_from_incus_fails_closed(
    devices: dict[str, Any], config: dict[str, Any], network: dict[str, Any], words: str
) -> None:
    with pytest.raises(InvalidTarget, match=words):
        target_from_incus("p", "c", devices, config, network)


@pytest.mark.parametrize(
    "raw",
    [
        {
            "mode": "restricted",
            "allowed_ports": [443],
            "hosts": [{"target": "10.1.2.3", "ports": [22], "name": "git"}],
        },
        {
            "mode": "allowlist",
            "allowlist": [
                {"target": "a.example.com", "ports": [443]},
                {"target": "*.b.example.com"},
            ],
        },
        {"mode": "open", "block_metadata_endpoint": False},
        {"mode": "blocked"},
    ],
)
def test_wire_shapes_match_the_helper_interface(raw: dict[str, Any]) -> None:
    """What the engine returns and accepts is exactly what org.codeonincus.Helper declares."""
    from coi.helper.interface import helper_interface
    from coi.helper.ipc.idl import Bounds, validate_struct

    iface = helper_interface()
    policy = parse_policy(raw)
    target = NetworkTarget(
        ContainerKey("user-1000", "coi-x-1"), "vx", "coibr0", ipaddress.IPv4Address("10.0.0.1")
    )
    call = {"instance": "coi-x-1", "project": "user-1000", "policy": policy.to_dict()}
    validate_struct(iface, iface.methods["ApplyNetworkPolicy"].input, call, "", Bounds())
    entry = AppliedPolicy(target, policy, 3).to_entry()
    validate_struct(
        iface, iface.methods["ListNetworkPolicies"].output, {"policies": [entry]}, "", Bounds()
    )
    counters = {"counters": Counters(*range(8)).to_dict()}
    validate_struct(iface, iface.methods["ReadCounters"].output, counters, "", Bounds())
    assert parse_policy(entry["policy"]) == policy
