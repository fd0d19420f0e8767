"""Limit value syntaxes and their mapping to Incus configuration keys."""

from __future__ import annotations

from datetime import timedelta

import pytest
from config_fixtures import Layers

from coi.launcher.config import incus_limits, resource_limits
from coi.launcher.config import values as v
from coi.launcher.config.limits import describe_limits


@pytest.mark.parametrize(
    ("text", "expected"),
    [("100", 100), ("512MiB", 512 * 2**20), ("2GiB", 2 * 2**30), ("1GB", 10**9), ("3kB", 3000)],
)
def test_sizes(text: str, expected: int) -> None:
    assert v.parse_size(text) == expected


@pytest.mark.parametrize("text", ["", "GiB", "2.5GiB", "-1GiB", "2gib", "2 gigs"])
def test_bad_sizes(text: str) -> None:
    with pytest.raises(ValueError):
        v.parse_size(text)


@pytest.mark.parametrize(
    ("text", "seconds"), [("20s", 20), ("30m", 1800), ("2h", 7200), ("1h30m", 5400), ("1d", 86400)]
)
def test_durations(text: str, seconds: int) -> None:
    assert v.parse_duration(text) == timedelta(seconds=seconds)


@pytest.mark.parametrize("text", ["", "0s", "2", "h", "30m1h", "2 hours", "1.5h"])
def test_bad_durations(text: str) -> None:
    with pytest.raises(ValueError):
        v.parse_duration(text)


@pytest.mark.parametrize(
    ("text", "width", "incus"), [("2", 2, "2"), ("0-3", 4, "0,1,2,3"), ("0,2-3", 3, "0,2,3")]
)
def test_cpu(text: str, width: int, incus: str) -> None:
    cpu = v.parse_cpu(text)
    assert (cpu.width, cpu.incus_value()) == (width, incus)


@pytest.mark.parametrize("text", ["0", "-1", "a", "1-", "3-1", "1,,2"])
def test_bad_cpu(text: str) -> None:
    with pytest.raises(ValueError):
        v.parse_cpu(text)


@pytest.mark.parametrize(("text", "share"), [("50%", 0.5), ("100%", 1.0), ("25ms/100ms", 0.25)])
def test_cpu_allowance(text: str, share: float) -> None:
    assert v.parse_cpu_allowance(text) == share


@pytest.mark.parametrize("text", ["0%", "101%", "50", "0ms/100ms", "25ms/0ms", "25/100"])
def test_bad_cpu_allowance(text: str) -> None:
    with pytest.raises(ValueError):
        v.parse_cpu_allowance(text)


def test_io_rates() -> None:
    assert v.parse_io_rate("10MiB") == v.IoRate(10 * 2**20, "B/s")
    assert v.parse_io_rate("1000iops") == v.IoRate(1000, "iops")
    with pytest.raises(ValueError):
        v.parse_io_rate("fast")


def test_all_limits_map_to_incus_keys(layers: Layers) -> None:
    layers.write(
        "user",
        """
        [limits]
        cpu = "0-1"
        cpu_allowance = "50%"
        memory = "2GiB"
        memory_swap = false
        disk_read = "10MiB"
        disk_write = "500iops"
        disk_max = "20MiB"
        disk_size = "20GiB"
        processes = 512
        duration = "2h"
        """,
    )
    limits = resource_limits(layers.load().config.limits)
    assert limits.duration == timedelta(hours=2)
    mapped = incus_limits(limits)
    assert mapped.instance == {
        "limits.cpu": "0,1",
        "limits.cpu.allowance": "50%",
        "limits.memory": f"{2 * 2**30}B",
        "limits.memory.swap": "false",
        "limits.processes": "512",
    }
    assert mapped.root_disk == {
        "limits.read": f"{10 * 2**20}B",
        "limits.write": "500iops",
        "limits.max": f"{20 * 2**20}B",
        "size": f"{20 * 2**30}B",
    }
    lines = describe_limits(limits)
    assert "memory: 2048 MiB" in lines and "run time: 2:00:00" in lines


def test_no_limits_give_no_incus_keys(layers: Layers) -> None:
    limits = resource_limits(layers.load().config.limits)
    assert incus_limits(limits).instance == {} and incus_limits(limits).root_disk == {}
    assert describe_limits(limits) == []


def test_memory_share_and_cpu_count(layers: Layers) -> None:
    loaded = layers.load(cli={"limits.memory": "25%", "limits.cpu": "3"})
    mapped = incus_limits(resource_limits(loaded.config.limits))
    assert mapped.instance == {"limits.memory": "25%", "limits.cpu": "3"}
