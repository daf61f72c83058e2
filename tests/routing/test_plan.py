"""Unit tests of the pure routing planner: which peer is routed how, and what goes with it.

The golden case is a five-node cluster seen from node-a; to regenerate ``golden/plan-node-a.json`` after
an intended change, run ``KR_UPDATE_GOLDEN=1 .venv/bin/python -m pytest tests/routing/test_plan.py``
and review the diff.
"""

from __future__ import annotations

import dataclasses

import json
import os
from pathlib import Path

import pytest

from kr_core.model import DesiredState, FrozenMap, Node, NodeAddress, to_jsonable
from kr_plugins.routing.overlay import OverlaySettings, OverlayType
from kr_plugins.routing.plan import RoutingPlan, RoutingSettings, node_ipv4, plan_routes
from kr_plugins.routing.routes import Route, Underlay

GOLDEN = Path(__file__).parent / "golden"
UPDATE = os.environ.get("KR_UPDATE_GOLDEN") == "1"
UNDERLAY = Underlay(ip="192.168.50.11", network="192.168.50.0/24", interface="eth0", mtu=1500)


def node(name: str, *ips: str, cidrs: tuple[str, ...] = (), external: tuple[str, ...] = ()) -> Node:
    addresses = (*(NodeAddress("InternalIP", ip) for ip in ips), *(NodeAddress("ExternalIP", ip) for ip in external))
    return Node(name=name, addresses=addresses, pod_cidrs=cidrs, labels=FrozenMap(), annotations=FrozenMap())


NODES = (
    node("node-a", "192.168.50.11", cidrs=("10.244.1.0/24",)),
    node("node-b", "192.168.50.12", cidrs=("10.244.2.0/24",)),
    node("node-c", "192.168.60.13", cidrs=("10.244.3.0/24",)),
)


def state(*nodes: Node, me: str = "node-a") -> DesiredState:
    ordered = tuple(sorted(nodes, key=lambda n: n.name))
    return DesiredState(node_name=me, node=next((n for n in ordered if n.name == me), None), nodes=ordered)


def plan(*nodes: Node, overlay: OverlaySettings = OverlaySettings(), egress: bool = True) -> RoutingPlan:
    return plan_routes(state(*nodes), UNDERLAY, RoutingSettings(overlay=overlay, enable_pod_egress=egress))


def test_same_subnet_peers_are_routed_directly_and_others_through_the_overlay() -> None:
    result = plan(*NODES)
    assert result.direct == (Route("10.244.2.0/24", "192.168.50.12", "eth0"),)
    assert result.overlay_routes == (Route("10.244.3.0/24", "10.244.3.0", "kr-vxlan", onlink=True),)
    assert result.overlay is not None
    assert [(p.vtep_ip, p.vtep_mac, p.node_ip) for p in result.overlay.peers] == [
        ("10.244.3.0", "02:6b:c0:a8:3c:0d", "192.168.60.13")]
    device = result.overlay.device
    assert (device.name, device.mtu, device.mac, device.addresses, device.local_ip, device.underlay) == (
        "kr-vxlan", 1450, "02:6b:c0:a8:32:0b", ("10.244.1.0/32",), "192.168.50.11", "eth0")
    assert result.sysctls == (("net/ipv4/ip_forward", "1"), ("net/ipv4/conf/kr-vxlan/rp_filter", "2"))
    assert result.notes == ()


def test_full_overlay_routes_every_peer_through_the_overlay() -> None:
    result = plan(*NODES, overlay=OverlaySettings(type=OverlayType.FULL))
    assert result.direct == ()
    assert [r.dst for r in result.overlay_routes] == ["10.244.2.0/24", "10.244.3.0/24"]
    assert all(r.device == "kr-vxlan" and r.onlink for r in result.overlay_routes)
    assert result.overlay is not None
    assert [p.node_ip for p in result.overlay.peers] == ["192.168.50.12", "192.168.60.13"]


def test_overlay_off_routes_only_the_subnet_and_says_which_peers_are_left_out() -> None:
    result = plan(*NODES, overlay=OverlaySettings(enabled=False))
    assert result.routes == (Route("10.244.2.0/24", "192.168.50.12", "eth0"),)
    assert result.overlay is None
    assert result.sysctls == (("net/ipv4/ip_forward", "1"),)
    assert result.notes == ("node node-c: 192.168.60.13 is outside 192.168.50.0/24 and the overlay is off; "
                            "pod CIDR 10.244.3.0/24 is not routed",)


def test_own_pod_cidr_is_never_routed_and_egress_covers_every_pod_cidr() -> None:
    result = plan(*NODES)
    assert "10.244.1.0/24" not in [r.dst for r in result.routes]
    assert result.egress is not None
    assert result.egress.pod_subnets == ("10.244.1.0/24", "10.244.2.0/24", "10.244.3.0/24")
    assert result.egress.sources == ("10.244.1.0/24",)
    assert plan(*NODES, egress=False).egress is None


def test_peers_without_ipv4_address_or_pod_cidr_or_with_a_taken_one_are_skipped_with_a_note() -> None:
    result = plan(
        *NODES,
        node("node-d", cidrs=("10.244.4.0/24",)),                             # no address at all
        node("node-e", "192.168.50.15"),                                     # no pod CIDR yet
        node("node-f", "192.168.50.16", cidrs=("10.244.2.0/24",)),            # node-b's CIDR
        node("node-g", "192.168.50.12", cidrs=("10.244.7.0/24",)),            # node-b's IP
        node("node-h", "fd00::8", cidrs=("fd00:10:244:8::/64",)),              # IPv6 only
        node("node-i", "192.168.50.17", cidrs=("10.244.1.128/25",)),          # inside this node's own CIDR
        node("node-j", "192.168.50.18", cidrs=("10.244.0.0/16",)),            # covers everyone's
    )
    assert [r.dst for r in result.routes] == ["10.244.2.0/24", "10.244.3.0/24"]
    assert result.notes == (
        "node node-d: no IPv4 node address; its pods are not routed",
        "node node-e: no IPv4 pod CIDR yet; nothing to route",
        "node node-f: 10.244.2.0/24 overlaps 10.244.2.0/24 (node node-b) already taken; its pods are not routed",
        "node node-g: IP 192.168.50.12 (node node-b) already taken; its pods are not routed",
        "node node-h: IPv6 pod CIDR fd00:10:244:8::/64 is not routed (routing.static is IPv4 only)",
        "node node-h: no IPv4 node address; its pods are not routed",
        "node node-i: 10.244.1.128/25 overlaps 10.244.1.0/24 (node node-a) already taken; its pods are not routed",
        "node node-j: 10.244.0.0/16 overlaps 10.244.1.0/24 (node node-a), 10.244.0.0/16 overlaps 10.244.2.0/24 "
        "(node node-b), 10.244.0.0/16 overlaps 10.244.3.0/24 (node node-c) already taken; its pods are not routed",
    )


def test_dual_stack_peer_is_routed_over_ipv4_and_external_ip_is_the_fallback() -> None:
    dual = node("node-b", "fd00::12", "192.168.50.12", cidrs=("10.244.2.0/24", "fd00:10:244:2::/64"))
    external_only = node("node-c", cidrs=("10.244.3.0/24",), external=("192.168.50.13",))
    result = plan(NODES[0], dual, external_only)
    assert result.routes == (Route("10.244.2.0/24", "192.168.50.12", "eth0"),
                             Route("10.244.3.0/24", "192.168.50.13", "eth0"))
    assert node_ipv4(dual) == "192.168.50.12"


def test_node_without_pod_cidr_gets_an_unaddressed_overlay_device_and_masquerades_nothing() -> None:
    me = node("node-a", "192.168.50.11")
    result = plan(me, *NODES[1:])
    assert result.overlay is not None and result.overlay.device.addresses == ()
    assert result.egress is not None and result.egress.sources == ()


def test_plan_needs_this_node() -> None:
    with pytest.raises(ValueError):
        plan_routes(state(*NODES, me="node-x"), UNDERLAY, RoutingSettings())


def test_equal_states_give_equal_plans_whatever_the_node_order() -> None:
    shuffled = state(*NODES)
    shuffled = dataclasses.replace(shuffled, nodes=tuple(reversed(shuffled.nodes)))  # bypass state()'s sorting
    assert plan_routes(shuffled, UNDERLAY, RoutingSettings()) == plan(*NODES)


def test_golden_plan() -> None:
    nodes = (*NODES, node("node-d", "192.168.50.14", cidrs=("10.244.4.0/24",)),
             node("node-e", "192.168.70.15", cidrs=("10.244.5.0/24",)))
    actual = json.dumps(to_jsonable(plan(*nodes)), indent=2, sort_keys=True) + "\n"
    path = GOLDEN / "plan-node-a.json"
    if UPDATE:
        path.write_text(actual, encoding="utf-8")
    assert actual == path.read_text(encoding="utf-8")
