"""What ``proxy.ipvs`` programs, computed from the desired state: the pure half of the IPVS backend.

``plan_ipvs(desired, settings) -> IpvsPlan``: IPVS virtual services with their real servers, the service
addresses to hold on the ``kr-ipvs0`` dummy interface, kr's ipsets and the iptables chains around IPVS,
in kube-router's design (see docs/proxy.md):

- one virtual service per (ClusterIP, externalIP or load-balancer IP, protocol, port), and per (node
  address, protocol, node port); real servers are the endpoints ``endpoints.choose`` picks for that
  kind of traffic, forwarded by masquerading (IPVS NAT), weight 1;
- the scheduler is ``kube-router.io/service.scheduler`` (rr, wrr, lc, wlc, lblc, lblcr, dh, sh, sed, nq,
  mh; default rr), ``kube-router.io/service.schedflags`` sets the scheduler flags (``flag-1..3`` or
  the names ``sh-fallback``, ``sh-port``, ``mh-fallback``, ``mh-port``); ``sessionAffinity: ClientIP``
  makes the service persistent for its timeout;
- service addresses are local addresses of the node, so a filter rule guarded by two ipsets refuses
  every new connection to them but to their service ports (``KR-PX-VIPS`` hash:ip, ``KR-PX-VIP-PORTS``
  hash:ip,port); traffic to mark for SNAT is found by ipsets too (outside traffic of Cluster-policy
  services, ClusterIP traffic from outside the pods), and a pod reaching itself through its service by
  ``KR-PX-LOOPBACK`` (hash:ip,port,ip), as kube-proxy's IPVS mode does.

Invariants: pure (depends on its arguments only); IPv4 only; an unknown scheduler or flag is reported in
``IpvsPlan.problems`` and the default is used, so one bad annotation never stops the others.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass, field

from kr_core.model import (
    DesiredState,
    Endpoint,
    ServicePort,
    SessionAffinity,
    TrafficPolicy,
)
from kr_plugins.kernel.ipset import IPSetSpec
from kr_plugins.proxy.endpoints import choose, externally_reachable, node_port
from kr_plugins.proxy.rules import (
    LOOPBACK_SET,
    LOOPBACK_TYPE,
    ProxySettings,
    loopback_member,
    service_label,
)

SCHEDULER_ANNOTATION = "kube-router.io/service.scheduler"
FLAGS_ANNOTATION = "kube-router.io/service.schedflags"
SCHEDULERS = frozenset({"rr", "wrr", "lc", "wlc", "lblc", "lblcr", "dh", "sh", "sed", "nq", "mh"})
DEFAULT_SCHEDULER = "rr"
#: IP_VS_SVC_F_SCHED1..3, and kube-router's names for them
SCHED_FLAGS = {"flag-1": 0x8, "flag-2": 0x10, "flag-3": 0x20, "sh-fallback": 0x8, "sh-port": 0x10,
               "mh-fallback": 0x8, "mh-port": 0x10}
PERSISTENT = 0x1  # IP_VS_SVC_F_PERSISTENT
DUMMY = "kr-ipvs0"
VIPS_SET = "KR-PX-VIPS"
VIP_PORTS_SET = "KR-PX-VIP-PORTS"
MASQ_SET = "KR-PX-MASQ"  # ip,proto:port whose traffic is always SNATed (outside traffic, Cluster policy)
CLUSTER_SET = "KR-PX-CLUSTER"  # ClusterIP,proto:port: SNATed when it comes from outside the pods
IPVS_SERVICES = "KR-PX-IPVS"  # nat: mark what must be SNATed
IPVS_POSTROUTING = "KR-PX-IPVS-POST"
IPVS_GUARD = "KR-PX-IPVS-GUARD"  # filter: only service ports answer on service addresses


@dataclass(frozen=True, slots=True, order=True)
class VirtualKey:
    protocol: str  # "tcp", "udp", "sctp"
    address: str
    port: int


@dataclass(frozen=True, slots=True)
class VirtualService:
    key: VirtualKey
    scheduler: str
    flags: int
    timeout: int  # persistence seconds, 0: none
    destinations: frozenset[tuple[str, int]]  # (address, port), weight 1 each
    label: str = field(compare=False, default="")


@dataclass(frozen=True, slots=True)
class IpvsPlan:
    services: Mapping[VirtualKey, VirtualService]
    vips: frozenset[str]
    sets: Mapping[str, IPSetSpec]
    chains: Mapping[str, Mapping[str, tuple[str, ...]]]  # table -> chain -> rule specs
    hooks: Mapping[str, tuple[tuple[str, str], ...]]
    problems: tuple[str, ...] = ()


def scheduler_of(service: ServicePort) -> tuple[str, int, list[str]]:
    """The scheduler name and flag bits from the annotations, and what was wrong with them."""
    problems = []
    scheduler = service.annotations.get(SCHEDULER_ANNOTATION, DEFAULT_SCHEDULER).strip() or DEFAULT_SCHEDULER
    if scheduler not in SCHEDULERS:
        problems.append(f"{service_label(service)}: unknown {SCHEDULER_ANNOTATION} {scheduler!r}; "
                        f"using {DEFAULT_SCHEDULER} (one of {', '.join(sorted(SCHEDULERS))})")
        scheduler = DEFAULT_SCHEDULER
    flags = 0
    for word in filter(None, (w.strip() for w in service.annotations.get(FLAGS_ANNOTATION, "").split(","))):
        if word in SCHED_FLAGS:
            flags |= SCHED_FLAGS[word]
        else:
            problems.append(f"{service_label(service)}: unknown {FLAGS_ANNOTATION} flag {word!r} ignored")
    return scheduler, flags, problems


def _ipv4(addresses: tuple[str, ...]) -> list[str]:
    return [a for a in addresses if ":" not in a]


def _destinations(endpoints: tuple[Endpoint, ...]) -> frozenset[tuple[str, int]]:
    return frozenset((e.address, e.port) for e in endpoints if ":" not in e.address)


def node_addresses(desired: DesiredState, settings: ProxySettings) -> list[str]:
    """This node's IPv4 addresses that answer NodePorts."""
    networks = [ipaddress.ip_network(c) for c in settings.nodeport_addresses]
    return [a for a in _ipv4(desired.node_ips)
            if not networks or any(ipaddress.ip_address(a) in n for n in networks)]


def plan_ipvs(desired: DesiredState, settings: ProxySettings) -> IpvsPlan:
    services: dict[VirtualKey, VirtualService] = {}
    vips: set[str] = set()
    members: dict[str, set[str]] = {name: set() for name in (VIPS_SET, VIP_PORTS_SET, MASQ_SET, CLUSTER_SET, LOOPBACK_SET)}
    problems: list[str] = []
    node_ips = node_addresses(desired, settings)
    for service in desired.services:
        proto = service.protocol.value.lower()
        scheduler, flags, wrong = scheduler_of(service)
        problems += wrong
        timeout = service.session_affinity_timeout if service.session_affinity is SessionAffinity.CLIENT_IP else 0
        if timeout:
            flags |= PERSISTENT
        choice = choose(service)
        label = service_label(service)

        def add(address: str, port: int, endpoints: tuple[Endpoint, ...], vip: bool) -> None:
            key = VirtualKey(proto, address, port)
            services[key] = VirtualService(key, scheduler, flags, timeout, _destinations(endpoints), label)
            if vip:
                vips.add(address)
                members[VIPS_SET].add(address)
                members[VIP_PORTS_SET].add(f"{address},{proto}:{port}")
            members[LOOPBACK_SET].update(loopback_member(e, proto) for e in endpoints if ":" not in e.address)

        for address in _ipv4(service.cluster_ips)[:1]:
            add(address, service.port, choice.cluster, vip=True)
            members[CLUSTER_SET].add(f"{address},{proto}:{service.port}")
        if externally_reachable(service):
            cluster_policy = service.external_traffic_policy is TrafficPolicy.CLUSTER
            outside = [*_ipv4(service.external_ips), *_ipv4(service.load_balancer_ips)]
            for address in outside:
                add(address, service.port, choice.external, vip=True)
                if cluster_policy:
                    members[MASQ_SET].add(f"{address},{proto}:{service.port}")
            number = node_port(service)
            if number is not None:
                for address in node_ips:
                    add(address, number, choice.external, vip=False)
                    if cluster_policy:
                        members[MASQ_SET].add(f"{address},{proto}:{number}")
    sets = {name: IPSetSpec(set_type, frozenset(members[name])) for name, set_type in (
        (VIPS_SET, "hash:ip"), (VIP_PORTS_SET, "hash:ip,port"), (MASQ_SET, "hash:ip,port"),
        (CLUSTER_SET, "hash:ip,port"), (LOOPBACK_SET, LOOPBACK_TYPE))}
    return IpvsPlan(services, frozenset(vips), sets, chains(desired, settings), hooks(), tuple(problems))


def chains(desired: DesiredState, settings: ProxySettings) -> dict[str, dict[str, tuple[str, ...]]]:
    """nat: mark for SNAT what must be (then masquerade marked packets and hairpins); filter: refuse
    anything sent to a service address but its service ports."""
    mark = f"{settings.masquerade_mark:#x}"
    set_mark = f"-j MARK --set-xmark {mark}/{mark}"
    if settings.masquerade_all:
        cluster = [f"-m set --match-set {CLUSTER_SET} dst,dst {set_mark}"]
    else:
        local = [settings.cluster_cidr] if settings.cluster_cidr else [
            c for c in (desired.node.pod_cidrs if desired.node else ()) if ":" not in c][:1]
        cluster = [f"! -s {ipaddress.ip_network(c, strict=False)} -m set --match-set {CLUSTER_SET} dst,dst {set_mark}"
                   for c in local]
    nat = {
        IPVS_SERVICES: (*cluster, f"-m set --match-set {MASQ_SET} dst,dst {set_mark}"),
        IPVS_POSTROUTING: (f"-m set --match-set {LOOPBACK_SET} dst,dst,src -j MASQUERADE",
                           f"-m mark ! --mark {mark}/{mark} -j RETURN", f"-j MARK --set-xmark 0x0/{mark}",
                           "-j MASQUERADE --random-fully"),
    }
    # only new connections: replies to the node's own connections to a service address (source: that
    # address) come back to it on the client's port, which is no service port (kube-proxy's KUBE-IPVS-FILTER)
    guard = ((f"-m conntrack --ctstate NEW -m set --match-set {VIPS_SET} dst "
              f"-m set ! --match-set {VIP_PORTS_SET} dst,dst -j REJECT --reject-with icmp-port-unreachable"),)
    return {"nat": nat, "filter": {IPVS_GUARD: guard}}


def hooks() -> dict[str, tuple[tuple[str, str], ...]]:
    mark = f'-m comment --comment "kr: ipvs services" -j {IPVS_SERVICES}'
    return {"nat": (("PREROUTING", mark), ("OUTPUT", mark),
                    ("POSTROUTING", f'-m comment --comment "kr: ipvs masquerade" -j {IPVS_POSTROUTING}')),
            "filter": (("INPUT", f'-m comment --comment "kr: ipvs service addresses" -j {IPVS_GUARD}'),)}
