"""TCP and UDP echo listeners for the network tests (run inside a test namespace).

echo_server.py PORT [PORT...]    listen on [::]:PORT (IPv4 and IPv6), TCP and UDP
"""

from __future__ import annotations

import socket
import sys
import threading


def _tcp(port: int) -> None:
    srv = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    srv.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("::", port))
    srv.listen(64)
    while True:
        conn, _ = srv.accept()
        threading.Thread(target=_echo, args=(conn,), daemon=True).start()


def _echo(conn: socket.socket) -> None:
    conn.settimeout(30)
    try:
        while data := conn.recv(64):
            conn.sendall(data)
    except OSError:
        pass
    finally:
        conn.close()


def _udp(port: int) -> None:
    srv = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    srv.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    srv.bind(("::", port))
    while True:
        data, peer = srv.recvfrom(64)
        srv.sendto(data, peer)


def main(ports: list[int]) -> None:
    threads = [
        threading.Thread(target=f, args=(p,), daemon=True) for p in ports for f in (_tcp, _udp)
    ]
    for t in threads:
        t.start()
    print("ready", flush=True)
    for t in threads:
        t.join()


if __name__ == "__main__":
    main([int(p) for p in sys.argv[1:]])
