"""The agent: wires watcher, cache, change tracker, runner, desired state and backends together.

Order of one change: the watcher updates the cache, the change is recorded, a sync is requested, and
only then do the advisory event hooks fire. Order of one sync: snapshot the cache, build the desired
state (pure), let plugins amend it (level-triggered hook), then hand it to every backend in slot order.

Invariants:
- no sync before every watched kind has finished its first list (the runner is gated on it);
- a backend that cannot start (a missing kernel feature) is reported and left out; the others serve;
- a backend that fails does not stop the others from syncing; the sync then counts as failed, its
  changes are put back, and the next sync is full;
- stopping leaves the datapath programmed (``Backend.stop``), so a restart drops no connection;
  only ``kr cleanup`` removes what backends own.
"""

from __future__ import annotations

import dataclasses
import datetime
import http.server
import logging
import time
from collections.abc import Mapping
from typing import Any

from kubernetes import client

from kr_core.backends import Backend, BackendContext, BackendSpec, watched_kinds
from kr_core.cache import Cache, CacheChange
from kr_core.changes import ChangeSet, ChangeTracker
from kr_core.config import AgentConfig
from kr_core.desired import build_desired_state, prepare
from kr_core.errors import ConfigError, KrError
from kr_core.heap import HeapSettler
from kr_core.model import DesiredState
from kr_core.metrics import HealthState, Metrics, health_route, metrics_route, serve
from kr_core.plugins import PluginHost
from kr_core.runner import SyncRunner
from kr_core.watcher import Watcher, WatchSettings

log = logging.getLogger(__name__)

TRIGGER_TIME_ANNOTATION = "endpoints.kubernetes.io/last-change-trigger-time"


@dataclasses.dataclass(frozen=True, slots=True)
class AgentSettings:
    """Timing and listening settings of ``kr run`` (see the CLI for their flags)."""

    min_sync_interval: float = 1.0
    resync_interval: float = 300.0
    retry_initial: float = 1.0
    retry_max: float = 60.0
    stall_timeout: float = 120.0
    watch: WatchSettings = WatchSettings()
    healthz: tuple[str, int] | None = ("127.0.0.1", 20244)
    metrics: tuple[str, int] | None = ("127.0.0.1", 20245)
    proxy_name: str | None = None


class SyncFailed(KrError):
    """One or more backends failed to sync."""


class Agent:
    def __init__(
        self, config: AgentConfig, host: PluginHost, api_client: client.ApiClient, settings: AgentSettings
    ) -> None:
        self.config = config
        self.host = host
        self.settings = settings
        self.metrics = Metrics()
        self.specs: list[BackendSpec] = host.backends()
        if not self.specs:
            raise KrError(f"the plugins {', '.join(config.plugins) or '(none)'} provide no backend; nothing to run")
        self.kinds = watched_kinds(self.specs)
        self.cache = Cache(self.kinds)
        self.tracker = ChangeTracker()
        self.runner = SyncRunner(
            self._sync,
            min_interval=settings.min_sync_interval,
            resync_interval=settings.resync_interval,
            retry_initial=settings.retry_initial,
            retry_max=settings.retry_max,
        )
        self.health = HealthState(settings.stall_timeout, settings.resync_interval)
        self.health.requested_at = lambda: self.runner.requested_at
        self.health.running_since = lambda: self.runner.running_since
        self.watcher = Watcher(
            self.kinds, api_client, self.cache, self._on_change, self.runner.set_ready, settings.watch,
            on_list=lambda kind: self.metrics.watch_lists.labels(kind).inc(),
            on_restart=lambda kind, reason: self.metrics.watch_restarts.labels(kind, reason).inc(),
        )
        self.health.synced_versions = self.programmed_versions
        self._synced_versions: dict[str, str | None] = {kind: None for kind in self.kinds}
        self.backends: list[tuple[str, Backend]] = []
        self._servers: list[http.server.HTTPServer] = []
        self._node_seen: bool | None = None  # whether the last sync found this node in the API
        self.heap = HeapSettler()

    # --- lifecycle

    def start(self) -> None:
        """Listen, create and start backends, start watching; syncing starts once lists are in.

        The listeners come first: a taken port is an operator error reported before anything touches
        the datapath.
        """
        self._listen()
        context = BackendContext(self.config, self.request_sync, self.metrics.registry)
        for spec in self.specs:
            try:
                backend = spec.factory(context)
                backend.start()
            except Exception as exc:  # a missing kernel feature, say: report it, serve the other slots
                log.error("backend %s (slot %s) cannot start and is left out: %s", spec.name, spec.slot, exc)
                self.metrics.backend_up.labels(spec.name).set(0)
                continue
            self.backends.append((spec.name, backend))
            self.metrics.backend_up.labels(spec.name).set(1)
            log.info("backend %s (slot %s) started", spec.name, spec.slot)
        if not self.backends:
            raise KrError("no backend could start; see the errors above")
        self.host.startup(self.config, self.request_sync)
        log.info("node %s: watching %s", self.config.node_name, ", ".join(self.kinds))
        self.watcher.start()

    def run(self) -> None:
        """Start, then sync until ``stop()`` is called (from a signal handler or another thread)."""
        try:
            self.start()
            self.runner.run_forever()
        finally:
            self.shutdown()

    def stop(self) -> None:
        self.runner.stop()

    def shutdown(self) -> None:
        self.watcher.stop()
        for name, backend in reversed(self.backends):
            try:
                backend.stop()
            except Exception:
                log.exception("backend %s failed to stop", name)
        self.host.shutdown(self.config)
        for server in self._servers:
            server.shutdown()
            server.server_close()
        log.info("node %s: agent stopped; the datapath stays programmed", self.config.node_name)

    def _listen(self) -> None:
        routes = {}
        if self.settings.healthz:
            routes[self.settings.healthz] = {"/healthz": health_route(self.health)}
        if self.settings.metrics:
            routes.setdefault(self.settings.metrics, {})["/metrics"] = metrics_route(self.metrics)
        for (address, port), paths in routes.items():
            try:
                server = serve(address, port, paths)
            except OSError as exc:
                flag = "--healthz-bind-address" if "/healthz" in paths else "--metrics-bind-address"
                raise ConfigError(f"{flag} {address}:{port}: cannot listen: {exc.strerror or exc}") from exc
            self._servers.append(server)
            log.info("serving %s on http://%s:%d", " and ".join(paths), address, server.server_address[1])

    # --- changes

    def request_sync(self) -> None:
        """Ask for a sync soon (plugins call this when their outside world changed)."""
        self.metrics.last_queued_timestamp.set(time.time())
        self.runner.request()

    def _on_change(self, change: CacheChange) -> None:
        kind, key, old, new = change
        prepare(kind, key, new)
        self.tracker.record(kind, key, old, new)
        self._count_change(kind)
        self.request_sync()
        log.debug("%s %s %s", kind, key, "added" if old is None else "deleted" if new is None else "updated")
        self.host.notify(kind, old, new)

    def _count_change(self, kind: str) -> None:
        if kind == "endpointslices":
            self.metrics.endpoint_changes_total.inc()
            self.metrics.endpoint_changes_pending.set(self.tracker.pending(kind))
        elif kind == "services":
            self.metrics.service_changes_total.inc()
            self.metrics.service_changes_pending.set(self.tracker.pending(kind))

    # --- one sync

    def _sync(self, full: bool) -> None:
        started = time.monotonic()
        versions = self.watcher.versions()  # read before the snapshot: it holds at least these
        changes = self.tracker.drain()
        self.metrics.endpoint_changes_pending.set(self.tracker.pending("endpointslices"))
        self.metrics.service_changes_pending.set(self.tracker.pending("services"))
        try:
            snapshot = self.cache.snapshot()
            desired = build_desired_state(snapshot, self.config.node_name, self.settings.proxy_name)
            desired = self.host.amend_desired_state(desired, snapshot, self.config)
            failed = [name for name, backend in self.backends if not self._sync_backend(name, backend, desired, full, changes)]
            if failed:
                raise SyncFailed(f"backends failed: {', '.join(failed)}")
        except Exception:
            self.tracker.restore(changes)
            self.metrics.endpoint_changes_pending.set(self.tracker.pending("endpointslices"))
            self.metrics.service_changes_pending.set(self.tracker.pending("services"))
            self.metrics.syncs.labels("error", "full" if full else "partial").inc()
            raise
        elapsed = time.monotonic() - started
        mode = "full" if full else "partial"
        self.metrics.syncs.labels("ok", mode).inc()
        self.metrics.sync_duration.observe(elapsed)
        (self.metrics.full_sync_duration if full else self.metrics.partial_sync_duration).observe(elapsed)
        self.metrics.last_sync_timestamp.set(time.time())
        for kind, objects in snapshot.items():
            self.metrics.cache_objects.labels(kind).set(len(objects))
        self._observe_programming_latency(changes)
        self._synced_versions = versions
        self._report_own_node(desired)
        self.health.first_sync_done = True
        self.health.last_success = time.monotonic()
        log.info("sync %s ok in %.1f ms: %d changes, %d service ports, %d nodes, %d pods, %d policies",
                 mode, elapsed * 1000, changes.count(), len(desired.services), len(desired.nodes),
                 len(desired.pods), len(desired.policies))
        if full:
            self.heap.settle()

    def programmed_versions(self) -> dict[str, str | None]:
        """Kind -> resourceVersion up to which every watched change is programmed.

        When nothing is pending or running, that is what the watchers have seen (bookmarks included);
        otherwise it is what the last successful sync saw. Tools (the lab's apply barrier) compare it
        with the version of a write to know the write has reached the datapath.
        """
        seen = self.watcher.versions()  # read first: a change is recorded before its version is published
        if self.health.first_sync_done and self.runner.idle and self.tracker.pending() == 0:
            return seen
        return dict(self._synced_versions)

    def _report_own_node(self, desired: DesiredState) -> None:
        """Say once when this node is missing from the API (a wrong --hostname-override), and when it appears."""
        seen = desired.node is not None
        if seen != self._node_seen:
            if not seen:
                log.warning("node %s is not in the API; check --hostname-override / NODE_NAME",
                            self.config.node_name)
            elif self._node_seen is False:
                log.info("node %s appeared in the API", self.config.node_name)
            self._node_seen = seen

    def _sync_backend(self, name: str, backend: Backend, desired: DesiredState, full: bool, changes: ChangeSet) -> bool:
        started = time.monotonic()
        try:
            backend.sync(desired, full=full, changed=changes)
        except Exception as exc:
            log.error("backend %s failed to sync: %s; the next sync will be full", name, exc,
                      exc_info=log.isEnabledFor(logging.DEBUG))
            self.metrics.backend_sync_errors.labels(name).inc()
            return False
        finally:
            self.metrics.backend_sync_duration.labels(name).observe(time.monotonic() - started)
        return True

    def _observe_programming_latency(self, changes: ChangeSet) -> None:
        """kube-proxy's network programming latency: trigger-time annotation to now, per changed slice."""
        now = datetime.datetime.now(datetime.timezone.utc)
        for change in changes.changes.get("endpointslices", {}).values():
            stamp = _trigger_time(change.current)
            if stamp is not None:
                self.metrics.network_programming_duration.observe(max(0.0, (now - stamp).total_seconds()))


def _trigger_time(obj: Mapping[str, Any] | None) -> datetime.datetime | None:
    annotations = ((obj or {}).get("metadata") or {}).get("annotations") or {}
    value = annotations.get(TRIGGER_TIME_ANNOTATION)
    if not value:
        return None
    try:
        return datetime.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
