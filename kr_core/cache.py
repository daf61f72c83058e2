"""The agent's cache of API objects, per kind, fed by the watcher.

Objects are stored as the API sent them (JSON dicts, less what ``kr_core.trim`` drops on arrival) and
are never mutated after insertion, so a snapshot can share them without copying.

Invariants:
- ``replace()`` (a relist) swaps a kind's whole content at once and reports the difference, so a relist
  after 410 Gone never exposes an empty or half-filled kind to a sync;
- an update carrying the resourceVersion already stored is a no-op and reports no change;
- ``snapshot()`` is immutable and consistent across kinds (taken under one lock).
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Mapping
from types import MappingProxyType
from typing import Any

Object = Mapping[str, Any]
Snapshot = Mapping[str, Mapping[str, Object]]
#: (kind, key, old, new) with None meaning absent
CacheChange = tuple[str, str, Object | None, Object | None]


def object_key(obj: Object) -> str:
    """``namespace/name`` for namespaced objects, ``name`` for cluster-scoped ones."""
    meta = obj.get("metadata") or {}
    name = meta.get("name")
    if not name:
        raise ValueError("object has no metadata.name")
    namespace = meta.get("namespace")
    return f"{namespace}/{name}" if namespace else name


def _version(obj: Object) -> str | None:
    return (obj.get("metadata") or {}).get("resourceVersion")


def _same(old: Object, new: Object) -> bool:
    """Equal resourceVersions mean the same object; compare contents only when versions are absent."""
    old_version = _version(old)
    if old_version is not None and _version(new) is not None:
        return old_version == _version(new)
    return old == new


class Cache:
    """Thread-safe store of the watched kinds."""

    def __init__(self, kinds: Iterable[str]) -> None:
        self._lock = threading.Lock()
        self._objects: dict[str, dict[str, Object]] = {kind: {} for kind in kinds}

    @property
    def kinds(self) -> tuple[str, ...]:
        return tuple(self._objects)

    def upsert(self, kind: str, obj: Object) -> CacheChange | None:
        """Add or update one object; return the change, or None when nothing changed."""
        key = object_key(obj)
        with self._lock:
            store = self._objects[kind]
            old = store.get(key)
            if old is not None and _same(old, obj):
                return None
            store[key] = obj
        return (kind, key, old, obj)

    def delete(self, kind: str, obj: Object) -> CacheChange | None:
        """Remove one object; return the change, or None when it was not cached."""
        key = object_key(obj)
        with self._lock:
            old = self._objects[kind].pop(key, None)
        return None if old is None else (kind, key, old, None)

    def replace(self, kind: str, objects: Iterable[Object]) -> list[CacheChange]:
        """Swap in a relisted kind; return every add, update and delete it implies."""
        fresh = {object_key(obj): obj for obj in objects}
        with self._lock:
            old_store = self._objects[kind]
            self._objects[kind] = fresh
        changes: list[CacheChange] = []
        for key, obj in fresh.items():
            old = old_store.get(key)
            if old is None or not _same(old, obj):
                changes.append((kind, key, old, obj))
        changes.extend((kind, key, old, None) for key, old in old_store.items() if key not in fresh)
        return changes

    def snapshot(self) -> Snapshot:
        """An immutable, cross-kind consistent view of the cache."""
        with self._lock:
            return MappingProxyType({kind: MappingProxyType(dict(store)) for kind, store in self._objects.items()})
