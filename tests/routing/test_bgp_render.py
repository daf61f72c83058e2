"""The pure half of ``routing.bgp``: the BGP plan of a node and the BIRD configuration rendered from it.

The golden case is a four-node cluster seen from node-a (one node in another subnet, one with its own AS,
one without an address); regenerate ``golden/bird-node-a.conf`` after an intended change with
``KR_UPDATE_GOLDEN=1 .venv/bin/python -m pytest tests/routing/test_bgp_render.py`` and review the diff.
BIRD itself (``bird -p``) must accept every configuration rendered here.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from birdcheck import bird_refuses, needs_bird

from kr_core.model import DesiredState, FrozenMap, Node, NodeAddress
from kr_plugins.routing.bgpplan import (
    NODE_ASN_ANNOTATION,
    RR_CLIENT_ANNOTATION,
    RR_SERVER_ANNOTATION,
    BgpPeer,
    BgpSettings,
    ExternalPeer,
    plan_bgp,
)
from kr_plugins.routing.birdconf import protocol_name, render_bird
from kr_plugins.routing.birddaemon import BirdError, parse_routes, parse_sessions

GOLDEN = Path(__file__).parent / "golden"
UPDATE = os.environ.get("KR_UPDATE_GOLDEN") == "1"
SUBNET = "192.168.50.0/24"


def node(name: str, ip: str | None, cidrs: tuple[str, ...] = (), asn: str | None = None) -> Node:
    return Node(name=name, addresses=(NodeAddress("InternalIP", ip),) if ip else (), pod_cidrs=cidrs,
                labels=FrozenMap(), annotations=FrozenMap({NODE_ASN_ANNOTATION: asn} if asn else {}))


NODES = (
    node("node-a", "192.168.50.11", ("10.244.1.0/24", "fd00:1::/64")),
    node("node-b", "192.168.50.12", ("10.244.2.0/24",)),
    node("node-c", "192.168.60.13", ("10.244.3.0/24",), asn="64600"),
    node("node-d", None, ("10.244.4.0/24",)),
)


def state(*nodes: Node, me: str = "node-a") -> DesiredState:
    return DesiredState(node_name=me, node=next((n for n in nodes if n.name == me), None), nodes=nodes)


def test_the_plan_meshes_with_every_addressed_node_and_accepts_exactly_their_pod_cidrs() -> None:
    plan = plan_bgp(state(*NODES), BgpSettings())
    assert plan is not None
    assert (plan.router_id, plan.local_address, plan.local_asn) == ("192.168.50.11", "192.168.50.11", 64512)
    assert plan.announce == ("10.244.1.0/24",)  # IPv4 only
    assert plan.peers == (BgpPeer("node-b", "192.168.50.12", 64512), BgpPeer("node-c", "192.168.60.13", 64600))
    assert plan.accept == ("10.244.2.0/24", "10.244.3.0/24")
    assert plan.notes == ("node node-d: no IPv4 node address; no BGP session with it",)


def test_settings_and_annotations() -> None:
    custom = plan_bgp(state(*NODES), BgpSettings(cluster_asn=65001, router_id="1.2.3.4", port=1179, hold_time=9))
    assert custom is not None
    assert (custom.local_asn, custom.router_id, custom.port, custom.hold_time) == (65001, "1.2.3.4", 1179, 9)
    assert [p.asn for p in custom.peers] == [65001, 64600]
    bad = plan_bgp(state(node("node-a", "192.168.50.11", asn="sixty"), NODES[1]), BgpSettings())
    assert bad is not None and bad.local_asn == 64512
    assert bad.notes == ("node node-a: kube-router.io/node.asn='sixty' is not an AS number; using --cluster-asn 64512",)
    # without the full mesh only nodes of one AS peer (node-c has its own)
    assert [p.node for p in plan_bgp(state(*NODES), BgpSettings(full_mesh=False)).peers] == ["node-b"]  # type: ignore[union-attr]
    assert plan_bgp(state(*NODES[1:]), BgpSettings()) is None  # this node is not known yet
    assert plan_bgp(state(*NODES, me="node-d"), BgpSettings()) is None  # nor its address


def rr(name: str, ip: str, cidr: str, server: str | None = None, client: str | None = None) -> Node:
    annotations = {k: v for k, v in ((RR_SERVER_ANNOTATION, server), (RR_CLIENT_ANNOTATION, client)) if v}
    return Node(name=name, addresses=(NodeAddress("InternalIP", ip),), pod_cidrs=(cidr,), labels=FrozenMap(),
                annotations=FrozenMap(annotations))


RR_NODES = (
    rr("rr-1", "192.168.50.1", "10.244.11.0/24", server="42"),
    rr("rr-2", "192.168.50.2", "10.244.12.0/24", server="0.0.0.42"),
    rr("client-a", "192.168.50.21", "10.244.21.0/24", client="42"),
    rr("client-b", "192.168.50.22", "10.244.22.0/24", client="42"),
    rr("client-x", "192.168.50.23", "10.244.23.0/24", client="7"),
    rr("plain", "192.168.50.30", "10.244.30.0/24"),
)


def peers_of(name: str, full_mesh: bool = True) -> list[tuple[str, str | None]]:
    plan = plan_bgp(state(*RR_NODES, me=name), BgpSettings(full_mesh=full_mesh))
    assert plan is not None
    return [(p.node, p.rr_client) for p in plan.peers]


def test_route_reflectors_peer_as_kube_router_pairs_them() -> None:
    # a server reflects to the clients of its cluster id (42 and 0.0.0.42 are one id), meshes with the
    # other server, and peers with nodes that are no client at all
    assert peers_of("rr-1") == [("client-a", "0.0.0.42"), ("client-b", "0.0.0.42"), ("plain", None), ("rr-2", None)]
    # a client peers with its servers only; a client of an id nobody serves peers with nobody
    assert peers_of("client-a") == [("rr-1", None), ("rr-2", None)]
    assert peers_of("client-x") == []
    # a plain node never peers with clients (they talk to their servers only)
    assert peers_of("plain") == [("rr-1", None), ("rr-2", None)]
    # every node accepts every other node's pod CIDR: reflected routes come from nodes it has no session with
    plan = plan_bgp(state(*RR_NODES, me="client-a"), BgpSettings())
    assert plan is not None and len(plan.accept) == len(RR_NODES) - 1
    text = render_bird(plan_bgp(state(*RR_NODES, me="rr-1"), BgpSettings()), SUBNET)  # type: ignore[arg-type]
    assert text.count("rr client; rr cluster id 0.0.0.42;") == 2
    assert "if source = RTS_BGP && net ~ [" in text  # a reflector passes the others' routes on
    assert "RTS_BGP && net" not in render_bird(plan, SUBNET)  # a client does not
    bad = plan_bgp(state(rr("odd", "192.168.50.9", "10.244.9.0/24", server="not-an-id"), *RR_NODES, me="odd"),
                   BgpSettings())
    assert bad is not None and "kube-router.io/rr.server='not-an-id' is not a cluster id" in " ".join(bad.notes)


def test_golden_bird_configuration() -> None:
    plan = plan_bgp(state(*NODES), BgpSettings())
    assert plan is not None
    text = render_bird(plan, SUBNET)
    path = GOLDEN / "bird-node-a.conf"
    if UPDATE:
        path.write_text(text, encoding="utf-8")
    assert text == path.read_text(encoding="utf-8")
    assert f"protocol bgp {protocol_name(plan.peers[0])} from kr_peer {{ neighbor 192.168.50.12 as 64512; direct;" in text
    assert f"protocol bgp {protocol_name(plan.peers[1])} from kr_peer {{ neighbor 192.168.60.13 as 64600; multihop;" in text
    assert render_bird(plan, SUBNET) == text  # deterministic


def test_protocol_names_are_identifiers_and_distinct() -> None:
    names = {protocol_name(BgpPeer(n, "10.0.0.1", 1)) for n in ("node.a", "node-a", "node_a", "x" * 200)}
    assert len(names) == 4
    assert all(name.replace("_", "").isalnum() and len(name) <= 50 for name in names)


@needs_bird
@pytest.mark.parametrize(("nodes", "me"), [(NODES, "node-a"), (NODES[:1], "node-a"), (RR_NODES, "rr-1")],
                         ids=["cluster", "alone", "reflector"])
def test_bird_accepts_the_rendered_configuration(nodes: tuple[Node, ...], me: str, tmp_path: Path) -> None:
    external = (ExternalPeer("192.168.50.100", 65000, 179, "s3cret"), ExternalPeer("10.9.9.9", 65001, 1179))
    plan = plan_bgp(state(*nodes, me=me), BgpSettings(external_peers=external, multihop_ttl=3))
    assert plan is not None
    assert bird_refuses(render_bird(plan, SUBNET), tmp_path) is None


def test_birdc_output_is_read_into_sessions_and_routes() -> None:
    """``kr bgp peers`` / ``routes`` read BIRD 2.0.12's own output (captured from the lab's kube-node1)."""
    sessions = parse_sessions((GOLDEN / "birdc-show-protocols-all.txt").read_text())
    assert [(s.peer, s.address, s.asn, s.state) for s in sessions] == [
        ("kube-node2", "192.168.56.12", "64512", "Established"), ("kube-node3", "192.168.56.13", "64512", "Established")]
    assert all(s.protocol.startswith("kr_kube_node") and s.since for s in sessions)
    routes = parse_routes((GOLDEN / "birdc-show-route.txt").read_text())
    assert [(r.prefix, r.via, r.source.split("_")[-1] if r.source != "kr_pods" else r.source, r.best) for r in routes] == [
        ("10.1.3.0/24", "192.168.56.13", "a1a5fd", True), ("10.1.1.0/24", "unreachable", "kr_pods", True),
        ("10.1.2.0/24", "192.168.56.12", "0e80a4", True)]
    assert parse_sessions("BIRD 2.0.12 ready.\n") == [] and parse_routes("") == []


def test_session_metrics_come_from_birds_sessions() -> None:
    from prometheus_client import CollectorRegistry, generate_latest

    from kr_plugins.routing.bgpmetrics import BgpCollector

    class FakeBird:
        def __init__(self, up: bool | None) -> None:
            self.up = up

        def running(self) -> bool:
            return self.up is not False

        def sessions(self) -> list:
            if self.up is None:  # died between running() and sessions()
                raise BirdError("birdc: no answer")
            return parse_sessions((GOLDEN / "birdc-show-protocols-all.txt").read_text())

    registry = CollectorRegistry()
    bird = FakeBird(True)
    registry.register(BgpCollector(bird))  # type: ignore[arg-type]
    text = generate_latest(registry).decode()
    assert ('kr_bgp_peer_info{address="192.168.56.12",asn="64512",peer="kube-node2",state="Established"} 1.0'
            in text)
    assert 'kr_bgp_peer_established{address="192.168.56.13",peer="kube-node3"} 1.0' in text
    assert 'kr_bgp_routes_received{address="192.168.56.12",peer="kube-node2"} 1.0' in text
    assert 'kr_bgp_routes_advertised{address="192.168.56.13",peer="kube-node3"} 1.0' in text
    bird.up = False
    assert "kr_bgp_peer_info{" not in generate_latest(registry).decode()
    bird.up = None  # running() says yes, sessions() fails: the scrape still answers, without sessions
    assert "kr_bgp_peer_info{" not in generate_latest(registry).decode()
