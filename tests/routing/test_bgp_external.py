"""What ``routing.bgp`` tells external routers: peers from flags and node annotations, the service VIPs
it advertises (kube-router's ``--advertise-*`` flags and ``service.advertise.*`` annotations), communities,
path prepend, next-hop-self and graceful restart, down to the BIRD text (which ``bird -p`` must accept).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from birdcheck import bird_refuses, needs_bird

from kr_core.errors import ConfigError
from kr_core.model import (
    DesiredState,
    Endpoint,
    FrozenMap,
    Node,
    NodeAddress,
    Protocol,
    ServicePort,
    ServiceType,
    SessionAffinity,
    TrafficPolicy,
)
from kr_plugins.routing.bgp import bgp_settings
from kr_plugins.routing.bgpadvertise import AdvertiseSettings, communities, path_prepend, service_vips
from kr_plugins.routing.bgppeers import ExternalPeer, flag_peers, node_peers
from kr_plugins.routing.bgpplan import BgpSettings, GracefulRestart, plan_bgp
from kr_plugins.routing.birdconf import render_bird

SUBNET = "192.168.50.0/24"


def node(name: str, ip: str, cidr: str, **annotations: str) -> Node:
    return Node(name=name, addresses=(NodeAddress("InternalIP", ip),), pod_cidrs=(cidr,), labels=FrozenMap(),
                annotations=FrozenMap(annotations))


def endpoint(address: str, node_name: str, me: str = "node-a", ready: bool = True) -> Endpoint:
    return Endpoint(address, 8080, ready, ready, False, node_name, None, None, node_name == me)


def service(name: str, cluster_ip: str | None, **changes: Any) -> ServicePort:
    fields: dict[str, Any] = dict(
        namespace="default", name=name, port_name="", protocol=Protocol.TCP, port=80, target_port=8080,
        node_port=None, type=ServiceType.CLUSTER_IP, cluster_ips=(cluster_ip,) if cluster_ip else (),
        external_ips=(), load_balancer_ips=(), load_balancer_source_ranges=(),
        session_affinity=SessionAffinity.NONE, session_affinity_timeout=0,
        external_traffic_policy=TrafficPolicy.CLUSTER, internal_traffic_policy=TrafficPolicy.CLUSTER,
        health_check_node_port=None, labels=FrozenMap(), annotations=FrozenMap(),
        endpoints=(endpoint("10.244.2.5", "node-b"),))
    fields.update(changes)
    return ServicePort(**fields)


ME = node("node-a", "192.168.50.11", "10.244.1.0/24")
OTHER = node("node-b", "192.168.50.12", "10.244.2.0/24")
SERVICES = (
    service("plain", "10.96.0.10"),
    service("ext", "10.96.0.11", external_ips=("203.0.113.7",)),
    service("lb", "10.96.0.12", type=ServiceType.LOAD_BALANCER, load_balancer_ips=("198.51.100.1",)),
    service("lb", "10.96.0.12", port_name="https", port=443, type=ServiceType.LOAD_BALANCER,
            load_balancer_ips=("198.51.100.1",)),
    service("headless", None),
    service("opt-in", "10.96.0.13", annotations=FrozenMap({"kube-router.io/service.advertise.clusterip": "true"})),
    service("opt-out", "10.96.0.14", annotations=FrozenMap({"kube-router.io/service.advertise.clusterip": "false"})),
    service("skip-lb", "10.96.0.15", type=ServiceType.LOAD_BALANCER, load_balancer_ips=("198.51.100.2",),
            annotations=FrozenMap({"kube-router.io/service.skiplbips": "true"})),
    service("local-elsewhere", "10.96.0.16", type=ServiceType.LOAD_BALANCER, load_balancer_ips=("198.51.100.3",),
            external_traffic_policy=TrafficPolicy.LOCAL),
    service("local-here", "10.96.0.17", type=ServiceType.LOAD_BALANCER, load_balancer_ips=("198.51.100.4",),
            external_traffic_policy=TrafficPolicy.LOCAL, endpoints=(endpoint("10.244.1.5", "node-a"),)),
    service("local-here-not-ready", "10.96.0.18", annotations=FrozenMap({"kube-router.io/service.local": "true"}),
            endpoints=(endpoint("10.244.1.6", "node-a", ready=False),)),
    service("typo", "10.96.0.19", annotations=FrozenMap({"kube-router.io/service.advertise.clusterip": "yes"})),
)


def state(*services: ServicePort, me: Node = ME) -> DesiredState:
    return DesiredState(node_name=me.name, node=me, nodes=(me, OTHER), services=services)


def test_no_vip_is_advertised_by_default_but_a_service_can_opt_in() -> None:
    notes: list[str] = []
    assert service_vips(state(*SERVICES), AdvertiseSettings(), notes) == ("10.96.0.13",)
    assert notes == ["service default/typo: kube-router.io/service.advertise.clusterip='yes' is neither true nor "
                     "false; using the flag's false"]


def test_vips_follow_the_flags_annotations_and_local_endpoints() -> None:
    every = AdvertiseSettings(cluster_ip=True, external_ip=True, loadbalancer_ip=True)
    vips = service_vips(state(*SERVICES), every, [])
    assert vips == ("10.96.0.10", "10.96.0.11", "10.96.0.12", "10.96.0.13", "10.96.0.15", "10.96.0.17", "10.96.0.19",
                    "198.51.100.1", "198.51.100.4", "203.0.113.7")
    # not: the opted-out cluster IP, the skipped LB IP, headless, Local services without a ready endpoint here
    assert service_vips(state(*SERVICES), AdvertiseSettings(loadbalancer_ip=True), []) == (
        "10.96.0.13", "198.51.100.1", "198.51.100.4")
    assert service_vips(state(*SERVICES), AdvertiseSettings(external_ip=True), []) == ("10.96.0.13", "203.0.113.7")


def test_peers_from_flags() -> None:
    options = {"peer_router_ips": "192.168.50.100,10.9.9.9", "peer_router_asns": "65000,65001",
               "peer_router_ports": "179,1179", "peer_router_passwords": "czNjcmV0,"}
    assert flag_peers(options) == (ExternalPeer("192.168.50.100", 65000, 179, "s3cret"),
                                   ExternalPeer("10.9.9.9", 65001, 1179))
    assert flag_peers({}) == ()
    for bad, message in (({"peer_router_ips": "1.2.3.4"}, "0 AS number"),
                         ({"peer_router_ips": "1.2.3.4", "peer_router_asns": "1", "peer_router_ports": "1,2"}, "2 ports"),
                         ({"peer_router_ips": "1.2.3.x", "peer_router_asns": "1"}, "peer 1"),
                         ({"peer_router_ips": "1.2.3.4", "peer_router_asns": "0"}, "out of range"),
                         ({"peer_router_ips": "1.2.3.4", "peer_router_asns": "1", "peer_router_passwords": "%%"},
                          "base64"),
                         ({"peer_router_ips": "1.2.3.4", "peer_router_asns": "1", "peer_router_passwords": "IiI="},
                          "quote")):
        with pytest.raises(ConfigError, match=message):
            flag_peers(bad)


def test_peers_from_node_annotations() -> None:
    yaml_peers = "- remoteip: 192.168.50.100\n  remoteasn: 65000\n  password: czNjcmV0\n" \
                 "- remoteip: 10.9.9.9\n  remoteasn: 65001\n  port: 1179\n  localip: 192.168.50.11\n"
    notes: list[str] = []
    assert node_peers(node("n", "192.168.50.11", "10.244.1.0/24", **{"kube-router.io/peers": yaml_peers}), notes) == (
        ExternalPeer("192.168.50.100", 65000, 179, "s3cret"), ExternalPeer("10.9.9.9", 65001, 1179, None, "192.168.50.11"))
    positional = {"kube-router.io/peer.ips": "192.168.50.100, 10.9.9.9", "kube-router.io/peer.asns": "65000,65001",
                  "kube-router.io/peer.passwords": "czNjcmV0,"}
    assert node_peers(node("n", "192.168.50.11", "10.244.1.0/24", **positional), notes) == (
        ExternalPeer("192.168.50.100", 65000, 179, "s3cret"), ExternalPeer("10.9.9.9", 65001))
    assert notes == []
    for annotations, message in (({"kube-router.io/peers": "remoteip: 1.2.3.4"}, "not a list of peers"),
                                 ({"kube-router.io/peers": "- remoteip: 1.2.3.4"}, "lacks remoteip or remoteasn"),
                                 ({"kube-router.io/peers": "- {remoteip: 1.2.3.4, remoteasn: x}"}, "not a number"),
                                 ({"kube-router.io/peers": "- [unclosed"}, "not YAML"),
                                 ({"kube-router.io/peers": "- {remoteip: 1.2.3.4, remoteasn: 1, localip: 10}"},
                                  "is not an IPv4 address"),
                                 ({"kube-router.io/peers": "- {remoteip: 1.2.3.4, remoteasn: true}"},
                                  "neither text nor a whole number"),
                                 ({"kube-router.io/peers": "- {remoteip: 1.2.3.4, remoteasn: 1, port: 1.5}"},
                                  "neither text nor a whole number"),
                                 ({"kube-router.io/peers": "- {remoteip: 1.2.3.4, remoteasn: 1, password: [a]}"},
                                  "neither text nor a whole number"),
                                 ({"kube-router.io/peers": "- {remoteip: 1.2.3.4, remoteasn: 1, password: AGI=}"},
                                  "control character"),
                                 ({"kube-router.io/peer.ips": "1.2.3.4,1.2.3.5", "kube-router.io/peer.asns": "1"},
                                  "2 address")):
        notes = []
        assert node_peers(node("n", "192.168.50.11", "10.244.1.0/24", **annotations), notes) == ()
        assert len(notes) == 1 and message in notes[0] and notes[0].startswith("node n: kube-router.io/peer")


def test_a_nodes_own_peer_replaces_the_flags_peer_at_the_same_address() -> None:
    me = node("node-a", "192.168.50.11", "10.244.1.0/24", **{"kube-router.io/peer.ips": "192.168.50.100,10.1.1.1",
                                                             "kube-router.io/peer.asns": "65099,65002"})
    flags = (ExternalPeer("192.168.50.100", 65000), ExternalPeer("10.9.9.9", 65001))
    plan = plan_bgp(state(me=me), BgpSettings(external_peers=flags))
    assert plan is not None
    assert plan.external_peers == (ExternalPeer("10.1.1.1", 65002), ExternalPeer("10.9.9.9", 65001),
                                   ExternalPeer("192.168.50.100", 65099))
    other = plan_bgp(DesiredState(node_name="node-b", node=OTHER, nodes=(me, OTHER)), BgpSettings(external_peers=flags))
    assert other is not None and other.external_peers == tuple(sorted(flags))  # node-a's peers are its own


def test_communities_and_path_prepend_from_node_annotations() -> None:
    notes: list[str] = []
    marked = node("n", "192.168.50.11", "10.244.1.0/24", **{
        "kube-router.io/node.bgp.communities": "4294967041, 65000:100,no-export,internet, 65536:1,bogus",
        "kube-router.io/path-prepend.as": "65000", "kube-router.io/path-prepend.repeat-n": "3"})
    assert communities(marked, notes) == ((65535, 65281), (65000, 100), (0, 0))
    assert path_prepend(marked, notes) == (65000, 3)
    assert [n.split(": ", 2)[2].split(" ")[0] for n in notes] == ["'65536:1'", "'bogus'"]
    half = node("n", "192.168.50.11", "10.244.1.0/24", **{"kube-router.io/path-prepend.as": "65000"})
    notes = []
    assert path_prepend(half, notes) is None and "nothing is prepended" in notes[0]
    assert path_prepend(ME, []) is None and communities(ME, []) == ()


FULL_ANNOTATIONS = {"kube-router.io/node.bgp.communities": "no-export,65000:7",
                    "kube-router.io/path-prepend.as": "65000", "kube-router.io/path-prepend.repeat-n": "2",
                    "kube-router.io/peers": "- remoteip: 10.9.9.9\n  remoteasn: 65001\n  localip: 192.168.50.11\n",
                    "kube-router.io/node.bgp.customimportreject": "10.0.0.0/16"}
FULL_SETTINGS = BgpSettings(external_peers=(ExternalPeer("192.168.50.100", 65000, 179, "s3cret"),),
                            advertise=AdvertiseSettings(cluster_ip=True, loadbalancer_ip=True),
                            override_nexthop=True, graceful_restart=GracefulRestart(time=120, deferral=300))


def test_the_bird_configuration_for_external_routers() -> None:
    me = node("node-a", "192.168.50.11", "10.244.1.0/24", **FULL_ANNOTATIONS)
    plan = plan_bgp(state(*SERVICES, me=me), FULL_SETTINGS)
    assert plan is not None
    text = render_bird(plan, SUBNET)
    assert "graceful restart wait 300;" in text
    assert "protocol kernel kr_kernel { metric 107; persist; learn; scan time 10; graceful restart;" in text
    assert "protocol static kr_vips {\n  ipv4;\n  route 10.96.0.10/32 unreachable;\n" in text
    assert "  route 198.51.100.4/32 unreachable;\n}" in text
    assert ('filter kr_export_external {\n  if proto = "kr_pods" || proto = "kr_vips" then {\n'
            "    bgp_community.add((65535,65281));\n    bgp_community.add((65000,7));\n"
            "    bgp_path.prepend(65000);\n    bgp_path.prepend(65000);\n    accept;\n  }\n  reject;\n}") in text
    # every service address is refused from outside, advertised or not
    assert "if net ~ [ 10.96.0.10/32, 10.96.0.11/32, " in text and "203.0.113.7/32 ] then reject;" in text
    # --override-nexthop: a direct router's session leaves from whatever address faces it, next hop self
    assert ("protocol bgp kr_ext_192_168_50_100_179 { local as 64512; neighbor 192.168.50.100 port 179 as 65000; "
            'direct; password "s3cret";') in text
    assert "protocol bgp kr_ext_10_9_9_9_179 { local 192.168.50.11 as 64512; neighbor 10.9.9.9 port 179 as 65001; multihop;" in text
    assert text.count("export filter kr_export_external; next hop self; };") == 2
    assert text.count("graceful restart on; graceful restart time 120;") == 3  # the node template and both routers
    # the nodes get none of it: their filter sends pod CIDRs only
    assert 'filter kr_export {\n  if proto = "kr_pods" then accept;\n  reject;\n}' in text


def test_pod_cidrs_can_be_kept_from_external_routers() -> None:
    settings = BgpSettings(external_peers=(ExternalPeer("192.168.50.100", 65000),),
                           advertise=AdvertiseSettings(pod_cidr=False))
    plan = plan_bgp(state(*SERVICES), settings)
    assert plan is not None
    assert 'filter kr_export_external {\n  if proto = "kr_vips" then accept;\n  reject;\n}' in render_bird(plan, SUBNET)
    plan = plan_bgp(state(), settings)
    assert plan is not None
    assert "filter kr_export_external {\n  reject;\n}" in render_bird(plan, SUBNET)


def test_settings_from_options() -> None:
    settings = bgp_settings({"advertise_cluster_ip": True, "advertise_pod_cidr": False, "override_nexthop": True,
                             "bgp_graceful_restart": True, "bgp_graceful_restart_time": 30,
                             "bgp_graceful_restart_deferral_time": 60})
    assert settings.advertise == AdvertiseSettings(cluster_ip=True, pod_cidr=False)
    assert settings.override_nexthop and settings.graceful_restart == GracefulRestart(30, 60)
    assert bgp_settings({}).graceful_restart is None and bgp_settings({}).advertise == AdvertiseSettings()


@needs_bird
def test_bird_accepts_everything_for_external_routers(tmp_path: Path) -> None:
    me = node("node-a", "192.168.50.11", "10.244.1.0/24", **FULL_ANNOTATIONS)
    for settings in (FULL_SETTINGS, BgpSettings(advertise=AdvertiseSettings(pod_cidr=False),
                                                external_peers=FULL_SETTINGS.external_peers)):
        plan = plan_bgp(state(*SERVICES, me=me), settings)
        assert plan is not None
        assert bird_refuses(render_bird(plan, SUBNET), tmp_path) is None


def test_a_nodes_custom_import_rejects_keep_those_prefixes_from_external_routers() -> None:
    me = node("node-a", "192.168.50.11", "10.244.1.0/24",
              **{"kube-router.io/node.bgp.customimportreject": "10.0.0.0/16, 192.168.1.7/24,bogus"})
    plan = plan_bgp(state(me=me), BgpSettings(external_peers=(ExternalPeer("192.168.50.100", 65000),)))
    assert plan is not None
    assert plan.import_reject == ("10.0.0.0/16", "192.168.1.0/24")
    assert plan.notes == ("node node-a: kube-router.io/node.bgp.customimportreject: 'bogus' is not an IPv4 prefix; "
                          "left out",)
    text = render_bird(plan, SUBNET)
    external = text[text.index("filter kr_import_external {"):text.index("filter kr_export_external {")]
    assert "  if net ~ [ 10.0.0.0/16+, 192.168.1.0/24+ ] then reject;\n  accept;" in external


def test_passwords_from_a_file(tmp_path: Path) -> None:
    secret = tmp_path / "bgp-passwords.conf"
    secret.write_text("czNjcmV0,\n")
    options = {"peer_router_ips": "192.168.50.100,10.9.9.9", "peer_router_asns": "65000,65001",
               "peer_router_passwords_file": str(secret)}
    assert bgp_settings(options).external_peers == (ExternalPeer("192.168.50.100", 65000, 179, "s3cret"),
                                                    ExternalPeer("10.9.9.9", 65001))
    with pytest.raises(ConfigError, match="give one of them"):
        bgp_settings({**options, "peer_router_passwords": "czNjcmV0,"})
    with pytest.raises(ConfigError, match="--peer-router-passwords-file: .*No such file"):
        bgp_settings({**options, "peer_router_passwords_file": str(tmp_path / "missing")})


def test_an_external_peer_at_a_nodes_address_is_left_out() -> None:
    flags = (ExternalPeer("192.168.50.12", 65000), ExternalPeer("192.168.50.100", 65000))
    plan = plan_bgp(state(), BgpSettings(external_peers=flags, multihop_ttl=None))
    assert plan is not None
    assert plan.external_peers == (ExternalPeer("192.168.50.100", 65000),)
    assert plan.notes == ("external peer 192.168.50.12: that is a node's address (nodes peer by the node rules); "
                          "left out",)
    assert bgp_settings({"peer_router_multihop_ttl": 1}).multihop_ttl is None  # kube-router: below 2, direct
    assert bgp_settings({"peer_router_multihop_ttl": 4}).multihop_ttl == 4
