"""Unit tests of what ``proxy.iptables`` computes around the rules: which endpoints are used
(``endpoints.choose``), the UDP flows to forget after a change (``udp_targets``, ``stale_flows``), the
health-check ports (``health_targets``) and the settings (``proxy_settings``); and the backend's sync
against a fake kernel (nothing here runs a kernel tool or touches the root namespace).
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from cases import NODES, web, web_slice
from pxmodel import NODE, OTHER, THIRD, desired, endpoint, endpoint_slice, port, service

from kr_core.backends import BackendContext
from kr_core.changes import ChangeSet
from kr_core.config import AgentConfig
from kr_core.errors import KrError
from kr_core.model import DesiredState, Endpoint, ServicePort
from kr_plugins.kernel import conntrack, ipset
from kr_plugins.kernel.iptables import Flavour, IptablesRestore, TableChange, TableState
from kr_plugins.proxy.endpoints import choose, externally_reachable, usable
from kr_plugins.proxy.flows import UdpTargets, stale_flows, udp_targets
from kr_plugins.proxy.healthcheck import HealthTarget, health_targets
from kr_plugins.proxy.iptables import IptablesProxy, ProxyError, proxy_settings
from kr_plugins.proxy.rules import ProxySettings


def ep(address: str, local: bool = False, ready: bool = True, serving: bool = True,
       terminating: bool = False) -> Endpoint:
    return Endpoint(address, 80, ready, serving, terminating, NODE if local else OTHER, None, None, local)


def the_port(state: DesiredState, key: str = "default/web/http") -> ServicePort:
    found = state.service_port(key)
    assert found is not None, key
    return found


def addresses(endpoints: tuple[Endpoint, ...]) -> list[str]:
    return [e.address for e in endpoints]


# --- endpoints.choose


def test_usable_prefers_ready_then_serving_terminating() -> None:
    ready, unready = ep("10.0.0.1"), ep("10.0.0.2", ready=False, serving=False)
    draining = ep("10.0.0.3", ready=False, terminating=True)
    dead = ep("10.0.0.4", ready=False, serving=False, terminating=True)
    serving_not_ready = ep("10.0.0.5", ready=False, serving=True, terminating=False)
    assert usable([unready, ready, draining, dead]) == (ready,)
    assert usable([unready, draining, dead, serving_not_ready]) == (draining,)
    assert usable([unready, dead, serving_not_ready]) == ()
    assert usable(iter([draining])) == (draining,)


def test_choose_follows_the_traffic_policies() -> None:
    objects = [*NODES, web(type="NodePort", node_port=30080, etp="Local", itp="Local"),
               web_slice("web", endpoint("10.244.1.5", NODE, ready=False, serving=True, terminating=True),
                         endpoint("10.244.1.6", NODE, ready=False), endpoint("10.244.2.5", OTHER),
                         endpoint("10.244.3.5", THIRD, ready=False, serving=True, terminating=True))]
    choice = choose(the_port(desired(objects)))
    # anywhere a ready endpoint exists; this node has only a draining one, which it uses
    assert addresses(choice.everywhere) == ["10.244.2.5"]
    assert addresses(choice.local) == ["10.244.1.5"]
    assert choice.cluster == choice.local and choice.external == choice.local
    objects[3] = web(type="NodePort", node_port=30080)
    choice = choose(the_port(desired(objects)))
    assert choice.cluster == choice.everywhere and choice.external == choice.everywhere
    objects[3] = web(etp="Local")  # a ClusterIP: the external policy does not apply
    service_port = the_port(desired(objects))
    assert not externally_reachable(service_port) and choose(service_port).external == choose(service_port).everywhere
    assert externally_reachable(the_port(desired([*objects[:3], web(external_ips=["192.0.2.1"])])))


# --- UDP flows to forget


def udp_world(*endpoints: dict[str, Any], with_service: bool = True, protocol: str = "UDP") -> DesiredState:
    objects: list[dict[str, Any]] = [*NODES]
    if with_service:
        objects.append(service("dns", "10.96.0.53", [port(53, "dns", protocol, node_port=30053)], type="LoadBalancer",
                               external_ips=["192.0.2.53", "2001:db8::53"], lb_ips=["198.51.100.53"]))
    objects.append(endpoint_slice("dns", "dns-a", [("dns", protocol, 5353)], endpoints))
    return desired(objects)


A, B, C = endpoint("10.244.1.5", NODE), endpoint("10.244.2.5", OTHER), endpoint("10.244.3.5", THIRD)
ADDRESSES = ["10.96.0.53", "192.0.2.53", "198.51.100.53"]


def test_udp_targets_are_the_ipv4_addresses_and_the_endpoints_in_use() -> None:
    targets = udp_targets(udp_world(A, B, endpoint("10.244.3.9", THIRD, ready=False)))
    assert targets == {"default/dns:dns": UdpTargets(tuple(ADDRESSES), 53, 30053,
                                                    frozenset({"10.244.1.5", "10.244.2.5"}))}
    assert udp_targets(udp_world(A, B, protocol="TCP")) == {}


def test_stale_flows_nothing_when_unchanged() -> None:
    before = udp_targets(udp_world(A, B))
    assert stale_flows(before, udp_targets(udp_world(A, B))) == []
    assert stale_flows({}, {}) == []
    empty = udp_targets(udp_world())
    assert stale_flows(empty, empty) == []


def test_stale_flows_for_a_removed_endpoint_cover_every_address_and_the_node_port() -> None:
    deletions = stale_flows(udp_targets(udp_world(A, B, C)), udp_targets(udp_world(A, C)))
    assert deletions == [*({"orig_dst": a, "dst_nat": "10.244.2.5"} for a in ADDRESSES),
                         {"orig_port_dst": 30053, "dst_nat": "10.244.2.5"}]
    # an endpoint that stops being ready is no longer used either
    not_ready = endpoint("10.244.2.5", OTHER, ready=False)
    assert stale_flows(udp_targets(udp_world(A, B)), udp_targets(udp_world(A, not_ready))) == deletions
    # the whole service goes: every endpoint's flows
    gone = stale_flows(udp_targets(udp_world(A, B)), udp_targets(udp_world(A, B, with_service=False)))
    assert sorted(d["dst_nat"] for d in gone) == ["10.244.1.5"] * 4 + ["10.244.2.5"] * 4


def test_stale_flows_when_a_service_gets_its_first_endpoints() -> None:
    """Packets sent while there was no endpoint were never NATed (and rejected): their entries would keep
    new packets of those flows from being NATed now."""
    expected = [*({"orig_dst": a, "orig_port_dst": 53} for a in ADDRESSES), {"orig_port_dst": 30053}]
    assert stale_flows(udp_targets(udp_world()), udp_targets(udp_world(A))) == expected
    assert stale_flows({}, udp_targets(udp_world(A))) == expected  # a new service
    # from some endpoints to more: only a removal would need deletions
    assert stale_flows(udp_targets(udp_world(A)), udp_targets(udp_world(A, B))) == []


def test_stale_flows_never_mix_address_families() -> None:
    dual: list[dict[str, Any]] = [*NODES, service("dual", ["10.96.0.54", "fd00::54"], [port(53, "dns", "UDP")]),
                                  endpoint_slice("dual", "dual-a", [("dns", "UDP", 53)], [A]),
                                  endpoint_slice("dual", "dual-6", [("dns", "UDP", 53)],
                                                 [endpoint("fd00:10:244:1::5", NODE)], address_type="IPv6")]
    for deletion in stale_flows(udp_targets(desired(dual)), udp_targets(desired(dual[:-1]))):
        assert ":" not in str(deletion.get("dst_nat", "")), deletion


# --- health checks


def lb_local(*endpoints: dict[str, Any], ports: int = 1) -> DesiredState:
    return desired([*NODES, service("shop", "10.96.0.30",
                                    [port(80 + i, f"p{i}", node_port=30030 + i) for i in range(ports)],
                                    type="LoadBalancer", etp="Local", health_port=32030),
                    endpoint_slice("shop", "shop-a", [(f"p{i}", "TCP", 8080 + i) for i in range(ports)], endpoints)])


def test_health_targets_count_this_nodes_endpoints_once_per_service() -> None:
    local = [endpoint("10.244.1.5", NODE), endpoint("10.244.1.6", NODE), endpoint("10.244.2.5", OTHER)]
    assert health_targets(lb_local(*local)) == {32030: HealthTarget("default", "shop", 2)}
    assert health_targets(lb_local(*local, ports=3)) == {32030: HealthTarget("default", "shop", 2)}
    assert health_targets(lb_local(endpoint("10.244.2.5", OTHER))) == {32030: HealthTarget("default", "shop", 0)}
    assert health_targets(lb_local()) == {32030: HealthTarget("default", "shop", 0)}
    # only LoadBalancer services with externalTrafficPolicy Local have one
    cluster = desired([*NODES, service("shop", "10.96.0.30", [port(80, node_port=30030)], type="LoadBalancer",
                                       health_port=32030)])
    node_port = desired([*NODES, service("shop", "10.96.0.30", [port(80, node_port=30030)], type="NodePort",
                                         etp="Local", health_port=32030)])
    assert health_targets(cluster) == {} and health_targets(node_port) == {}


def test_health_check_fails_while_this_nodes_endpoints_are_only_terminating() -> None:
    draining = endpoint("10.244.1.5", NODE, ready=False, serving=True, terminating=True)
    assert health_targets(lb_local(draining, endpoint("10.244.2.5", OTHER))) == {
        32030: HealthTarget("default", "shop", 0)}


def test_health_check_counts_each_dual_stack_pod_once() -> None:
    state = desired([*NODES, service("shop", ["10.96.0.30", "fd00::30"], [port(80, "http", node_port=30030)],
                                     type="LoadBalancer", etp="Local", health_port=32030),
                     endpoint_slice("shop", "shop-4", [("http", "TCP", 8080)], [endpoint("10.244.1.5", NODE)]),
                     endpoint_slice("shop", "shop-6", [("http", "TCP", 8080)], [endpoint("fd00:10:244:1::5", NODE)],
                                    address_type="IPv6")])
    assert health_targets(state) == {32030: HealthTarget("default", "shop", 1)}


# --- settings


def test_proxy_settings_defaults_and_parsing() -> None:
    assert proxy_settings({}) == ProxySettings()
    settings = proxy_settings({"masquerade_all": True, "cluster_cidr": "10.244.0.0/16",
                               "nodeport_addresses": " 192.168.60.7/24, 10.1.0.0/16 ,",
                               "iptables_masquerade_bit": 20})
    assert settings == ProxySettings(masquerade_all=True, cluster_cidr="10.244.0.0/16",
                                     nodeport_addresses=("192.168.60.0/24", "10.1.0.0/16"), masquerade_mark=1 << 20)
    assert proxy_settings({"cluster_cidr": "", "nodeport_addresses": None}) == ProxySettings()


@pytest.mark.parametrize(("options", "needle"), [
    ({"cluster_cidr": "10.244.0.0/33"}, "10.244.0.0/33"),
    ({"cluster_cidr": "pods"}, "pods"),
    ({"cluster_cidr": "fd00:10:244::/56"}, "not an IPv4 CIDR"),
    ({"nodeport_addresses": "192.168.60.0/24,nodes"}, "nodes"),
    ({"nodeport_addresses": "192.168.60.0/24,2001:db8::/64"}, "not an IPv4 CIDR"),
    ({"iptables_masquerade_bit": 32}, "single bit"),
])
def test_proxy_settings_refuse_bad_values_clearly(options: dict[str, Any], needle: str) -> None:
    with pytest.raises(ProxyError) as info:
        proxy_settings(options)
    assert isinstance(info.value, KrError)
    assert str(info.value).startswith("proxy options: ") and needle in str(info.value)


# --- the backend against a fake kernel


class FakeKernel:
    """Stands in for iptables-save/restore and conntrack: records what the backend asks for."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, conntrack_exit: int = 0) -> None:
        self.restores: list[str] = []
        self.conntrack: list[list[str]] = []
        self.conntrack_exit = conntrack_exit
        self.ipsets: list[str] = []
        monkeypatch.setattr(IptablesProxy, "_read_kernel", self.read_kernel)
        monkeypatch.setattr(ipset, "restore", lambda text: self.ipsets.append(text))
        monkeypatch.setattr(IptablesRestore, "apply", self.apply)
        monkeypatch.setattr(conntrack, "run_unchecked", self.run_conntrack)

    def apply(self, changes: Iterable[TableChange]) -> int:
        """Record the restore text the changes stream (nothing when there is nothing to write)."""
        written = [change for change in changes if len(change)]
        if written:
            self.restores.append("".join(f"*{c.table}\n" + "".join(f"{line}\n" for line in c.lines()) + "COMMIT\n"
                                         for c in written))
        return sum(len(change) for change in written)

    @staticmethod
    def read_kernel(backend: IptablesProxy) -> None:
        backend._programmed = {t: TableState() for t in ("nat", "filter")}
        backend._sets = {}

    def run_conntrack(self, argv: list[str], *args: object, **kwargs: object) -> subprocess.CompletedProcess[str]:
        self.conntrack.append(list(argv))
        if self.conntrack_exit == 0:
            return subprocess.CompletedProcess(argv, 0, "", "conntrack v1.4.7 (conntrack-tools): 1 flow entries "
                                                             "have been deleted.\n")
        return subprocess.CompletedProcess(argv, self.conntrack_exit, "", "conntrack v1.4.7 (conntrack-tools): "
                                                                          "mismatched address family\n")


def backend() -> IptablesProxy:
    proxy = IptablesProxy(BackendContext(AgentConfig(node_name=NODE, plugins=("proxy.iptables",)), lambda: None))
    proxy._flavour.get = lambda: Flavour.NFT  # type: ignore[method-assign]  # no detection: it would run iptables-save here
    return proxy


def test_backend_deletes_stale_udp_flows_only_for_changes_it_saw(monkeypatch: pytest.MonkeyPatch) -> None:
    kernel = FakeKernel(monkeypatch)
    proxy = backend()
    proxy.sync(udp_world(A, B), full=True, changed=ChangeSet())
    assert kernel.conntrack == [] and len(kernel.restores) == 1  # a (re)start forgets nothing
    proxy.sync(udp_world(A, B), full=False, changed=ChangeSet())
    assert kernel.conntrack == [] and len(kernel.restores) == 1  # nothing changed: nothing written
    proxy.sync(udp_world(A), full=False, changed=ChangeSet())
    assert kernel.conntrack == [["conntrack", "-D", "-p", "udp", "--orig-dst", a, "--dst-nat", "10.244.2.5"]
                                for a in ADDRESSES] + [
        ["conntrack", "-D", "-p", "udp", "--orig-port-dst", "30053", "--dst-nat", "10.244.2.5"]]
    assert len(kernel.restores) == 2 and ":KR-PX-SVC-" in kernel.restores[1]
    assert not any("10.244.2.5" in line for line in kernel.restores[1].splitlines() if line.startswith("-A "))


def test_a_conntrack_failure_does_not_fail_the_sync(monkeypatch: pytest.MonkeyPatch) -> None:
    kernel = FakeKernel(monkeypatch, conntrack_exit=2)
    proxy = backend()
    proxy.sync(udp_world(A, B), full=True, changed=ChangeSet())
    proxy.sync(udp_world(A), full=False, changed=ChangeSet())
    assert kernel.conntrack
