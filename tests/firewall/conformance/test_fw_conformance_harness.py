"""The conformance harness, proven without a firewall: the same topology with `routing.static` only.

With no firewall every pair must connect, which is exactly the oracle's answer for zero policies; and the
comparison must catch a wrong expectation, cell by cell. This runs whether or not a firewall backend is
installed, so the suite's machinery (spec, view, probes, diff) is known to work before it judges one.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from conformance_lab import NAMESPACES, NODES, POD_NAMES, SCTP, Cluster, compare, conformance_lab, netpol, node_of


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    with conformance_lab("routing.static", tmp_path_factory.mktemp("fw-harness")) as lab:
        yield lab


def test_topology_spreads_namespaces_over_nodes() -> None:
    per_node = {node: {ns for ns in NAMESPACES for pod in POD_NAMES if node_of(ns, pod) == node} for node in NODES}
    assert per_node == {node: set(NAMESPACES) for node in NODES}


def test_no_policy_everything_allowed(cluster: Cluster) -> None:
    status_pods = sorted(cluster.pods)
    assert status_pods == [f"{ns}/{pod}" for ns in NAMESPACES for pod in POD_NAMES]
    assert all(cluster.ip(key).startswith("10.1.") for key in status_pods)
    expected = cluster.expected_matrix([], 80, "TCP")
    assert len(expected) == 81 and all(expected.values())
    for port, protocol in ((80, "TCP"), (81, "UDP")) + (((80, "SCTP"),) if SCTP else ()):
        cluster.check_matrix([], port, protocol, "no policy, no firewall")


def test_comparison_catches_every_wrong_cell(cluster: Cluster) -> None:
    """Against deny-all ingress in x, the open lab differs in the 24 non-loopback cells into x."""
    deny_x = [netpol("x", "deny-all", {"podSelector": {}})]
    expected = cluster.expected_matrix(deny_x, 80, "TCP")
    observed = cluster.probe_matrix(80, "TCP")
    problems = compare(expected, observed)
    assert len(problems) == 24 and all("-> x/" in p and "expected blocked, got allowed" in p for p in problems)
    with pytest.raises(AssertionError, match="24 of 81 cells differ"):
        cluster.check_matrix(deny_x, 80, "TCP", "deliberately wrong")


def test_apply_delete_and_labels_round_trip(cluster: Cluster) -> None:
    """The suite's change paths work end to end (without a firewall, policies change no traffic)."""
    policy = [netpol("x", "deny-all", {"podSelector": {}})]
    cluster.apply(policy)
    cluster.delete(policy)
    cluster.label("pod", "x/a", "pod=b")
    cluster.label("namespace", "y", "ns=w")
    try:
        assert cluster.pods["x/a"]["metadata"]["labels"] == {"pod": "b"}
        assert cluster.namespaces["y"]["metadata"]["labels"]["ns"] == "w"
    finally:
        cluster.label("pod", "x/a", "pod=a")
        cluster.label("namespace", "y", "ns=y")
    cluster.check_matrix([], 80, "TCP", "after the round trip")
