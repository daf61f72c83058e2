"""Watch subscriptions: the bounded queue between the store's writers and one watch stream.

A ``Change`` is one committed write as the store records it in its history. A ``Watch`` is one open
watch request: the store offers it every change of its resource; the watch translates the change
through its filter (an object that starts or stops matching a selector becomes ADDED or DELETED, as
kube-apiserver's watch cache does) and queues the resulting event for the stream thread.

Invariants:
- ``offer()`` never blocks (writers call it under the store lock); when more than ``capacity`` live
  events are pending, the watch is closed with reason ``overflow``, so a slow client costs bounded
  memory and never delays a writer. Its client resumes or relists, as with a real API server;
- events come out in resourceVersion order: the initial events (a replay or synthetic ADDED events,
  unbounded, computed under the store lock at subscription time) first, then live events;
- once closed, ``next()`` returns nothing more; an abrupt close also shuts the socket down, so a
  stream thread blocked in a write wakes up.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import socket
import threading
from collections.abc import Iterable
from typing import Any

from kr_apiserver.selectors import ObjectFilter

log = logging.getLogger(__name__)

Object = dict[str, Any]
#: (type, object) as sent on the wire: ADDED, MODIFIED or DELETED
WatchEvent = tuple[str, Object]

OVERFLOW = "overflow"
DROPPED = "dropped"
SHUTDOWN = "shutdown"
ABRUPT_REASONS = frozenset({DROPPED, SHUTDOWN})


@dataclasses.dataclass(frozen=True, slots=True)
class Change:
    """One committed write. ``previous`` is the object before a MODIFIED (None otherwise)."""

    revision: int
    resource: str
    type: str
    object: Object
    previous: Object | None = None


def translate(change: Change, object_filter: ObjectFilter) -> WatchEvent | None:
    """The event a filtered watch sees for ``change``, or None if it sees nothing."""
    now = object_filter.matches(change.object)
    if change.type != "MODIFIED":
        return (change.type, change.object) if now else None
    before = change.previous is not None and object_filter.matches(change.previous)
    if now:
        return ("MODIFIED" if before else "ADDED", change.object)
    return ("DELETED", change.object) if before else None


class Watch:
    """One open watch request's queue and lifecycle."""

    def __init__(self, resource: str, object_filter: ObjectFilter, capacity: int, initial: Iterable[WatchEvent]):
        self.resource = resource
        self.filter = object_filter
        self._capacity = capacity
        self._initial: collections.deque[WatchEvent] = collections.deque(initial)
        self._live: collections.deque[WatchEvent] = collections.deque()
        self._cond = threading.Condition()
        self._socket: socket.socket | None = None
        self.closed: str | None = None  # the reason, once closed

    def attach(self, sock: socket.socket) -> None:
        """The connection to shut down on an abrupt close."""
        with self._cond:
            self._socket = sock

    def offer(self, change: Change) -> None:
        event = translate(change, self.filter)
        if event is None:
            return
        with self._cond:
            if self.closed:
                return
            if len(self._live) >= self._capacity:
                log.info("watch on %s fell %d events behind; closing it", self.resource, self._capacity)
                self._close_locked(OVERFLOW)
                return
            self._live.append(event)
            self._cond.notify_all()

    def next(self, timeout: float) -> WatchEvent | None:
        """The next event, waiting at most ``timeout`` seconds; None on timeout or once closed."""
        with self._cond:
            self._cond.wait_for(lambda: self.closed or self._initial or self._live, timeout=max(timeout, 0))
            if self.closed:
                return None
            if self._initial:
                return self._initial.popleft()
            if self._live:
                return self._live.popleft()
            return None

    def idle(self) -> bool:
        """Nothing is queued (the caller holds the store lock, so nothing can be in flight either)."""
        with self._cond:
            return not self._initial and not self._live

    def wait_closed(self, timeout: float) -> bool:
        with self._cond:
            return bool(self._cond.wait_for(lambda: self.closed, timeout=max(timeout, 0)))

    def close(self, reason: str) -> None:
        with self._cond:
            self._close_locked(reason)

    def _close_locked(self, reason: str) -> None:
        if self.closed:
            return
        self.closed = reason
        self._initial.clear()
        self._live.clear()
        self._cond.notify_all()
        if reason in ABRUPT_REASONS and self._socket is not None:
            try:
                self._socket.shutdown(socket.SHUT_RDWR)
            except OSError as exc:  # already gone: the client disconnected first
                log.debug("shutting down a dropped watch's socket: %s", exc)
