"""kr's watcher lists in pages against the stand-in: every object arrives, trimmed, in ``ceil(n / page)``
requests at one resourceVersion, and a continue token that expires midway starts the list again."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from kubernetes import client

from kr_apiserver import APIServer
from kr_core.cache import Cache
from kr_core.watcher import KindWatcher, WatchSettings


def listed(server: APIServer, api_client: client.ApiClient, page_size: int,
           between_pages: Callable[[int], None] = lambda page: None) -> tuple[Cache, list[str]]:
    """Run a pods watcher until its first list is in the cache; returns the cache and the continue token
    of each list request ("" for a first page)."""
    cache, synced, pages = Cache(["pods"]), threading.Event(), []
    watcher = KindWatcher("pods", api_client, cache, lambda change: None, lambda kind: synced.set(),
                          WatchSettings(page_size=page_size))
    list_pods = watcher._list

    def counting(**kwargs: Any) -> Any:
        if not kwargs.get("watch"):
            between_pages(len(pages))
            pages.append(str(kwargs.get("_continue", "")))
        return list_pods(**kwargs)

    watcher._list = counting  # type: ignore[method-assign]
    watcher.start()
    try:
        assert synced.wait(10)
    finally:
        watcher.stop()
    return cache, pages


def test_the_first_list_comes_in_pages_and_is_trimmed(
    server: APIServer, api_client: client.ApiClient, core: client.CoreV1Api, make_pod: Callable[..., Any]
) -> None:
    for i in range(10):
        body = make_pod(f"p{i}")
        body["metadata"]["annotations"] = {"kubectl.kubernetes.io/last-applied-configuration": "{}"}
        core.create_namespaced_pod("default", body)
    lists_before = server.stats.requests("pods", "list")
    cache, pages = listed(server, api_client, page_size=3)
    objects = cache.snapshot()["pods"]
    assert sorted(objects) == [f"default/p{i}" for i in range(10)]
    assert server.stats.requests("pods", "list") - lists_before == 4 and pages[0] == "" and all(pages[1:])
    assert all("last-applied" not in str(o["metadata"].get("annotations")) for o in objects.values())
    assert all(o["kind"] == "Pod" for o in objects.values())
    # without paging: one request
    _, whole = listed(server, api_client, page_size=0)
    assert whole == [""]


def test_an_expired_continue_token_starts_the_list_again(
    server: APIServer, api_client: client.ApiClient, core: client.CoreV1Api, make_pod: Callable[..., Any]
) -> None:
    for i in range(5):
        core.create_namespaced_pod("default", make_pod(f"p{i}"))

    def compact_once(page: int) -> None:
        if page == 1:  # before the second page: the first page's list is forgotten
            core.create_namespaced_pod("default", make_pod("late"))
            server.faults.compact()

    cache, pages = listed(server, api_client, page_size=2, between_pages=compact_once)
    assert sorted(cache.snapshot()["pods"]) == sorted([f"default/p{i}" for i in range(5)] + ["default/late"])
    assert pages[0] == "" and pages[1] != "" and pages[2] == ""  # 410 on the token, then from the start
