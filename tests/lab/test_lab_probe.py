"""Probes and the echo server: refusals, timeouts, matrices in parallel, and a server clients cannot break."""

from __future__ import annotations

import os
import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import Lab, LabFactory

from kr_lab import echo, netns
from kr_lab.nsenter import run_in_netns
from kr_lab.probe import ProbeResult, probe, probe_matrix
from kr_lab.spec import parse_spec

ONE_NODE_SEVEN_PODS = parse_spec({
    "lans": [{"name": "lan", "subnet": "192.168.77.0/24"}],
    "master": {"name": "master", "ip": "192.168.77.10"},
    "nodes": [{"name": "node", "ip": "192.168.77.11", "podCIDR": "10.77.0.0/24"}],
    "pods": [{"name": f"p{i}", "node": "node", "ports": [{"port": 8080}]} for i in range(7)],
})


def test_a_closed_tcp_port_is_refused_fast(default_lab: Lab) -> None:
    result = probe(default_lab.pod_ns("default/tools"), default_lab.ip("frontend/web-1"), 9999, "TCP", 2)
    assert result == ProbeResult(False, None, "refused", result.elapsed) and result.elapsed < 0.2


def test_a_closed_udp_port_is_refused_fast(default_lab: Lab) -> None:
    result = probe(default_lab.pod_ns("default/tools"), default_lab.ip("frontend/web-1"), 9999, "UDP", 2)
    assert (result.ok, result.error) == (False, "refused") and result.elapsed < 0.2


def test_an_unrouted_address_times_out_or_is_unreachable(default_lab: Lab) -> None:
    host = default_lab.host_ns("client")
    off_lan = probe(host, "203.0.113.7", 80, "TCP", 0.3)  # no route at all in a one-LAN lab
    assert (off_lan.ok, off_lan.error) == (False, "unreachable")
    silent = probe(host, "192.168.56.250", 80, "TCP", 0.3)  # on the LAN, but nobody has it
    assert silent.error in ("timeout", "unreachable") and silent.elapsed < 0.6
    udp = probe(default_lab.pod_ns("frontend/web-1"), default_lab.ip("frontend/web-2"), 8080, "UDP", 0.3)
    assert udp.error in ("timeout", "unreachable") and udp.elapsed < 0.6


def test_probe_takes_addresses_only(default_lab: Lab) -> None:
    with pytest.raises(ValueError):
        probe(default_lab.host_ns("client"), "kube-master", 80, "TCP", 0.3)


def test_a_7x7_matrix_of_answering_pods_is_well_under_a_second(new_lab: LabFactory) -> None:
    lab = new_lab(ONE_NODE_SEVEN_PODS)
    keys = [f"default/p{i}" for i in range(7)]
    pairs = [(lab.pod_ns(src), lab.ip(dst)) for src in keys for dst in keys]
    started = time.monotonic()
    results = probe_matrix([(a, b, 8080, "TCP") for a, b in pairs], 2)
    took = time.monotonic() - started
    assert [r.answer for r in results] == [dst for _ in keys for dst in keys]
    assert took < 0.5, f"7x7 matrix took {took:.2f}s"


def test_a_matrix_with_timeouts_takes_about_one_timeout(new_lab: LabFactory) -> None:
    lab = new_lab(ONE_NODE_SEVEN_PODS)
    keys = [f"default/p{i}" for i in range(7)]
    # half the targets answer, the other half are on the pods' subnet but nobody has them (no ARP reply)
    pairs = [(lab.pod_ns(src), dst) for src in keys[:4]
             for dst in (lab.ip("default/p0"), "10.77.0.200", lab.ip("default/p6"), "10.77.0.201")]
    started = time.monotonic()
    results = probe_matrix([(a, b, 8080, "TCP") for a, b in pairs], 0.5)
    took = time.monotonic() - started
    assert [r.ok for r in results] == [True, False, True, False] * 4
    assert {r.error for r in results if not r.ok} <= {"timeout", "unreachable"}
    assert took < 0.9, f"matrix with timeouts took {took:.2f}s"


# --- the echo server


@pytest.fixture
def server(default_lab: Lab, tmp_path: Path) -> Iterator[tuple[str, int]]:
    ns = default_lab.host_ns("kube-master")
    pid = echo.start(ns, "host/master", [(7000, "TCP"), (7000, "UDP")], tmp_path / "echo.log")
    yield ns, pid
    netns.kill_all([ns])


def test_echo_survives_bad_clients(default_lab: Lab, server: tuple[str, int]) -> None:
    ns, _ = server

    def abuse() -> None:
        for _ in range(20):
            with socket.socket() as s:  # connect and reset at once
                s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
                s.connect(("127.0.0.1", 7000))
        with socket.create_connection(("127.0.0.1", 7000)) as s:  # talk first, and a lot
            s.sendall(b"GET / HTTP/1.0\r\n\r\n" * 1000)
            # the identity, then the address the server saw the connection come from
            assert s.recv(100) == b"host/master\n127.0.0.1:%d\n" % s.getsockname()[1]
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:  # empty and oversized datagrams
            s.sendto(b"", ("127.0.0.1", 7000))
            s.sendto(b"x" * 65000, ("127.0.0.1", 7000))

    run_in_netns(ns, abuse)
    client = default_lab.host_ns("client")
    assert probe(client, "192.168.56.10", 7000, "TCP", 1).answer == "host/master"
    assert probe(client, "192.168.56.10", 7000, "UDP", 1).answer == "host/master"


def test_echo_exits_on_sigterm(server: tuple[str, int]) -> None:
    ns, pid = server
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 2
    while pid in netns.pids([ns])[ns] and time.monotonic() < deadline:
        time.sleep(0.01)
    assert pid not in netns.pids([ns])[ns]
    assert os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 0


def test_echo_start_reports_a_server_that_cannot_bind(default_lab: Lab, tmp_path: Path) -> None:
    ns = default_lab.pod_ns("frontend/web-1")  # its own server holds 8080/TCP already
    with pytest.raises(echo.EchoStartError, match="Address already in use"):
        echo.start(ns, "dup", [(8080, "TCP")], tmp_path / "dup.log")
