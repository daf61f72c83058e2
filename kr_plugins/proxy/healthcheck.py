"""Service health-check ports: what a cloud load balancer asks a node before sending it a Local service's
traffic (``healthCheckNodePort`` of a LoadBalancer service with ``externalTrafficPolicy: Local``).

Each port answers any GET with kube-proxy's body, ``{"service": {"namespace", "name"}, "localEndpoints":
N, "serviceProxyHealthy": true}``: 200 when this node has a usable endpoint (N > 0), 503 when it has
none, so the balancer sends traffic only to nodes that can serve it without leaving the node.

Invariants:
- ``sync`` opens listeners for new ports, closes those no longer wanted and updates the counts the others
  report, atomically per port (a request sees the old count or the new one);
- a port that cannot be opened (another process holds it) is reported in the return value and tried
  again by the next ``sync``; the other ports are unaffected;
- listeners run on daemon threads in the agent's network namespace; ``close`` stops them all.
"""

from __future__ import annotations

import http.server
import json
import logging
import socketserver
import threading
from collections.abc import Mapping
from dataclasses import dataclass

from kr_core.model import DesiredState, ServicePort, TrafficPolicy

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class HealthTarget:
    namespace: str
    name: str
    local_endpoints: int


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    target: HealthTarget

    def server_bind(self) -> None:
        # HTTPServer.server_bind resolves the host's name (a DNS query that can stall a sync for seconds)
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = str(self.server_address[0]), int(self.server_address[1])


class _Handler(http.server.BaseHTTPRequestHandler):
    server: _Server

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        target = self.server.target
        body = json.dumps({"service": {"namespace": target.namespace, "name": target.name},
                           "localEndpoints": target.local_endpoints, "serviceProxyHealthy": True}).encode()
        self.send_response(200 if target.local_endpoints > 0 else 503)
        self.send_header("Content-Type", "application/json")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("X-Load-Balancing-Endpoint-Weight", str(target.local_endpoints))
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 (http.server's signature)
        log.debug("health check %s: " + format, self.server.server_address[1], *args)


class HealthCheckServers:
    def __init__(self, address: str = "0.0.0.0") -> None:
        self._address = address
        self._servers: dict[int, _Server] = {}

    @property
    def ports(self) -> list[int]:
        return sorted(self._servers)

    def sync(self, wanted: Mapping[int, HealthTarget]) -> list[str]:
        """Serve exactly ``wanted`` (port -> target); return one message per port that could not be opened."""
        for port in [p for p in self._servers if p not in wanted]:
            self._stop(port)
        problems = []
        for port, target in wanted.items():
            server = self._servers.get(port)
            if server is None:
                try:
                    server = _Server((self._address, port), _Handler)
                except OSError as exc:
                    problems.append(f"health check port {port} of {target.namespace}/{target.name}: {exc}")
                    continue
                server.target = target
                threading.Thread(target=server.serve_forever, name=f"healthcheck:{port}", daemon=True).start()
                self._servers[port] = server
            server.target = target
        return problems

    def close(self) -> None:
        for port in list(self._servers):
            self._stop(port)

    def _stop(self, port: int) -> None:
        server = self._servers.pop(port)
        server.shutdown()
        server.server_close()


def health_targets(desired: DesiredState) -> dict[int, HealthTarget]:
    """healthCheckNodePort -> what it reports, for Local load-balancer services."""
    targets: dict[int, HealthTarget] = {}
    for service in desired.services:
        port = service.health_check_node_port
        if port is None or service.external_traffic_policy is not TrafficPolicy.LOCAL:
            continue
        local = _count_local(service)
        seen = targets.get(port)
        count = max(local, seen.local_endpoints) if seen is not None else local  # one per service, not port
        targets[port] = HealthTarget(service.namespace, service.name, count)
    return targets


def _count_local(service: ServicePort) -> int:
    """This node's ready IPv4 endpoints: only terminating ones left means failing the check, so the load
    balancer drains this node while they finish (kube-proxy, KEP-1669)."""
    return len({e.address for e in service.endpoints if e.is_local and e.ready and ":" not in e.address})
