"""``routing.bgp`` with ``routing.static``'s overlay, the pure half: which pod CIDRs the overlay carries,
what is left to BIRD, BIRD's kernel export with those CIDRs kept out (``bird -p`` must accept it), and the
overlay and egress flags shared by both backends.

The cluster is seen from node-a (192.168.50.0/24): node-b shares its subnet, node-c (192.168.60.0/24) and
node-e (192.168.70.0/24) do not.
"""

from __future__ import annotations

from pathlib import Path

import click
import pytest
from birdcheck import bird_refuses, needs_bird

from kr_core.config import OptionRegistry
from kr_core.errors import PluginError
from kr_core.model import DesiredState, FrozenMap, Node, NodeAddress
from kr_plugins.routing import bgp, static
from kr_plugins.routing.bgpplan import BgpSettings, plan_bgp
from kr_plugins.routing.birdconf import render_bird
from kr_plugins.routing.overlay import DEVICE, OverlaySettings, OverlayType
from kr_plugins.routing.plan import IP_FORWARD, RoutingPlan, plan_routes
from kr_plugins.routing.programmer import routing_settings
from kr_plugins.routing.routes import Route, Underlay

GOLDEN = Path(__file__).parent / "golden"
SUBNET = "192.168.50.0/24"
UNDERLAY = Underlay(ip="192.168.50.11", network=SUBNET, interface="eth0", mtu=1500)


def node(name: str, ip: str, cidr: str) -> Node:
    return Node(name=name, addresses=(NodeAddress("InternalIP", ip),), pod_cidrs=(cidr,), labels=FrozenMap(),
                annotations=FrozenMap())


NODES = (
    node("node-a", "192.168.50.11", "10.244.1.0/24"),
    node("node-b", "192.168.50.12", "10.244.2.0/24"),
    node("node-c", "192.168.60.13", "10.244.3.0/24"),
    node("node-e", "192.168.70.15", "10.244.5.0/24"),
)
STATE = DesiredState(node_name="node-a", node=NODES[0], nodes=NODES)


def routed(**options: object) -> RoutingPlan:
    """``routing.bgp``'s routing plan for node-a under these (parsed) options."""
    return plan_routes(STATE, UNDERLAY, routing_settings(options))


def test_nodes_outside_the_subnet_go_through_the_overlay_and_the_rest_is_left_to_bird() -> None:
    plan = routed()
    assert plan.overlaid == ("10.244.3.0/24", "10.244.5.0/24")
    pod_network = plan.without_direct()  # what routing.bgp programs: BIRD routes node-b
    assert pod_network.routes == (Route("10.244.3.0/24", "10.244.3.0", DEVICE, onlink=True),
                                  Route("10.244.5.0/24", "10.244.5.0", DEVICE, onlink=True))
    assert plan.direct == (Route("10.244.2.0/24", "192.168.50.12", "eth0"),)  # routing.static would add it
    # everything else of routing.static's plan stays: the device and its peers, sysctls, pod egress
    assert pod_network.overlay == plan.overlay and pod_network.overlay is not None
    assert [p.node_ip for p in pod_network.overlay.peers] == ["192.168.60.13", "192.168.70.15"]
    assert pod_network.overlay.device.addresses == ("10.244.1.0/32",)
    assert IP_FORWARD in pod_network.sysctls and (f"net/ipv4/conf/{DEVICE}/rp_filter", "2") in pod_network.sysctls
    assert pod_network.egress is not None and pod_network.egress.sources == ("10.244.1.0/24",)
    assert pod_network.egress.pod_subnets == ("10.244.1.0/24", "10.244.2.0/24", "10.244.3.0/24", "10.244.5.0/24")


def test_full_overlay_takes_every_peer_and_no_overlay_takes_none() -> None:
    full = routed(overlay_type="full")
    assert full.overlaid == ("10.244.2.0/24", "10.244.3.0/24", "10.244.5.0/24")
    assert full.without_direct().routes == full.routes and full.direct == ()
    off = routed(enable_overlay=False, enable_pod_egress=False)
    assert off.overlaid == () and off.without_direct().routes == ()
    assert off.overlay is None and off.egress is None  # the device and the chain are removed
    assert off.sysctls == (IP_FORWARD,)


def test_the_kernel_export_keeps_the_overlaid_prefixes_out() -> None:
    plan = plan_bgp(STATE, BgpSettings())
    assert plan is not None
    text = render_bird(plan, SUBNET, overlaid=routed().overlaid)
    kernel = text[text.index("protocol kernel kr_kernel"):text.index("filter kr_import {")]
    assert kernel == ("protocol kernel kr_kernel { metric 107; persist; learn; scan time 10;\n"
                      "  ipv4 { import where dest = RTD_UNICAST; export where source = RTS_BGP && dest != RTD_UNREACHABLE"
                      " && net !~ [ 10.244.3.0/24, 10.244.5.0/24 ]; };\n"
                      "}\n")
    # only those lines change: the sessions to the nodes in other subnets stay (multihop), and their pod
    # CIDRs are still accepted from BGP, so ``kr bgp routes`` shows them
    plain = render_bird(plan, SUBNET)
    assert [line for line in text.splitlines() if "kr_kernel" not in line and "RTS_BGP" not in line] == \
        [line for line in plain.splitlines() if "kr_kernel" not in line and "RTS_BGP" not in line]
    assert text.count("multihop;") == 2 and "if net ~ [ 10.244.2.0/24, 10.244.3.0/24, 10.244.5.0/24 ]" in text


def test_without_overlaid_prefixes_the_configuration_is_byte_identical() -> None:
    """(test_bgp_render.py's golden file checks the default; an empty ``overlaid`` must be the same text.)"""
    plan = plan_bgp(STATE, BgpSettings())
    assert plan is not None
    assert render_bird(plan, SUBNET, overlaid=()) == render_bird(plan, SUBNET)
    assert "  ipv4 { import where dest = RTD_UNICAST; export where source = RTS_BGP && dest != RTD_UNREACHABLE; };\n" in render_bird(plan, SUBNET, overlaid=())


@needs_bird
@pytest.mark.parametrize("overlay_type", ["subnet", "full"])
def test_bird_accepts_the_kernel_filter_with_overlaid_prefixes(overlay_type: str, tmp_path: Path) -> None:
    plan = plan_bgp(STATE, BgpSettings())
    assert plan is not None
    assert bird_refuses(render_bird(plan, SUBNET, overlaid=routed(overlay_type=overlay_type).overlaid), tmp_path) is None


def test_the_overlay_and_egress_flags_exist_once_with_either_or_both_backends_loaded() -> None:
    flags = {"--enable-overlay", "--overlay-type", "--overlay-encap-port", "--overlay-vxlan-vni", "--enable-pod-egress"}
    for plugins in ((static,), (bgp,), (static, bgp), (bgp, static)):
        registry = OptionRegistry({})
        for plugin in plugins:
            plugin.kr_add_options(registry)
        added = [flag for option in registry.added for flag in option.opts]
        assert len(added) == len(set(added)), plugins  # no flag twice
        assert flags <= set(added), plugins
        command = click.Command("run", params=list(registry.added))
        parsed = command.make_context("run", ["--overlay-type", "full", "--enable-pod-egress=false"]).params
        settings = routing_settings(parsed)
        assert settings.overlay == OverlaySettings(type=OverlayType.FULL) and not settings.enable_pod_egress
    # a plugin outside the group that defines one of them still clashes plainly
    registry = OptionRegistry({"--enable-overlay": "another plugin"})
    with pytest.raises(PluginError, match="--enable-overlay"):
        static.kr_add_options(registry)
