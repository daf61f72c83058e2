"""The BGP plan of one node: what ``routing.bgp`` tells its speaker, computed from the desired state.

``plan_bgp(desired, settings)`` gives this node's router id, local AS and address, the pod CIDRs it
announces, the peers it keeps sessions with (every other node, in kube-router's full mesh, with each
node's AS from ``kube-router.io/node.asn`` or ``--cluster-asn``), and the prefixes it accepts from them
(exactly the other nodes' pod CIDRs, so nothing else, a service VIP among them, is ever imported).

Invariants: pure (depends on its arguments only); IPv4 only; deterministic order (equal states give equal
plans); what the operator should hear about (a bad ASN annotation, a node without address or pod CIDR) is
returned in ``notes`` and that node or value is left out, never the whole plan.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from kr_core.model import DesiredState, Node
from kr_plugins.routing.plan import node_ipv4

NODE_ASN_ANNOTATION = "kube-router.io/node.asn"
DEFAULT_CLUSTER_ASN = 64512
MAX_ASN = 4294967295


@dataclass(frozen=True, slots=True)
class BgpSettings:
    cluster_asn: int = DEFAULT_CLUSTER_ASN
    full_mesh: bool = True
    router_id: str | None = None  # None: the node's IPv4 address
    port: int = 179
    hold_time: int = 90


@dataclass(frozen=True, slots=True, order=True)
class BgpPeer:
    node: str
    address: str
    asn: int


@dataclass(frozen=True, slots=True)
class BgpPlan:
    router_id: str
    local_address: str
    local_asn: int
    announce: tuple[str, ...]  # this node's pod CIDRs
    peers: tuple[BgpPeer, ...]
    accept: tuple[str, ...]  # the prefixes taken from peers: the other nodes' pod CIDRs
    port: int
    hold_time: int
    notes: tuple[str, ...]


def node_asn(node: Node, settings: BgpSettings, notes: list[str]) -> int:
    """``node``'s AS: its ``kube-router.io/node.asn`` annotation, else the cluster's."""
    raw = node.annotations.get(NODE_ASN_ANNOTATION)
    if raw is None:
        return settings.cluster_asn
    try:
        asn = int(raw)
    except ValueError:
        asn = 0
    if not 1 <= asn <= MAX_ASN:
        notes.append(f"node {node.name}: {NODE_ASN_ANNOTATION}={raw!r} is not an AS number; "
                      f"using --cluster-asn {settings.cluster_asn}")
        return settings.cluster_asn
    return asn


def _pod_cidrs(node: Node) -> list[str]:
    return [c for c in node.pod_cidrs if ipaddress.ip_network(c, strict=False).version == 4]


def plan_bgp(desired: DesiredState, settings: BgpSettings) -> BgpPlan | None:
    """This node's plan, or None while its Node (with an IPv4 address) is not known."""
    me = desired.node
    address = node_ipv4(me) if me is not None else None
    if me is None or address is None:
        return None
    notes: list[str] = []
    peers: list[BgpPeer] = []
    accept: list[str] = []
    for node in desired.nodes:
        if node.name == me.name:
            continue
        ip = node_ipv4(node)
        if ip is None:
            notes.append(f"node {node.name}: no IPv4 node address; no BGP session with it")
            continue
        if settings.full_mesh:
            peers.append(BgpPeer(node.name, ip, node_asn(node, settings, notes)))
            accept += _pod_cidrs(node)
    return BgpPlan(
        router_id=settings.router_id or address,
        local_address=address,
        local_asn=node_asn(me, settings, notes),
        announce=tuple(sorted(_pod_cidrs(me), key=ipaddress.IPv4Network)),
        peers=tuple(sorted(peers)),
        accept=tuple(sorted(set(accept) - set(_pod_cidrs(me)), key=ipaddress.IPv4Network)),
        port=settings.port,
        hold_time=settings.hold_time,
        notes=tuple(notes),
    )
