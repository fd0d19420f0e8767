"""Reachability probes run *inside* a test namespace (`ip netns exec NS python probe.py ...`).

Standard library only. Prints one JSON object: {"ok": bool, "detail": str, ...}.

    probe.py tcp ADDR PORT            connect, send "ping", expect the echo
    probe.py udp ADDR PORT            send "ping", expect the echo within the timeout
    probe.py icmp ADDR                one ICMP / ICMPv6 echo
    probe.py dns SERVER NAME [PORT] [tcp]  resolve A (or AAAA for v6 names with -6)
    probe.py burst SERVER COUNT SUFFIX     COUNT queries for random names under SUFFIX
"""

from __future__ import annotations

import json
import os
import random
import socket
import struct
import sys
import time

TIMEOUT = 2.0


def _family(addr: str) -> int:
    return socket.AF_INET6 if ":" in addr else socket.AF_INET


def tcp(addr: str, port: int) -> dict[str, object]:
    s = socket.socket(_family(addr), socket.SOCK_STREAM)
    s.settimeout(TIMEOUT)
    try:
        s.connect((addr, port))
        s.sendall(b"ping")
        data = s.recv(16)
        return {"ok": data == b"ping", "detail": f"echo {data!r}"}
    except OSError as exc:
        return {"ok": False, "detail": f"{type(exc).__name__}: {exc}"}
    finally:
        s.close()


def hold(addr: str, port: int, pause: float) -> dict[str, object]:
    """Echo once, wait `pause` seconds on the open connection, then echo again."""
    s = socket.socket(_family(addr), socket.SOCK_STREAM)
    s.settimeout(TIMEOUT)
    try:
        s.connect((addr, port))
        s.sendall(b"one")
        first = s.recv(16)
        print(json.dumps({"connected": first == b"one"}), flush=True)
        time.sleep(pause)
        s.sendall(b"two")
        second = s.recv(16)
        return {"ok": second == b"two", "detail": f"second echo {second!r}"}
    except OSError as exc:
        return {"ok": False, "detail": f"{type(exc).__name__}: {exc}"}
    finally:
        s.close()


def udp(addr: str, port: int) -> dict[str, object]:
    s = socket.socket(_family(addr), socket.SOCK_DGRAM)
    s.settimeout(TIMEOUT)
    try:
        s.sendto(b"ping", (addr, port))
        data, _ = s.recvfrom(16)
        return {"ok": data == b"ping", "detail": f"echo {data!r}"}
    except OSError as exc:
        return {"ok": False, "detail": f"{type(exc).__name__}: {exc}"}
    finally:
        s.close()


def icmp(addr: str) -> dict[str, object]:
    v6 = ":" in addr
    proto = socket.IPPROTO_ICMPV6 if v6 else socket.IPPROTO_ICMP
    s = socket.socket(_family(addr), socket.SOCK_RAW, proto)
    s.settimeout(TIMEOUT)
    ident = os.getpid() & 0xFFFF
    kind = 128 if v6 else 8
    header = struct.pack("!BBHHH", kind, 0, 0, ident, 1) + b"coi-probe"
    if not v6:
        padded = header + b"\0" * (len(header) % 2)
        total = sum(struct.unpack(f"!{len(padded) // 2}H", padded))
        total = (total >> 16) + (total & 0xFFFF)
        total += total >> 16
        header = header[:2] + struct.pack("!H", ~total & 0xFFFF) + header[4:]
    try:
        s.sendto(header, (addr, 0))
        while True:
            data, _ = s.recvfrom(2048)
            body = data if v6 else data[(data[0] & 0x0F) * 4 :]
            if body[0] == (129 if v6 else 0):
                return {"ok": True, "detail": "echo reply"}
            if body[0] in ((1,) if v6 else (3,)):
                return {"ok": False, "detail": f"unreachable code {body[1]}"}
    except OSError as exc:
        return {"ok": False, "detail": f"{type(exc).__name__}: {exc}"}
    finally:
        s.close()


def _query(name: str, qtype: int) -> tuple[int, bytes]:
    qid = random.randrange(1 << 16)
    head = struct.pack("!HHHHHH", qid, 0x0100, 1, 0, 0, 0)
    qname = b"".join(bytes([len(p)]) + p.encode() for p in name.split(".")) + b"\0"
    return qid, head + qname + struct.pack("!HH", qtype, 1)


def _skip_name(msg: bytes, i: int) -> int:
    while True:
        n = msg[i]
        if n == 0:
            return i + 1
        if n & 0xC0 == 0xC0:
            return i + 2
        i += n + 1


def _parse(msg: bytes) -> tuple[int, list[str]]:
    _qid, flags, qd, an, _ns, _ar = struct.unpack("!HHHHHH", msg[:12])
    i = 12
    for _ in range(qd):
        i = _skip_name(msg, i) + 4
    out = []
    for _ in range(an):
        i = _skip_name(msg, i)
        rtype, _cls, _ttl, rdlen = struct.unpack("!HHIH", msg[i : i + 10])
        i += 10
        rdata = msg[i : i + rdlen]
        i += rdlen
        if rtype == 1:
            out.append(socket.inet_ntop(socket.AF_INET, rdata))
        elif rtype == 28:
            out.append(socket.inet_ntop(socket.AF_INET6, rdata))
    return flags & 0xF, out


RCODES = {0: "NOERROR", 2: "SERVFAIL", 3: "NXDOMAIN", 5: "REFUSED"}


def dns(
    server: str, name: str, port: int = 53, use_tcp: bool = False, qtype: int = 1
) -> dict[str, object]:
    _qid, query = _query(name, qtype)
    try:
        if use_tcp:
            s = socket.socket(_family(server), socket.SOCK_STREAM)
            s.settimeout(TIMEOUT)
            s.connect((server, port))
            s.sendall(struct.pack("!H", len(query)) + query)
            size = struct.unpack("!H", s.recv(2))[0]
            msg = b""
            while len(msg) < size:
                chunk = s.recv(size - len(msg))
                if not chunk:
                    break
                msg += chunk
        else:
            s = socket.socket(_family(server), socket.SOCK_DGRAM)
            s.settimeout(TIMEOUT)
            s.sendto(query, (server, port))
            msg, _ = s.recvfrom(4096)
        s.close()
    except OSError as exc:
        return {"ok": False, "rcode": None, "answers": [], "detail": f"{type(exc).__name__}: {exc}"}
    rcode, answers = _parse(msg)
    return {
        "ok": rcode == 0 and bool(answers),
        "rcode": RCODES.get(rcode, str(rcode)),
        "answers": answers,
        "detail": "",
    }


def burst(server: str, count: int, suffix: str) -> dict[str, object]:
    s = socket.socket(_family(server), socket.SOCK_DGRAM)
    s.settimeout(0.5)
    answered = 0
    for _ in range(count):
        label = "".join(random.choice("abcdefghijklmnopqrstuvwxyz0123456789") for _ in range(20))
        _qid, query = _query(f"{label}.{suffix}", 1)
        s.sendto(query, (server, 53))
        try:
            s.recvfrom(4096)
            answered += 1
        except OSError:
            pass
    return {"ok": True, "answered": answered, "detail": ""}


def main(argv: list[str]) -> int:
    kind = argv[0]
    if kind == "tcp":
        result = tcp(argv[1], int(argv[2]))
    elif kind == "udp":
        result = udp(argv[1], int(argv[2]))
    elif kind == "hold":
        result = hold(argv[1], int(argv[2]), float(argv[3]))
    elif kind == "icmp":
        result = icmp(argv[1])
    elif kind == "dns":
        port = int(argv[3]) if len(argv) > 3 else 53
        use_tcp = len(argv) > 4 and argv[4] == "tcp"
        result = dns(argv[1], argv[2], port, use_tcp)
    elif kind == "dns6":
        result = dns(argv[1], argv[2], qtype=28)
    elif kind == "burst":
        result = burst(argv[1], int(argv[2]), argv[3])
    else:
        raise SystemExit(f"unknown probe {kind}")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
