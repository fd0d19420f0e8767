"""Parsers for the value syntaxes the configuration accepts (sizes, durations, CPU sets...).

Each `check_*` function raises `ValueError` with a short phrase saying what is wrong and what
is expected; the loader prefixes it with `file:line: key:`. Each `parse_*` function returns the
typed value used by the rest of the launcher.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import PurePosixPath

# Incus accepts these suffixes for byte quantities (see "Units for storage, memory and network
# limits" in the Incus docs); we accept the same so values pass through unchanged.
_SIZE_UNITS: dict[str, int] = {
    "B": 1,
    "kB": 10**3,
    "KB": 10**3,
    "MB": 10**6,
    "GB": 10**9,
    "TB": 10**12,
    "PB": 10**15,
    "KiB": 2**10,
    "MiB": 2**20,
    "GiB": 2**30,
    "TiB": 2**40,
    "PiB": 2**50,
}
_SIZE_RE = re.compile(r"^(\d+)\s*([A-Za-z]*)$")
_DURATION_RE = re.compile(r"^(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?$")
_CPU_SET_RE = re.compile(r"^\d+(?:-\d+)?(?:,\d+(?:-\d+)?)*$")
_ALLOWANCE_PERCENT_RE = re.compile(r"^(\d+)%$")
_ALLOWANCE_TIME_RE = re.compile(r"^(\d+)ms/(\d+)ms$")
_IOPS_RE = re.compile(r"^(\d+)iops$")
_DOMAIN_LABEL_RE = re.compile(r"^(?!-)[A-Za-z0-9-]{1,63}(?<!-)$")
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_USER_RE = re.compile(r"^[a-z_][a-z0-9_-]{0,31}$")


def parse_size(text: str) -> int:
    """Return the number of bytes in a size such as ``"2GiB"``, ``"512MiB"`` or ``"100"``."""
    match = _SIZE_RE.match(text.strip())
    if not match:
        raise ValueError(f"{text!r} is not a size; use a number with a unit such as 512MiB or 2GiB")
    number, unit = match.groups()
    factor = _SIZE_UNITS.get(unit or "B")
    if factor is None:
        units = ", ".join(_SIZE_UNITS)
        raise ValueError(f"{text!r} has an unknown unit {unit!r}; use one of {units}")
    return int(number) * factor


def parse_duration(text: str) -> timedelta:
    """Return the duration in ``"2h"``, ``"30m"``, ``"1h30m"``, ``"20s"`` or ``"1d"``."""
    match = _DURATION_RE.match(text.strip())
    if not text.strip() or not match:
        raise ValueError(f"{text!r} is not a duration; use forms such as 20s, 30m, 2h or 1h30m")
    days, hours, minutes, seconds = (int(g) if g else 0 for g in match.groups())
    value = timedelta(days=days, hours=hours, minutes=minutes, seconds=seconds)
    if value <= timedelta(0):
        raise ValueError(f"{text!r} is zero; leave it empty for no limit")
    return value


@dataclass(frozen=True)
class CpuLimit:
    """A CPU limit: either a number of CPUs (``count``) or a set of CPU ids (``cpus``)."""

    count: int | None
    cpus: frozenset[int] | None

    @property
    def width(self) -> int:
        """How many CPUs the limit allows (used to compare limits)."""
        return self.count if self.count is not None else len(self.cpus or ())

    def incus_value(self) -> str:
        """The value for Incus' ``limits.cpu`` key (a count, or a pinned range/list)."""
        if self.count is not None:
            return str(self.count)
        return ",".join(str(c) for c in sorted(self.cpus or ()))


def parse_cpu(text: str) -> CpuLimit:
    """Parse ``"2"`` (two CPUs) or a CPU set such as ``"0-3"`` or ``"0,2-3"``."""
    text = text.strip()
    if text.isdigit():
        if int(text) < 1:
            raise ValueError("a CPU count must be at least 1; leave it empty for no limit")
        return CpuLimit(count=int(text), cpus=None)
    if not _CPU_SET_RE.match(text):
        raise ValueError(f"{text!r} is not a CPU count or set; use 2, 0-3 or 0,2-3")
    cpus: set[int] = set()
    for part in text.split(","):
        first, _, last = part.partition("-")
        lo, hi = int(first), int(last or first)
        if hi < lo:
            raise ValueError(f"CPU range {part!r} is reversed; write it low-high")
        cpus.update(range(lo, hi + 1))
    return CpuLimit(count=None, cpus=frozenset(cpus))


def parse_cpu_allowance(text: str) -> float:
    """Return the share of one CPU period an allowance grants (``"50%"`` → 0.5, ``"25ms/100ms"``
    → 0.25)."""
    text = text.strip()
    if m := _ALLOWANCE_PERCENT_RE.match(text):
        percent = int(m.group(1))
        if not 1 <= percent <= 100:
            raise ValueError(f"{text!r} is out of range; use 1% to 100%")
        return percent / 100
    if m := _ALLOWANCE_TIME_RE.match(text):
        used, period = int(m.group(1)), int(m.group(2))
        if used < 1 or period < 1:
            raise ValueError(f"{text!r} must use positive times such as 25ms/100ms")
        return used / period
    raise ValueError(f"{text!r} is not a CPU allowance; use 50% or 25ms/100ms")


@dataclass(frozen=True)
class IoRate:
    """A disk I/O limit: bytes per second or operations per second."""

    amount: int
    unit: str  # "B/s" or "iops"

    def incus_value(self) -> str:
        """The value for Incus' disk ``limits.read``/``limits.write``/``limits.max`` keys."""
        return f"{self.amount}iops" if self.unit == "iops" else f"{self.amount}B"


def parse_io_rate(text: str) -> IoRate:
    """Parse a disk rate such as ``"10MiB"`` (per second) or ``"1000iops"``."""
    text = text.strip()
    if m := _IOPS_RE.match(text):
        return IoRate(amount=int(m.group(1)), unit="iops")
    try:
        return IoRate(amount=parse_size(text), unit="B/s")
    except ValueError:
        raise ValueError(f"{text!r} is not a disk rate; use 10MiB or 1000iops") from None


def parse_memory(text: str) -> int | float:
    """Parse a memory limit: a size in bytes (int) or a share of host memory (``"50%"`` → 0.5)."""
    text = text.strip()
    if text.endswith("%"):
        digits = text[:-1]
        if not digits.isdigit() or not 1 <= int(digits) <= 100:
            raise ValueError(f"{text!r} is not a percentage from 1% to 100%")
        return int(digits) / 100
    return parse_size(text)


def check_port(value: int) -> None:
    """Refuse a port number outside 1..65535."""
    if not 1 <= value <= 65535:
        raise ValueError(f"{value} is not a port; use 1 to 65535")


def check_domain_pattern(text: str) -> None:
    """Accept a host name, optionally starting with ``*.`` for its subdomains."""
    name = text[2:] if text.startswith("*.") else text
    labels = name.rstrip(".").split(".")
    if not name or len(name) > 253 or not all(_DOMAIN_LABEL_RE.match(lab) for lab in labels):
        raise ValueError(f"{text!r} is not a domain name or *.domain pattern")


def check_host(text: str) -> None:
    """Accept a host name, an IP address or a network in CIDR form."""
    try:
        ipaddress.ip_network(text, strict=False)
        return
    except ValueError:
        pass
    try:
        check_domain_pattern(text)
    except ValueError:
        raise ValueError(f"{text!r} is not a host name, IP address or CIDR network") from None
    if text.startswith("*."):
        raise ValueError(f"{text!r}: host exceptions take a single name, not a *. pattern")


def check_workspace_glob(text: str) -> None:
    """Accept a path or glob relative to the workspace that cannot step outside it."""
    if not text or "\0" in text:
        raise ValueError("an empty path or one with a NUL byte is not a workspace path")
    path = PurePosixPath(text)
    if path.is_absolute():
        raise ValueError(f"{text!r} must be relative to the workspace, not absolute")
    if ".." in path.parts:
        raise ValueError(f"{text!r} must not contain '..'")
    if text.count("[") != text.count("]"):
        raise ValueError(f"{text!r} has an unbalanced [ ] in its glob")


def check_name(text: str) -> None:
    """Accept a simple name (tool, image alias, profile, remote, project, pool)."""
    if not _NAME_RE.match(text):
        raise ValueError(f"{text!r} is not a valid name; use letters, digits, '_', '-' and '.'")


def check_user_name(text: str) -> None:
    """Accept a POSIX user name."""
    if not _USER_RE.match(text):
        raise ValueError(f"{text!r} is not a valid user name")


def check_env_name(text: str) -> None:
    """Accept an environment variable name."""
    if not re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", text):
        raise ValueError(f"{text!r} is not an environment variable name")


def optional(check: Callable[[str], object]) -> Callable[[str], None]:
    """Wrap a parser so that the empty string (meaning "no limit"/"unset") is accepted."""

    def wrapped(text: str) -> None:
        if text != "":
            check(text)

    wrapped.__doc__ = check.__doc__
    return wrapped
