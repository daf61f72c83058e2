"""proxy.ipvs on a kernel with IPVS (the UML guest), end to end: the real backend programs a node
namespace, kr reads IPVS back and real TCP goes through it.

Runs only inside the guest (``KR_IN_GUEST=1``, see tests/guest/test_guest_kernel.py). Topology, every
namespace created and deleted here:

    client 10.0.0.2 --veth-- 10.0.0.1 node (kube-bridge 10.1.1.1/24, pod CIDR 10.1.1.0/24) 10.1.2.1 --veth-- r1 10.1.2.2
                                         |-- p1 10.1.1.2 (hairpin port)
                                         |-- p2 10.1.1.3 (hairpin port)

The backend runs in the node namespace in its own process (``ipvsdriver.py``), as an agent would; the
node's iptables flavour is legacy (kubelet's canary chain says so; this guest kernel has no nf_tables).
"""

from __future__ import annotations

import json
import os
import pickle
import secrets
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from kr_core.desired import build_desired_state
from kr_lab import netns
from kr_lab.nsenter import run_in_netns
from kr_plugins.proxy.ipvsplan import plan_ipvs
from kr_plugins.proxy.rules import ProxySettings

pytestmark = pytest.mark.skipif(
    os.environ.get("KR_IN_GUEST") != "1",
    reason="runs only inside the UML guest kernel (tests/guest/test_guest_kernel.py boots it with KR_IN_GUEST=1)",
)

HERE = Path(__file__).parent
NODE_IP, CLIENT_IP = "10.0.0.1", "10.0.0.2"
PODS = {"p1": "10.1.1.2", "p2": "10.1.1.3"}
REMOTE = {"r1": "10.1.2.2"}
WEB_VIP, STICKY_VIP, NODE_PORT = "10.96.0.10", "10.96.0.11", 30080


class Lab:
    def __init__(self, tag: str) -> None:
        self.tag = tag
        self.node, self.client = f"{tag}-node", f"{tag}-client"
        self.ns = {name: f"{tag}-{name}" for name in (*PODS, *REMOTE)}
        self.peers: dict[str, list[str]] = {name: [] for name in self.ns}  # sources each server saw
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def build(self) -> None:
        for name in (self.node, self.client, *self.ns.values()):
            netns.create(name)
        netns.set_sysctls(self.node, {"net.ipv4.ip_forward": 1})
        netns.add_veth(self.node, "to-client", self.client, "eth0")
        lines = [f"addr add {NODE_IP}/24 dev to-client", "link set to-client up",
                 "link add kube-bridge type bridge", "addr add 10.1.1.1/24 dev kube-bridge", "link set kube-bridge up"]
        netns.ip_batch(lines, netns=self.node)
        netns.ip_batch([f"addr add {CLIENT_IP}/24 dev eth0", "link set eth0 up", f"route add default via {NODE_IP}"],
                       netns=self.client)
        for i, (name, address) in enumerate(PODS.items()):
            netns.add_veth(self.node, f"veth{i}", self.ns[name], "eth0")
            netns.ip_batch([f"link set veth{i} master kube-bridge", f"link set veth{i} type bridge_slave hairpin on",
                            f"link set veth{i} up"], netns=self.node)
            netns.ip_batch([f"addr add {address}/24 dev eth0", "link set eth0 up", "route add default via 10.1.1.1"],
                           netns=self.ns[name])
        netns.add_veth(self.node, "to-r1", self.ns["r1"], "eth0")
        netns.ip_batch(["addr add 10.1.2.1/24 dev to-r1", "link set to-r1 up"], netns=self.node)
        netns.ip_batch([f"addr add {REMOTE['r1']}/24 dev eth0", "link set eth0 up", "route add default via 10.1.2.1"],
                       netns=self.ns["r1"])
        # what kubelet leaves on a legacy node, so the backend picks that flavour
        subprocess.run(["ip", "netns", "exec", self.node, "iptables-legacy", "-t", "mangle", "-N", "KUBE-KUBELET-CANARY"],
                       check=True, capture_output=True)
        for name, ns in self.ns.items():
            listener = run_in_netns(ns, socket.create_server, ("0.0.0.0", 8080))
            thread = threading.Thread(target=self._serve, args=(name, listener), daemon=True)
            thread.start()
            self._threads.append(thread)

    def _serve(self, name: str, listener: socket.socket) -> None:
        listener.settimeout(0.2)
        with listener:
            while not self._stop.is_set():
                try:
                    conn, peer = listener.accept()
                except TimeoutError:
                    continue
                self.peers[name].append(peer[0])
                with conn:
                    conn.sendall(name.encode())

    def ask(self, source: str, address: str, port: int) -> str:
        """Connect from namespace ``source`` and return who answered ("refused" when refused)."""
        def connect() -> str:
            try:
                with socket.create_connection((address, port), timeout=3) as conn:
                    return conn.recv(64).decode()
            except ConnectionRefusedError:
                return "refused"
        return run_in_netns(source, connect)

    def backend(self, *actions: tuple[str, Any], options: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        path = Path(f"/tmp/{self.tag}-{secrets.token_hex(3)}.pickle")
        path.write_bytes(pickle.dumps((options or {"ipvs_graceful_period": 1.0}, [("start", None), *actions])))
        try:
            done = subprocess.run(["ip", "netns", "exec", self.node, sys.executable, str(HERE / "ipvsdriver.py"),
                                   str(path)], capture_output=True, text=True, timeout=120)
        finally:
            path.unlink()
        results = [json.loads(line) for line in done.stdout.splitlines()]
        assert done.returncode == 0 and all(r["ok"] for r in results), done.stderr[-3000:]
        return results[1:]

    def teardown(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join()
        names = [self.node, self.client, *self.ns.values()]
        netns.kill_all(names)
        netns.delete(names)


@pytest.fixture
def lab() -> Iterator[Lab]:
    built = Lab(f"kri{secrets.token_hex(2)}")
    try:
        built.build()
        yield built
    finally:
        built.teardown()


def objects(endpoints: dict[str, str], *, sticky: bool = True) -> dict[str, dict[str, Any]]:
    node = {"metadata": {"name": "node-a", "resourceVersion": "1"}, "spec": {"podCIDR": "10.1.1.0/24"},
            "status": {"addresses": [{"type": "InternalIP", "address": NODE_IP}]}}
    port = {"name": "http", "port": 80, "targetPort": "http", "protocol": "TCP"}
    web = {"metadata": {"namespace": "default", "name": "web", "resourceVersion": "1"},
           "spec": {"type": "NodePort", "clusterIP": WEB_VIP, "clusterIPs": [WEB_VIP], "ports": [{**port, "nodePort": NODE_PORT}]}}
    services = {"default/web": web}
    if sticky:
        services["default/sticky"] = {
            "metadata": {"namespace": "default", "name": "sticky", "resourceVersion": "1",
                         "annotations": {"kube-router.io/service.scheduler": "sh",
                                         "kube-router.io/service.schedflags": "sh-port"}},
            "spec": {"clusterIP": STICKY_VIP, "clusterIPs": [STICKY_VIP], "ports": [port],
                     "sessionAffinity": "ClientIP", "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 60}}}}

    def slice_(service: str) -> dict[str, Any]:
        return {"metadata": {"namespace": "default", "name": service, "resourceVersion": "1",
                             "labels": {"kubernetes.io/service-name": service}},
                "addressType": "IPv4", "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
                "endpoints": [{"addresses": [ip], "nodeName": "node-a" if name in PODS else "node-b"}
                              for name, ip in endpoints.items()]}
    names = [key.split("/")[1] for key in services]
    return {"nodes": {"node-a": node}, "services": services,
            "endpointslices": {f"default/{name}": slice_(name) for name in names}}


def state(endpoints: dict[str, str], **kwargs: Any) -> Any:
    return build_desired_state(objects(endpoints, **kwargs), "node-a")


def test_ipvs_backend_programs_what_it_plans_and_traffic_flows(lab: Lab) -> None:
    everyone = {**PODS, **REMOTE}
    desired = state(everyone)
    first, read = lab.backend(("sync", (desired, True)), ("read", None))
    got = read["state"]
    # what kr reads back from IPVS is exactly its plan
    plan = plan_ipvs(desired, ProxySettings())
    expected = {f"{k.protocol}/{k.address}:{k.port}": {
        "scheduler": s.scheduler, "flags": s.flags, "timeout": s.timeout,
        "reals": {f"{a}:{p}": 1 for a, p in sorted(s.destinations)}} for k, s in sorted(plan.services.items())}
    assert got["services"] == expected
    assert set(got["services"]) == {f"tcp/{WEB_VIP}:80", f"tcp/{NODE_IP}:{NODE_PORT}", f"tcp/{STICKY_VIP}:80"}
    sticky = got["services"][f"tcp/{STICKY_VIP}:80"]
    assert (sticky["scheduler"], sticky["flags"], sticky["timeout"]) == ("sh", 0x10 | 0x1, 60)
    assert got["vips"] == sorted([WEB_VIP, STICKY_VIP])
    assert {"KR-PX-VIPS", "KR-PX-VIP-PORTS", "KR-PX-LOOPBACK"} <= set(got["sets"])

    # ClusterIP from a pod: every endpoint answers, the pod itself too (hairpin)
    answers = {lab.ask(lab.ns["p1"], WEB_VIP, 80) for _ in range(15)}
    assert answers == set(everyone), answers
    # NodePort from outside: answered, and SNATed so replies return through this node
    answers = {lab.ask(lab.client, NODE_IP, NODE_PORT) for _ in range(12)}
    assert answers == set(everyone), answers
    assert CLIENT_IP not in lab.peers["r1"]
    # ClientIP affinity: one client, one endpoint
    assert len({lab.ask(lab.client, STICKY_VIP, 80) for _ in range(6)}) == 1
    # a service address answers only on service ports: a node listener is not reachable through a VIP
    node_listener = run_in_netns(lab.node, socket.create_server, ("0.0.0.0", 2222))
    try:
        started = time.monotonic()
        assert lab.ask(lab.client, WEB_VIP, 2222) == "refused"
        assert time.monotonic() - started < 1.0
        node_listener.settimeout(0)
        run_in_netns(lab.client, socket.create_connection, (NODE_IP, 2222), 3).close()
    finally:
        node_listener.close()


def test_a_removed_endpoint_drains_then_goes_and_cleanup_removes_everything(lab: Lab) -> None:
    everyone = {**PODS, **REMOTE}
    lab.backend(("sync", (state(everyone, sticky=False), True)))
    for _ in range(9):  # connections leave entries (TIME_WAIT) on every real server
        lab.ask(lab.client, WEB_VIP, 80)
    without_r1 = state(PODS, sticky=False)
    results = lab.backend(("sync", (state(everyone, sticky=False), True)), ("sync", (without_r1, False)),
                          ("read", None))
    reals = results[2]["state"]["services"][f"tcp/{WEB_VIP}:80"]["reals"]
    assert reals == {f"{PODS['p1']}:8080": 1, f"{PODS['p2']}:8080": 1, f"{REMOTE['r1']}:8080": 0}, \
        "r1 still has connections: weight 0, not deleted"
    assert {lab.ask(lab.client, WEB_VIP, 80) for _ in range(9)} <= set(PODS), "no new connection goes to r1"
    # a restarted agent finds r1 drained (weight 0) and gives it a grace period (1 s here) of its own
    results = lab.backend(("sync", (without_r1, True)), ("sleep", 1.2), ("sync", (without_r1, False)), ("read", None))
    reals = results[3]["state"]["services"][f"tcp/{WEB_VIP}:80"]["reals"]
    assert reals == {f"{PODS['p1']}:8080": 1, f"{PODS['p2']}:8080": 1}
    lab.backend(("cleanup", None))
    after = subprocess.run(["ip", "netns", "exec", lab.node, "iptables-legacy-save"], capture_output=True,
                           text=True, check=True).stdout
    assert "KR-PX" not in after and "KUBE-KUBELET-CANARY" in after
    links = subprocess.run(["ip", "-n", lab.node, "link", "show"], capture_output=True, text=True).stdout
    assert "kr-ipvs0" not in links
    sets = subprocess.run(["ip", "netns", "exec", lab.node, "ipset", "list", "-n"], capture_output=True, text=True).stdout
    assert "KR-PX" not in sets
    table = run_in_netns(lab.node, Path("/proc/thread-self/net/ip_vs").read_text)
    assert "0A60000A" not in table, table
