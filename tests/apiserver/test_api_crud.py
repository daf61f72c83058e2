"""CRUD, errors, selectors, subresources and discovery, through the official kubernetes client."""

from __future__ import annotations

import dataclasses
import json
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from kr_apiserver import APIServer


@dataclasses.dataclass(frozen=True)
class Kind:
    api: Callable[[client.ApiClient], Any]
    suffix: str  # method suffix: create_{suffix}, read_{suffix}, ...
    namespaced: bool
    body: dict[str, Any]
    all_namespaces: str = ""  # list method across namespaces


KINDS = {
    "namespaces": Kind(client.CoreV1Api, "namespace", False, {"metadata": {"name": "team-a"}}),
    "nodes": Kind(client.CoreV1Api, "node", False, {
        "metadata": {"name": "node-a"}, "spec": {"podCIDR": "10.244.1.0/24"},
    }),
    "pods": Kind(client.CoreV1Api, "namespaced_pod", True, {
        "metadata": {"name": "web-1"}, "spec": {"containers": [{"name": "c", "image": "busybox"}]},
    }, "list_pod_for_all_namespaces"),
    "services": Kind(client.CoreV1Api, "namespaced_service", True, {
        "metadata": {"name": "web"}, "spec": {"clusterIP": "10.96.0.10", "ports": [{"port": 80, "protocol": "TCP"}]},
    }, "list_service_for_all_namespaces"),
    "endpointslices": Kind(client.DiscoveryV1Api, "namespaced_endpoint_slice", True, {
        "metadata": {"name": "web-abc", "labels": {"kubernetes.io/service-name": "web"}},
        "addressType": "IPv4",
        "endpoints": [{"addresses": ["10.244.1.5"], "conditions": {"ready": True}}],
        "ports": [{"port": 8080, "protocol": "TCP"}],
    }, "list_endpoint_slice_for_all_namespaces"),
    "networkpolicies": Kind(client.NetworkingV1Api, "namespaced_network_policy", True, {
        "metadata": {"name": "deny-all"}, "spec": {"podSelector": {}, "policyTypes": ["Ingress"]},
    }, "list_network_policy_for_all_namespaces"),
}


def _call(api: Any, verb: str, kind: Kind, **kwargs: Any) -> Any:
    if kind.namespaced:
        kwargs["namespace"] = "default"
    return getattr(api, f"{verb}_{kind.suffix}")(**kwargs)


def _status(exc: ApiException) -> dict[str, Any]:
    return json.loads(exc.body)


@pytest.mark.parametrize("plural", KINDS)
def test_crud_round_trip(plural: str, api_client: client.ApiClient) -> None:
    kind = KINDS[plural]
    api = kind.api(api_client)
    name = kind.body["metadata"]["name"]

    created = _call(api, "create", kind, body=kind.body)
    assert created.metadata.uid and created.metadata.creation_timestamp
    first_version = int(created.metadata.resource_version)

    read = _call(api, "read", kind, name=name)
    assert read.metadata.uid == created.metadata.uid
    assert [item.metadata.name for item in _call(api, "list", kind).items] == [name]
    if kind.all_namespaces:
        assert [item.metadata.name for item in getattr(api, kind.all_namespaces)().items] == [name]

    body = api_client.sanitize_for_serialization(read)
    body["metadata"]["labels"] = {**(body["metadata"].get("labels") or {}), "version": "2"}
    replaced = _call(api, "replace", kind, name=name, body=body)
    assert int(replaced.metadata.resource_version) > first_version
    assert replaced.metadata.labels["version"] == "2"

    patched = _call(api, "patch", kind, name=name, body={"metadata": {"annotations": {"note": "x"}}})
    assert patched.metadata.annotations == {"note": "x"} and patched.metadata.labels["version"] == "2"

    _call(api, "delete", kind, name=name)
    with pytest.raises(ApiException) as raised:
        _call(api, "read", kind, name=name)
    assert raised.value.status == 404


def test_objects_get_server_fields_and_one_global_resource_version(
    core: client.CoreV1Api, networking: client.NetworkingV1Api, server: APIServer
) -> None:
    versions = [
        int(core.create_namespace({"metadata": {"name": "a"}}).metadata.resource_version),
        int(core.create_node({"metadata": {"name": "n"}}).metadata.resource_version),
        int(networking.create_namespaced_network_policy(
            "a", {"metadata": {"name": "p"}, "spec": {"podSelector": {}}}).metadata.resource_version),
    ]
    assert versions == sorted(versions) and len(set(versions)) == 3
    assert server.store.revision == versions[-1]
    policy = networking.read_namespaced_network_policy("p", "a")
    assert policy.metadata.generation == 1 and policy.kind == "NetworkPolicy"
    assert policy.api_version == "networking.k8s.io/v1"


def test_list_response_shape(core: client.CoreV1Api, server: APIServer, make_pod: Callable[..., Any]) -> None:
    core.create_namespaced_pod("default", make_pod("p1"))
    response = core.list_pod_for_all_namespaces(_preload_content=False)
    body = json.loads(response.data)
    assert body["kind"] == "PodList" and body["apiVersion"] == "v1"
    assert body["metadata"]["resourceVersion"] == str(server.store.revision)
    # as kube-apiserver: list items carry no kind/apiVersion, single reads do
    assert "kind" not in body["items"][0]
    assert json.loads(core.read_namespaced_pod("p1", "default", _preload_content=False).data)["kind"] == "Pod"


def test_already_exists_and_not_found_are_kubernetes_statuses(core: client.CoreV1Api) -> None:
    core.create_namespace({"metadata": {"name": "a"}})
    with pytest.raises(ApiException) as raised:
        core.create_namespace({"metadata": {"name": "a"}})
    assert raised.value.status == 409
    assert _status(raised.value) == {
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": 'namespaces "a" already exists', "reason": "AlreadyExists",
        "details": {"name": "a", "kind": "namespaces"}, "code": 409,
    }
    with pytest.raises(ApiException) as raised:
        client.DiscoveryV1Api(core.api_client).read_namespaced_endpoint_slice("missing", "default")
    assert raised.value.status == 404
    status = _status(raised.value)
    assert status["reason"] == "NotFound"
    assert status["message"] == 'endpointslices.discovery.k8s.io "missing" not found'
    assert status["details"] == {"name": "missing", "group": "discovery.k8s.io", "kind": "endpointslices"}


def test_replace_with_stale_resource_version_conflicts(core: client.CoreV1Api) -> None:
    created = core.create_node({"metadata": {"name": "n", "labels": {"a": "1"}}})
    stale = core.api_client.sanitize_for_serialization(created)
    core.patch_node("n", {"metadata": {"labels": {"a": "2"}}})
    with pytest.raises(ApiException) as raised:
        core.replace_node("n", stale)
    assert raised.value.status == 409 and _status(raised.value)["reason"] == "Conflict"
    assert "the object has been modified" in _status(raised.value)["message"]
    del stale["metadata"]["resourceVersion"]  # no resourceVersion: an unconditional update
    assert core.replace_node("n", stale).metadata.labels == {"a": "1"}


def test_update_that_changes_nothing_commits_nothing(core: client.CoreV1Api, server: APIServer) -> None:
    created = core.create_node({"metadata": {"name": "n", "labels": {"a": "1"}}})
    before = server.store.revision
    patched = core.patch_node("n", {"metadata": {"labels": {"a": "1"}}})
    assert patched.metadata.resource_version == created.metadata.resource_version
    assert server.store.revision == before


def test_generation_follows_spec_not_metadata(core: client.CoreV1Api) -> None:
    core.create_namespaced_service("default", {"metadata": {"name": "s"}, "spec": {"ports": [{"port": 80}]}})
    assert core.patch_namespaced_service("s", "default", {"metadata": {"labels": {"x": "y"}}}).metadata.generation == 1
    changed = core.patch_namespaced_service("s", "default", {"spec": {"ports": [{"port": 81}]}})
    assert changed.metadata.generation == 2


def test_pod_status_subresource(core: client.CoreV1Api, make_pod: Callable[..., Any]) -> None:
    core.create_namespaced_pod("default", make_pod("p"))
    body = core.api_client.sanitize_for_serialization(core.read_namespaced_pod("p", "default"))
    body["status"] = {"phase": "Running", "podIP": "10.244.1.7"}
    body["spec"]["nodeName"] = "ignored-by-status"
    updated = core.replace_namespaced_pod_status("p", "default", body)
    assert updated.status.phase == "Running" and updated.spec.node_name == "node-a"

    body = core.api_client.sanitize_for_serialization(updated)
    body["status"] = {"phase": "Failed"}  # the main resource ignores .status
    body["metadata"]["labels"] = {"l": "1"}
    updated = core.replace_namespaced_pod("p", "default", body)
    assert updated.status.phase == "Running" and updated.metadata.labels == {"l": "1"}

    patched = core.patch_namespaced_pod_status("p", "default", {"status": {"podIP": "10.244.1.8"}})
    assert patched.status.pod_ip == "10.244.1.8" and patched.status.phase == "Running"
    assert core.read_namespaced_pod_status("p", "default").status.pod_ip == "10.244.1.8"


def test_node_status_subresource(core: client.CoreV1Api) -> None:
    core.create_node({"metadata": {"name": "n"}, "spec": {"podCIDR": "10.244.0.0/24"}})
    conditions = [{"type": "Ready", "status": "True"}]
    patched = core.patch_node_status("n", {"status": {"addresses": [{"type": "InternalIP", "address": "10.0.0.1"}],
                                                     "conditions": conditions}, "spec": {"podCIDR": "ignored"}})
    assert patched.status.addresses[0].address == "10.0.0.1" and patched.spec.pod_cidr == "10.244.0.0/24"
    assert core.read_node_status("n").status.conditions[0].type == "Ready"


def test_patch_types(core: client.CoreV1Api) -> None:
    core.create_node({"metadata": {"name": "n", "labels": {"a": "1", "b": "2"}}})
    # a dict body is sent as a strategic merge patch; null deletes
    assert core.patch_node("n", {"metadata": {"labels": {"b": None, "c": "3"}}}).metadata.labels == {"a": "1", "c": "3"}
    merged = core.patch_node("n", {"metadata": {"labels": {"d": "4"}}}, _content_type="application/merge-patch+json")
    assert merged.metadata.labels == {"a": "1", "c": "3", "d": "4"}
    # a list body is sent as a JSON patch
    patched = core.patch_node("n", [
        {"op": "test", "path": "/metadata/labels/a", "value": "1"},
        {"op": "remove", "path": "/metadata/labels/a"},
        {"op": "replace", "path": "/metadata/labels/c", "value": "30"},
        {"op": "add", "path": "/spec", "value": {"taints": [{"key": "k", "effect": "NoSchedule"}]}},
        {"op": "add", "path": "/spec/taints/-", "value": {"key": "k2", "effect": "NoExecute"}},
    ])
    assert patched.metadata.labels == {"c": "30", "d": "4"}
    assert [t.key for t in patched.spec.taints] == ["k", "k2"]
    with pytest.raises(ApiException) as raised:
        core.patch_node("n", [{"op": "test", "path": "/metadata/labels/c", "value": "nope"}])
    assert raised.value.status == 422
    with pytest.raises(ApiException) as raised:
        core.patch_node("n", {"kind": "Node"}, _content_type="application/apply-patch+yaml")
    assert raised.value.status == 415


def test_patch_with_stale_resource_version_conflicts(core: client.CoreV1Api) -> None:
    created = core.create_node({"metadata": {"name": "n"}})
    core.patch_node("n", {"metadata": {"labels": {"a": "1"}}})
    with pytest.raises(ApiException) as raised:
        core.patch_node("n", {"metadata": {"resourceVersion": created.metadata.resource_version, "labels": {"b": "2"}}})
    assert raised.value.status == 409


def test_delete_answers_as_the_real_registry(core: client.CoreV1Api, make_pod: Callable[..., Any]) -> None:
    core.create_namespaced_pod("default", make_pod("p"))
    deleted = core.delete_namespaced_pod("p", "default")
    assert isinstance(deleted, client.V1Pod) and deleted.metadata.name == "p"
    core.create_node({"metadata": {"name": "n"}})
    status = json.loads(core.delete_node("n", _preload_content=False).data)
    assert status["kind"] == "Status" and status["status"] == "Success"
    assert status["details"]["name"] == "n" and status["details"]["kind"] == "nodes"


def test_delete_preconditions(core: client.CoreV1Api) -> None:
    created = core.create_node({"metadata": {"name": "n"}})
    with pytest.raises(ApiException) as raised:
        core.delete_node("n", body={"preconditions": {"uid": "not-the-uid"}})
    assert raised.value.status == 409
    core.delete_node("n", body={"preconditions": {"uid": created.metadata.uid}})


def test_deleting_a_namespace_deletes_its_objects(
    core: client.CoreV1Api, networking: client.NetworkingV1Api, make_pod: Callable[..., Any]
) -> None:
    core.create_namespace({"metadata": {"name": "gone"}})
    core.create_namespaced_pod("gone", make_pod("p"))
    networking.create_namespaced_network_policy("gone", {"metadata": {"name": "np"}, "spec": {"podSelector": {}}})
    core.create_namespaced_pod("default", make_pod("kept"))
    core.delete_namespace("gone")
    assert [p.metadata.name for p in core.list_pod_for_all_namespaces().items] == ["kept"]
    assert networking.list_network_policy_for_all_namespaces().items == []


def test_delete_collection(core: client.CoreV1Api, make_pod: Callable[..., Any]) -> None:
    for name, app in (("a", "x"), ("b", "x"), ("c", "y")):
        core.create_namespaced_pod("default", make_pod(name, {"app": app}))
    core.delete_collection_namespaced_pod("default", label_selector="app=x")
    assert [p.metadata.name for p in core.list_namespaced_pod("default").items] == ["c"]


def test_label_selectors_on_list(core: client.CoreV1Api, make_pod: Callable[..., Any]) -> None:
    core.create_namespaced_pod("default", make_pod("a", {"app": "web", "tier": "front"}))
    core.create_namespaced_pod("default", make_pod("b", {"app": "db"}))
    core.create_namespaced_pod("default", make_pod("c", {}))

    def names(selector: str) -> list[str]:
        return [p.metadata.name for p in core.list_namespaced_pod("default", label_selector=selector).items]

    assert names("app=web") == ["a"]
    assert names("app==web") == ["a"]
    assert names("app!=web") == ["b", "c"]
    assert names("app in (web, db)") == ["a", "b"]
    assert names("app notin (web)") == ["b", "c"]
    assert names("tier") == ["a"]
    assert names("!tier") == ["b", "c"]
    assert names("app,!tier") == ["b"]
    assert names("app in (web,db),tier=front") == ["a"]
    with pytest.raises(ApiException) as raised:
        core.list_namespaced_pod("default", label_selector="app in web")
    assert raised.value.status == 400


def test_field_selectors_on_list(core: client.CoreV1Api, make_pod: Callable[..., Any]) -> None:
    core.create_namespaced_pod("default", make_pod("a", node="node-a"))
    core.create_namespaced_pod("default", make_pod("b", node="node-b"))
    core.create_namespaced_pod("other", make_pod("c", node="node-a"))  # a missing namespace is allowed

    def names(selector: str) -> list[str]:
        return [p.metadata.name for p in core.list_pod_for_all_namespaces(field_selector=selector).items]

    assert names("metadata.name=b") == ["b"]
    assert names("metadata.namespace=other") == ["c"]
    assert names("spec.nodeName=node-a") == ["a", "c"]
    assert names("spec.nodeName!=node-a,metadata.namespace=default") == ["b"]
    with pytest.raises(ApiException) as raised:
        names("spec.containers=x")
    assert raised.value.status == 400 and "field label not supported" in _status(raised.value)["message"]


def test_create_checks_namespace_and_name(core: client.CoreV1Api, make_pod: Callable[..., Any]) -> None:
    wrong = make_pod("p")
    wrong["metadata"]["namespace"] = "other"
    with pytest.raises(ApiException) as raised:
        core.create_namespaced_pod("default", wrong)
    assert raised.value.status == 400
    with pytest.raises(ApiException) as raised:
        core.create_node({"metadata": {}})
    assert raised.value.status == 422
    generated = core.create_node({"metadata": {"generateName": "worker-"}})
    assert generated.metadata.name.startswith("worker-") and len(generated.metadata.name) == len("worker-") + 5


def test_discovery(api_client: client.ApiClient, server: APIServer) -> None:
    assert client.VersionApi(api_client).get_code().major == "1"
    assert client.CoreApi(api_client).get_api_versions().versions == ["v1"]
    groups = {g.name for g in client.ApisApi(api_client).get_api_versions().groups}
    assert groups == {"discovery.k8s.io", "networking.k8s.io"}
    assert client.DiscoveryApi(api_client).get_api_group().preferred_version.group_version == "discovery.k8s.io/v1"
    core = {r.name: r for r in client.CoreV1Api(api_client).get_api_resources().resources}
    assert {"pods", "pods/status", "nodes", "nodes/status", "services", "namespaces"} <= set(core)
    assert core["pods"].namespaced and not core["nodes"].namespaced and "watch" in core["pods"].verbs
    assert [r.kind for r in client.DiscoveryV1Api(api_client).get_api_resources().resources] == ["EndpointSlice"]
    assert [r.name for r in client.NetworkingV1Api(api_client).get_api_resources().resources] == ["networkpolicies"]


def test_unknown_paths_and_methods(server: APIServer) -> None:
    for method, path, code in (
        ("GET", "/api/v1/configmaps", 404),
        ("GET", "/apis/apps/v1/deployments", 404),
        ("GET", "/api/v1/nodes/n/proxy", 404),
        ("POST", "/api/v1/pods", 405),  # creating needs a namespace in the path
        ("PUT", "/api/v1/namespaces/default/pods", 405),
    ):
        request = urllib.request.Request(server.url + path, method=method, data=b"{}" if method != "GET" else None)
        with pytest.raises(urllib.error.HTTPError) as raised:
            urllib.request.urlopen(request, timeout=5)
        assert raised.value.code == code, (method, path)
        assert json.load(raised.value)["kind"] == "Status"


def test_store_apply_creates_then_replaces(server: APIServer, core: client.CoreV1Api) -> None:
    server.store.apply({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "s", "resourceVersion": "99"},
                        "spec": {"ports": [{"port": 80}]}})
    server.store.apply({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "s"},
                        "spec": {"ports": [{"port": 81}]}})
    assert core.read_namespaced_service("s", "default").spec.ports[0].port == 81
    with pytest.raises(ValueError):
        server.store.apply({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "d"}})


def test_lists_come_in_consistent_pages(core: client.CoreV1Api, server: APIServer,
                                        make_pod: Callable[..., Any]) -> None:
    """``limit``/``continue`` as kube-apiserver serves them: every page is read at the first page's
    revision, ``remainingItemCount`` counts what is left, and a compaction expires the token (410)."""
    for i in range(7):
        core.create_namespaced_pod("default", make_pod(f"p{i}"))
    first = core.list_pod_for_all_namespaces(limit=3)
    assert [p.metadata.name for p in first.items] == ["p0", "p1", "p2"]
    assert first.metadata.remaining_item_count == 4 and first.metadata._continue
    revision = first.metadata.resource_version
    core.delete_namespaced_pod("p4", "default")  # after the first page: the list still shows it
    core.create_namespaced_pod("default", make_pod("p9"))  # and does not show this
    second = core.list_pod_for_all_namespaces(limit=3, _continue=first.metadata._continue)
    assert [p.metadata.name for p in second.items] == ["p3", "p4", "p5"]
    assert second.metadata.resource_version == revision and second.metadata.remaining_item_count == 1
    last = core.list_pod_for_all_namespaces(limit=3, _continue=second.metadata._continue)
    assert [p.metadata.name for p in last.items] == ["p6"] and not last.metadata._continue
    with pytest.raises(ApiException) as gone:  # the finished list is forgotten
        core.list_pod_for_all_namespaces(limit=3, _continue=second.metadata._continue)
    assert gone.value.status == 410 and _status(gone.value)["reason"] == "Expired"
    # a whole list in one page has no token; a compaction expires a list in progress
    whole = core.list_pod_for_all_namespaces(limit=100)
    assert len(whole.items) == 7 and not whole.metadata._continue
    started = core.list_pod_for_all_namespaces(limit=2)
    server.faults.compact()
    with pytest.raises(ApiException) as compacted:
        core.list_pod_for_all_namespaces(limit=2, _continue=started.metadata._continue)
    assert compacted.value.status == 410
    with pytest.raises(ApiException) as bad:
        core.list_pod_for_all_namespaces(limit=2, _continue="not-a-token")
    assert bad.value.status == 400
