"""Rejected new connections reach the NFLOG group, rate-limited, tagged with the container id."""

from __future__ import annotations

import select
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import network_lab as L
import pytest
from network_lab import LabEngine, key_of

from coi.helper.network import NFLOG_GROUP
from coi.helper.network.ruleset import LOG_BURST, LOG_RATE_PER_SECOND

pytestmark = pytest.mark.integration

Apply = Callable[[str, dict[str, Any]], Any]

NETLINK_NETFILTER = 12
NFNL_SUBSYS_ULOG = 4
NFULNL_MSG_PACKET, NFULNL_MSG_CONFIG = 0, 1
NFULA_CFG_CMD, NFULA_CFG_MODE = 1, 2
NFULNL_CFG_CMD_BIND = 1
NFULNL_COPY_META = 1
NFULA_PREFIX = 10


def _attr(kind: int, payload: bytes) -> bytes:
    size = 4 + len(payload)
    return struct.pack("=HH", size, kind) + payload + b"\0" * ((4 - size % 4) % 4)


def open_nflog(group: int) -> socket.socket:
    """A netlink socket bound to NFLOG `group` (in the calling thread's namespace)."""
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
    sock.bind((0, 0))
    for attr in (
        _attr(NFULA_CFG_CMD, struct.pack("=B", NFULNL_CFG_CMD_BIND)),
        _attr(NFULA_CFG_MODE, struct.pack("!IBB", 0, NFULNL_COPY_META, 0)),
    ):
        body = struct.pack("=BBH", socket.AF_UNSPEC, 0, socket.htons(group)) + attr
        kind = (NFNL_SUBSYS_ULOG << 8) | NFULNL_MSG_CONFIG
        sock.send(struct.pack("=IHHII", 16 + len(body), kind, 0x1 | 0x4, 1, 0) + body)
        sock.recv(4096)  # the ack
    return sock


def read_prefixes(sock: socket.socket, seconds: float) -> list[str]:
    """The log prefixes of every NFLOG packet message received within `seconds`."""
    out: list[str] = []
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        if not select.select([sock], [], [], left)[0]:
            break
        data = sock.recv(1 << 16)
        i = 0
        while i + 16 <= len(data):
            size, kind = struct.unpack_from("=IH", data, i)
            if kind == (NFNL_SUBSYS_ULOG << 8) | NFULNL_MSG_PACKET:
                j = i + 20  # nlmsghdr + nfgenmsg
                while j + 4 <= i + size:
                    alen, atype = struct.unpack_from("=HH", data, j)
                    if alen < 4:
                        break
                    if atype & 0x3FFF == NFULA_PREFIX:
                        out.append(data[j + 4 : j + alen].rstrip(b"\0").decode())
                    j += (alen + 3) & ~3
            i += (size + 3) & ~3
    return out


def test_rejections_are_logged_to_nflog_with_a_rate_limit(
    lab: L.Lab, engine: LabEngine, apply: Apply
) -> None:
    apply("c1", {"mode": "restricted"})
    with L.in_netns(L.RTR):
        sock = open_nflog(NFLOG_GROUP)
    try:
        assert not L.reachable(L.C1, "tcp", L.PRIV4)
        prefixes = read_prefixes(sock, 1.5)
        expected = f"coi-reject {key_of('c1').cid} "
        assert expected in prefixes, prefixes
        # A burst of 300 new flows (distinct ports) within well under a second.
        before = engine.read_counters(key_of("c1")).packets_rejected
        start = time.monotonic()
        subprocess.run(
            [
                "ip",
                "netns",
                "exec",
                L.C1,
                sys.executable,
                "-c",
                "import socket\n"
                "s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
                f"for p in range(20000, 20300): s.sendto(b'x', ('{L.PRIV4}', p))\n",
            ],
            check=True,
        )
        elapsed = time.monotonic() - start
        logged = [p for p in read_prefixes(sock, 2.0) if p == expected]
        rejected = engine.read_counters(key_of("c1")).packets_rejected - before
    finally:
        sock.close()
    assert rejected >= 300
    assert 0 < len(logged) <= LOG_BURST + LOG_RATE_PER_SECOND * (elapsed + 1) + 5
