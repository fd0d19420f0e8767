"""The network engine: install, replace, list, count, quarantine and reconcile container policies.

Every change is one nftables transaction covering both coi tables. State lives in the kernel
plus one small JSON file per container in the state directory (written *before* the
transaction, so a helper killed in the middle leaves an intent that `reconcile` completes or
undoes). Operations are serialised by a lock file, so several helper processes (socket
activation may overlap an exiting and a starting one) never interleave.

The engine trusts its arguments no more than it must: the IPC layer derives targets from Incus,
and `inspect_attachment` re-checks them against the kernel before anything is installed.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import os
import subprocess
import tempfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from coi.helper.network import nlcounters, ruleset
from coi.helper.network.errors import FirewallError, InvalidTarget, NetworkError
from coi.helper.network.nft import NftBackend, default_backend
from coi.helper.network.policy import NetworkMode, NetworkPolicy, blocked_policy, parse_policy
from coi.helper.network.resolver import (
    ResolverManager,
    ResolverSpec,
    Upstream,
    allocate_port,
    host_upstreams,
)
from coi.helper.network.target import ContainerKey, NetworkTarget, inspect_attachment, mark_of

DEFAULT_STATE_DIR = Path("/var/lib/coi/network")
DEFAULT_RUN_DIR = Path("/run/coi/resolvers")
STATE_VERSION = 1


@dataclass(frozen=True)
class AppliedPolicy:
    """One container's policy as the engine holds it."""

    target: NetworkTarget
    policy: NetworkPolicy
    generation: int
    dns_port: int | None = None
    # Filled by `list`/`get`: whether the kernel has the container's rules, and its resolver.
    installed: bool = True
    resolver_pid: int | None = None

    @property
    def key(self) -> ContainerKey:
        """The container's identity."""
        return self.target.key

    def to_dict(self) -> dict[str, Any]:
        """JSON shape (state file and `ListNetworkPolicies`)."""
        return {
            "version": STATE_VERSION,
            **self.target.to_dict(),
            "cid": self.key.cid,
            "policy": self.policy.to_dict(),
            "generation": self.generation,
            "dns_port": self.dns_port,
            "installed": self.installed,
            "resolver_pid": self.resolver_pid,
        }

    def to_entry(self) -> dict[str, Any]:
        """The varlink `NetworkPolicyEntry` of this policy (ListNetworkPolicies)."""
        return {
            "instance": self.key.instance,
            "project": self.key.project,
            "policy": self.policy.to_dict(),
            "generation": self.generation,
            "installed": self.installed,
            "resolver_running": self.resolver_pid is not None,
        }

    @staticmethod
    def from_dict(raw: dict[str, Any]) -> AppliedPolicy:
        """Inverse of `to_dict` (validates the stored policy again)."""
        port = raw.get("dns_port")
        return AppliedPolicy(
            target=NetworkTarget.from_dict(raw),
            policy=parse_policy(raw["policy"]),
            generation=int(raw["generation"]),
            dns_port=int(port) if port is not None else None,
        )


@dataclass(frozen=True)
class Counters:
    """Traffic of one container since its policy was (re)applied; `in_*` from the veth."""

    packets_out: int
    bytes_out: int
    packets_rejected: int
    bytes_rejected: int
    packets_l2_dropped: int
    bytes_l2_dropped: int
    packets_in: int
    bytes_in: int

    def to_dict(self) -> dict[str, int]:
        """JSON shape."""
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class ReconcileReport:
    """What `reconcile` changed."""

    removed: tuple[ContainerKey, ...] = ()
    reapplied: tuple[ContainerKey, ...] = ()
    orphan_ids: tuple[str, ...] = ()
    resolvers_stopped: tuple[str, ...] = ()


@dataclass
class _Inventory:
    """The coi objects the kernel holds right now, grouped by container id."""

    tables: set[str] = field(default_factory=set)
    base_chains: set[tuple[str, str]] = field(default_factory=set)
    objects: dict[str, list[ruleset.ObjectRef]] = field(default_factory=dict)
    elements: dict[str, list[tuple[str, str, Any]]] = field(default_factory=dict)
    marks: dict[int, str] = field(default_factory=dict)

    def cids(self) -> set[str]:
        return set(self.objects) | set(self.elements)

    def forget(self, cid: str) -> None:
        """Drop a container that was just removed (saves listing the kernel again)."""
        self.objects.pop(cid, None)
        self.elements.pop(cid, None)
        self.marks = {m: c for m, c in self.marks.items() if ruleset.cid_of(c) != cid}
        if not self.cids():
            # Removing the last container drops both tables.
            self.tables.clear()
            self.base_chains.clear()


class NetworkEngine:
    """Network isolation of coi containers (one instance per helper process)."""

    def __init__(
        self,
        state_dir: Path = DEFAULT_STATE_DIR,
        run_dir: Path = DEFAULT_RUN_DIR,
        backend: NftBackend | None = None,
        resolvers: ResolverManager | None = None,
        upstreams: tuple[Upstream, ...] | None = None,
    ) -> None:
        """`upstreams` defaults to the host's resolv.conf, read when a resolver starts."""
        self.state_dir = state_dir
        self.nft = backend or default_backend()
        self.resolvers = resolvers or ResolverManager(run_dir)
        self._upstreams = upstreams

    # --- public API -------------------------------------------------------------------

    def apply(self, target: NetworkTarget, policy: NetworkPolicy) -> AppliedPolicy:
        """Install or atomically replace the container's policy; return it with its generation.

        Raises InvalidTarget when the attachment does not check out, FirewallError when
        nftables refuses, ResolverError when an allowlist resolver cannot start (the rules are
        in place then, so DNS fails closed; the caller should remove the policy or retry).
        """
        with self._locked():
            return self._apply(target, policy)

    def remove(self, key: ContainerKey) -> bool:
        """Remove the container's rules, sets, counters, resolver and state; idempotent.

        Returns True if anything was removed.
        """
        with self._locked():
            return self._remove(key.cid)

    def quarantine(self, key: ContainerKey) -> AppliedPolicy:
        """Switch a container with a policy to `blocked` at once (cuts established traffic)."""
        with self._locked():
            current = self._load(key.cid)
            if current is None:
                raise InvalidTarget(
                    f"container {key.project}/{key.instance} has no network policy to quarantine"
                )
            return self._apply(current.target, blocked_policy())

    def get(self, key: ContainerKey) -> AppliedPolicy | None:
        """The container's policy, or None."""
        return next((p for p in self.list_policies() if p.key == key), None)

    def list_policies(self) -> list[AppliedPolicy]:
        """Every policy the engine holds, with kernel presence and resolver pid filled in."""
        with self._locked():
            # Deep: `installed` must notice a dispatch element someone deleted by hand.
            inv = self._inventory(deep=True)
            out = []
            for entry in self._load_all():
                cid = entry.key.cid
                out.append(
                    AppliedPolicy(
                        target=entry.target,
                        policy=entry.policy,
                        generation=entry.generation,
                        dns_port=entry.dns_port,
                        installed=self._complete(entry, inv),
                        resolver_pid=self.resolvers.pid(cid),
                    )
                )
            return out

    def read_counters(self, key: ContainerKey) -> Counters:
        """Packets and bytes out, rejected and dropped (nft counters), and in (veth stats)."""
        with self._locked():
            entry = self._load(key.cid)
            if entry is None:
                raise InvalidTarget(f"container {key.project}/{key.instance} has no network policy")
        cid = key.cid
        values = self._read_named_counters(cid)
        packets_in, bytes_in = _veth_tx(entry.target.veth)
        out = values.get(f"out_{cid}", (0, 0))
        rej = values.get(f"rej_{cid}", (0, 0))
        l2 = values.get(f"l2_{cid}", (0, 0))
        return Counters(
            packets_out=out[0],
            bytes_out=out[1],
            packets_rejected=rej[0],
            bytes_rejected=rej[1],
            packets_l2_dropped=l2[0],
            bytes_l2_dropped=l2[1],
            packets_in=packets_in,
            bytes_in=bytes_in,
        )

    def reconcile(self, keep: Iterable[ContainerKey]) -> ReconcileReport:
        """Make kernel and state agree with the set of containers that should have policies.

        Containers not in `keep` lose everything; kept containers whose rules are missing or
        incomplete (a crash mid-apply, a reboot) get their stored policy applied again; kernel
        objects and resolvers that belong to no state file are removed.
        """
        wanted = {k.cid: k for k in keep}
        removed: list[ContainerKey] = []
        reapplied: list[ContainerKey] = []
        with self._locked():
            inv = self._inventory(deep=True)
            stored = {e.key.cid: e for e in self._load_all()}
            for cid, entry in stored.items():
                if cid not in wanted:
                    self._remove(cid, inv)
                    removed.append(entry.key)
                    inv.forget(cid)
                elif not self._complete(entry, inv) or (
                    entry.policy.mode is NetworkMode.ALLOWLIST and self.resolvers.pid(cid) is None
                ):
                    self._apply(entry.target, entry.policy, inv)
                    reapplied.append(entry.key)
            orphans = sorted(inv.cids() - set(stored))
            for cid in orphans:
                self._remove(cid, inv)
                inv.forget(cid)
            resolving = [
                cid
                for cid, e in stored.items()
                if cid in wanted and e.policy.mode is NetworkMode.ALLOWLIST
            ]
            stopped = self.resolvers.reconcile(resolving)
        return ReconcileReport(
            removed=tuple(removed),
            reapplied=tuple(reapplied),
            orphan_ids=tuple(orphans),
            resolvers_stopped=tuple(stopped),
        )

    def remove_all(self) -> None:
        """Remove every coi table, resolver and state file (uninstall, tests)."""
        with self._locked():
            for cid in self.resolvers.known() | set(self.resolvers.processes()):
                self.resolvers.stop(cid)
            for family in (ruleset.INET, ruleset.BRIDGE):
                # One by one: either may be missing, and that is fine here.
                with contextlib.suppress(FirewallError):
                    self.nft.run([{"delete": {"table": {"family": family, "name": ruleset.TABLE}}}])
            for path in self._state_files():
                path.unlink(missing_ok=True)

    # --- internals --------------------------------------------------------------------

    def _apply(
        self, target: NetworkTarget, policy: NetworkPolicy, inv: _Inventory | None = None
    ) -> AppliedPolicy:
        attachment = inspect_attachment(target)
        cid = target.key.cid
        inv = inv or self._inventory()
        owner = inv.marks.get(target.key.mark)
        if owner is not None and ruleset.cid_of(owner) != cid:
            raise FirewallError(
                f"the packet mark of {target.key.project}/{target.key.instance} collides with "
                "another container's; rename one of them"
            )
        previous = self._load(cid)
        dns_port: int | None = None
        if policy.mode is NetworkMode.ALLOWLIST:
            if previous is not None and previous.dns_port is not None:
                dns_port = previous.dns_port
            else:
                used = [e.dns_port for e in self._load_all() if e.dns_port is not None]
                gateways = [g for g in (target.gateway4, target.gateway6) if g is not None]
                dns_port = allocate_port(used, gateways)
        entry = AppliedPolicy(
            target=target,
            policy=policy,
            generation=(previous.generation + 1) if previous else 1,
            dns_port=dns_port,
        )
        # Intent first: a crash after this point is completed or undone by `reconcile`.
        self._store(entry)
        compiled = ruleset.compile_policy(target, policy, attachment.bridge_mac, dns_port)

        def transaction(inv: _Inventory) -> list[Any]:
            commands = self._skeleton_if_missing(inv)
            commands += ruleset.replacement(
                inv.objects.get(cid, []), inv.elements.get(cid, []), compiled, target.veth
            )
            return commands

        try:
            self._run_with_retry(transaction, inv)
        except BaseException:
            # The transaction did not happen (it is atomic): the old state file is the truth.
            if previous is not None:
                self._store(previous)
            else:
                self._state_path(cid).unlink(missing_ok=True)
            raise
        if policy.mode is NetworkMode.ALLOWLIST:
            assert dns_port is not None
            listen = tuple(g for g in (target.gateway4, target.gateway6) if g is not None)
            upstreams = self._upstreams or host_upstreams()
            # Restarted on every apply: its sets were just recreated empty, and dnsmasq only
            # fills them from upstream answers, not from its cache.
            self.resolvers.start(
                ResolverSpec(
                    cid=cid,
                    listen=listen,
                    port=dns_port,
                    name_sets=compiled.name_sets,
                    upstreams=upstreams,
                    nft_table=ruleset.TABLE,
                )
            )
        else:
            self.resolvers.stop(cid)
        return entry

    def _remove(self, cid: str, inv: _Inventory | None = None) -> bool:
        inv = inv or self._inventory()
        state = self._state_path(cid)
        had = cid in inv.cids() or state.exists()
        stopped = self.resolvers.stop(cid)
        if inv.tables and not inv.cids() - {cid}:
            # The last container: drop both tables, leaving no trace in the kernel.
            self.nft.run(
                [
                    {"delete": {"table": {"family": f, "name": ruleset.TABLE}}}
                    for f in sorted(inv.tables)
                ]
            )
        elif cid in inv.cids():

            def transaction(inv: _Inventory) -> list[Any]:
                commands: list[Any] = ruleset.removal(
                    inv.objects.get(cid, []), inv.elements.get(cid, [])
                )
                return commands

            self._run_with_retry(transaction, inv)
        state.unlink(missing_ok=True)
        return had or stopped

    def _run_with_retry(
        self, transaction: Callable[[_Inventory], list[Any]], inv: _Inventory
    ) -> None:
        """Run the transaction built from `inv`; if the kernel refuses it, build it again from
        a deep inventory (the quick one assumes nobody else edited coi's tables) and retry."""
        try:
            self.nft.run(transaction(inv))
        except FirewallError:
            self.nft.run(transaction(self._inventory(deep=True)))

    def _skeleton_if_missing(self, inv: _Inventory) -> list[Any]:
        needed = {
            (ruleset.BRIDGE, "pre"),
            (ruleset.INET, "pre"),
            (ruleset.INET, "dns"),
            (ruleset.INET, "unmark"),
        }
        if needed <= inv.base_chains:
            return []
        if inv.tables:
            # Half a skeleton means someone else edited our tables: start over cleanly.
            raise FirewallError(
                "the coi nftables tables are damaged; run the helper's reconcile or delete "
                "'table inet coi' and 'table bridge coi'"
            )
        commands: list[Any] = ruleset.skeleton() + ruleset.skeleton_rules()
        return commands

    def _complete(self, entry: AppliedPolicy, inv: _Inventory) -> bool:
        cid = entry.key.cid
        have = set(inv.objects.get(cid, []))
        want = {
            ("bridge", "chain", f"l_{cid}_{entry.target.veth}"),
            ("inet", "chain", f"f_{cid}"),
            ("inet", "chain", f"r_{cid}"),
        }
        if entry.policy.mode is NetworkMode.ALLOWLIST:
            want.add(("inet", "chain", f"d_{cid}"))
        maps = {(f, m) for f, m, _k in inv.elements.get(cid, [])}
        return want <= have and {("bridge", "ports"), ("inet", "marks")} <= maps

    def _nft_list(self, what: str, family: str | None = None) -> list[dict[str, Any]]:
        arg = {"family": family} if family else None
        items: list[dict[str, Any]] = self.nft.run([{"list": {what: arg}}], terse=True)
        return items

    def _inventory(self, deep: bool = False) -> _Inventory:
        """The coi objects in the kernel.

        The quick form lists only chains and (terse) sets, which libnftables answers without
        fetching the whole ruleset, and derives the rest: every container's counters and
        dispatch elements are created in the same transaction as its chains, the mark follows
        from the container id, and the veth is part of the layer-2 chain's name. `deep` lists
        counters and map elements for real (reconcile: someone may have edited the tables).
        """
        inv = _Inventory()

        def ours(obj: dict[str, Any]) -> bool:
            return bool(
                obj.get("table") == ruleset.TABLE and obj.get("family") in ("inet", "bridge")
            )

        for item in self._nft_list("chains"):
            chain = item.get("chain", {})
            if not ours(chain):
                continue
            family, name = chain["family"], chain["name"]
            inv.tables.add(family)
            cid = ruleset.cid_of(name)
            if cid is None:
                inv.base_chains.add((family, name))
                continue
            inv.objects.setdefault(cid, []).append((family, "chain", name))
            if deep:
                continue
            mark = mark_of(cid)
            if name.startswith("l_"):
                inv.objects[cid] += [
                    (family, "counter", f"out_{cid}"),
                    (family, "counter", f"l2_{cid}"),
                ]
                inv.elements.setdefault(cid, []).append((family, "ports", name[len("l_") + 13 :]))
            elif name.startswith("f_"):
                inv.objects[cid].append((family, "counter", f"rej_{cid}"))
                inv.elements.setdefault(cid, []).append((family, "marks", mark))
                inv.marks[mark] = name
            elif name.startswith("d_"):
                inv.elements.setdefault(cid, []).append((family, "dnsmarks", mark))
        if "inet" in inv.tables:
            for item in self._nft_list("sets", "inet"):
                s = item.get("set", {})
                cid = ruleset.cid_of(s.get("name", "")) if ours(s) else None
                if cid is not None:
                    inv.objects.setdefault(cid, []).append((s["family"], "set", s["name"]))
        if deep and inv.tables:
            self._deep_inventory(inv)
        return inv

    def _deep_inventory(self, inv: _Inventory) -> None:
        for family in sorted(inv.tables):
            for name in nlcounters.read_counters(family, ruleset.TABLE):
                cid = ruleset.cid_of(name)
                if cid is not None:
                    inv.objects.setdefault(cid, []).append((family, "counter", name))
        for item in self.nft.run([{"list": {"maps": None}}]):
            m = item.get("map", {})
            if m.get("table") != ruleset.TABLE or m.get("family") not in inv.tables:
                continue
            for elem in m.get("elem", []):
                key, verdict = elem[0], elem[1]
                chain_name = next(iter(verdict.values()))["target"]
                cid = ruleset.cid_of(chain_name)
                if cid is None:
                    continue
                inv.elements.setdefault(cid, []).append((m["family"], m["name"], key))
                if m["name"] == "marks":
                    inv.marks[int(key)] = chain_name

    def _read_named_counters(self, cid: str) -> dict[str, tuple[int, int]]:
        out: dict[str, tuple[int, int]] = {}
        for family, name in (
            ("bridge", f"out_{cid}"),
            ("bridge", f"l2_{cid}"),
            ("inet", f"rej_{cid}"),
        ):
            out.update(nlcounters.read_counters(family, ruleset.TABLE, name))
        return out

    # --- state files ------------------------------------------------------------------

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(self.state_dir / ".lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def _state_path(self, cid: str) -> Path:
        return self.state_dir / f"{cid}.json"

    def _state_files(self) -> list[Path]:
        if not self.state_dir.is_dir():
            return []
        return sorted(self.state_dir.glob("*.json"))

    def _store(self, entry: AppliedPolicy) -> None:
        data = json.dumps(entry.to_dict(), indent=1, sort_keys=True)
        fd, tmp = tempfile.mkstemp(dir=self.state_dir, prefix=".tmp-")
        try:
            with os.fdopen(fd, "w") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self._state_path(entry.key.cid))
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise

    def _load(self, cid: str) -> AppliedPolicy | None:
        path = self._state_path(cid)
        try:
            return AppliedPolicy.from_dict(json.loads(path.read_text()))
        except FileNotFoundError:
            return None
        except (ValueError, KeyError, TypeError, NetworkError):
            # A state file we cannot read is dropped; reconcile then removes its objects.
            path.unlink(missing_ok=True)
            return None

    def _load_all(self) -> list[AppliedPolicy]:
        out = []
        for path in self._state_files():
            entry = self._load(path.stem)
            if entry is not None:
                out.append(entry)
        return out


def _veth_tx(veth: str) -> tuple[int, int]:
    """Packets and bytes the host sent into the container (the veth's transmit counters)."""
    proc = subprocess.run(
        ["ip", "-j", "-s", "link", "show", "dev", veth],
        capture_output=True,
        text=True,
        check=False,
        timeout=10,
    )
    if proc.returncode != 0:
        return 0, 0
    try:
        tx = json.loads(proc.stdout)[0]["stats64"]["tx"]
        return int(tx["packets"]), int(tx["bytes"])
    except (ValueError, KeyError, IndexError):
        return 0, 0
