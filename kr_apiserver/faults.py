"""Fault injection: the failures a real control plane shows, on demand.

Every fault can target one resource (its plural, e.g. ``"pods"``) or, with ``resource=None``, every
API request (discovery included). Admin requests under ``/_kr/`` are never affected.

- ``drop_watches``: shut the sockets of open watch streams down now; clients see the chunked stream
  end without its terminating chunk, as when an API server or a load balancer dies;
- ``expire_watches``: the next N watch requests get a single 410 Expired ERROR event, then a clean end;
- ``compact``: discard the change history, so every resourceVersion older than the current one is 410;
- ``stall_watches``: open watch streams send nothing (no events, no bookmarks) for S seconds, then go
  on with what queued up meanwhile (possibly overflowing their queue);
- ``hang_requests``: new requests wait S seconds before they are served;
- ``fail_requests``: the next N requests (optionally of one verb) answer with an error Status
  (500 InternalError, 503 ServiceUnavailable, 429, ...).

Invariant: ``clear()`` ends every stall and hang at once and forgets pending expiries and failures;
the server calls it on stop, so no thread stays parked in a fault.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from typing import Any

from kr_apiserver.resources import BY_PLURAL
from kr_apiserver.status import REASONS
from kr_apiserver.store import Store
from kr_apiserver.watch import DROPPED, Watch

#: the verbs requests are counted and failed by (kube-apiserver's names for them)
VERBS = ("list", "watch", "get", "create", "update", "patch", "delete", "deletecollection")
_STALL_POLL = 0.05  # how often a stalled stream rechecks its deadline (a clear() must end it promptly)


def _check(resource: str | None) -> None:
    if resource is not None and resource not in BY_PLURAL:
        raise ValueError(f"unknown resource {resource!r}; choose one of: {', '.join(BY_PLURAL)}")


@dataclasses.dataclass(slots=True)
class _Expiry:
    resource: str | None
    remaining: int


@dataclasses.dataclass(slots=True)
class _Failure:
    resource: str | None
    verb: str | None
    code: int
    remaining: int


class Faults:
    """Pending faults of one server; the API layer consults them on every request."""

    def __init__(self, store: Store):
        self._store = store
        self._cond = threading.Condition()
        self._expiries: list[_Expiry] = []
        self._failures: list[_Failure] = []
        self._stalls: dict[str | None, float] = {}  # resource -> monotonic deadline
        self._hangs: dict[str | None, float] = {}

    # --- injection

    def drop_watches(self, resource: str | None = None) -> int:
        """Abruptly close the open watches (of one resource); returns how many were closed."""
        _check(resource)
        return self._store.close_watches(DROPPED, resource)

    def expire_watches(self, count: int = 1, resource: str | None = None) -> None:
        _check(resource)
        with self._cond:
            self._expiries.append(_Expiry(resource, count))

    def compact(self) -> int:
        """Discard the history; returns the oldest resourceVersion a watch may still start from."""
        return self._store.compact()

    def stall_watches(self, seconds: float, resource: str | None = None) -> None:
        _check(resource)
        with self._cond:
            self._stalls[resource] = time.monotonic() + seconds

    def hang_requests(self, seconds: float, resource: str | None = None) -> None:
        _check(resource)
        with self._cond:
            self._hangs[resource] = time.monotonic() + seconds

    def fail_requests(
        self, count: int = 1, code: int = 503, resource: str | None = None, verb: str | None = None
    ) -> None:
        _check(resource)
        if verb is not None and verb not in VERBS:
            raise ValueError(f"unknown verb {verb!r}; choose one of: {', '.join(VERBS)}")
        if not 400 <= code <= 599:
            raise ValueError(f"an injected failure needs a 4xx or 5xx code, not {code}")
        with self._cond:
            self._failures.append(_Failure(resource, verb, code, count))

    def clear(self) -> None:
        with self._cond:
            self._expiries.clear()
            self._failures.clear()
            self._stalls.clear()
            self._hangs.clear()
            self._cond.notify_all()

    def describe(self) -> dict[str, Any]:
        now = time.monotonic()
        with self._cond:
            return {
                "expireWatches": [dataclasses.asdict(e) for e in self._expiries],
                "failRequests": [dataclasses.asdict(f) for f in self._failures],
                "stallWatches": {r or "*": round(d - now, 3) for r, d in self._stalls.items() if d > now},
                "hangRequests": {r or "*": round(d - now, 3) for r, d in self._hangs.items() if d > now},
            }

    # --- consulted by the API layer

    def take_expiry(self, resource: str) -> bool:
        """Whether this watch request must be answered with 410 (consumes one pending expiry)."""
        with self._cond:
            for expiry in self._expiries:
                if expiry.resource in (None, resource):
                    expiry.remaining -= 1
                    if expiry.remaining <= 0:
                        self._expiries.remove(expiry)
                    return True
            return False

    def take_failure(self, resource: str | None, verb: str | None) -> tuple[int, str] | None:
        """``(code, reason)`` if this request must fail (consumes one pending failure)."""
        with self._cond:
            for failure in self._failures:
                if failure.resource in (None, resource) and failure.verb in (None, verb):
                    failure.remaining -= 1
                    if failure.remaining <= 0:
                        self._failures.remove(failure)
                    return failure.code, REASONS.get(failure.code, "InternalError")
            return None

    def wait_if_hung(self, resource: str | None) -> None:
        """Block while a hang applies to requests on ``resource``."""
        with self._cond:
            while (remaining := self._remaining(self._hangs, resource)) > 0:
                self._cond.wait(remaining)  # clear() notifies, ending the hang early

    def hold_while_stalled(self, watch: Watch) -> None:
        """Block a watch stream while a stall applies to it, or until the watch is closed."""
        while not watch.closed:
            with self._cond:
                remaining = self._remaining(self._stalls, watch.resource)
            if remaining <= 0:
                return
            watch.wait_closed(min(remaining, _STALL_POLL))

    @staticmethod
    def _remaining(deadlines: dict[str | None, float], resource: str | None) -> float:
        now = time.monotonic()
        return max((deadline - now for key, deadline in deadlines.items() if key in (None, resource)), default=0.0)
