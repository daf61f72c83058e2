"""The request layer: from a parsed HTTP request to a response, verb by verb.

``API.handle`` routes a ``Request`` to discovery, the admin endpoints or a resource verb, applies
injected faults, counts the request, and returns either a ``Response`` (a JSON or text body) or a
``WatchStream`` that :mod:`kr_apiserver.watchstream` then writes. It does no socket I/O itself.

Invariants:
- every failure becomes a Status body with its HTTP code (never a bare exception to the transport);
- a watch that cannot start from the requested resourceVersion (too old, too new, or an injected
  expiry) is answered as kube-apiserver's watch cache answers it: HTTP 200 and one ERROR event;
- admin paths (``/_kr/``) and health checks bypass fault injection and counting.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from kr_apiserver import admin, discovery, routes, status
from kr_apiserver.faults import Faults
from kr_apiserver.pages import Page
from kr_apiserver.patch import SUPPORTED as PATCH_TYPES
from kr_apiserver.patch import apply_patch
from kr_apiserver.resources import Resource
from kr_apiserver.selectors import ObjectFilter
from kr_apiserver.stats import Stats
from kr_apiserver.status import APIError, bad_request
from kr_apiserver.store import Object, Store
from kr_apiserver.watch import Watch

HEALTH_PATHS = ("/healthz", "/readyz", "/livez")


@dataclasses.dataclass(frozen=True, slots=True)
class Request:
    method: str
    path: str
    query: Mapping[str, str]
    content_type: str  # the media type without parameters, lower case ("" if absent)
    body: bytes


@dataclasses.dataclass(frozen=True, slots=True)
class Response:
    code: int
    body: Any  # JSON-encodable, or a str sent as text/plain


@dataclasses.dataclass(frozen=True, slots=True)
class WatchStream:
    """An accepted watch: either a live ``watch``, or a single ERROR event carrying ``error``."""

    resource: Resource
    watch: Watch | None = None
    error: dict[str, Any] | None = None
    bookmarks: bool = False
    timeout: float | None = None


def _truthy(value: str | None) -> bool:
    return (value or "").lower() in ("1", "true")


def _decode(request: Request) -> Any:
    try:
        return json.loads(request.body or b"null")
    except ValueError as exc:
        raise bad_request(f"the body of the request could not be decoded as JSON: {exc}") from exc


def _require_json(request: Request) -> Any:
    if request.content_type and "json" not in request.content_type:
        raise APIError(415, f"the body of the request was in an unknown format - accepted media types include: "
                            f"application/json (got {request.content_type})")
    return _decode(request)


def _integer(query: Mapping[str, str], name: str) -> int | None:
    value = query.get(name, "")
    if value == "":
        return None
    try:
        number = int(value)
    except ValueError:
        raise bad_request(f"invalid {name}: {value!r}") from None
    if number < 0:
        raise bad_request(f"invalid {name}: {value!r}")
    return number


_ALL = 1 << 62


def _list_body(resource: Resource, items: Sequence[Object], revision: int, page: Page | None = None) -> dict[str, Any]:
    # kube-apiserver sends list items without apiVersion and kind; clients rely on the list's kind
    metadata: dict[str, Any] = {"resourceVersion": str(revision)}
    if page is not None and page.token:
        metadata.update({"continue": page.token, "remainingItemCount": page.remaining})
    return {
        "kind": resource.list_kind,
        "apiVersion": resource.api_version,
        "metadata": metadata,
        "items": [{k: v for k, v in item.items() if k not in ("apiVersion", "kind")} for item in items],
    }


class API:
    """Serves requests against one store, with one set of faults and counters."""

    def __init__(
        self, store: Store, faults: Faults, stats: Stats, bookmark_interval: float, server_address: Callable[[], str]
    ):
        self.store = store
        self.faults = faults
        self.stats = stats
        self.bookmark_interval = bookmark_interval
        self._server_address = server_address
        #: name -> callable giving JSON-able state, served under GET /_kr/status (the lab's controllers
        #: report their progress there)
        self.status_providers: dict[str, Callable[[], Any]] = {}

    def handle(self, request: Request) -> Response | WatchStream:
        try:
            if request.path.startswith(admin.PREFIX):
                return Response(*admin.handle(self, request.method, request.path, _decode(request)))
            if request.path in HEALTH_PATHS:
                return Response(200, "ok")
            document = self._discovery(request.path) if request.method == "GET" else None
            if document is not None:
                self._inject(None, "get")
                return Response(200, document)
            route = routes.parse(request.path)
            if route is None:
                raise APIError(404, "the server could not find the requested resource", "NotFound")
            verb = self._verb(request, route)
            self.stats.count(route.resource.plural, verb)
            self._inject(route.resource.plural, verb)
            return self._serve(verb, request, route)
        except APIError as exc:
            return Response(exc.code, exc.body())

    def _inject(self, resource: str | None, verb: str) -> None:
        self.faults.wait_if_hung(resource)
        failure = self.faults.take_failure(resource, verb)
        if failure is not None:
            code, reason = failure
            raise APIError(code, f"injected fault: {reason}", reason)

    def _discovery(self, path: str) -> dict[str, Any] | None:
        segments = path.strip("/").split("/")
        if path.rstrip("/") == "/version":
            return discovery.VERSION_INFO
        if segments == ["api"]:
            return discovery.core_versions(self._server_address())
        if segments == ["api", "v1"]:
            return discovery.resource_list("", "v1")
        if segments == ["apis"]:
            return discovery.group_list()
        if len(segments) == 2 and segments[0] == "apis":
            return discovery.group(segments[1])
        if len(segments) == 3 and segments[0] == "apis":
            return discovery.resource_list(segments[1], segments[2])
        return None

    @staticmethod
    def _verb(request: Request, route: routes.Route) -> str:
        collection = route.name is None
        namespaced_ok = route.namespace is not None or not route.resource.namespaced
        verbs = {
            ("GET", True): "watch" if _truthy(request.query.get("watch")) else "list",
            ("GET", False): "get",
            ("POST", True): "create" if namespaced_ok else None,
            ("PUT", False): "update",
            ("PATCH", False): "patch",
            ("DELETE", False): "delete",
            ("DELETE", True): "deletecollection" if namespaced_ok and route.resource.delete_collection else None,
        }
        verb = verbs.get((request.method, collection))
        if verb is None or (route.subresource and verb not in ("get", "update", "patch")):
            raise APIError(405, "the server does not allow this method on the requested resource", "MethodNotAllowed")
        if request.query.get("dryRun"):
            raise bad_request("dryRun is not supported by kr_apiserver")
        return verb

    def _serve(self, verb: str, request: Request, route: routes.Route) -> Response | WatchStream:
        r, store = route.resource, self.store
        if verb in ("list", "watch", "deletecollection"):
            object_filter = ObjectFilter.parse(
                r, route.namespace, request.query.get("labelSelector", ""), request.query.get("fieldSelector", "")
            )
            if verb == "watch":
                return self._watch(request, r, object_filter)
            if verb == "list":
                return Response(200, self._list(request, r, object_filter))
            deleted = store.delete_collection(r.plural, object_filter)
            return Response(200, _list_body(r, deleted, store.revision))
        if verb == "get":
            return Response(200, store.get(r.plural, route.namespace, route.name or ""))
        if verb == "create":
            return Response(201, store.create(r.plural, _require_json(request), route.namespace))
        name = route.name or ""
        if verb == "update":
            body = _require_json(request)
            return Response(200, store.replace(r.plural, route.namespace, name, body, route.subresource))
        if verb == "patch":
            if request.content_type not in PATCH_TYPES:
                raise APIError(415, "the body of the request was in an unknown format - accepted media types include: "
                                    + ", ".join(PATCH_TYPES))
            patch = _decode(request)
            return Response(200, store.patch(
                r.plural, route.namespace, name, lambda current: apply_patch(request.content_type, current, patch),
                route.subresource,
            ))
        options = _require_json(request) or {}
        if not isinstance(options, dict):
            raise bad_request("DeleteOptions must be a JSON object")
        deleted = store.delete(r.plural, route.namespace, name, options.get("preconditions"))
        if r.returns_deleted_object:
            return Response(200, deleted)
        return Response(200, status.success(r, name, deleted["metadata"]["uid"]))

    def _list(self, request: Request, r: Resource, object_filter: ObjectFilter) -> dict[str, Any]:
        """A whole list, or with ``limit`` one page of it (``continue`` names the next; see pages.py)."""
        limit = _integer(request.query, "limit") or 0
        token = request.query.get("continue", "")
        if token:
            page = self.store.pages.next(token, limit or _ALL)  # a continue without a limit: all the rest
            return _list_body(r, page.items, page.revision, page)
        items, revision = self.store.list(r.plural, object_filter)
        if not limit:
            return _list_body(r, items, revision)
        page = self.store.pages.first(items, revision, limit)
        return _list_body(r, page.items, page.revision, page)

    def _watch(self, request: Request, r: Resource, object_filter: ObjectFilter) -> WatchStream:
        since = _integer(request.query, "resourceVersion") or None  # "0" and "" both mean "from now"
        timeout = _integer(request.query, "timeoutSeconds")
        bookmarks = _truthy(request.query.get("allowWatchBookmarks"))
        if self.faults.take_expiry(r.plural):
            current = self.store.revision
            return WatchStream(r, error=status.expired(since or current, current).body())
        try:
            watch = self.store.watch(r.plural, object_filter, since)
        except APIError as exc:  # expired or too new: terminal once the request was accepted
            return WatchStream(r, error=exc.body())
        return WatchStream(r, watch, bookmarks=bookmarks, timeout=float(timeout) if timeout else None)
