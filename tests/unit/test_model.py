"""The model's records: immutability, lookups, peer semantics and JSON conversion."""

from __future__ import annotations

import dataclasses
import ipaddress
import json
from typing import Any

import pytest

from kr_core.model import (
    DesiredState,
    Endpoint,
    FrozenMap,
    IPBlock,
    LabelSelector,
    Namespace,
    NetworkPolicy,
    Node,
    NodeAddress,
    Pod,
    PolicyPeer,
    PolicyPort,
    PolicyRule,
    PolicyType,
    Protocol,
    ServicePort,
    ServiceType,
    SessionAffinity,
    TrafficPolicy,
    to_jsonable,
)

NO_LABELS: FrozenMap[str, str] = FrozenMap()


def service_port(name: str = "web", port_name: str = "http", **changes: Any) -> ServicePort:
    fields: dict[str, Any] = dict(
        namespace="default",
        name=name,
        port_name=port_name,
        protocol=Protocol.TCP,
        port=80,
        target_port="http",
        node_port=None,
        type=ServiceType.CLUSTER_IP,
        cluster_ips=("10.96.0.1",),
        external_ips=(),
        load_balancer_ips=(),
        load_balancer_source_ranges=(),
        session_affinity=SessionAffinity.NONE,
        session_affinity_timeout=0,
        external_traffic_policy=TrafficPolicy.CLUSTER,
        internal_traffic_policy=TrafficPolicy.CLUSTER,
        health_check_node_port=None,
        labels=FrozenMap({"app": name}),
        annotations=NO_LABELS,
        endpoints=(Endpoint("10.244.0.1", 8080, True, True, False, "node-a", None, None, True),),
    )
    fields.update(changes)
    return ServicePort(**fields)


def pod(namespace: str = "prod", **labels: str) -> Pod:
    return Pod(namespace, "p", FrozenMap(labels), ("10.244.0.9",), "node-a", False, "Running", ())


def test_records_are_frozen_and_slotted() -> None:
    port = service_port()
    with pytest.raises(dataclasses.FrozenInstanceError):
        port.port = 81  # type: ignore[misc]
    assert not hasattr(port, "__dict__")
    assert port == service_port() and hash(port) == hash(service_port())


def test_service_port_keys() -> None:
    assert service_port().key == "default/web/http"
    assert service_port(port_name="").key == "default/web/"
    assert service_port().service_key == "default/web"


def test_desired_state_defaults_and_lookups() -> None:
    ports = (service_port("a"), service_port("b"))
    namespaces = (Namespace("prod", FrozenMap({"team": "payments"})),)
    state = DesiredState(node_name="node-a", services=ports, namespaces=namespaces)
    assert state.node is None and state.node_ips == () and state.extras == {}
    assert state.service_port("default/b/http") is ports[1]
    assert state.service_port("default/c/http") is None
    assert state.namespace("prod") is namespaces[0] and state.namespace("dev") is None


def test_replace_rebuilds_lookups_and_freezes_extras() -> None:
    state = DesiredState(node_name="node-a", services=(service_port("a"),))
    amended = dataclasses.replace(state, services=(service_port("b"),), extras={"bgp": {"peers": 2}})
    assert amended.service_port("default/a/http") is None
    assert amended.service_port("default/b/http") is not None
    assert isinstance(amended.extras, FrozenMap) and amended.extras["bgp"] == {"peers": 2}
    with pytest.raises(TypeError):
        amended.extras["x"] = 1  # type: ignore[index]


def test_desired_state_equality_ignores_lookup_indexes() -> None:
    assert DesiredState("n", services=(service_port(),)) == DesiredState("n", services=(service_port(),))
    assert DesiredState("n") != DesiredState("n", extras={"a": 1})


def test_node_ips_prefer_internal_then_external_without_duplicates() -> None:
    node = Node(
        "node-a",
        (
            NodeAddress("ExternalIP", "203.0.113.1"),
            NodeAddress("Hostname", "node-a"),
            NodeAddress("InternalIP", "10.0.0.1"),
            NodeAddress("InternalIP", "fd00::1"),
            NodeAddress("ExternalIP", "10.0.0.1"),
        ),
        ("10.244.0.0/24",),
        NO_LABELS,
        NO_LABELS,
    )
    assert node.ips == ("10.0.0.1", "fd00::1", "203.0.113.1")
    assert DesiredState("node-a", node=node, nodes=(node,)).node_ips == node.ips


def test_pod_flags() -> None:
    assert pod().key == "prod/p" and pod().has_ips
    assert not dataclasses.replace(pod(), ips=()).has_ips


PROD = {"team": "payments"}
WEB = LabelSelector(FrozenMap({"app": "web"}))
PAYMENTS = LabelSelector(FrozenMap({"team": "payments"}))


@pytest.mark.parametrize(
    ("peer", "pod_namespace", "pod_labels", "expected"),
    [
        # podSelector only: pods of the policy's namespace
        (PolicyPeer(pod_selector=WEB), "prod", {"app": "web"}, True),
        (PolicyPeer(pod_selector=WEB), "dev", {"app": "web"}, False),
        (PolicyPeer(pod_selector=LabelSelector()), "prod", {}, True),
        # namespaceSelector only: every pod of matching namespaces
        (PolicyPeer(namespace_selector=PAYMENTS), "other", {}, True),
        (PolicyPeer(namespace_selector=LabelSelector(FrozenMap({"team": "x"}))), "other", {}, False),
        (PolicyPeer(namespace_selector=LabelSelector()), "other", {}, True),
        # both: AND
        (PolicyPeer(pod_selector=WEB, namespace_selector=PAYMENTS), "other", {"app": "web"}, True),
        (PolicyPeer(pod_selector=WEB, namespace_selector=PAYMENTS), "other", {"app": "db"}, False),
        # an address block never selects pods by labels
        (PolicyPeer(ip_block=IPBlock("10.0.0.0/8")), "prod", {"app": "web"}, False),
    ],
)
def test_policy_peer_selects_pod(
    peer: PolicyPeer, pod_namespace: str, pod_labels: dict[str, str], expected: bool
) -> None:
    assert peer.selects_pod("prod", pod(pod_namespace, **pod_labels), PROD) is expected


def test_network_policy_selects_pods_of_its_namespace() -> None:
    policy = NetworkPolicy("prod", "allow-web", WEB, (PolicyType.INGRESS,))
    assert policy.key == "prod/allow-web"
    assert policy.selects(pod("prod", app="web"))
    assert not policy.selects(pod("dev", app="web"))
    assert not policy.selects(pod("prod", app="db"))


def test_to_jsonable_covers_the_whole_model() -> None:
    policy = NetworkPolicy(
        "prod",
        "p",
        LabelSelector(),
        (PolicyType.INGRESS, PolicyType.EGRESS),
        ingress=(
            PolicyRule(
                peers=(PolicyPeer(ip_block=IPBlock("10.0.0.0/8", ("10.1.0.0/16",))),),
                ports=(PolicyPort(Protocol.UDP, 53),),
            ),
        ),
    )
    # Plugin extras may hold anything: non-JSON values become strings, sets sorted lists.
    extras = {"ip": ipaddress.ip_address("10.0.0.1"), "tags": frozenset({"b", "a"})}
    state = DesiredState("node-a", services=(service_port(),), policies=(policy,), extras=extras)
    data: Any = to_jsonable(state)
    assert json.loads(json.dumps(data)) == data
    assert isinstance(data, dict)
    assert set(data) == {"node_name", "node", "nodes", "services", "pods", "namespaces", "policies", "extras"}
    assert data["services"][0]["protocol"] == "TCP"
    assert data["services"][0]["labels"] == {"app": "web"}
    assert data["services"][0]["endpoints"][0]["is_local"] is True
    assert data["policies"][0]["ingress"][0] == {
        "peers": [{"pod_selector": None, "namespace_selector": None,
                   "ip_block": {"cidr": "10.0.0.0/8", "except_cidrs": ["10.1.0.0/16"]}}],
        "ports": [{"protocol": "UDP", "port": 53, "end_port": None}],
    }
    assert data["policies"][0]["pod_selector"] == {"match_labels": {}, "match_expressions": []}
    assert data["extras"] == {"ip": "10.0.0.1", "tags": ["a", "b"]}
