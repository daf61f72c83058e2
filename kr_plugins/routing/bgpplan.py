"""The BGP plan of one node: what ``routing.bgp`` tells its speaker, computed from the desired state.

``plan_bgp(desired, settings)`` gives this node's router id, local AS and address, the pod CIDRs it
announces, the peers it keeps sessions with, and the prefixes it accepts from them (exactly the other
nodes' pod CIDRs, so nothing else, a service VIP among them, is ever imported). Each node's AS is its
``kube-router.io/node.asn`` or ``--cluster-asn``. Who peers with whom, as kube-router decides it:

- a route-reflector client (``kube-router.io/rr.client=<cluster id>``) peers only with the servers of its
  cluster id (``kube-router.io/rr.server=<cluster id>``), which reflect routes to it (``rr_client``);
- route-reflector servers peer with each other;
- any other two nodes peer in the full mesh (``--nodes-full-mesh``, the default; iBGP, or eBGP between
  nodes whose annotations give them different ASes), and without it only when they share an AS;
- every node also peers with the external routers of ``--peer-router-*`` and with its own (its
  ``kube-router.io/peers`` annotation; see ``bgppeers``), sending them ``export`` (its pod CIDRs unless
  ``--advertise-pod-cidr=false``, the service addresses ``bgpadvertise`` picks, with the node's communities
  and path prepend) and taking their routes, except the default route, anything inside a node's pod CIDR,
  any service address and the node's ``kube-router.io/node.bgp.customimportreject`` prefixes; an
  external router at a node's address is left out with a note.

Invariants: pure (depends on its arguments only); IPv4 only; deterministic order (equal states give equal
plans); what the operator should hear about (a bad ASN annotation, a node without address or pod CIDR) is
returned in ``notes`` and that node or value is left out, never the whole plan.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from kr_core.model import DesiredState, Node
from kr_plugins.routing.bgpadvertise import AdvertiseSettings, communities, path_prepend, service_addresses, service_vips
from kr_plugins.routing.bgppeers import MAX_ASN, ExternalPeer, node_peers
from kr_plugins.routing.plan import node_ipv4

NODE_ASN_ANNOTATION = "kube-router.io/node.asn"
RR_SERVER_ANNOTATION = "kube-router.io/rr.server"
RR_CLIENT_ANNOTATION = "kube-router.io/rr.client"
IMPORT_REJECT_ANNOTATION = "kube-router.io/node.bgp.customimportreject"
DEFAULT_CLUSTER_ASN = 64512


@dataclass(frozen=True, slots=True)
class GracefulRestart:
    """``--bgp-graceful-restart``: peers keep this node's routes ``time`` seconds while its BIRD restarts;
    a BIRD started again over routes it left waits up to ``deferral`` seconds for its peers before it
    replaces them (``graceful restart wait``)."""

    time: int = 90
    deferral: int = 360


@dataclass(frozen=True, slots=True)
class BgpSettings:
    cluster_asn: int = DEFAULT_CLUSTER_ASN
    full_mesh: bool = True
    router_id: str | None = None  # None: the node's IPv4 address
    port: int = 179
    hold_time: int = 90
    external_peers: tuple[ExternalPeer, ...] = ()  # --peer-router-*: every node's
    multihop_ttl: int | None = None  # external peers more than one hop away
    advertise: AdvertiseSettings = AdvertiseSettings()
    override_nexthop: bool = False
    graceful_restart: GracefulRestart | None = None


@dataclass(frozen=True, slots=True)
class ExternalExport:
    """What this node sends its external routers, and how it marks it."""

    pod_cidrs: bool = True  # --advertise-pod-cidr
    vips: tuple[str, ...] = ()  # service addresses (advertised as /32)
    communities: tuple[tuple[int, int], ...] = ()
    prepend: tuple[int, int] | None = None  # (AS, times)
    next_hop_self: bool = False  # --override-nexthop: this side's session address, not the node's


@dataclass(frozen=True, slots=True, order=True)
class BgpPeer:
    node: str
    address: str
    asn: int
    rr_client: str | None = None  # the cluster id when this node reflects routes to the peer


@dataclass(frozen=True, slots=True)
class RrRole:
    """A node's route-reflector role: the cluster id it serves and the one it is a client of."""

    server: str | None = None
    client: str | None = None


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
    external_peers: tuple[ExternalPeer, ...] = ()  # the flags' and this node's annotations' routers
    cluster_cidrs: tuple[str, ...] = ()  # every node's pod CIDR: never taken from an external peer
    multihop_ttl: int | None = None
    export: ExternalExport = ExternalExport()
    service_addresses: tuple[str, ...] = ()  # every service's addresses: never taken from an external peer
    import_reject: tuple[str, ...] = ()  # the node's own prefixes never taken from an external peer
    graceful_restart: GracefulRestart | None = None


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


def cluster_id(raw: str) -> str | None:
    """A route-reflector cluster id as BGP carries it (a 32-bit number, written as an IPv4 address):
    ``42`` and ``0.0.0.42`` are the same; None when ``raw`` is neither."""
    try:
        return str(ipaddress.IPv4Address(int(raw) if raw.isdigit() else raw))
    except ValueError:
        return None


def rr_role(node: Node, notes: list[str]) -> RrRole:
    """``node``'s route-reflector annotations, a malformed one reported and ignored."""
    ids = []
    for annotation in (RR_SERVER_ANNOTATION, RR_CLIENT_ANNOTATION):
        raw = node.annotations.get(annotation)
        parsed = cluster_id(raw) if raw is not None else None
        if raw is not None and parsed is None:
            notes.append(f"node {node.name}: {annotation}={raw!r} is not a cluster id (a number or an IPv4 "
                         "address); ignored")
        ids.append(parsed)
    return RrRole(*ids)


def import_rejects(node: Node, notes: list[str]) -> tuple[str, ...]:
    """The IPv4 prefixes of ``node``'s ``kube-router.io/node.bgp.customimportreject`` (comma-separated),
    a malformed one reported and left out."""
    found: list[str] = []
    for item in (node.annotations.get(IMPORT_REJECT_ANNOTATION) or "").split(","):
        if not item.strip():
            continue
        try:
            found.append(str(ipaddress.IPv4Network(item.strip(), strict=False)))
        except ValueError:
            notes.append(f"node {node.name}: {IMPORT_REJECT_ANNOTATION}: {item.strip()!r} is not an IPv4 prefix; "
                         "left out")
    return tuple(sorted(set(found), key=ipaddress.IPv4Network))


def peering(me: RrRole, my_asn: int, other: RrRole, other_asn: int, full_mesh: bool) -> tuple[bool, str | None]:
    """Whether two nodes keep a session, and the cluster id if this node reflects to the other."""
    if me.client is not None:
        return other.server == me.client, None
    if other.client is not None:
        return (True, me.server) if me.server == other.client else (False, None)
    if me.server is not None and other.server is not None:
        return True, None
    return full_mesh or my_asn == other_asn, None


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
    my_asn, my_role = node_asn(me, settings, notes), rr_role(me, notes)
    for node in desired.nodes:
        if node.name == me.name:
            continue
        ip = node_ipv4(node)
        if ip is None:
            notes.append(f"node {node.name}: no IPv4 node address; no BGP session with it")
            continue
        accept += _pod_cidrs(node)  # reflected routes of nodes this one has no session with are welcome too
        asn = node_asn(node, settings, notes)
        peer, reflect = peering(my_role, my_asn, rr_role(node, notes), asn, settings.full_mesh)
        if peer:
            peers.append(BgpPeer(node.name, ip, asn, reflect))
    node_ips = {ip for n in desired.nodes if (ip := node_ipv4(n)) is not None}
    external_peers = []
    for external in merge_peers(settings.external_peers, node_peers(me, notes)):
        if external.address in node_ips:  # a second session to a node (or to itself) would clash
            notes.append(f"external peer {external.address}: that is a node's address (nodes peer by the node "
                         "rules); left out")
        else:
            external_peers.append(external)
    rejected = import_rejects(me, notes)
    export = ExternalExport(pod_cidrs=settings.advertise.pod_cidr, vips=service_vips(desired, settings.advertise, notes),
                            communities=communities(me, notes), prepend=path_prepend(me, notes),
                            next_hop_self=settings.override_nexthop)
    return BgpPlan(
        router_id=settings.router_id or address,
        local_address=address,
        local_asn=my_asn,
        announce=tuple(sorted(_pod_cidrs(me), key=ipaddress.IPv4Network)),
        peers=tuple(sorted(peers)),
        accept=tuple(sorted(set(accept) - set(_pod_cidrs(me)), key=ipaddress.IPv4Network)),
        port=settings.port,
        hold_time=settings.hold_time,
        notes=tuple(notes),
        external_peers=tuple(external_peers),
        cluster_cidrs=tuple(sorted({c for n in desired.nodes for c in _pod_cidrs(n)}, key=ipaddress.IPv4Network)),
        multihop_ttl=settings.multihop_ttl,
        export=export,
        service_addresses=service_addresses(desired),
        import_reject=rejected,
        graceful_restart=settings.graceful_restart,
    )


def merge_peers(flags: tuple[ExternalPeer, ...], annotated: tuple[ExternalPeer, ...]) -> tuple[ExternalPeer, ...]:
    """The flags' routers and the node's own, the node's replacing a flag's at the same address and port."""
    chosen = {(p.address, p.port): p for p in flags}
    chosen.update({(p.address, p.port): p for p in annotated})
    return tuple(sorted(chosen.values()))
