#!/usr/bin/env python
"""How fast ``routing.bgp`` converges in the lab (issue 6): three nodes, BIRD on each, and an external BIRD.

Brings up ``kr lab`` with ``routing.bgp`` and an external router on the lab's outside host (BIRD, AS 65000,
peering with every node through ``--peer-router-*``), then measures, ``--rounds`` times each (polling
every 5 ms from inside the namespaces):

- **new Node object**: kube-node3 leaves for good (kr stopped, ``kr cleanup`` of its BIRD and routes, its
  Node deleted and waited out of every table), its kr is started again and waits for its Node; from the
  Node's creation until 10.1.3.0/24 is routed on kube-node1 and kube-node2 and is in the external
  router's table (kr on kube-node3 starts its BIRD, the others add a session; the lab cannot add a node
  namespace, so the node's namespace and pods stay);
- **agent killed**: ``kill -9`` of kr on kube-node1: how long any other node or the external router lost
  10.1.1.0/24 (the BIRD keeps running), and how long until the restarted agent is healthy;
- **speaker killed**: ``kill -9`` of kube-node1's BIRD: how long the others lost 10.1.1.0/24 and until
  they route it again (kr's watchdog starts BIRD again; peers keep the routes as stale meanwhile when
  graceful restart applies);
- each node's BIRD RSS (and the agent's, for scale).

Only the lab's namespaces are touched; the lab is taken down at the end. Usage (root):

    .venv/bin/python benchmarks/bgp_convergence.py [--rounds 5] [--graceful-restart] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from kubernetes import client  # noqa: E402

from kr_lab.lab import Lab  # noqa: E402
from kr_lab.state import StateDir  # noqa: E402

KR = str(REPO / ".venv/bin/kr")
NODES = ("kube-node1", "kube-node2", "kube-node3")
EXTERNAL = """\
router id 192.168.56.100;
protocol device {}
template bgp node { local 192.168.56.100 as 65000; password "s3cret"; connect delay time 1;
  connect retry time 5; error wait time 1, 10; ipv4 { import all; export none; }; }
protocol bgp kube_node1 from node { neighbor 192.168.56.11 as 64512; }
protocol bgp kube_node2 from node { neighbor 192.168.56.12 as 64512; }
protocol bgp kube_node3 from node { neighbor 192.168.56.13 as 64512; }
"""


def sh(netns: str, *argv: str) -> str:
    return subprocess.run(["ip", "netns", "exec", netns, *argv], capture_output=True, text=True, timeout=30).stdout


class Bench:
    def __init__(self, state: Path, work: Path) -> None:
        self.state, self.work = state, work
        self.lab = Lab(StateDir(state))
        self.ctl = work / "external.ctl"

    def routed(self, node: str, prefix: str) -> bool:
        return f"{prefix} via" in sh(self.lab.netns_of(node), "ip", "-4", "route", "show", prefix)

    def external_has(self, prefix: str) -> bool:
        return prefix in sh(self.lab.netns_of("client"), "birdc", "-s", str(self.ctl), "show", "route", prefix)

    def everywhere(self, prefix: str, nodes: tuple[str, ...]) -> bool:
        return all(self.routed(n, prefix) for n in nodes) and self.external_has(prefix)

    def rss_kib(self, pid: str) -> int:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        return 0


def wait(condition: Callable[[], bool], timeout: float = 60.0) -> float:
    started = time.monotonic()
    while not condition():
        if time.monotonic() - started > timeout:
            raise TimeoutError("not converged")
        time.sleep(0.005)
    return time.monotonic() - started


def outage(bench: Bench, prefix: str, nodes: tuple[str, ...], act: Callable[[], None], settle: float) -> float:
    """Do ``act``, then watch ``prefix`` for ``settle`` seconds and until it is everywhere again; returns
    for how long it was missing somewhere."""
    act()
    missing, last, deadline = 0.0, time.monotonic(), time.monotonic() + settle
    while True:
        ok = bench.everywhere(prefix, nodes)
        now = time.monotonic()
        if not ok:
            missing += now - last
        last = now
        if ok and now > deadline:
            return missing
        if now > deadline + 60:
            raise TimeoutError(f"{prefix} not back everywhere")
        time.sleep(0.005)


def run(rounds: int, graceful_restart: bool) -> dict[str, object]:
    work = Path(tempfile.mkdtemp(prefix="kbgpconv-"))
    state = work / "lab"
    args = [f"--agent-arg={a}" for a in ("--peer-router-ips=192.168.56.100", "--peer-router-asns=65000",
                                         "--peer-router-passwords=czNjcmV0",
                                         *(["--bgp-graceful-restart"] if graceful_restart else []))]
    subprocess.run([KR, "lab", "up", "--state", str(state), "--plugins", "routing.bgp", *args], check=True,
                   capture_output=True, text=True, timeout=120)
    try:
        bench = Bench(state, work)
        (work / "external.conf").write_text(EXTERNAL)
        sh(bench.lab.netns_of("client"), "bird", "-c", str(work / "external.conf"), "-s", str(bench.ctl))
        wait(lambda: all(bench.everywhere(f"10.1.{i}.0/24", tuple(n for n in NODES if n != f"kube-node{i}"))
                         for i in (1, 2, 3)))
        core: Callable[[client.ApiClient], client.CoreV1Api] = client.CoreV1Api
        saved = json.loads(bench.lab.call_api(lambda api: core(api).read_node("kube-node3", _preload_content=False).data))
        body = {"metadata": {k: v for k, v in saved["metadata"].items() if k in ("name", "labels", "annotations")},
                "spec": saved["spec"], "status": saved["status"]}
        others3 = ("kube-node1", "kube-node2")
        new_node = []
        node3 = bench.lab.netns_of("kube-node3")
        for _ in range(rounds):
            # kube-node3 leaves for good (kr stopped, its BIRD and routes cleaned up, its Node deleted),
            # then joins as a new node does: kr runs and waits for its Node object, which is created
            bench.lab.stop_agent("kube-node3")
            subprocess.run(["ip", "netns", "exec", node3, KR, "cleanup", "--plugins", "routing.bgp",
                            "--hostname-override", "kube-node3", "--bgp-run-dir", str(state / "bgp")],
                           check=True, capture_output=True, text=True, timeout=60)
            bench.lab.call_api(lambda api: core(api).delete_node("kube-node3"))
            wait(lambda: not any(bench.routed(n, "10.1.3.0/24") for n in others3) and not bench.external_has("10.1.3.0/24"))
            bench.lab.start_agent("kube-node3")
            time.sleep(2)  # the agent is up and has listed the API: it waits for its Node
            started = time.monotonic()
            bench.lab.call_api(lambda api: core(api).create_node(body))
            wait(lambda: bench.everywhere("10.1.3.0/24", others3))
            new_node.append(time.monotonic() - started)
        others1 = ("kube-node2", "kube-node3")
        agent_gap, agent_back, speaker_gap = [], [], []
        for _ in range(rounds):
            agent_gap.append(outage(bench, "10.1.1.0/24", others1, lambda: bench.lab.stop_agent("kube-node1", kill=True), 3.0))
            started = time.monotonic()
            bench.lab.start_agent("kube-node1")
            wait(lambda: (bench.lab.agent_health("kube-node1") or {}).get("healthy") is True)
            agent_back.append(time.monotonic() - started)
            pid = (state / "bgp" / "kube-node1" / "bird.pid").read_text().strip()
            speaker_gap.append(outage(bench, "10.1.1.0/24", others1,
                                      lambda pid=pid: subprocess.run(["kill", "-9", pid], check=True), 3.0))
        rss = {n: bench.rss_kib((state / "bgp" / n / "bird.pid").read_text().strip()) for n in NODES}
        return {
            "new_node_to_routable_everywhere_s": new_node,
            "agent_killed_route_missing_s": agent_gap, "agent_restart_to_healthy_s": agent_back,
            "speaker_killed_route_missing_s": speaker_gap,
            "bird_rss_kib": rss,
        }
    finally:
        subprocess.run([KR, "lab", "down", "--state", str(state)], capture_output=True, text=True, timeout=60)
        shutil.rmtree(work, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--graceful-restart", action="store_true", help="run the agents with --bgp-graceful-restart")
    args = parser.parse_args()
    result = run(args.rounds, args.graceful_restart)
    for key, values in result.items():
        if isinstance(values, list):
            print(f"{key:40s} p50 {statistics.median(values):.3f}  max {max(values):.3f}  "
                  f"({', '.join(f'{v:.3f}' for v in values)})")
        else:
            print(f"{key:40s} {values}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
