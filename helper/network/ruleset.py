"""Compile a container's policy into libnftables JSON commands for coi's own tables.

Where a container's packets are recognised, and why there:

- The container's host-side veth is a bridge port. Routed traffic (to the internet, the host,
  other hosts) reaches the inet hooks with `iifname` = the *bridge*, so the veth cannot be
  matched there; and the bridge family has no conntrack or reject on every kernel (not on this
  one). So the work is split between two tables, changed together in one transaction:
- `table bridge coi`: one prerouting base chain dispatches `iifname vmap @ports` (veth name →
  `l_<cid>`). That chain sees every frame the container sends, before anything else, sets the
  container's packet mark, and drops at layer 2 what must never be bridged: unicast to other
  ports (= other containers), non-IP protocols, rogue router advertisements / DHCP servers,
  ARP claiming the gateway. Keyed by name, it can be installed before the veth exists
  (fail closed from the first packet), on any kernel.
- `table inet coi`: the stateful policy (`f_<cid>`, reject tail `r_<cid>`) runs in prerouting
  at priority -190: after conntrack (-200), before any DNAT (-100), so it judges the address
  the container asked for. The shared base chain dispatches by mark through the map `marks`.
  Allowlist containers also get `d_<cid>` in the shared nat chain (map `dnsmarks`): every DNS
  query (udp/tcp 53, any destination) is redirected to the container's own resolver, which
  fills the named sets `n4_<cid>_<g>` / `n6_<cid>_<g>` (one pair per distinct port list `g`).

Marks are not forgeable: a veth scrubs `skb->mark` when a packet crosses network namespaces,
and the bridge chain sets it on every frame before anything else sees it.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from coi.helper.network.policy import (
    AllowEntry,
    HostException,
    IPNetwork,
    NetworkMode,
    NetworkPolicy,
)
from coi.helper.network.target import MARK_BASE, NetworkTarget

Json = dict[str, Any]

INET = "inet"
BRIDGE = "bridge"
TABLE = "coi"
# NFLOG group of rejected new connections (read by the helper's event source).
NFLOG_GROUP = 3073
LOG_RATE_PER_SECOND = 10
LOG_BURST = 20
BRIDGE_PRIORITY = -350
FILTER_PRIORITY = -190
DNS_NAT_PRIORITY = -110
# After dstnat (-100), before the routing decision.
UNMARK_PRIORITY = -90
NAME_SET_SIZE = 65536

PRIVATE4 = ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10")
PRIVATE6 = ("fc00::/7",)
LINKLOCAL4 = ("169.254.0.0/16",)
LINKLOCAL6 = ("fe80::/10",)
# AWS' IPv6 metadata address sits in fc00::/7, which `block_private_networks=false` opens.
METADATA6 = "fd00:ec2::254"

# ICMPv6 a host needs on its link (neighbour discovery, router solicitation, MLD).
ND_TYPES = [
    "nd-router-solicit",
    "nd-neighbor-solicit",
    "nd-neighbor-advert",
    "mld-listener-report",
    "mld2-listener-report",
]

ObjectRef = tuple[str, str, str]  # (family, kind: chain | set | counter, name)


@dataclass(frozen=True)
class CompiledPolicy:
    """The commands that install one container's policy, plus what the resolver needs."""

    commands: list[Json]
    objects: tuple[ObjectRef, ...]
    # (set name v4, set name v6, names) per port group of DNS-name entries.
    name_sets: tuple[tuple[str, str, tuple[str, ...]], ...]
    mark: int


PREFIXES = ("l", "f", "r", "d", "out", "rej", "l2", "n4", "n6")


def cid_of(name: str) -> str | None:
    """The container id an object name belongs to, or None for shared objects."""
    head, sep, rest = name.partition("_")
    if not sep or head not in PREFIXES:
        return None
    cid = rest.split("_", 1)[0]
    return cid if len(cid) == 12 and all(c in "0123456789abcdef" for c in cid) else None


# --- small JSON builders ------------------------------------------------------------------


def _obj(family: str, **extra: Any) -> Json:
    return {"family": family, "table": TABLE, **extra}


def _match(left: Json, right: Any, op: str = "==") -> Json:
    return {"match": {"op": op, "left": left, "right": right}}


def _payload(protocol: str, fieldname: str) -> Json:
    return {"payload": {"protocol": protocol, "field": fieldname}}


def _meta(key: str) -> Json:
    return {"meta": {"key": key}}


def _prefix(net: IPNetwork) -> Any:
    full = 32 if net.version == 4 else 128
    if net.prefixlen == full:
        return str(net.network_address)
    return {"prefix": {"addr": str(net.network_address), "len": net.prefixlen}}


def _set(values: Sequence[Any]) -> Any:
    return values[0] if len(values) == 1 else {"set": list(values)}


def _rule(family: str, chain: str, *exprs: Json) -> Json:
    return {"add": {"rule": _obj(family, chain=chain, expr=list(exprs))}}


def _daddr(version: int) -> Json:
    return _payload("ip" if version == 4 else "ip6", "daddr")


_DPORT = {"payload": {"protocol": "th", "field": "dport"}}
_TCP_UDP = _match(_meta("l4proto"), {"set": ["tcp", "udp"]})


def _ports_match(ports: Sequence[int]) -> list[Json]:
    return [_TCP_UDP, _match(_DPORT, _set(list(ports)))] if ports else []


ACCEPT: Json = {"accept": None}
DROP: Json = {"drop": None}


def _goto(chain: str) -> Json:
    return {"goto": {"target": chain}}


def _base_chain(family: str, name: str, kind: str, prio: int) -> Json:
    return {
        "add": {
            "chain": _obj(
                family, name=name, type=kind, hook="prerouting", prio=prio, policy="accept"
            )
        }
    }


# --- the shared skeleton ------------------------------------------------------------------


def skeleton() -> list[Json]:
    """Idempotent `add` commands for both tables and the objects all containers share."""
    cmds: list[Json] = [
        {"add": {"table": {"family": INET, "name": TABLE}}},
        {"add": {"table": {"family": BRIDGE, "name": TABLE}}},
    ]
    for name, kind, elems in (
        ("private4", "ipv4_addr", PRIVATE4),
        ("private6", "ipv6_addr", PRIVATE6),
        ("linklocal4", "ipv4_addr", LINKLOCAL4),
        ("linklocal6", "ipv6_addr", LINKLOCAL6),
    ):
        prefixes = [_prefix(ipaddress.ip_network(e)) for e in elems]
        cmds.append({"add": {"set": _obj(INET, name=name, type=kind, flags=["interval"])}})
        cmds.append({"add": {"element": _obj(INET, name=name, elem=prefixes)}})
    for name in ("marks", "dnsmarks"):
        cmds.append({"add": {"map": _obj(INET, name=name, type="mark", map="verdict")}})
    cmds.append({"add": {"map": _obj(BRIDGE, name="ports", type="ifname", map="verdict")}})
    cmds.append(_base_chain(BRIDGE, "pre", "filter", BRIDGE_PRIORITY))
    cmds.append(_base_chain(INET, "pre", "filter", FILTER_PRIORITY))
    cmds.append(_base_chain(INET, "dns", "nat", DNS_NAT_PRIORITY))
    cmds.append(_base_chain(INET, "unmark", "filter", UNMARK_PRIORITY))
    return cmds


def skeleton_rules() -> list[Json]:
    """The dispatch rules of the shared base chains (added once, with the tables)."""
    return [
        _rule(BRIDGE, "pre", {"vmap": {"key": _meta("iifname"), "data": "@ports"}}),
        _rule(INET, "pre", {"vmap": {"key": _meta("mark"), "data": "@marks"}}),
        # Fail closed: a coi-marked packet whose container has no chain is dropped.
        _rule(INET, "pre", _match({"&": [_meta("mark"), MARK_BASE]}, MARK_BASE), DROP),
        _rule(INET, "dns", {"vmap": {"key": _meta("mark"), "data": "@dnsmarks"}}),
        # Once filtered and redirected, the packet gets its mark (0 when it left the
        # container's namespace) back, so routing and other firewalls see no coi marks.
        _rule(
            INET,
            "unmark",
            _match({"&": [_meta("mark"), MARK_BASE]}, MARK_BASE),
            {"mangle": {"key": _meta("mark"), "value": 0}},
        ),
    ]


def drop_tables() -> list[Json]:
    """Delete both tables (everything coi ever installed)."""
    return [
        {"delete": {"table": {"family": INET, "name": TABLE}}},
        {"delete": {"table": {"family": BRIDGE, "name": TABLE}}},
    ]


# --- one container ------------------------------------------------------------------------


def _port_groups(entries: Iterable[AllowEntry]) -> dict[tuple[int, ...], list[AllowEntry]]:
    groups: dict[tuple[int, ...], list[AllowEntry]] = {}
    for entry in entries:
        groups.setdefault(entry.ports, []).append(entry)
    return groups


def compile_policy(
    target: NetworkTarget,
    policy: NetworkPolicy,
    bridge_mac: str,
    dns_port: int | None = None,
) -> CompiledPolicy:
    """The `add` commands for one container (chains, sets, counters, rules, map elements).

    `dns_port` is the local port of the container's resolver; required for mode allowlist.
    """
    cid, mark = target.key.cid, target.key.mark
    allowlist = policy.mode is NetworkMode.ALLOWLIST
    if allowlist and dns_port is None:
        raise ValueError("mode allowlist needs the resolver's port")
    # The layer-2 chain carries the veth in its name, so a quick chain listing tells which
    # `ports` element points at it.
    l2, flt, rej, dns = f"l_{cid}_{target.veth}", f"f_{cid}", f"r_{cid}", f"d_{cid}"
    out_c, l2_c, rej_c = f"out_{cid}", f"l2_{cid}", f"rej_{cid}"

    objects: list[ObjectRef] = [
        (BRIDGE, "chain", l2),
        (INET, "chain", flt),
        (INET, "chain", rej),
        (BRIDGE, "counter", out_c),
        (BRIDGE, "counter", l2_c),
        (INET, "counter", rej_c),
    ]
    name_sets: list[tuple[str, str, tuple[str, ...]]] = []
    if allowlist:
        objects.append((INET, "chain", dns))
        for g, entries in enumerate(_port_groups(policy.names).values()):
            s4, s6 = f"n4_{cid}_{g}", f"n6_{cid}_{g}"
            objects += [(INET, "set", s4), (INET, "set", s6)]
            name_sets.append((s4, s6, tuple(e.target for e in entries)))

    cmds: list[Json] = []
    for family, kind, name in objects:
        if kind == "counter":
            cmds.append({"add": {"counter": _obj(family, name=name)}})
        elif kind == "chain":
            cmds.append({"add": {"chain": _obj(family, name=name)}})
        else:
            set_type = "ipv4_addr" if name.startswith("n4_") else "ipv6_addr"
            # No timeouts: dnsmasq 2.90 adds answers without one, and a timeout it cannot
            # refresh would expire addresses its cache still hands out. The sets live as long
            # as the policy; `size` bounds what rotating CDN addresses can add.
            cmds.append(
                {"add": {"set": _obj(family, name=name, type=set_type, size=NAME_SET_SIZE)}}
            )

    cmds += _layer2_rules(l2, out_c, l2_c, mark, target, policy, bridge_mac)
    cmds += _reject_rules(rej, rej_c, cid)
    cmds += _filter_rules(flt, rej, target, policy, name_sets)
    if allowlist:
        cmds.append(
            _rule(INET, dns, _TCP_UDP, _match(_DPORT, 53), {"redirect": {"port": dns_port}})
        )
    # Map elements last: the container's traffic is dispatched only once its chains are full
    # (all of it is one transaction anyway; the order keeps references valid).
    cmds.append(_element(BRIDGE, "ports", target.veth, l2))
    cmds.append(_element(INET, "marks", mark, flt))
    if allowlist:
        cmds.append(_element(INET, "dnsmarks", mark, dns))
    return CompiledPolicy(
        commands=cmds, objects=tuple(objects), name_sets=tuple(name_sets), mark=mark
    )


def _element(family: str, map_name: str, key: Any, chain: str) -> Json:
    elem = [[key, {"jump": {"target": chain}}]]
    return {"add": {"element": _obj(family, name=map_name, elem=elem)}}


def _layer2_rules(
    chain: str,
    out_counter: str,
    l2_counter: str,
    mark: int,
    target: NetworkTarget,
    policy: NetworkPolicy,
    bridge_mac: str,
) -> list[Json]:
    def rule(*exprs: Json) -> Json:
        return _rule(BRIDGE, chain, *exprs)

    rules = [rule({"mangle": {"key": _meta("mark"), "value": mark}}, {"counter": out_counter})]
    if policy.mode is NetworkMode.OPEN:
        return rules
    drop: list[Json] = [{"counter": l2_counter}, DROP]
    ethertype = _payload("ether", "type")
    if target.gateway4 is not None:
        # Claiming the gateway's address would pull other containers' traffic here.
        rules.append(rule(_match(_payload("arp", "saddr ip"), str(target.gateway4)), *drop))
    # A container must not act as router or DHCP server for its neighbours.
    rules.append(rule(_match(_payload("icmpv6", "type"), "nd-router-advert"), *drop))
    rules.append(rule(_match(_payload("udp", "sport"), {"set": [67, 547]}), *drop))
    # Only IPv4, IPv6 and ARP; other protocols could reach other containers unfiltered.
    rules.append(rule(_match(ethertype, {"set": ["ip", "ip6", "arp"]}, "!="), *drop))
    # Unicast frames reach the host only through the bridge's own address (or the veth's,
    # which the bridge also delivers locally); anything else would be bridged to another
    # port, i.e. another container.
    rules.append(rule(_match(_payload("ether", "daddr"), bridge_mac), ACCEPT))
    rules.append(rule(_match(_meta("pkttype"), "host"), ACCEPT))
    rules.append(rule(_match(_meta("pkttype"), {"set": ["broadcast", "multicast"]}, "!="), *drop))
    # Broadcast and multicast: what a host needs on its link, nothing else.
    rules.append(rule(_match(ethertype, "arp"), ACCEPT))
    rules.append(rule(_match(_payload("udp", "dport"), {"set": [67, 547]}), ACCEPT))
    rules.append(rule(_match(_payload("icmpv6", "type"), {"set": ND_TYPES}), ACCEPT))
    rules.append(rule(*drop))
    return rules


def _reject_rules(chain: str, counter: str, cid: str) -> list[Json]:
    limit = {
        "rate": LOG_RATE_PER_SECOND,
        "per": "second",
        "burst": LOG_BURST,
        "burst_unit": "packets",
    }
    return [
        _rule(
            INET,
            chain,
            _match({"ct": {"key": "state"}}, "new"),
            {"limit": limit},
            {"log": {"prefix": f"coi-reject {cid} ", "group": NFLOG_GROUP}},
        ),
        _rule(INET, chain, {"counter": counter}),
        _rule(INET, chain, _match(_meta("l4proto"), "tcp"), {"reject": {"type": "tcp reset"}}),
        _rule(INET, chain, {"reject": {"type": "icmpx", "expr": "admin-prohibited"}}),
    ]


def _gateway_services(chain: str, target: NetworkTarget, dns_anywhere: bool) -> list[Json]:
    """DHCP, neighbour discovery and DNS: what a container needs from its bridge gateway."""
    rules: list[Json] = [
        _rule(INET, chain, _match(_payload("icmpv6", "type"), {"set": ND_TYPES}), ACCEPT)
    ]
    dhcp = ((target.gateway4, "255.255.255.255", 67), (target.gateway6, "ff02::1:2", 547))
    for gateway, broadcast, port in dhcp:
        if gateway is not None:
            to = _match(_daddr(gateway.version), {"set": [str(gateway), broadcast]})
            rules.append(_rule(INET, chain, to, _match(_payload("udp", "dport"), port), ACCEPT))
    if dns_anywhere:
        # Redirected to the container's resolver by its nat chain, whatever the destination.
        rules.append(_rule(INET, chain, _TCP_UDP, _match(_DPORT, 53), ACCEPT))
        return rules
    for gateway in (target.gateway4, target.gateway6):
        if gateway is not None:
            to_gw = _match(_daddr(gateway.version), str(gateway))
            rules.append(_rule(INET, chain, to_gw, _TCP_UDP, _match(_DPORT, 53), ACCEPT))
    return rules


def _exceptions(chain: str, hosts: Sequence[HostException]) -> list[Json]:
    return [
        _rule(
            INET,
            chain,
            _match(_daddr(h.network.version), _prefix(h.network)),
            *_ports_match(h.ports),
            ACCEPT,
        )
        for h in hosts
    ]


def _block_linklocal(chain: str, to_reject: Json) -> list[Json]:
    return [
        _rule(INET, chain, _match(_daddr(4), "@linklocal4"), to_reject),
        _rule(INET, chain, _match(_daddr(6), "@linklocal6"), to_reject),
        _rule(INET, chain, _match(_daddr(6), METADATA6), to_reject),
    ]


def _filter_rules(
    chain: str,
    reject: str,
    target: NetworkTarget,
    policy: NetworkPolicy,
    name_sets: Sequence[tuple[str, str, tuple[str, ...]]],
) -> list[Json]:
    def rule(*exprs: Json) -> Json:
        return _rule(INET, chain, *exprs)

    mode = policy.mode
    to_reject = _goto(reject)
    if mode is NetworkMode.BLOCKED:
        # Quarantine cuts established connections too.
        return [rule(to_reject)]
    ct_state = {"ct": {"key": "state"}}
    rules = [
        rule(_match(ct_state, {"set": ["established", "related"]}), ACCEPT),
        rule(_match(ct_state, "invalid"), DROP),
    ]
    if mode is NetworkMode.OPEN:
        if policy.block_metadata_endpoint:
            rules += _block_linklocal(chain, to_reject)
        return [*rules, rule(ACCEPT)]

    rules += _gateway_services(chain, target, dns_anywhere=mode is NetworkMode.ALLOWLIST)
    rules += _exceptions(chain, policy.hosts)

    if mode is NetworkMode.ALLOWLIST:
        for ports, entries in _port_groups(policy.addresses).items():
            for version in (4, 6):
                values = [
                    _prefix(e.network)
                    for e in entries
                    if e.network is not None and e.network.version == version
                ]
                if values:
                    rules.append(
                        rule(_match(_daddr(version), _set(values)), *_ports_match(ports), ACCEPT)
                    )
        for (s4, s6, _names), ports in zip(name_sets, _port_groups(policy.names), strict=True):
            rules.append(rule(_match(_daddr(4), f"@{s4}"), *_ports_match(ports), ACCEPT))
            rules.append(rule(_match(_daddr(6), f"@{s6}"), *_ports_match(ports), ACCEPT))
        return [*rules, rule(to_reject)]

    # restricted: the host, other containers, link-local and private ranges are refused.
    fib_type = {"fib": {"result": "type", "flags": ["daddr"]}}
    fib_oif = {"fib": {"result": "oifname", "flags": ["daddr"]}}
    rules.append(rule(_match(fib_type, {"set": ["local", "broadcast", "multicast"]}), to_reject))
    rules.append(rule(_match(fib_oif, target.bridge), to_reject))
    if policy.block_metadata_endpoint:
        rules += _block_linklocal(chain, to_reject)
    if policy.block_private_networks:
        rules.append(rule(_match(_daddr(4), "@private4"), to_reject))
        rules.append(rule(_match(_daddr(6), "@private6"), to_reject))
    if policy.allowed_ports:
        other_port = _match(_DPORT, _set(list(policy.allowed_ports)), "!=")
        rules.append(rule(_TCP_UDP, other_port, to_reject))
    return [*rules, rule(ACCEPT)]


def removal(objects: Iterable[ObjectRef], elements: Iterable[tuple[str, str, Any]]) -> list[Json]:
    """Commands that delete one container's existing objects.

    `elements` are (family, map, key) dispatch entries pointing at its chains; they go first
    (they reference the chains), then the rules (flush), the chains, the sets and counters.
    """
    objs = list(objects)
    cmds: list[Json] = [
        {"delete": {"element": _obj(family, name=map_name, elem=[key])}}
        for family, map_name, key in elements
    ]
    chains = [(f, n) for f, k, n in objs if k == "chain"]
    cmds += [{"flush": {"chain": _obj(f, name=n)}} for f, n in chains]
    cmds += [{"delete": {"chain": _obj(f, name=n)}} for f, n in chains]
    cmds += [{"delete": {k: _obj(f, name=n)}} for f, k, n in objs if k in ("set", "counter")]
    return cmds


def replacement(
    existing: Iterable[ObjectRef],
    elements: Iterable[tuple[str, str, Any]],
    compiled: CompiledPolicy,
    veth: str,
) -> list[Json]:
    """Commands that turn a container's existing objects into the compiled ones, in place.

    Chains, counters and dispatch elements that both policies have are kept (flushed and
    refilled), so no lookup ever misses while the transaction commits, and counters keep
    counting. Only what the new policy lacks is deleted; name sets are emptied, since the
    resolver refills them.
    """
    old = list(existing)
    new = set(compiled.objects)
    keep_maps = {(BRIDGE, "ports", veth), (INET, "marks", compiled.mark)}
    if any(kind == "chain" and name.startswith("d_") for _f, kind, name in new):
        keep_maps.add((INET, "dnsmarks", compiled.mark))
    stale = [e for e in elements if (e[0], e[1], e[2]) not in keep_maps]
    cmds: list[Json] = [
        {"delete": {"element": _obj(family, name=map_name, elem=[key])}}
        for family, map_name, key in stale
    ]
    chains = [(f, n) for f, k, n in old if k == "chain"]
    cmds += [{"flush": {"chain": _obj(f, name=n)}} for f, n in chains]
    cmds += [
        {"delete": {"chain": _obj(f, name=n)}} for f, n in chains if (f, "chain", n) not in new
    ]
    for family, kind, name in old:
        if kind == "set":
            verb = "flush" if (family, kind, name) in new else "delete"
            cmds.append({verb: {"set": _obj(family, name=name)}})
        elif kind == "counter" and (family, kind, name) not in new:
            cmds.append({"delete": {"counter": _obj(family, name=name)}})
    return cmds + compiled.commands
