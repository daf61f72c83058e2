"""NetworkPolicy conformance on real traffic: firewall.iptables in a lab, judged cell by cell by the oracle.

One lab (upstream's topology, see ``conformance_lab``) serves the whole module. Each case applies its
policies with `kr lab apply` (whose barrier returns once every node has synced them), probes the full
9x9 matrix on the ports and protocols it is about, compares every cell with ``oracle`` and then deletes
its policies and undoes its label changes, so the next case starts from an open cluster. A denied pair
may be refused or time out: both count as blocked.

The harness itself is proven without a firewall by ``test_fw_conformance_harness.py``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import pytest

from conformance_lab import SCTP, Cluster, conformance_lab, netpol


Policies = Sequence[Mapping[str, Any]] | Callable[[Cluster], Sequence[Mapping[str, Any]]]
TCP80, TCP81, UDP80, UDP81 = (80, "TCP"), (81, "TCP"), (80, "UDP"), (81, "UDP")


@dataclasses.dataclass(frozen=True)
class Step:
    """Make the policies in force exactly ``policies`` (None: unchanged), change labels, then probe."""

    probes: tuple[tuple[int, str], ...]
    policies: Policies | None = None
    labels: tuple[tuple[str, str, str], ...] = ()  # (pod|namespace, name, key=value or key-)


@dataclasses.dataclass(frozen=True)
class Case:
    name: str
    steps: tuple[Step, ...]


def case(name: str, policies: Policies, *probes: tuple[int, str]) -> Case:
    return Case(name, (Step(tuple(probes) or (TCP80,), policies),))


def labels(**match: str) -> dict[str, Any]:
    return {"matchLabels": dict(match)}


def expr(key: str, operator: str, *values: str) -> dict[str, Any]:
    return {"matchExpressions": [{"key": key, "operator": operator, **({"values": list(values)} if values else {})}]}


ALL_PODS: dict[str, Any] = {}
NS_Y, NS_Z = {"namespaceSelector": labels(ns="y")}, {"namespaceSelector": labels(ns="z")}


def ip_block_policies(cluster: Cluster) -> list[dict[str, Any]]:
    """Ingress to x/a from every pod but y/b and node 3's pod CIDR; egress of z only to node 1's pods but x/a."""
    return [
        netpol("x", "ipblock-ingress", {"podSelector": labels(pod="a"), "ingress": [{"from": [
            {"ipBlock": {"cidr": "10.1.0.0/16", "except": [f"{cluster.ip('y/b')}/32", "10.1.3.0/24"]}}]}]}),
        netpol("z", "ipblock-egress", {"podSelector": ALL_PODS, "policyTypes": ["Egress"], "egress": [{"to": [
            {"ipBlock": {"cidr": "10.1.1.0/24", "except": [f"{cluster.ip('x/a')}/32"]}}]}]}),
    ]


CASES: list[Case] = [
    case("deny-all-ingress-x", [netpol("x", "deny-all", {"podSelector": ALL_PODS})]),
    case("allow-all-ingress-x-with-deny-all", [
        netpol("x", "deny-all", {"podSelector": ALL_PODS}),
        netpol("x", "allow-all", {"podSelector": ALL_PODS, "ingress": [{}]})]),
    case("allow-same-namespace-x", [
        netpol("x", "same-ns", {"podSelector": ALL_PODS, "ingress": [{"from": [{"podSelector": ALL_PODS}]}]})]),
    case("pod-selector", [
        netpol("x", "a-from-b", {"podSelector": labels(pod="a"),
                                 "ingress": [{"from": [{"podSelector": labels(pod="b")}]}]})]),
    case("namespace-selector", [
        netpol("x", "a-from-y", {"podSelector": labels(pod="a"), "ingress": [{"from": [NS_Y]}]})]),
    case("pod-and-namespace-selector-one-peer-and", [
        netpol("x", "a-from-yz-c", {"podSelector": labels(pod="a"), "ingress": [{"from": [
            {"namespaceSelector": expr("ns", "In", "y", "z"), "podSelector": labels(pod="c")}]}]})]),
    case("pod-or-namespace-selector-two-peers", [
        netpol("x", "a-from-y-or-c", {"podSelector": labels(pod="a"), "ingress": [{"from": [
            NS_Y, {"podSelector": labels(pod="c")}]}]})]),
    case("match-expressions-in-notin", [
        netpol("x", "expr", {"podSelector": expr("pod", "In", "a", "b"), "ingress": [{"from": [
            {"namespaceSelector": expr("ns", "NotIn", "x"), "podSelector": expr("pod", "NotIn", "b")}]}]})]),
    # Exists/DoesNotExist on a label no pod has yet; the steps add it and the matrix must follow
    Case("match-expressions-exists-doesnotexist-follow-labels", (
        Step((TCP80,), [netpol("y", "tiered", {"podSelector": expr("tier", "DoesNotExist"), "ingress": [{"from": [
            {"namespaceSelector": ALL_PODS, "podSelector": expr("tier", "Exists")}]}]})]),
        Step((TCP80,), labels=(("pod", "x/b", "tier=gold"),)),
        Step((TCP80,), labels=(("pod", "y/a", "tier=gold"),)),
    )),
    case("ip-block-except-on-pod-ips", ip_block_policies),
    case("numeric-port-other-port-denied", [
        netpol("x", "port-80", {"podSelector": ALL_PODS, "ingress": [{"ports": [{"port": 80, "protocol": "TCP"}]}]})],
        TCP80, TCP81),
    case("named-port", [
        netpol("x", "named-81", {"podSelector": ALL_PODS, "ingress": [{"from": [NS_Y], "ports": [{"port": "serve-81-tcp"}]}]})],
        TCP80, TCP81),
    case("udp-named-port-and-protocol", [
        netpol("x", "udp-80", {"podSelector": ALL_PODS, "ingress": [{"ports": [{"port": "serve-80-udp", "protocol": "UDP"}]}]})],
        UDP80, UDP81, TCP80),
    case("end-port-range", [
        netpol("y", "range-80-81", {"podSelector": ALL_PODS, "ingress": [{"from": [{"namespaceSelector": labels(ns="x")}],
                                                                          "ports": [{"port": 80, "endPort": 81}]}]}),
        netpol("z", "range-75-80", {"podSelector": ALL_PODS, "ingress": [{"ports": [{"port": 75, "endPort": 80}]}]})],
        TCP80, TCP81),
    case("multiple-policies-union", [
        netpol("x", "all-from-y", {"podSelector": ALL_PODS, "ingress": [{"from": [NS_Y]}]}),
        netpol("x", "a-from-z-b", {"podSelector": labels(pod="a"), "ingress": [{"from": [
            {"namespaceSelector": labels(ns="z"), "podSelector": labels(pod="b")}]}]})]),
    case("egress-deny-all-x", [netpol("x", "deny-egress", {"podSelector": ALL_PODS, "policyTypes": ["Egress"]})]),
    case("egress-to-y-on-80", [
        netpol("x", "egress-y-80", {"podSelector": ALL_PODS, "policyTypes": ["Egress"], "egress": [
            {"to": [NS_Y], "ports": [{"port": 80}]}]})],
        TCP80, TCP81),
    case("ingress-and-egress-named-port", [
        netpol("y", "b-both", {"podSelector": labels(pod="b"), "policyTypes": ["Ingress", "Egress"],
                               "ingress": [{"from": [{"namespaceSelector": labels(ns="x")}]}],
                               "egress": [{"to": [NS_Z], "ports": [{"port": "serve-81-tcp"}]}]})],
        TCP80, TCP81),
    case("policy-types-defaulted-from-egress-rules", [
        netpol("z", "egress-only-rules", {"podSelector": labels(pod="a"), "egress": [{"to": [{"podSelector": ALL_PODS}]}]})]),
    Case("update-policy-in-place", (
        Step((TCP80,), [netpol("x", "changing", {"podSelector": ALL_PODS, "ingress": [{"from": [NS_Y]}]})]),
        Step((TCP80,), [netpol("x", "changing", {"podSelector": labels(pod="b"), "ingress": [{"from": [NS_Z]}]})]),
    )),
    Case("relabel-pod", (
        Step((TCP80,), [
            netpol("x", "deny-a", {"podSelector": labels(pod="a")}),
            netpol("y", "from-pods-b", {"podSelector": ALL_PODS, "ingress": [{"from": [
                {"namespaceSelector": ALL_PODS, "podSelector": labels(pod="b")}]}]})]),
        Step((TCP80,), labels=(("pod", "x/a", "pod=b"),)),
        Step((TCP80,), labels=(("pod", "x/a", "pod=a"),)),
    )),
    Case("relabel-namespace", (
        Step((TCP80,), [netpol("x", "from-ns-y", {"podSelector": ALL_PODS, "ingress": [{"from": [NS_Y]}]})]),
        Step((TCP80,), labels=(("namespace", "y", "ns=w"), ("namespace", "z", "ns=y"))),
        Step((TCP80,), labels=(("namespace", "y", "ns=y"), ("namespace", "z", "ns=z"))),
    )),
]
if SCTP:
    CASES.append(case("sctp-named-port", [
        netpol("x", "sctp-80", {"podSelector": ALL_PODS, "ingress": [{"ports": [{"port": "serve-80-sctp", "protocol": "SCTP"}]}]})],
        (80, "SCTP"), (81, "SCTP")))


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    with conformance_lab("routing.static,firewall.iptables", tmp_path_factory.mktemp("fw-conformance")) as lab:
        yield lab


def resolve(policies: Policies, cluster: Cluster) -> list[Mapping[str, Any]]:
    return list(policies(cluster) if callable(policies) else policies)


def names(policies: Sequence[Mapping[str, Any]]) -> set[tuple[str, str]]:
    return {(p["metadata"]["namespace"], p["metadata"]["name"]) for p in policies}


def label_of(cluster: Cluster, kind: str, name: str, key: str) -> str | None:
    view = cluster.pods[name] if kind == "pod" else cluster.namespaces[name]
    return view["metadata"]["labels"].get(key)


@pytest.mark.parametrize("conformance_case", CASES, ids=[c.name for c in CASES])
def test_fw_conformance(cluster: Cluster, conformance_case: Case) -> None:
    in_force: list[Mapping[str, Any]] = []
    original: dict[tuple[str, str, str], str | None] = {}  # (kind, name, key) -> the label before the case
    try:
        for number, step in enumerate(conformance_case.steps, 1):
            if step.policies is not None:
                wanted = resolve(step.policies, cluster)
                gone = [p for p in in_force if (p["metadata"]["namespace"], p["metadata"]["name"]) not in names(wanted)]
                if gone:
                    cluster.delete(gone)
                cluster.apply(wanted)  # existing names are updated in place
                in_force = wanted
            for kind, name, change in step.labels:
                key = change.split("=", 1)[0].rstrip("-")
                original.setdefault((kind, name, key), label_of(cluster, kind, name, key))
                cluster.label(kind, name, change)
            for port, protocol in step.probes:
                cluster.check_matrix(in_force, port, protocol, f"{conformance_case.name}, step {number}")
    finally:
        if in_force:
            cluster.delete(in_force)
        for (kind, name, key), value in original.items():
            if label_of(cluster, kind, name, key) != value:
                cluster.label(kind, name, f"{key}={value}" if value is not None else f"{key}-")
