"""Prometheus metrics and the /healthz and /metrics HTTP endpoints.

Metric names follow kube-proxy's (``kubeproxy_sync_proxy_rules_*``, ``kubeproxy_network_programming_*``)
so existing dashboards and alerts work unchanged; kr's own metrics are prefixed ``kr_``.

Invariants:
- metrics live in a registry per agent (not prometheus_client's global one), so tests can run several;
- /healthz answers (JSON: healthy, reason, secondsSinceLastSync, syncedResourceVersions per kind) 200
  only after the first successful sync, and 503 once a sync has been running, or a requested sync has
  waited, longer than the stall timeout, or nothing has synced for the resync interval plus that
  timeout (the sync loop is stuck or failing).
"""

from __future__ import annotations

import http.server
import json
import logging
import socket
import threading
import time
from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

log = logging.getLogger(__name__)

# kube-proxy's buckets for sync durations: 1 ms doubling to ~16 s
_SYNC_BUCKETS = tuple(0.001 * 2**i for i in range(15))
# kube-proxy's network-programming buckets: 0.25 s .. 30 min
_PROGRAMMING_BUCKETS = (0.25, 0.5, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20,
                        21, 22, 23, 24, 25, 26, 27, 28, 29, 30, 31, 32, 33, 34, 35, 36, 37, 38, 39, 40, 41,
                        42, 43, 44, 45, 46, 47, 48, 49, 50, 51, 52, 53, 54, 55, 56, 57, 58, 59, 60, 75, 90,
                        105, 120, 135, 150, 165, 180, 195, 210, 225, 240, 255, 270, 285, 300, 390, 480, 570,
                        660, 750, 840, 930, 1020, 1110, 1200, 1290, 1380, 1470, 1560, 1650, 1740, 1800)


class Metrics:
    """The agent's metrics, registered in their own registry."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.sync_duration = Histogram(
            "kubeproxy_sync_proxy_rules_duration_seconds", "Sync duration in seconds (all backends).",
            buckets=_SYNC_BUCKETS, registry=r)
        self.full_sync_duration = Histogram(
            "kubeproxy_sync_full_proxy_rules_duration_seconds", "Full sync duration in seconds.",
            buckets=_SYNC_BUCKETS, registry=r)
        self.partial_sync_duration = Histogram(
            "kubeproxy_sync_partial_proxy_rules_duration_seconds", "Partial sync duration in seconds.",
            buckets=_SYNC_BUCKETS, registry=r)
        self.last_sync_timestamp = Gauge(
            "kubeproxy_sync_proxy_rules_last_timestamp_seconds", "The last time a sync succeeded.", registry=r)
        self.last_queued_timestamp = Gauge(
            "kubeproxy_sync_proxy_rules_last_queued_timestamp_seconds",
            "The last time a sync was queued.", registry=r)
        self.endpoint_changes_pending = Gauge(
            "kubeproxy_sync_proxy_rules_endpoint_changes_pending", "Pending EndpointSlice changes.", registry=r)
        self.endpoint_changes_total = Counter(
            "kubeproxy_sync_proxy_rules_endpoint_changes", "Cumulative EndpointSlice changes.", registry=r)
        self.service_changes_pending = Gauge(
            "kubeproxy_sync_proxy_rules_service_changes_pending", "Pending Service changes.", registry=r)
        self.service_changes_total = Counter(
            "kubeproxy_sync_proxy_rules_service_changes", "Cumulative Service changes.", registry=r)
        self.network_programming_duration = Histogram(
            "kubeproxy_network_programming_duration_seconds",
            "Time from an endpoints change in the API to its programming on this node.",
            buckets=_PROGRAMMING_BUCKETS, registry=r)
        self.syncs = Counter("kr_syncs", "Syncs by result and kind.", ["result", "mode"], registry=r)
        self.backend_sync_duration = Histogram(
            "kr_backend_sync_duration_seconds", "Sync duration per backend.", ["backend"],
            buckets=_SYNC_BUCKETS, registry=r)
        self.backend_up = Gauge("kr_backend_up", "1 when a backend started, 0 when it could not.", ["backend"], registry=r)
        self.backend_sync_errors = Counter(
            "kr_backend_sync_errors", "Failed syncs per backend.", ["backend"], registry=r)
        self.watch_lists = Counter("kr_watch_lists", "Lists (first and relists) per kind.", ["kind"], registry=r)
        self.watch_restarts = Counter(
            "kr_watch_restarts", "Watch reconnections per kind and reason.", ["kind", "reason"], registry=r)
        self.cache_objects = Gauge("kr_cache_objects", "Objects in the cache per kind.", ["kind"], registry=r)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class HealthState:
    """What /healthz reports, fed by the agent."""

    def __init__(self, stall_timeout: float, resync_interval: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.stall_timeout = stall_timeout
        self.resync_interval = resync_interval
        self._clock = clock
        self.first_sync_done = False
        self.last_success: float | None = None
        self.requested_at: Callable[[], float | None] = lambda: None
        self.running_since: Callable[[], float | None] = lambda: None
        self.synced_versions: Callable[[], dict[str, str | None]] = dict

    def check(self) -> tuple[bool, str]:
        """(healthy, reason)."""
        now = self._clock()
        if not self.first_sync_done or self.last_success is None:
            return False, "waiting for the first successful sync"
        running = self.running_since()
        if running is not None and now - running > self.stall_timeout:
            return False, f"a sync has been running for {now - running:.1f}s (stall timeout {self.stall_timeout:g}s)"
        requested = self.requested_at()
        if requested is not None and now - requested > self.stall_timeout:
            return False, f"a requested sync has waited {now - requested:.1f}s (stall timeout {self.stall_timeout:g}s)"
        if now - self.last_success > self.resync_interval + self.stall_timeout:
            return False, f"no successful sync for {now - self.last_success:.1f}s"
        return True, "ok"


def serve(address: str, port: int, routes: dict[str, Callable[[], tuple[int, str, bytes]]]) -> http.server.ThreadingHTTPServer:
    """Serve ``routes`` (path -> () -> (status, content type, body)) on a daemon thread."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server naming)
            route = routes.get(self.path.split("?", 1)[0])
            status, ctype, body = route() if route else (404, "text/plain", b"not found\n")
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:  # noqa: A002 (http.server signature)
            log.debug("http %s", format % args)

    class Server(http.server.ThreadingHTTPServer):
        address_family = socket.AF_INET6 if ":" in address else socket.AF_INET
        daemon_threads = True

    server = Server((address, port), Handler)
    threading.Thread(target=server.serve_forever, name=f"http-{port}", daemon=True).start()
    return server


def health_route(health: HealthState) -> Callable[[], tuple[int, str, bytes]]:
    def route() -> tuple[int, str, bytes]:
        ok, reason = health.check()
        since = None if health.last_success is None else round(time.monotonic() - health.last_success, 3)
        body = json.dumps({"healthy": ok, "reason": reason, "secondsSinceLastSync": since,
                           "syncedResourceVersions": health.synced_versions()}).encode() + b"\n"
        return (200 if ok else 503), "application/json", body
    return route


def metrics_route(metrics: Metrics) -> Callable[[], tuple[int, str, bytes]]:
    return lambda: (200, CONTENT_TYPE_LATEST, metrics.render())
