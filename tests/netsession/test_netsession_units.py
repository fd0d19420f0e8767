"""Unit tests of the launcher's network session: config → policy, hook, context, contract.

The helper is faked at its seam (a HelperClient stand-in); the code under test is real.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pytest

from coi.launcher.config import load_config
from coi.launcher.config.model import NetworkConfig, NetworkHost
from coi.launcher.errors import CoiError
from coi.launcher.helper_client import (
    HelperClient,
    HelperNotAuthorised,
    HelperNotRunning,
    HelperPolicyForbidden,
    NetworkAllowEntry,
    NetworkHostException,
    NetworkMode,
    NetworkPolicy,
    _contract_checked,
)
from coi.launcher.session.network import (
    NetworkPolicyError,
    context_lines,
    network_hook,
    new_veth_name,
    remove_network_policy,
    session_network,
)
from coi.launcher.session.phases import Teardown

BASE = NetworkConfig(
    mode="restricted",
    allowed_domains=("api.example.com", "*.cdn.example"),
    allowed_ports=(),
    block_private_networks=True,
    block_metadata_endpoint=True,
    hosts=(),
)


def test_contract_of_the_network_methods_matches_the_interface() -> None:
    _contract_checked.cache_clear()
    assert _contract_checked()


def test_restricted_policy_carries_only_restricted_fields() -> None:
    config = replace(
        BASE,
        allowed_ports=(443, 80, 443),
        hosts=(NetworkHost("10.1.2.3", (22,)), NetworkHost("git.internal", ())),
    )
    net = session_network(config, resolve=lambda name: ["10.9.9.9", "fd00::9"])
    assert net.policy == NetworkPolicy(
        NetworkMode.RESTRICTED,
        allowed_ports=[80, 443],
        hosts=[
            NetworkHostException("10.1.2.3", [22]),
            NetworkHostException("10.9.9.9", None, "git.internal"),
            NetworkHostException("fd00::9", None, "git.internal"),
        ],
        block_private_networks=True,
        block_metadata_endpoint=True,
    )
    assert net.needs_helper


def test_allowlist_and_open_policies() -> None:
    allow = session_network(replace(BASE, mode="allowlist"), resolve=lambda n: [])
    assert allow.policy == NetworkPolicy(
        NetworkMode.ALLOWLIST,
        allowlist=[NetworkAllowEntry("api.example.com"), NetworkAllowEntry("*.cdn.example")],
    )
    opened = session_network(replace(BASE, mode="open", block_metadata_endpoint=False))
    assert opened.policy == NetworkPolicy(NetworkMode.OPEN, block_metadata_endpoint=False)
    assert not opened.needs_helper


def test_unresolvable_host_exception_is_a_clear_error() -> None:
    config = replace(BASE, hosts=(NetworkHost("nothing.invalid", ()),))

    def fail(name: str) -> list[str]:
        raise NetworkPolicyError(f"network host exception {name!r} does not resolve")

    with pytest.raises(NetworkPolicyError, match=r"nothing\.invalid"):
        session_network(config, resolve=fail)


def test_veth_names_fit_the_kernel_limit_and_differ() -> None:
    names = {new_veth_name() for _ in range(50)}
    assert len(names) == 50
    assert all(len(n) == 15 and n.startswith("coi") for n in names)


def test_untrusted_project_file_cannot_widen_the_network(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(home / ".config"))
    monkeypatch.setenv("COI_SYSTEM_CONFIG", str(tmp_path / "none.toml"))
    for var in ("COI_CONFIG", "COI_NETWORK_MODE", "COI_NETWORK_ALLOWED_DOMAINS"):
        monkeypatch.delenv(var, raising=False)
    ws = tmp_path / "ws"
    ws.mkdir()
    (ws / ".coi.toml").write_text(
        "[network]\n"
        'mode = "open"\n'
        'allowed_domains = ["evil.example"]\n'
        "allowed_ports = []\n"
        "block_private_networks = false\n"
        "block_metadata_endpoint = false\n"
        '[[network.hosts]]\nhost = "10.0.0.1"\nports = [22]\n'
    )
    loaded = load_config(ws, profile=None, cli_overrides={})
    net = loaded.config.network
    assert net.mode == "restricted"
    assert "evil.example" not in net.allowed_domains
    assert net.block_private_networks and net.block_metadata_endpoint
    assert net.hosts == ()
    assert len(loaded.warnings) >= 4
    # Narrowing is kept: allowlist is stricter than restricted.
    (ws / ".coi.toml").write_text('[network]\nmode = "allowlist"\n')
    assert load_config(ws, profile=None, cli_overrides={}).config.network.mode == "allowlist"


# ----------------------------------------------------------------- the hook, faked helper
@dataclass
class FakeHelper:
    """Stands in for HelperClient at its seam; records calls, can refuse."""

    fail: CoiError | None = None
    calls: list[tuple[str, str, str]] = field(default_factory=list)

    def __call__(self) -> FakeHelper:
        return self

    def __enter__(self) -> FakeHelper:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def apply_network_policy(self, instance: str, project: str, policy: NetworkPolicy) -> int:
        self.calls.append(("apply", instance, policy.mode.value))
        if self.fail is not None:
            raise self.fail
        return 1

    def remove_network_policy(self, instance: str, project: str) -> bool:
        self.calls.append(("remove", instance, project))
        if isinstance(self.fail, HelperNotRunning):
            raise self.fail
        return True


@dataclass
class FakeIncus:
    """The IncusClient seam: a project and one container's status."""

    status: str | None = "Running"
    project: str = "default"
    stopped: list[str] = field(default_factory=list)

    def instance(self, name: str) -> Any:
        return None if self.status is None else type("I", (), {"status": self.status})()

    def set_state(self, name: str, action: str, *, force: bool = False) -> None:
        self.stopped.append(name)
        self.status = "Stopped"


@pytest.fixture
def teardown() -> Iterator[Teardown]:
    td = Teardown()
    yield td
    assert td.run() == []


def _hook(mode: str, helper: FakeHelper, persistent: bool = False) -> Any:
    return network_hook(
        session_network(replace(BASE, mode=mode)),  # type: ignore[arg-type]
        persistent=persistent,
        helper=helper,  # type: ignore[arg-type]
    )


def test_ephemeral_session_applies_then_stops_and_removes(teardown: Teardown) -> None:
    helper, incus = FakeHelper(), FakeIncus()
    _hook("restricted", helper)(incus, "c1", teardown)
    assert helper.calls == [("apply", "c1", "restricted")]
    assert teardown.run() == []
    # The container is stopped before its rules go (never running without them).
    assert incus.stopped == ["c1"]
    assert helper.calls[-1] == ("remove", "c1", "default")


def test_persistent_session_keeps_its_policy(teardown: Teardown) -> None:
    helper, incus = FakeHelper(), FakeIncus()
    _hook("allowlist", helper, persistent=True)(incus, "c1", teardown)
    assert teardown.run() == []
    assert helper.calls == [("apply", "c1", "allowlist")]
    assert incus.stopped == []


@pytest.mark.parametrize(
    ("error", "cause"),
    [
        (
            HelperNotRunning("helper not running: nothing listens on /x", hint="start it"),
            "start it",
        ),
        (HelperNotAuthorised("not authorised: polkit refused", hint="join incus"), "join incus"),
        (HelperPolicyForbidden("the administrator's policy forbids this"), "see `coi health`"),
    ],
)
def test_refusal_fails_closed_with_one_sentence(error: CoiError, cause: str) -> None:
    helper, incus = FakeHelper(fail=error), FakeIncus()
    td = Teardown()
    with pytest.raises(NetworkPolicyError) as info:
        _hook("restricted", helper)(incus, "c1", td)
    text = str(info.value)
    assert text.startswith("network mode restricted cannot be enforced")
    assert str(error) in text
    assert info.value.hint is not None and cause in info.value.hint
    assert "--network open" in info.value.hint
    # A half-applied policy is undone at once; nothing is left for the teardown.
    assert helper.calls[-1] == ("remove", "c1", "default")
    assert td.run() == []
    assert incus.stopped == []


@pytest.mark.parametrize(
    "error",
    [HelperNotRunning("helper not running"), HelperNotAuthorised("not authorised: polkit")],
)
def test_open_needs_no_helper(teardown: Teardown, error: CoiError) -> None:
    class Refusing(FakeHelper):
        def remove_network_policy(self, instance: str, project: str) -> bool:
            super().remove_network_policy(instance, project)
            raise error

    helper = Refusing()
    _hook("open", helper)(FakeIncus(), "c1", teardown)
    assert [c[0] for c in helper.calls] == ["remove"]  # a stale policy dropped if possible


def test_remove_network_policy_for_manage_commands() -> None:
    assert remove_network_policy(FakeHelper(), "c1", "default") is True  # type: ignore[arg-type]
    missing = FakeHelper(fail=HelperNotRunning("helper not running"))
    assert remove_network_policy(missing, "c1", "p") is False  # type: ignore[arg-type]
    with pytest.raises(HelperNotRunning):
        remove_network_policy(missing, "c1", "p", missing_helper_ok=False)  # type: ignore[arg-type]


def test_remove_network_policy_reports_a_refusal() -> None:
    class Refusing(FakeHelper):
        def remove_network_policy(self, instance: str, project: str) -> bool:
            raise HelperNotAuthorised("not authorised: polkit refused", hint="join incus")

    with pytest.raises(NetworkPolicyError, match="could not remove the network policy of c1"):
        remove_network_policy(Refusing(), "c1", "p")  # type: ignore[arg-type]


def test_context_lines_state_mode_and_allowlist() -> None:
    allow = "\n".join(context_lines(session_network(replace(BASE, mode="allowlist"))))
    assert "**allowlist**" in allow and "`api.example.com`" in allow and "`*.cdn.example`" in allow
    restricted = session_network(
        replace(BASE, allowed_ports=(443,), hosts=(NetworkHost("10.1.2.3", (22,)),))
    )
    text = "\n".join(context_lines(restricted))
    assert "**restricted**" in text and "443" in text and "`10.1.2.3` (22)" in text
    assert "api.example.com" not in text
    assert "not restricted" in "\n".join(context_lines(session_network(replace(BASE, mode="open"))))


def test_helper_client_type_is_the_default_factory() -> None:
    # The hook's default seam is the real client class (called with no arguments).
    import inspect

    default = inspect.signature(network_hook).parameters["helper"].default
    assert default is HelperClient


def test_network_flag_values() -> None:
    from coi.launcher.cli.run_options import NetworkChoice, network_flag
    from coi.launcher.errors import UsageError

    assert network_flag(None) is None
    assert network_flag(NetworkChoice.ALLOWLIST) == "allowlist"
    assert network_flag("OPEN") == "open"
    with pytest.raises(UsageError, match="is not a network mode"):
        network_flag("blocked")
