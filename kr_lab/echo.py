"""The lab's pod server: answers every declared port with the pod's identity, and how to start one.

``python -m kr_lab.echo --identity NS/NAME --listen 8080/TCP --listen 5353/UDP --listen 7777/SCTP
[--ready-file F]`` serves all its ports from one thread with ``selectors``: a TCP or SCTP (one-to-one,
``SOCK_STREAM``) connection gets ``NS/NAME\\n`` then the address it came from as ``IP:PORT\\n``, and is
closed; a UDP datagram gets the same two lines back in one datagram. The first line is the identity, so a
client that reads one line sees what it always did; the second says which source address the pod saw
(after any NAT on the way), which is how tests tell masqueraded from client-preserving paths.
``start()`` launches one inside a network namespace and returns once it listens.

Invariants:
- it binds ``0.0.0.0`` and never resolves a name or opens a connection of its own;
- a client can never stop it: every per-client error is dropped; SIGTERM (or SIGINT) ends it;
- it writes the ready file (atomically, listing what it serves) only after every listener is bound;
  a protocol the kernel lacks (this lab's kernel has no SCTP) is logged and skipped, never fatal;
- stdlib only and standalone: ``start`` runs this file as ``python -I -S echo.py`` (no site, no
  package import) and the server path imports nothing it does not use, so a pod's server is ~12 MB RSS.
"""

from __future__ import annotations

import argparse
import errno
import os
import selectors
import signal
import socket
import sys
from collections.abc import Sequence

PROTOCOLS = {"TCP": (socket.SOCK_STREAM, socket.IPPROTO_TCP), "UDP": (socket.SOCK_DGRAM, socket.IPPROTO_UDP),
             "SCTP": (socket.SOCK_STREAM, socket.IPPROTO_SCTP)}


class EchoStartError(RuntimeError):
    """The server exited or did not become ready; the message carries its log's tail."""


def parse_listen(text: str) -> tuple[int, str]:
    """``8080/TCP`` -> ``(8080, "TCP")``; the protocol defaults to TCP."""
    port_text, _, protocol = text.partition("/")
    port, protocol = int(port_text), (protocol or "TCP").upper()
    if not 1 <= port <= 65535 or protocol not in PROTOCOLS:
        raise ValueError(f"not PORT/TCP|UDP|SCTP: {text!r}")
    return port, protocol


def _listener(port: int, protocol: str) -> socket.socket:
    kind, proto = PROTOCOLS[protocol]
    sock = socket.socket(socket.AF_INET, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("0.0.0.0", port))
        if kind == socket.SOCK_STREAM:
            sock.listen(128)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


def _reply(identity: bytes, peer: tuple[str, int]) -> bytes:
    return identity + f"{peer[0]}:{peer[1]}\n".encode()


def _answer_stream(listener: socket.socket, identity: bytes) -> None:
    try:
        conn, peer = listener.accept()
    except OSError:
        return
    with conn:
        try:
            conn.send(_reply(identity, peer))
            conn.shutdown(socket.SHUT_WR)
            # Drain what the client already sent, so closing sends FIN rather than RST (which could
            # overtake the reply at the client).
            conn.recv(4096, socket.MSG_DONTWAIT)
        except OSError:
            pass


def _answer_datagram(sock: socket.socket, identity: bytes) -> None:
    try:
        _, peer = sock.recvfrom(65535)
        sock.sendto(_reply(identity, peer), peer)
    except OSError:
        pass


def serve(identity: str, listens: Sequence[tuple[int, str]], ready_file: str | None = None) -> None:
    """Serve ``identity`` on every ``(port, protocol)`` until a signal ends the process."""
    line = f"{identity}\n".encode()
    selector = selectors.DefaultSelector()
    serving = []
    for port, protocol in listens:
        try:
            sock = _listener(port, protocol)
        except OSError as exc:
            if protocol == "SCTP" and exc.errno == errno.EPROTONOSUPPORT:
                print(f"echo {identity}: {port}/SCTP skipped: the kernel has no SCTP ({exc})", file=sys.stderr, flush=True)
                continue
            raise
        handler = _answer_datagram if protocol == "UDP" else _answer_stream
        selector.register(sock, selectors.EVENT_READ, handler)
        serving.append(f"{port}/{protocol}")
    if ready_file:
        with open(f"{ready_file}.tmp", "w", encoding="ascii") as f:
            f.write("".join(f"{item}\n" for item in serving))
        os.replace(f"{ready_file}.tmp", ready_file)
    print(f"echo {identity}: serving {' '.join(serving) or 'nothing'}", file=sys.stderr, flush=True)
    while True:
        for key, _ in selector.select():
            key.data(key.fileobj, line)


def start(netns: str, identity: str, listens: Sequence[tuple[int, str]], log_file: str | os.PathLike[str],
          timeout: float = 10.0) -> int:
    """Start a detached server inside ``netns`` logging to ``log_file``; return its pid once it listens."""
    import subprocess  # here, not at the top: the server process never needs these
    import tempfile
    import time

    with tempfile.TemporaryDirectory(prefix="kr-echo-") as tmp:
        ready = os.path.join(tmp, "ready")
        argv = ["ip", "netns", "exec", netns, sys.executable, "-I", "-S", os.path.abspath(__file__),
                "--identity", identity, "--ready-file", ready,
                *(arg for port, protocol in listens for arg in ("--listen", f"{port}/{protocol}"))]
        with open(log_file, "ab") as log:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True)
        deadline = time.monotonic() + timeout
        while not os.path.exists(ready):
            if proc.poll() is not None:
                raise EchoStartError(f"echo server for {identity} in {netns} exited {proc.returncode}: {_tail(log_file)}")
            if time.monotonic() > deadline:
                proc.kill()
                proc.wait()
                raise EchoStartError(f"echo server for {identity} in {netns} not ready after {timeout}s: {_tail(log_file)}")
            time.sleep(0.005)
    return proc.pid


def _tail(path: str | os.PathLike[str], size: int = 2000) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - size))
            return f.read().decode(errors="replace").strip()
    except OSError as exc:
        return f"(no log: {exc})"


def _exit_on_signal(_signum: int, _frame: object) -> None:
    raise SystemExit(0)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m kr_lab.echo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--identity", required=True, help="what every answer says, e.g. frontend/web-1")
    parser.add_argument("--listen", action="append", default=[], type=parse_listen, metavar="PORT/PROTO")
    parser.add_argument("--ready-file", help="written once every port listens")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, _exit_on_signal)
    signal.signal(signal.SIGINT, _exit_on_signal)
    serve(args.identity, args.listen, args.ready_file)


if __name__ == "__main__":
    main()
