"""Build the desired state of one node from a cache snapshot.

Role: :func:`build_desired_state` is the single translation from Kubernetes API objects (JSON dicts,
camelCase, exactly as the API server sent them) to the typed model in :mod:`kr_core.model`. It applies
kube-proxy's selection and defaulting rules so that no backend has to.

Invariants:
- Pure: the result depends only on the arguments; the only side effects are logging and caches that
  never change a result: parsed IP addresses; per kind the record parsed from each object (reused
  while the cache holds the very same object; ``prepare`` fills it as objects arrive, so a sync rarely
  parses at all); and per service its ports with their endpoints, reused while the service's record,
  its parsed slices (the same objects in the same order) and the node name are those of the last
  build. So an unchanged service yields the very same ``ServicePort`` objects from one build to the
  next, and a backend may key its own memos on their identity.
- A malformed object is skipped with exactly one warning naming its kind, key and the reason, and the
  rest of the state is still built. A malformed service port skips only that port.
- Deliberate exclusions (headless, ExternalName, another proxy's services, FQDN slices, finished pods)
  are not errors and are logged at debug level only.
- Linear in the size of the snapshot, and otherwise in what changed: a build walks every key once, but
  parses only new objects and resolves endpoints only for services whose record, slices or node changed.
  Each service port only looks at its own service's slices.
"""

from __future__ import annotations

import dataclasses
import functools
import ipaddress
import logging
import operator
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Any, NamedTuple, TypeVar

from kr_core.model import (
    DesiredState,
    Endpoint,
    IPBlock,
    NamedPort,
    Namespace,
    NetworkPolicy,
    Node,
    NodeAddress,
    Pod,
    PolicyPeer,
    PolicyPort,
    PolicyRule,
    PolicyType,
    Protocol,
    ServicePort,
    ServiceType,
    SessionAffinity,
    TrafficPolicy,
)
from kr_core.selectors import FrozenMap, LabelSelector, SelectorError

log = logging.getLogger(__name__)

Snapshot = Mapping[str, Mapping[str, Mapping[str, Any]]]
T = TypeVar("T")
E = TypeVar("E", bound=Enum)

SERVICE_PROXY_NAME_LABEL = "service.kubernetes.io/service-proxy-name"
SERVICE_NAME_LABEL = "kubernetes.io/service-name"
DEFAULT_AFFINITY_TIMEOUT = 10800  # seconds, the API server's default for ClientIP affinity
MAX_AFFINITY_TIMEOUT = 86400
FINISHED_PHASES = frozenset({"Succeeded", "Failed"})
IP_NODE_ADDRESS_TYPES = frozenset({"InternalIP", "ExternalIP"})
_PROTOCOL_NAMES = frozenset(p.value for p in Protocol)
# IANA_SVC_NAME, as the API server validates named ports.
_PORT_NAME = re.compile(r"^(?!.*--)[a-z0-9]([a-z0-9-]{0,13}[a-z0-9])?$")


class _Malformed(Exception):
    """An object (or one service port) the API server would not have accepted; the message is the reason."""


def build_desired_state(snapshot: Snapshot, node_name: str, proxy_name: str | None = None) -> DesiredState:
    """Compute what ``node_name`` must program from ``snapshot`` (``kind -> key -> API object``).

    Absent kinds count as empty. Services labelled ``service.kubernetes.io/service-proxy-name`` are
    proxied only when the label equals ``proxy_name`` (so never when it is None), as in kube-proxy.
    """
    nodes: list[Node] = _MEMOS["nodes"].parse(snapshot.get("nodes") or {})
    slices = _index_endpoint_slices(snapshot.get("endpointslices") or {})
    service_ports = _SERVICES.build(snapshot.get("services") or {}, slices, node_name, proxy_name)
    pods: list[Pod] = _MEMOS["pods"].parse(snapshot.get("pods") or {})
    namespaces: list[Namespace] = _MEMOS["namespaces"].parse(snapshot.get("namespaces") or {})
    policies: list[NetworkPolicy] = _MEMOS["networkpolicies"].parse(snapshot.get("networkpolicies") or {})
    nodes.sort(key=lambda n: n.name)
    return DesiredState(
        node_name=node_name,
        node=next((n for n in nodes if n.name == node_name), None),
        nodes=tuple(nodes),
        services=tuple(sorted(service_ports, key=lambda p: p.key)),
        pods=tuple(sorted(pods, key=lambda p: (p.namespace, p.name))),
        namespaces=tuple(sorted(namespaces, key=lambda n: n.name)),
        policies=tuple(sorted(policies, key=lambda p: (p.namespace, p.name))),
    )


def prepare(kind: str, key: str, obj: Mapping[str, Any] | None) -> None:
    """Parse ``obj`` (the cache's new object for ``kind``/``key``, None when deleted) ahead of the next
    build, as kube-proxy's change trackers convert objects when they arrive: the agent calls this from
    the watcher's thread, so a sync finds the record ready instead of parsing. A build parses whatever
    was not prepared itself, so this never changes a result. Services are not prepared: what they
    parse to depends on the build's ``proxy_name``, and their endpoints on the slices."""
    memo = _MEMOS.get(kind)
    if memo is not None:
        memo.prepare(key, obj)


class _ParseMemo:
    """What parsing each object of one kind gave, kept from one build to the next.

    The agent's cache never mutates an object: a changed object is a new dict. So when a key maps to the
    very same dict (identity, and the same resourceVersion) as in the last build, or as the one
    ``prepare`` parsed, its parse is reused: the build stays a function of the snapshot, costs in
    proportion to what changed, and a malformed object is logged once instead of on every sync. Entries
    of objects that left the snapshot are dropped.

    ``prepare`` may run in another thread than ``parse``: it only sets and pops single keys of
    ``_prepared`` (atomic dict operations), and ``parse`` only reads them, so the worst a race can do is
    make a build parse an object again.
    """

    def __init__(self, label: str, parse: Callable[[str, Mapping[str, Any]], Any]) -> None:
        self._label = label
        self._parse = parse
        self._outcomes: dict[str, tuple[object, object, object]] = {}  # key -> (object, version, outcome)
        self._prepared: dict[str, tuple[object, object, object]] = {}

    def prepare(self, key: str, obj: Mapping[str, Any] | None) -> None:
        if obj is None:
            self._prepared.pop(key, None)
        else:
            self._prepared[key] = (obj, _resource_version(obj), _parse_one(key, obj, self._label, self._parse))

    def parse(self, objects: Mapping[str, Any]) -> list[Any]:
        fresh: dict[str, tuple[object, object, object]] = {}
        parsed = []
        prepared = self._prepared
        for key in sorted(objects):
            obj = objects[key]
            version = _resource_version(obj)
            last = self._outcomes.get(key)
            if last is None or last[0] is not obj or last[1] != version:
                last = prepared.get(key)
                if last is not None and last[0] is obj and last[1] == version:
                    prepared.pop(key, None)
                else:
                    last = (obj, version, _parse_one(key, obj, self._label, self._parse))
            fresh[key] = last
            outcome = last[2]
            if outcome is not None and not isinstance(outcome, _Malformed):
                parsed.append(outcome)
        self._outcomes = fresh
        return parsed


def _resource_version(obj: object) -> object:
    # Runs for every object on every build: test for a dict (what JSON gives) before the slower ABC check.
    meta = obj.get("metadata") if type(obj) is dict or isinstance(obj, Mapping) else None
    return meta.get("resourceVersion") if type(meta) is dict or isinstance(meta, Mapping) else None


def _parse_one(key: str, obj: object, label: str, parse: Callable[[str, Mapping[str, Any]], T | None]) -> object:
    """The record for one object, or the ``_Malformed`` reason (logged here, once)."""
    try:
        if not isinstance(obj, Mapping):
            raise _Malformed(f"not an object but {type(obj).__name__}")
        return parse(key, obj)
    except _Malformed as exc:
        log.warning("skipping %s %s: %s", label, key, exc)
        return exc


# --- services


@dataclass(frozen=True, slots=True)
class _SliceEndpoint:
    sort_key: tuple[int, int]
    address: str
    ready: bool
    serving: bool
    terminating: bool
    node_name: str | None
    zone: str | None
    hostname: str | None


@dataclass(frozen=True, slots=True)
class _Slice:
    ports: tuple[tuple[str, Protocol, int], ...]  # (name, protocol, port)
    endpoints: tuple[_SliceEndpoint, ...]


def _index_endpoint_slices(objects: Mapping[str, Any]) -> dict[tuple[str, str], list[_Slice]]:
    """Every EndpointSlice's parse (memoized), grouped by ``(namespace, service name)``, in slice key order."""
    by_service: dict[tuple[str, str], list[_Slice]] = {}
    for service, slice_ in _MEMOS["endpointslices"].parse(objects):
        by_service.setdefault(service, []).append(slice_)
    return by_service


def _parse_slice(key: str, obj: Mapping[str, Any]) -> tuple[tuple[str, str], _Slice] | None:
    namespace, _name, labels, _annotations = _metadata(obj, namespaced=True)
    service = labels.get(SERVICE_NAME_LABEL)
    if not service:
        log.debug("ignoring EndpointSlice %s: no %s label", key, SERVICE_NAME_LABEL)
        return None
    address_type = obj.get("addressType")
    if address_type == "FQDN":
        log.debug("ignoring EndpointSlice %s: FQDN addresses are not proxied", key)
        return None
    if address_type not in ("IPv4", "IPv6"):
        raise _Malformed(f"addressType: unknown or missing {address_type!r}")
    version = 4 if address_type == "IPv4" else 6
    ports = []
    for i, raw in enumerate(_list(obj, "ports", "")):
        path = f"ports[{i}]"
        raw = _mapping(raw, path)
        if raw.get("port") is None:
            # kube-proxy ignores a port-less entry ("all ports"): nothing to DNAT to.
            continue
        ports.append(
            (
                _opt_str(raw, "name", path) or "",
                _protocol(raw.get("protocol"), f"{path}.protocol"),
                _port(raw["port"], f"{path}.port"),
            )
        )
    endpoints = []
    for i, raw in enumerate(_list(obj, "endpoints", "")):
        path = f"endpoints[{i}]"
        raw = _mapping(raw, path)
        addresses = _list(raw, "addresses", path)
        if not addresses:
            raise _Malformed(f"{path}.addresses: empty")
        # Only the first address is used (kubernetes/kubernetes#106267), as in kube-proxy.
        address = _address(addresses[0], f"{path}.addresses[0]")
        if address.version != version:
            raise _Malformed(f"{path}.addresses[0]: {address.text} is not an {address_type} address")
        conditions_path = f"{path}.conditions"
        conditions = _mapping(raw.get("conditions"), conditions_path)
        # kube-proxy's reading of unset conditions: ready and serving, not terminating
        terminating = _opt_bool(conditions, "terminating", conditions_path) or False
        ready = _opt_bool(conditions, "ready", conditions_path)
        ready = True if ready is None else ready
        serving = _opt_bool(conditions, "serving", conditions_path)
        endpoints.append(
            _SliceEndpoint(
                sort_key=(address.version, address.value),
                address=address.text,
                ready=ready,
                serving=True if serving is None else serving,
                terminating=terminating,
                node_name=_opt_str(raw, "nodeName", path),
                zone=_opt_str(raw, "zone", path),
                hostname=_opt_str(raw, "hostname", path),
            )
        )
    return (namespace, service), _Slice(tuple(ports), tuple(endpoints))


def _endpoints(
    port_name: str, protocol: Protocol, slices: Iterable[_Slice], node_name: str
) -> tuple[Endpoint, ...]:
    """Endpoints of one service port across all its slices, matched by port name and protocol."""
    chosen: dict[tuple[str, int], tuple[_SliceEndpoint, int]] = {}
    for slice_ in slices:
        for name, slice_protocol, number in slice_.ports:
            if name != port_name or slice_protocol is not protocol:
                continue
            for ep in slice_.endpoints:
                seen = chosen.get((ep.address, number))
                # The same endpoint may sit in two slices while it moves between them: keep the
                # readiest copy, and the first one (slices in key order) on a tie.
                if seen is None or (ep.ready, ep.serving) > (seen[0].ready, seen[0].serving):
                    chosen[(ep.address, number)] = (ep, number)
    return tuple(
        Endpoint(
            address=ep.address,
            port=number,
            ready=ep.ready,
            serving=ep.serving,
            terminating=ep.terminating,
            node_name=ep.node_name,
            zone=ep.zone,
            hostname=ep.hostname,
            is_local=ep.node_name == node_name,
        )
        for ep, number in sorted(chosen.values(), key=lambda pair: (pair[0].sort_key, pair[1]))
    )


@dataclass(frozen=True, slots=True)
class _Service:
    """What a Service object parses to on its own: its ports, with no endpoints yet."""

    namespace: str
    name: str
    ports: tuple[ServicePort, ...]


_NO_SLICES: tuple[_Slice, ...] = ()


class _ServiceMemo:
    """The ports of each service, kept from one build to the next, in two stages so that each is redone
    only when its own inputs changed:

    1. The Service object alone parses to a :class:`_Service` through a :class:`_ParseMemo`, so a new
       record comes only with a new object, and a malformed service or port is logged once per version
       however often its slices change. Whether a service is ours depends on ``proxy_name``, so a build
       with another ``proxy_name`` than the last one starts this stage afresh.
    2. The record's ports with endpoints from its slices are reused while the record, its slices (the
       same ``_Slice`` objects in the same order; a slice's record is new exactly when its object is)
       and ``node_name`` are those of the last build.

    Entries of services that left the snapshot are dropped at each build.
    """

    def __init__(self) -> None:
        self._proxy_name: str | None = None
        self._records = self._record_memo(None)
        # (namespace, name) -> (record, its slices, node_name, its ports with endpoints)
        self._ports: dict[tuple[str, str], tuple[_Service, Sequence[_Slice], str, tuple[ServicePort, ...]]] = {}

    @staticmethod
    def _record_memo(proxy_name: str | None) -> _ParseMemo:
        return _ParseMemo("Service", functools.partial(_parse_service, proxy_name=proxy_name))

    def build(
        self,
        objects: Mapping[str, Any],
        slices: Mapping[tuple[str, str], list[_Slice]],
        node_name: str,
        proxy_name: str | None,
    ) -> list[ServicePort]:
        """Every port of every proxied service in ``objects``, services in key order."""
        if proxy_name != self._proxy_name:
            self._proxy_name = proxy_name
            self._records = self._record_memo(proxy_name)
        last_ports = self._ports
        fresh: dict[tuple[str, str], tuple[_Service, Sequence[_Slice], str, tuple[ServicePort, ...]]] = {}
        ports: list[ServicePort] = []
        for record in self._records.parse(objects):
            name = (record.namespace, record.name)
            service_slices = slices.get(name, _NO_SLICES)
            last = last_ports.get(name)
            if (
                last is None
                or last[0] is not record
                or last[2] != node_name
                or len(last[1]) != len(service_slices)
                or not all(map(operator.is_, last[1], service_slices))
            ):
                last = (record, service_slices, node_name, _with_endpoints(record, service_slices, node_name))
            fresh[name] = last
            ports.extend(last[3])
        self._ports = fresh
        return ports


def _with_endpoints(record: _Service, slices: Sequence[_Slice], node_name: str) -> tuple[ServicePort, ...]:
    if not slices:
        return record.ports  # no endpoints to add: the record's ports are the result
    return tuple(
        dataclasses.replace(port, endpoints=_endpoints(port.port_name, port.protocol, slices, node_name))
        for port in record.ports
    )


def _parse_service(key: str, obj: Mapping[str, Any], proxy_name: str | None) -> _Service | None:
    namespace, name, labels, annotations = _metadata(obj, namespaced=True)
    owner = labels.get(SERVICE_PROXY_NAME_LABEL)
    if owner is not None and owner != proxy_name:
        log.debug("ignoring Service %s: %s is %r", key, SERVICE_PROXY_NAME_LABEL, owner)
        return None
    spec = _mapping(obj.get("spec"), "spec")
    type_name = spec.get("type") or "ClusterIP"
    if type_name == "ExternalName":
        log.debug("ignoring Service %s: ExternalName", key)
        return None
    service_type = _enum(ServiceType, type_name, "spec.type")
    raw_cluster_ips = _plural_or_singular(spec, "clusterIPs", "clusterIP", "spec")
    if not raw_cluster_ips:
        raise _Malformed("spec.clusterIP: missing")
    if raw_cluster_ips[0][0] == "None":
        log.debug("ignoring Service %s: headless", key)
        return None
    cluster_ips = tuple(_ip(ip, path) for ip, path in raw_cluster_ips)
    external_ips = tuple(
        _ip(ip, f"spec.externalIPs[{i}]") for i, ip in enumerate(_list(spec, "externalIPs", "spec"))
    )
    affinity = _enum(SessionAffinity, spec.get("sessionAffinity") or "None", "spec.sessionAffinity")
    affinity_timeout = 0
    if affinity is SessionAffinity.CLIENT_IP:
        config = _mapping(
            _mapping(spec.get("sessionAffinityConfig"), "spec.sessionAffinityConfig").get("clientIP"),
            "spec.sessionAffinityConfig.clientIP",
        )
        affinity_timeout = _int_in_range(
            config.get("timeoutSeconds", DEFAULT_AFFINITY_TIMEOUT),
            1,
            MAX_AFFINITY_TIMEOUT,
            "spec.sessionAffinityConfig.clientIP.timeoutSeconds",
        )
    external_policy = _enum(
        TrafficPolicy, spec.get("externalTrafficPolicy") or "Cluster", "spec.externalTrafficPolicy"
    )
    # kube-proxy's ExternalPolicyLocal: Local only means something for externally reachable services.
    externally_reachable = service_type is not ServiceType.CLUSTER_IP or bool(external_ips)
    if not externally_reachable:
        external_policy = TrafficPolicy.CLUSTER
    health_check_node_port = None
    # kube-proxy's NeedsHealthCheck: only LoadBalancer services with the Local policy serve one.
    if service_type is ServiceType.LOAD_BALANCER and external_policy is TrafficPolicy.LOCAL:
        health_check_node_port = _opt_port(spec.get("healthCheckNodePort"), "spec.healthCheckNodePort")
    internal_policy = _enum(
        TrafficPolicy, spec.get("internalTrafficPolicy") or "Cluster", "spec.internalTrafficPolicy"
    )
    load_balancer_ips = _load_balancer_ips(obj)
    source_ranges = tuple(
        _cidr(c, f"spec.loadBalancerSourceRanges[{i}]")
        for i, c in enumerate(_list(spec, "loadBalancerSourceRanges", "spec"))
    )

    def service_port(raw: object, path: str) -> ServicePort:
        entry = _mapping(raw, path)
        port_name = _opt_str(entry, "name", path) or ""
        protocol = _protocol(entry.get("protocol"), f"{path}.protocol")
        number = _port(entry.get("port"), f"{path}.port")
        target = entry.get("targetPort")
        return ServicePort(
            namespace=namespace,
            name=name,
            port_name=port_name,
            protocol=protocol,
            port=number,
            # An unset targetPort (absent, or 0 from Go clients) means the service port itself.
            target_port=number if target in (None, 0) else _port_or_name(target, f"{path}.targetPort"),
            node_port=_opt_port(entry.get("nodePort"), f"{path}.nodePort"),
            type=service_type,
            cluster_ips=cluster_ips,
            external_ips=external_ips,
            load_balancer_ips=load_balancer_ips,
            load_balancer_source_ranges=source_ranges,
            session_affinity=affinity,
            session_affinity_timeout=affinity_timeout,
            external_traffic_policy=external_policy,
            internal_traffic_policy=internal_policy,
            health_check_node_port=health_check_node_port,
            labels=labels,
            annotations=annotations,
            endpoints=(),  # filled per build from the slices, see _ServiceMemo
        )

    ports: dict[str, ServicePort] = {}
    for i, raw in enumerate(_list(spec, "ports", "spec")):
        try:
            port = service_port(raw, f"spec.ports[{i}]")
            if port.port_name in ports:
                raise _Malformed(f"spec.ports[{i}].name: duplicate port name {port.port_name!r}")
        except _Malformed as exc:
            label = repr(raw["name"]) if isinstance(raw, Mapping) and raw.get("name") else f"#{i}"
            log.warning("skipping Service %s port %s: %s", key, label, exc)
            continue
        ports[port.port_name] = port
    return _Service(namespace, name, tuple(ports.values()))


def _load_balancer_ips(obj: Mapping[str, Any]) -> tuple[str, ...]:
    status = _mapping(obj.get("status"), "status")
    load_balancer = _mapping(status.get("loadBalancer"), "status.loadBalancer")
    ips = []
    for i, raw in enumerate(_list(load_balancer, "ingress", "status.loadBalancer")):
        path = f"status.loadBalancer.ingress[{i}]"
        raw = _mapping(raw, path)
        # Hostname-only ingresses have nothing to program. With ipMode Proxy the load balancer
        # rewrites the destination itself, so kube-proxy must not short-circuit that IP in-cluster.
        if raw.get("ip") and raw.get("ipMode") != "Proxy":
            ips.append(_ip(raw["ip"], f"{path}.ip"))
    return tuple(ips)


# --- nodes


def _parse_node(key: str, obj: Mapping[str, Any]) -> Node:
    _namespace, name, labels, annotations = _metadata(obj, namespaced=False)
    spec = _mapping(obj.get("spec"), "spec")
    status = _mapping(obj.get("status"), "status")
    addresses = []
    for i, raw in enumerate(_list(status, "addresses", "status")):
        path = f"status.addresses[{i}]"
        raw = _mapping(raw, path)
        address_type = _str(raw, "type", path)
        address = _str(raw, "address", path)
        if address_type in IP_NODE_ADDRESS_TYPES:
            address = _ip(address, f"{path}.address")
        addresses.append(NodeAddress(address_type, address))
    return Node(
        name=name,
        addresses=tuple(addresses),
        pod_cidrs=tuple(
            _cidr(cidr, path) for cidr, path in _plural_or_singular(spec, "podCIDRs", "podCIDR", "spec")
        ),
        labels=labels,
        annotations=annotations,
    )


# --- policy inputs


def _parse_pod(key: str, obj: Mapping[str, Any]) -> Pod | None:
    namespace, name, labels, _annotations = _metadata(obj, namespaced=True)
    spec = _mapping(obj.get("spec"), "spec")
    status = _mapping(obj.get("status"), "status")
    phase = _opt_str(status, "phase", "status")
    if phase in FINISHED_PHASES:
        log.debug("ignoring Pod %s: %s", key, phase)
        return None
    raw_ips = [
        (_mapping(entry, f"status.podIPs[{i}]").get("ip"), f"status.podIPs[{i}].ip")
        for i, entry in enumerate(_list(status, "podIPs", "status"))
    ] or ([(status["podIP"], "status.podIP")] if status.get("podIP") else [])
    named_ports = []
    for c, container in enumerate(_list(spec, "containers", "spec")):
        container = _mapping(container, f"spec.containers[{c}]")
        for p, raw in enumerate(_list(container, "ports", f"spec.containers[{c}]")):
            path = f"spec.containers[{c}].ports[{p}]"
            raw = _mapping(raw, path)
            if raw.get("name") is None:
                continue  # only named ports can be referenced by policies
            named_ports.append(
                NamedPort(
                    name=_port_name(raw["name"], f"{path}.name"),
                    port=_port(raw.get("containerPort"), f"{path}.containerPort"),
                    protocol=_protocol(raw.get("protocol"), f"{path}.protocol"),
                )
            )
    return Pod(
        namespace=namespace,
        name=name,
        labels=labels,
        ips=tuple(_ip(ip, path) for ip, path in raw_ips),
        node_name=_opt_str(spec, "nodeName", "spec"),
        host_network=_opt_bool(spec, "hostNetwork", "spec") or False,
        phase=phase,
        named_ports=tuple(named_ports),
    )


def _parse_namespace(key: str, obj: Mapping[str, Any]) -> Namespace:
    _namespace, name, labels, _annotations = _metadata(obj, namespaced=False)
    return Namespace(name=name, labels=labels)


def _parse_policy(key: str, obj: Mapping[str, Any]) -> NetworkPolicy:
    namespace, name, _labels, _annotations = _metadata(obj, namespaced=True)
    spec = _mapping(obj.get("spec"), "spec")
    # A missing podSelector decodes to the empty selector in Go clients, so it selects every pod.
    pod_selector = _selector(spec.get("podSelector") or {}, "spec.podSelector")
    ingress = tuple(
        _parse_rule(rule, "from", f"spec.ingress[{i}]")
        for i, rule in enumerate(_list(spec, "ingress", "spec"))
    )
    egress = tuple(
        _parse_rule(rule, "to", f"spec.egress[{i}]") for i, rule in enumerate(_list(spec, "egress", "spec"))
    )
    raw_types = _list(spec, "policyTypes", "spec")
    if raw_types:
        types = {_enum(PolicyType, t, f"spec.policyTypes[{i}]") for i, t in enumerate(raw_types)}
    else:
        # The API server's defaulting: Ingress always, Egress when there are egress rules.
        types = {PolicyType.INGRESS, PolicyType.EGRESS} if egress else {PolicyType.INGRESS}
    return NetworkPolicy(
        namespace=namespace,
        name=name,
        pod_selector=pod_selector,
        policy_types=tuple(t for t in PolicyType if t in types),
        ingress=ingress,
        egress=egress,
    )


def _parse_rule(raw: object, peers_field: str, path: str) -> PolicyRule:
    rule = _mapping(raw, path)
    return PolicyRule(
        peers=tuple(
            _parse_peer(peer, f"{path}.{peers_field}[{i}]")
            for i, peer in enumerate(_list(rule, peers_field, path))
        ),
        ports=tuple(
            _parse_policy_port(port, f"{path}.ports[{i}]")
            for i, port in enumerate(_list(rule, "ports", path))
        ),
    )


def _parse_peer(raw: object, path: str) -> PolicyPeer:
    peer = _mapping(raw, path)
    pod_selector = peer.get("podSelector")
    namespace_selector = peer.get("namespaceSelector")
    ip_block = peer.get("ipBlock")
    if ip_block is not None and (pod_selector is not None or namespace_selector is not None):
        raise _Malformed(f"{path}: ipBlock cannot be combined with a selector")
    if ip_block is None and pod_selector is None and namespace_selector is None:
        raise _Malformed(f"{path}: peer selects nothing")
    return PolicyPeer(
        pod_selector=_optional_selector(pod_selector, f"{path}.podSelector"),
        namespace_selector=_optional_selector(namespace_selector, f"{path}.namespaceSelector"),
        ip_block=None if ip_block is None else _parse_ip_block(ip_block, f"{path}.ipBlock"),
    )


def _parse_ip_block(raw: object, path: str) -> IPBlock:
    block = _mapping(raw, path)
    cidr = _network(_str(block, "cidr", path), f"{path}.cidr")
    excepts = []
    for i, value in enumerate(_list(block, "except", path)):
        network = _network(value, f"{path}.except[{i}]")
        # A strict subset: inside the block (an address of another family never is) and smaller.
        if network.network_address not in cidr or network.prefixlen <= cidr.prefixlen:
            raise _Malformed(f"{path}.except[{i}]: {network} is not a strict subset of {cidr}")
        excepts.append(network.with_prefixlen)
    return IPBlock(cidr=cidr.with_prefixlen, except_cidrs=tuple(excepts))


def _parse_policy_port(raw: object, path: str) -> PolicyPort:
    entry = _mapping(raw, path)
    protocol = _protocol(entry.get("protocol"), f"{path}.protocol")
    port = entry.get("port")
    end_port = entry.get("endPort")
    if port is None:
        if end_port is not None:
            raise _Malformed(f"{path}.endPort: set without a port")
        return PolicyPort(protocol=protocol)
    number_or_name = _port_or_name(port, f"{path}.port")
    if end_port is None:
        return PolicyPort(protocol=protocol, port=number_or_name)
    if isinstance(number_or_name, str):
        raise _Malformed(f"{path}.endPort: not allowed with the named port {number_or_name!r}")
    end = _port(end_port, f"{path}.endPort")
    if end < number_or_name:
        raise _Malformed(f"{path}.endPort: {end} is below port {number_or_name}")
    return PolicyPort(protocol=protocol, port=number_or_name, end_port=end)


# --- field readers: each raises _Malformed naming the field path


def _metadata(
    obj: Mapping[str, Any], *, namespaced: bool
) -> tuple[str, str, FrozenMap[str, str], FrozenMap[str, str]]:
    """``(namespace, name, labels, annotations)``; namespace is "" for cluster-scoped kinds."""
    meta = _mapping(obj.get("metadata"), "metadata")
    name = _str(meta, "name", "metadata")
    namespace = _str(meta, "namespace", "metadata") if namespaced else ""
    return namespace, name, _string_map(meta, "labels"), _string_map(meta, "annotations")


_NO_STRINGS: FrozenMap[str, str] = FrozenMap()


def _string_map(meta: Mapping[str, Any], field: str) -> FrozenMap[str, str]:
    raw = meta.get(field)
    if raw is None or (type(raw) is dict and not raw):
        return _NO_STRINGS
    raw = _mapping(raw, f"metadata.{field}")
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in raw.items()):
        raise _Malformed(f"metadata.{field}: keys and values must be strings")
    return FrozenMap(raw)


def _join(path: str, field: str) -> str:
    """The path of ``field`` inside ``path`` ("" is the object itself)."""
    return f"{path}.{field}" if path else field


def _mapping(value: object, path: str) -> Mapping[str, Any]:
    if type(value) is dict:  # what JSON gives: skip the slower ABC check
        return value
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise _Malformed(f"{path}: expected an object, got {type(value).__name__}")
    return value


def _list(obj: Mapping[str, Any], field: str, path: str) -> list[Any]:
    value = obj.get(field)
    if value is None:
        return []
    if not isinstance(value, list):
        raise _Malformed(f"{_join(path, field)}: expected a list, got {type(value).__name__}")
    return value


def _plural_or_singular(
    obj: Mapping[str, Any], plural: str, singular: str, path: str
) -> list[tuple[Any, str]]:
    """``(value, path)`` pairs of a dual-stack list field, or of its legacy single field when it is empty."""
    values = _list(obj, plural, path)
    if values:
        return [(value, f"{path}.{plural}[{i}]") for i, value in enumerate(values)]
    return [(obj[singular], f"{path}.{singular}")] if obj.get(singular) else []


def _str(obj: Mapping[str, Any], field: str, path: str) -> str:
    value = _opt_str(obj, field, path)
    if not value:
        raise _Malformed(f"{_join(path, field)}: missing")
    return value


def _opt_str(obj: Mapping[str, Any], field: str, path: str) -> str | None:
    value = obj.get(field)
    if value is not None and not isinstance(value, str):
        raise _Malformed(f"{_join(path, field)}: expected a string, got {value!r}")
    return value


def _opt_bool(obj: Mapping[str, Any], field: str, path: str) -> bool | None:
    value = obj.get(field)
    if value is not None and not isinstance(value, bool):
        raise _Malformed(f"{_join(path, field)}: expected true or false, got {value!r}")
    return value


def _enum(enum: type[E], value: object, path: str) -> E:
    try:
        return enum(value)
    except ValueError:
        raise _Malformed(f"{path}: unknown value {value!r}") from None


def _protocol(value: object, path: str) -> Protocol:
    """A protocol, defaulting to TCP as the API server does."""
    if value is None:
        return Protocol.TCP
    if not isinstance(value, str) or value not in _PROTOCOL_NAMES:
        raise _Malformed(f"{path}: unknown protocol {value!r}")
    return Protocol(value)


def _int_in_range(value: object, low: int, high: int, path: str) -> int:
    # bool is an int in Python but never a number in the API.
    if not isinstance(value, int) or isinstance(value, bool):
        raise _Malformed(f"{path}: expected a number, got {value!r}")
    if not low <= value <= high:
        raise _Malformed(f"{path}: {value} is out of range {low}-{high}")
    return value


def _port(value: object, path: str) -> int:
    return _int_in_range(value, 1, 65535, path)


def _opt_port(value: object, path: str) -> int | None:
    """A port that may be unset; the API encodes unset as absent or 0."""
    return None if value is None or value == 0 else _port(value, path)


def _port_name(value: object, path: str) -> str:
    if not isinstance(value, str) or not _PORT_NAME.match(value) or not re.search("[a-z]", value):
        raise _Malformed(f"{path}: invalid port name {value!r}")
    return value


def _port_or_name(value: object, path: str) -> int | str:
    return _port_name(value, path) if isinstance(value, str) else _port(value, path)


class _Address(NamedTuple):
    version: int
    value: int
    text: str  # canonical form


def _address(value: object, path: str) -> _Address:
    address = _parse_address(value) if isinstance(value, str) else None
    if address is None:
        raise _Malformed(f"{path}: invalid IP address {value!r}")
    return address


@functools.lru_cache(maxsize=1 << 18)
def _parse_address(value: str) -> _Address | None:
    # Cached because the same addresses come back on every sync and parsing them dominates the build.
    try:
        ip = ipaddress.ip_address(value)
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.scope_id:
        return None  # a zone index (fe80::1%eth0) is never valid in the API
    return _Address(ip.version, int(ip), ip.compressed)


def _ip(value: object, path: str) -> str:
    return _address(value, path).text


def _network(value: object, path: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    # Host bits are tolerated (the API server's ParseCIDRSloppy does too) and cleared.
    if not isinstance(value, str) or "/" not in value:
        raise _Malformed(f"{path}: invalid CIDR {value!r}")
    try:
        return ipaddress.ip_network(value, strict=False)
    except ValueError:
        raise _Malformed(f"{path}: invalid CIDR {value!r}") from None


def _cidr(value: object, path: str) -> str:
    return _network(value, path).with_prefixlen


def _selector(raw: object, path: str) -> LabelSelector:
    try:
        return LabelSelector.from_api(raw)
    except SelectorError as exc:
        raise _Malformed(f"{path}: {exc}") from None


def _optional_selector(raw: object, path: str) -> LabelSelector | None:
    """None stays None: an unspecified selector is not the empty (match-all) selector."""
    return None if raw is None else _selector(raw, path)


_MEMOS = {
    "nodes": _ParseMemo("Node", _parse_node),
    "pods": _ParseMemo("Pod", _parse_pod),
    "namespaces": _ParseMemo("Namespace", _parse_namespace),
    "networkpolicies": _ParseMemo("NetworkPolicy", _parse_policy),
    "endpointslices": _ParseMemo("EndpointSlice", _parse_slice),
}
_SERVICES = _ServiceMemo()
