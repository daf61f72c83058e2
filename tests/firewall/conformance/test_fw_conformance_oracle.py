"""The oracle's own tests: hand-checked answers for every NetworkPolicy rule the suite relies on.

The cluster here is the conformance topology on paper (x, y, z with pods a, b, c; pod IPs 10.0.<ns>.<pod>),
plus a pod ``w/odd`` whose port names map to other numbers, for per-pod named-port resolution.
"""

from __future__ import annotations

from typing import Any

import pytest

from oracle import allowed, matrix, peer_matches, policy_types, port_matches, selector_matches

NS_INDEX = {"x": 1, "y": 2, "z": 3, "w": 4}


def pod(ns: str, name: str, labels: dict[str, str] | None = None, ports: list[tuple[str, int, str]] | None = None,
        ip: str | None = None) -> dict[str, Any]:
    ports = ports if ports is not None else [
        (f"serve-{n}-{p.lower()}", n, p) for n in (80, 81) for p in ("TCP", "UDP", "SCTP")]
    return {"metadata": {"namespace": ns, "name": name, "labels": labels if labels is not None else {"pod": name}},
            "spec": {"containers": [{"name": "c", "ports": [
                {"name": pn, "containerPort": number, "protocol": proto} for pn, number, proto in ports]}]},
            "status": {"podIP": ip or f"10.0.{NS_INDEX[ns]}.{'abc'.index(name) + 1}"}}


def namespace(name: str, labels: dict[str, str] | None = None) -> dict[str, Any]:
    return {"metadata": {"name": name, "labels": labels if labels is not None else
                         {"kubernetes.io/metadata.name": name, "ns": name}}}


PODS = [pod(ns, p) for ns in "xyz" for p in "abc"]
NAMESPACES = [namespace(ns) for ns in "xyz"]
ALL = {(f"{s}", f"{d}") for s in (f"{n}/{p}" for n in "xyz" for p in "abc") for d in (f"{n}/{p}" for n in "xyz" for p in "abc")}


def netpol(ns: str, spec: dict[str, Any], name: str = "p") -> dict[str, Any]:
    return {"metadata": {"namespace": ns, "name": name}, "spec": spec}


def allowed_pairs(policies: list[dict[str, Any]], port: int = 80, protocol: str = "TCP",
                  pods: list[dict[str, Any]] = PODS, namespaces: list[dict[str, Any]] = NAMESPACES) -> set[tuple[str, str]]:
    return {pair for pair, ok in matrix(policies, pods, namespaces, port, protocol).items() if ok}


def into(targets: str, sources: str = "x/a x/b x/c y/a y/b y/c z/a z/b z/c") -> set[tuple[str, str]]:
    return {(s, t) for s in sources.split() for t in targets.split()}


def out_of(sources: str, targets: str = "x/a x/b x/c y/a y/b y/c z/a z/b z/c") -> set[tuple[str, str]]:
    return {(s, t) for s in sources.split() for t in targets.split()}


# --- selectors

@pytest.mark.parametrize("selector, labels, want", [
    ({}, {}, True),
    (None, {"a": "1"}, True),
    ({"matchLabels": {"a": "1"}}, {"a": "1", "b": "2"}, True),
    ({"matchLabels": {"a": "1"}}, {"a": "2"}, False),
    ({"matchLabels": {"a": "1", "b": "2"}}, {"a": "1"}, False),
    ({"matchExpressions": [{"key": "a", "operator": "In", "values": ["1", "2"]}]}, {"a": "2"}, True),
    ({"matchExpressions": [{"key": "a", "operator": "In", "values": ["1", "2"]}]}, {"a": "3"}, False),
    ({"matchExpressions": [{"key": "a", "operator": "In", "values": ["1"]}]}, {}, False),
    ({"matchExpressions": [{"key": "a", "operator": "NotIn", "values": ["1"]}]}, {"a": "2"}, True),
    ({"matchExpressions": [{"key": "a", "operator": "NotIn", "values": ["1"]}]}, {"a": "1"}, False),
    ({"matchExpressions": [{"key": "a", "operator": "NotIn", "values": ["1"]}]}, {}, True),  # absent key: not in
    ({"matchExpressions": [{"key": "a", "operator": "Exists"}]}, {"a": ""}, True),
    ({"matchExpressions": [{"key": "a", "operator": "Exists"}]}, {"b": "1"}, False),
    ({"matchExpressions": [{"key": "a", "operator": "DoesNotExist"}]}, {"b": "1"}, True),
    ({"matchExpressions": [{"key": "a", "operator": "DoesNotExist"}]}, {"a": "1"}, False),
    ({"matchLabels": {"b": "2"}, "matchExpressions": [{"key": "a", "operator": "Exists"}]}, {"a": "1"}, False),
    ({"matchLabels": {"b": "2"}, "matchExpressions": [{"key": "a", "operator": "Exists"}]}, {"a": "1", "b": "2"}, True),
])
def test_selector_matches(selector: dict[str, Any] | None, labels: dict[str, str], want: bool) -> None:
    assert selector_matches(selector, labels) is want


def test_unknown_operator_is_an_error() -> None:
    with pytest.raises(ValueError, match="Gt"):
        selector_matches({"matchExpressions": [{"key": "a", "operator": "Gt", "values": ["1"]}]}, {"a": "2"})


# --- policyTypes defaulting

@pytest.mark.parametrize("spec, want", [
    ({"podSelector": {}}, ("Ingress",)),
    ({"podSelector": {}, "ingress": [{}]}, ("Ingress",)),
    ({"podSelector": {}, "egress": [{}]}, ("Ingress", "Egress")),
    ({"podSelector": {}, "egress": []}, ("Ingress",)),  # an empty egress list is no egress rule
    ({"podSelector": {}, "policyTypes": []}, ("Ingress",)),
    ({"podSelector": {}, "policyTypes": ["Egress"]}, ("Egress",)),
    ({"podSelector": {}, "policyTypes": ["Egress"], "ingress": [{}]}, ("Egress",)),
])
def test_policy_types(spec: dict[str, Any], want: tuple[str, ...]) -> None:
    assert policy_types(netpol("x", spec)) == want


# --- whole-matrix answers, checked by hand

def test_no_policy_everything_allowed() -> None:
    assert allowed_pairs([]) == ALL


def test_deny_all_ingress_in_x() -> None:
    assert allowed_pairs([netpol("x", {"podSelector": {}})]) == ALL - into("x/a x/b x/c")


def test_empty_ingress_list_denies_like_no_rules() -> None:
    assert allowed_pairs([netpol("x", {"podSelector": {}, "ingress": [], "policyTypes": ["Ingress"]})]) \
        == ALL - into("x/a x/b x/c")


def test_allow_all_ingress_rule_and_union_with_deny_all() -> None:
    allow_all = netpol("x", {"podSelector": {}, "ingress": [{}]}, "allow")
    assert allowed_pairs([allow_all]) == ALL
    assert allowed_pairs([netpol("x", {"podSelector": {}}, "deny"), allow_all]) == ALL
    # an empty from list is every peer too
    assert allowed_pairs([netpol("x", {"podSelector": {}, "ingress": [{"from": []}]})]) == ALL


def test_policy_applies_only_in_its_namespace() -> None:
    """A podSelector {pod: a} in y selects y/a only, not x/a or z/a."""
    assert allowed_pairs([netpol("y", {"podSelector": {"matchLabels": {"pod": "a"}}})]) == ALL - into("y/a")


def test_pod_selector_peer_is_in_the_policy_namespace() -> None:
    policy = netpol("x", {"podSelector": {"matchLabels": {"pod": "a"}},
                          "ingress": [{"from": [{"podSelector": {"matchLabels": {"pod": "b"}}}]}]})
    assert allowed_pairs([policy]) == ALL - into("x/a") | {("x/b", "x/a")}


def test_same_namespace_only() -> None:
    policy = netpol("x", {"podSelector": {}, "ingress": [{"from": [{"podSelector": {}}]}]})
    assert allowed_pairs([policy]) == ALL - into("x/a x/b x/c") | into("x/a x/b x/c", "x/a x/b x/c")


def test_namespace_selector_peer() -> None:
    policy = netpol("x", {"podSelector": {"matchLabels": {"pod": "a"}},
                          "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"ns": "y"}}}]}]})
    assert allowed_pairs([policy]) == ALL - into("x/a") | into("x/a", "y/a y/b y/c")
    everyone = netpol("x", {"podSelector": {}, "ingress": [{"from": [{"namespaceSelector": {}}]}]})
    assert allowed_pairs([everyone]) == ALL


def test_pod_and_namespace_selector_in_one_peer_is_and() -> None:
    policy = netpol("x", {"podSelector": {"matchLabels": {"pod": "a"}}, "ingress": [{"from": [
        {"namespaceSelector": {"matchLabels": {"ns": "y"}}, "podSelector": {"matchLabels": {"pod": "c"}}}]}]})
    assert allowed_pairs([policy]) == ALL - into("x/a") | {("y/c", "x/a")}


def test_pod_and_namespace_selector_in_two_peers_is_or() -> None:
    policy = netpol("x", {"podSelector": {"matchLabels": {"pod": "a"}}, "ingress": [{"from": [
        {"namespaceSelector": {"matchLabels": {"ns": "y"}}}, {"podSelector": {"matchLabels": {"pod": "c"}}}]}]})
    assert allowed_pairs([policy]) == ALL - into("x/a") | into("x/a", "y/a y/b y/c x/c")


def test_match_expressions_in_both_selectors() -> None:
    policy = netpol("x", {
        "podSelector": {"matchExpressions": [{"key": "pod", "operator": "In", "values": ["a", "b"]}]},
        "ingress": [{"from": [{
            "namespaceSelector": {"matchExpressions": [{"key": "ns", "operator": "NotIn", "values": ["x"]}]},
            "podSelector": {"matchExpressions": [{"key": "pod", "operator": "In", "values": ["a", "c"]}]}}]}]})
    assert allowed_pairs([policy]) == ALL - into("x/a x/b") | into("x/a x/b", "y/a y/c z/a z/c")


def test_exists_and_does_not_exist_follow_labels() -> None:
    policy = netpol("y", {
        "podSelector": {"matchExpressions": [{"key": "tier", "operator": "DoesNotExist"}]},
        "ingress": [{"from": [{"namespaceSelector": {},
                               "podSelector": {"matchExpressions": [{"key": "tier", "operator": "Exists"}]}}]}]})
    assert allowed_pairs([policy]) == ALL - into("y/a y/b y/c")
    pods = [pod("x", "b", {"pod": "b", "tier": "gold"}) if (p["metadata"]["namespace"], p["metadata"]["name"]) == ("x", "b")
            else pod("y", "a", {"pod": "a", "tier": "gold"}) if (p["metadata"]["namespace"], p["metadata"]["name"]) == ("y", "a")
            else p for p in PODS]
    # y/a now has a tier: no longer selected, so open; x/b and y/a have a tier: they reach y/b and y/c
    assert allowed_pairs([policy], pods=pods) == ALL - into("y/b y/c") | into("y/b y/c", "x/b y/a")


def test_namespace_labels_are_read_from_the_namespace_objects() -> None:
    policy = netpol("x", {"podSelector": {}, "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"ns": "y"}}}]}]})
    relabelled = [namespace("x"), namespace("y", {"ns": "w"}), namespace("z", {"ns": "y"})]
    assert allowed_pairs([policy], namespaces=relabelled) == ALL - into("x/a x/b x/c") | into("x/a x/b x/c", "z/a z/b z/c")
    # a namespace without labels (or unknown) matches only an empty namespaceSelector
    assert allowed_pairs([policy], namespaces=[]) == ALL - into("x/a x/b x/c")


def test_ip_block_with_except_applies_to_pod_ips() -> None:
    policy = netpol("x", {"podSelector": {"matchLabels": {"pod": "a"}}, "ingress": [{"from": [
        {"ipBlock": {"cidr": "10.0.0.0/16", "except": ["10.0.2.2/32", "10.0.3.0/24"]}}]}]})
    # y/b is 10.0.2.2 and z/* are 10.0.3.*: excepted
    assert allowed_pairs([policy]) == ALL - into("x/a") | into("x/a", "x/a x/b x/c y/a y/c")
    outside = netpol("x", {"podSelector": {}, "ingress": [{"from": [{"ipBlock": {"cidr": "192.168.0.0/16"}}]}]})
    assert allowed_pairs([outside]) == ALL - into("x/a x/b x/c")


def test_ip_block_egress() -> None:
    policy = netpol("z", {"podSelector": {}, "policyTypes": ["Egress"], "egress": [{"to": [
        {"ipBlock": {"cidr": "10.0.1.0/24", "except": ["10.0.1.3/32"]}}]}]})
    assert allowed_pairs([policy]) == ALL - out_of("z/a z/b z/c") | out_of("z/a z/b z/c", "x/a x/b")


def test_empty_peer_is_an_error() -> None:
    with pytest.raises(ValueError, match="NetworkPolicyPeer"):
        peer_matches({}, "x", PODS[0], {})


# --- ports

def test_numeric_port_and_protocol() -> None:
    policy = netpol("x", {"podSelector": {}, "ingress": [{"ports": [{"port": 80}]}]})  # protocol defaults to TCP
    assert allowed_pairs([policy], 80, "TCP") == ALL
    assert allowed_pairs([policy], 81, "TCP") == ALL - into("x/a x/b x/c")
    assert allowed_pairs([policy], 80, "UDP") == ALL - into("x/a x/b x/c")
    udp = netpol("x", {"podSelector": {}, "ingress": [{"ports": [{"protocol": "UDP"}]}]})  # every UDP port
    assert allowed_pairs([udp], 81, "UDP") == ALL
    assert allowed_pairs([udp], 81, "TCP") == ALL - into("x/a x/b x/c")


def test_end_port_range() -> None:
    policy = netpol("x", {"podSelector": {}, "ingress": [{"ports": [{"port": 80, "endPort": 81}]}]})
    assert allowed_pairs([policy], 80) == allowed_pairs([policy], 81) == ALL
    assert allowed_pairs([policy], 82) == ALL - into("x/a x/b x/c")
    assert not port_matches({"port": 75, "endPort": 80}, PODS[0], 81, "TCP")
    assert port_matches({"port": 75, "endPort": 80}, PODS[0], 75, "TCP")


def test_named_port_per_destination_pod() -> None:
    odd = pod("w", "a", {"pod": "a"}, [("serve-80-tcp", 8080, "TCP"), ("serve-80-udp", 80, "TCP")], ip="10.0.4.1")
    pods, namespaces = [*PODS, odd], [*NAMESPACES, namespace("w")]
    ingress = [netpol(ns, {"podSelector": {}, "ingress": [{"ports": [{"port": "serve-80-tcp"}]}]}) for ns in ("x", "w")]
    assert allowed(ingress, pods, namespaces, "y/a", "x/a", 80, "TCP")
    assert not allowed(ingress, pods, namespaces, "y/a", "x/a", 81, "TCP")
    assert not allowed(ingress, pods, namespaces, "y/a", "w/a", 80, "TCP")  # w/a's serve-80-tcp is 8080
    assert allowed(ingress, pods, namespaces, "y/a", "w/a", 8080, "TCP")
    # a name matches only with its protocol: w/a's "serve-80-udp" is a TCP port, so a UDP rule misses it
    udp_name = [netpol("w", {"podSelector": {}, "ingress": [{"ports": [{"port": "serve-80-udp", "protocol": "UDP"}]}]})]
    assert not allowed(udp_name, pods, namespaces, "y/a", "w/a", 80, "UDP")
    assert not allowed(udp_name, pods, namespaces, "y/a", "w/a", 80, "TCP")
    assert allowed([netpol("w", {"podSelector": {}, "ingress": [{"ports": [{"port": "serve-80-udp"}]}]})],
                   pods, namespaces, "y/a", "w/a", 80, "TCP")


def test_named_port_in_egress_resolves_against_the_destination() -> None:
    odd = pod("w", "a", {"pod": "a"}, [("serve-81-tcp", 8081, "TCP")], ip="10.0.4.1")
    pods, namespaces = [*PODS, odd], [*NAMESPACES, namespace("w")]
    egress = [netpol("x", {"podSelector": {}, "policyTypes": ["Egress"], "egress": [{"ports": [{"port": "serve-81-tcp"}]}]})]
    assert allowed(egress, pods, namespaces, "x/a", "y/b", 81, "TCP")
    assert not allowed(egress, pods, namespaces, "x/a", "y/b", 80, "TCP")
    assert not allowed(egress, pods, namespaces, "x/a", "w/a", 81, "TCP")
    assert allowed(egress, pods, namespaces, "x/a", "w/a", 8081, "TCP")


def test_named_port_with_end_port_is_an_error() -> None:
    with pytest.raises(ValueError, match="endPort"):
        port_matches({"port": "serve-80-tcp", "endPort": 81}, PODS[0], 80, "TCP")


def test_rule_needs_peer_and_port_together() -> None:
    policy = netpol("x", {"podSelector": {}, "ingress": [
        {"from": [{"namespaceSelector": {"matchLabels": {"ns": "y"}}}], "ports": [{"port": 80}]},
        {"from": [{"namespaceSelector": {"matchLabels": {"ns": "z"}}}], "ports": [{"port": 81}]}]})
    assert allowed_pairs([policy], 80) == ALL - into("x/a x/b x/c") | into("x/a x/b x/c", "y/a y/b y/c")
    assert allowed_pairs([policy], 81) == ALL - into("x/a x/b x/c") | into("x/a x/b x/c", "z/a z/b z/c")


# --- egress and both directions

def test_egress_deny_all() -> None:
    policy = netpol("x", {"podSelector": {}, "policyTypes": ["Egress"]})
    assert allowed_pairs([policy]) == ALL - out_of("x/a x/b x/c")


def test_egress_to_one_namespace_on_one_port() -> None:
    policy = netpol("x", {"podSelector": {}, "policyTypes": ["Egress"], "egress": [
        {"to": [{"namespaceSelector": {"matchLabels": {"ns": "y"}}}], "ports": [{"port": 80}]}]})
    assert allowed_pairs([policy], 80) == ALL - out_of("x/a x/b x/c") | out_of("x/a x/b x/c", "y/a y/b y/c")
    assert allowed_pairs([policy], 81) == ALL - out_of("x/a x/b x/c")


def test_egress_rules_imply_egress_type_and_deny_ingress() -> None:
    """No policyTypes and egress rules: the policy is Ingress (no rules: deny) and Egress (to z only).

    So z's pods reach nothing at all: z -> z passes z's egress but not z's ingress.
    """
    policy = netpol("z", {"podSelector": {}, "egress": [{"to": [{"podSelector": {}}]}]})
    assert allowed_pairs([policy]) == ALL - into("z/a z/b z/c") - out_of("z/a z/b z/c")
    with_ingress = netpol("z", {"podSelector": {}, "ingress": [{"from": [{"podSelector": {}}]}],
                                "egress": [{"to": [{"podSelector": {}}]}]})
    assert allowed_pairs([with_ingress]) == (ALL - into("z/a z/b z/c") - out_of("z/a z/b z/c")) \
        | into("z/a z/b z/c", "z/a z/b z/c")


def test_connection_needs_source_egress_and_destination_ingress() -> None:
    egress_x_to_y = netpol("x", {"podSelector": {}, "policyTypes": ["Egress"],
                                 "egress": [{"to": [{"namespaceSelector": {"matchLabels": {"ns": "y"}}}]}]}, "e")
    ingress_y_from_z = netpol("y", {"podSelector": {}, "ingress": [
        {"from": [{"namespaceSelector": {"matchLabels": {"ns": "z"}}}]}]}, "i")
    pairs = allowed_pairs([egress_x_to_y, ingress_y_from_z])
    assert ("x/a", "y/a") not in pairs  # x's egress allows it, y's ingress does not
    assert ("z/a", "y/a") in pairs and ("x/a", "z/a") not in pairs and ("y/a", "x/a") in pairs
    assert pairs == (ALL - out_of("x/a x/b x/c") - into("y/a y/b y/c")) | into("y/a y/b y/c", "z/a z/b z/c")


def test_selected_pods_only_loopback_is_computed_not_assumed() -> None:
    """The oracle does not special-case a pod talking to itself; the suite does (upstream's AllowLoopback)."""
    assert not allowed([netpol("x", {"podSelector": {}})], PODS, NAMESPACES, "x/a", "x/a", 80, "TCP")
