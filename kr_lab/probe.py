"""Probes: does a connection from one lab namespace to an IP and port succeed, and which pod answered?

``probe`` opens a socket from a thread that entered the source namespace (``nsenter``), so the packets
start exactly where a pod's or host's would. TCP and SCTP count as connected once the handshake completes
(the answer is the identity line the echo server then sends, the peer the address line after it: where
the server saw the connection come from); UDP counts once a reply datagram arrives.
``probe_matrix`` runs many probes at once on a pool of threads, each entering its source per probe.

Invariants:
- the calling thread never changes namespace; only worker threads do, and they leave it again;
- a probe never takes much longer than its ``timeout`` and never raises for a network outcome: refusals,
  timeouts and unreachable networks come back as ``ProbeResult.error``;
- no name is ever resolved: targets are IP addresses.
"""

from __future__ import annotations

import dataclasses
import errno
import ipaddress
import socket
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

from kr_lab.nsenter import netns, run_in_netns

_SOCKET_TYPES = {"TCP": (socket.SOCK_STREAM, socket.IPPROTO_TCP), "UDP": (socket.SOCK_DGRAM, socket.IPPROTO_UDP),
                 "SCTP": (socket.SOCK_STREAM, socket.IPPROTO_SCTP)}
_ERRORS = {errno.ECONNREFUSED: "refused", errno.ETIMEDOUT: "timeout", errno.EHOSTUNREACH: "unreachable",
           errno.ENETUNREACH: "unreachable", errno.EPROTONOSUPPORT: "unsupported", errno.ECONNRESET: "reset",
           errno.EACCES: "denied", errno.EPERM: "denied"}


@dataclasses.dataclass(frozen=True, slots=True)
class ProbeResult:
    """One probe's outcome: ``ok`` when connected (TCP/SCTP) or answered (UDP); ``answer`` is the identity
    line; ``peer`` is the ``IP:PORT`` the server saw the probe come from (None when it did not say)."""

    ok: bool
    answer: str | None
    error: str | None  # refused | timeout | unreachable | unsupported | reset | denied | errno name
    elapsed: float
    peer: str | None = None

    @property
    def peer_ip(self) -> str | None:
        """The address part of ``peer``."""
        return self.peer.rpartition(":")[0] if self.peer else None


def probe(from_netns: str, to_ip: str, port: int, protocol: str, timeout: float) -> ProbeResult:
    """Probe ``to_ip:port/protocol`` from namespace ``from_netns``, giving up after ``timeout`` seconds."""
    ipaddress.IPv4Address(to_ip)  # an address, never a name to resolve
    return run_in_netns(from_netns, _probe_here, to_ip, port, protocol.upper(), timeout)


def probe_matrix(probes: Sequence[tuple[str, str, int, str]], timeout: float,
                 parallelism: int = 16) -> list[ProbeResult]:
    """Run every ``(from_netns, to_ip, port, protocol)`` probe in parallel; results keep their order."""
    for _, to_ip, _, _ in probes:
        ipaddress.IPv4Address(to_ip)

    def one(item: tuple[str, str, int, str]) -> ProbeResult:
        source, to_ip, port, protocol = item
        with netns(source):
            return _probe_here(to_ip, port, protocol.upper(), timeout)

    with ThreadPoolExecutor(max_workers=max(1, min(parallelism, len(probes))), thread_name_prefix="probe") as pool:
        return list(pool.map(one, probes))


def _probe_here(to_ip: str, port: int, protocol: str, timeout: float) -> ProbeResult:
    kind, proto = _SOCKET_TYPES[protocol]
    started = time.monotonic()

    def result(ok: bool, lines: tuple[str | None, str | None] = (None, None), error: str | None = None) -> ProbeResult:
        return ProbeResult(ok, lines[0], error, time.monotonic() - started, lines[1])

    try:
        sock = socket.socket(socket.AF_INET, kind, proto)
    except OSError as exc:
        return result(False, error=_error_name(exc))
    with sock:
        try:
            sock.settimeout(timeout)
            sock.connect((to_ip, port))  # for UDP: fixes the peer, so ICMP errors come back on recv
            if kind == socket.SOCK_DGRAM:
                sock.send(b"probe\n")
                return result(True, _lines(sock.recv(65535)))
        except TimeoutError:
            return result(False, error="timeout")
        except OSError as exc:
            return result(False, error=_error_name(exc))
        return result(True, _read_lines(sock, started + timeout))


def _read_lines(sock: socket.socket, deadline: float) -> tuple[str | None, str | None]:
    """Read the server's identity and peer lines until EOF, the second newline or the deadline."""
    data = b""
    try:
        while data.count(b"\n") < 2:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            sock.settimeout(remaining)
            chunk = sock.recv(4096)
            if not chunk:
                break
            data += chunk
    except OSError:  # a reset or a timeout after connecting: keep what arrived
        pass
    return _lines(data)


def _lines(data: bytes) -> tuple[str | None, str | None]:
    """The first two lines of a reply (None for each that is missing or empty)."""
    lines = data.decode(errors="replace").split("\n")[:2]
    identity, peer = (lines + ["", ""])[:2]
    return identity.strip() or None, peer.strip() or None


def _error_name(exc: OSError) -> str:
    if exc.errno is None:
        return str(exc)
    return _ERRORS.get(exc.errno, errno.errorcode.get(exc.errno, str(exc.errno)))
