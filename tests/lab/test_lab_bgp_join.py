"""Nodes joining and leaving a running lab with ``routing.bgp`` on every node (no static routes).

- a fourth node added while the lab runs (``kr lab node add``) joins the iBGP mesh: every node, old and
  new, has its sessions Established and every other node's pod CIDR routed; a pod put on it reaches the
  pods of the other nodes and is reached by them; nothing that ran before was restarted;
- a node removed from the running lab (``kr lab node remove``) leaves every session and routing table,
  its namespaces go, and the other pods still reach each other;
- ``kr lab down`` removes a node added to the running lab, its pod and its BIRD like the rest.

Each lab has a random id and is taken down also when a test fails; nothing outside its namespaces changes.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from bgplab import KR, PLUGINS, BgpLab, wait_for

from kr_lab import netns, topology
from kr_lab.lab import Lab
from kr_lab.state import StateDir

NODES = ("kube-node1", "kube-node2", "kube-node3")


@contextmanager
def running_lab(state: Path) -> Iterator[Path]:
    try:
        up = subprocess.run([KR, "lab", "up", "--state", str(state), "--plugins", PLUGINS],
                            capture_output=True, text=True, timeout=120, check=False)
        assert up.returncode == 0, f"kr lab up failed:\n{up.stdout}\n{up.stderr}"
        yield state
    finally:
        subprocess.run([KR, "lab", "down", "--state", str(state)], capture_output=True, text=True, timeout=60,
                       check=False)


@pytest.fixture(scope="module")
def state(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    with running_lab(tmp_path_factory.mktemp("bgp-join") / "lab") as path:
        yield path


def kr_lab(state: Path, *args: str) -> str:
    done = subprocess.run([KR, "lab", *args, "--state", str(state)], capture_output=True, text=True, timeout=120,
                          check=False)
    assert done.returncode == 0, f"kr lab {' '.join(args)}: {done.stdout}\n{done.stderr}"
    return done.stdout


def mesh_is_whole(lab: BgpLab) -> bool:
    """Every node has a session Established with every other one and routes every other node's pod CIDR."""
    cidrs = {host.name: str(host.pod_cidr) for host in lab.lab.spec.nodes}
    return all(lab.established(node) == len(cidrs) - 1
               and lab.bgp_routes(node) == {cidr for name, cidr in cidrs.items() if name != node}
               for node in cidrs)


def pod_on(node: str, name: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"namespace": "backend", "name": name, "labels": {"app": "api"}},
            "spec": {"nodeName": node, "containers": [{"name": "api", "ports": [
                {"name": "http", "containerPort": 9090, "protocol": "TCP"}]}]}}


def processes(lab: Lab, nodes: tuple[str, ...]) -> set[int]:
    """The processes running in the nodes' namespaces (the agents, their BIRDs)."""
    return {pid for pids in netns.pids(lab.netns_of(node) for node in nodes).values() for pid in pids}


def test_a_node_added_while_the_lab_runs_joins_the_mesh_and_its_pod_reaches_every_pod(state: Path) -> None:
    lab = BgpLab(state)
    assert wait_for(lambda: mesh_is_whole(lab))
    before = processes(lab.lab, NODES)

    out = kr_lab(state, "node", "add", "kube-node4", "--ip", "192.168.56.14", "--pod-cidr", "10.1.4.0/24")
    assert "10.1.4.0/24" in out
    lab = BgpLab(state)
    lab.lab.apply([pod_on("kube-node4", "api-4")])

    assert wait_for(lambda: mesh_is_whole(lab)), {n.name: (lab.established(n.name), lab.bgp_routes(n.name))
                                                  for n in lab.lab.spec.nodes}
    assert lab.established("kube-node4") == 3 and lab.bgp_routes("kube-node1") >= {"10.1.4.0/24"}
    assert "backend/api-4" in lab.lab.state.pods and lab.lab.state.pods["backend/api-4"].ip.startswith("10.1.4.")
    assert lab.unreachable_pairs() == []
    assert len(before) >= 2 * len(NODES) and before <= processes(lab.lab, NODES), "nothing that ran was restarted"
    assert [n["agent"] for n in lab.lab.status()["nodes"]] == ["healthy"] * 4


def test_a_node_removed_from_the_running_lab_leaves_every_session_and_table(state: Path) -> None:
    lab = BgpLab(state)
    host = lab.lab.add_node("kube-node5", "192.168.56.15")  # pod CIDR allocated from the clusterCIDR
    lab.lab.apply([pod_on("kube-node5", "api-5")])
    assert wait_for(lambda: mesh_is_whole(lab))
    assert str(host.pod_cidr) in lab.bgp_routes("kube-node1")
    gone = [lab.lab.netns_of("kube-node5"), lab.lab.netns_of("backend/api-5")]

    kr_lab(state, "node", "remove", "kube-node5")
    lab = BgpLab(state)
    assert "kube-node5" not in lab.lab.state.hosts and "backend/api-5" not in lab.lab.state.pods
    assert not set(gone) & set(netns.list_namespaces(topology.lab_prefix(lab.lab.state.lab_id)))
    assert not (lab.lab.dir.bgp_run_dir / "kube-node5").exists()
    assert wait_for(lambda: mesh_is_whole(lab))
    assert all(str(host.pod_cidr) not in lab.bgp_routes(node.name) for node in lab.lab.spec.nodes)
    assert lab.unreachable_pairs() == []


def test_lab_down_removes_an_added_node_its_pod_and_its_bird(tmp_path: Path) -> None:
    with running_lab(tmp_path / "lab") as path:
        lab = Lab(StateDir(path))
        lab.add_node("kube-node4", "192.168.56.14", "10.1.4.0/24")
        lab.apply([pod_on("kube-node4", "api-4")])
        lab_id = lab.state.lab_id
        assert (lab.dir.bgp_run_dir / "kube-node4" / "bird.pid").exists()
        kr_lab(path, "down")
    assert netns.list_namespaces(topology.lab_prefix(lab_id)) == []
    assert subprocess.run(["pgrep", "-f", str(path)], capture_output=True, check=False).returncode == 1, "a process of the lab is left"
    assert not path.exists()
