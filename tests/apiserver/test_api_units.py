"""Pure parts of kr_apiserver: selectors, patches, routes, the YAML loader, the store's history."""

from __future__ import annotations

from pathlib import Path

import pytest

from kr_apiserver import load_objects
from kr_apiserver.patch import json_patch, merge_patch
from kr_apiserver.resources import BY_PLURAL
from kr_apiserver.routes import Route, parse
from kr_apiserver.selectors import ObjectFilter, parse_label_selector
from kr_apiserver.status import APIError
from kr_apiserver.store import Store


@pytest.mark.parametrize("selector, labels, expected", [
    ("", {}, True),
    ("a=1", {"a": "1"}, True),
    ("a=1", {}, False),
    ("a!=1", {}, True),
    ("a in (1, 2)", {"a": "2"}, True),
    ("a notin (1,2)", {"a": "3"}, True),
    ("a notin (1,2)", {}, True),
    ("a,!b", {"a": "x"}, True),
    ("a,!b", {"a": "x", "b": "y"}, False),
    ("example.com/role=edge, a in (x)", {"example.com/role": "edge", "a": "x"}, True),
])
def test_label_selector(selector: str, labels: dict[str, str], expected: bool) -> None:
    requirements = parse_label_selector(selector)
    assert all(r.matches(labels) for r in requirements) is expected


@pytest.mark.parametrize("selector", ["a in b", "a=(1)", "=1", "a==b==c"])
def test_bad_label_selectors_are_400(selector: str) -> None:
    with pytest.raises(APIError) as raised:
        parse_label_selector(selector)
    assert raised.value.code == 400


def test_field_selector_compares_strings() -> None:
    pods = BY_PLURAL["pods"]
    obj = {"metadata": {"name": "p", "namespace": "ns"}, "spec": {"hostNetwork": True}}
    assert ObjectFilter.parse(pods, None, "", "spec.hostNetwork=true,metadata.name=p").matches(obj)
    assert not ObjectFilter.parse(pods, None, "", "spec.nodeName!=").matches(obj)


def test_merge_patch_rfc7386() -> None:
    target = {"a": "b", "c": {"d": "e", "f": "g"}, "l": [1, 2]}
    assert merge_patch(target, {"a": "z", "c": {"f": None}, "l": [3]}) == {"a": "z", "c": {"d": "e"}, "l": [3]}
    assert target["c"] == {"d": "e", "f": "g"}  # never mutated


def test_json_patch_rfc6902() -> None:
    target = {"a": {"b": [1, 2]}, "x/y": 1}
    patched = json_patch(target, [
        {"op": "add", "path": "/a/b/0", "value": 0},
        {"op": "copy", "from": "/a/b", "path": "/c"},
        {"op": "move", "from": "/x~1y", "path": "/moved"},
        {"op": "replace", "path": "/a/b/1", "value": 10},
        {"op": "remove", "path": "/a/b/2"},
        {"op": "test", "path": "/c", "value": [0, 1, 2]},
    ])
    assert patched == {"a": {"b": [0, 10]}, "c": [0, 1, 2], "moved": 1}
    assert target == {"a": {"b": [1, 2]}, "x/y": 1}
    for operations in ([{"op": "remove", "path": "/missing"}], [{"op": "replace", "path": "/a/b/5", "value": 1}]):
        with pytest.raises(APIError) as raised:
            json_patch(target, operations)
        assert raised.value.code == 422


@pytest.mark.parametrize("path, expected", [
    ("/api/v1/pods", Route(BY_PLURAL["pods"], None, None)),
    ("/api/v1/namespaces/ns/pods/p/status", Route(BY_PLURAL["pods"], "ns", "p", "status")),
    ("/api/v1/namespaces", Route(BY_PLURAL["namespaces"], None, None)),
    ("/api/v1/namespaces/ns", Route(BY_PLURAL["namespaces"], None, "ns")),
    ("/api/v1/namespaces/ns/status", Route(BY_PLURAL["namespaces"], None, "ns", "status")),
    ("/api/v1/nodes/n/status", Route(BY_PLURAL["nodes"], None, "n", "status")),
    ("/apis/discovery.k8s.io/v1/namespaces/ns/endpointslices", Route(BY_PLURAL["endpointslices"], "ns", None)),
    ("/apis/networking.k8s.io/v1/networkpolicies", Route(BY_PLURAL["networkpolicies"], None, None)),
    ("/api/v1/pods/p", None),  # a namespaced object needs its namespace
    ("/api/v1/namespaces/ns/networkpolicies", None),  # wrong group
    ("/apis/discovery.k8s.io/v1/namespaces/ns/endpointslices/e/status", None),  # no such subresource
    ("/api/v1/namespaces/ns/pods/p/log", None),
    ("/api/v2/pods", None),
])
def test_routes(path: str, expected: Route | None) -> None:
    assert parse(path) == expected


def test_loader_flattens_lists(tmp_path: Path) -> None:
    path = tmp_path / "objects.json"
    path.write_text('{"kind": "PodList", "apiVersion": "v1", "items": [{"metadata": {"name": "p"}}]}')
    assert load_objects(path) == [{"kind": "Pod", "apiVersion": "v1", "metadata": {"name": "p"}}]


def test_history_window_and_compaction() -> None:
    store = Store(history=3)
    start = store.revision
    for index in range(5):
        store.create("nodes", {"metadata": {"name": f"n{index}"}})
    assert store.revision == start + 5 and store.oldest == start + 2
    with pytest.raises(APIError) as raised:
        store.watch("nodes", ObjectFilter(), start + 1)
    assert raised.value.code == 410 and raised.value.message == f"too old resource version: {start + 1} ({start + 2})"
    replay = store.watch("nodes", ObjectFilter(), start + 2)
    assert [replay.next(0)[1]["metadata"]["name"] for _ in range(3)] == ["n2", "n3", "n4"]
    assert store.compact() == store.revision == store.oldest
