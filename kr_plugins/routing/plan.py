"""The routing plan of one node: how each peer's pod CIDRs are reached, computed from the desired state.

Role: ``plan_routes`` decides, for every other node, whether its pod CIDRs are routed directly via its
node IP (the IP lies in this node's subnet), through the VXLAN overlay (``--overlay-type full``, or the
peer is in another subnet), or not at all (another subnet with the overlay off); and it collects what goes
with that: the overlay device and peers, the sysctls, and the pod egress set and rules.

Invariants:
- pure: the result depends only on the arguments; what the operator should hear about is returned as
  ``notes`` (stable texts, so the backend can log each once);
- IPv4 only: IPv6 pod CIDRs and node addresses are left out, with a note;
- each destination is routed once: a node whose pod CIDR or node IP an earlier node (in name order)
  already claimed is not routed, with a note; this node's own pod CIDRs are never routed (its bridge holds
  them);
- everything is in a deterministic order, so equal states give equal plans.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, replace

from kr_core.model import DesiredState, Node
from kr_plugins.routing.egress import EgressPlan
from kr_plugins.routing.overlay import (
    OVERLAY_SYSCTLS,
    OverlayPeer,
    OverlayPlan,
    OverlaySettings,
    overlay_device,
    overlay_peer,
    overlay_route,
)
from kr_plugins.routing.routes import Route, Underlay

#: A node routes its pods' traffic: forwarding on (the only sysctl kr sets besides the overlay's).
IP_FORWARD = ("net/ipv4/ip_forward", "1")


@dataclass(frozen=True, slots=True)
class RoutingSettings:
    overlay: OverlaySettings = OverlaySettings()
    enable_pod_egress: bool = True


@dataclass(frozen=True, slots=True)
class RoutingPlan:
    direct: tuple[Route, ...]
    overlay_routes: tuple[Route, ...]
    overlay: OverlayPlan | None
    egress: EgressPlan | None
    sysctls: tuple[tuple[str, str], ...]
    notes: tuple[str, ...]

    @property
    def routes(self) -> tuple[Route, ...]:
        return self.direct + self.overlay_routes

    @property
    def overlaid(self) -> tuple[str, ...]:
        """The pod CIDRs the overlay carries (no other route to them may be installed)."""
        return tuple(route.dst for route in self.overlay_routes)

    def without_direct(self) -> RoutingPlan:
        """This plan for a backend that routes the nodes in this subnet itself (``routing.bgp``: BIRD)."""
        return replace(self, direct=())


def node_ipv4(node: Node) -> str | None:
    """The node's first IPv4 address, InternalIP before ExternalIP (see ``Node.ips``)."""
    return next((ip for ip in node.ips if ipaddress.ip_address(ip).version == 4), None)


def _pod_cidrs(node: Node, notes: list[str]) -> list[str]:
    cidrs = []
    for cidr in node.pod_cidrs:
        if ipaddress.ip_network(cidr).version == 4:
            cidrs.append(cidr)
        else:
            notes.append(f"node {node.name}: IPv6 pod CIDR {cidr} is not routed (routing.static is IPv4 only)")
    return cidrs


def plan_routes(desired: DesiredState, underlay: Underlay, settings: RoutingSettings) -> RoutingPlan:
    """Plan this node's routes; ``underlay`` is where its IP (``node_ipv4(desired.node)``) lives."""
    me = desired.node
    if me is None:
        raise ValueError("plan_routes needs this node's record (desired.node)")
    network = ipaddress.IPv4Network(underlay.network)
    notes: list[str] = []
    local_cidrs = _pod_cidrs(me, notes)
    claimed_cidrs = dict.fromkeys(local_cidrs, me.name)
    claimed_ips = {underlay.ip: me.name}
    all_cidrs = list(local_cidrs)
    direct: list[Route] = []
    overlaid: list[Route] = []
    peers: list[OverlayPeer] = []
    for node in desired.nodes:
        if node.name == me.name:
            continue
        ip = node_ipv4(node)
        cidrs = _pod_cidrs(node, notes)
        if ip is None:
            notes.append(f"node {node.name}: no IPv4 node address; its pods are not routed")
            continue
        if not cidrs:
            notes.append(f"node {node.name}: no IPv4 pod CIDR yet; nothing to route")
            continue
        taken = [f"{c} overlaps {held} (node {claimed_cidrs[held]})" for c in cidrs for held in claimed_cidrs
                 if ipaddress.IPv4Network(c).overlaps(ipaddress.IPv4Network(held))]
        if taken or ip in claimed_ips:
            held = ", ".join(taken) if taken else f"IP {ip} (node {claimed_ips[ip]})"
            notes.append(f"node {node.name}: {held} already taken; its pods are not routed")
            continue
        claimed_cidrs.update(dict.fromkeys(cidrs, node.name))
        claimed_ips[ip] = node.name
        all_cidrs += cidrs
        same_subnet = ipaddress.IPv4Address(ip) in network
        if settings.overlay.uses_overlay(same_subnet):
            peer = overlay_peer(ip, cidrs[0])
            peers.append(peer)
            overlaid += [overlay_route(peer, cidr) for cidr in cidrs]
        elif same_subnet:
            direct += [Route(dst=cidr, gateway=ip, device=underlay.interface) for cidr in cidrs]
        else:
            notes.append(f"node {node.name}: {ip} is outside {network} and the overlay is off; "
                         f"pod CIDR {', '.join(cidrs)} is not routed")
    overlay = None
    if settings.overlay.enabled:
        device = overlay_device(settings.overlay, underlay.ip, underlay.interface, underlay.mtu,
                                local_cidrs[0] if local_cidrs else None)
        overlay = OverlayPlan(device=device, peers=tuple(sorted(peers)))
    egress = None
    if settings.enable_pod_egress:
        egress = EgressPlan(pod_subnets=tuple(sorted(all_cidrs, key=ipaddress.IPv4Network)),
                            sources=tuple(local_cidrs))
    return RoutingPlan(
        direct=tuple(sorted(direct)),
        overlay_routes=tuple(sorted(overlaid)),
        overlay=overlay,
        egress=egress,
        sysctls=(IP_FORWARD, *(OVERLAY_SYSCTLS if overlay else ())),
        notes=tuple(notes),
    )
