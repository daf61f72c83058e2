"""Helpers shared by the kr_apiserver tests (kept out of conftest.py so tests can import them)."""

from __future__ import annotations

import json
import queue
import threading
import time
import urllib.request
from collections.abc import Callable
from typing import Any

from kubernetes import watch

HOST = "127.0.0.1"
BOOKMARK_INTERVAL = 0.3


class WatchReader:
    """Runs ``kubernetes.watch.Watch().stream`` in a thread; events and the outcome are queued."""

    def __init__(self, func: Callable[..., Any], *args: Any, **kwargs: Any):
        self._events: queue.Queue[dict[str, Any]] = queue.Queue()
        self._watch = watch.Watch()
        self.error: BaseException | None = None
        self.done = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(func, args, kwargs), daemon=True)
        self._thread.start()

    def _run(self, func: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        try:
            for event in self._watch.stream(func, *args, **kwargs):
                self._events.put({"type": event["type"], "object": event["raw_object"]})
        except BaseException as exc:  # the test inspects it
            self.error = exc
        finally:
            self.done.set()

    def next(self, timeout: float = 5.0, *, bookmarks: bool = False) -> dict[str, Any]:
        """The next event (BOOKMARKs skipped unless asked for)."""
        while True:
            event = self._events.get(timeout=timeout)
            if bookmarks or event["type"] != "BOOKMARK":
                return event

    def changes(self, count: int, timeout: float = 5.0) -> list[tuple[str, str]]:
        """The next ``count`` non-bookmark events as (type, name)."""
        return [(e["type"], e["object"]["metadata"]["name"]) for e in (self.next(timeout) for _ in range(count))]

    def quiet(self, seconds: float) -> bool:
        """True if no event at all arrives within ``seconds``."""
        try:
            self._events.get(timeout=seconds)
        except queue.Empty:
            return True
        return False

    def stop(self) -> None:
        self._watch.stop()
        self._thread.join(timeout=5)


def admin(url: str, path: str, body: dict[str, Any] | None = None) -> Any:
    """GET (no body) or POST a JSON body to an admin path; returns the decoded answer."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url + path, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=5) as response:
        return json.load(response)


def pod(name: str, labels: dict[str, str] | None = None, node: str = "node-a") -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": labels or {}},
        "spec": {"nodeName": node, "containers": [{"name": "c", "image": "busybox"}]},
    }


def wait_for(condition: Callable[[], bool], timeout: float = 3.0) -> bool:
    """Poll ``condition`` until it holds or ``timeout`` passes (server-side counters trail the client)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return condition()
