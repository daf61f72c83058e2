"""The golden cases of the proxy renderer: API objects (seen from node ``node-a``) and settings.

Shared by the golden tests (tests/proxy/test_proxy_rules.py) and the kernel read-back tests
(tests/proxy/test_proxy_kernel.py), which load each golden file into a real iptables.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pxmodel import NODE, OTHER, THIRD, endpoint, endpoint_slice, node, port, service

from kr_plugins.proxy.rules import ProxySettings

GOLDEN = Path(__file__).parent / "golden"

NODES = [node(NODE), node(OTHER, ["10.244.2.0/24"], "192.168.60.12"), node(THIRD, ["10.244.3.0/24"], "192.168.60.13")]

HTTP = [("http", "TCP", 8080)]


def web(name: str = "web", ip: str = "10.96.0.10", **kwargs: Any) -> dict[str, Any]:
    return service(name, ip, [port(80, "http", target="http", node_port=kwargs.pop("node_port", None))], **kwargs)


def web_slice(name: str = "web", *endpoints: dict[str, Any], suffix: str = "a") -> dict[str, Any]:
    return endpoint_slice(name, f"{name}-{suffix}", HTTP, endpoints)


REMOTE_PAIR = (endpoint("10.244.2.5", OTHER), endpoint("10.244.3.5", THIRD))
MIXED_TRIO = (endpoint("10.244.1.5", NODE), endpoint("10.244.2.5", OTHER), endpoint("10.244.3.5", THIRD))

#: A bit of everything at once: the settings cases render it.
EVERYTHING = [
    *NODES,
    web("web", "10.96.0.10", type="NodePort", node_port=30080), web_slice("web", *MIXED_TRIO),
    web("local", "10.96.0.9", type="LoadBalancer", node_port=30090, etp="Local", health_port=32090,
        lb_ips=["198.51.100.20"], external_ips=["192.0.2.20"]),
    web_slice("local", *MIXED_TRIO),
    web("gone", "10.96.1.7", type="NodePort", node_port=30070),
]

CASES: dict[str, tuple[list[dict[str, Any]], ProxySettings]] = {
    # ClusterIP over three endpoints on three nodes: statistic 1/3, 1/2, then the last unconditionally
    "clusterip-endpoints": ([*NODES, web(), web_slice("web", *MIXED_TRIO)], ProxySettings()),
    # one service, one port per protocol (the same number on TCP and UDP)
    "protocols": ([*NODES,
                   service("dns", "10.96.0.53", [port(53, "dns-udp", "UDP"), port(53, "dns-tcp", "TCP"),
                                                 port(3868, "diameter", "SCTP")], namespace="kube-system"),
                   endpoint_slice("dns", "dns-a", [("dns-udp", "UDP", 5353), ("dns-tcp", "TCP", 5353),
                                                   ("diameter", "SCTP", 3868)],
                                  [endpoint("10.244.1.53", NODE), endpoint("10.244.2.53", OTHER)],
                                  namespace="kube-system")],
                  ProxySettings()),
    # targetPort "http" is 8080 on one slice's pods and 8081 on the other's
    "named-target-port": ([*NODES, web(),
                           web_slice("web", endpoint("10.244.1.5", NODE), endpoint("10.244.2.5", OTHER)),
                           endpoint_slice("web", "web-b", [("http", "TCP", 8081)], [endpoint("10.244.2.6", OTHER)])],
                          ProxySettings()),
    # no slice at all, and a slice whose only endpoint is not ready: REJECT in filter, for every address
    "no-endpoints": ([*NODES, web("empty", "10.96.0.11"),
                      web("unready", "10.96.0.12", type="LoadBalancer", node_port=30012, lb_ips=["198.51.100.12"],
                          external_ips=["192.0.2.12"]),
                      web_slice("unready", endpoint("10.244.2.12", OTHER, ready=False))],
                     ProxySettings()),
    # no endpoint is ready: the serving terminating ones are used, the non-serving terminating one not
    "terminating-serving": ([*NODES, web(),
                             web_slice("web", endpoint("10.244.1.5", NODE, ready=False, serving=True, terminating=True),
                                       endpoint("10.244.2.5", OTHER, ready=False, serving=False, terminating=True),
                                       endpoint("10.244.3.5", THIRD, ready=False, serving=True, terminating=True))],
                            ProxySettings()),
    # ready endpoints exist: the not-ready and the terminating ones are left out
    "not-ready": ([*NODES, web(),
                   web_slice("web", endpoint("10.244.1.5", NODE, ready=False),
                             endpoint("10.244.2.5", OTHER),
                             endpoint("10.244.2.6", OTHER, ready=False, serving=True, terminating=True),
                             endpoint("10.244.3.5", THIRD))],
                  ProxySettings()),
    "affinity": ([*NODES, web(affinity_timeout=600), web_slice("web", *MIXED_TRIO)], ProxySettings()),
    "nodeport": ([*NODES, web(type="NodePort", node_port=30080), web_slice("web", *REMOTE_PAIR)], ProxySettings()),
    "external-ips": ([*NODES, web(external_ips=["192.0.2.10", "192.0.2.11"]), web_slice("web", *REMOTE_PAIR)],
                     ProxySettings()),
    "loadbalancer": ([*NODES, web(type="LoadBalancer", node_port=30080, lb_ips=["198.51.100.10", "198.51.100.11"]),
                      web_slice("web", *REMOTE_PAIR)], ProxySettings()),
    "loadbalancer-source-ranges": ([*NODES, web(type="LoadBalancer", node_port=30080, lb_ips=["198.51.100.10"],
                                                source_ranges=["203.0.113.0/24", "198.51.100.7/32"]),
                                    web_slice("web", *REMOTE_PAIR)], ProxySettings()),
    "etp-local": ([*NODES, web(type="LoadBalancer", node_port=30080, lb_ips=["198.51.100.10"], etp="Local",
                               health_port=32080, external_ips=["192.0.2.10"]),
                   web_slice("web", *MIXED_TRIO, endpoint("10.244.1.6", NODE))], ProxySettings()),
    "etp-local-without-local-endpoints": ([*NODES, web(type="LoadBalancer", node_port=30080, lb_ips=["198.51.100.10"],
                                                       etp="Local", health_port=32080, external_ips=["192.0.2.10"],
                                                       source_ranges=["203.0.113.0/24"]),
                                           web_slice("web", *REMOTE_PAIR)], ProxySettings()),
    "itp-local": ([*NODES, web(itp="Local"), web_slice("web", *MIXED_TRIO)], ProxySettings()),
    "itp-local-without-local-endpoints": ([*NODES, web(itp="Local"), web_slice("web", *REMOTE_PAIR)],
                                          ProxySettings()),
    "masquerade-all": (EVERYTHING, ProxySettings(masquerade_all=True)),
    "cluster-cidr": (EVERYTHING, ProxySettings(cluster_cidr="10.244.0.0/16")),
    "nodeport-addresses": (EVERYTHING, ProxySettings(nodeport_addresses=("192.168.60.0/24", "10.1.0.0/16"))),
    "mark-bit": (EVERYTHING, ProxySettings(masquerade_mark=1 << 20)),
    # the node is not known (yet): nothing counts as local pods, so no masquerade rule for ClusterIPs
    "without-node": (EVERYTHING[1:], ProxySettings()),
    # IPv6 everywhere except the endpoints (see test_ipv6_endpoints_are_skipped): only IPv4 is rendered
    "ipv6-skipped": ([node(NODE, ["fd00:10:244:1::/64", "10.244.1.0/24"]), *NODES[1:],
                      service("dual", ["fd00:10:96::10", "10.96.0.10"], [port(80, "http", node_port=30080)],
                              type="LoadBalancer", external_ips=["2001:db8::10", "192.0.2.10"],
                              lb_ips=["2001:db8::20", "198.51.100.10"],
                              source_ranges=["2001:db8:1::/48", "203.0.113.0/24"], etp="Local", health_port=32080),
                      endpoint_slice("dual", "dual-a", [("http", "TCP", 80)],
                                     [endpoint("10.244.1.5", NODE), endpoint("10.244.2.5", OTHER)]),
                      service("v6only", "fd00:10:96::11", [port(80, "http")])],
                     ProxySettings()),
    # many services in a few /24s: bucket chains, numeric order within a bucket
    "buckets": ([*NODES,
                 *[web(f"s{i}", f"10.96.{i // 3}.{(i * 7) % 11 + 2}") for i in range(9)],
                 *[web_slice(f"s{i}", endpoint(f"10.244.2.{i + 10}", OTHER)) for i in range(9)]],
                ProxySettings()),
}
