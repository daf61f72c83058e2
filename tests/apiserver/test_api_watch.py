"""Watch semantics: replay from a resourceVersion, synthetic ADDED, bookmarks, selectors, 410 Expired."""

from __future__ import annotations

import http.client
import json
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
from kubernetes import client, watch
from kubernetes.client.exceptions import ApiException

from kr_apiserver import APIServer

from apiserver_helpers import BOOKMARK_INTERVAL, WatchReader, wait_for


def _raw_watch_lines(server: APIServer, path: str) -> tuple[http.client.HTTPResponse, list[dict[str, Any]]]:
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
    connection.request("GET", path)
    response = connection.getresponse()
    lines = [json.loads(line) for line in response.read().splitlines() if line]
    connection.close()
    return response, lines


def test_watch_from_list_version_sees_later_events_in_order(
    core: client.CoreV1Api, watch_reader: Callable[..., WatchReader], make_pod: Callable[..., Any]
) -> None:
    core.create_namespaced_pod("default", make_pod("a"))
    core.create_namespaced_pod("default", make_pod("b"))
    version = core.list_namespaced_pod("default").metadata.resource_version
    core.create_namespaced_pod("default", make_pod("c"))  # between the list and the watch: replayed
    core.patch_namespaced_pod("a", "default", {"metadata": {"labels": {"x": "1"}}})
    core.delete_namespaced_pod("b", "default")

    reader = watch_reader(core.list_namespaced_pod, "default", resource_version=version, timeout_seconds=10)
    replayed = [reader.next() for _ in range(3)]
    assert [(e["type"], e["object"]["metadata"]["name"]) for e in replayed] == [
        ("ADDED", "c"), ("MODIFIED", "a"), ("DELETED", "b"),
    ]
    core.create_namespaced_pod("default", make_pod("d"))  # live
    live = reader.next()
    assert (live["type"], live["object"]["metadata"]["name"]) == ("ADDED", "d")
    versions = [int(e["object"]["metadata"]["resourceVersion"]) for e in [*replayed, live]]
    assert versions == sorted(versions) and versions[0] > int(version)
    assert replayed[0]["object"]["kind"] == "Pod" and replayed[0]["object"]["apiVersion"] == "v1"


def test_deleted_event_carries_the_final_object_with_a_new_version(
    core: client.CoreV1Api, watch_reader: Callable[..., WatchReader]
) -> None:
    created = core.create_node({"metadata": {"name": "n", "labels": {"a": "1"}}})
    reader = watch_reader(core.list_node, resource_version=created.metadata.resource_version, timeout_seconds=10)
    core.delete_node("n")
    event = reader.next()
    assert event["type"] == "DELETED" and event["object"]["metadata"]["labels"] == {"a": "1"}
    assert int(event["object"]["metadata"]["resourceVersion"]) > int(created.metadata.resource_version)


def test_watch_without_version_starts_with_synthetic_added(
    core: client.CoreV1Api, watch_reader: Callable[..., WatchReader], make_pod: Callable[..., Any]
) -> None:
    for name in ("a", "b"):
        core.create_namespaced_pod("default", make_pod(name))
    reader = watch_reader(core.list_pod_for_all_namespaces, timeout_seconds=10)
    assert sorted(reader.changes(2)) == [("ADDED", "a"), ("ADDED", "b")]
    core.delete_namespaced_pod("a", "default")
    assert reader.changes(1) == [("DELETED", "a")]


def test_resource_version_zero_also_starts_with_synthetic_added(
    core: client.CoreV1Api, watch_reader: Callable[..., WatchReader]
) -> None:
    core.create_namespace({"metadata": {"name": "a"}})
    reader = watch_reader(core.list_namespace, resource_version="0", timeout_seconds=10)
    assert reader.changes(1) == [("ADDED", "a")]


def test_bookmarks_arrive_only_when_allowed(
    core: client.CoreV1Api, server: APIServer, watch_reader: Callable[..., WatchReader]
) -> None:
    core.create_node({"metadata": {"name": "n"}})
    version = core.list_node().metadata.resource_version
    with_bookmarks = watch_reader(core.list_node, resource_version=version, allow_watch_bookmarks=True,
                                  timeout_seconds=10)
    without = watch_reader(core.list_node, resource_version=version, timeout_seconds=10)
    bookmark = with_bookmarks.next(timeout=BOOKMARK_INTERVAL * 5, bookmarks=True)
    assert bookmark == {
        "type": "BOOKMARK",
        "object": {"kind": "Node", "apiVersion": "v1", "metadata": {"resourceVersion": str(server.store.revision)}},
    }
    core.create_node({"metadata": {"name": "m"}})  # bookmarks follow the global resourceVersion
    assert with_bookmarks.next()["object"]["metadata"]["name"] == "m"
    later = with_bookmarks.next(timeout=BOOKMARK_INTERVAL * 5, bookmarks=True)
    assert later["type"] == "BOOKMARK"
    assert later["object"]["metadata"]["resourceVersion"] == str(server.store.revision)
    assert without.next()["object"]["metadata"]["name"] == "m"
    assert without.quiet(BOOKMARK_INTERVAL * 3)


def test_watch_label_selector_turns_relabels_into_added_and_deleted(
    core: client.CoreV1Api, watch_reader: Callable[..., WatchReader], make_pod: Callable[..., Any]
) -> None:
    version = core.list_namespaced_pod("default").metadata.resource_version
    reader = watch_reader(core.list_namespaced_pod, "default", resource_version=version, label_selector="app=web",
                          timeout_seconds=10)
    core.create_namespaced_pod("default", make_pod("in", {"app": "web"}))
    core.create_namespaced_pod("default", make_pod("out", {"app": "db"}))
    core.patch_namespaced_pod("in", "default", {"metadata": {"labels": {"app": "db"}}})  # leaves the selection
    core.patch_namespaced_pod("out", "default", {"metadata": {"labels": {"app": "web"}}})  # enters it
    core.patch_namespaced_pod("out", "default", {"metadata": {"labels": {"extra": "1"}}})
    assert reader.changes(4) == [("ADDED", "in"), ("DELETED", "in"), ("ADDED", "out"), ("MODIFIED", "out")]
    assert reader.quiet(0.3)


def test_watch_namespace_and_field_selector_filters(
    core: client.CoreV1Api, watch_reader: Callable[..., WatchReader], make_pod: Callable[..., Any]
) -> None:
    version = core.list_pod_for_all_namespaces().metadata.resource_version
    in_namespace = watch_reader(core.list_namespaced_pod, "team", resource_version=version, timeout_seconds=10)
    everywhere = watch_reader(core.list_pod_for_all_namespaces, resource_version=version, timeout_seconds=10)
    by_node = watch_reader(core.list_pod_for_all_namespaces, resource_version=version,
                           field_selector="spec.nodeName=node-b", timeout_seconds=10)
    core.create_namespaced_pod("default", make_pod("d1"))
    core.create_namespaced_pod("team", make_pod("t1", node="node-b"))
    assert in_namespace.changes(1) == [("ADDED", "t1")]
    assert everywhere.changes(2) == [("ADDED", "d1"), ("ADDED", "t1")]
    assert by_node.changes(1) == [("ADDED", "t1")]
    assert in_namespace.quiet(0.2) and by_node.quiet(0.2)


@pytest.mark.parametrize("api, list_method, create", [
    (client.CoreV1Api, "list_namespace", lambda api: api.create_namespace({"metadata": {"name": "x"}})),
    (client.CoreV1Api, "list_service_for_all_namespaces",
     lambda api: api.create_namespaced_service("default", {"metadata": {"name": "x"}, "spec": {}})),
    (client.DiscoveryV1Api, "list_endpoint_slice_for_all_namespaces",
     lambda api: api.create_namespaced_endpoint_slice("default", {
         "metadata": {"name": "x"}, "addressType": "IPv4", "endpoints": []})),
    (client.NetworkingV1Api, "list_network_policy_for_all_namespaces",
     lambda api: api.create_namespaced_network_policy("default", {"metadata": {"name": "x"}, "spec": {}})),
])
def test_every_kind_can_be_watched_and_deserialized(
    api_client: client.ApiClient, api: Any, list_method: str, create: Callable[[Any], Any]
) -> None:
    typed_api = api(api_client)
    version = getattr(typed_api, list_method)().metadata.resource_version
    create(typed_api)
    stream = watch.Watch().stream(getattr(typed_api, list_method), resource_version=version, timeout_seconds=5)
    event = next(stream)
    stream.close()
    assert event["type"] == "ADDED" and event["object"].metadata.name == "x"  # a model: it deserialized


def test_old_version_after_compaction_is_410(core: client.CoreV1Api, server: APIServer) -> None:
    old = core.list_node().metadata.resource_version
    core.create_node({"metadata": {"name": "n"}})
    oldest = server.faults.compact()
    with pytest.raises(ApiException) as raised:
        for _ in watch.Watch().stream(core.list_node, resource_version=old, timeout_seconds=5):
            pass
    assert raised.value.status == 410
    # the wire form, as kube-apiserver's watch cache sends it: HTTP 200 and one ERROR event
    response, lines = _raw_watch_lines(server, f"/api/v1/nodes?watch=1&resourceVersion={old}")
    assert response.status == 200 and response.getheader("Transfer-Encoding") == "chunked"
    assert lines == [{"type": "ERROR", "object": {
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": f"too old resource version: {old} ({oldest})", "reason": "Expired", "code": 410,
    }}]
    # the current version is still watchable
    current = core.list_node().metadata.resource_version
    response, lines = _raw_watch_lines(server, f"/api/v1/nodes?watch=1&resourceVersion={current}&timeoutSeconds=1")
    assert response.status == 200 and lines == []


def test_versions_fall_out_of_a_bounded_history(core: client.CoreV1Api, server: APIServer) -> None:
    first = core.list_namespace().metadata.resource_version
    for index in range(60):  # the fixture keeps 50 changes
        server.store.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": f"ns{index}"}})
    with pytest.raises(ApiException) as raised:
        list(watch.Watch().stream(core.list_namespace, resource_version=first, timeout_seconds=2))
    assert raised.value.status == 410
    recent = server.store.revision - 40
    stream = watch.Watch().stream(core.list_namespace, resource_version=str(recent), timeout_seconds=5)
    replayed = [next(stream)["object"].metadata.resource_version for _ in range(40)]
    stream.close()
    assert replayed == [str(version) for version in range(recent + 1, recent + 41)]


def test_timeout_seconds_ends_the_stream_cleanly(core: client.CoreV1Api, server: APIServer) -> None:
    started = time.monotonic()
    assert list(watch.Watch().stream(core.list_node, timeout_seconds=1)) == []
    assert 0.9 <= time.monotonic() - started < 3
    assert wait_for(lambda: server.stats.watch_ends("timeout") == 1)  # the server thread records it after the client sees the end


def test_too_new_resource_version_is_refused(core: client.CoreV1Api, server: APIServer) -> None:
    future = server.store.revision + 100
    with pytest.raises(ApiException) as raised:
        list(watch.Watch().stream(core.list_node, resource_version=str(future), timeout_seconds=2))
    assert raised.value.status == 504


def test_bad_watch_parameters_are_400(server: APIServer) -> None:
    for query in ("resourceVersion=abc", "timeoutSeconds=-1", "labelSelector=a%20in%20b"):
        connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
        connection.request("GET", f"/api/v1/pods?watch=true&{query}")
        response = connection.getresponse()
        assert response.status == 400, query
        assert json.loads(response.read())["reason"] == "BadRequest"
        connection.close()


def test_concurrent_writers_and_watchers_see_every_change_in_order(
    core: client.CoreV1Api, server: APIServer, watch_reader: Callable[..., WatchReader]
) -> None:
    version = core.list_node().metadata.resource_version
    readers = [watch_reader(core.list_node, resource_version=version, timeout_seconds=30) for _ in range(4)]
    deadline = time.monotonic() + 3
    while server.stats.open_watches() < len(readers) and time.monotonic() < deadline:
        time.sleep(0.02)

    def write(prefix: str) -> None:
        for index in range(25):
            if prefix == "http":
                core.create_node({"metadata": {"name": f"{prefix}-{index}"}})
            else:
                server.store.create("nodes", {"metadata": {"name": f"{prefix}-{index}"}})

    writers = [threading.Thread(target=write, args=(prefix,)) for prefix in ("http", "store-a", "store-b", "store-c")]
    for writer in writers:
        writer.start()
    for writer in writers:
        writer.join()
    for reader in readers:
        events = [reader.next() for _ in range(100)]
        versions = [int(e["object"]["metadata"]["resourceVersion"]) for e in events]
        assert versions == sorted(versions) and len(set(versions)) == 100
        assert {e["object"]["metadata"]["name"] for e in events} == {
            f"{prefix}-{index}" for prefix in ("http", "store-a", "store-b", "store-c") for index in range(25)
        }
