"""List + watch of the Kubernetes API with the official client, one thread per kind.

Each kind is listed, then watched from the list's resourceVersion with bookmarks. Events go to the cache
and, for every real change, to the ``on_change`` callback.

Invariants:
- a kind reports ``on_synced`` once, after its first complete list is in the cache;
- 410 Gone (expired resourceVersion) leads to a relist whose result replaces the kind atomically
  (``Cache.replace``), so deletions missed while disconnected are still seen;
- a dropped or stalled connection (no bytes, not even a bookmark, for ``stall_timeout``) is reconnected
  from the last seen resourceVersion after a jittered exponential backoff; so is an attempt that got
  nothing (a stream closed at once, a 410 right after a relist), so a sick server is never hammered;
  a stream that delivered events and then ended cleanly (the server's timeoutSeconds) resumes at once;
- ``stop()`` returns promptly even while a thread waits on a quiet stream (its socket is shut down);
- objects are kept as raw JSON dicts (no per-object model classes on the hot path), trimmed on arrival
  of what kr never reads (``kr_core.trim``); lists are read in pages (``limit``/``continue``), each
  trimmed before the next arrives.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import random
import socket
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException
from kubernetes.watch.watch import iter_resp_lines

from kr_core.cache import Cache, CacheChange
from kr_core.trim import trim

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True, slots=True)
class KindAPI:
    """How to list and watch one kind with the official client."""

    api: Callable[[client.ApiClient], Any]
    list_method: str


KIND_APIS: Mapping[str, KindAPI] = {
    "nodes": KindAPI(client.CoreV1Api, "list_node"),
    "namespaces": KindAPI(client.CoreV1Api, "list_namespace"),
    "services": KindAPI(client.CoreV1Api, "list_service_for_all_namespaces"),
    "pods": KindAPI(client.CoreV1Api, "list_pod_for_all_namespaces"),
    "endpointslices": KindAPI(client.DiscoveryV1Api, "list_endpoint_slice_for_all_namespaces"),
    "networkpolicies": KindAPI(client.NetworkingV1Api, "list_network_policy_for_all_namespaces"),
}


@dataclasses.dataclass(frozen=True, slots=True)
class WatchSettings:
    """Timeouts and backoff for the watch loop."""

    stall_timeout: float = 120.0  # longer than the API server's bookmark period (about a minute)
    watch_timeout: float = 300.0  # asks the server to end each watch after this, plus jitter
    connect_timeout: float = 10.0
    backoff_initial: float = 0.5
    backoff_max: float = 30.0
    page_size: int = 500  # objects per list request (client-go's reflector default); 0: the whole list at once


class RelistNeeded(Exception):
    """The watch's resourceVersion expired (410 Gone)."""


class KindWatcher:
    """Lists and watches one kind until stopped."""

    def __init__(
        self,
        kind: str,
        api_client: client.ApiClient,
        cache: Cache,
        on_change: Callable[[CacheChange], None],
        on_synced: Callable[[str], None],
        settings: WatchSettings,
        on_list: Callable[[str], None] = lambda kind: None,
        on_restart: Callable[[str, str], None] = lambda kind, reason: None,
    ) -> None:
        self.kind = kind
        self._list = getattr(KIND_APIS[kind].api(api_client), KIND_APIS[kind].list_method)
        self._cache = cache
        self._on_change = on_change
        self._on_synced = on_synced
        self._on_list = on_list
        self._on_restart = on_restart
        self._settings = settings
        self._stop = threading.Event()
        self._response: Any = None  # the open watch stream, closed by stop()
        self._synced = False
        self._version: str | None = None  # the last resourceVersion seen; None = must (re)list
        self._received = False  # whether the current attempt got any event
        self._thread = threading.Thread(target=self._run, name=f"watch-{kind}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Ask the thread to end, waking it if it is blocked reading a quiet watch stream."""
        self._stop.set()
        response = self._response
        sock = getattr(getattr(response, "_connection", None), "sock", None)
        if sock is not None:
            # shutdown, not close: closing a socket another thread is reading waits for that read,
            # which on a quiet stream lasts until the next bookmark
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def join(self, timeout: float | None = None) -> None:
        if self._thread.is_alive():
            self._thread.join(timeout)

    @property
    def version(self) -> str | None:
        """The last resourceVersion this kind has seen (events and bookmarks)."""
        return self._version

    # --- the loop

    def _run(self) -> None:
        failures = 0
        while not self._stop.is_set():
            self._received = False
            try:
                if self._version is None:
                    self._relist()
                self._watch()
                problem = None if self._received else "the watch ended without sending anything"
            except RelistNeeded:
                log.info("%s: resourceVersion %s expired (410 Gone); relisting", self.kind, self._version)
                self._on_restart(self.kind, "expired")
                self._version = None
                problem = None if self._received else "410 Gone right after listing"
            except Exception as exc:  # connection refused, reset, stalled, 5xx: back off and retry
                if self._stop.is_set():
                    return
                self._on_restart(self.kind, "error")
                problem = f"watch failed ({_describe(exc)})"
            if problem is None:
                failures = 0
                continue
            # an attempt that delivered something was healthy until now: start the backoff afresh
            failures = 1 if self._received else failures + 1
            delay = min(self._settings.backoff_initial * 2 ** (failures - 1), self._settings.backoff_max)
            delay *= random.uniform(0.5, 1.0)
            log.warning("%s: %s; resuming from resourceVersion %s in %.1fs", self.kind, problem,
                        self._version or "(relist)", delay)
            self._stop.wait(delay)

    def _request_timeout(self) -> tuple[float, float]:
        return (self._settings.connect_timeout, self._settings.stall_timeout)

    def _relist(self) -> None:
        items, version = self._list_pages()
        changes = self._cache.replace(self.kind, _valid(self.kind, items))
        self._on_list(self.kind)
        log.info("%s: listed %d objects at resourceVersion %s (%d changes)", self.kind, len(items), version, len(changes))
        for change in changes:
            self._on_change(change)
        self._version = version
        if not self._synced:
            self._synced = True
            self._on_synced(self.kind)

    def _list_pages(self) -> tuple[list[Any], str]:
        """The whole list, read ``page_size`` objects at a time (each page trimmed before the next is
        read, so a large list is never held whole as untrimmed JSON), and the resourceVersion it was
        read at. A continue token that expired midway (410) starts the list again, as client-go's
        reflector does."""
        items: list[Any] = []
        version, token = "", ""
        while True:
            paging = {"limit": self._settings.page_size} if self._settings.page_size else {}
            try:
                response = self._list(**paging, **({"_continue": token} if token else {}),
                                      _preload_content=False, _request_timeout=self._request_timeout())
            except ApiException as exc:
                if exc.status != 410 or not token:
                    raise
                log.info("%s: the list's continue token expired; listing again from the start", self.kind)
                items, version, token = [], "", ""
                continue
            try:
                body = json.loads(response.data)
            finally:
                response.release_conn()
            for item in body.get("items") or []:  # list items carry no kind; add it so hooks see complete objects
                if isinstance(item, dict):
                    item.setdefault("kind", body.get("kind", "").removesuffix("List"))
                    item.setdefault("apiVersion", body.get("apiVersion", ""))
                    trim(self.kind, item)
                items.append(item)
            metadata = body.get("metadata") or {}
            version = version or str(metadata.get("resourceVersion") or "")  # every page is read at the first's
            token = str(metadata.get("continue") or "")
            if not token:
                return items, version

    def _watch(self) -> None:
        """Watch from the last seen resourceVersion until the stream ends, keeping it up to date.

        The stream is read line by line here rather than through ``kubernetes.watch.Watch``, whose
        raw mode cannot report a 410 ERROR event and whose retry would silently reuse an expired version.
        """
        timeout = int(self._settings.watch_timeout * random.uniform(1.0, 1.2))
        try:
            response = self._list(
                watch=True,
                resource_version=self._version,
                allow_watch_bookmarks=True,
                timeout_seconds=timeout,
                _preload_content=False,
                _request_timeout=self._request_timeout(),
            )
        except ApiException as exc:
            if exc.status == 410:
                raise RelistNeeded() from exc
            raise
        self._response = response
        try:
            for line in iter_resp_lines(response):
                if not line:
                    continue
                self._handle(json.loads(line))
                self._received = True
                if self._stop.is_set():
                    break
        finally:
            self._response = None
            response.close()
            response.release_conn()

    def _handle(self, event: Mapping[str, Any]) -> None:
        kind_of_event = event.get("type")
        obj = event.get("object") or {}
        if kind_of_event == "ERROR":
            if obj.get("code") == 410:
                raise RelistNeeded()
            raise ApiException(status=obj.get("code"), reason=obj.get("message"))
        version = str((obj.get("metadata") or {}).get("resourceVersion") or self._version)
        change = None
        if kind_of_event not in ("ADDED", "MODIFIED", "DELETED", "BOOKMARK"):
            log.warning("%s: ignoring watch event of unknown type %r", self.kind, kind_of_event)
        elif kind_of_event != "BOOKMARK" and _valid(self.kind, [obj]):
            update = self._cache.delete if kind_of_event == "DELETED" else self._cache.upsert
            change = update(self.kind, trim(self.kind, obj) if isinstance(obj, dict) else obj)
        if change is not None:
            self._on_change(change)
        # published only after the change is recorded: whoever reads this version and then finds no
        # pending change knows every change up to it has been handed to a sync
        self._version = version


def _valid(kind: str, objects: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """Objects with a name; one without is logged and dropped (the cache is keyed by name)."""
    kept = []
    for obj in objects:
        if isinstance(obj, Mapping) and isinstance(obj.get("metadata"), Mapping) and obj["metadata"].get("name"):
            kept.append(obj)
        else:
            log.warning("%s: skipping an object without metadata.name: %.200s", kind, json.dumps(obj, default=str))
    return kept


def _describe(exc: Exception) -> str:
    if isinstance(exc, ApiException):
        return f"HTTP {exc.status} {exc.reason}"
    return f"{type(exc).__name__}: {exc}"


class Watcher:
    """One ``KindWatcher`` per kind; reports when all kinds have finished their first list."""

    def __init__(
        self,
        kinds: Sequence[str],
        api_client: client.ApiClient,
        cache: Cache,
        on_change: Callable[[CacheChange], None],
        on_all_synced: Callable[[], None],
        settings: WatchSettings,
        on_list: Callable[[str], None] = lambda kind: None,
        on_restart: Callable[[str, str], None] = lambda kind, reason: None,
    ) -> None:
        self._pending = set(kinds)
        self._lock = threading.Lock()
        self._on_all_synced = on_all_synced
        self._kinds = [
            KindWatcher(kind, api_client, cache, on_change, self._synced, settings, on_list, on_restart)
            for kind in kinds
        ]

    def _synced(self, kind: str) -> None:
        with self._lock:
            self._pending.discard(kind)
            done = not self._pending
        if done:
            log.info("all watched kinds listed; syncing may start")
            self._on_all_synced()

    def versions(self) -> dict[str, str | None]:
        """Kind -> the last resourceVersion seen."""
        return {kind_watcher.kind: kind_watcher.version for kind_watcher in self._kinds}

    def start(self) -> None:
        for kind_watcher in self._kinds:
            kind_watcher.start()

    def stop(self, timeout: float = 3.0) -> None:
        """Stop every kind's thread, waiting at most ``timeout`` in all."""
        for kind_watcher in self._kinds:
            kind_watcher.stop()
        deadline = time.monotonic() + timeout
        for kind_watcher in self._kinds:
            kind_watcher.join(max(0.0, deadline - time.monotonic()))
