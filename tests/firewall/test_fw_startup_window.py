"""No start-up window: a pod is policed from its first packet (kube-router issues #873, #1309, #1652).

The lab creates a pod's namespace and starts its server before it writes the Pod to the API, as a
kubelet and a CNI plugin do, so there is a real stretch during which the pod answers on the network and
kr does not know it yet. Probes hammer the pod's address through that stretch; under a deny-all policy
not one may get through. A pod the API never hears of stays cut off both ways.
"""

from __future__ import annotations

import ipaddress
import json
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from kr_lab import topology
from kr_lab.probe import probe
from kr_lab.spec import PodPort, PodSpec, parse_spec
from kr_lab.state import StateDir

KR = str(Path(sys.executable).with_name("kr"))

DENY_ALL_BACKEND = textwrap.dedent("""\
    apiVersion: networking.k8s.io/v1
    kind: NetworkPolicy
    metadata: {namespace: backend, name: deny-all}
    spec: {podSelector: {}, policyTypes: [Ingress]}
    """)
NEW_POD = textwrap.dedent("""\
    apiVersion: v1
    kind: Pod
    metadata: {namespace: backend, name: api-new, labels: {app: api}}
    spec:
      nodeName: kube-node1
      containers: [{name: api, ports: [{name: http, containerPort: 9090}]}]
    """)


def kr(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([KR, *args], capture_output=True, text=True, timeout=120)
    if check and result.returncode != 0:
        raise AssertionError(f"kr {' '.join(args)}: {result.stdout}{result.stderr}")
    return result


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    state = tmp_path_factory.mktemp("fw-window") / "lab"
    kr("lab", "up", "--state", str(state), "--plugins", "routing.static,firewall.iptables")
    try:
        status = json.loads(kr("lab", "status", "--state", str(state), "--json").stdout)
        yield {"state": str(state), "status": status}
    finally:
        kr("lab", "down", "--state", str(state), check=False)


def next_pod_ip(status: dict, node: str) -> str:
    cidr = ipaddress.IPv4Network(next(n["podCIDR"] for n in status["nodes"] if n["name"] == node))
    used = {p["ip"] for p in status["pods"] if p["node"] == node}
    return next(str(ip) for ip in list(cidr.hosts())[1:] if str(ip) not in used)


class Hammer:
    """Probes one address from several pods as fast as it can, counting what gets through."""

    def __init__(self, sources: list[str], ip: str, port: int) -> None:
        self.attempts = 0
        self.answers: list[str] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(netns, ip, port)) for netns in sources]

    def _run(self, netns: str, ip: str, port: int) -> None:
        while not self._stop.is_set():
            result = probe(netns, ip, port, "TCP", 0.05)
            self.attempts += 1
            if result.ok:
                self.answers.append(result.answer or "?")

    def __enter__(self) -> "Hammer":
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join()


def test_a_new_pod_under_deny_all_never_gets_a_packet_in(lab: dict, tmp_path: Path) -> None:
    state, status = lab["state"], lab["status"]
    policy = tmp_path / "deny.yaml"
    policy.write_text(DENY_ALL_BACKEND)
    pod = tmp_path / "pod.yaml"
    pod.write_text(NEW_POD)
    kr("lab", "apply", "--state", state, "-f", str(policy))
    ip = next_pod_ip(status, "kube-node1")
    netns = {p["pod"]: p["netns"] for p in status["pods"]}
    sources = [netns["frontend/web-1"], netns["default/tools"], netns["frontend/web-2"]]  # same node and another
    with Hammer(sources, ip, 9090) as hammer:
        time.sleep(0.3)
        kr("lab", "apply", "--state", state, "-f", str(pod))  # the server listens before kr knows the pod
        time.sleep(0.5)
    assert hammer.attempts > 30, "the probes did not run"
    assert hammer.answers == [], f"{len(hammer.answers)} of {hammer.attempts} probes got through"
    node = next(n["netns"] for n in status["nodes"] if n["name"] == "kube-node1")
    assert probe(node, ip, 9090, "TCP", 1).answer == "backend/api-new", "the pod exists and its node reaches it"
    kr("lab", "delete", "--state", state, "-f", str(policy))
    assert probe(netns["frontend/web-1"], ip, 9090, "TCP", 1).answer == "backend/api-new"
    kr("lab", "delete", "--state", state, "-f", str(pod))


def test_a_pod_kr_does_not_know_is_cut_off_both_ways(lab: dict, tmp_path: Path) -> None:
    state_dir = StateDir(lab["state"])
    lab_state = state_dir.load()
    spec = parse_spec(lab_state.spec)
    ip = next_pod_ip(lab["status"], "kube-node2")
    stranger = PodSpec("default", "stranger", "kube-node2", {}, (PodPort("http", 8080, "TCP"),))
    netns = topology.add_pod(lab_state.lab_id, spec, stranger, ipaddress.IPv4Address(ip), tmp_path / "stranger.log")
    try:
        pods = {p["pod"]: p for p in lab["status"]["pods"]}
        outgoing = probe(netns, pods["frontend/web-2"]["ip"], 8080, "TCP", 0.5)
        incoming = probe(pods["frontend/web-1"]["netns"], ip, 8080, "TCP", 0.5)
        assert not outgoing.ok and not incoming.ok, (outgoing, incoming)
        node = next(n["netns"] for n in lab["status"]["nodes"] if n["name"] == "kube-node2")
        assert probe(node, ip, 8080, "TCP", 1).answer == "default/stranger", "the node itself still reaches it"
    finally:
        topology.remove_pod(lab_state.lab_id, "default", "stranger")
