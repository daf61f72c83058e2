"""The admin endpoints under ``/_kr/``: fault injection and counters for another process.

    GET  /_kr/stats                    counters (Stats.snapshot) and the store's resourceVersions
    GET  /_kr/status                   the store's revision, each resource's latest revision, and what
                                       the embedding process's status providers report
    POST /_kr/stats/reset              zero the request counters
    GET  /_kr/faults                   pending faults
    POST /_kr/faults/{action}          JSON body = keyword arguments of the Faults method:
         drop-watches    {"resource"?}                          -> {"dropped": n}
         expire-watches  {"count"?, "resource"?}
         compact         {}                                     -> {"oldestResourceVersion": "n"}
         stall-watches   {"seconds", "resource"?}
         hang-requests   {"seconds", "resource"?}
         fail-requests   {"count"?, "code"?, "resource"?, "verb"?}
         clear           {}

Invariant: admin requests are never counted, delayed or failed by injected faults, so a test can
always clear what it injected.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from kr_apiserver.status import APIError, bad_request

if TYPE_CHECKING:
    from kr_apiserver.api import API

PREFIX = "/_kr/"

#: action -> Faults method name
ACTIONS = {
    "drop-watches": "drop_watches",
    "expire-watches": "expire_watches",
    "compact": "compact",
    "stall-watches": "stall_watches",
    "hang-requests": "hang_requests",
    "fail-requests": "fail_requests",
    "clear": "clear",
}


def handle(api: API, method: str, path: str, body: Any) -> tuple[int, Any]:
    """``(code, JSON body)`` for an admin request; raises ``APIError`` for a bad one."""
    path = path.rstrip("/")
    if method == "GET" and path == "/_kr/stats":
        store = {"resourceVersion": str(api.store.revision), "oldestResourceVersion": str(api.store.oldest)}
        return 200, {**api.stats.snapshot(), "store": store}
    if method == "GET" and path == "/_kr/status":
        latest = {resource: str(revision) for resource, revision in api.store.latest_revisions().items()}
        extra = {name: provider() for name, provider in api.status_providers.items()}
        return 200, {"resourceVersion": str(api.store.revision), "latest": latest, **extra}
    if method == "POST" and path == "/_kr/stats/reset":
        api.stats.reset()
        return 200, {}
    if method == "GET" and path == "/_kr/faults":
        return 200, api.faults.describe()
    action = path.removeprefix("/_kr/faults/")
    if method != "POST" or action not in ACTIONS or not path.startswith("/_kr/faults/"):
        raise APIError(404, f"no admin endpoint {method} {path}", "NotFound")
    arguments = body if body is not None else {}
    if not isinstance(arguments, dict):
        raise bad_request("admin requests take a JSON object of keyword arguments")
    try:
        result = getattr(api.faults, ACTIONS[action])(**arguments)
    except (TypeError, ValueError) as exc:
        raise bad_request(f"{action}: {exc}") from exc
    if action == "drop-watches":
        return 200, {"dropped": result}
    if action == "compact":
        return 200, {"oldestResourceVersion": str(result)}
    return 200, {}
