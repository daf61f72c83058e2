"""What the UML guest kernel gives kr, checked from inside it: IPVS, dummy links, a read-only host.

This module runs only inside the guest that ``tests/guest/test_guest_kernel.py`` boots (``KR_IN_GUEST=1``);
on the host it skips (the host kernel has no IPVS and no dummy links). Inside, the repository's session
guard (tests/conftest.py) watches the *guest's* root namespace, so, as on the host, everything here happens
in namespaces this module creates and deletes:

    client 10.0.0.2 --veth-- 10.0.0.1 node 10.0.1.1 --veth-- 10.0.1.2 backend1
                             (dummy kr-ipvs0: 10.96.0.10)
                                      10.0.2.1 --veth-- 10.0.2.2 backend2

The node holds the VIP on a dummy link and an IPVS virtual service (NAT, round robin) to both backends;
the client's connections to the VIP must reach both backends and get their answers back.
"""

from __future__ import annotations

import dataclasses
import errno
import json
import os
import secrets
import socket
import subprocess
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from kr_lab import netns
from kr_lab.nsenter import run_in_netns

pytestmark = pytest.mark.skipif(
    os.environ.get("KR_IN_GUEST") != "1",
    reason="runs only inside the UML guest kernel (tests/guest/test_guest_kernel.py boots it with KR_IN_GUEST=1)",
)

VIP = "10.96.0.10"
VIP_PORT = 80
BACKEND_PORT = 8080
# Every IPVS scheduler a Service may ask for (kube-proxy's --ipvs-scheduler); ip_vs_twos is not in UML 6.1.
SCHEDULERS = ("rr", "wrr", "lc", "wlc", "sh", "dh", "mh", "sed", "nq", "lblc", "lblcr", "fo", "ovf")
IP_VS_CONN_F_MASQ = 0  # IPVSDest's fwd_method; pyroute2 defaults to 3 (direct routing)


@dataclasses.dataclass(frozen=True)
class Net:
    node: str
    client: str
    backends: dict[str, str]  # namespace -> address


def _in(ns: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    return run_in_netns(ns, fn, *args, **kwargs)


def _ipvs(ns: str, action: Callable[[Any], Any]) -> Any:
    """Open an IPVS generic-netlink socket inside ``ns`` (sockets keep the namespace they were born in)."""
    from pyroute2 import IPVS

    def run() -> Any:
        with IPVS() as ipvs:
            return action(ipvs)
    return _in(ns, run)


@pytest.fixture(scope="module")
def net() -> Iterator[Net]:
    tag = f"krg{secrets.token_hex(3)}"
    node, client = f"{tag}-node", f"{tag}-client"
    backends = {f"{tag}-be1": "10.0.1.2", f"{tag}-be2": "10.0.2.2"}
    made: list[str] = []
    try:
        for name in (node, client, *backends):
            made.append(name)
            netns.create(name)
        netns.set_sysctls(node, {"net.ipv4.ip_forward": 1})
        netns.add_veth(node, "to-client", client, "eth0")
        netns.ip_batch(["addr add 10.0.0.1/24 dev to-client", "link set to-client up",
                        "link add kr-ipvs0 type dummy", f"addr add {VIP}/32 dev kr-ipvs0",
                        "link set kr-ipvs0 up"], netns=node)
        netns.ip_batch(["addr add 10.0.0.2/24 dev eth0", "link set eth0 up",
                        "route add default via 10.0.0.1"], netns=client)
        for i, (name, address) in enumerate(backends.items(), start=1):
            netns.add_veth(node, f"to-be{i}", name, "eth0")
            netns.ip_batch([f"addr add 10.0.{i}.1/24 dev to-be{i}", f"link set to-be{i} up"], netns=node)
            netns.ip_batch([f"addr add {address}/24 dev eth0", "link set eth0 up",
                            f"route add default via 10.0.{i}.1"], netns=name)
        yield Net(node=node, client=client, backends=backends)
    finally:
        netns.kill_all(made)
        netns.delete(made)


def test_dummy_link_holds_the_vip(net: Net) -> None:
    link = json.loads(netns.ip("-d", "-j", "-4", "addr", "show", "dev", "kr-ipvs0", netns=net.node))[0]
    assert link["linkinfo"]["info_kind"] == "dummy"
    assert [a["local"] for a in link["addr_info"]] == [VIP]


def test_every_scheduler_is_available(net: Net) -> None:
    from pyroute2 import IPVSService

    def add_dump_delete(ipvs: Any) -> list[str]:
        services = [IPVSService(addr=VIP, port=1000 + i, protocol=socket.IPPROTO_TCP, sched_name=name)
                    for i, name in enumerate(SCHEDULERS)]
        for service in services:
            ipvs.service("add", service=service)
        try:
            dumped = [IPVSService.from_message(m) for m in ipvs.service("dump")]
            return sorted(s["sched_name"] for s in dumped)
        finally:
            for service in services:
                ipvs.service("del", service=service)

    assert _ipvs(net.node, add_dump_delete) == sorted(SCHEDULERS)
    assert _ipvs(net.node, lambda ipvs: list(ipvs.service("dump"))) == []


def _serve(listener: socket.socket, answer: bytes, stop: threading.Event) -> None:
    listener.settimeout(0.2)
    while not stop.is_set():
        try:
            conn, _ = listener.accept()
        except TimeoutError:
            continue
        with conn:
            conn.settimeout(5)
            conn.recv(64)
            conn.sendall(answer)


def _ask(address: str, port: int) -> bytes:
    with socket.create_connection((address, port), timeout=5) as conn:
        conn.sendall(b"who?\n")
        conn.shutdown(socket.SHUT_WR)
        return conn.recv(64)


def test_tcp_through_an_ipvs_virtual_service(net: Net) -> None:
    from pyroute2 import IPVSDest, IPVSService

    stop = threading.Event()
    listeners = {name: _in(name, socket.create_server, ("0.0.0.0", BACKEND_PORT)) for name in net.backends}
    threads = [threading.Thread(target=_serve, args=(sock, name.encode(), stop), daemon=True)
               for name, sock in listeners.items()]
    for thread in threads:
        thread.start()
    service = IPVSService(addr=VIP, port=VIP_PORT, protocol=socket.IPPROTO_TCP, sched_name="rr")

    def program(ipvs: Any) -> None:
        ipvs.service("add", service=service)
        for address in net.backends.values():
            ipvs.dest("add", service=service,
                      dest=IPVSDest(addr=address, port=BACKEND_PORT, fwd_method=IP_VS_CONN_F_MASQ))
    try:
        _ipvs(net.node, program)
        answers = [_in(net.client, _ask, VIP, VIP_PORT) for _ in range(4)]
        assert sorted(answers) == sorted(name.encode() for name in net.backends for _ in range(2))
        dests = _ipvs(net.node, lambda ipvs: [IPVSDest.from_message(m) for m in ipvs.dest("dump", service=service)])
        assert sorted(d["addr"] for d in dests) == sorted(net.backends.values())
        # the kernel's own view, as `ipvsadm -Ln` prints it (/proc/self/net is the main thread's namespace)
        table = _in(net.node, Path("/proc/thread-self/net/ip_vs").read_text)
        assert "TCP  0A60000A:0050 rr" in table
    finally:
        stop.set()
        for thread in threads:
            thread.join()
        for sock in listeners.values():
            sock.close()
        _ipvs(net.node, lambda ipvs: ipvs.service("del", service=service))


def test_netfilter_tools_next_to_ipvs(net: Net) -> None:
    """What kube-proxy's IPVS mode programs next to IPVS: ipsets, iptables (legacy) with set and ipvs matches."""
    ns = net.node

    def run(*argv: str) -> str:
        return subprocess.run(["ip", "netns", "exec", ns, *argv], check=True, capture_output=True, text=True).stdout

    run("ipset", "create", "KR-TEST", "hash:ip,port,ip")
    try:
        run("ipset", "add", "KR-TEST", f"{VIP},tcp:{VIP_PORT},{VIP}")
        run("iptables-legacy", "-t", "nat", "-A", "POSTROUTING", "-m", "set", "--match-set", "KR-TEST",
            "dst,dst,src", "-j", "MASQUERADE")
        run("iptables-legacy", "-A", "FORWARD", "-m", "ipvs", "--ipvs", "-m", "comment", "--comment", "kr", "-j",
            "ACCEPT")
        saved = run("iptables-legacy-save")
        assert "--match-set KR-TEST dst,dst,src" in saved and "-m ipvs --ipvs" in saved
        assert "flow entries" in subprocess.run(["ip", "netns", "exec", ns, "conntrack", "-L"], check=True,
                                                capture_output=True, text=True).stderr
    finally:
        for table in ("nat", "filter"):
            run("iptables-legacy", "-t", table, "-F")
        run("ipset", "destroy", "KR-TEST")


def test_the_host_root_is_read_only(tmp_path: Path) -> None:
    """The guest's own ``ro`` is not the protection (guest root can undo it); the host's read-only mounts are."""
    probe = os.environ.get("KR_GUEST_PROBE", f"kr-guest-write-probe-{secrets.token_hex(4)}")
    here = os.path.dirname(os.path.abspath(__file__))
    if _mount_type(here) == "overlay":
        # a checkout under /tmp: the guest's /tmp is an overlay whose writes land in the guest's tmpfs;
        # the host-side test checks that the probe never appears on the host
        open(os.path.join(here, probe), "w").close()
    else:
        with pytest.raises(OSError) as plain:
            open(os.path.join(here, probe), "w").close()
        assert plain.value.errno == errno.EROFS
    # A fresh hostfs mount is read-write as far as the guest is concerned: only the host side can refuse.
    mnt = tmp_path / "host"
    mnt.mkdir()
    script = (f"mount -t hostfs -o {here} hostfs {mnt} && grep -w {mnt} /proc/mounts"
              f" && echo probe > {mnt}/{probe}; echo rc=$?")
    out = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c", script],
                         check=False, capture_output=True, text=True)
    assert " rw," in out.stdout, out.stdout + out.stderr
    assert "Read-only file system" in out.stderr and "rc=0" not in out.stdout, out.stdout + out.stderr
    # The host's /proc through hostfs: writing even the value it already has is refused.
    sysctl = "/proc/sys/net/ipv4/ip_forward"
    script = (f"mount -t hostfs -o /proc/sys/net/ipv4 hostfs {mnt} && v=$(cat {mnt}/ip_forward)"
              f" && echo $v > {mnt}/ip_forward; echo rc=$?")
    out = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c", script],
                         check=False, capture_output=True, text=True)
    assert "Read-only file system" in out.stderr and "rc=0" not in out.stdout, (sysctl, out.stdout + out.stderr)


def _mount_type(path: str) -> str:
    """The file system type of the mount holding ``path`` (the longest mount point that prefixes it)."""
    best, kind = "", ""
    for line in Path("/proc/mounts").read_text().splitlines():
        fields = line.split()
        point = fields[1]
        if (path == point or path.startswith(point.rstrip("/") + "/")) and len(point) >= len(best):
            best, kind = point, fields[2]
    return kind
