"""``routing.bgp`` in the lab, on real traffic: three nodes, BIRD on each, no static routes.

- every pod reaches every pod across the three nodes over routes BIRD learned by iBGP (``proto bird``,
  metric 107), and no node holds a route of ``routing.static``'s;
- restarting kr on a node leaves its BIRD (same process) and its routes in place, and traffic flows;
- route reflection (``kube-router.io/rr.server`` / ``rr.client``): the clients keep a session with the
  reflector only and still reach each other, next hop unchanged;
- a BIRD killed by signal 9 is started again by kr within seconds, and with ``--bgp-graceful-restart``
  (which this lab runs with) no node loses a route meanwhile;
- a TCP stream between pods on two nodes carries on, line for line, while kr restarts on both;
- a node deleted from the API disappears from every other node's sessions and routes, and comes back when
  it is created again, without restarting anything;
- a node's ``kube-router.io/node.asn`` changed in the API takes effect without restarting kr: the other
  nodes' sessions to it come up with the new AS (eBGP now), and traffic still flows;
- a node's own external router (``kube-router.io/peers``) set and removed in the API takes effect live;
- ``kr cleanup`` on a node stops its BIRD and removes the routes it left, and nothing else;
- ``kr bgp peers`` and ``kr bgp routes`` on a node show its sessions and routes, and the agent's /metrics
  its sessions' state and route counts.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from bgplab import KR, PLUGINS, BgpLab, wait_for
from kubernetes import client

from kr_lab.lab import METRICS_PORT
from kr_lab.nsenter import run_in_netns
from kr_lab.probe import probe_matrix

NODES = ("kube-node1", "kube-node2", "kube-node3")
CIDRS = {"kube-node1": "10.1.1.0/24", "kube-node2": "10.1.2.0/24", "kube-node3": "10.1.3.0/24"}


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BgpLab]:
    state = tmp_path_factory.mktemp("bgp-lab") / "lab"
    try:
        up = subprocess.run([KR, "lab", "up", "--state", str(state), "--plugins", PLUGINS,
                             "--agent-arg=--bgp-graceful-restart"], capture_output=True, text=True, timeout=120, check=False)
        assert up.returncode == 0, f"kr lab up failed:\n{up.stdout}\n{up.stderr}"
        yield BgpLab(state)
    finally:
        subprocess.run([KR, "lab", "down", "--state", str(state)], capture_output=True, text=True, timeout=60,
                       check=False)


def others(node: str) -> set[str]:
    return {cidr for name, cidr in CIDRS.items() if name != node}


def test_pods_reach_each_other_over_routes_learned_by_ibgp(lab: BgpLab) -> None:
    for node in NODES:
        assert wait_for(lambda node=node: lab.bgp_routes(node) == others(node)), (node, lab.bgp_routes(node))
        assert lab.sh(node, "ip", "-4", "route", "show", "proto", "107") == ""  # no routing.static here
        sessions = lab.birdc(node, "show", "protocols")
        assert sessions.count("Established") == 2, sessions
    assert lab.unreachable_pairs() == []
    # what an operator sees on a node: kr bgp peers / routes
    peers = json.loads(lab.sh("kube-node1", KR, "bgp", "peers", "--json", "--hostname-override", "kube-node1",
                              "--bgp-run-dir", str(lab.state / "bgp")))
    assert [(p["peer"], p["asn"], p["state"]) for p in peers] == [("kube-node2", "64512", "Established"),
                                                                   ("kube-node3", "64512", "Established")]
    table = lab.sh("kube-node1", KR, "bgp", "routes", "--hostname-override", "kube-node1",
                   "--bgp-run-dir", str(lab.state / "bgp"))
    assert table.splitlines()[0].split() == ["PREFIX", "VIA", "SOURCE", "BEST"]
    assert {line.split()[0]: line.split()[1] for line in table.splitlines()[1:]} == {
        "10.1.1.0/24": "unreachable", "10.1.2.0/24": "192.168.56.12", "10.1.3.0/24": "192.168.56.13"}
    # and what monitoring sees: the agent's /metrics
    metrics = lab.sh("kube-node1", sys.executable, "-c", "import urllib.request; print(urllib.request.urlopen("
                     f"'http://127.0.0.1:{METRICS_PORT}/metrics', timeout=5).read().decode())")
    assert 'kr_bgp_peer_established{address="192.168.56.12",peer="kube-node2"} 1.0' in metrics
    assert 'kr_bgp_routes_received{address="192.168.56.13",peer="kube-node3"} 1.0' in metrics
    elsewhere = subprocess.run([KR, "bgp", "peers", "--hostname-override", "kube-node1", "--bgp-run-dir",
                                str(lab.state / "nowhere")], capture_output=True, text=True, timeout=30)
    assert elsewhere.returncode == 1 and "kr's BGP speaker 'bird' is not running" in elsewhere.stderr


def test_a_kr_restart_leaves_bird_and_its_routes_in_place(lab: BgpLab) -> None:
    before = lab.bird_pid("kube-node1")
    lab.lab.stop_agent("kube-node1")
    assert lab.bgp_routes("kube-node1") == others("kube-node1")  # kr gone, routes still there
    lab.lab.start_agent("kube-node1")
    assert wait_for(lambda: (lab.lab.agent_health("kube-node1") or {}).get("healthy") is True)
    assert lab.bird_pid("kube-node1") == before
    assert lab.birdc("kube-node1", "show", "protocols").count("Established") == 2
    assert lab.unreachable_pairs() == []


def test_a_node_asn_changed_in_the_api_takes_effect_live(lab: BgpLab) -> None:
    def annotate(value: str | None) -> None:
        body = {"metadata": {"annotations": {"kube-router.io/node.asn": value}}}
        lab.lab.call_api(lambda api: client.CoreV1Api(api).patch_node("kube-node3", body))

    annotate("64600")
    try:
        assert wait_for(lambda: "64600" in lab.birdc("kube-node1", "show", "protocols", "all"), timeout=30)
        assert wait_for(lambda: all(lab.birdc(n, "show", "protocols").count("Established") == 2 for n in NODES),
                        timeout=30)
        assert wait_for(lambda: all(lab.bgp_routes(n) == others(n) for n in NODES))
        assert lab.unreachable_pairs() == []
    finally:
        annotate(None)
    assert wait_for(lambda: all(lab.birdc(n, "show", "protocols").count("Established") == 2 for n in NODES),
                    timeout=30)


def test_route_reflection_with_sessions_only_to_the_reflector(lab: BgpLab) -> None:
    def annotate(node: str, annotations: dict[str, str | None]) -> None:
        body = {"metadata": {"annotations": annotations}}
        lab.lab.call_api(lambda api: client.CoreV1Api(api).patch_node(node, body))

    roles = {"kube-node1": {"kube-router.io/rr.server": "42"}, "kube-node2": {"kube-router.io/rr.client": "42"},
             "kube-node3": {"kube-router.io/rr.client": "42"}}
    for node, annotations in roles.items():
        annotate(node, annotations)
    try:
        def sessions(node: str) -> list[str]:
            return [line.split()[0] for line in lab.birdc(node, "show", "protocols").splitlines()
                    if " BGP " in line and "Established" in line]

        # the clients talk to the reflector only, and still learn each other's pod CIDR, next hop kept
        assert wait_for(lambda: len(sessions("kube-node2")) == 1 and len(sessions("kube-node3")) == 1
                        and len(sessions("kube-node1")) == 2, timeout=30)
        assert all("kube_node1" in name for name in sessions("kube-node2"))
        # every node, not just the one looked at: while the topology changes, a client's route from its old
        # direct session is withdrawn before the reflected one arrives (a sub-second gap)
        assert wait_for(lambda: all(lab.bgp_routes(n) == others(n) for n in NODES), timeout=30)
        assert "10.1.3.0/24 via 192.168.56.13 " in lab.sh("kube-node2", "ip", "-4", "route", "show", "proto", "bird")
        assert lab.unreachable_pairs() == []
    finally:
        for node, annotations in roles.items():
            annotate(node, dict.fromkeys(annotations))
    assert wait_for(lambda: all(lab.birdc(n, "show", "protocols").count("Established") == 2 for n in NODES),
                    timeout=30)


def test_a_node_removed_from_the_api_leaves_every_table_and_comes_back_when_added(lab: BgpLab) -> None:
    core = lambda api: client.CoreV1Api(api)  # noqa: E731
    saved = json.loads(lab.lab.call_api(lambda api: core(api).read_node("kube-node3", _preload_content=False).data))
    lab.lab.call_api(lambda api: core(api).delete_node("kube-node3"))
    try:
        for node in ("kube-node1", "kube-node2"):
            assert wait_for(lambda node=node: lab.bgp_routes(node) == others(node) - {CIDRS["kube-node3"]}), node
            assert wait_for(lambda node=node: "kube-node3" not in lab.birdc(node, "show", "protocols", "all"))
    finally:
        meta = {k: v for k, v in saved["metadata"].items() if k in ("name", "labels", "annotations")}
        body = {"metadata": meta, "spec": saved["spec"], "status": saved["status"]}
        lab.lab.call_api(lambda api: core(api).create_node(body))
    assert wait_for(lambda: all(lab.bgp_routes(n) == others(n) for n in NODES), timeout=30)
    assert lab.unreachable_pairs() == []


def test_a_bird_that_dies_is_started_again_by_kr_and_graceful_restart_keeps_every_route(lab: BgpLab) -> None:
    """kube-node2's BIRD killed by signal 9: kr starts it again (recovering gracefully: its kernel routes
    stay until its peers have resent theirs), and meanwhile the other nodes keep its pod CIDR (stale, as
    BGP graceful restart has them do): no node misses a route at any moment, polled (each round reads
    the three nodes' tables, a few ms apart) until 3 s after the sessions are back and recovery is over."""
    node = "kube-node2"
    before = lab.bird_pid(node)
    missing: set[tuple[str, str]] = set()
    subprocess.run(["kill", "-9", before], check=True)
    deadline, settled = time.monotonic() + 30, None
    while time.monotonic() < deadline and (settled is None or time.monotonic() < settled):
        for n in NODES:
            missing |= {(n, cidr) for cidr in others(n) - lab.bgp_routes(n)}
        if settled is None and lab.bird_pid(node) != before and \
                lab.birdc(node, "show", "protocols").count("Established") == 2:
            settled = time.monotonic() + 3  # and on through the end of the recovery (the kernel resync)
        time.sleep(0.01)
    assert lab.birdc(node, "show", "protocols").count("Established") == 2
    assert "Graceful restart recovery" not in lab.birdc(node, "show", "status")
    assert missing == set()
    assert wait_for(lambda: all(lab.bgp_routes(n) == others(n) for n in NODES), timeout=30)
    assert "started it again" in (lab.state / "logs" / f"agent-{node}.log").read_text()
    assert lab.unreachable_pairs() == []


def test_a_long_tcp_stream_between_pods_survives_kr_restarts_on_both_nodes(lab: BgpLab) -> None:
    """A connection from a pod on kube-node1 to one on kube-node3 exchanges a line every 20 ms while kr
    restarts on both nodes: every line comes back, none late (BIRD and the routes never went away)."""
    source, target = lab.lab.state.pods["frontend/web-1"], lab.lab.state.pods["backend/api-2"]
    server = run_in_netns(target.netns, socket.create_server, (target.ip, 40123))
    accepted: list[socket.socket] = []
    waiter = threading.Thread(target=lambda: accepted.append(server.accept()[0]), daemon=True)
    waiter.start()
    stream = run_in_netns(source.netns, socket.create_connection, (target.ip, 40123), 5)
    waiter.join(5)
    (conn,) = accepted

    def echo() -> None:
        with conn:
            while data := conn.recv(4096):
                conn.sendall(data)

    threading.Thread(target=echo, daemon=True).start()
    slowest = 0.0
    with stream, server:
        stream.settimeout(2.0)
        reader = stream.makefile("rb")
        restarts = {20: ("stop", "kube-node1"), 40: ("start", "kube-node1"), 60: ("stop", "kube-node3"),
                    80: ("start", "kube-node3")}
        for index in range(120):
            if index in restarts:
                action, node = restarts[index]
                (lab.lab.stop_agent if action == "stop" else lab.lab.start_agent)(node)
            started = time.monotonic()
            stream.sendall(b"line %d\n" % index)
            assert reader.readline() == b"line %d\n" % index
            slowest = max(slowest, time.monotonic() - started)
            time.sleep(0.02)
    assert slowest < 0.5, f"a line took {slowest:.2f} s"
    for node in ("kube-node1", "kube-node3"):
        assert wait_for(lambda node=node: (lab.lab.agent_health(node) or {}).get("healthy") is True)


NODE_PEER_BIRD = """\
router id 192.168.56.100;
protocol device {}
protocol static injected { ipv4; route 198.18.0.0/24 unreachable; }
protocol bgp kube_node1 { local 192.168.56.100 as 65010; neighbor 192.168.56.11 as 64512; password "n0de";
  connect delay time 1; error wait time 1, 10; ipv4 { import all; export where source = RTS_STATIC; }; }
"""


def test_a_peer_annotated_on_a_node_comes_and_goes_without_a_restart(lab: BgpLab, tmp_path: Path) -> None:
    """``kube-router.io/peers`` on kube-node1 (an external router with a password) takes effect live: the
    session comes up, routes flow both ways, only on that node; removing the annotation ends it."""
    conf, ctl = tmp_path / "peer.conf", tmp_path / "peer.ctl"
    conf.write_text(NODE_PEER_BIRD)

    def annotate(value: str | None) -> None:
        body = {"metadata": {"annotations": {"kube-router.io/peers": value}}}
        lab.lab.call_api(lambda api: client.CoreV1Api(api).patch_node("kube-node1", body))

    lab.sh("client", "bird", "-c", str(conf), "-s", str(ctl))
    try:
        annotate("- remoteip: 192.168.56.100\n  remoteasn: 65010\n  password: bjBkZQ==\n")  # base64 of n0de
        assert wait_for(lambda: "Established" in lab.sh("client", "birdc", "-s", str(ctl), "show", "protocols"))
        assert wait_for(lambda: "198.18.0.0/24" in lab.bgp_routes("kube-node1"))
        assert CIDRS["kube-node1"] in lab.sh("client", "birdc", "-s", str(ctl), "show", "route")
        assert all("198.18.0.0/24" not in lab.bgp_routes(n) for n in ("kube-node2", "kube-node3"))  # node1's own
        annotate(None)
        assert wait_for(lambda: "198.18.0.0/24" not in lab.bgp_routes("kube-node1"))
        assert "kr_ext_" not in lab.birdc("kube-node1", "show", "protocols")
    finally:
        annotate(None)
        lab.sh("client", "birdc", "-s", str(ctl), "down", check=False)
    assert wait_for(lambda: all(lab.bgp_routes(n) == others(n) for n in NODES))


def test_cleanup_stops_bird_and_removes_only_its_routes(lab: BgpLab) -> None:
    node = "kube-node2"
    lab.lab.stop_agent(node)
    before = lab.sh(node, "ip", "-4", "route")
    subprocess.run(["ip", "netns", "exec", lab.lab.netns_of(node), KR, "cleanup", "--plugins", "routing.bgp",
                    "--hostname-override", node, "--bgp-run-dir", str(lab.state / "bgp")],
                   capture_output=True, text=True, timeout=60, check=True)
    after = lab.sh(node, "ip", "-4", "route")
    assert "proto bird" in before and "proto bird" not in after
    assert [line for line in before.splitlines() if "proto bird" not in line] == after.splitlines()
    assert not (lab.state / "bgp" / node).exists()
    lab.lab.start_agent(node)  # kr starts a BIRD again and the mesh heals
    assert wait_for(lambda: all(lab.bgp_routes(n) == others(n) for n in NODES), timeout=30)
    assert lab.unreachable_pairs() == []


EXTERNAL_BIRD = """\
router id 192.168.56.100;
protocol device {}
protocol kernel { ipv4 { export where source = RTS_BGP; }; }
protocol static injected { ipv4; route 203.0.113.0/24 unreachable; route 0.0.0.0/0 unreachable;
  route 10.1.2.128/25 unreachable; route 198.51.100.12/32 unreachable; }
template bgp node { local 192.168.56.100 as 65000; password "s3cret"; connect delay time 1; error wait time 1, 10;
  ipv4 { import all; export where source = RTS_STATIC; }; }
protocol bgp kube_node1 from node { neighbor 192.168.56.11 as 64512; }
protocol bgp kube_node2 from node { neighbor 192.168.56.12 as 64512; }
protocol bgp kube_node3 from node { neighbor 192.168.56.13 as 64512; }
"""


def api_service(name: str, annotations: dict[str, str] | None = None, **spec: object) -> dict[str, object]:
    """A Service over the lab's api pods (api-1 on kube-node2, api-2 on kube-node3), 80/TCP -> 9090."""
    return {"apiVersion": "v1", "kind": "Service",
            "metadata": {"namespace": "backend", "name": name, "annotations": annotations or {}},
            "spec": {"selector": {"app": "api"}, "ports": [{"name": "http", "port": 80, "targetPort": 9090}], **spec}}


VIP_SERVICES = [
    api_service("vip-external", externalIPs=["198.51.100.10"]),  # --advertise-external-ip: every node
    api_service("vip-local", externalIPs=["198.51.100.11"], type="NodePort", externalTrafficPolicy="Local"),
    api_service("vip-opt-in", {"kube-router.io/service.advertise.clusterip": "true"}),
    api_service("vip-quiet"),  # its cluster IP is not advertised (no --advertise-cluster-ip)
    api_service("vip-opt-out", {"kube-router.io/service.advertise.externalip": "false"}, externalIPs=["198.51.100.12"]),
]


def test_an_external_router_peers_with_a_password_learns_pod_cidrs_and_injects_a_route(tmp_path: Path) -> None:
    """An external BIRD on the lab's outside host (AS 65000, MD5 password) peers with every node through
    ``--peer-router-*``, learns every pod CIDR, and its route reaches the nodes' kernels; its default route,
    a prefix inside a node's pod CIDR and a service's address are refused. It also learns the service
    addresses meant to be advertised (``--advertise-external-ip``, a cluster IP opted in by annotation), a
    Local service's only from the nodes with its endpoints, and none other; the outside host then reaches
    the service at its external IP over the route it learned, through the nodes' proxy."""
    state = tmp_path / "lab"
    args = [f"--agent-arg={arg}" for arg in ("--peer-router-ips=192.168.56.100", "--peer-router-asns=65000",
                                             "--peer-router-passwords=czNjcmV0",  # base64 of s3cret
                                             "--advertise-external-ip")]
    try:
        up = subprocess.run([KR, "lab", "up", "--state", str(state), "--plugins", f"{PLUGINS},proxy.iptables", *args],
                            capture_output=True, text=True, timeout=120, check=False)
        assert up.returncode == 0, f"kr lab up failed:\n{up.stdout}\n{up.stderr}"
        lab = BgpLab(state)
        lab.lab.apply(VIP_SERVICES)  # before the router comes: the address it offers is a service's already
        conf, ctl = tmp_path / "external.conf", tmp_path / "external.ctl"
        conf.write_text(EXTERNAL_BIRD)
        lab.sh("client", "bird", "-c", str(conf), "-s", str(ctl))

        def external_table() -> str:
            return lab.sh("client", "birdc", "-s", str(ctl), "show", "route")

        assert wait_for(lambda: all(cidr in external_table() for cidr in CIDRS.values()), timeout=30), external_table()
        assert lab.sh("client", "birdc", "-s", str(ctl), "show", "protocols").count("Established") == 3
        for node in NODES:
            assert wait_for(lambda node=node: "203.0.113.0/24" in lab.bgp_routes(node)), node
            routes = lab.sh(node, "ip", "-4", "route", "show", "proto", "bird")
            assert "203.0.113.0/24 via 192.168.56.100 " in routes
            assert "default" not in routes and "10.1.2.128/25" not in routes, routes
            assert wait_for(lambda node=node: lab.bgp_routes(node) == others(node) | {"203.0.113.0/24"}), \
                lab.bgp_routes(node)  # the mesh comes up beside it (a fresh lab: sessions still starting)

        opt_in, quiet = (lab.lab.call_api(lambda api, name=name: client.CoreV1Api(api).read_namespaced_service(
            name, "backend")).spec.cluster_ip for name in ("vip-opt-in", "vip-quiet"))

        def vip_paths(vip: str) -> set[str]:
            """The nodes (by address) the external router has a path to ``vip`` from."""
            text = lab.sh("client", "birdc", "-s", str(ctl), "show", "route", "for", vip, "all")
            return {line.split()[1] for line in text.splitlines() if line.strip().startswith("via ")} \
                if f"{vip}/32" in text else set()

        every = {"192.168.56.11", "192.168.56.12", "192.168.56.13"}
        assert wait_for(lambda: vip_paths("198.51.100.10") == every and vip_paths(opt_in) == every, timeout=15), \
            (vip_paths("198.51.100.10"), vip_paths(opt_in))
        assert wait_for(lambda: vip_paths("198.51.100.11") == every - {"192.168.56.11"}), vip_paths("198.51.100.11")
        table = external_table()
        assert quiet not in table and vip_paths("198.51.100.12") == set(), table
        # no node took a service address from the router (it offers 198.51.100.12/32), nor from another node
        for node in NODES:
            assert lab.bgp_routes(node) == others(node) | {"203.0.113.0/24"}, (node, lab.bgp_routes(node))
        # the outside host reaches the service at its external IP over the route it learned
        assert "198.51.100.10 via 192.168.56." in lab.sh("client", "ip", "-4", "route", "show", "198.51.100.10")
        results = probe_matrix([(lab.lab.netns_of("client"), "198.51.100.10", 80, "TCP")] * 10, timeout=2.0)
        assert all(r.ok for r in results) and {r.answer for r in results} <= {"backend/api-1", "backend/api-2"}, results
        # the password is really checked: with another one the external router gets no session back
        conf.write_text(EXTERNAL_BIRD.replace("s3cret", "wrong"))
        lab.sh("client", "birdc", "-s", str(ctl), "configure")
        lab.sh("client", "birdc", "-s", str(ctl), "restart", "all")
        time.sleep(4)
        assert lab.sh("client", "birdc", "-s", str(ctl), "show", "protocols").count("Established") == 0
        conf.write_text(EXTERNAL_BIRD)  # and with the right one, the same restart gets them back at once
        lab.sh("client", "birdc", "-s", str(ctl), "configure")
        lab.sh("client", "birdc", "-s", str(ctl), "restart", "all")
        assert wait_for(lambda: lab.sh("client", "birdc", "-s", str(ctl), "show", "protocols").count("Established")
                        == 3, timeout=10)
    finally:
        subprocess.run([KR, "lab", "down", "--state", str(state)], capture_output=True, text=True, timeout=60,
                       check=False)
