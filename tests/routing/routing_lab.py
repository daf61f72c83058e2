"""A network-namespace lab for the routing tests: three nodes on two subnets, each with one pod.

::

            switch: bridge br0, 192.168.50.0/24                      192.168.60.0/24
    node1 .11 ───┐
    node2 .12 ───┼── br0 ── lan .1 ── router ── wan .1 ── node3 .13
    external .100┘
    nodeN: bridge kube-bridge 10.244.N.1/24 ── veth ── pod namespace, eth0 10.244.N.2/24 (MTU 1450)

Every namespace is named ``krt-<6 hex>-<role>``; a TCP probe (``netprobe.py serve``) listens in every pod
and in the external host. Node namespaces start as a host would: forwarding off (the backend must turn
it on) and strict reverse-path filtering. The backend runs inside a node namespace through
``driver.py``, exactly as ``kr run`` would.

Invariants: ``Lab.teardown`` removes everything ``Lab.build`` made (processes, namespaces, their
``/etc/netns`` files), also after a partial build; the ``lab`` fixture (conftest.py) always calls it.
Nothing here touches the root namespace's routes, rules, sysctls or iptables, and no packet leaves the
namespaces built here. (This module has its own name, not ``conftest``, so tests can import it while
other test folders have conftest modules of their own.)
"""

from __future__ import annotations

import json
import re
import secrets
import selectors
import shutil
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).parent
DRIVER = HERE / "driver.py"
NETPROBE = HERE / "netprobe.py"
PROBE_PORT = 7777
POD_MTU = 1450
LAN = "192.168.50"
WAN = "192.168.60"
EXTERNAL_IP = f"{LAN}.100"


def run(argv: Sequence[str], input_text: str | None = None, check: bool = True,
        timeout: float = 30) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(list(argv), input=input_text, capture_output=True, text=True, timeout=timeout)
    if check and done.returncode != 0:
        raise AssertionError(f"{' '.join(argv)} exited {done.returncode}: {done.stderr.strip()}")
    return done


def node_object(name: str, ip: str, pod_cidr: str) -> dict[str, Any]:
    """A Node as the API server would send it."""
    return {
        "apiVersion": "v1", "kind": "Node", "metadata": {"name": name},
        "spec": {"podCIDR": pod_cidr, "podCIDRs": [pod_cidr]},
        "status": {"addresses": [{"type": "InternalIP", "address": ip}, {"type": "Hostname", "address": name}]},
    }


@dataclass(frozen=True)
class LabNode:
    name: str
    ns: str
    ip: str
    pod_cidr: str
    pod_ns: str
    pod_ip: str

    @property
    def node_object(self) -> dict[str, Any]:
        return node_object(self.name, self.ip, self.pod_cidr)


class Lab:
    def __init__(self, workdir: Path) -> None:
        self.prefix = f"krt-{secrets.token_hex(3)}"
        self.workdir = workdir
        self.namespaces: list[str] = []
        self.processes: list[subprocess.Popen[str]] = []
        self.switch, self.router, self.external = (f"{self.prefix}-{role}" for role in ("sw", "rt", "ext"))
        self.nodes = {
            f"node{i}": LabNode(f"node{i}", f"{self.prefix}-n{i}", ip, f"10.244.{i}.0/24", f"{self.prefix}-p{i}",
                                f"10.244.{i}.2")
            for i, ip in ((1, f"{LAN}.11"), (2, f"{LAN}.12"), (3, f"{WAN}.13"))
        }
        self.last_stderr = ""

    # --- building and tearing down

    def build(self) -> None:
        for ns in (self.switch, self.router, self.external, *(n.ns for n in self.nodes.values()),
                   *(n.pod_ns for n in self.nodes.values())):
            self.namespaces.append(ns)
            run(["ip", "netns", "add", ns])
            etc = Path("/etc/netns") / ns  # `ip netns exec` mounts these over /etc: no DNS, no host names
            etc.mkdir(parents=True, exist_ok=True)
            (etc / "resolv.conf").write_text("", encoding="ascii")
            (etc / "hosts").write_text("127.0.0.1 localhost\n", encoding="ascii")
            self.ip(ns, "link", "set", "lo", "up")
        self.batch(self.switch, ["link add br0 type bridge", "link set br0 up"])
        for port, ns, peer in (("n1", self.nodes["node1"].ns, "eth0"), ("n2", self.nodes["node2"].ns, "eth0"),
                               ("ext", self.external, "eth0"), ("rt", self.router, "lan")):
            self.veth(self.switch, port, ns, peer)
            self.batch(self.switch, [f"link set {port} master br0", f"link set {port} up"])
        self.veth(self.router, "wan", self.nodes["node3"].ns, "eth0")
        self.batch(self.router, [f"addr add {LAN}.1/24 dev lan", "link set lan up",
                                 f"addr add {WAN}.1/24 dev wan", "link set wan up"])
        self.sysctl(self.router, "net/ipv4/ip_forward", "1")
        self.batch(self.external, [f"addr add {EXTERNAL_IP}/24 dev eth0", "link set eth0 up",
                                   f"route add default via {LAN}.1"])
        for node in self.nodes.values():
            gateway = f"{WAN}.1" if node.ip.startswith(WAN) else f"{LAN}.1"
            self.batch(node.ns, [f"addr add {node.ip}/24 dev eth0", "link set eth0 up",
                                 f"route add default via {gateway}", "link add kube-bridge type bridge",
                                 f"addr add {node.pod_cidr.replace('.0/24', '.1/24')} dev kube-bridge",
                                 "link set kube-bridge up"])
            for key in ("net/ipv4/conf/all/rp_filter", "net/ipv4/conf/default/rp_filter"):
                self.sysctl(node.ns, key, "1")
            self.veth(node.ns, "vethpod", node.pod_ns, "eth0")
            self.batch(node.ns, [f"link set vethpod mtu {POD_MTU} master kube-bridge", "link set vethpod up"])
            self.batch(node.pod_ns, [f"link set eth0 mtu {POD_MTU} up", f"addr add {node.pod_ip}/24 dev eth0",
                                     f"route add default via {node.pod_cidr.replace('.0/24', '.1')}"])
        self.start_probes([n.pod_ns for n in self.nodes.values()] + [self.external])

    def teardown(self) -> None:
        for proc in self.processes:
            proc.kill()
            proc.wait(timeout=10)
        for ns in self.namespaces:
            run(["ip", "netns", "del", ns], check=False)
            shutil.rmtree(Path("/etc/netns") / ns, ignore_errors=True)

    def start_probes(self, namespaces: Sequence[str]) -> None:
        started = []
        for ns in namespaces:
            proc = subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, str(NETPROBE), "serve",
                                     str(PROBE_PORT)], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
            self.processes.append(proc)
            started.append(proc)
        with selectors.DefaultSelector() as selector:
            for proc in started:
                assert proc.stdout is not None
                selector.register(proc.stdout, selectors.EVENT_READ)
            waiting = len(started)
            while waiting:
                events = selector.select(timeout=10)
                assert events, "a TCP probe did not start within 10 s"
                for key, _ in events:
                    assert key.fileobj.readline().strip() == "ready"  # type: ignore[union-attr]
                    selector.unregister(key.fileobj)
                    waiting -= 1

    # --- small tools

    def ip(self, ns: str, *args: str) -> str:
        return run(["ip", "-n", ns, *args]).stdout

    def batch(self, ns: str, commands: Sequence[str]) -> None:
        run(["ip", "-n", ns, "-batch", "-"], input_text="\n".join(commands) + "\n")

    def veth(self, ns_a: str, name_a: str, ns_b: str, name_b: str) -> None:
        run(["ip", "link", "add", name_a, "netns", ns_a, "type", "veth", "peer", "name", name_b, "netns", ns_b])

    def exec(self, ns: str, *argv: str, check: bool = True, timeout: float = 30) -> subprocess.CompletedProcess[str]:
        return run(["ip", "netns", "exec", ns, *argv], check=check, timeout=timeout)

    def sysctl(self, ns: str, key: str, value: str) -> None:
        self.exec(ns, "sh", "-c", f"echo {value} > /proc/sys/{key}")

    def read_sysctl(self, ns: str, key: str) -> str:
        return self.exec(ns, "cat", f"/proc/sys/{key}").stdout.strip()

    # --- the backend and its effects

    def snapshot(self, names: Sequence[str] | None = None, extra: Sequence[dict[str, Any]] = ()) -> Path:
        """A cache snapshot holding the lab's nodes ``names`` (default: all) and ``extra`` Node objects."""
        chosen = [self.nodes[name].node_object for name in (names if names is not None else self.nodes)]
        objects = {obj["metadata"]["name"]: obj for obj in (*chosen, *extra)}
        path = self.workdir / f"snapshot-{secrets.token_hex(4)}.json"
        path.write_text(json.dumps({"nodes": objects}), encoding="utf-8")
        return path

    def backend(self, node: str, *actions: str, options: dict[str, Any] | None = None,
                expect_ok: bool = True) -> list[dict[str, Any]]:
        """Run ``driver.py`` in ``node``'s namespace; one result per action (stderr in ``last_stderr``)."""
        done = self.exec(self.nodes[node].ns, sys.executable, str(DRIVER), node, "--options",
                         json.dumps(options or {}), *actions, check=False)
        self.last_stderr = done.stderr
        results = [json.loads(line) for line in done.stdout.splitlines()]
        assert len(results) == len(actions), done.stderr
        if expect_ok:
            assert all(r["ok"] for r in results), done.stderr
        return results

    def sync_all(self, snapshot: Path, options: dict[str, Any] | None = None) -> None:
        for node in self.nodes:
            self.backend(node, f"full:{snapshot}", options=options)

    def send(self, from_node: str, to_ip: str, nbytes: int = 200_000) -> tuple[str, int]:
        """Send ``nbytes`` over TCP from ``from_node``'s pod; return (source address seen, bytes received)."""
        done = self.exec(self.nodes[from_node].pod_ns, sys.executable, str(NETPROBE), "send", to_ip,
                         str(PROBE_PORT), str(nbytes), check=False, timeout=20)
        assert done.returncode == 0, f"{from_node} pod -> {to_ip}: {done.stderr.strip()}"
        peer, received = done.stdout.split()
        return peer, int(received)

    def routes(self, node: str, *selector: str) -> list[dict[str, Any]]:
        """``ip -j route show table main SELECTOR`` in ``node``'s namespace."""
        return json.loads(self.ip(self.nodes[node].ns, "-j", "route", "show", "table", "main", *selector) or "[]")

    def iptables_save(self, node: str, flavour: str) -> str:
        """``iptables-<flavour>-save`` in ``node``'s namespace, without comments and counters."""
        text = self.exec(self.nodes[node].ns, f"iptables-{flavour}-save").stdout
        return "\n".join(re.sub(r" \[\d+:\d+\]$", "", line) for line in text.splitlines() if not line.startswith("#"))

    def ipset_members(self, node: str, name: str) -> list[str]:
        """The members of set ``name``, sorted (the kernel lists a hash set in no stable order)."""
        listing = self.exec(self.nodes[node].ns, "ipset", "list", name).stdout
        return sorted(listing.split("Members:\n", 1)[1].split())

    def kr_state(self, node: str) -> dict[str, Any]:
        """Everything routing.static may own in ``node``'s namespace, as comparable values."""
        ns = self.nodes[node].ns
        has_device = "kr-vxlan" in self.ip(ns, "-o", "link", "show")
        return {
            "routes": self.kr_routes(node),
            "iptables": {flavour: self.iptables_save(node, flavour) for flavour in ("nft", "legacy")},
            "ipsets": {name: self.ipset_members(node, name)
                       for name in self.exec(ns, "ipset", "list", "-n").stdout.split()},
            "device": json.loads(self.ip(ns, "-j", "-d", "link", "show", "kr-vxlan")) if has_device else None,
            "neighbours": self.ip(ns, "neigh", "show", "dev", "kr-vxlan") if has_device else None,
            "fdb": self.exec(ns, "bridge", "fdb", "show", "dev", "kr-vxlan").stdout if has_device else None,
        }

    def kr_routes(self, node: str) -> dict[str, str]:
        """kr's routes (proto 107) in ``node``'s namespace: destination -> ``via GATEWAY dev DEV [onlink]``."""
        return {r["dst"]: f"via {r['gateway']} dev {r['dev']}{' onlink' if 'onlink' in r.get('flags', []) else ''}"
                for r in self.routes(node, "proto", "107")}
