"""The typed, bounded network policy of one container.

A policy arrives over varlink as plain JSON (dicts, lists, strings, ints, bools). `parse_policy`
turns it into a frozen `NetworkPolicy` or raises `InvalidPolicy` naming the field; nothing
unvalidated reaches the ruleset compiler. `NetworkPolicy.to_dict` gives the same JSON shape back
(state file, `ListNetworkPolicies`).

JSON shape (unknown keys are errors)::

    {"mode": "restricted" | "allowlist" | "open" | "blocked",
     "allowed_ports": [443, 80],                       # restricted only: egress ports allowed
     "allowlist": [{"target": "api.example.com", "ports": [443]},
                   {"target": "*.pkg.example.org"}, {"target": "203.0.113.0/24"}],
     "hosts": [{"target": "10.1.2.3", "ports": [22], "name": "git.internal"}],
     "block_private_networks": true,                   # restricted only
     "block_metadata_endpoint": true}                  # restricted and open

Name semantics follow dnsmasq: `example.com` allows the name and every name under it,
`*.example.com` only the names under it.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from coi.helper.network.errors import InvalidPolicy

MAX_ALLOWLIST_ENTRIES = 256
MAX_HOSTS = 64
MAX_PORTS_PER_ENTRY = 32
MAX_ALLOWED_PORTS = 64
MAX_NAME_LENGTH = 253
MAX_LABEL_LENGTH = 63
MAX_HOST_LABEL_LENGTH = 63
# Shorter prefixes are "the internet": mode `open` says that honestly.
MIN_PREFIX_V4 = 8
MIN_PREFIX_V6 = 16

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

_LABEL = re.compile(r"^[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?$")
_HOST_LABEL = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")


class NetworkMode(StrEnum):
    """What a container may reach; see the design's mode table."""

    RESTRICTED = "restricted"
    ALLOWLIST = "allowlist"
    OPEN = "open"
    BLOCKED = "blocked"


@dataclass(frozen=True)
class AllowEntry:
    """One allowlist entry: a DNS name (optionally `*.`-wildcarded) or an address/CIDR."""

    target: str
    ports: tuple[int, ...] = ()
    # Exactly one of `name` and `network` is set, derived from `target` by `_parse_target`.
    name: str | None = None
    network: IPNetwork | None = None

    @property
    def is_name(self) -> bool:
        """True for DNS-name entries (resolved through the per-container resolver)."""
        return self.name is not None

    def to_dict(self) -> dict[str, Any]:
        """The entry in its JSON wire shape."""
        out: dict[str, Any] = {"target": self.target}
        if self.ports:
            out["ports"] = list(self.ports)
        return out

    @staticmethod
    def parse(text: str) -> AllowEntry:
        """Parse the config shorthand `name`, `name:port`, `1.2.3.4:443`, `[2001:db8::1]:443`."""
        target, ports = text, ""
        if text.startswith("["):
            end = text.find("]")
            if end < 0:
                raise InvalidPolicy("allowlist", f"entry {text!r} has an unclosed '['")
            target, rest = text[1:end], text[end + 1 :]
            if rest and not rest.startswith(":"):
                raise InvalidPolicy("allowlist", f"entry {text!r} must be [address]:port")
            ports = rest[1:]
        elif text.count(":") == 1:
            target, ports = text.split(":")
        raw: dict[str, Any] = {"target": target}
        if ports:
            if not ports.isdigit():
                raise InvalidPolicy("allowlist", f"entry {text!r} has a port that is not a number")
            raw["ports"] = [int(ports)]
        return _parse_allow_entry(raw, "allowlist")


@dataclass(frozen=True)
class HostException:
    """A `[[network.hosts]]` exception: an address or CIDR reachable despite the mode's blocks."""

    network: IPNetwork
    ports: tuple[int, ...] = ()
    name: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """The exception in its JSON wire shape."""
        out: dict[str, Any] = {"target": str(_compact(self.network))}
        if self.ports:
            out["ports"] = list(self.ports)
        if self.name is not None:
            out["name"] = self.name
        return out


@dataclass(frozen=True)
class NetworkPolicy:
    """A validated network policy; build it with `parse_policy` or the constructor + `validate`."""

    mode: NetworkMode = NetworkMode.RESTRICTED
    allowed_ports: tuple[int, ...] = ()
    allowlist: tuple[AllowEntry, ...] = ()
    hosts: tuple[HostException, ...] = ()
    block_private_networks: bool = True
    block_metadata_endpoint: bool = True

    def to_dict(self) -> dict[str, Any]:
        """The policy in its JSON wire shape (only the fields meaningful for its mode)."""
        out: dict[str, Any] = {"mode": self.mode.value}
        if self.mode is NetworkMode.RESTRICTED:
            out["allowed_ports"] = list(self.allowed_ports)
            out["block_private_networks"] = self.block_private_networks
        if self.mode in (NetworkMode.RESTRICTED, NetworkMode.OPEN):
            out["block_metadata_endpoint"] = self.block_metadata_endpoint
        if self.mode is NetworkMode.ALLOWLIST:
            out["allowlist"] = [e.to_dict() for e in self.allowlist]
        if self.mode in (NetworkMode.RESTRICTED, NetworkMode.ALLOWLIST):
            out["hosts"] = [h.to_dict() for h in self.hosts]
        return out

    @property
    def names(self) -> tuple[AllowEntry, ...]:
        """Allowlist entries that are DNS names."""
        return tuple(e for e in self.allowlist if e.is_name)

    @property
    def addresses(self) -> tuple[AllowEntry, ...]:
        """Allowlist entries that are literal addresses or CIDRs."""
        return tuple(e for e in self.allowlist if not e.is_name)


def blocked_policy() -> NetworkPolicy:
    """The quarantine policy: nothing in, nothing out."""
    return NetworkPolicy(mode=NetworkMode.BLOCKED)


_FIELDS_BY_MODE: dict[NetworkMode, frozenset[str]] = {
    NetworkMode.RESTRICTED: frozenset(
        {"mode", "allowed_ports", "hosts", "block_private_networks", "block_metadata_endpoint"}
    ),
    NetworkMode.ALLOWLIST: frozenset({"mode", "allowlist", "hosts"}),
    NetworkMode.OPEN: frozenset({"mode", "block_metadata_endpoint"}),
    NetworkMode.BLOCKED: frozenset({"mode"}),
}
_ALL_FIELDS = frozenset().union(*_FIELDS_BY_MODE.values())


def parse_policy(raw: object) -> NetworkPolicy:
    """Validate a JSON-shaped policy and return it typed; raise `InvalidPolicy` on any defect."""
    if not isinstance(raw, Mapping):
        raise InvalidPolicy("policy", "must be an object")
    # varlink sends absent optional fields as null.
    raw = {k: v for k, v in raw.items() if v is not None}
    for key in raw:
        if not isinstance(key, str) or key not in _ALL_FIELDS:
            raise InvalidPolicy(str(key), f"is unknown (known: {', '.join(sorted(_ALL_FIELDS))})")
    mode_raw = raw.get("mode", NetworkMode.RESTRICTED.value)
    try:
        mode = NetworkMode(mode_raw)
    except ValueError:
        modes = ", ".join(m.value for m in NetworkMode)
        raise InvalidPolicy("mode", f"must be one of {modes}, not {mode_raw!r}") from None
    for key in raw:
        # A value that the mode ignores is refused unless it is the default, so nobody
        # believes it took effect.
        value = raw[key]
        if key not in _FIELDS_BY_MODE[mode] and not (value is None or value is True or value == []):
            raise InvalidPolicy(key, f"does not apply to mode {mode.value!r}")
    policy = NetworkPolicy(
        mode=mode,
        allowed_ports=_ports(raw.get("allowed_ports", ()), "allowed_ports", MAX_ALLOWED_PORTS),
        allowlist=_allowlist(raw.get("allowlist", ())),
        hosts=_hosts(raw.get("hosts", ())),
        block_private_networks=_bool(
            raw.get("block_private_networks", True), "block_private_networks"
        ),
        block_metadata_endpoint=_bool(
            raw.get("block_metadata_endpoint", True), "block_metadata_endpoint"
        ),
    )
    if mode is NetworkMode.ALLOWLIST and not policy.allowlist and not policy.hosts:
        raise InvalidPolicy("allowlist", "must list at least one entry in mode 'allowlist'")
    return policy


def _bool(value: object, where: str) -> bool:
    if not isinstance(value, bool):
        raise InvalidPolicy(where, "must be true or false")
    return value


def _list(value: object, where: str, limit: int) -> Sequence[object]:
    if isinstance(value, str | bytes) or not isinstance(value, Sequence):
        raise InvalidPolicy(where, "must be a list")
    if len(value) > limit:
        raise InvalidPolicy(where, f"has {len(value)} entries, more than the limit of {limit}")
    return value


def _ports(value: object, where: str, limit: int = MAX_PORTS_PER_ENTRY) -> tuple[int, ...]:
    ports = set()
    for port in _list(value, where, limit):
        # bool is an int in Python; `true` is not a port.
        if not isinstance(port, int) or isinstance(port, bool) or not 1 <= port <= 65535:
            raise InvalidPolicy(where, f"has {port!r}, which is not a port number 1-65535")
        ports.add(port)
    return tuple(sorted(ports))


def _check_keys(raw: Mapping[str, Any], allowed: frozenset[str], where: str) -> None:
    for key in raw:
        if key not in allowed:
            raise InvalidPolicy(
                f"{where}.{key}", f"is unknown (known: {', '.join(sorted(allowed))})"
            )
    if "target" not in raw:
        raise InvalidPolicy(f"{where}.target", "is missing")


def _parse_network(text: str, where: str) -> IPNetwork:
    try:
        net = ipaddress.ip_network(text, strict=True)
    except ValueError as exc:
        raise InvalidPolicy(where, f"is not a valid address or CIDR ({exc})") from None
    minimum = MIN_PREFIX_V4 if net.version == 4 else MIN_PREFIX_V6
    if net.prefixlen < minimum:
        raise InvalidPolicy(
            where, f"covers /{net.prefixlen}, wider than /{minimum}; use mode 'open' instead"
        )
    return net


def _looks_like_address(text: str) -> bool:
    return ":" in text or bool(re.fullmatch(r"[0-9./]+", text))


def _parse_name(text: str, where: str) -> str:
    name = text.lower().rstrip(".")
    wildcard = name.startswith("*.")
    base = name[2:] if wildcard else name
    if not base or len(base) > MAX_NAME_LENGTH:
        raise InvalidPolicy(where, f"must be a DNS name of 1-{MAX_NAME_LENGTH} characters")
    labels = base.split(".")
    for label in labels:
        if len(label) > MAX_LABEL_LENGTH or not _LABEL.match(label):
            raise InvalidPolicy(
                where,
                f"has the label {label!r}; names use letters, digits, '-' and '_', "
                "and a wildcard only as a leading '*.'",
            )
    if len(labels) < 2:
        raise InvalidPolicy(where, f"{text!r} needs at least two labels (like example.com)")
    return name


def _parse_allow_entry(raw: object, where: str) -> AllowEntry:
    if not isinstance(raw, Mapping):
        raise InvalidPolicy(where, "must be an object with 'target' and optional 'ports'")
    raw = {k: v for k, v in raw.items() if v is not None}
    _check_keys(raw, frozenset({"target", "ports"}), where)
    target = raw["target"]
    if not isinstance(target, str) or not target:
        raise InvalidPolicy(f"{where}.target", "must be a non-empty string")
    ports = _ports(raw.get("ports", ()), f"{where}.ports")
    if _looks_like_address(target):
        net = _parse_network(target, f"{where}.target")
        return AllowEntry(target=str(_compact(net)), ports=ports, network=net)
    name = _parse_name(target, f"{where}.target")
    return AllowEntry(target=name, ports=ports, name=name)


def _allowlist(value: object) -> tuple[AllowEntry, ...]:
    entries = [
        _parse_allow_entry(item, f"allowlist[{i}]")
        for i, item in enumerate(_list(value, "allowlist", MAX_ALLOWLIST_ENTRIES))
    ]
    seen: set[str] = set()
    for i, entry in enumerate(entries):
        if entry.target in seen:
            raise InvalidPolicy(f"allowlist[{i}]", f"repeats {entry.target!r}; merge its ports")
        seen.add(entry.target)
    return tuple(entries)


def _hosts(value: object) -> tuple[HostException, ...]:
    out = []
    for i, item in enumerate(_list(value, "hosts", MAX_HOSTS)):
        where = f"hosts[{i}]"
        if not isinstance(item, Mapping):
            raise InvalidPolicy(where, "must be an object with 'target', 'ports' and 'name'")
        item = {k: v for k, v in item.items() if v is not None}
        _check_keys(item, frozenset({"target", "ports", "name"}), where)
        target = item["target"]
        if not isinstance(target, str) or not _looks_like_address(target):
            raise InvalidPolicy(f"{where}.target", "must be an IP address or CIDR")
        name = item.get("name")
        if name is not None and (not isinstance(name, str) or not _HOST_LABEL.match(name)):
            raise InvalidPolicy(
                f"{where}.name", "must be a short host label (letters, digits, .-_)"
            )
        out.append(
            HostException(
                network=_parse_network(target, f"{where}.target"),
                ports=_ports(item.get("ports", ()), f"{where}.ports"),
                name=name,
            )
        )
    return tuple(out)


def _compact(net: IPNetwork) -> ipaddress.IPv4Address | ipaddress.IPv6Address | IPNetwork:
    """A single-address network prints as the bare address."""
    full = 32 if net.version == 4 else 128
    return net.network_address if net.prefixlen == full else net
