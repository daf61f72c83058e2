"""Paginated lists (``limit`` and ``continue``), as kube-apiserver serves them.

kube-apiserver reads every page of one list at the revision of its first page (etcd keeps old revisions),
so a client paging through sees one consistent list however the objects change meanwhile. The stand-in
keeps the first page's result (references to the stored objects, which are never mutated in place) under
a random id for ``ttl`` seconds, at most ``keep`` lists at once; the continue token names the list and
the offset. A token of a list no longer kept (expired, evicted, or dropped by a compaction) gets
410 Expired, as a token older than etcd's compaction does upstream, and the client lists again.

Invariants: pages partition the list in key order; ``remainingItemCount`` counts what is left after the
page; a page never holds more than ``limit`` items.
"""

from __future__ import annotations

import base64
import json
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from kr_apiserver import status
from kr_apiserver.status import APIError

Object = dict[str, Any]


@dataclass(frozen=True, slots=True)
class Page:
    items: Sequence[Object]
    revision: int
    token: str  # "" on the last page
    remaining: int


class ListPages:
    def __init__(self, ttl: float = 60.0, keep: int = 16) -> None:
        self._ttl = ttl
        self._keep = keep
        self._lock = threading.Lock()
        self._lists: OrderedDict[str, tuple[float, int, Sequence[Object]]] = OrderedDict()

    def first(self, items: Sequence[Object], revision: int, limit: int) -> Page:
        """The first page of ``items`` (read at ``revision``); the rest is kept for the continue token."""
        if len(items) <= limit:
            return Page(items, revision, "", 0)
        list_id = secrets.token_hex(8)
        with self._lock:
            self._expire()
            self._lists[list_id] = (time.monotonic() + self._ttl, revision, items)
            while len(self._lists) > self._keep:
                self._lists.popitem(last=False)
        return self._page(list_id, revision, items, 0, limit)

    def next(self, token: str, limit: int) -> Page:
        """The page a continue token names; 410 Expired when its list is no longer kept."""
        list_id, offset = _decode(token)
        with self._lock:
            self._expire()
            kept = self._lists.get(list_id)
        if kept is None:
            raise APIError(410, "The provided continue parameter is too old to display a consistent list "
                                "result. You can start a new list without the continue parameter.", "Expired")
        _, revision, items = kept
        return self._page(list_id, revision, items, offset, limit)

    def forget(self) -> None:
        """Drop every kept list (a compaction): their tokens now get 410."""
        with self._lock:
            self._lists.clear()

    def _page(self, list_id: str, revision: int, items: Sequence[Object], offset: int, limit: int) -> Page:
        end = offset + limit
        if end >= len(items):
            with self._lock:
                self._lists.pop(list_id, None)
            return Page(items[offset:], revision, "", 0)
        return Page(items[offset:end], revision, _encode(list_id, end), len(items) - end)

    def _expire(self) -> None:
        now = time.monotonic()
        for list_id in [i for i, (deadline, _, _) in self._lists.items() if deadline < now]:
            del self._lists[list_id]


def _encode(list_id: str, offset: int) -> str:
    return base64.urlsafe_b64encode(json.dumps({"list": list_id, "offset": offset}).encode()).decode()


def _decode(token: str) -> tuple[str, int]:
    try:
        data = json.loads(base64.urlsafe_b64decode(token.encode()))
        list_id, offset = data["list"], data["offset"]
        if not isinstance(list_id, str) or not isinstance(offset, int) or offset < 0:
            raise ValueError(token)
    except (ValueError, KeyError, TypeError) as exc:
        raise status.bad_request(f"invalid continue token: {token!r}") from exc
    return list_id, offset
