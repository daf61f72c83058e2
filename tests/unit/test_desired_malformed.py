"""Malformed objects: each is skipped with exactly one warning naming it, and the rest is still built.

Every case adds one bad object to a snapshot of well-formed objects of every kind, then checks the
single warning (kind, key, reason) and that every well-formed object made it into the state.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from kr_core.desired import build_desired_state
from kr_core.model import DesiredState

NODE = "node-a"


def good_snapshot() -> dict[str, dict[str, dict[str, Any]]]:
    return {
        "nodes": {NODE: {
            "metadata": {"name": NODE},
            "spec": {"podCIDR": "10.244.1.0/24"},
            "status": {"addresses": [{"type": "InternalIP", "address": "10.0.0.1"}]},
        }},
        "services": {"default/good": {
            "metadata": {"name": "good", "namespace": "default"},
            "spec": {"clusterIP": "10.96.0.1", "ports": [{"name": "http", "port": 80, "targetPort": 8080}]},
        }},
        "endpointslices": {"default/good-1": {
            "metadata": {"name": "good-1", "namespace": "default", "labels": {"kubernetes.io/service-name": "good"}},
            "addressType": "IPv4",
            "ports": [{"name": "http", "protocol": "TCP", "port": 8080}],
            "endpoints": [{"addresses": ["10.244.1.5"], "nodeName": NODE}],
        }},
        "pods": {"default/good": {
            "metadata": {"name": "good", "namespace": "default", "labels": {"app": "good"}},
            "spec": {"containers": [{"name": "c", "ports": [{"name": "http", "containerPort": 8080}]}]},
            "status": {"phase": "Running", "podIP": "10.244.1.5"},
        }},
        "namespaces": {"default": {"metadata": {"name": "default", "labels": {"team": "a"}}}},
        "networkpolicies": {"default/good": {
            "metadata": {"name": "good", "namespace": "default"},
            "spec": {"podSelector": {}, "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "x"}}}]}]},
        }},
    }


def assert_good_objects_present(state: DesiredState) -> None:
    assert state.node is not None and state.node.pod_cidrs == ("10.244.1.0/24",)
    good = state.service_port("default/good/http")
    assert good is not None and [ep.address for ep in good.endpoints] == ["10.244.1.5"]
    assert "default/good" in {pod.key for pod in state.pods}
    assert state.namespace("default") is not None
    assert "default/good" in {policy.key for policy in state.policies}


def service(name: str, **spec: Any) -> dict[str, Any]:
    spec.setdefault("clusterIP", "10.96.0.2")
    spec.setdefault("ports", [{"name": "http", "port": 80}])
    return {"metadata": {"name": name, "namespace": "default"}, "spec": spec}


def endpoint_slice(**fields: Any) -> dict[str, Any]:
    # Sliced for the good service, so a bad slice must not take the good slice's endpoints with it.
    obj: dict[str, Any] = {
        "metadata": {"name": "bad-1", "namespace": "default", "labels": {"kubernetes.io/service-name": "good"}},
        "addressType": "IPv4",
        "ports": [{"name": "http", "protocol": "TCP", "port": 8080}],
        "endpoints": [{"addresses": ["10.244.1.6"]}],
    }
    obj.update(fields)
    return obj


def node(**fields: Any) -> dict[str, Any]:
    return {"metadata": {"name": "bad"}, **fields}


def pod(**fields: Any) -> dict[str, Any]:
    return {"metadata": {"name": "bad", "namespace": "default"}, "status": {"phase": "Running"}, **fields}


def policy(**spec: Any) -> dict[str, Any]:
    return {"metadata": {"name": "bad", "namespace": "default"}, "spec": {"podSelector": {}, **spec}}


def peer(**fields: Any) -> dict[str, Any]:
    """A policy whose single ingress rule has the given peer."""
    return policy(ingress=[{"from": [fields]}])


def port(**fields: Any) -> dict[str, Any]:
    """A policy whose single ingress rule has the given port."""
    return policy(ingress=[{"ports": [fields]}])


# (id, kind, key, bad object, fragment expected in the reason)
CASES = [
    # services
    ("service-bad-cluster-ip", "services", "default/bad", service("bad", clusterIP="10.96.0.300"),
     "spec.clusterIP: invalid IP address '10.96.0.300'"),
    ("service-no-cluster-ip", "services", "default/bad", service("bad", clusterIP=""), "spec.clusterIP: missing"),
    ("service-bad-second-cluster-ip", "services", "default/bad",
     service("bad", clusterIPs=["10.96.0.2", "fd00::zz"]), "spec.clusterIPs[1]"),
    ("service-bad-external-ip", "services", "default/bad", service("bad", externalIPs=["192.0.2"]), "externalIPs[0]"),
    ("service-bad-ingress-ip", "services", "default/bad",
     {**service("bad", type="LoadBalancer"), "status": {"loadBalancer": {"ingress": [{"ip": "lb"}]}}},
     "status.loadBalancer.ingress[0].ip"),
    ("service-bad-source-range", "services", "default/bad",
     service("bad", type="LoadBalancer", loadBalancerSourceRanges=["10.0.0.0/33"]), "loadBalancerSourceRanges[0]"),
    ("service-unknown-type", "services", "default/bad", service("bad", type="Magic"), "spec.type"),
    ("service-unknown-affinity", "services", "default/bad", service("bad", sessionAffinity="Cookie"), "Cookie"),
    ("service-affinity-timeout-too-long", "services", "default/bad",
     service("bad", sessionAffinity="ClientIP", sessionAffinityConfig={"clientIP": {"timeoutSeconds": 86401}}),
     "timeoutSeconds: 86401 is out of range"),
    ("service-unknown-traffic-policy", "services", "default/bad",
     service("bad", internalTrafficPolicy="Nearby"), "internalTrafficPolicy"),
    ("service-bad-health-check-port", "services", "default/bad",
     service("bad", type="LoadBalancer", externalTrafficPolicy="Local", healthCheckNodePort=70000),
     "healthCheckNodePort: 70000"),
    ("service-no-name", "services", "default/bad",
     {"metadata": {"namespace": "default"}, "spec": {"clusterIP": "10.96.0.2"}}, "metadata.name: missing"),
    ("service-no-namespace", "services", "default/bad",
     {"metadata": {"name": "bad"}, "spec": {"clusterIP": "10.96.0.2"}}, "metadata.namespace: missing"),
    ("service-labels-not-strings", "services", "default/bad",
     {**service("bad"), "metadata": {"name": "bad", "namespace": "default", "labels": {"tier": 1}}},
     "metadata.labels"),
    ("service-ports-not-a-list", "services", "default/bad", service("bad", ports={"port": 80}), "spec.ports"),
    ("service-not-an-object", "services", "default/bad", ["not", "a", "service"], "not an object"),
    # endpoint slices
    ("slice-bad-address", "endpointslices", "default/bad-1",
     endpoint_slice(endpoints=[{"addresses": ["10.244.1.999"]}]), "endpoints[0].addresses[0]"),
    ("slice-wrong-family", "endpointslices", "default/bad-1",
     endpoint_slice(endpoints=[{"addresses": ["fd00::6"]}]), "is not an IPv4 address"),
    ("slice-no-addresses", "endpointslices", "default/bad-1",
     endpoint_slice(endpoints=[{"addresses": []}]), "addresses: empty"),
    ("slice-port-out-of-range", "endpointslices", "default/bad-1",
     endpoint_slice(ports=[{"name": "http", "port": 0}]), "ports[0].port: 0 is out of range"),
    ("slice-unknown-protocol", "endpointslices", "default/bad-1",
     endpoint_slice(ports=[{"name": "http", "protocol": "ICMP", "port": 8080}]), "unknown protocol 'ICMP'"),
    ("slice-unknown-address-type", "endpointslices", "default/bad-1",
     endpoint_slice(addressType="IPv5"), "addressType"),
    ("slice-condition-not-bool", "endpointslices", "default/bad-1",
     endpoint_slice(endpoints=[{"addresses": ["10.244.1.6"], "conditions": {"ready": "yes"}}]), "ready"),
    # nodes
    ("node-bad-pod-cidr", "nodes", "bad", node(spec={"podCIDR": "10.244.0.0/40"}), "10.244.0.0/40"),
    ("node-pod-cidr-without-prefix", "nodes", "bad", node(spec={"podCIDRs": ["10.244.0.0"]}), "invalid CIDR"),
    ("node-bad-internal-ip", "nodes", "bad",
     node(status={"addresses": [{"type": "InternalIP", "address": "node-1"}]}), "status.addresses[0].address"),
    ("node-address-without-type", "nodes", "bad",
     node(status={"addresses": [{"address": "10.0.0.9"}]}), "status.addresses[0].type: missing"),
    ("node-no-name", "nodes", "bad", {"metadata": {}}, "metadata.name: missing"),
    # pods
    ("pod-bad-ip", "pods", "default/bad", pod(status={"podIPs": [{"ip": "10.244.1"}]}), "status.podIPs[0].ip"),
    ("pod-container-port-out-of-range", "pods", "default/bad",
     pod(spec={"containers": [{"name": "c", "ports": [{"name": "http", "containerPort": 65536}]}]}),
     "containerPort: 65536"),
    ("pod-unknown-port-protocol", "pods", "default/bad",
     pod(spec={"containers": [{"name": "c", "ports": [{"name": "x", "containerPort": 1, "protocol": "QUIC"}]}]}),
     "unknown protocol 'QUIC'"),
    ("pod-invalid-port-name", "pods", "default/bad",
     pod(spec={"containers": [{"name": "c", "ports": [{"name": "HTTP_PORT", "containerPort": 80}]}]}),
     "invalid port name"),
    ("pod-host-network-not-bool", "pods", "default/bad", pod(spec={"hostNetwork": "true"}), "spec.hostNetwork"),
    # namespaces
    ("namespace-no-name", "namespaces", "bad", {"metadata": {"labels": {"a": "b"}}}, "metadata.name: missing"),
    ("namespace-labels-not-a-map", "namespaces", "bad",
     {"metadata": {"name": "bad", "labels": ["a"]}}, "metadata.labels"),
    # network policies
    ("policy-unknown-operator", "networkpolicies", "default/bad",
     policy(podSelector={"matchExpressions": [{"key": "app", "operator": "Like", "values": ["x"]}]}),
     "unknown selector operator 'Like'"),
    ("policy-in-without-values", "networkpolicies", "default/bad",
     peer(podSelector={"matchExpressions": [{"key": "app", "operator": "In", "values": []}]}), "needs values"),
    ("policy-exists-with-values", "networkpolicies", "default/bad",
     peer(namespaceSelector={"matchExpressions": [{"key": "a", "operator": "Exists", "values": ["x"]}]}),
     "takes no values"),
    ("policy-bad-cidr", "networkpolicies", "default/bad", peer(ipBlock={"cidr": "10.0.0.0/8x"}), "ipBlock.cidr"),
    ("policy-ip-block-without-cidr", "networkpolicies", "default/bad", peer(ipBlock={}), "ipBlock.cidr: missing"),
    ("policy-bad-except", "networkpolicies", "default/bad",
     peer(ipBlock={"cidr": "10.0.0.0/8", "except": ["10.1.0.0/"]}), "except[0]"),
    ("policy-except-outside-cidr", "networkpolicies", "default/bad",
     peer(ipBlock={"cidr": "10.0.0.0/8", "except": ["192.168.0.0/16"]}), "not a strict subset"),
    ("policy-except-other-family", "networkpolicies", "default/bad",
     peer(ipBlock={"cidr": "10.0.0.0/8", "except": ["fd00::/8"]}), "not a strict subset"),
    ("policy-ip-block-and-selector", "networkpolicies", "default/bad",
     peer(ipBlock={"cidr": "10.0.0.0/8"}, podSelector={}), "cannot be combined"),
    ("policy-empty-peer", "networkpolicies", "default/bad", peer(), "peer selects nothing"),
    ("policy-port-out-of-range", "networkpolicies", "default/bad", port(port=65536), "port: 65536"),
    ("policy-invalid-named-port", "networkpolicies", "default/bad", port(port="80"), "invalid port name '80'"),
    ("policy-unknown-protocol", "networkpolicies", "default/bad", port(protocol="ICMP", port=1), "ICMP"),
    ("policy-end-port-below-port", "networkpolicies", "default/bad", port(port=2000, endPort=1000), "below port"),
    ("policy-end-port-with-named-port", "networkpolicies", "default/bad",
     port(port="http", endPort=1000), "named port 'http'"),
    ("policy-end-port-without-port", "networkpolicies", "default/bad", port(endPort=1000), "without a port"),
    ("policy-unknown-type", "networkpolicies", "default/bad", policy(policyTypes=["Sideways"]), "policyTypes[0]"),
    ("policy-rules-not-a-list", "networkpolicies", "default/bad", policy(egress={"to": []}), "spec.egress"),
]

KIND_LABELS = {
    "services": "Service",
    "endpointslices": "EndpointSlice",
    "nodes": "Node",
    "pods": "Pod",
    "namespaces": "Namespace",
    "networkpolicies": "NetworkPolicy",
}


@pytest.mark.parametrize(("kind", "key", "bad", "reason"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_malformed_object_is_skipped_with_one_warning(
    kind: str, key: str, bad: Any, reason: str, caplog: pytest.LogCaptureFixture
) -> None:
    snapshot = good_snapshot()
    snapshot[kind][key] = copy.deepcopy(bad)
    with caplog.at_level(logging.DEBUG, logger="kr_core.desired"):
        state = build_desired_state(snapshot, NODE)
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1, warnings
    assert warnings[0].startswith(f"skipping {KIND_LABELS[kind]} {key}: ")
    assert reason in warnings[0]
    assert_good_objects_present(state)
    # nothing of the bad object made it in
    assert len(state.nodes) == 1 and len(state.services) == 1 and len(state.namespaces) == 1
    assert len(state.pods) == 1 and len(state.policies) == 1
    assert [ep.address for ep in state.services[0].endpoints] == ["10.244.1.5"]


# (id, bad port, fragment expected in the reason)
PORT_CASES = [
    ("unknown-protocol", {"name": "icmp", "protocol": "ICMP", "port": 7}, "unknown protocol 'ICMP'"),
    ("port-zero", {"name": "zero", "port": 0}, "spec.ports[1].port: 0 is out of range"),
    ("port-too-high", {"name": "high", "port": 65536}, "spec.ports[1].port: 65536 is out of range"),
    ("port-missing", {"name": "none"}, "spec.ports[1].port: expected a number"),
    ("port-not-a-number", {"name": "text", "port": "80"}, "expected a number"),
    ("bad-node-port", {"name": "np", "port": 81, "nodePort": 70000}, "nodePort: 70000"),
    ("bad-target-port", {"name": "tp", "port": 81, "targetPort": 0.5}, "targetPort"),
    ("bad-target-port-name", {"name": "tp", "port": 81, "targetPort": "Not_A_Name"}, "invalid port name"),
    ("duplicate-name", {"name": "http", "port": 81}, "duplicate port name 'http'"),
]


@pytest.mark.parametrize(("bad_port", "reason"), [c[1:] for c in PORT_CASES], ids=[c[0] for c in PORT_CASES])
def test_malformed_service_port_skips_only_that_port(
    bad_port: dict[str, Any], reason: str, caplog: pytest.LogCaptureFixture
) -> None:
    snapshot = good_snapshot()
    ports = [{"name": "http", "port": 80}, bad_port, {"name": "https", "port": 443}]
    snapshot["services"]["default/multi"] = service("multi", ports=ports)
    with caplog.at_level(logging.DEBUG, logger="kr_core.desired"):
        state = build_desired_state(snapshot, NODE)
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1, warnings
    assert warnings[0].startswith(f"skipping Service default/multi port {bad_port['name']!r}: ")
    assert reason in warnings[0]
    assert [p.key for p in state.services if p.name == "multi"] == ["default/multi/http", "default/multi/https"]
    assert_good_objects_present(state)


def test_unnamed_malformed_port_is_named_by_index(caplog: pytest.LogCaptureFixture) -> None:
    snapshot = {"services": {"default/single": service("single", ports=[{"port": 99999}])}}
    state = build_desired_state(snapshot, NODE)
    assert [r.getMessage() for r in caplog.records] == [
        "skipping Service default/single port #0: spec.ports[0].port: 99999 is out of range 1-65535"
    ]
    assert state.services == ()


def field_paths(obj: Any, prefix: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    """Every dict key and list index path inside ``obj``."""
    items = obj.items() if isinstance(obj, dict) else enumerate(obj) if isinstance(obj, list) else ()
    for field, value in items:
        yield (*prefix, field)
        yield from field_paths(value, (*prefix, field))


GOLDEN_OBJECTS = [
    doc
    for name in ("services", "policy")
    for doc in yaml.safe_load_all((Path(__file__).parent / "golden" / f"{name}.yaml").read_text(encoding="utf-8"))
    if doc
]
KINDS = {"Node": "nodes", "Service": "services", "EndpointSlice": "endpointslices", "Pod": "pods",
         "Namespace": "namespaces", "NetworkPolicy": "networkpolicies"}


@pytest.mark.parametrize("obj", GOLDEN_OBJECTS, ids=lambda o: f"{o['kind']}-{o['metadata']['name']}")
def test_no_field_of_the_wrong_shape_stops_the_build(obj: dict[str, Any], caplog: pytest.LogCaptureFixture) -> None:
    # Replace every field of a realistic object, one at a time, with values of the wrong type or range:
    # the builder must neither raise nor warn more than once for the one object.
    meta = obj["metadata"]
    key = f"{meta['namespace']}/{meta['name']}" if "namespace" in meta else meta["name"]
    for path in field_paths(obj):
        for junk in (None, -1, 1.5, "x", [None], {"a": [1]}):
            broken = copy.deepcopy(obj)
            parent = broken
            for field in path[:-1]:
                parent = parent[field]
            parent[path[-1]] = junk
            caplog.clear()
            build_desired_state({KINDS[obj["kind"]]: {key: broken}}, NODE)
            warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
            assert len(warnings) <= 1, (path, junk, warnings)
