"""Change tracker no-op dropping and restore; cache upsert/delete/replace semantics."""

from __future__ import annotations

from kr_core.cache import Cache, object_key
from kr_core.changes import ChangeTracker


def obj(name: str, version: str, namespace: str | None = "default", **extra: object) -> dict:
    meta = {"name": name, "resourceVersion": version}
    if namespace:
        meta["namespace"] = namespace
    return {"metadata": meta, **extra}


def test_object_key() -> None:
    assert object_key(obj("a", "1")) == "default/a"
    assert object_key(obj("n1", "1", namespace=None)) == "n1"


def test_tracker_merges_and_drops_noops() -> None:
    tracker = ChangeTracker(clock=lambda: 5.0)
    a1, a2 = obj("a", "1"), obj("a", "2")
    tracker.record("services", "default/a", None, a1)
    tracker.record("services", "default/a", a1, a2)
    tracker.record("pods", "default/p", None, obj("p", "3"))
    tracker.record("pods", "default/p", obj("p", "3"), None)  # added then deleted: no-op
    assert tracker.pending() == 1
    drained = tracker.drain()
    change = drained.changes["services"]["default/a"]
    assert change.previous is None and change.current == a2
    assert drained.keys("pods") == frozenset()
    assert tracker.pending() == 0 and not tracker.drain()


def test_tracker_restore_merges_with_newer_changes() -> None:
    tracker = ChangeTracker()
    a1, a2, a3 = obj("a", "1"), obj("a", "2"), obj("a", "3")
    tracker.record("services", "default/a", a1, a2)
    drained = tracker.drain()
    tracker.record("services", "default/a", a2, a3)
    tracker.restore(drained)
    change = tracker.drain().changes["services"]["default/a"]
    assert (change.previous, change.current) == (a1, a3)


def test_tracker_restore_of_undone_change_is_noop() -> None:
    tracker = ChangeTracker()
    a1, a2 = obj("a", "1"), obj("a", "2")
    tracker.record("services", "default/a", a1, a2)
    drained = tracker.drain()
    tracker.record("services", "default/a", a2, a1)
    tracker.restore(drained)
    assert tracker.pending() == 0


def test_cache_upsert_same_version_is_noop() -> None:
    cache = Cache(["services"])
    assert cache.upsert("services", obj("a", "1")) is not None
    assert cache.upsert("services", obj("a", "1", spec={"x": 1})) is None
    kind, key, old, new = cache.upsert("services", obj("a", "2"))
    assert (kind, key, old["metadata"]["resourceVersion"], new["metadata"]["resourceVersion"]) == ("services", "default/a", "1", "2")
    assert cache.delete("services", obj("a", "3"))[3] is None
    assert cache.delete("services", obj("a", "3")) is None


def test_cache_replace_reports_diff_and_swaps_atomically() -> None:
    cache = Cache(["pods"])
    cache.upsert("pods", obj("keep", "1"))
    cache.upsert("pods", obj("gone", "2"))
    cache.upsert("pods", obj("changed", "3"))
    before = cache.snapshot()
    changes = cache.replace("pods", [obj("keep", "1"), obj("changed", "9"), obj("new", "10")])
    summary = sorted((key, old is None, new is None) for _, key, old, new in changes)
    assert summary == [("default/changed", False, False), ("default/gone", False, True), ("default/new", True, False)]
    assert set(before["pods"]) == {"default/keep", "default/gone", "default/changed"}, "snapshots are immutable"
    assert set(cache.snapshot()["pods"]) == {"default/keep", "default/changed", "default/new"}
