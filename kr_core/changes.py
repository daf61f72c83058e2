"""Change tracking between syncs, in the manner of kube-proxy's ServiceChangeTracker.

For every key that changed since the last drained sync, the tracker keeps the object as it was at the
last sync (``previous``) and as it is now (``current``), plus when the first change was seen.

Invariants:
- a key whose object went back to what it was at the last sync (an add then a delete, an update undone)
  is dropped, so it never triggers work;
- ``drain()`` hands over everything recorded so far atomically and starts a new epoch; ``restore()``
  puts a drained set back (merging with newer changes) when the sync that took it failed.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable, Mapping
from types import MappingProxyType

from kr_core.cache import Object


@dataclasses.dataclass(frozen=True, slots=True)
class Change:
    """One key's change since the last sync: ``None`` means absent."""

    previous: Object | None
    current: Object | None
    first_seen: float


@dataclasses.dataclass(frozen=True, slots=True)
class ChangeSet:
    """What changed since the last successful sync: kind -> key -> Change. A hint for partial syncs."""

    changes: Mapping[str, Mapping[str, Change]] = dataclasses.field(default_factory=lambda: MappingProxyType({}))

    def keys(self, kind: str) -> frozenset[str]:
        """The changed keys of ``kind``."""
        return frozenset(self.changes.get(kind, {}))

    def count(self, kind: str | None = None) -> int:
        """How many keys changed, for one kind or in all."""
        if kind is not None:
            return len(self.changes.get(kind, {}))
        return sum(len(per_kind) for per_kind in self.changes.values())

    def __bool__(self) -> bool:
        return self.count() > 0


class ChangeTracker:
    """Accumulates per-key changes from the watcher; thread-safe."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._pending: dict[str, dict[str, Change]] = {}

    def record(self, kind: str, key: str, old: Object | None, new: Object | None) -> None:
        """Note that ``key`` went from ``old`` to ``new``."""
        with self._lock:
            self._merge(kind, key, Change(old, new, self._clock()))

    def _merge(self, kind: str, key: str, change: Change) -> None:
        per_kind = self._pending.setdefault(kind, {})
        earlier = per_kind.get(key)
        if earlier is not None:
            change = Change(earlier.previous, change.current, min(earlier.first_seen, change.first_seen))
        if change.previous == change.current:
            per_kind.pop(key, None)
        else:
            per_kind[key] = change

    def pending(self, kind: str | None = None) -> int:
        """How many keys have changed since the last drain."""
        with self._lock:
            if kind is not None:
                return len(self._pending.get(kind, {}))
            return sum(len(per_kind) for per_kind in self._pending.values())

    def drain(self) -> ChangeSet:
        """Take everything recorded so far."""
        with self._lock:
            pending, self._pending = self._pending, {}
        return ChangeSet(MappingProxyType({kind: MappingProxyType(keys) for kind, keys in pending.items() if keys}))

    def restore(self, drained: ChangeSet) -> None:
        """Put back changes from a failed sync, in front of anything recorded since."""
        with self._lock:
            newer, self._pending = self._pending, {}
            for kind, per_kind in drained.changes.items():
                for key, change in per_kind.items():
                    self._merge(kind, key, change)
            for kind, per_kind in newer.items():
                for key, change in per_kind.items():
                    self._merge(kind, key, change)
