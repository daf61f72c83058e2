"""The default spec's lab: names, addresses, bridges, sysctls, and what reaches what before any routing."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
from conftest import Lab

from kr_lab import echo, netns, topology
from kr_lab.probe import probe
from kr_lab.spec import load_spec_document, parse_spec

SCTP_MISSING = not Path("/proc/net/sctp").exists()
HOME_NS = os.readlink("/proc/thread-self/ns/net")


def ip_json(ns: str, *args: str) -> list[dict[str, Any]]:
    return json.loads(netns.ip("-j", "-d", *args, netns=ns) or "[]")


def addresses(ns: str, dev: str) -> list[str]:
    return [f"{a['local']}/{a['prefixlen']}" for link in ip_json(ns, "addr", "show", "dev", dev)
            for a in link["addr_info"] if a["family"] == "inet"]


def routes(ns: str) -> list[dict[str, Any]]:
    return ip_json(ns, "route", "show")


# --- names


def test_names_follow_the_contract() -> None:
    assert topology.lab_prefix("0a1f") == "kr0a1f-"
    assert topology.switch_ns("0a1f") == "kr0a1f-sw"
    assert topology.router_ns("0a1f") == "kr0a1f-rt"
    assert topology.host_ns("0a1f", "kube-node1") == "kr0a1f-h-kube-node1"
    assert topology.pod_ns("0a1f", "frontend", "web-1") == "kr0a1f-p-frontend-web-1"
    for bad in ("0A1F", "abc", "abcde", "../x"):
        with pytest.raises(ValueError):
            topology.lab_prefix(bad)


def test_long_pod_names_are_shortened_deterministically() -> None:
    a, b = "a" * 32, "a" * 31 + "b"
    long_a = topology.pod_ns("0a1f", a, a)
    assert len(long_a) == topology.MAX_NETNS_NAME and long_a.startswith("kr0a1f-p-aaa")
    assert long_a == topology.pod_ns("0a1f", a, a) != topology.pod_ns("0a1f", a, b)


def test_pod_veth_names_fit_and_differ() -> None:
    names = {topology.pod_veth(ns, f"pod-{i}") for ns in ("default", "backend") for i in range(200)}
    assert len(names) == 400 and all(len(n) <= 15 for n in names)


# --- the built lab


def test_namespaces_have_the_right_names(default_lab: Lab) -> None:
    spec = default_lab.spec
    expected = {topology.switch_ns(default_lab.id), *(default_lab.host_ns(h.name) for h in spec.hosts),
                *(default_lab.pod_ns(p.key) for p in spec.pods)}
    assert set(netns.list_namespaces(topology.lab_prefix(default_lab.id))) == expected
    assert topology.router_ns(default_lab.id) not in expected  # one LAN: no router
    assert default_lab.id in topology.list_labs()


def test_hosts_sit_on_the_lan_without_a_default_route(default_lab: Lab) -> None:
    for host in default_lab.spec.hosts:
        ns = default_lab.host_ns(host.name)
        assert addresses(ns, "eth0") == [f"{host.ip}/24"]
        assert not [r for r in routes(ns) if r["dst"] == "default"]
    switch_ports = ip_json(topology.switch_ns(default_lab.id), "link", "show", "master", "br0")
    assert len(switch_ports) == len(default_lab.spec.hosts)


def test_nodes_have_the_gateway_on_kube_bridge_and_their_sysctls(default_lab: Lab) -> None:
    for node in default_lab.spec.nodes:
        ns = default_lab.host_ns(node.name)
        assert addresses(ns, "kube-bridge") == [f"{node.pod_cidr.network_address + 1}/24"]
        assert netns.sysctl(ns, "net.ipv4.ip_forward") == "1"
        assert netns.sysctl(ns, "net.bridge.bridge-nf-call-iptables") == "1"
    master = default_lab.host_ns("kube-master")
    assert netns.sysctl(master, "net.ipv4.ip_forward") == "0"


def test_pods_have_eth0_mtu_1450_and_a_default_route_via_the_gateway(default_lab: Lab) -> None:
    for pod in default_lab.spec.pods:
        ns, node = default_lab.pod_ns(pod.key), default_lab.spec.host(pod.node)
        (eth0,) = ip_json(ns, "link", "show", "eth0")
        assert eth0["mtu"] == 1450
        assert addresses(ns, "eth0") == [f"{default_lab.ip(pod.key)}/24"]
        assert {"dst": "default", "gateway": str(node.pod_cidr.network_address + 1)}.items() <= \
            [r for r in routes(ns) if r["dst"] == "default"][0].items()
        (port,) = ip_json(default_lab.host_ns(node.name), "link", "show", topology.pod_veth(pod.namespace, pod.name))
        assert port["master"] == "kube-bridge" and port["linkinfo"]["info_slave_data"]["hairpin"] is True


def test_every_lab_namespace_resolves_nothing_outward(default_lab: Lab) -> None:
    for name in netns.list_namespaces(topology.lab_prefix(default_lab.id)):
        etc = Path("/etc/netns", name)
        assert (etc / "hosts").read_text() == netns.HOSTS
        assert "127.0.0.1" in (etc / "resolv.conf").read_text()


# --- reachability


def test_same_node_pods_answer_tcp_and_udp_with_their_identity(default_lab: Lab) -> None:
    tools = default_lab.pod_ns("default/tools")
    assert probe(tools, default_lab.ip("frontend/web-1"), 8080, "TCP", 1).answer == "frontend/web-1"
    db = default_lab.pod_ns("backend/db-1")
    tcp = probe(db, default_lab.ip("backend/api-2"), 9090, "TCP", 1)
    udp = probe(db, default_lab.ip("backend/api-2"), 5353, "UDP", 1)
    assert (tcp.ok, tcp.answer) == (True, "backend/api-2")
    assert (udp.ok, udp.answer) == (True, "backend/api-2")


@pytest.mark.skipif(SCTP_MISSING, reason="this kernel has no SCTP (CONFIG_IP_SCTP not set)")
def test_same_node_pods_answer_sctp(default_lab: Lab) -> None:
    result = probe(default_lab.pod_ns("backend/db-1"), default_lab.ip("backend/api-2"), 7777, "SCTP", 1)
    assert (result.ok, result.answer) == (True, "backend/api-2")


@pytest.mark.skipif(not SCTP_MISSING, reason="only where the kernel has no SCTP")
def test_without_kernel_sctp_probes_say_unsupported_and_servers_skip_it(default_lab: Lab) -> None:
    result = probe(default_lab.pod_ns("backend/db-1"), default_lab.ip("backend/api-2"), 7777, "SCTP", 1)
    assert (result.ok, result.error) == (False, "unsupported")
    # the pod with an SCTP port still serves its other ports (checked above) and said why it skipped SCTP
    assert "7777/SCTP skipped" in default_lab.log("backend/api-2").read_text()


def test_a_pod_reaches_its_own_node_gateway(default_lab: Lab) -> None:
    result = probe(default_lab.pod_ns("frontend/web-1"), "10.1.1.1", 1, "TCP", 1)
    assert result.error == "refused"  # the node's stack answered with a RST


def test_hosts_reach_each_other_on_the_lan(default_lab: Lab, tmp_path: Path) -> None:
    client = default_lab.host_ns("client")
    echo.start(client, "host/client", [(8080, "TCP"), (8080, "UDP")], tmp_path / "client.log")
    master = default_lab.host_ns("kube-master")
    assert probe(master, "192.168.56.100", 8080, "TCP", 1).answer == "host/client"
    assert probe(master, "192.168.56.100", 8080, "UDP", 1).answer == "host/client"
    assert probe(client, "192.168.56.13", 22, "TCP", 1).error == "refused"


def test_cross_node_pods_are_not_reachable_before_routing(default_lab: Lab) -> None:
    result = probe(default_lab.pod_ns("frontend/web-1"), default_lab.ip("frontend/web-2"), 8080, "TCP", 0.5)
    assert not result.ok and result.error in ("unreachable", "timeout")
    assert result.elapsed < 0.7


def test_nothing_of_the_lab_is_in_the_root_namespace(default_lab: Lab) -> None:
    root = subprocess.run(["ip", "-br", "addr"], capture_output=True, text=True, check=True).stdout
    assert "192.168.56." not in root and "10.1.1.1" not in root
    assert os.readlink("/proc/thread-self/ns/net") == HOME_NS


def test_build_and_pods_are_fast(new_lab: Any) -> None:
    import time

    started = time.monotonic()
    lab = new_lab(parse_spec(load_spec_document(None)))
    built = time.monotonic() - started
    assert built < 3.0, f"default lab with pods took {built:.2f}s"
    started = time.monotonic()
    topology.teardown(lab.id)
    assert time.monotonic() - started < 2.0
