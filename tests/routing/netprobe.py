"""A tiny TCP probe for the namespace tests: ``serve PORT`` and ``send HOST PORT NBYTES``.

``serve`` prints ``ready`` once listening, then for every connection reads until EOF and answers
``<peer address> <bytes received>``, so a test learns the source address the server saw (masqueraded
or not) and that a payload larger than one MTU crossed intact. ``send`` prints that answer.
"""

from __future__ import annotations

import socket
import sys


def serve(port: int) -> None:
    with socket.create_server(("0.0.0.0", port)) as server:
        print("ready", flush=True)
        while True:
            conn, (peer, _) = server.accept()
            with conn:
                conn.settimeout(10)
                received = 0
                try:
                    while chunk := conn.recv(65536):
                        received += len(chunk)
                    conn.sendall(f"{peer} {received}\n".encode())
                except OSError:
                    continue


def send(host: str, port: int, nbytes: int) -> None:
    with socket.create_connection((host, port), timeout=5) as conn:
        conn.settimeout(5)
        conn.sendall(b"k" * nbytes)
        conn.shutdown(socket.SHUT_WR)
        print(conn.makefile().readline().strip(), flush=True)


if __name__ == "__main__":
    if sys.argv[1] == "serve":
        serve(int(sys.argv[2]))
    else:
        send(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
