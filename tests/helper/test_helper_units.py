"""Admin policy, provisioning arithmetic, identity, typed conversion and client hygiene."""

from __future__ import annotations

import ipaddress
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from coi.helper.hardening import cap_names, read_caps
from coi.helper.identity import PeerIdentity, read_start_time
from coi.helper.interface import Err
from coi.helper.ipc.errors import VarlinkError
from coi.helper.policy import Policy, PolicyFileError, load_policy
from coi.helper.provision import (
    ProvisionError,
    choose_subnet,
    ensure_subid,
    parse_subnet,
    remove_subid,
)


# ------------------------------------------------------------------------------ policy
def test_missing_policy_file_means_defaults(tmp_path: Path) -> None:
    policy = load_policy(str(tmp_path / "absent.toml"))
    assert not policy.loaded
    assert policy.allowed_modes == ("restricted", "allowlist", "open", "blocked")
    policy.check_mode("open")


def test_policy_is_enforced_with_named_errors(tmp_path: Path) -> None:
    path = tmp_path / "policy.toml"
    path.write_text(
        'allowed_modes = ["allowlist", "restricted"]\nmonitoring = "required"\n'
        "max_allowlist_entries = 3\n"
    )
    policy = load_policy(str(path))
    assert policy.loaded and policy.allowed_modes == ("restricted", "allowlist")
    policy.check_mode("restricted")
    with pytest.raises(VarlinkError) as err:
        policy.check_mode("open")
    assert err.value.name == Err.POLICY_FORBIDDEN
    assert err.value.parameters["rule"] == "allowed_modes"
    assert err.value.parameters["path"] == str(path)
    assert "'open'" in err.value.parameters["reason"]
    with pytest.raises(VarlinkError, match="max_allowlist_entries"):
        policy.check_allowlist_size(4)
    policy.check_allowlist_size(3)
    with pytest.raises(VarlinkError, match="monitoring"):
        policy.check_monitoring(False)
    assert policy.describe().monitoring == "required"


@pytest.mark.parametrize(
    "text",
    [
        "allowed_modes = []",
        'allowed_modes = ["everything"]',
        "allowed_modes = 'open'",
        'monitoring = "sometimes"',
        "max_allowlist_entries = -1",
        "max_allowlist_entries = true",
        "unknown_key = 1",
        "not toml ===",
    ],
)
def test_invalid_policy_files_are_errors(tmp_path: Path, text: str) -> None:
    path = tmp_path / "policy.toml"
    path.write_text(text)
    with pytest.raises(PolicyFileError) as err:
        load_policy(str(path))
    assert str(path) in str(err.value)


def test_default_policy_object() -> None:
    assert Policy().describe().path == "/etc/coi/policy.toml"


# -------------------------------------------------------------------------- provisioning
def test_subnet_choice_is_deterministic_and_avoids_taken_ranges() -> None:
    first = choose_subnet(1001, [])
    assert first == ipaddress.IPv4Interface("10.218.233.1/24")  # 1001 % 256 == 233
    assert choose_subnet(1001, []) == first
    taken = [ipaddress.IPv4Network("10.218.233.0/24"), ipaddress.IPv4Network("10.218.234.0/23")]
    assert choose_subnet(1001, taken) == ipaddress.IPv4Interface("10.218.236.1/24")
    # The search wraps around the range.
    assert choose_subnet(255, [ipaddress.IPv4Network("10.218.255.0/24")]).network == (
        ipaddress.IPv4Network("10.218.0.0/24")
    )
    with pytest.raises(ProvisionError):
        choose_subnet(1, [ipaddress.IPv4Network("10.218.0.0/16")])


@pytest.mark.parametrize(
    "text", ["10.0.0.0/24", "10.0.0.255/24", "8.8.8.1/24", "10.0.0.1/8", "nonsense", "10.0.0.1/30"]
)
def test_bad_explicit_subnets(text: str) -> None:
    with pytest.raises(ProvisionError):
        parse_subnet(text)


def test_subid_edits_are_idempotent_and_keep_other_lines(tmp_path: Path) -> None:
    path = tmp_path / "subuid"
    path.write_text("root:1000000:1000000000\nalice:100000:65536")  # no final newline
    assert ensure_subid(str(path), "root:1001:1")
    assert not ensure_subid(str(path), "root:1001:1")
    assert path.read_text().splitlines() == [
        "root:1000000:1000000000",
        "alice:100000:65536",
        "root:1001:1",
    ]
    assert remove_subid(str(path), "root:1001:1")
    assert not remove_subid(str(path), "root:1001:1")
    assert "root:1001:1" not in path.read_text()


# ------------------------------------------------------------------------------ identity
def test_peer_identity_of_a_socketpair_is_this_process() -> None:
    a, b = socket.socketpair()
    try:
        peer = PeerIdentity.from_socket(a)
        assert peer.pid == os.getpid() and peer.uid == os.getuid()
        assert peer.start_time == read_start_time(os.getpid())
        assert peer.alive()
        peer.close()
    finally:
        a.close()
        b.close()


def test_identity_of_an_exited_peer_is_dead() -> None:
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        # An identity pinned to a child that then exits (pidfd of the child, not our socket).
        peer = PeerIdentity(proc.pid, 0, 0, read_start_time(proc.pid), (), os.pidfd_open(proc.pid))
        assert peer.alive()
        proc.kill()
        proc.wait()
        assert not peer.alive()
        peer.close()
    finally:
        proc.kill()
        proc.wait()


@pytest.mark.parametrize(
    ("release", "want"),
    [
        ("6.6.0", True),
        ("6.18.44-fc-v657", True),
        ("6.5.13-generic", False),
        ("5.15.0", False),
        ("7.0", True),
        ("garbage", False),
    ],
)
def test_kernel_version_check(release: str, want: bool) -> None:
    from coi.helper.main import kernel_at_least

    assert kernel_at_least(6, 6, release) is want


def test_capability_names() -> None:
    assert cap_names(1 << 12) == ["cap_net_admin"]
    assert cap_names(0) == []
    caps = read_caps()
    assert isinstance(caps.effective, int)


# ---------------------------------------------------------------------------- client side
def test_helper_client_imports_nothing_server_only() -> None:
    code = (
        "import sys, coi.launcher.helper_client\n"
        "bad = [m for m in ('jeepney', 'pylxd', 'coi.helper.server', 'coi.helper.app',"
        " 'coi.helper.polkit', 'coi.helper.provision') if m in sys.modules]\n"
        "print(bad)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "[]"


def test_helper_client_translates_errors() -> None:
    from coi.launcher.helper_client import (
        HelperNotAuthorised,
        HelperNotOwner,
        HelperPolicyForbidden,
        HelperRequestError,
        _translate,
    )

    e = _translate(VarlinkError(Err.NOT_OWNER, {"instance": "c", "project": "p", "uid": 5}), "x")
    assert isinstance(e, HelperNotOwner) and "project p" in str(e)
    e = _translate(VarlinkError(Err.INTERACTIVE_AUTH, {"action": "a"}), "x")
    assert isinstance(e, HelperNotAuthorised) and str(e).startswith("not authorised")
    e = _translate(VarlinkError(Err.PERMISSION_DENIED, {"action": "a", "reason": "r"}), "x")
    assert isinstance(e, HelperNotAuthorised) and e.hint
    e = _translate(
        VarlinkError(Err.POLICY_FORBIDDEN, {"rule": "allowed_modes", "path": "/p", "reason": "no"}),
        "x",
    )
    assert isinstance(e, HelperPolicyForbidden) and "/p" in str(e)
    assert isinstance(_translate(VarlinkError("x.y.Z"), "m"), HelperRequestError)


def test_helper_client_without_helper(tmp_path: Path) -> None:
    from coi.launcher.helper_client import HelperClient, HelperNotRunning, helper_health

    with pytest.raises(HelperNotRunning) as err:
        HelperClient(str(tmp_path / "none.sock")).get_info()
    assert "helper not running" in str(err.value)
    health = helper_health(str(tmp_path / "none.sock"))
    assert not health.reachable and not health.authorised
