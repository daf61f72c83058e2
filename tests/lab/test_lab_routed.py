"""A two-LAN lab: the router namespace owns each LAN's first address and forwards between them."""

from __future__ import annotations

import json
from pathlib import Path

from conftest import LabFactory

from kr_lab import echo, netns, topology
from kr_lab.probe import probe
from kr_lab.spec import parse_spec

TWO_LANS = parse_spec({
    "lans": [{"name": "left", "subnet": "10.20.1.0/24"}, {"name": "right", "subnet": "10.20.2.0/24"}],
    "master": {"name": "master", "lan": "left", "ip": "10.20.1.10"},
    "nodes": [{"name": "node-a", "lan": "left", "ip": "10.20.1.11", "podCIDR": "10.30.1.0/24"},
              {"name": "node-b", "lan": "right", "ip": "10.20.2.11", "podCIDR": "10.30.2.0/24"}],
    "externals": [{"name": "far", "lan": "right", "ip": "10.20.2.100"}],
    "pods": [{"name": "pa", "node": "node-a", "ports": [{"port": 8080}]}],
})


def test_hosts_on_different_lans_reach_each_other_through_the_router(new_lab: LabFactory, tmp_path: Path) -> None:
    lab = new_lab(TWO_LANS)
    rt = topology.router_ns(lab.id)
    assert rt in netns.list_namespaces(topology.lab_prefix(lab.id))
    assert netns.sysctl(rt, "net.ipv4.ip_forward") == "1"
    router_addrs = sorted(a["local"] for link in json.loads(netns.ip("-j", "addr", netns=rt))
                          for a in link["addr_info"] if a["family"] == "inet" and a["local"] != "127.0.0.1")
    assert router_addrs == ["10.20.1.1", "10.20.2.1"]
    default = json.loads(netns.ip("-j", "route", "show", "default", netns=lab.host_ns("far")))
    assert default[0]["gateway"] == "10.20.2.1"

    echo.start(lab.host_ns("far"), "host/far", [(9000, "TCP"), (9000, "UDP")], tmp_path / "far.log")
    master = lab.host_ns("master")
    assert probe(master, "10.20.2.100", 9000, "TCP", 1).answer == "host/far"
    assert probe(master, "10.20.2.100", 9000, "UDP", 1).answer == "host/far"
    assert probe(lab.host_ns("node-b"), "10.20.1.11", 1, "TCP", 1).error == "refused"
    # pods still need the routing backend to leave their node
    assert not probe(lab.pod_ns("default/pa"), "10.20.2.100", 9000, "TCP", 0.5).ok
