"""Reduce the helper to CAP_NET_ADMIN, locked, before it serves anyone.

Order matters: the bounding set and securebits need CAP_SETPCAP, so they go first; then the
permitted/effective/inheritable sets shrink to the kept capabilities (capset applies to the
calling thread only, so this runs before any thread exists); then no-new-privs and
non-dumpable. `python3-cap-ng` (the `capng` module) is used when importable; it is only a distro
package, so the same steps exist through ctypes on libc. The result is read back from
/proc/self/status, and any difference raises HardeningError: the helper then refuses to serve.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
from dataclasses import dataclass

CAP_NAMES = [
    "chown",
    "dac_override",
    "dac_read_search",
    "fowner",
    "fsetid",
    "kill",
    "setgid",
    "setuid",
    "setpcap",
    "linux_immutable",
    "net_bind_service",
    "net_broadcast",
    "net_admin",
    "net_raw",
    "ipc_lock",
    "ipc_owner",
    "sys_module",
    "sys_rawio",
    "sys_chroot",
    "sys_ptrace",
    "sys_pacct",
    "sys_admin",
    "sys_boot",
    "sys_nice",
    "sys_resource",
    "sys_time",
    "sys_tty_config",
    "mknod",
    "lease",
    "audit_write",
    "audit_control",
    "setfcap",
    "mac_override",
    "mac_admin",
    "syslog",
    "wake_alarm",
    "block_suspend",
    "audit_read",
    "perfmon",
    "bpf",
    "checkpoint_restore",
]
CAP_NET_ADMIN = CAP_NAMES.index("net_admin")
# What the helper keeps. A feature that proves it needs more adds it here, with the reason.
KEEP = (CAP_NET_ADMIN,)
# What programs executed by the helper inherit (ambient, a subset of KEEP).
# Ambient CAP_NET_ADMIN: the allowlist resolvers (dnsmasq --nftset) the helper starts need it
# after exec; nothing else is inherited (the bounding set holds only CAP_NET_ADMIN anyway).
AMBIENT: tuple[int, ...] = (CAP_NET_ADMIN,)

PR_SET_DUMPABLE = 4
PR_GET_SECUREBITS = 27
PR_SET_SECUREBITS = 28
PR_CAPBSET_READ = 23
PR_CAPBSET_DROP = 24
PR_SET_NO_NEW_PRIVS = 38
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_RAISE = 2
PR_CAP_AMBIENT_CLEAR_ALL = 4

SECBIT_NOROOT = 1 << 0
SECBIT_NOROOT_LOCKED = 1 << 1
SECBIT_NO_SETUID_FIXUP = 1 << 2
SECBIT_NO_SETUID_FIXUP_LOCKED = 1 << 3
SECBIT_KEEP_CAPS_LOCKED = 1 << 5
SECBIT_NO_CAP_AMBIENT_RAISE = 1 << 6
SECBIT_NO_CAP_AMBIENT_RAISE_LOCKED = 1 << 7
# Root can never regain capabilities by exec or setuid, and nobody can undo that.
LOCKED_SECUREBITS = (
    SECBIT_NOROOT
    | SECBIT_NOROOT_LOCKED
    | SECBIT_NO_SETUID_FIXUP
    | SECBIT_NO_SETUID_FIXUP_LOCKED
    | SECBIT_KEEP_CAPS_LOCKED
    | SECBIT_NO_CAP_AMBIENT_RAISE
    | SECBIT_NO_CAP_AMBIENT_RAISE_LOCKED
)

_LINUX_CAPABILITY_VERSION_3 = 0x20080522


class HardeningError(Exception):
    """The helper could not drop its privileges; it must not serve."""


@dataclass(frozen=True)
class ProcessCaps:
    """Capability sets and flags of a process, from /proc/<pid>/status."""

    inheritable: int
    permitted: int
    effective: int
    bounding: int
    ambient: int
    no_new_privs: bool


def read_caps(pid: int | str = "self") -> ProcessCaps:
    """Read a process's capability sets and NoNewPrivs."""
    fields: dict[str, str] = {}
    with open(f"/proc/{pid}/status", encoding="ascii") as f:
        for line in f:
            key, _, value = line.partition(":")
            fields[key] = value.strip()
    return ProcessCaps(
        inheritable=int(fields["CapInh"], 16),
        permitted=int(fields["CapPrm"], 16),
        effective=int(fields["CapEff"], 16),
        bounding=int(fields["CapBnd"], 16),
        ambient=int(fields.get("CapAmb", "0"), 16),
        no_new_privs=fields.get("NoNewPrivs", "0") == "1",
    )


def cap_names(mask: int) -> list[str]:
    """Names (cap_net_admin, ...) of the capabilities set in `mask`."""
    return [
        f"cap_{CAP_NAMES[i]}" if i < len(CAP_NAMES) else f"cap_{i}"
        for i in range(64)
        if mask >> i & 1
    ]


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


def _prctl(libc: ctypes.CDLL, option: int, arg2: int = 0, what: str = "", arg3: int = 0) -> int:
    rc = int(libc.prctl(option, ctypes.c_ulong(arg2), ctypes.c_ulong(arg3), 0, 0))
    if rc < 0:
        err = ctypes.get_errno()
        raise HardeningError(f"prctl {what or option} failed: {os.strerror(err)}")
    return rc


def _last_cap() -> int:
    try:
        with open("/proc/sys/kernel/cap_last_cap", encoding="ascii") as f:
            return int(f.read())
    except OSError:
        return len(CAP_NAMES) - 1


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [
        ("effective", ctypes.c_uint32),
        ("permitted", ctypes.c_uint32),
        ("inheritable", ctypes.c_uint32),
    ]


def _capset(libc: ctypes.CDLL, mask: int, inheritable: int = 0) -> None:
    header = _CapHeader(_LINUX_CAPABILITY_VERSION_3, 0)
    data = (_CapData * 2)()
    for i in range(2):
        word = (mask >> (32 * i)) & 0xFFFFFFFF
        data[i].effective = word
        data[i].permitted = word
        data[i].inheritable = (inheritable >> (32 * i)) & 0xFFFFFFFF
    if libc.capset(ctypes.byref(header), data) != 0:
        raise HardeningError(f"capset failed: {os.strerror(ctypes.get_errno())}")


def _raise_ambient(libc: ctypes.CDLL, ambient: tuple[int, ...]) -> None:
    for cap in ambient:
        _prctl(libc, PR_CAP_AMBIENT, PR_CAP_AMBIENT_RAISE, f"PR_CAP_AMBIENT_RAISE({cap})", cap)


def _drop_with_capng(keep: tuple[int, ...], ambient: tuple[int, ...], libc: ctypes.CDLL) -> bool:
    try:
        import capng  # distro package python3-cap-ng only: optional
    except ImportError:
        return False
    capng.capng_clear(capng.CAPNG_SELECT_BOTH)
    for cap in keep:
        capng.capng_update(capng.CAPNG_ADD, capng.CAPNG_EFFECTIVE | capng.CAPNG_PERMITTED, cap)
        capng.capng_update(capng.CAPNG_ADD, capng.CAPNG_BOUNDING_SET, cap)
    for cap in ambient:
        capng.capng_update(capng.CAPNG_ADD, capng.CAPNG_INHERITABLE, cap)
    if capng.capng_apply(capng.CAPNG_SELECT_BOTH) != 0:
        raise HardeningError("capng_apply failed")
    _prctl(libc, PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, "PR_CAP_AMBIENT_CLEAR_ALL")
    _raise_ambient(libc, ambient)
    if capng.capng_lock() != 0:
        raise HardeningError("capng_lock failed")
    return True


def _drop_with_prctl(keep: tuple[int, ...], ambient: tuple[int, ...], libc: ctypes.CDLL) -> None:
    mask = sum(1 << c for c in keep)
    amb = sum(1 << c for c in ambient)
    setpcap = 1 << CAP_NAMES.index("setpcap")
    had_setpcap = bool(read_caps().effective & setpcap)
    # Under systemd (CapabilityBoundingSet=, SecureBits=) parts are done already, and
    # CAP_SETPCAP is gone: only do what is still missing.
    for cap in range(_last_cap() + 1):
        if cap not in keep and _prctl(libc, PR_CAPBSET_READ, cap, "PR_CAPBSET_READ") == 1:
            _prctl(libc, PR_CAPBSET_DROP, cap, f"PR_CAPBSET_DROP({cap})")
    # Keep CAP_SETPCAP until the securebits are locked, then shed it too.
    _capset(libc, mask | (setpcap if had_setpcap else 0), amb)
    _prctl(libc, PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, "PR_CAP_AMBIENT_CLEAR_ALL")
    _raise_ambient(libc, ambient)
    bits = _prctl(libc, PR_GET_SECUREBITS, 0, "PR_GET_SECUREBITS")
    if bits & LOCKED_SECUREBITS != LOCKED_SECUREBITS:
        _prctl(libc, PR_SET_SECUREBITS, bits | LOCKED_SECUREBITS, "PR_SET_SECUREBITS")
    _capset(libc, mask, amb)


def drop_privileges(
    keep: tuple[int, ...] = KEEP, ambient: tuple[int, ...] = AMBIENT
) -> ProcessCaps:
    """Keep only `keep` (locked), set no-new-privs and non-dumpable; verify; return the result.

    `ambient` (a subset of `keep`) are handed on to programs the helper executes (e.g. a
    resolver that must bind port 53); everything else is lost on exec. Must run as root
    before any thread is started. Raises HardeningError on any failure.
    """
    if os.geteuid() != 0:
        raise HardeningError("coi-helper must start as root to drop to CAP_NET_ADMIN")
    if not set(ambient) <= set(keep):
        raise HardeningError("ambient capabilities must be a subset of the kept ones")
    libc = _libc()
    mask = sum(1 << c for c in keep)
    amb = sum(1 << c for c in ambient)
    if not _drop_with_capng(keep, ambient, libc):
        _drop_with_prctl(keep, ambient, libc)
    _prctl(libc, PR_SET_NO_NEW_PRIVS, 1, "PR_SET_NO_NEW_PRIVS")
    _prctl(libc, PR_SET_DUMPABLE, 0, "PR_SET_DUMPABLE")
    caps = read_caps()
    problems = []
    if caps.effective != mask or caps.permitted != mask:
        problems.append(f"effective/permitted are {caps.effective:#x}/{caps.permitted:#x}")
    if caps.bounding & ~mask:
        problems.append(f"bounding set is {caps.bounding:#x}")
    if caps.inheritable != amb or caps.ambient != amb:
        problems.append(f"inheritable/ambient are {caps.inheritable:#x}/{caps.ambient:#x}")
    if not caps.no_new_privs:
        problems.append("no-new-privs is not set")
    bits = _prctl(libc, PR_GET_SECUREBITS, 0, "PR_GET_SECUREBITS")
    if bits & LOCKED_SECUREBITS != LOCKED_SECUREBITS:
        problems.append(f"securebits are {bits:#x}")
    if problems:
        raise HardeningError("privilege drop incomplete: " + "; ".join(problems))
    return caps
