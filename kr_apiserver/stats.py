"""Request counters, so tests can assert that a client relisted, re-watched or reconnected.

Counts are kept per (resource, verb), with kube-apiserver's verbs: ``list``, ``watch``, ``get``,
``create``, ``update``, ``patch``, ``delete``, ``deletecollection``. A request is counted when it
reaches a resource, before any injected fault answers it, so a failed relist still shows up.

Invariant: ``open_watches`` counts watch streams whose thread is still running; it returns to zero
once every stream has ended, however it ended. ``watch_ends`` counts ended streams by reason
(``timeout``, ``overflow``, ``dropped``, ``expired``, ``client``, ``shutdown``, ``error``).
"""

from __future__ import annotations

import collections
import threading
from typing import Any


class Stats:
    """Thread-safe counters; ``snapshot()`` is what ``GET /_kr/stats`` returns."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._requests: collections.Counter[tuple[str, str]] = collections.Counter()
        self._open: collections.Counter[str] = collections.Counter()
        self._ends: collections.Counter[str] = collections.Counter()

    def count(self, resource: str, verb: str) -> None:
        with self._lock:
            self._requests[(resource, verb)] += 1

    def watch_opened(self, resource: str) -> None:
        with self._lock:
            self._open[resource] += 1

    def watch_ended(self, resource: str, reason: str) -> None:
        with self._lock:
            self._open[resource] -= 1
            self._ends[reason] += 1

    def requests(self, resource: str, verb: str) -> int:
        with self._lock:
            return self._requests[(resource, verb)]

    def open_watches(self, resource: str | None = None) -> int:
        with self._lock:
            return sum(n for plural, n in self._open.items() if resource in (None, plural))

    def watch_ends(self, reason: str) -> int:
        with self._lock:
            return self._ends[reason]

    def reset(self) -> None:
        """Zero the request and end counters; open watches stay counted (they are still open)."""
        with self._lock:
            self._requests.clear()
            self._ends.clear()

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            requests: dict[str, dict[str, int]] = {}
            for (resource, verb), n in sorted(self._requests.items()):
                requests.setdefault(resource, {})[verb] = n
            return {
                "requests": requests,
                "openWatches": {plural: n for plural, n in sorted(self._open.items()) if n},
                "watchEnds": dict(sorted(self._ends.items())),
            }
