"""The sync runner: when to sync, after kube-proxy's bounded-frequency runner.

Requests for a sync may arrive in bursts from any thread; the runner turns them into few syncs.

Invariants:
- nothing syncs before ``set_ready()`` (every watched kind has finished its first list): an empty cache
  would otherwise tell every backend to delete everything;
- two syncs start at least ``min_interval`` apart; requests arriving meanwhile coalesce into one sync;
- a full sync runs at least every ``resync_interval`` after the last full one, however many partial
  syncs run in between (kube-proxy measures it the same way);
- a failed sync is retried with exponential backoff (``retry_initial`` doubling up to ``retry_max``),
  and the next sync after any failure is a full one.

The decision logic (``due_in`` and ``run_once``) reads time only through the injected clock, so tests
drive it with a fake clock; ``run_forever`` adds the thread plumbing.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable

log = logging.getLogger(__name__)

#: ``sync(full)`` raises on failure.
SyncFunction = Callable[[bool], None]


class SyncRunner:
    def __init__(
        self,
        sync: SyncFunction,
        *,
        min_interval: float = 1.0,
        resync_interval: float = 3600.0,
        retry_initial: float = 1.0,
        retry_max: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._sync = sync
        self.min_interval = min_interval
        self.resync_interval = resync_interval
        self.retry_initial = retry_initial
        self.retry_max = retry_max
        self._clock = clock
        self._cond = threading.Condition()
        self._ready = False
        self._requested_at: float | None = None  # first request not yet served
        self._full_needed = True  # the first sync is always full
        self._last_start: float | None = None
        self._last_full: float | None = None
        self._running_since: float | None = None
        self._failures = 0
        self._retry_at: float | None = None
        self._stopped = False

    # --- requests (any thread)

    def request(self, full: bool = False) -> None:
        """Ask for a sync soon; ``full`` asks for a full one."""
        with self._cond:
            if self._requested_at is None:
                self._requested_at = self._clock()
            self._full_needed = self._full_needed or full
            self._cond.notify_all()

    def set_ready(self) -> None:
        """Allow syncing: the cache holds a complete first list of every watched kind."""
        with self._cond:
            self._ready = True
            self._cond.notify_all()

    def stop(self) -> None:
        with self._cond:
            self._stopped = True
            self._cond.notify_all()

    # --- observations (health, metrics)

    @property
    def requested_at(self) -> float | None:
        """When the oldest unserved request was made, or None."""
        return self._requested_at

    @property
    def idle(self) -> bool:
        """No sync running, none requested, none waiting to be retried."""
        with self._cond:
            return self._running_since is None and self._requested_at is None and self._retry_at is None

    @property
    def stopping(self) -> bool:
        """``stop()`` has been called."""
        return self._stopped

    @property
    def running_since(self) -> float | None:
        """When the sync now running started, or None."""
        return self._running_since

    @property
    def failures(self) -> int:
        """Consecutive failed syncs."""
        return self._failures

    # --- decisions (clock-driven, testable)

    def _backoff(self) -> float:
        return min(self.retry_initial * (2 ** (self._failures - 1)), self.retry_max)

    def due_in(self) -> float:
        """Seconds until the next sync should start (0 = now, inf = only when requested)."""
        with self._cond:
            return self._due_in_locked(self._clock())

    def _due_in_locked(self, now: float) -> float:
        if not self._ready or self._stopped:
            return math.inf
        if self._last_start is None:
            return 0.0
        earliest = self._last_start + self.min_interval
        candidates = [max((self._last_full or self._last_start) + self.resync_interval, earliest)]
        if self._retry_at is not None:
            candidates.append(max(self._retry_at, earliest))
        if self._requested_at is not None and self._retry_at is None:
            candidates.append(earliest)
        return max(0.0, min(candidates) - now)

    def run_once(self) -> bool | None:
        """Sync now if one is due. Returns None if nothing was due, else whether the sync succeeded."""
        with self._cond:
            now = self._clock()
            if self._due_in_locked(now) > 0:
                return None
            periodic = self._last_full is not None and now >= self._last_full + self.resync_interval
            full = self._full_needed or periodic
            requested_at = self._requested_at
            self._last_start = now
            self._requested_at = None
            self._full_needed = False
            self._running_since = now
        try:
            self._sync(full)
        except Exception as exc:
            with self._cond:
                self._running_since = None
                self._failures += 1
                self._full_needed = True
                # the request is not served until a sync succeeds: health checks see how long it waits
                if self._requested_at is None:
                    self._requested_at = requested_at if requested_at is not None else now
                self._retry_at = self._clock() + self._backoff()
                log.error("sync failed (%d in a row: %s); retrying in %.1fs with a full sync",
                          self._failures, exc, self._backoff(), exc_info=log.isEnabledFor(logging.DEBUG))
            return False
        with self._cond:
            self._running_since = None
            self._failures = 0
            self._retry_at = None
            if full:
                self._last_full = now
        return True

    # --- the loop (a thread of its own, or the main thread)

    def run_forever(self) -> None:
        """Sync whenever due until ``stop()``; waits on requests in between."""
        while True:
            with self._cond:
                if self._stopped:
                    return
                delay = self._due_in_locked(self._clock())
                if delay > 0:
                    self._cond.wait(None if math.isinf(delay) else delay)
                    continue
            self.run_once()
