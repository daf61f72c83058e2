"""End to end through the `kr lab` command line: real namespaces, real agents running routing.static,
real TCP/UDP/SCTP between pods. Every lab a test starts is taken down at teardown, also on failure."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

KR = str(Path(sys.executable).with_name("kr"))
SCTP = Path("/proc/net/sctp").exists() or Path("/sys/module/sctp").exists()
PLUGINS = "routing.static,debug.log"

TWO_SUBNETS = textwrap.dedent("""\
    serviceCIDR: 10.96.0.0/12
    clusterCIDR: 10.2.0.0/16
    lans:
      - {name: rack-a, subnet: 172.31.1.0/24}
      - {name: rack-b, subnet: 172.31.2.0/24}
    master: {name: master, lan: rack-a, ip: 172.31.1.10}
    nodes:
      - {name: node-a1, lan: rack-a, ip: 172.31.1.11}
      - {name: node-a2, lan: rack-a, ip: 172.31.1.12}
      - {name: node-b1, lan: rack-b, ip: 172.31.2.11}
    pods:
      - {name: a1, node: node-a1, ports: [{name: http, port: 8080, protocol: TCP}, {name: dns, port: 53, protocol: UDP}]}
      - {name: a2, node: node-a2, ports: [{name: http, port: 8080, protocol: TCP}, {name: dns, port: 53, protocol: UDP}]}
      - {name: b1, node: node-b1, ports: [{name: http, port: 8080, protocol: TCP}, {name: dns, port: 53, protocol: UDP}]}
""")


def kr(*args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([KR, *args], capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(f"kr {' '.join(args)} exited {result.returncode}:\n{result.stdout}\n{result.stderr}")
    return result


class LabHandle:
    def __init__(self, state: Path) -> None:
        self.state = str(state)

    def __call__(self, *args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        command, rest = args[0], args[1:]
        if command == "agent":
            return kr("lab", "agent", rest[0], "--state", self.state, *rest[1:], check=check, timeout=timeout)
        return kr("lab", command, "--state", self.state, *rest, check=check, timeout=timeout)

    def status(self) -> dict:
        return json.loads(self("status", "--json").stdout)

    def status_cache(self) -> dict:
        """The status as first read (namespaces and addresses do not change during a test)."""
        if not hasattr(self, "_status"):
            self._status = self.status()
        return self._status

    def matrix(self, *extra: str) -> list[dict]:
        return json.loads(self("probe", "--matrix", "--json", "--timeout", "1", *extra).stdout)

    def log(self, node: str) -> str:
        return (Path(self.state) / "logs" / f"agent-{node}.log").read_text()


@pytest.fixture
def make_lab(tmp_path: Path) -> Iterator[Callable[..., LabHandle]]:
    labs: list[LabHandle] = []

    def make(spec: str | None = None, plugins: str = PLUGINS, *agent_args: str) -> LabHandle:
        state = tmp_path / f"lab{len(labs)}"
        handle = LabHandle(state)
        labs.append(handle)
        args = ["up", "--plugins", plugins]
        if spec is not None:
            spec_file = tmp_path / f"spec{len(labs)}.yaml"
            spec_file.write_text(spec)
            args += ["--spec", str(spec_file)]
        for arg in agent_args:
            args += ["--agent-arg", arg]
        handle(*args)
        return handle

    yield make
    for handle in labs:
        handle("down", check=False)


def lab_namespaces(lab_id: str) -> list[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    return [line.split()[0] for line in out.splitlines() if line.startswith(f"kr{lab_id}-")]


def test_up_status_reachability_and_down(make_lab: Callable[..., LabHandle]) -> None:
    started = time.monotonic()
    lab = make_lab()
    took = time.monotonic() - started
    status = lab.status()
    assert [n["agent"] for n in status["nodes"]] == ["healthy"] * 3
    assert {n["podCIDR"] for n in status["nodes"]} == {"10.1.1.0/24", "10.1.2.0/24", "10.1.3.0/24"}
    assert len(status["pods"]) == 6 and Path(status["kubeconfig"]).exists()
    assert took < 30, f"kr lab up took {took:.1f}s"

    rows = lab.matrix()
    failed = [(r["from"], r["to"], r["error"]) for r in rows if not r["ok"]]
    assert not failed, f"unreachable pairs: {failed}"
    assert all(r["answer"] == r["to"] for r in rows), "every probe is answered by the pod it was sent to"

    # every protocol the kernel has, across nodes (this CI kernel is built without SCTP)
    protocols = [("9090", "TCP"), ("5353", "UDP")] + ([("7777", "SCTP")] if SCTP else [])
    for port, protocol in protocols:
        result = lab("probe", "--from", "frontend/web-1", "--to", "backend/api-2", "--port", port, "--protocol", protocol)
        assert "answered by backend/api-2" in result.stdout
    if not SCTP:
        result = lab("probe", "--from", "frontend/web-1", "--to", "backend/api-2", "--port", "7777",
                     "--protocol", "SCTP", check=False)
        assert result.returncode == 1 and "unsupported" in result.stdout

    lab_id = status["lab"]
    assert lab_namespaces(lab_id)
    lab("down")
    assert lab_namespaces(lab_id) == []
    assert not Path(lab.state).exists()


def test_two_subnets_through_the_overlay(make_lab: Callable[..., LabHandle]) -> None:
    lab = make_lab(TWO_SUBNETS)
    rows = lab.matrix()
    assert all(r["ok"] for r in rows), [(r["from"], r["to"], r["error"]) for r in rows if not r["ok"]]
    udp = lab("probe", "--from", "default/a1", "--to", "default/b1", "--port", "53", "--protocol", "UDP")
    assert "answered by default/b1" in udp.stdout
    node_routes = lab("exec", "node-a1", "--", "ip", "route").stdout
    assert "kr-vxlan" in node_routes, "the node in the other subnet is reached over VXLAN"


def routes_of(lab: LabHandle, node: str) -> str:
    """kr's routes on a node, read with `ip -n` directly (the CLI's start-up would dominate the test)."""
    netns = next(n["netns"] for n in lab.status_cache()["nodes"] if n["name"] == node)
    return subprocess.run(["ip", "-n", netns, "route", "show", "proto", "107"], capture_output=True, text=True).stdout


def test_apply_barrier(make_lab: Callable[..., LabHandle], tmp_path: Path) -> None:
    """When `kr lab apply` returns, every node's datapath already has the change: no polling needed."""
    lab = make_lab()
    nodes = ("kube-node1", "kube-node2", "kube-node3")
    for round_ in range(3):
        new_node = tmp_path / f"node{round_}.yaml"
        new_node.write_text(textwrap.dedent(f"""\
            apiVersion: v1
            kind: Node
            metadata: {{name: extra-{round_}}}
            spec: {{podCIDR: 10.1.{50 + round_}.0/24, podCIDRs: [10.1.{50 + round_}.0/24]}}
            status: {{addresses: [{{type: InternalIP, address: 192.168.56.{50 + round_}}}]}}
            """))
        lab("apply", "-f", str(new_node))
        for node in nodes:  # checked at once, not eventually
            assert f"10.1.{50 + round_}.0/24 via 192.168.56.{50 + round_}" in routes_of(lab, node), (round_, node)
        lab("delete", "-f", str(new_node))
        for node in nodes:
            assert f"10.1.{50 + round_}.0/24" not in routes_of(lab, node), (round_, node)

    # a pod applied on one node is reachable from another as soon as apply returns
    pod = tmp_path / "pod.yaml"
    pod.write_text(textwrap.dedent("""\
        apiVersion: v1
        kind: Pod
        metadata: {namespace: backend, name: api-9, labels: {app: api}}
        spec:
          nodeName: kube-node3
          containers: [{name: api, ports: [{name: http, containerPort: 9090}]}]
        """))
    lab("apply", "-f", str(pod))
    assert "answered by backend/api-9" in lab("probe", "--from", "frontend/web-1", "--to", "backend/api-9", "--port", "9090").stdout
    lab("delete", "-f", str(pod))
    gone = lab("probe", "--from", "frontend/web-1", "--to", "10.1.3.4", "--port", "9090", "--timeout", "1", check=False)
    assert gone.returncode == 1


def test_negative_probes_and_agent_restarts(make_lab: Callable[..., LabHandle]) -> None:
    lab = make_lab()
    # a closed port is refused; a route removed by hand makes the other node's pods unreachable
    refused = lab("probe", "--from", "frontend/web-1", "--to", "backend/api-2", "--port", "9999", "--timeout", "1", check=False)
    assert refused.returncode == 1 and "refused" in refused.stdout
    lab("exec", "kube-node1", "--", "ip", "route", "del", "10.1.3.0/24")
    cut = lab("probe", "--from", "frontend/web-1", "--to", "backend/api-2", "--port", "9090", "--timeout", "1", check=False)
    assert cut.returncode == 1
    matrix = lab.matrix()
    assert not all(r["ok"] for r in matrix) and any(r["ok"] for r in matrix)
    lab("agent", "stop", "kube-node1")
    lab("agent", "start", "kube-node1")  # a restart's first sync is full: it re-reads and restores
    assert "10.1.3.0/24 via 192.168.56.13" in routes_of(lab, "kube-node1")

    # a stopped (or killed) agent leaves its routes: traffic keeps flowing while kr is down
    before = routes_of(lab, "kube-node2")
    for kill in (False, True):
        lab("agent", "stop", "kube-node2", *(["--kill"] if kill else []))
        assert "down" in lab("status").stdout
        assert routes_of(lab, "kube-node2") == before
        assert all(r["ok"] for r in lab.matrix())
        # while it is down, changes cannot reach its node: the barrier says so instead of returning
        stuck = lab("label", "pod", "backend/api-1", f"round={int(kill)}", "--timeout", "2", check=False, timeout=60)
        assert stuck.returncode == 1 and "kube-node2" in stuck.stderr
        lab("agent", "start", "kube-node2")
        assert routes_of(lab, "kube-node2") == before
    again = lab("agent", "start", "kube-node2", check=False)
    assert again.returncode == 1 and "already running" in again.stderr
    lab("label", "pod", "backend/api-1", "tier=silver")


def test_route_removed_by_hand_is_restored_by_resync(make_lab: Callable[..., LabHandle]) -> None:
    lab = make_lab(None, PLUGINS, "--sync-period=2")
    lab("exec", "kube-node1", "--", "ip", "route", "del", "10.1.3.0/24")
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if lab("probe", "--from", "frontend/web-1", "--to", "backend/api-2", "--port", "9090", "--timeout", "0.5", check=False).returncode == 0:
            break
    else:
        pytest.fail("the periodic full resync did not restore the removed route")


def test_two_labs_at_once_and_down_after_kill(make_lab: Callable[..., LabHandle]) -> None:
    first = make_lab()
    second = make_lab()
    first_id, second_id = first.status()["lab"], second.status()["lab"]
    assert first_id != second_id
    for lab in (first, second):
        assert all(r["ok"] for r in lab.matrix("--port", "8080")
                   if r["to"] in ("frontend/web-1", "frontend/web-2", "default/tools"))

    # kill -9 every process of the first lab (master, agents, pod servers), then take it down
    for netns in lab_namespaces(first_id):
        pids = subprocess.run(["ip", "netns", "pids", netns], capture_output=True, text=True).stdout.split()
        if pids:
            subprocess.run(["kill", "-9", *pids], check=False)
    first("down")
    assert lab_namespaces(first_id) == []
    assert all(r["ok"] for r in second.matrix("--port", "8080")
               if r["to"] in ("frontend/web-1", "frontend/web-2", "default/tools")), "the other lab still works"


def test_down_by_id_without_state(make_lab: Callable[..., LabHandle]) -> None:
    lab = make_lab()
    lab_id = lab.status()["lab"]
    assert lab_id in kr("lab", "list").stdout.split()
    kr("lab", "down", "--state", "/nonexistent-kr-lab", "--id", lab_id)
    assert lab_namespaces(lab_id) == []


def test_bad_spec_and_unknown_plugin_fail_plainly(tmp_path: Path) -> None:
    spec = tmp_path / "bad.yaml"
    spec.write_text("lans: [{name: lan, subnet: 10.0.0.0/24}]\nmaster: {name: m, ip: 10.0.1.5}\nnodes: []\n")
    result = kr("lab", "up", "--state", str(tmp_path / "x"), "--spec", str(spec), check=False)
    assert result.returncode == 1 and "master.ip" in result.stderr and "Traceback" not in result.stderr
    result = kr("lab", "up", "--state", str(tmp_path / "y"), "--plugins", "routing.nope", check=False)
    assert result.returncode == 1 and "unknown plugin routing.nope" in result.stderr
    assert not (tmp_path / "y" / "lab.json").exists()
