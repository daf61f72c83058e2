"""The spec documents of a running lab that a node joins or leaves (pure), and the switch port names that
let hosts join and leave: no node's pod CIDR ever moves, mistakes are refused with the field's path."""

from __future__ import annotations

from typing import Any

import pytest

from kr_lab import topology
from kr_lab.spec import (
    SpecError,
    load_spec_document,
    parse_spec,
    with_node,
    without_node,
)

ALLOCATED = {  # a clusterCIDR and nodes without podCIDRs: the lab allocates /24s in node order
    "clusterCIDR": "10.2.0.0/16", "lans": [{"name": "lan", "subnet": "192.168.57.0/24"}],
    "master": {"name": "m", "ip": "192.168.57.10"},
    "nodes": [{"name": "a", "ip": "192.168.57.11"}, {"name": "b", "ip": "192.168.57.12"}],
    "pods": [{"name": "p", "node": "a"}, {"name": "q", "node": "b"}],
}


def cidrs(document: dict[str, Any]) -> dict[str, str]:
    return {node.name: str(node.pod_cidr) for node in parse_spec(document).nodes}


def test_an_added_node_gets_the_next_free_cidr_and_the_others_keep_theirs() -> None:
    document, node = with_node(ALLOCATED, {"name": "c", "ip": "192.168.57.13", "labels": {"zone": "b"}})
    assert (node.name, str(node.pod_cidr), node.lan, dict(node.labels)) == ("c", "10.2.2.0/24", "lan", {"zone": "b"})
    assert cidrs(document) == {"a": "10.2.0.0/24", "b": "10.2.1.0/24", "c": "10.2.2.0/24"}
    assert all("podCIDR" in entry for entry in document["nodes"])  # pinned: nothing moves later
    assert "podCIDR" not in ALLOCATED["nodes"][0]  # the lab's document is not changed in place


def test_an_added_node_that_clashes_is_refused() -> None:
    default = load_spec_document(None)
    with pytest.raises(SpecError, match="appears twice"):
        with_node(default, {"name": "kube-node1", "ip": "192.168.56.14"})
    with pytest.raises(SpecError, match="appears twice"):
        with_node(default, {"name": "kube-node4", "ip": "192.168.56.13"})
    with pytest.raises(SpecError, match="overlap"):
        with_node(default, {"name": "kube-node4", "ip": "192.168.56.14", "podCIDR": "10.1.2.128/25"})
    with pytest.raises(SpecError, match=r"nodes\[2\].lan: no LAN named 'wan'"):
        with_node(ALLOCATED, {"name": "c", "ip": "192.168.57.13", "lan": "wan"})
    with pytest.raises(SpecError, match="not a host address"):
        with_node(default, {"name": "kube-node4", "ip": "192.168.57.14"})


def test_a_removed_node_takes_its_declared_pods_and_moves_no_other_cidr() -> None:
    document = without_node(ALLOCATED, "a")
    assert cidrs(document) == {"b": "10.2.1.0/24"}  # not 10.2.0.0/24, which allocation would give it afresh
    assert [pod["name"] for pod in document["pods"]] == ["q"]


def test_switch_ports_are_named_after_their_host() -> None:
    names = {topology.switch_port(f"node-{i}") for i in range(500)}
    assert len(names) == 500 and all(len(name) <= 15 and name.startswith("h") for name in names)
    assert topology.switch_port("kube-node1") == topology.switch_port("kube-node1")
