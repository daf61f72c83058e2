"""Fault injection and counters, from Python and over the /_kr/ admin endpoints."""

from __future__ import annotations

import json
import logging
import socket
import struct
import threading
import time
import urllib.error
from collections.abc import Callable, Iterator

import pytest
from apiserver_helpers import HOST, WatchReader, admin, wait_for
from kubernetes import client, watch
from kubernetes.client.exceptions import ApiException

from kr_apiserver import APIServer


def test_drop_watches_closes_streams_abruptly(
    core: client.CoreV1Api, server: APIServer, watch_reader: Callable[..., WatchReader]
) -> None:
    pods = watch_reader(core.list_pod_for_all_namespaces, timeout_seconds=30)
    nodes = watch_reader(core.list_node, timeout_seconds=30)
    assert wait_for(lambda: server.stats.open_watches() == 2)

    assert server.faults.drop_watches("pods") == 1
    assert pods.done.wait(3)
    assert pods.error is not None  # the chunked stream ended without its terminating chunk
    assert not nodes.done.is_set()

    assert admin(server.url, "/_kr/faults/drop-watches", {}) == {"dropped": 1}
    assert nodes.done.wait(3) and nodes.error is not None
    assert wait_for(lambda: server.stats.open_watches() == 0)
    assert wait_for(lambda: server.stats.watch_ends("dropped") == 2)


def test_expire_watches_answers_the_next_watches_with_410(core: client.CoreV1Api, server: APIServer) -> None:
    server.faults.expire_watches(count=2, resource="nodes")
    version = core.list_node().metadata.resource_version
    server.store.create("namespaces", {"metadata": {"name": "other-kind"}})
    stream = watch.Watch().stream(core.list_namespace, timeout_seconds=5)  # not targeted
    assert next(stream)["type"] == "ADDED"
    stream.close()
    for _ in range(2):
        with pytest.raises(ApiException) as raised:
            list(watch.Watch().stream(core.list_node, resource_version=version, timeout_seconds=1))
        assert raised.value.status == 410
    # the third nodes watch is healthy again
    core.create_node({"metadata": {"name": "n"}})
    stream = watch.Watch().stream(core.list_node, resource_version=version, timeout_seconds=5)
    assert next(stream)["type"] == "ADDED"
    stream.close()

    admin(server.url, "/_kr/faults/expire-watches", {"count": 1})
    with pytest.raises(ApiException) as raised:
        list(watch.Watch().stream(core.list_namespace, timeout_seconds=1))
    assert raised.value.status == 410


def test_compact_over_http(core: client.CoreV1Api, server: APIServer) -> None:
    old = core.list_node().metadata.resource_version
    core.create_node({"metadata": {"name": "n"}})
    answer = admin(server.url, "/_kr/faults/compact", {})
    assert answer == {"oldestResourceVersion": str(server.store.revision)}
    with pytest.raises(ApiException) as raised:
        list(watch.Watch().stream(core.list_node, resource_version=old, timeout_seconds=1))
    assert raised.value.status == 410


def test_stall_holds_events_and_bookmarks_then_resumes(
    core: client.CoreV1Api, server: APIServer, watch_reader: Callable[..., WatchReader]
) -> None:
    version = core.list_node().metadata.resource_version
    reader = watch_reader(core.list_node, resource_version=version, allow_watch_bookmarks=True, timeout_seconds=30)
    assert reader.next(bookmarks=True)["type"] == "BOOKMARK"  # the stream is live

    admin(server.url, "/_kr/faults/stall-watches", {"seconds": 1.0})
    stalled_at = time.monotonic()
    core.create_node({"metadata": {"name": "n"}})  # writes are not held up by the stall
    assert reader.quiet(0.7)  # neither the event nor bookmarks (every 0.3 s) get through
    event = reader.next(timeout=3)
    assert event["object"]["metadata"]["name"] == "n" and time.monotonic() - stalled_at >= 0.95
    assert reader.next(bookmarks=True)["type"] == "BOOKMARK"


def test_hang_requests_delays_new_requests_of_one_resource(core: client.CoreV1Api, server: APIServer) -> None:
    server.faults.hang_requests(0.5, resource="nodes")
    started = time.monotonic()
    core.list_namespace()
    assert time.monotonic() - started < 0.3
    core.list_node()
    assert time.monotonic() - started >= 0.45


def test_clear_ends_a_hang_at_once(core: client.CoreV1Api, server: APIServer) -> None:
    server.faults.hang_requests(30)
    threading.Timer(0.3, server.faults.clear).start()
    started = time.monotonic()
    core.list_node()
    assert time.monotonic() - started < 3


def test_fail_requests(core: client.CoreV1Api, server: APIServer) -> None:
    server.faults.fail_requests(count=2, code=503, resource="pods", verb="list")
    core.list_node()
    for _ in range(2):
        with pytest.raises(ApiException) as raised:
            core.list_pod_for_all_namespaces()
        assert raised.value.status == 503
        assert json.loads(raised.value.body)["reason"] == "ServiceUnavailable"
    core.list_pod_for_all_namespaces()

    admin(server.url, "/_kr/faults/fail-requests", {"code": 500})
    with pytest.raises(ApiException) as raised:
        core.read_node("anything")
    assert raised.value.status == 500 and json.loads(raised.value.body)["reason"] == "InternalError"
    assert admin(server.url, "/_kr/faults") == {
        "expireWatches": [], "failRequests": [], "stallWatches": {}, "hangRequests": {},
    }


def test_admin_rejects_bad_requests(server: APIServer) -> None:
    for path, body, code in (
        ("/_kr/faults/explode", {}, 404),
        ("/_kr/faults/drop-watches", {"resource": "pod"}, 400),
        ("/_kr/faults/stall-watches", {"secs": 1}, 400),
        ("/_kr/faults/fail-requests", {"code": 200}, 400),
    ):
        with pytest.raises(urllib.error.HTTPError) as raised:
            admin(server.url, path, body)
        assert raised.value.code == code, path
    with pytest.raises(ValueError):
        server.faults.drop_watches("pod")


def test_stats_count_lists_watches_and_open_streams(
    core: client.CoreV1Api, server: APIServer, watch_reader: Callable[..., WatchReader]
) -> None:
    core.list_node()
    core.list_node()
    reader = watch_reader(core.list_node, timeout_seconds=30)
    assert wait_for(lambda: server.stats.open_watches("nodes") == 1)
    assert server.stats.requests("nodes", "list") == 2 and server.stats.requests("nodes", "watch") == 1
    stats = admin(server.url, "/_kr/stats")
    assert stats["requests"]["nodes"] == {"list": 2, "watch": 1}
    assert stats["openWatches"] == {"nodes": 1}
    assert stats["store"]["resourceVersion"] == str(server.store.revision)

    reader.stop()  # the client goes away: the server notices without sending anything
    assert wait_for(lambda: server.stats.open_watches() == 0)
    admin(server.url, "/_kr/stats/reset", {})
    assert server.stats.requests("nodes", "list") == 0


@pytest.fixture
def small_queue_server() -> Iterator[APIServer]:
    with APIServer(HOST, 0, watch_queue_size=5) as running:
        yield running


def test_a_slow_watcher_is_closed_and_never_blocks_writers(small_queue_server: APIServer) -> None:
    server = small_queue_server
    with client.ApiClient(client.Configuration(host=server.url)) as api_client:
        core = client.CoreV1Api(api_client)
        version = core.list_node().metadata.resource_version
        reader = WatchReader(core.list_node, resource_version=version, timeout_seconds=30)
        assert wait_for(lambda: server.stats.open_watches() == 1)
        server.faults.stall_watches(0.5)  # the watcher stops reading
        started = time.monotonic()
        for index in range(20):
            server.store.create("nodes", {"metadata": {"name": f"n{index}"}})
        assert time.monotonic() - started < 0.4
        assert reader.done.wait(3) and reader.error is None  # closed cleanly, so the client resumes
        assert wait_for(lambda: server.stats.watch_ends("overflow") == 1)  # recorded as the server thread ends
        reader.stop()


def test_client_resets_never_crash_the_server(
    server: APIServer, core: client.CoreV1Api, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    for request in (b"GET /api/v1/nodes?watch=1 HTTP/1.1\r\nHost: x\r\n\r\n", b"POST /api/v1/nodes HTTP/1.1\r\n"):
        sock = socket.create_connection((HOST, server.port))
        sock.sendall(request)
        time.sleep(0.1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # close with a RST
        sock.close()
    assert wait_for(lambda: server.stats.open_watches() == 0)
    core.create_node({"metadata": {"name": "after"}})  # the server still serves
    assert [r for r in caplog.records if r.name.startswith("kr_apiserver")] == []


def test_stop_closes_open_watches() -> None:
    server = APIServer(HOST, 0).start()
    with client.ApiClient(client.Configuration(host=server.url)) as api_client:
        reader = WatchReader(client.CoreV1Api(api_client).list_node, timeout_seconds=30)
        assert wait_for(lambda: server.stats.open_watches() == 1)
        server.stop()
        assert reader.done.wait(3) and reader.error is not None
