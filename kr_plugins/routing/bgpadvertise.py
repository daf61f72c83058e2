"""What a node advertises to external BGP routers besides its pod CIDRs, and how it marks it.

- ``service_vips``: the service addresses this node advertises, as kube-router picks them: a service's
  cluster IP with ``--advertise-cluster-ip``, its external IPs with ``--advertise-external-ip``, the
  ingress IPs of a LoadBalancer with ``--advertise-loadbalancer-ip``, each overridable per service with
  ``kube-router.io/service.advertise.clusterip`` / ``.externalip`` / ``.loadbalancerip`` ("true" or
  "false"; ``kube-router.io/service.skiplbips`` still skips the ingress IPs). A service whose external
  traffic policy is Local (or annotated ``kube-router.io/service.local``) is advertised only by nodes
  with a ready endpoint of it, so the router sends its traffic only where it is served locally.
  Headless services have no address to advertise.
- ``service_addresses``: every address any service holds: never imported from an external router.
- ``communities``: ``kube-router.io/node.bgp.communities``, added to what the node sends external
  routers: a 32-bit number, ``ASN:value`` with two 16-bit numbers, or a well-known name (``no-export``).
- ``path_prepend``: ``kube-router.io/path-prepend.as`` with ``.repeat-n``, the AS prepended that many
  times to what the node sends external routers.

Invariants: pure; IPv4 only; deterministic order; a malformed annotation is reported in ``notes`` and
the flag's value (or nothing) is used instead, never a guess.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass

from kr_core.model import DesiredState, Node, ServicePort, ServiceType, TrafficPolicy
from kr_plugins.routing.bgppeers import MAX_ASN

ADVERTISE_CLUSTER_IP_ANNOTATION = "kube-router.io/service.advertise.clusterip"
ADVERTISE_EXTERNAL_IP_ANNOTATION = "kube-router.io/service.advertise.externalip"
ADVERTISE_LOADBALANCER_IP_ANNOTATION = "kube-router.io/service.advertise.loadbalancerip"
SKIP_LB_IPS_ANNOTATION = "kube-router.io/service.skiplbips"
SERVICE_LOCAL_ANNOTATION = "kube-router.io/service.local"
COMMUNITIES_ANNOTATION = "kube-router.io/node.bgp.communities"
PREPEND_AS_ANNOTATION = "kube-router.io/path-prepend.as"
PREPEND_REPEAT_ANNOTATION = "kube-router.io/path-prepend.repeat-n"
MAX_PREPEND = 255

#: Well-known communities by name (RFC 1997, 7999, 8326, 8642, 9494; the names GoBGP reads).
WELL_KNOWN_COMMUNITIES = {
    "internet": 0x00000000,
    "graceful-shutdown": 0xFFFF0000,
    "planned-shut": 0xFFFF0000,
    "accept-own": 0xFFFF0001,
    "llgr-stale": 0xFFFF0006,
    "no-llgr": 0xFFFF0007,
    "blackhole": 0xFFFF029A,
    "no-export": 0xFFFFFF01,
    "no-advertise": 0xFFFFFF02,
    "no-export-subconfed": 0xFFFFFF03,
    "no-peer": 0xFFFFFF04,
}
_TRUE = {"1", "t", "true"}
_FALSE = {"0", "f", "false"}


@dataclass(frozen=True, slots=True)
class AdvertiseSettings:
    """kube-router's ``--advertise-*`` flags."""

    cluster_ip: bool = False
    external_ip: bool = False
    loadbalancer_ip: bool = False
    pod_cidr: bool = True


def _ipv4(addresses: Iterable[str]) -> list[str]:
    return [a for a in addresses if ipaddress.ip_address(a).version == 4]


def _choice(port: ServicePort, annotation: str, default: bool, notes: list[str]) -> bool:
    raw = port.annotations.get(annotation)
    if raw is None:
        return default
    if raw.strip().lower() in _TRUE | _FALSE:
        return raw.strip().lower() in _TRUE
    notes.append(f"service {port.service_key}: {annotation}={raw!r} is neither true nor false; "
                 f"using the flag's {str(default).lower()}")
    return default


def _service_vips(port: ServicePort, settings: AdvertiseSettings, notes: list[str]) -> list[str]:
    vips = []
    if _choice(port, ADVERTISE_CLUSTER_IP_ANNOTATION, settings.cluster_ip, notes):
        vips += port.cluster_ips
    if _choice(port, ADVERTISE_EXTERNAL_IP_ANNOTATION, settings.external_ip, notes):
        vips += port.external_ips
    if (port.type is ServiceType.LOAD_BALANCER and SKIP_LB_IPS_ANNOTATION not in port.annotations
            and _choice(port, ADVERTISE_LOADBALANCER_IP_ANNOTATION, settings.loadbalancer_ip, notes)):
        vips += port.load_balancer_ips
    return vips


def _served_here(port: ServicePort) -> bool:
    return any(e.is_local and e.ready for e in port.endpoints)


def service_vips(desired: DesiredState, settings: AdvertiseSettings, notes: list[str]) -> tuple[str, ...]:
    """The service addresses this node advertises (as /32 routes), sorted."""
    vips: set[str] = set()
    seen: set[str] = set()  # a service's ports share its annotations: judge (and note) each service once
    local_services = {p.service_key for p in desired.services if _served_here(p)}
    for port in desired.services:
        if port.service_key in seen or not port.cluster_ips:  # headless: nothing to advertise
            continue
        seen.add(port.service_key)
        local_only = (port.external_traffic_policy is TrafficPolicy.LOCAL
                      or SERVICE_LOCAL_ANNOTATION in port.annotations)
        if local_only and port.service_key not in local_services:
            continue
        vips.update(_ipv4(_service_vips(port, settings, notes)))
    return tuple(sorted(vips, key=ipaddress.IPv4Address))


def service_addresses(desired: DesiredState) -> tuple[str, ...]:
    """Every IPv4 address a service holds (cluster, external and load-balancer IPs), sorted."""
    addresses = {a for p in desired.services for a in _ipv4((*p.cluster_ips, *p.external_ips, *p.load_balancer_ips))}
    return tuple(sorted(addresses, key=ipaddress.IPv4Address))


def _community(raw: str) -> tuple[int, int]:
    text = raw.strip().lower()
    if text in WELL_KNOWN_COMMUNITIES:
        value = WELL_KNOWN_COMMUNITIES[text]
    elif ":" in text:
        high, _, low = text.partition(":")
        if not (high.isdigit() and low.isdigit() and int(high) <= 0xFFFF and int(low) <= 0xFFFF):
            raise ValueError(raw)
        return int(high), int(low)
    elif text.isdigit() and int(text) <= 0xFFFFFFFF:
        value = int(text)
    else:
        raise ValueError(raw)
    return value >> 16, value & 0xFFFF


def communities(node: Node, notes: list[str]) -> tuple[tuple[int, int], ...]:
    """``node``'s communities as (high, low) pairs, in the annotation's order without repeats."""
    raw = node.annotations.get(COMMUNITIES_ANNOTATION)
    if not raw:
        return ()
    found: list[tuple[int, int]] = []
    for item in raw.split(","):
        if not item.strip():
            continue
        try:
            pair = _community(item)
        except ValueError:
            notes.append(f"node {node.name}: {COMMUNITIES_ANNOTATION}: {item.strip()!r} is not a community "
                         "(a number, ASN:value or a well-known name); left out")
            continue
        if pair not in found:
            found.append(pair)
    return tuple(found)


def path_prepend(node: Node, notes: list[str]) -> tuple[int, int] | None:
    """``(AS, times)`` from ``node``'s path-prepend annotations, or None."""
    asn, repeat = node.annotations.get(PREPEND_AS_ANNOTATION), node.annotations.get(PREPEND_REPEAT_ANNOTATION)
    if asn is None and repeat is None:
        return None
    try:
        number, times = int(asn or ""), int(repeat or "")
    except ValueError:
        number = times = 0
    if not 1 <= number <= MAX_ASN or not 1 <= times <= MAX_PREPEND:
        notes.append(f"node {node.name}: {PREPEND_AS_ANNOTATION}={asn!r} with {PREPEND_REPEAT_ANNOTATION}={repeat!r} "
                     f"is not an AS number and a count within 1..{MAX_PREPEND}; nothing is prepended")
        return None
    return number, times
