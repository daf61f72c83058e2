"""Fixtures for the kr_apiserver tests: a server on 127.0.0.1 (ephemeral port), official-client APIs,
and background watch readers (helpers the tests import live in ``apiserver_helpers``).

Every fixture tears down what it started even when the test fails: watch readers are stopped before
the server, and the server stops (closing every connection) last.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from apiserver_helpers import BOOKMARK_INTERVAL, HOST, WatchReader, pod
from kubernetes import client

from kr_apiserver import APIServer


@pytest.fixture
def server() -> Iterator[APIServer]:
    with APIServer(HOST, 0, history=50, bookmark_interval=BOOKMARK_INTERVAL) as running:
        yield running


@pytest.fixture
def api_client(server: APIServer) -> Iterator[client.ApiClient]:
    with client.ApiClient(client.Configuration(host=server.url)) as api:
        yield api


@pytest.fixture
def core(api_client: client.ApiClient) -> client.CoreV1Api:
    return client.CoreV1Api(api_client)


@pytest.fixture
def networking(api_client: client.ApiClient) -> client.NetworkingV1Api:
    return client.NetworkingV1Api(api_client)


@pytest.fixture
def watch_reader(server: APIServer) -> Iterator[Callable[..., WatchReader]]:
    readers: list[WatchReader] = []

    def start(func: Callable[..., Any], *args: Any, **kwargs: Any) -> WatchReader:
        readers.append(WatchReader(func, *args, **kwargs))
        return readers[-1]

    yield start
    for reader in readers:
        reader.stop()


@pytest.fixture
def make_pod() -> Callable[..., dict[str, Any]]:
    return pod
