"""``routing.bgp`` across two subnets, on real traffic: nodes on two LANs behind the lab's router, BIRD on
every node, and ``routing.static``'s VXLAN overlay for the nodes outside a node's subnet.

- every pod reaches every pod; a node's same-subnet peer is a BIRD route (``proto bird``, metric 107), its
  off-subnet peers are kr's overlay routes (``dev kr-vxlan``, protocol 107), never both; the BGP sessions
  to the off-subnet nodes (multihop, through the router) are Established and ``kr bgp routes`` still shows
  what they sent;
- pod traffic leaving the cluster is masqueraded (``--enable-pod-egress``, on by default);
- ``--overlay-type full`` sends every peer through the overlay and BIRD installs nothing;
- ``--enable-overlay=false`` routes a peer in another subnet through the router (its next hop resolved
  through the default route), never with an `unreachable` route; an external router in the other rack
  peers multihop with every node, both ways;
- ``kr cleanup --plugins routing.bgp`` removes BIRD's routes, kr's routes, ``kr-vxlan`` and the egress chain
  and set, and nothing else; the agent started again heals the node.

Each lab is built by ``kr lab up`` and always taken down by ``kr lab down`` (its namespaces, BIRDs and
servers with it); nothing here touches the root namespace.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
from bgplab import KR, PLUGINS, BgpLab, wait_for

from kr_lab import echo
from kr_lab.probe import probe

SPEC = textwrap.dedent("""\
    serviceCIDR: 10.96.0.0/12
    clusterCIDR: 10.2.0.0/16
    lans:
      - {name: rack-a, subnet: 172.31.1.0/24}
      - {name: rack-b, subnet: 172.31.2.0/24}
    master: {name: master, lan: rack-a, ip: 172.31.1.10}
    nodes:
      - {name: node-a1, lan: rack-a, ip: 172.31.1.11, podCIDR: 10.2.1.0/24}
      - {name: node-a2, lan: rack-a, ip: 172.31.1.12, podCIDR: 10.2.2.0/24}
      - {name: node-b1, lan: rack-b, ip: 172.31.2.11, podCIDR: 10.2.3.0/24}
    externals:
      - {name: far, lan: rack-b, ip: 172.31.2.100}
    pods:
      - {name: a1, node: node-a1, ports: [{name: http, port: 8080, protocol: TCP}]}
      - {name: a2, node: node-a2, ports: [{name: http, port: 8080, protocol: TCP}]}
      - {name: b1, node: node-b1, ports: [{name: http, port: 8080, protocol: TCP}]}
""")
NODES = ("node-a1", "node-a2", "node-b1")
CIDRS = {"node-a1": "10.2.1.0/24", "node-a2": "10.2.2.0/24", "node-b1": "10.2.3.0/24"}
RACK = {"node-a1": "a", "node-a2": "a", "node-b1": "b"}


class OverlayLab(BgpLab):
    def bird_routes(self, node: str) -> set[str]:
        """Prefixes of BIRD's kernel routes (``proto bird``, metric 107), with a next hop or without."""
        return {line.split()[0] for line in self.sh(node, "ip", "-4", "route", "show", "proto", "bird").splitlines()
                if "metric 107" in line}

    def overlay_routes(self, node: str) -> set[str]:
        """Prefixes of kr's own routes (protocol 107), each of which must go through ``kr-vxlan``."""
        lines = self.sh(node, "ip", "-4", "route", "show", "proto", "107").splitlines()
        assert all(" dev kr-vxlan " in line for line in lines), lines
        return {line.split()[0] for line in lines}


def lab_up(state: Path, *agent_args: str) -> OverlayLab:
    spec = state.parent / f"{state.name}.yaml"
    spec.write_text(SPEC)
    up = subprocess.run([KR, "lab", "up", "--state", str(state), "--spec", str(spec), "--plugins", PLUGINS,
                         *(f"--agent-arg={arg}" for arg in agent_args)],
                        capture_output=True, text=True, timeout=120, check=False)
    assert up.returncode == 0, f"kr lab up failed:\n{up.stdout}\n{up.stderr}"
    return OverlayLab(state)


def lab_down(state: Path) -> None:
    subprocess.run([KR, "lab", "down", "--state", str(state)], capture_output=True, text=True, timeout=60,
                   check=False)


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OverlayLab]:
    state = tmp_path_factory.mktemp("bgp-overlay") / "lab"
    try:
        yield lab_up(state)
    finally:
        lab_down(state)


def same_rack(node: str) -> set[str]:
    return {CIDRS[n] for n in NODES if n != node and RACK[n] == RACK[node]}


def other_rack(node: str) -> set[str]:
    return {CIDRS[n] for n in NODES if RACK[n] != RACK[node]}


def converged(lab: OverlayLab) -> bool:
    return all(lab.established(n) == 2 and lab.bird_routes(n) == same_rack(n)
               and lab.overlay_routes(n) == other_rack(n) for n in NODES)


def test_same_subnet_over_bgp_other_subnet_over_the_overlay(lab: OverlayLab) -> None:
    assert wait_for(lambda: converged(lab)), {n: (lab.established(n), lab.bird_routes(n), lab.overlay_routes(n))
                                              for n in NODES}
    a1 = lab.sh("node-a1", "ip", "-4", "route")
    assert "10.2.2.0/24 via 172.31.1.12 dev eth0 proto bird metric 107" in a1
    assert "10.2.3.0/24 via 10.2.3.0 dev kr-vxlan proto 107 onlink" in a1
    b1 = lab.sh("node-b1", "ip", "-4", "route")
    assert "10.2.1.0/24 via 10.2.1.0 dev kr-vxlan proto 107 onlink" in b1
    assert "10.2.2.0/24 via 10.2.2.0 dev kr-vxlan proto 107 onlink" in b1
    assert "proto bird" not in b1
    # the session to the other rack's node runs through the router, and what it taught BIRD is shown
    table = lab.sh("node-a1", KR, "bgp", "routes", "--hostname-override", "node-a1",
                   "--bgp-run-dir", str(lab.state / "bgp"))
    assert {line.split()[0] for line in table.splitlines()[1:]} == set(CIDRS.values())
    assert lab.sh("node-b1", "ip", "-d", "link", "show", "kr-vxlan").count("vxlan id 4096") == 1
    assert lab.unreachable_pairs() == []


def test_pod_egress_is_masqueraded(lab: OverlayLab, tmp_path: Path) -> None:
    far = lab.lab.netns_of("far")
    echo.start(far, "host/far", [(9000, "TCP")], tmp_path / "far.log")  # killed with the lab's namespaces
    for key, node_ip in (("default/a1", "172.31.1.11"), ("default/b1", "172.31.2.11")):
        result = probe(lab.lab.state.pods[key].netns, "172.31.2.100", 9000, "TCP", 2.0)
        assert result.ok and result.answer == "host/far", (key, result)
        assert result.peer_ip == node_ip, (key, result)  # the node's address, not the pod's
    assert "KR-POD-EGRESS" in lab.sh("node-a1", "iptables-save", "-t", "nat")


def test_cleanup_removes_the_overlay_routes_and_egress_too(lab: OverlayLab) -> None:
    node = "node-a1"
    assert wait_for(lambda: converged(lab))
    lab.lab.stop_agent(node)
    before = lab.sh(node, "ip", "-4", "route")
    assert "proto bird" in before and "kr-vxlan" in before
    subprocess.run(["ip", "netns", "exec", lab.lab.netns_of(node), KR, "cleanup", "--plugins", "routing.bgp",
                    "--hostname-override", node, "--bgp-run-dir", str(lab.state / "bgp")],
                   capture_output=True, text=True, timeout=60, check=True)
    after = lab.sh(node, "ip", "-4", "route")
    assert [line for line in before.splitlines() if "proto bird" not in line and "proto 107" not in line] \
        == after.splitlines()
    assert lab.sh(node, "ip", "link", "show", "kr-vxlan", check=False) == ""
    assert "KR-POD-EGRESS" not in lab.sh(node, "iptables-save", "-t", "nat")
    assert "kr-pod-subnets" not in lab.sh(node, "ipset", "list", "-n")
    assert not (lab.state / "bgp" / node).exists()
    lab.lab.start_agent(node)  # and kr heals the node again
    assert wait_for(lambda: converged(lab))
    assert lab.unreachable_pairs() == []


def test_full_overlay_carries_every_peer(tmp_path: Path) -> None:
    state = tmp_path / "lab"
    try:
        lab = lab_up(state, "--overlay-type=full")
        every = {n: {CIDRS[m] for m in NODES if m != n} for n in NODES}
        assert wait_for(lambda: all(lab.established(n) == 2 and lab.overlay_routes(n) == every[n] for n in NODES))
        assert all(lab.bird_routes(n) == set() for n in NODES)  # BIRD still learns them, and leaves them be
        assert lab.unreachable_pairs() == []
    finally:
        lab_down(state)


ROUTER = {"node-a1": "172.31.1.1", "node-a2": "172.31.1.1", "node-b1": "172.31.2.1"}  # the lab's router


def test_without_the_overlay_a_peer_in_another_subnet_is_routed_through_the_router(tmp_path: Path) -> None:
    """``--enable-overlay=false``: a node in the other rack is left to BGP, as in kube-router: its route's
    next hop is resolved through the kernel's default route, so its pod CIDR goes to the router (which, in
    a real rack, learned it by BGP), never to an ``unreachable`` blackhole; the rack's peers are direct."""
    state = tmp_path / "lab"
    try:
        lab = lab_up(state, "--enable-overlay=false")
        others = {n: {CIDRS[m] for m in NODES if m != n} for n in NODES}
        assert wait_for(lambda: all(lab.established(n) == 2 and lab.bgp_routes(n) == others[n] for n in NODES))
        for node in NODES:
            routes = lab.sh(node, "ip", "-4", "route", "show", "proto", "bird")
            assert "unreachable" not in routes and lab.overlay_routes(node) == set(), routes
            for other in NODES:
                if other != node:
                    via = ROUTER[node] if RACK[other] != RACK[node] else lab.lab.spec.host(other).ip
                    assert f"{CIDRS[other]} via {via} " in routes, (node, other, routes)
    finally:
        lab_down(state)


FAR_BIRD = """\
router id 172.31.2.100;
protocol device {}
protocol kernel { ipv4 { import none; export none; }; learn; }
protocol static injected { ipv4; route 198.18.5.0/24 unreachable; }
template bgp node { local 172.31.2.100 as 65000; multihop 3; connect delay time 1; error wait time 1, 10;
  ipv4 { import all; export where source = RTS_STATIC; }; }
protocol bgp node_a1 from node { neighbor 172.31.1.11 as 64512; }
protocol bgp node_a2 from node { neighbor 172.31.1.12 as 64512; }
protocol bgp node_b1 from node { neighbor 172.31.2.11 as 64512; }
"""


def test_an_external_router_in_another_subnet_peers_multihop_both_ways(tmp_path: Path) -> None:
    """An external BIRD in rack b (``--peer-router-multihop-ttl 3``): the rack-a nodes reach it through the
    router; it learns every pod CIDR, and its route is installed on every node, resolved through the
    kernel's routes (via the router in rack a, directly in rack b)."""
    state = tmp_path / "lab"
    conf, ctl = tmp_path / "far.conf", tmp_path / "far.ctl"
    conf.write_text(FAR_BIRD)
    try:
        lab = lab_up(state, "--peer-router-ips=172.31.2.100", "--peer-router-asns=65000",
                     "--peer-router-multihop-ttl=3")
        lab.sh("far", "ip", "route", "replace", "default", "via", "172.31.2.1")
        lab.sh("far", "bird", "-c", str(conf), "-s", str(ctl))
        assert wait_for(lambda: lab.sh("far", "birdc", "-s", str(ctl), "show", "protocols").count("Established") == 3)
        assert wait_for(lambda: all(c in lab.sh("far", "birdc", "-s", str(ctl), "show", "route") for c in CIDRS.values()))
        for node in NODES:
            assert wait_for(lambda node=node: "198.18.5.0/24" in lab.bgp_routes(node)), lab.sh(node, "ip", "route")
            route = lab.sh(node, "ip", "-4", "route", "show", "198.18.5.0/24")
            assert f"via {ROUTER[node] if RACK[node] == 'a' else '172.31.2.100'} " in route, (node, route)
    finally:
        lab_down(state)
