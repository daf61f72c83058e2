"""Render the service proxy as iptables chains: the pure half of ``proxy.iptables``.

``ProxyRenderer(settings).render(desired)`` returns a ``ProxyRuleset``: kr's nat and filter chains (rule
specs without ``-A NAME``) and the hook rules into them, in kube-proxy's design (see docs/proxy.md):

- nat ``KR-PX-SERVICES`` (from PREROUTING and OUTPUT) jumps to one bucket chain per /24 of service
  addresses (``KR-PX-D-<hex of the /24>``), which holds that /24's per-(address, protocol, port) rules,
  then to ``KR-PX-NODEPORTS`` for local destinations; a service port has ``KR-PX-SVC-`` (all usable
  endpoints), ``KR-PX-SVL-`` (this node's), ``KR-PX-EXT-`` (outside traffic) and ``KR-PX-LBS-``
  (load-balancer source ranges) chains;
- a balancing chain DNATs directly, one rule per endpoint (no per-endpoint chain, unlike kube-proxy's
  ``KUBE-SEP-``: at 100,000 endpoints those chains were 88 % of all chains, and iptables-nft-restore
  --noflush slows down with the square of the chain count); ClientIP affinity keeps one ``recent`` list
  per endpoint (``KR-PX-A-<hash>``), checked and refreshed (``--update``) before the random rules;
- ``KR-PX-MARK-MASQ`` marks, ``KR-PX-POSTROUTING`` masquerades marked packets and pods that reached
  themselves through a service (hairpin), found by the ipset ``KR-PX-LOOPBACK`` (hash:ip,port,ip of this
  node's endpoints: endpoint, protocol:port, endpoint; matched dst,dst,src), as kube-proxy's IPVS mode
  does;
- filter ``KR-PX-FILTER`` (new connections, from INPUT, FORWARD and OUTPUT) rejects service ports without
  endpoints and drops outside traffic that must stay local but has no local endpoint.

Invariants:
- every chain name starts with ``KR-PX-`` and fits the kernel (<= 28 characters); service and endpoint
  chains are named by a hash of what defines them, so names are stable across syncs and processes;
- rule specs are in the exact form ``iptables-save`` prints (statistic probabilities included), so the
  apply layer compares by string and never rewrites an unchanged chain;
- a service port's chains and its dispatch, node-port and filter rules depend on that service port
  alone (and the settings and this node's pod CIDRs), so the renderer reuses them while the
  desired-state builder hands back the same ``ServicePort`` object; the dispatch is bucketed, so adding
  or removing one service rewrites one bucket chain of at most 256 addresses, not a chain of every
  service;
- IPv4 only (iptables ``ip_tables``); IPv6 addresses are skipped.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from kr_core.model import (
    DesiredState,
    Endpoint,
    ServicePort,
    SessionAffinity,
    TrafficPolicy,
)
from kr_plugins.kernel.ipset import IPSetSpec
from kr_plugins.kernel.iptables import referenced, save_string
from kr_plugins.kernel.names import digest
from kr_plugins.proxy.endpoints import choose, externally_reachable, node_port

PREFIX = "KR-PX"
SERVICES = "KR-PX-SERVICES"
NODEPORTS = "KR-PX-NODEPORTS"
MARK_MASQ = "KR-PX-MARK-MASQ"
POSTROUTING = "KR-PX-POSTROUTING"
FILTER = "KR-PX-FILTER"
MAX_CHAIN = 28
REJECT = "REJECT --reject-with icmp-port-unreachable"
LOOPBACK_SET = "KR-PX-LOOPBACK"
LOOPBACK_TYPE = "hash:ip,port,ip"


@dataclass(frozen=True, slots=True)
class ProxySettings:
    """``cluster_cidr``: traffic to a ClusterIP from outside it is masqueraded, and traffic from it to
    an outside address of a ``Local`` service may use any endpoint (None: this node's pod CIDRs, as
    kube-proxy's ``--detect-local-mode=NodeCIDR``); ``nodeport_addresses``: CIDRs whose local addresses
    answer NodePorts (empty: every local address but loopback)."""

    masquerade_all: bool = False
    cluster_cidr: str | None = None
    nodeport_addresses: tuple[str, ...] = ()
    masquerade_mark: int = 0x4000

    def __post_init__(self) -> None:
        for cidr in (*([self.cluster_cidr] if self.cluster_cidr else []), *self.nodeport_addresses):
            if ipaddress.ip_network(cidr, strict=False).version != 4:
                raise ValueError(f"{cidr} is not an IPv4 CIDR (proxy.iptables is IPv4 only)")
        mark = self.masquerade_mark
        if mark <= 0 or mark & (mark - 1) or mark >= 1 << 32:
            raise ValueError(f"mark {mark:#x} must be a single bit of the 32-bit packet mark")


@dataclass(frozen=True, slots=True)
class ProxyRuleset:
    """``tables``: table -> chain -> rule specs; ``hooks``: table -> (built-in chain, rule spec) to put
    first in that chain; ``sets``: the ipsets the rules match on."""

    tables: Mapping[str, Mapping[str, tuple[str, ...]]]
    hooks: Mapping[str, tuple[tuple[str, str], ...]]
    sets: Mapping[str, IPSetSpec]


@dataclass(frozen=True, slots=True)
class ServiceRules:
    """What one service port adds: its own nat chains, its rules in the dispatch buckets (keyed by
    destination address), in ``KR-PX-NODEPORTS`` and in ``KR-PX-FILTER``, and its members of
    ``KR-PX-LOOPBACK`` (this node's endpoints it translates to)."""

    chains: Mapping[str, tuple[str, ...]]
    dispatch: tuple[tuple[str, int, str], ...]  # (bucket chain, destination as int, rule)
    nodeports: tuple[str, ...]
    filter: tuple[str, ...]
    loopback: frozenset[str]


def hooks() -> dict[str, tuple[tuple[str, str], ...]]:
    portals = f'-m comment --comment "kr: service portals" -j {SERVICES}'
    rejects = f'-m conntrack --ctstate NEW -m comment --comment "kr: service rejects" -j {FILTER}'
    return {"nat": (("PREROUTING", portals), ("OUTPUT", portals),
                    ("POSTROUTING", f'-m comment --comment "kr: service masquerade" -j {POSTROUTING}')),
            "filter": (("INPUT", rejects), ("FORWARD", rejects), ("OUTPUT", rejects))}


def probability(p: float) -> str:
    """``p`` as ``iptables-save`` prints a statistic probability: the kernel keeps ``lround(p * 2^31)``."""
    return f"{int(p * 0x80000000 + 0.5) / 0x80000000:.11f}"


def bucket_chain(address: str) -> str:
    """The dispatch chain of ``address``'s /24."""
    return f"{PREFIX}-D-{ipaddress.IPv4Address(address).packed[:3].hex().upper()}"


def service_label(service: ServicePort) -> str:
    """``namespace/name:port`` as kube-proxy names a service port (``namespace/name`` if unnamed)."""
    base = f"{service.namespace}/{service.name}"
    return f"{base}:{service.port_name}" if service.port_name else base


def _ipv4(addresses: tuple[str, ...]) -> list[str]:
    return [a for a in addresses if ":" not in a]


def loopback_member(endpoint: Endpoint, proto: str) -> str:
    """``endpoint``'s entry in ``KR-PX-LOOPBACK``: a packet from it to itself on its port (``proto``:
    tcp, udp or sctp) after the DNAT."""
    return f"{endpoint.address},{proto}:{endpoint.port},{endpoint.address}"


def affinity_list(label: str, proto: str, endpoint: Endpoint) -> str:
    """The ``recent`` list remembering the clients ``endpoint`` of service port ``label`` served."""
    return f"{PREFIX}-A-{digest(label, proto, endpoint.address, endpoint.port)}"


def render_service(service: ServicePort, settings: ProxySettings, local_cidrs: tuple[str, ...]) -> ServiceRules:
    """Everything one service port needs (see the module docstring); ``local_cidrs`` are the sources
    counted as this cluster's pods (``settings.cluster_cidr`` or this node's pod CIDRs)."""
    proto = service.protocol.value.lower()
    label = service_label(service)
    name = digest(service.namespace, service.name, service.port_name, service.protocol.value)
    svc, svl, ext, lbs = (f"{PREFIX}-{kind}-{name}" for kind in ("SVC", "SVL", "EXT", "LBS"))
    choice = choose(service)
    affinity = service.session_affinity is SessionAffinity.CLIENT_IP
    chains: dict[str, tuple[str, ...]] = {}
    dispatch: list[tuple[str, str]] = []
    filter_rules: list[str] = []
    loopback: set[str] = set()

    def to(address: str, what: str) -> str:
        return (f"-d {address}/32 -p {proto} -m comment --comment {save_string(f'{label} {what}')} "
                f"-m {proto} --dport {service.port}")

    def dnat(endpoint: Endpoint, matches: str) -> str:
        return f"-p {proto}{matches} -m {proto} -j DNAT --to-destination {endpoint.address}:{endpoint.port}"

    def balance(chain: str, endpoints: tuple[Endpoint, ...]) -> None:
        """Spread new connections evenly; with ClientIP affinity, a known client goes back first (and
        each connection refreshes its client's entry, as kube-proxy's endpoint chains do)."""
        recent = {e: f"--name {affinity_list(label, proto, e)} --mask 255.255.255.255 --rsource" for e in endpoints}
        rules = []
        if affinity:
            rules += [dnat(e, f" -m recent --update --seconds {service.session_affinity_timeout} --reap {recent[e]}")
                      for e in endpoints]
        for index, endpoint in enumerate(endpoints):
            left = len(endpoints) - index
            chance = f" -m statistic --mode random --probability {probability(1 / left)}" if left > 1 else ""
            rules.append(dnat(endpoint, chance + (f" -m recent --set {recent[endpoint]}" if affinity else "")))
        chains[chain] = chains.get(chain, ()) + tuple(rules)
        loopback.update(loopback_member(e, proto) for e in endpoints if e.is_local)

    # traffic to the ClusterIP
    internal = svl if service.internal_traffic_policy is TrafficPolicy.LOCAL else svc
    cluster_ip = next(iter(_ipv4(service.cluster_ips)), None)
    if cluster_ip is not None:
        if choice.cluster:
            masquerade = f"-d {cluster_ip}/32 -p {proto} -m {proto} --dport {service.port} -j {MARK_MASQ}"
            if settings.masquerade_all:
                chains[internal] = (masquerade,)
            elif local_cidrs:  # traffic from outside the pods (a node, a router) is masqueraded
                chains[internal] = (f"! -s {local_cidrs[0]} {masquerade}",)
            dispatch.append((cluster_ip, f"{to(cluster_ip, 'cluster IP')} -j {internal}"))
        elif choice.everywhere:
            filter_rules.append(f"{to(cluster_ip, 'has no local endpoints')} -j DROP")
        else:
            filter_rules.append(f"{to(cluster_ip, 'has no endpoints')} -j {REJECT}")

    # traffic from outside: NodePorts, external IPs, load-balancer IPs
    outside = externally_reachable(service) and bool(choice.everywhere)
    local_policy = service.external_traffic_policy is TrafficPolicy.LOCAL
    if choice.cluster:
        balance(internal, choice.cluster)
    if outside and svc not in chains:
        balance(svc, choice.everywhere)
    if outside and local_policy and choice.local and svl not in chains:
        balance(svl, choice.local)
    if outside and local_policy:
        # pods and the node itself may use any endpoint; the rest stays on this node's
        rules = [f"-s {cidr} -m comment --comment {save_string(f'pods reach {label} anywhere')} -j {svc}"
                 for cidr in local_cidrs]
        rules += [f"-m addrtype --src-type LOCAL -j {MARK_MASQ}", f"-m addrtype --src-type LOCAL -j {svc}"]
        chains[ext] = tuple(rules) + ((f"-j {svl}",) if choice.local else ())
    elif outside:
        chains[ext] = (f"-j {MARK_MASQ}", f"-j {svc}")
    nodeports: list[str] = []
    if externally_reachable(service):
        # what the nat rules leave untranslated for want of an endpoint is refused here
        unserved = not choice.external
        verdict, why = (REJECT, "has no endpoints") if not choice.everywhere else ("DROP", "has no local endpoints")
        for address in _ipv4(service.external_ips):
            if outside:
                dispatch.append((address, f"{to(address, 'external IP')} -j {ext}"))
            if unserved:
                filter_rules.append(f"{to(address, why)} -j {verdict}")
        # source ranges of the other family only still restrict: no IPv4 source is allowed then
        restricted = bool(service.load_balancer_source_ranges)
        ranges = _ipv4(service.load_balancer_source_ranges)
        for address in _ipv4(service.load_balancer_ips):
            if outside:
                if restricted:
                    chains[lbs] = tuple(f"-s {cidr} -j {ext}" for cidr in ranges)
                dispatch.append((address, f"{to(address, 'loadbalancer IP')} -j {lbs if restricted else ext}"))
            if unserved:
                filter_rules.append(f"{to(address, why)} -j {verdict}")
            elif restricted:
                filter_rules.append(f"{to(address, 'is not allowed from this source')} -j DROP")
        if node_port(service) is not None:
            port = f"-m {proto} --dport {node_port(service)}"
            if outside:
                nodeports.append(f"-p {proto} -m comment --comment {save_string(label)} {port} -j {ext}")
            if unserved:
                filter_rules.append(f"-p {proto} -m addrtype --dst-type LOCAL "
                                    f"-m comment --comment {save_string(f'{label} {why}')} {port} -j {verdict}")
    buckets = tuple((bucket_chain(address), int(ipaddress.IPv4Address(address)), rule) for address, rule in dispatch)
    return ServiceRules(chains, buckets, tuple(nodeports), tuple(filter_rules), frozenset(loopback))


ServiceKey = tuple[str, str, str, str]  # namespace, name, port name, protocol


class ProxyRenderer:
    """Renders the desired states of one node, one after another.

    Each ``render`` returns what a fresh renderer would (the same chains, rules, hooks and sets; the
    order of the chain mapping carries no meaning). A service port's ``ServiceRules`` are kept while the
    desired-state builder hands back the very same ``ServicePort`` object (and this node's pod CIDRs are
    unchanged), and so is everything assembled from them: a sync re-renders only the service ports that
    changed, and re-assembles only the bucket chains, node-port, filter and loopback contents they touch.
    What still grows with the number of services per sync is one identity check per service port and
    copying the chain mapping for the caller.
    """

    def __init__(self, settings: ProxySettings | None = None) -> None:
        self.settings = settings or ProxySettings()
        self._reset(None)

    def _reset(self, local_cidrs: tuple[str, ...] | None) -> None:
        self._local_cidrs = local_cidrs
        self._kept: dict[ServiceKey, tuple[ServicePort, ServiceRules]] = {}
        self._own: dict[str, tuple[str, ...]] = {}  # every service port's own chains
        self._bucket_entries: dict[str, dict[ServiceKey, list[tuple[int, str]]]] = {}
        self._buckets: dict[str, tuple[str, ...]] = {}
        self._loopback: frozenset[str] = frozenset()
        self._nodeports: tuple[str, ...] = ()
        self._filter: tuple[str, ...] = ()
        self._services_chain: tuple[str, ...] = ()

    def render(self, desired: DesiredState) -> ProxyRuleset:
        local_cidrs = self._local(desired)
        if local_cidrs != self._local_cidrs:
            self._reset(local_cidrs)
        kept: dict[ServiceKey, tuple[ServicePort, ServiceRules]] = {}
        swaps: list[tuple[ServiceKey, ServiceRules | None, ServiceRules | None]] = []
        for service in desired.services:
            key = (service.namespace, service.name, service.port_name, service.protocol.value)
            entry = self._kept.get(key)
            if entry is None or entry[0] is not service:
                rules = render_service(service, self.settings, local_cidrs)
                swaps.append((key, entry[1] if entry is not None else None, rules))
                entry = (service, rules)
            kept[key] = entry
        if len(kept) != len(self._kept) or swaps:
            swaps += [(key, entry[1], None) for key, entry in self._kept.items() if key not in kept]
        self._kept = kept  # in the order of desired.services, which the filter rules follow
        self._apply(swaps)
        return self._ruleset()

    def _apply(self, swaps: list[tuple[ServiceKey, ServiceRules | None, ServiceRules | None]]) -> None:
        """Take the assembled chains from the old to the new rules of each swapped service port."""
        dirty: set[str] = set()
        nodeports = filters = loopback = False
        for key, old, new in swaps:
            if old is not None:
                for name in old.chains:
                    del self._own[name]
                for bucket, _, _ in old.dispatch:
                    dirty.add(bucket)
                    self._bucket_entries[bucket].pop(key, None)
            if new is not None:
                self._own.update(new.chains)
                for bucket, order, rule in new.dispatch:
                    dirty.add(bucket)
                    self._bucket_entries.setdefault(bucket, {}).setdefault(key, []).append((order, rule))
            nodeports = nodeports or bool((old and old.nodeports) or (new and new.nodeports))
            filters = filters or bool((old and old.filter) or (new and new.filter))
            loopback = loopback or bool((old and old.loopback) or (new and new.loopback))
        for bucket in dirty:
            entries = self._bucket_entries.get(bucket)
            if entries:
                if bucket not in self._buckets:
                    self._services_chain = ()  # a new bucket to jump to
                self._buckets[bucket] = tuple(rule for _, rule in sorted(e for es in entries.values() for e in es))
            else:
                self._bucket_entries.pop(bucket, None)
                if self._buckets.pop(bucket, None) is not None:
                    self._services_chain = ()
        if nodeports:
            self._nodeports = tuple(sorted(rule for _, rules in self._kept.values() for rule in rules.nodeports))
        if filters:
            self._filter = tuple(rule for _, rules in self._kept.values() for rule in rules.filter)
        if loopback:
            self._loopback = frozenset().union(*(rules.loopback for _, rules in self._kept.values() if rules.loopback))

    def _ruleset(self) -> ProxyRuleset:
        if not self._services_chain:
            services = [f"-d {_bucket_network(name)} -j {name}" for name in sorted(self._buckets)]
            services += [f"-d {cidr} -m addrtype --dst-type LOCAL -j {NODEPORTS}"
                         for cidr in self.settings.nodeport_addresses] or \
                        [f"! -d 127.0.0.0/8 -m addrtype --dst-type LOCAL -j {NODEPORTS}"]
            self._services_chain = tuple(services)
        mark = f"{self.settings.masquerade_mark:#x}"
        nat: dict[str, tuple[str, ...]] = {
            SERVICES: self._services_chain,
            NODEPORTS: self._nodeports,
            MARK_MASQ: (f"-j MARK --set-xmark {mark}/{mark}",),
            POSTROUTING: (f"-m set --match-set {LOOPBACK_SET} dst,dst,src -j MASQUERADE",
                          f"-m mark ! --mark {mark}/{mark} -j RETURN", f"-j MARK --set-xmark 0x0/{mark}",
                          "-j MASQUERADE --random-fully"),
        }
        nat.update((name, self._buckets[name]) for name in sorted(self._buckets))
        nat.update(self._own)
        return ProxyRuleset(tables={"nat": nat, "filter": {FILTER: self._filter}}, hooks=hooks(),
                            sets={LOOPBACK_SET: IPSetSpec(LOOPBACK_TYPE, self._loopback)})

    def _local(self, desired: DesiredState) -> tuple[str, ...]:
        if self.settings.cluster_cidr:
            return (str(ipaddress.ip_network(self.settings.cluster_cidr, strict=False)),)
        node = desired.node
        return tuple(str(ipaddress.ip_network(c, strict=False)) for c in (node.pod_cidrs if node else ())
                     if ipaddress.ip_network(c, strict=False).version == 4)


def render_proxy(desired: DesiredState, settings: ProxySettings | None = None) -> ProxyRuleset:
    """kr's proxy chains for ``desired``, computed from nothing (a backend keeps a ``ProxyRenderer``)."""
    return ProxyRenderer(settings).render(desired)


def _bucket_network(chain: str) -> str:
    octets = bytes.fromhex(chain.rsplit("-", 1)[1])
    return f"{octets[0]}.{octets[1]}.{octets[2]}.0/24"


class InconsistentRuleset(ValueError):
    """A ruleset that jumps to an undefined chain, matches an undefined set or misnames a chain."""


#: Targets a proxy rule may jump to without kr defining them.
BUILTIN_TARGETS = frozenset({"ACCEPT", "DROP", "RETURN", "REJECT", "DNAT", "MARK", "MASQUERADE"})


def check_consistency(ruleset: ProxyRuleset, only: Mapping[str, Iterable[str]] | None = None) -> None:
    """Raise ``InconsistentRuleset`` listing every problem: a chain name that is not kr's proxy's or
    too long, a rule (or hook) jumping to a chain its table does not define, or a rule matching a set
    the ruleset does not define. ``only`` (table ->
    chain names) limits the check to those chains, the ones a sync writes: the others were checked when
    they were written, and the kernel refuses to delete a chain something still jumps to."""
    problems = []
    for table, chains in ruleset.tables.items():
        names = chains if only is None else [name for name in only.get(table, ()) if name in chains]
        for name in names:
            if not name.startswith(PREFIX + "-") or len(name) > MAX_CHAIN:
                problems.append(f"{table}: chain name {name!r} is not {PREFIX}-* within {MAX_CHAIN} characters")
            for rule in chains[name]:
                for kind, target in referenced(rule):
                    if kind == "chain" and target not in chains and target not in BUILTIN_TARGETS:
                        problems.append(f"{table}/{name}: jumps to undefined chain {target}: {rule}")
                    elif kind == "set" and target not in ruleset.sets:
                        problems.append(f"{table}/{name}: matches undefined set {target}: {rule}")
        for chain, rule in ruleset.hooks.get(table, ()):
            problems += [f"{table}: hook in {chain} jumps to undefined chain {target}"
                         for kind, target in referenced(rule) if kind == "chain" and target not in chains]
    if problems:
        raise InconsistentRuleset("; ".join(problems))
