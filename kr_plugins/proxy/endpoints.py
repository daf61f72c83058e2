"""Which endpoints of a service port take new connections, as kube-proxy decides: shared by every proxy
backend (rules for iptables, real servers for IPVS).

Invariants (kube-proxy's ``CategorizeEndpoints``, without topology hints):
- usable endpoints are the ready ones; when none is ready, the serving-and-terminating ones, so a
  service whose pods are all shutting down keeps answering while they drain;
- cluster traffic (to a ClusterIP) uses every usable endpoint, or only this node's with
  ``internalTrafficPolicy: Local``; external traffic (NodePort, externalIPs, load-balancer IPs) every
  usable endpoint, or only this node's with ``externalTrafficPolicy: Local`` (local endpoints are
  chosen among the local ones by the same ready-then-terminating rule);
- a service port with no usable endpoint at all rejects connections; one whose policy-selected set is
  empty while others exist drops them ("has no local endpoints"), as kube-proxy does.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from kr_core.model import Endpoint, ServicePort, ServiceType, TrafficPolicy


@dataclass(frozen=True, slots=True)
class EndpointChoice:
    """``everywhere``: the usable endpoints on any node; ``local``: this node's; ``cluster``: those for
    traffic to the ClusterIP; ``external``: those for traffic from outside (meaningful only when the
    service is ``externally_reachable``)."""

    everywhere: tuple[Endpoint, ...]
    local: tuple[Endpoint, ...]
    cluster: tuple[Endpoint, ...]
    external: tuple[Endpoint, ...]


def usable(endpoints: Iterable[Endpoint]) -> tuple[Endpoint, ...]:
    """The ready endpoints, or, when none is ready, the serving-and-terminating ones."""
    endpoints = tuple(endpoints)
    ready = tuple(e for e in endpoints if e.ready)
    return ready or tuple(e for e in endpoints if e.serving and e.terminating)


def externally_reachable(service: ServicePort) -> bool:
    """NodePort and LoadBalancer services, and any service with external IPs, take outside traffic."""
    return service.type is not ServiceType.CLUSTER_IP or bool(service.external_ips)


def node_port(service: ServicePort) -> int | None:
    """The service port's node port; only NodePort and LoadBalancer services have one (the API server
    allocates none for others, and kube-proxy ignores one a ClusterIP service might carry)."""
    return service.node_port if service.type is not ServiceType.CLUSTER_IP else None


def choose(service: ServicePort) -> EndpointChoice:
    """The IPv4 endpoints (kr's proxies are IPv4 only; a dual-stack pod's IPv6 address is left out)."""
    ipv4 = [e for e in service.endpoints if ":" not in e.address]
    everywhere = usable(ipv4)
    local = usable(e for e in ipv4 if e.is_local)
    return EndpointChoice(
        everywhere=everywhere,
        local=local,
        cluster=local if service.internal_traffic_policy is TrafficPolicy.LOCAL else everywhere,
        external=local if service.external_traffic_policy is TrafficPolicy.LOCAL else everywhere,
    )
