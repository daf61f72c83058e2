"""UDP flows that would stick to the past after a service change, found from two desired states (pure).

A UDP "connection" has no end the kernel can see, so its conntrack entry keeps the NAT target it got
until it times out. ``stale_flows(before, now)`` says which entries a proxy backend must delete after
programming ``now``: those NATed to an endpoint a service port no longer uses, and those of a service
port that had no endpoint and now has one (they were never NATed). Shared by every proxy backend.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from kr_core.errors import KrError
from kr_core.model import DesiredState, Protocol
from kr_plugins.kernel import conntrack
from kr_plugins.proxy.endpoints import choose, externally_reachable, node_port
from kr_plugins.proxy.rules import service_label

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class UdpTargets:
    """Where a UDP service port's traffic arrives (addresses, node port) and the endpoint addresses
    kr's rules send it to."""

    addresses: tuple[str, ...]
    port: int
    node_port: int | None
    endpoints: frozenset[str]


def udp_targets(desired: DesiredState) -> dict[str, UdpTargets]:
    """Service port label -> its UDP targets, for every UDP service port."""
    targets = {}
    for service in desired.services:
        if service.protocol is not Protocol.UDP:
            continue
        choice = choose(service)
        used = choice.cluster + (choice.everywhere + choice.local if externally_reachable(service) else ())
        addresses = tuple(a for a in (*service.cluster_ips, *service.external_ips, *service.load_balancer_ips)
                          if ":" not in a)
        targets[service_label(service)] = UdpTargets(addresses, service.port, node_port(service),
                                                     frozenset(e.address for e in used))
    return targets


def stale_flows(before: Mapping[str, UdpTargets], now: Mapping[str, UdpTargets]) -> list[dict[str, Any]]:
    """``conntrack.delete_udp_flows`` arguments for flows that would otherwise stick to the past: flows
    NATed to an endpoint a service port no longer uses, and flows to a service port that had no endpoint
    and now has one (they were never NATed)."""
    deletions: list[dict[str, Any]] = []
    for label, old in before.items():
        new = now.get(label)
        for endpoint in sorted(old.endpoints - (new.endpoints if new else frozenset())):
            deletions += [{"orig_dst": a, "dst_nat": endpoint} for a in old.addresses]
            if old.node_port is not None:
                deletions.append({"orig_port_dst": old.node_port, "dst_nat": endpoint})
    for label, new in now.items():
        old = before.get(label)
        if new.endpoints and (old is None or not old.endpoints):
            deletions += [{"orig_dst": a, "orig_port_dst": new.port} for a in new.addresses]
            if new.node_port is not None:
                deletions.append({"orig_port_dst": new.node_port})
    return deletions


def clear_stale_flows(before: Mapping[str, UdpTargets] | None, desired: DesiredState) -> dict[str, UdpTargets]:
    """Delete the conntrack entries ``stale_flows`` names, once ``desired`` is programmed; return the UDP
    targets to pass as ``before`` next time. ``before`` None (nothing seen since this process started)
    deletes nothing, so a restart drops no flow. A failed deletion is logged: stale entries expire on
    their own, so it never fails a sync."""
    now = udp_targets(desired)
    for deletion in stale_flows(before, now) if before is not None else []:
        try:
            deleted = conntrack.delete_udp_flows(**deletion)
        except KrError as exc:
            log.warning("proxy: could not delete UDP conntrack entries %s: %s", deletion, exc)
            continue
        if deleted:
            log.info("proxy: deleted %d stale UDP conntrack entr%s %s", deleted, "y" if deleted == 1 else "ies", deletion)
    return now
