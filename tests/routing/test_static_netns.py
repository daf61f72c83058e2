"""routing.static on real network namespaces: three nodes on two subnets, one pod each (see routing_lab.py).

The backend runs inside each node's namespace (``driver.py``), as ``kr run`` would; the tests then send
real TCP traffic between pods and to a host outside the cluster, and read the kernel's state back.
"""

from __future__ import annotations

from routing_lab import EXTERNAL_IP, LAN, Lab, node_object

ALL_ROUTES = {
    "node1": {"10.244.2.0/24": f"via {LAN}.12 dev eth0", "10.244.3.0/24": "via 10.244.3.0 dev kr-vxlan onlink"},
    "node2": {"10.244.1.0/24": f"via {LAN}.11 dev eth0", "10.244.3.0/24": "via 10.244.3.0 dev kr-vxlan onlink"},
    "node3": {"10.244.1.0/24": "via 10.244.1.0 dev kr-vxlan onlink",
              "10.244.2.0/24": "via 10.244.2.0 dev kr-vxlan onlink"},
}
JUMP = "-A POSTROUTING -m comment --comment \"kr: masquerade pod egress\" -j KR-POD-EGRESS"


def assert_pods_reach_each_other(lab: Lab, nodes: tuple[str, ...] = ("node1", "node2", "node3")) -> None:
    """Every pod sends 200 kB (many full-MTU segments) to every other and keeps its own source address."""
    for source in nodes:
        for target in nodes:
            if source != target:
                seen = lab.send(source, lab.nodes[target].pod_ip)
                assert seen == (lab.nodes[source].pod_ip, 200_000), (source, target)


def test_pods_on_all_nodes_reach_each_other_directly_and_over_the_overlay(lab: Lab) -> None:
    snapshot = lab.snapshot()
    for node in lab.nodes:
        lab.backend(node, f"full:{snapshot}", f"partial:{snapshot}")
    for node, routes in ALL_ROUTES.items():
        assert lab.kr_routes(node) == routes
        ns = lab.nodes[node].ns
        assert lab.read_sysctl(ns, "net/ipv4/ip_forward") == "1"
        assert lab.read_sysctl(ns, "net/ipv4/conf/kr-vxlan/rp_filter") == "2"
        assert lab.read_sysctl(ns, "net/ipv4/conf/all/rp_filter") == "1"  # strict, as the lab set it: not kr's
    # every pod-CIDR route in the main table is kr's (the node's own one is the bridge's connected route)
    for route in lab.routes("node1"):
        if route["dst"].startswith("10.244.") and route["dst"] != "10.244.1.0/24":
            assert route["protocol"] == "107", route
    device = lab.kr_state("node3")["device"][0]
    vni = device["linkinfo"]["info_data"]["id"]
    assert (device["mtu"], device["address"], vni) == (1450, "02:6b:c0:a8:3c:0d", 4096)
    assert_pods_reach_each_other(lab)


def test_pod_egress_leaves_with_the_node_address_in_the_detected_flavour(lab: Lab) -> None:
    lab.sync_all(lab.snapshot())
    assert lab.send("node1", EXTERNAL_IP) == (lab.nodes["node1"].ip, 200_000)
    assert lab.send("node3", EXTERNAL_IP) == (lab.nodes["node3"].ip, 200_000)  # through the router
    flavours = {lab.backend(node, "flavour")[0]["flavour"] for node in lab.nodes}
    assert len(flavours) == 1, flavours
    (flavour,) = flavours
    default = "nft" if "nf_tables" in lab.exec(lab.nodes["node1"].ns, "iptables", "-V").stdout else "legacy"
    assert flavour == default  # a namespace with no rules follows `iptables -V`; kr's rules then keep it there
    other = "legacy" if flavour == "nft" else "nft"
    for node in lab.nodes:
        assert lab.iptables_save(node, flavour).count(JUMP) == 1
        assert "KR-" not in lab.iptables_save(node, other)


def test_a_stale_route_goes_and_foreign_routes_stay(lab: Lab) -> None:
    ns = lab.nodes["node1"].ns
    lab.ip(ns, "route", "add", "10.99.0.0/24", "via", f"{LAN}.12", "proto", "static")
    lab.ip(ns, "route", "add", "10.244.3.0/24", "via", f"{LAN}.1", "metric", "50", "proto", "static")
    foreign = {"10.99.0.0/24", "10.244.3.0/24 metric 50"}

    def foreign_routes() -> set[str]:
        return {f"{r['dst']} metric {r['metric']}" if "metric" in r else r["dst"]
                for r in lab.routes("node1", "proto", "static")}

    everyone, without_node3 = lab.snapshot(), lab.snapshot(["node1", "node2"])
    # in one process: the second, partial sync works from what the backend remembers
    lab.backend("node1", f"full:{everyone}", f"partial:{without_node3}")
    assert lab.kr_routes("node1") == {"10.244.2.0/24": f"via {LAN}.12 dev eth0"}
    assert lab.kr_state("node1")["neighbours"].strip() == "" and lab.kr_state("node1")["fdb"].strip() == ""
    assert lab.ipset_members("node1", "kr-pod-subnets") == ["10.244.1.0/24", "10.244.2.0/24"]
    assert foreign_routes() == foreign
    # across processes: a new backend's full sync re-reads what kr owns in the kernel
    lab.backend("node1", f"full:{everyone}")
    assert lab.kr_routes("node1") == ALL_ROUTES["node1"]
    lab.backend("node1", f"full:{without_node3}")
    assert lab.kr_routes("node1") == {"10.244.2.0/24": f"via {LAN}.12 dev eth0"}
    assert foreign_routes() == foreign


def test_repeated_syncs_change_nothing_and_keep_one_jump(lab: Lab) -> None:
    snapshot = lab.snapshot()
    lab.backend("node1", f"full:{snapshot}")
    first = lab.kr_state("node1")
    lab.backend("node1", f"full:{snapshot}", f"partial:{snapshot}", f"full:{snapshot}")
    assert lab.kr_state("node1") == first
    # a duplicate jump (say, from a crash mid-way in another tool) is collapsed by the next full sync
    lab.exec(lab.nodes["node1"].ns, "iptables", "-t", "nat", "-A", "POSTROUTING", "-m", "comment", "--comment",
             "kr: masquerade pod egress", "-j", "KR-POD-EGRESS")
    lab.backend("node1", f"full:{snapshot}")
    assert lab.kr_state("node1") == first
    assert first["iptables"]["nft"].count(JUMP) == 1


def test_cleanup_removes_everything_kr_owns_and_nothing_else(lab: Lab) -> None:
    lab.sync_all(lab.snapshot())
    ns = lab.nodes["node1"].ns
    lab.ip(ns, "route", "add", "10.99.0.0/24", "via", f"{LAN}.12", "proto", "static")
    before = lab.ip(ns, "route", "show", "table", "main")
    lab.backend("node1", "cleanup", "cleanup")  # a backend that never synced; twice is fine
    state = lab.kr_state("node1")
    assert state["routes"] == {} and state["device"] is None and state["ipsets"] == {}
    assert all("KR-" not in save for save in state["iptables"].values())
    after = lab.ip(ns, "route", "show", "table", "main")
    kept = [line for line in before.splitlines() if "proto 107" not in line and "kr-vxlan" not in line]
    assert after.splitlines() == kept
    assert "10.99.0.0/24 via" in after and "kube-bridge" in after
    assert lab.read_sysctl(ns, "net/ipv4/ip_forward") == "1"  # left on: other software may rely on it


def test_overlay_full_then_off(lab: Lab) -> None:
    snapshot = lab.snapshot()
    lab.sync_all(snapshot, options={"overlay_type": "full"})
    assert lab.kr_routes("node1") == {"10.244.2.0/24": "via 10.244.2.0 dev kr-vxlan onlink",
                                      "10.244.3.0/24": "via 10.244.3.0 dev kr-vxlan onlink"}
    assert_pods_reach_each_other(lab)
    lab.sync_all(snapshot, options={"enable_overlay": False})
    assert lab.kr_routes("node1") == {"10.244.2.0/24": f"via {LAN}.12 dev eth0"}
    assert "node node1: 192.168.50.11 is outside 192.168.60.0/24 and the overlay is off" in lab.last_stderr  # node3's
    for node in lab.nodes:
        assert lab.kr_state(node)["device"] is None
    assert lab.kr_routes("node3") == {}
    assert_pods_reach_each_other(lab, ("node1", "node2"))


def test_one_failing_peer_does_not_stop_the_others(lab: Lab) -> None:
    # The LAN's broadcast address as a node IP: the kernel refuses a gateway there.
    bogus = node_object("node9", f"{LAN}.255", "10.244.9.0/24")
    with_bogus, healthy = lab.snapshot(extra=[bogus]), lab.snapshot()
    (result,) = lab.backend("node1", f"full:{with_bogus}", expect_ok=False)
    assert not result["ok"] and "10.244.9.0/24" in result["error"]
    for node in ("node2", "node3"):
        lab.backend(node, f"full:{healthy}")
    assert lab.kr_routes("node1") == ALL_ROUTES["node1"]
    assert_pods_reach_each_other(lab)
    lab.backend("node1", f"full:{healthy}")


def test_a_destination_held_by_a_foreign_route_is_left_alone(lab: Lab) -> None:
    ns = lab.nodes["node1"].ns
    lab.ip(ns, "route", "add", "10.244.2.0/24", "via", f"{LAN}.1", "proto", "static")
    snapshot = lab.snapshot()
    lab.backend("node1", f"full:{snapshot}", f"full:{snapshot}")
    assert "not routing 10.244.2.0/24" in lab.last_stderr and lab.last_stderr.count("not routing") == 1
    assert [r.get("gateway") for r in lab.routes("node1", "10.244.2.0/24")] == [f"{LAN}.1"]
    assert lab.kr_routes("node1") == {"10.244.3.0/24": "via 10.244.3.0 dev kr-vxlan onlink"}
    lab.ip(ns, "route", "del", "10.244.2.0/24", "proto", "static")
    lab.backend("node1", f"full:{snapshot}")
    assert lab.kr_routes("node1") == ALL_ROUTES["node1"]


def test_a_missing_node_object_changes_nothing(lab: Lab) -> None:
    lab.backend("node1", f"full:{lab.snapshot()}", f"full:{lab.snapshot(['node2', 'node3'])}")
    assert "node node1 is not in the API: routing is left as it is" in lab.last_stderr
    assert lab.kr_routes("node1") == ALL_ROUTES["node1"]


def test_a_node_whose_rules_are_in_iptables_legacy_gets_krs_rules_there(lab: Lab) -> None:
    ns = lab.nodes["node1"].ns
    lab.exec(ns, "iptables-legacy", "-t", "mangle", "-N", "KUBE-KUBELET-CANARY")  # what kubelet leaves
    snapshot = lab.snapshot()
    lab.sync_all(snapshot)
    assert lab.backend("node1", "flavour")[0]["flavour"] == "legacy"
    lab.backend("node1", f"full:{snapshot}", f"partial:{snapshot}")
    assert lab.iptables_save("node1", "legacy").count(JUMP) == 1
    assert "KR-" not in lab.iptables_save("node1", "nft")
    assert lab.send("node1", EXTERNAL_IP) == (lab.nodes["node1"].ip, 200_000)
    lab.backend("node1", "cleanup")
    assert "KR-" not in lab.iptables_save("node1", "legacy")
    assert "KUBE-KUBELET-CANARY" in lab.iptables_save("node1", "legacy")
    assert lab.kr_state("node1")["ipsets"] == {}
