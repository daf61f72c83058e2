"""Tiny traffic probe for the firewall namespace tests.

``serve PORT...``: answer TCP and UDP on each port (TCP: send b"ok" and close; UDP: echo b"ok").
``check tcp|udp IP PORT``: print ``ok`` or ``fail:<reason>``; always exits 0.
"""

from __future__ import annotations

import socket
import sys
import threading


def serve(ports: list[int]) -> None:
    def tcp(port: int) -> None:
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("0.0.0.0", port))
        s.listen(64)
        while True:
            conn, _ = s.accept()
            try:
                conn.sendall(b"ok")
            finally:
                conn.close()

    def udp(port: int) -> None:
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind(("0.0.0.0", port))
        while True:
            _, peer = s.recvfrom(100)
            s.sendto(b"ok", peer)

    for port in ports:
        threading.Thread(target=tcp, args=(port,), daemon=True).start()
        threading.Thread(target=udp, args=(port,), daemon=True).start()
    print("ready", flush=True)
    threading.Event().wait()


def check(proto: str, ip: str, port: int, timeout: float = 1.0) -> str:
    try:
        if proto == "tcp":
            with socket.create_connection((ip, port), timeout=timeout) as s:
                return "ok" if s.recv(10) == b"ok" else "fail:data"
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.settimeout(timeout)
            s.connect((ip, port))
            s.send(b"hi")
            return "ok" if s.recv(10) == b"ok" else "fail:data"
    except OSError as exc:
        return f"fail:{type(exc).__name__}"


if __name__ == "__main__":
    if sys.argv[1] == "serve":
        serve([int(p) for p in sys.argv[2:]])
    else:
        print(check(sys.argv[2], sys.argv[3], int(sys.argv[4])))
