"""Lab lifecycles: two labs at once, pods coming and going, teardown after kills, crashes and partial builds."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest
from conftest import LabFactory, fresh_lab_id

from kr_lab import netns, topology
from kr_lab.probe import probe
from kr_lab.spec import load_spec_document, parse_spec
from kr_lab.state import LabError


def lab_namespaces(lab_id: str) -> list[str]:
    return netns.list_namespaces(topology.lab_prefix(lab_id))


def test_two_labs_with_the_same_spec_do_not_clash(new_lab: LabFactory) -> None:
    first, second = new_lab(), new_lab()
    for lab in (first, second):
        result = probe(lab.pod_ns("default/tools"), lab.ip("frontend/web-1"), 8080, "TCP", 1)
        assert result.answer == "frontend/web-1"
    topology.teardown(first.id)
    assert lab_namespaces(first.id) == [] and first.id not in topology.list_labs()
    assert len(lab_namespaces(second.id)) == 12
    result = probe(second.pod_ns("backend/db-1"), second.ip("backend/api-2"), 5353, "UDP", 1)
    assert result.answer == "backend/api-2"


def test_an_existing_lab_id_is_refused(new_lab: LabFactory) -> None:
    lab = new_lab(pods=False)
    with pytest.raises(topology.LabExistsError):
        topology.build_network(lab.id, lab.spec)
    assert probe(lab.host_ns("client"), "192.168.56.10", 1, "TCP", 3).error == "refused"  # 3 s: a loaded runner


def test_remove_pod_takes_its_namespace_and_bridge_port(new_lab: LabFactory) -> None:
    lab = new_lab()
    topology.remove_pod(lab.id, "frontend", "web-1")
    assert lab.pod_ns("frontend/web-1") not in lab_namespaces(lab.id)
    ports = json.loads(netns.ip("-j", "link", "show", "master", "kube-bridge", netns=lab.host_ns("kube-node1")))
    assert [p["ifname"] for p in ports] == [topology.pod_veth("default", "tools")]
    assert not probe(lab.pod_ns("default/tools"), lab.ip("frontend/web-1"), 8080, "TCP", 0.5).ok
    assert probe(lab.pod_ns("backend/db-1"), lab.ip("backend/api-2"), 9090, "TCP", 1).ok
    pod = lab.spec.pods[0]
    topology.add_pod(lab.id, lab.spec, pod, lab.pod_ips[pod.key], lab.log(pod.key))  # again, at once
    assert probe(lab.pod_ns("default/tools"), lab.ip("frontend/web-1"), 8080, "TCP", 1).answer == "frontend/web-1"


def test_a_failed_add_pod_leaves_no_pod_behind(new_lab: LabFactory, tmp_path: Path) -> None:
    lab = new_lab(pods=False)
    pod = lab.spec.pods[0]
    with pytest.raises(OSError):
        topology.add_pod(lab.id, lab.spec, pod, lab.pod_ips[pod.key], tmp_path / "missing-dir" / "pod.log")
    assert lab.pod_ns(pod.key) not in lab_namespaces(lab.id)
    with pytest.raises(LabError, match="is not a pod address"):
        topology.add_pod(lab.id, lab.spec, pod, lab.spec.host(pod.node).pod_cidr.network_address + 1, tmp_path / "x.log")


def test_teardown_after_the_servers_were_killed(new_lab: LabFactory) -> None:
    lab = new_lab()
    names = lab_namespaces(lab.id)
    servers = [pid for found in netns.pids(names).values() for pid in found]
    assert len(servers) == len(lab.spec.pods)
    for pid in servers:
        os.kill(pid, signal.SIGKILL)
    assert sorted(topology.teardown(lab.id)) == sorted(names)
    assert lab_namespaces(lab.id) == [] and lab.id not in topology.list_labs()


def test_teardown_kills_what_runs_in_the_lab(new_lab: LabFactory) -> None:
    lab = new_lab()
    servers = [pid for found in netns.pids(lab_namespaces(lab.id)).values() for pid in found]
    topology.teardown(lab.id)
    for pid in servers:  # gone, or a zombie awaiting this process's wait()
        try:
            with open(f"/proc/{pid}/stat") as f:
                assert f.read().split(") ")[1].startswith("Z")
        except FileNotFoundError:
            pass


def test_teardown_after_a_partial_build(monkeypatch: pytest.MonkeyPatch) -> None:
    lab_id, spec = fresh_lab_id(), parse_spec(load_spec_document(None))
    real_add_veth, calls = netns.add_veth, []

    def failing_add_veth(*args: object, **kwargs: object) -> None:
        calls.append(args)
        if len(calls) == 3:
            raise netns.IPError("injected")
        real_add_veth(*args, **kwargs)

    monkeypatch.setattr(netns, "add_veth", failing_add_veth)
    try:
        with pytest.raises(netns.IPError, match="injected"):
            topology.build_network(lab_id, spec)
        assert lab_id in topology.list_labs()
    finally:
        removed = topology.teardown(lab_id)
    assert topology.switch_ns(lab_id) in removed and lab_namespaces(lab_id) == []


def test_list_labs_and_teardown_work_from_names_alone() -> None:
    lab_id = fresh_lab_id()
    prefix = topology.lab_prefix(lab_id)
    try:
        netns.ip("netns", "add", f"{prefix}h-orphan")  # a namespace without /etc/netns
        os.makedirs(f"/etc/netns/{prefix}p-default-ghost")  # an /etc/netns leftover without a namespace
        assert lab_id in topology.list_labs()
    finally:
        removed = topology.teardown(lab_id)
    assert removed == [f"{prefix}h-orphan", f"{prefix}p-default-ghost"]
    assert lab_namespaces(lab_id) == [] and lab_id not in topology.list_labs()

