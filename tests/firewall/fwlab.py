"""A one-node network-namespace lab for the firewall tests.

::

    node-a (ns krfw-<id>-node): kube-bridge 10.244.1.1/24, eth0 192.168.50.11/24, br_netfilter on
      pods a, b, c (ns krfw-<id>-<pod>): eth0 10.244.1.{2,3,4}/24 on kube-bridge, serving TCP+UDP 80, 81
    remote (ns krfw-<id>-remote): eth0 192.168.50.12/24 plus 10.244.2.2/32 (a pod of another node), serving too

Invariants: every namespace is created under a random prefix and ``teardown`` (called in ``finally`` by
the fixture) kills the lab's processes and deletes its namespaces and /etc/netns files; nothing here
touches the root namespace, and no packet leaves the lab.
"""

from __future__ import annotations

import json
import pickle
import secrets
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).parent
PODS = {"a": "10.244.1.2", "b": "10.244.1.3", "c": "10.244.1.4"}
REMOTE_POD_IP = "10.244.2.2"
NODE_IP, REMOTE_IP, GATEWAY = "192.168.50.11", "192.168.50.12", "10.244.1.1"


def sh(*argv: str, check: bool = True, input_text: str | None = None) -> str:
    done = subprocess.run(argv, capture_output=True, text=True, input=input_text, timeout=60)
    if check and done.returncode != 0:
        raise AssertionError(f"{' '.join(argv)}: {done.returncode} {done.stderr.strip()}")
    return done.stdout


class FwLab:
    def __init__(self, workdir: Path) -> None:
        self.prefix = f"krfw-{secrets.token_hex(3)}"
        self.workdir = workdir
        self.node = f"{self.prefix}-node"
        self.remote = f"{self.prefix}-remote"
        self.pods = {name: f"{self.prefix}-{name}" for name in PODS}
        self.namespaces = [self.node, self.remote, *self.pods.values()]
        self.servers: list[subprocess.Popen[str]] = []
        self.last_stderr = ""

    def ex(self, ns: str, *argv: str, check: bool = True, input_text: str | None = None) -> str:
        return sh("ip", "netns", "exec", ns, *argv, check=check, input_text=input_text)

    def build(self) -> None:
        for ns in self.namespaces:
            etc = Path("/etc/netns") / ns
            etc.mkdir(parents=True, exist_ok=True)
            (etc / "resolv.conf").write_text("", encoding="ascii")
            (etc / "hosts").write_text("127.0.0.1 localhost\n", encoding="ascii")
            sh("ip", "netns", "add", ns)
            self.ex(ns, "ip", "link", "set", "lo", "up")
        n = self.node
        self.ex(n, "sysctl", "-qw", "net.ipv4.ip_forward=1")
        self.ex(n, "ip", "link", "add", "kube-bridge", "type", "bridge")
        self.ex(n, "ip", "addr", "add", f"{GATEWAY}/24", "dev", "kube-bridge")
        self.ex(n, "ip", "link", "set", "kube-bridge", "up")
        self.ex(n, "sysctl", "-qw", "net.bridge.bridge-nf-call-iptables=1")
        for name, ns in self.pods.items():
            self.ex(n, "ip", "link", "add", f"veth-{name}", "type", "veth", "peer", "name", "eth0", "netns", ns)
            self.ex(n, "ip", "link", "set", f"veth-{name}", "master", "kube-bridge", "up")
            self.ex(ns, "ip", "addr", "add", f"{PODS[name]}/24", "dev", "eth0")
            self.ex(ns, "ip", "link", "set", "eth0", "up")
            self.ex(ns, "ip", "route", "add", "default", "via", GATEWAY)
        self.ex(n, "ip", "link", "add", "eth0", "type", "veth", "peer", "name", "eth0", "netns", self.remote)
        self.ex(n, "ip", "addr", "add", f"{NODE_IP}/24", "dev", "eth0")
        self.ex(n, "ip", "link", "set", "eth0", "up")
        self.ex(n, "ip", "route", "add", f"{REMOTE_POD_IP}/32", "via", REMOTE_IP)
        r = self.remote
        self.ex(r, "ip", "addr", "add", f"{REMOTE_IP}/24", "dev", "eth0")
        self.ex(r, "ip", "addr", "add", f"{REMOTE_POD_IP}/32", "dev", "lo")
        self.ex(r, "ip", "link", "set", "eth0", "up")
        self.ex(r, "ip", "route", "add", "10.244.1.0/24", "via", NODE_IP, "src", REMOTE_POD_IP)
        for ns in [*self.pods.values(), r]:
            proc = subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, str(HERE / "fwprobe.py"), "serve",
                                     "80", "81"], stdout=subprocess.PIPE, text=True)
            self.servers.append(proc)
            assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"

    def teardown(self) -> None:
        for proc in self.servers:
            proc.kill()
            proc.wait()
        for ns in self.namespaces:
            pids = sh("ip", "netns", "pids", ns, check=False).split()
            for pid in pids:
                sh("kill", "-9", pid, check=False)
            sh("ip", "netns", "del", ns, check=False)
            shutil.rmtree(Path("/etc/netns") / ns, ignore_errors=True)

    # --- the backend

    def backend(self, *actions: tuple[str, Any], options: dict[str, Any] | None = None,
                expect_ok: bool = True) -> list[dict[str, Any]]:
        path = self.workdir / f"actions-{secrets.token_hex(3)}.pickle"
        path.write_bytes(pickle.dumps((options or {}, list(actions))))
        done = subprocess.run(["ip", "netns", "exec", self.node, sys.executable, str(HERE / "fwdriver.py"), str(path)],
                              capture_output=True, text=True, timeout=120)
        self.last_stderr = done.stderr
        results = [json.loads(line) for line in done.stdout.splitlines()]
        if expect_ok:
            assert done.returncode == 0 and all(r["ok"] for r in results), done.stderr[-3000:]
        return results

    def sync(self, desired: Any, full: bool = True) -> dict[str, Any]:
        return self.backend(("sync", (desired, full)))[0]

    # --- traffic

    def check(self, src: str, proto: str, dst_ip: str, port: int = 80) -> bool:
        ns = self.node if src == "node" else self.remote if src == "remote" else self.pods[src]
        out = self.ex(ns, sys.executable, str(HERE / "fwprobe.py"), "check", proto, dst_ip, str(port)).strip()
        return out == "ok"

    # --- kernel state

    def kr_save(self, flavour: str = "nft") -> str:
        """kr's firewall lines in the filter table's save, without counters."""
        lines = sh("ip", "netns", "exec", self.node, f"iptables-{flavour}-save", "-t", "filter").splitlines()
        return "\n".join(line.split(" [")[0] if line.startswith(":") else line
                         for line in lines if "KR-FW" in line)

    def kr_sets(self) -> list[str]:
        return sorted(n for n in self.ex(self.node, "ipset", "list", "-n").split() if n.startswith("KR-FW"))
