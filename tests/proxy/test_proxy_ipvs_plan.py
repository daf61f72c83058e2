"""proxy.ipvs without a kernel: the pure plan (virtual services, real servers, addresses, sets, chains)
and the reconciliation of virtual services and real servers against a fake IPVS (draining included)."""

from __future__ import annotations

from typing import Any

from kr_core.backends import BackendContext
from kr_core.config import AgentConfig
from kr_core.desired import build_desired_state
from kr_plugins.kernel.ipvs import RealRecord, VirtualRecord
from kr_plugins.proxy.ipvs import IpvsProxy
from kr_plugins.proxy.ipvsplan import (
    CLUSTER_SET, LOOPBACK_SET, MASQ_SET, PERSISTENT, VIP_PORTS_SET, VIPS_SET, plan_ipvs,
)
from kr_plugins.proxy.rules import ProxySettings

NODE = "n1"


def service(name: str, ip: str, *, kind: str = "ClusterIP", port: int = 80, protocol: str = "TCP",
            annotations: dict[str, str] | None = None, **spec: Any) -> dict[str, Any]:
    return {"metadata": {"namespace": "ns", "name": name, "resourceVersion": "1", "annotations": annotations or {}},
            "spec": {"type": kind, "clusterIP": ip, "clusterIPs": [ip],
                     "ports": [{"name": "p", "port": port, "protocol": protocol, "targetPort": "p",
                                **({"nodePort": 30080} if kind != "ClusterIP" else {})}],
                     **spec}}


def endpoints(name: str, *eps: tuple[str, str], port: int = 8080, protocol: str = "TCP") -> dict[str, Any]:
    return {"metadata": {"namespace": "ns", "name": name, "resourceVersion": "1",
                         "labels": {"kubernetes.io/service-name": name}},
            "addressType": "IPv4", "ports": [{"name": "p", "port": port, "protocol": protocol}],
            "endpoints": [{"addresses": [ip], "nodeName": node} for ip, node in eps]}


def desired(services: list[dict[str, Any]], slices: list[dict[str, Any]]):  # type: ignore[no-untyped-def]
    node = {"metadata": {"name": NODE, "resourceVersion": "1"}, "spec": {"podCIDR": "10.1.1.0/24"},
            "status": {"addresses": [{"type": "InternalIP", "address": "192.168.56.11"}]}}
    return build_desired_state({"services": {f"ns/{s['metadata']['name']}": s for s in services},
                                "endpointslices": {f"ns/{e['metadata']['name']}": e for e in slices},
                                "nodes": {NODE: node}}, NODE)


def test_cluster_node_port_external_and_local_policies() -> None:
    state = desired(
        [service("a", "10.96.0.10", kind="NodePort"),
         service("b", "10.96.0.11", externalIPs=["192.168.56.200"], externalTrafficPolicy="Local"),
         service("c", "10.96.0.12", internalTrafficPolicy="Local")],
        [endpoints("a", ("10.1.1.2", NODE), ("10.1.2.2", "n2")), endpoints("b", ("10.1.2.3", "n2")),
         endpoints("c", ("10.1.1.4", NODE), ("10.1.2.4", "n2"))])
    plan = plan_ipvs(state, ProxySettings())
    dests = {(k.address, k.port): sorted(s.destinations) for k, s in plan.services.items()}
    assert dests == {
        ("10.96.0.10", 80): [("10.1.1.2", 8080), ("10.1.2.2", 8080)],
        ("192.168.56.11", 30080): [("10.1.1.2", 8080), ("10.1.2.2", 8080)],  # NodePort on the node's address
        ("10.96.0.11", 80): [("10.1.2.3", 8080)],
        ("192.168.56.200", 80): [],  # Local policy, no endpoint on this node
        ("10.96.0.12", 80): [("10.1.1.4", 8080)],  # internal Local policy
    }
    assert plan.vips == {"10.96.0.10", "10.96.0.11", "10.96.0.12", "192.168.56.200"}, "node addresses are not VIPs"
    assert plan.sets[VIPS_SET].members == plan.vips
    assert "192.168.56.200,tcp:80" in plan.sets[VIP_PORTS_SET].members
    assert plan.sets[MASQ_SET].members == {"192.168.56.11,tcp:30080"}, "only Cluster-policy outside traffic"
    assert "10.96.0.10,tcp:80" in plan.sets[CLUSTER_SET].members
    assert "10.1.1.2,tcp:8080,10.1.1.2" in plan.sets[LOOPBACK_SET].members
    assert plan.chains["nat"]["KR-PX-IPVS"][0].startswith("! -s 10.1.1.0/24 -m set --match-set KR-PX-CLUSTER dst,dst")


def test_scheduler_annotations_affinity_and_bad_values() -> None:
    state = desired(
        [service("mh", "10.96.0.20", annotations={"kube-router.io/service.scheduler": "mh",
                                                  "kube-router.io/service.schedflags": "flag-1,flag-2"}),
         service("sticky", "10.96.0.21", sessionAffinity="ClientIP",
                 sessionAffinityConfig={"clientIP": {"timeoutSeconds": 600}}),
         service("bad", "10.96.0.22", annotations={"kube-router.io/service.scheduler": "fastest",
                                                   "kube-router.io/service.schedflags": "sh-port,bogus"})],
        [])
    plan = plan_ipvs(state, ProxySettings())
    by_address = {k.address: s for k, s in plan.services.items()}
    assert (by_address["10.96.0.20"].scheduler, by_address["10.96.0.20"].flags) == ("mh", 0x8 | 0x10)
    assert (by_address["10.96.0.21"].flags, by_address["10.96.0.21"].timeout) == (PERSISTENT, 600)
    assert (by_address["10.96.0.22"].scheduler, by_address["10.96.0.22"].flags) == ("rr", 0x10)
    assert len(plan.problems) == 2 and "fastest" in plan.problems[0] and "bogus" in plan.problems[1]


class FakeIpvs:
    """Records calls; reports live connection counts set by the test."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []
        self.live: dict[tuple[str, int], tuple[int, int]] = {}

    def add_service(self, s: VirtualRecord) -> None:
        self.calls.append(("add_service", s.address))

    def update_service(self, s: VirtualRecord) -> None:
        self.calls.append(("update_service", (s.address, s.scheduler)))

    def delete_service(self, s: VirtualRecord) -> None:
        self.calls.append(("delete_service", s.address))

    def add_real(self, s: VirtualRecord, r: RealRecord) -> None:
        self.calls.append(("add_real", (r.address, r.weight)))

    def set_weight(self, s: VirtualRecord, r: RealRecord) -> None:
        self.calls.append(("set_weight", (r.address, r.weight)))

    def delete_real(self, s: VirtualRecord, r: RealRecord) -> None:
        self.calls.append(("delete_real", r.address))

    def reals(self, s: VirtualRecord) -> dict[tuple[str, int], RealRecord]:
        return {dest: RealRecord(dest[0], dest[1], 0, *counts) for dest, counts in self.live.items()}


def test_reconcile_adds_updates_drains_and_deletes() -> None:
    backend = IpvsProxy(BackendContext(AgentConfig(node_name=NODE, plugins=("proxy.ipvs",),
                                                   options={"ipvs_graceful_period": 30.0}), lambda: None))
    fake = FakeIpvs()
    backend._ipvs = fake  # type: ignore[assignment]

    def step(services: list[dict[str, Any]], slices: list[dict[str, Any]], current: dict) -> dict:  # type: ignore[type-arg]
        fake.calls.clear()
        return backend._sync_services(plan_ipvs(desired(services, slices), ProxySettings()), current)

    two = [endpoints("a", ("10.1.1.2", NODE), ("10.1.2.2", "n2"))]
    current = step([service("a", "10.96.0.10")], two, {})
    assert fake.calls[0] == ("add_service", "10.96.0.10")
    assert sorted(fake.calls[1:]) == [("add_real", ("10.1.1.2", 1)), ("add_real", ("10.1.2.2", 1))]
    # an endpoint leaves while it still has a connection: drained (weight 0), not deleted
    fake.live = {("10.1.2.2", 8080): (1, 0)}
    one = [endpoints("a", ("10.1.1.2", NODE))]
    current = step([service("a", "10.96.0.10")], one, current)
    assert fake.calls == [("set_weight", ("10.1.2.2", 0))]
    # once its connections are gone it is deleted
    fake.live = {("10.1.2.2", 8080): (0, 0)}
    current = step([service("a", "10.96.0.10")], one, current)
    assert fake.calls == [("delete_real", "10.1.2.2")] and not backend._draining
    # a scheduler change updates the service in place; the service's removal deletes it
    current = step([service("a", "10.96.0.10", annotations={"kube-router.io/service.scheduler": "lc"})], one, current)
    assert fake.calls == [("update_service", ("10.96.0.10", "lc"))]
    current = step([], [], current)
    assert fake.calls == [("delete_service", "10.96.0.10")] and current == {}
