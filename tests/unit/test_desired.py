"""Focused behaviour of build_desired_state: endpoint resolution, defaults, exclusions, purity, speed."""

from __future__ import annotations

import copy
import logging
import random
import time
from typing import Any

import pytest

from kr_core.desired import build_desired_state, prepare
from kr_core.model import PolicyType, ServiceType, SessionAffinity, TrafficPolicy

NODE = "node-a"


def service(name: str, ports: list[dict[str, Any]], namespace: str = "default", **spec: Any) -> dict[str, Any]:
    spec.setdefault("clusterIP", "10.96.0.1")
    return {"metadata": {"name": name, "namespace": namespace}, "spec": {"ports": ports, **spec}}


def endpoint_slice(
    name: str,
    service_name: str,
    ports: list[dict[str, Any]],
    endpoints: list[dict[str, Any]],
    namespace: str = "default",
    address_type: str = "IPv4",
) -> dict[str, Any]:
    return {
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": {"kubernetes.io/service-name": service_name},
        },
        "addressType": address_type,
        "ports": ports,
        "endpoints": endpoints,
    }


def endpoint(address: str, node: str | None = None, **conditions: bool) -> dict[str, Any]:
    ep: dict[str, Any] = {"addresses": [address], "conditions": conditions}
    if node is not None:
        ep["nodeName"] = node
    return ep


def snapshot(*objects: tuple[str, dict[str, Any]]) -> dict[str, dict[str, dict[str, Any]]]:
    """``(kind, object)`` pairs to a snapshot keyed as the cache keys them."""
    result: dict[str, dict[str, dict[str, Any]]] = {}
    for kind, obj in objects:
        meta = obj["metadata"]
        key = f"{meta['namespace']}/{meta['name']}" if "namespace" in meta else meta["name"]
        result.setdefault(kind, {})[key] = obj
    return result


HTTP = [{"name": "http", "protocol": "TCP", "port": 80, "targetPort": "http"}]


# --- endpoints


@pytest.mark.parametrize(
    ("conditions", "expected"),
    [
        # kube-proxy: unset ready and serving read as true, unset terminating as false
        ({}, (True, True, False)),
        ({"terminating": True}, (True, True, True)),
        ({"terminating": True, "ready": False, "serving": True}, (False, True, True)),
        ({"ready": False}, (False, True, False)),
        ({"ready": True, "serving": False}, (True, False, False)),
        ({"ready": False, "serving": True, "terminating": False}, (False, True, False)),
    ],
)
def test_endpoint_conditions_default_as_kube_proxy_does(
    conditions: dict[str, bool], expected: tuple[bool, bool, bool]
) -> None:
    state = build_desired_state(
        snapshot(
            ("services", service("web", HTTP)),
            ("endpointslices", endpoint_slice("web-1", "web", [{"name": "http", "port": 8080}],
                                              [{"addresses": ["10.244.0.1"], "conditions": conditions}])),
        ),
        NODE,
    )
    (ep,) = state.services[0].endpoints
    assert (ep.ready, ep.serving, ep.terminating) == expected


@pytest.mark.parametrize("ready_slice", ["web-1", "web-2"])
def test_duplicate_endpoint_across_slices_prefers_the_ready_copy(ready_slice: str) -> None:
    slices = [
        endpoint_slice(name, "web", [{"name": "http", "port": 8080}],
                       [endpoint("10.244.0.1", NODE, ready=name == ready_slice)])
        for name in ("web-1", "web-2")
    ]
    state = build_desired_state(
        snapshot(("services", service("web", HTTP)), *(("endpointslices", s) for s in slices)), NODE
    )
    (ep,) = state.services[0].endpoints
    assert ep.ready


def test_duplicate_endpoint_tie_keeps_the_first_slice_by_key() -> None:
    slices = [
        endpoint_slice(name, "web", [{"name": "http", "port": 8080}], [endpoint("10.244.0.1", node)])
        for name, node in (("web-2", "node-z"), ("web-1", "node-y"))
    ]
    state = build_desired_state(
        snapshot(("services", service("web", HTTP)), *(("endpointslices", s) for s in slices)), NODE
    )
    (ep,) = state.services[0].endpoints
    assert ep.node_name == "node-y"


def test_same_address_with_different_resolved_ports_stays_two_endpoints() -> None:
    slices = [
        endpoint_slice("web-1", "web", [{"name": "http", "port": 8080}], [endpoint("10.244.0.1")]),
        endpoint_slice("web-2", "web", [{"name": "http", "port": 8081}], [endpoint("10.244.0.1")]),
    ]
    state = build_desired_state(
        snapshot(("services", service("web", HTTP)), *(("endpointslices", s) for s in slices)), NODE
    )
    assert [(ep.address, ep.port) for ep in state.services[0].endpoints] == [
        ("10.244.0.1", 8080),
        ("10.244.0.1", 8081),
    ]


def test_endpoints_match_port_name_and_protocol() -> None:
    ports = [
        {"name": "dns", "protocol": "UDP", "port": 53},
        {"name": "dns-tcp", "protocol": "TCP", "port": 53},
    ]
    slice_ports = [
        {"name": "dns", "protocol": "UDP", "port": 5353},
        {"name": "dns-tcp", "protocol": "TCP", "port": 5354},
        {"name": "metrics", "protocol": "TCP", "port": 9153},
        {"name": "dns", "protocol": "TCP", "port": 9999},  # same name, other protocol: not ours
    ]
    state = build_desired_state(
        snapshot(
            ("services", service("dns", ports)),
            ("endpointslices", endpoint_slice("dns-1", "dns", slice_ports, [endpoint("10.244.0.1")])),
        ),
        NODE,
    )
    assert {(p.port_name, p.protocol): [ep.port for ep in p.endpoints] for p in state.services} == {
        ("dns", "UDP"): [5353],
        ("dns-tcp", "TCP"): [5354],
    }


@pytest.mark.parametrize("slice_port", [{"port": 8080}, {"name": "", "port": 8080}, {"name": None, "port": 8080}])
def test_unnamed_service_port_matches_unnamed_slice_port(slice_port: dict[str, Any]) -> None:
    state = build_desired_state(
        snapshot(
            ("services", service("web", [{"port": 80}])),
            ("endpointslices", endpoint_slice("web-1", "web", [slice_port], [endpoint("10.244.0.1")])),
        ),
        NODE,
    )
    (port,) = state.services
    assert port.key == "default/web/"
    assert [ep.port for ep in port.endpoints] == [8080]
    assert port.target_port == 80  # targetPort absent: the service port itself


def test_slices_are_scoped_to_their_namespace_and_service() -> None:
    state = build_desired_state(
        snapshot(
            ("services", service("web", HTTP)),
            ("endpointslices", endpoint_slice("web-1", "web", [{"name": "http", "port": 8080}],
                                              [endpoint("10.244.0.1")], namespace="other")),
            ("endpointslices", endpoint_slice("api-1", "api", [{"name": "http", "port": 8080}],
                                              [endpoint("10.244.0.2")])),
        ),
        NODE,
    )
    assert state.services[0].endpoints == ()


def test_slices_without_service_label_or_port_number_contribute_nothing() -> None:
    unlabelled = endpoint_slice("web-1", "web", [{"name": "http", "port": 8080}], [endpoint("10.244.0.1")])
    del unlabelled["metadata"]["labels"]
    portless = endpoint_slice("web-2", "web", [{"name": "http", "port": None}], [endpoint("10.244.0.2")])
    state = build_desired_state(
        snapshot(("services", service("web", HTTP)), ("endpointslices", unlabelled), ("endpointslices", portless)),
        NODE,
    )
    assert state.services[0].endpoints == ()


def test_endpoints_are_local_only_on_this_node_and_sorted_numerically() -> None:
    endpoints = [
        endpoint("10.244.0.10", NODE),
        endpoint("10.244.0.9", "node-b"),
        endpoint("10.244.0.100"),
    ]
    state = build_desired_state(
        snapshot(
            ("services", service("web", HTTP)),
            ("endpointslices", endpoint_slice("web-1", "web", [{"name": "http", "port": 8080}], endpoints)),
        ),
        NODE,
    )
    assert [(ep.address, ep.is_local) for ep in state.services[0].endpoints] == [
        ("10.244.0.9", False),
        ("10.244.0.10", True),
        ("10.244.0.100", False),
    ]


# --- services


def test_cluster_ip_falls_back_to_the_singular_field() -> None:
    state = build_desired_state(snapshot(("services", service("web", HTTP, clusterIP="10.96.3.3"))), NODE)
    assert state.services[0].cluster_ips == ("10.96.3.3",)


@pytest.mark.parametrize(
    ("spec", "external_policy", "health_check_node_port"),
    [
        ({"type": "ClusterIP"}, TrafficPolicy.CLUSTER, None),
        ({"type": "ClusterIP", "externalIPs": ["192.0.2.1"]}, TrafficPolicy.LOCAL, None),
        ({"type": "NodePort"}, TrafficPolicy.LOCAL, None),
        ({"type": "LoadBalancer"}, TrafficPolicy.LOCAL, 32000),
    ],
)
def test_external_traffic_policy_local_applies_only_to_externally_reachable_services(
    spec: dict[str, Any], external_policy: TrafficPolicy, health_check_node_port: int | None
) -> None:
    obj = service("web", HTTP, externalTrafficPolicy="Local", healthCheckNodePort=32000, **spec)
    (port,) = build_desired_state(snapshot(("services", obj)), NODE).services
    assert port.external_traffic_policy is external_policy
    assert port.health_check_node_port == health_check_node_port


def test_service_defaults() -> None:
    (port,) = build_desired_state(snapshot(("services", service("web", [{"port": 80}]))), NODE).services
    assert port.type is ServiceType.CLUSTER_IP
    assert port.protocol == "TCP"
    assert port.session_affinity is SessionAffinity.NONE
    assert port.session_affinity_timeout == 0
    assert port.external_traffic_policy is TrafficPolicy.CLUSTER
    assert port.internal_traffic_policy is TrafficPolicy.CLUSTER
    assert port.node_port is None


@pytest.mark.parametrize(("label", "proxy_name", "proxied"), [
    (None, None, True),
    ("", None, False),
    ("kr", None, False),
    ("kr", "kr", True),
    ("other", "kr", False),
    (None, "kr", True),
])
def test_service_proxy_name_label(label: str | None, proxy_name: str | None, proxied: bool) -> None:
    obj = service("web", HTTP)
    if label is not None:
        obj["metadata"]["labels"] = {"service.kubernetes.io/service-proxy-name": label}
    state = build_desired_state(snapshot(("services", obj)), NODE, proxy_name)
    assert bool(state.services) is proxied


def test_excluded_services_are_not_warned_about(caplog: pytest.LogCaptureFixture) -> None:
    headless = service("db", HTTP, clusterIP="None")
    external = {"metadata": {"name": "ext", "namespace": "default"},
                "spec": {"type": "ExternalName", "externalName": "db.example.com"}}
    state = build_desired_state(snapshot(("services", headless), ("services", external)), NODE)
    assert state.services == ()
    assert [r for r in caplog.records if r.levelname == "WARNING"] == []


# --- nodes, pods, policies


def test_absent_kinds_are_empty() -> None:
    state = build_desired_state({}, NODE)
    assert state.node is None
    assert state.node_ips == ()
    assert (state.nodes, state.services, state.pods, state.namespaces, state.policies) == ((), (), (), (), ())


def test_node_ips_prefer_internal_addresses() -> None:
    node = {
        "metadata": {"name": NODE},
        "status": {"addresses": [
            {"type": "Hostname", "address": NODE},
            {"type": "ExternalIP", "address": "203.0.113.1"},
            {"type": "InternalIP", "address": "10.0.0.1"},
            {"type": "InternalIP", "address": "fd00::1"},
        ]},
    }
    other = {"metadata": {"name": "node-b"}, "status": {"addresses": [{"type": "InternalIP", "address": "10.0.0.2"}]}}
    state = build_desired_state(snapshot(("nodes", node), ("nodes", other)), NODE)
    assert state.node is not None and state.node.name == NODE
    assert state.node_ips == ("10.0.0.1", "fd00::1", "203.0.113.1")


@pytest.mark.parametrize(("phase", "kept"), [
    ("Pending", True), ("Running", True), ("Unknown", True), (None, True), ("Succeeded", False), ("Failed", False),
])
def test_finished_pods_are_left_out(phase: str | None, kept: bool) -> None:
    pod = {"metadata": {"name": "p", "namespace": "default"}, "status": {"phase": phase, "podIP": "10.244.0.5"}}
    state = build_desired_state(snapshot(("pods", pod)), NODE)
    assert len(state.pods) == int(kept)


def test_pods_without_ips_are_kept_and_flagged() -> None:
    pod = {"metadata": {"name": "p", "namespace": "default", "labels": {"app": "x"}}, "status": {"phase": "Pending"}}
    (kept,) = build_desired_state(snapshot(("pods", pod)), NODE).pods
    assert kept.ips == () and not kept.has_ips


@pytest.mark.parametrize(("spec", "types"), [
    ({}, (PolicyType.INGRESS,)),
    ({"policyTypes": []}, (PolicyType.INGRESS,)),
    ({"egress": [{}]}, (PolicyType.INGRESS, PolicyType.EGRESS)),
    ({"egress": []}, (PolicyType.INGRESS,)),
    ({"policyTypes": ["Egress"], "ingress": [{}]}, (PolicyType.EGRESS,)),
    ({"policyTypes": ["Egress", "Ingress", "Egress"]}, (PolicyType.INGRESS, PolicyType.EGRESS)),
])
def test_policy_types_default_as_the_api_server_does(spec: dict[str, Any], types: tuple[PolicyType, ...]) -> None:
    policy = {"metadata": {"name": "p", "namespace": "default"}, "spec": {"podSelector": {}, **spec}}
    (built,) = build_desired_state(snapshot(("networkpolicies", policy)), NODE).policies
    assert built.policy_types == types


def test_absent_and_empty_peer_lists_both_allow_every_peer() -> None:
    policy = {"metadata": {"name": "p", "namespace": "default"},
              "spec": {"podSelector": {}, "ingress": [{"from": []}, {"ports": [{"port": 80}]}]}}
    (built,) = build_desired_state(snapshot(("networkpolicies", policy)), NODE).policies
    assert [rule.peers for rule in built.ingress] == [(), ()]
    assert built.egress == ()


# --- purity and speed


def test_build_is_pure_and_deterministic() -> None:
    objects = snapshot(
        ("services", service("web", HTTP)),
        ("endpointslices", endpoint_slice("web-1", "web", [{"name": "http", "port": 8080}],
                                          [endpoint("10.244.0.2"), endpoint("10.244.0.1", NODE)])),
        ("pods", {"metadata": {"name": "p", "namespace": "default"}, "status": {"podIP": "10.244.0.1"}}),
    )
    before = copy.deepcopy(objects)
    first = build_desired_state(objects, NODE)
    assert objects == before
    assert build_desired_state(objects, NODE) == first
    assert hash(build_desired_state(objects, NODE)) == hash(first)


def test_large_snapshot_builds_quickly() -> None:
    # A sanity bound, not a benchmark: 2,000 services with 10 endpoints each, two slices per service.
    objects: dict[str, dict[str, Any]] = {"services": {}, "endpointslices": {}}
    for i in range(2000):
        name = f"svc-{i}"
        objects["services"][f"default/{name}"] = service(
            name, [{"name": "http", "port": 80, "targetPort": 8080}], clusterIP=f"10.96.{i // 250}.{i % 250 + 1}"
        )
        for half in range(2):
            endpoints = [endpoint(f"10.{half + 1}.{i // 25}.{i % 25 * 10 + j}", f"node-{j}") for j in range(5)]
            objects["endpointslices"][f"default/{name}-{half}"] = endpoint_slice(
                f"{name}-{half}", name, [{"name": "http", "port": 8080}], endpoints
            )
    started = time.perf_counter()
    state = build_desired_state(objects, "node-0")
    elapsed = time.perf_counter() - started
    assert len(state.services) == 2000
    assert sum(len(p.endpoints) for p in state.services) == 20000
    assert elapsed < 3.0, f"building took {elapsed:.2f}s"


def test_unchanged_object_versions_are_parsed_once_and_malformed_ones_logged_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    def pod_obj(name: str, version: str, ip: str) -> dict:
        return {"metadata": {"namespace": "m", "name": name, "resourceVersion": version, "labels": {"a": "b"}},
                "spec": {"nodeName": "n1"}, "status": {"phase": "Running", "podIP": ip}}

    good, bad = pod_obj("good", "1", "10.9.0.2"), pod_obj("bad", "2", "not-an-ip")
    first = build_desired_state({"pods": {"m/good": good, "m/bad": bad}}, "n1")
    second = build_desired_state({"pods": {"m/good": good, "m/bad": bad}}, "n1")
    assert second.pods[0] is first.pods[0], "an unchanged version is not parsed again"
    assert sum("m/bad" in r.getMessage() for r in caplog.records) == 1, "logged once per version"
    changed = build_desired_state({"pods": {"m/good": pod_obj("good", "3", "10.9.0.3")}}, "n1")
    assert changed.pods[0].ips == ("10.9.0.3",)
    assert sum("m/bad" in r.getMessage() for r in caplog.records) == 1
    again = build_desired_state({"pods": {"m/bad": bad}}, "n1")
    assert again.pods == () and sum("m/bad" in r.getMessage() for r in caplog.records) == 2, \
        "an object that left and came back is parsed (and reported) again"


def test_prepared_objects_are_used_by_the_next_build_and_never_change_its_result(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from kr_core.desired import prepare

    def pod_obj(name: str, version: str, ip: str) -> dict:
        return {"metadata": {"namespace": "p", "name": name, "resourceVersion": version},
                "spec": {"nodeName": "n1"}, "status": {"phase": "Running", "podIP": ip}}

    a1, b1 = pod_obj("a", "1", "10.8.0.2"), pod_obj("b", "2", "10.8.0.3")
    prepare("pods", "p/a", a1)
    prepare("services", "p/s", {"metadata": {"name": "s"}})  # not a prepared kind: ignored
    first = build_desired_state({"pods": {"p/a": a1, "p/b": b1}}, "n1")
    assert [p.ips for p in first.pods] == [("10.8.0.2",), ("10.8.0.3",)]
    # a prepared record of another object (same key, other version) is not used
    prepare("pods", "p/a", pod_obj("a", "9", "10.8.0.9"))
    a2 = pod_obj("a", "3", "10.8.0.4")
    assert build_desired_state({"pods": {"p/a": a2, "p/b": b1}}, "n1").pods[0].ips == ("10.8.0.4",)
    prepare("pods", "p/a", None)
    assert build_desired_state({"pods": {"p/b": b1}}, "n1").pods[0].name == "b"
    bad = pod_obj("bad", "4", "not-an-ip")
    prepare("pods", "p/bad", bad)
    assert sum("p/bad" in r.getMessage() for r in caplog.records) == 1, "reported when prepared"
    assert [p.name for p in build_desired_state({"pods": {"p/b": b1, "p/bad": bad}}, "n1").pods] == ["b"]
    assert sum("p/bad" in r.getMessage() for r in caplog.records) == 1, "the build used the prepared outcome"


# --- services and slices are memoized: identity across builds, never a different result


def test_an_unchanged_service_keeps_its_very_same_ports_across_builds() -> None:
    web, api = service("web", HTTP), service("api", HTTP, clusterIP="10.96.0.2")
    web_slice = endpoint_slice("web-1", "web", [{"name": "http", "port": 8080}], [endpoint("10.244.0.1", NODE)])
    api_slice = endpoint_slice("api-1", "api", [{"name": "http", "port": 8080}], [endpoint("10.244.0.2")])
    objects = snapshot(("services", web), ("services", api), ("endpointslices", web_slice),
                       ("endpointslices", api_slice))

    def ports(state: Any) -> dict[str, Any]:
        return {p.name: p for p in state.services}

    first = ports(build_desired_state(objects, NODE))
    # another service's slice changed (a new dict, as the cache makes it)
    objects["endpointslices"]["default/api-1"] = endpoint_slice(
        "api-1", "api", [{"name": "http", "port": 8080}], [endpoint("10.244.0.3")])
    second = ports(build_desired_state(objects, NODE))
    assert second["web"] is first["web"]
    assert second["api"] is not first["api"]
    assert [ep.address for ep in second["api"].endpoints] == ["10.244.0.3"]

    # a new dict for the service itself, or for one of its slices, gives new ports
    objects["services"]["default/web"] = service("web", HTTP, clusterIP="10.96.0.9")
    third = ports(build_desired_state(objects, NODE))
    assert third["web"] is not second["web"] and third["web"].cluster_ips == ("10.96.0.9",)
    assert third["api"] is second["api"]
    objects["endpointslices"]["default/web-1"] = endpoint_slice(
        "web-1", "web", [{"name": "http", "port": 8080}], [endpoint("10.244.0.1", NODE, ready=False)])
    fourth = ports(build_desired_state(objects, NODE))
    assert fourth["web"] is not third["web"] and not fourth["web"].endpoints[0].ready
    # a slice added for the service changes its list of slices
    objects["endpointslices"]["default/web-2"] = endpoint_slice(
        "web-2", "web", [{"name": "http", "port": 8080}], [endpoint("10.244.0.4")])
    fifth = ports(build_desired_state(objects, NODE))
    assert [ep.address for ep in fifth["web"].endpoints] == ["10.244.0.1", "10.244.0.4"]

    # another node sees other local endpoints; another proxy name parses services again
    other_node = ports(build_desired_state(objects, "node-b"))
    assert other_node["web"] is not fifth["web"] and not other_node["web"].endpoints[0].is_local
    assert other_node["web"] == ports(build_desired_state(copy.deepcopy(objects), "node-b"))["web"]
    by_kr = ports(build_desired_state(objects, "node-b", "kr"))
    assert by_kr["web"] is not other_node["web"] and by_kr["web"] == other_node["web"]
    assert ports(build_desired_state(objects, "node-b", "kr"))["web"] is by_kr["web"]


def test_a_malformed_service_or_port_is_logged_once_however_often_its_slices_change(
    caplog: pytest.LogCaptureFixture,
) -> None:
    bad = service("bad", HTTP, clusterIP="not-an-ip")
    bad_port = service("half", [*HTTP, {"name": "x", "port": 0}], clusterIP="10.96.0.3")
    objects = snapshot(("services", bad), ("services", bad_port))
    for version in range(3):
        for name in ("bad", "half"):
            objects.setdefault("endpointslices", {})[f"default/{name}-1"] = endpoint_slice(
                f"{name}-1", name, [{"name": "http", "port": 8080}], [endpoint(f"10.244.0.{version + 1}")])
        state = build_desired_state(objects, NODE)
        assert [(p.name, p.port_name, [ep.address for ep in p.endpoints]) for p in state.services] == [
            ("half", "http", [f"10.244.0.{version + 1}"])
        ]
    assert sum("Service default/bad:" in r.getMessage() for r in caplog.records) == 1
    assert sum("Service default/half port 'x'" in r.getMessage() for r in caplog.records) == 1


def test_random_service_and_slice_changes_build_what_a_fresh_build_does() -> None:
    # A warm build (memos kept from the previous step) must equal a build that can reuse nothing: the
    # same snapshot deep-copied, so no object is the one a memo holds. The fresh builds run after the
    # whole sequence, so they do not cool the memos the sequence relies on.
    rng = random.Random(20240611)
    names = [f"s{i}" for i in range(8)]
    nodes = [NODE, "node-b"]
    objects: dict[str, dict[str, Any]] = {"services": {}, "endpointslices": {}}

    def new_service(name: str) -> dict[str, Any]:
        ports = [{"name": n, "port": 80 + i, "protocol": rng.choice(["TCP", "UDP"])}
                 for i, n in enumerate(rng.sample(["http", "dns", "metrics"], rng.randint(1, 2)))]
        obj = service(name, ports, clusterIP=f"10.96.0.{rng.randint(1, 250)}")
        if rng.random() < 0.1:
            obj["spec"]["clusterIP"] = "bad"  # malformed
        if rng.random() < 0.1:
            obj["metadata"]["labels"] = {"service.kubernetes.io/service-proxy-name": "kr"}
        return obj

    def new_slice(name: str, key: str) -> dict[str, Any]:
        ports = [{"name": n, "port": 8000 + rng.randint(0, 3), "protocol": rng.choice(["TCP", "UDP"])}
                 for n in rng.sample(["http", "dns", "metrics"], rng.randint(1, 3))]
        endpoints = [endpoint(f"10.244.0.{rng.randint(1, 12)}", rng.choice([*nodes, None]),
                              **{c: rng.random() < 0.6 for c in ("ready", "serving", "terminating")
                                 if rng.random() < 0.5})
                     for _ in range(rng.randint(0, 4))]
        obj = endpoint_slice(key.split("/")[1], name, ports, endpoints,
                             address_type="FQDN" if rng.random() < 0.05 else "IPv4")
        if rng.random() < 0.05:
            obj["endpoints"] = [{"addresses": []}]  # malformed
        return obj

    steps: list[tuple[dict[str, dict[str, Any]], str, str | None, Any]] = []
    reused = 0
    last: dict[str, Any] = {}
    for _ in range(300):
        action = rng.random()
        name = rng.choice(names)
        if action < 0.25:
            objects["services"][f"default/{name}"] = new_service(name)
        elif action < 0.35:
            objects["services"].pop(f"default/{name}", None)
        elif action < 0.75:
            key = f"default/{name}-{rng.randint(1, 2)}"
            objects["endpointslices"][key] = new_slice(name, key)
            if rng.random() < 0.5:
                prepare("endpointslices", key, objects["endpointslices"][key])
        elif action < 0.9 and objects["endpointslices"]:
            # an endpoint condition flips: a new dict for the slice, the rest the very same
            key = rng.choice(sorted(objects["endpointslices"]))
            changed = copy.deepcopy(objects["endpointslices"][key])
            for ep in changed.get("endpoints") or []:
                if isinstance(ep, dict) and rng.random() < 0.5:
                    conditions = ep.setdefault("conditions", {})
                    conditions["ready"] = not conditions.get("ready", True)
            objects["endpointslices"][key] = changed
        elif objects["endpointslices"]:
            key = rng.choice(sorted(objects["endpointslices"]))
            del objects["endpointslices"][key]
            if rng.random() < 0.5:
                prepare("endpointslices", key, None)
        node, proxy = rng.choice(nodes) if rng.random() < 0.1 else NODE, "kr" if rng.random() < 0.1 else None
        # the cache's way: a new snapshot mapping, unchanged objects the very same dicts
        frozen = {kind: dict(objs) for kind, objs in objects.items()}
        state = build_desired_state(frozen, node, proxy)
        reused += sum(last.get(p.key) is p for p in state.services)
        last = {p.key: p for p in state.services}
        steps.append((frozen, node, proxy, state))
    assert reused > 100, "the sequence exercised reuse"
    for frozen, node, proxy, state in steps:
        assert build_desired_state(copy.deepcopy(frozen), node, proxy) == state


def test_prepared_slices_are_used_by_the_next_build(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="kr_core.desired")
    web = service("web", HTTP)
    good = endpoint_slice("web-1", "web", [{"name": "http", "port": 8080}], [endpoint("10.244.0.1")])
    bad = endpoint_slice("web-2", "web", [{"name": "http", "port": 8080}], [{"addresses": ["nope"]}])
    fqdn = endpoint_slice("web-3", "web", [{"name": "http", "port": 8080}], [endpoint("10.244.0.3")],
                          address_type="FQDN")
    for key, obj in (("prep/web-1", good), ("prep/web-2", bad), ("prep/web-3", fqdn)):
        prepare("endpointslices", key, obj)

    def count(key: str) -> int:
        return sum(key in r.getMessage() for r in caplog.records)

    assert (count("prep/web-2"), count("prep/web-3")) == (1, 1), "reported when prepared"
    objects = {"services": {"default/web": web},
               "endpointslices": {"prep/web-1": good, "prep/web-2": bad, "prep/web-3": fqdn}}
    (port,) = build_desired_state(objects, NODE).services
    assert [ep.address for ep in port.endpoints] == ["10.244.0.1"]
    assert (count("prep/web-2"), count("prep/web-3")) == (1, 1), "the build used the prepared outcomes"
    # a prepared record of another object under the same key is not used
    prepare("endpointslices", "prep/web-1",
            endpoint_slice("web-1", "web", [{"name": "http", "port": 8080}], [endpoint("10.244.0.9")]))
    moved = endpoint_slice("web-1", "web", [{"name": "http", "port": 8080}], [endpoint("10.244.0.5")])
    objects["endpointslices"]["prep/web-1"] = moved
    (port,) = build_desired_state(objects, NODE).services
    assert [ep.address for ep in port.endpoints] == ["10.244.0.5"]
