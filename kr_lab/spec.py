"""The lab's spec file: a whole cluster on one machine, parsed and checked into an immutable model.

A spec names the LANs the hosts sit on, the master, the nodes (IP, pod CIDR, labels, annotations), the
external hosts, the namespaces and the pods with the ports they serve. ``DEFAULT_SPEC`` is the blog
post's cluster. Parsing is pure; every mistake is reported as ``SpecError`` with the path of the field.
``with_node`` and ``without_node`` give the document of a running lab that a node joins or leaves.

Invariants of a parsed ``LabSpec``:
- every host's IP lies in its LAN's subnet and is unique; the router (when there are several LANs) owns
  the first address of each LAN;
- pod CIDRs are disjoint, inside the cluster CIDR when one is given, and every node has one (allocated
  from the cluster CIDR as /24s in node order when the spec gives none);
- pods name existing nodes, and their namespaces exist (``default`` always does);
- names are DNS labels short enough to build namespace and interface names from.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

PROTOCOLS = ("TCP", "UDP", "SCTP")
_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]{0,30}[a-z0-9])?$")


class SpecError(ValueError):
    """A spec file that cannot describe a lab; the message says where and why."""


@dataclasses.dataclass(frozen=True, slots=True)
class LAN:
    name: str
    subnet: ipaddress.IPv4Network


@dataclasses.dataclass(frozen=True, slots=True)
class Host:
    """A machine on a LAN: the master, a node or an external host."""

    name: str
    lan: str
    ip: ipaddress.IPv4Address
    role: str  # master | node | external
    pod_cidr: ipaddress.IPv4Network | None = None
    labels: Mapping[str, str] = dataclasses.field(default_factory=dict)
    annotations: Mapping[str, str] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True, slots=True)
class PodPort:
    name: str
    port: int
    protocol: str


@dataclasses.dataclass(frozen=True, slots=True)
class PodSpec:
    namespace: str
    name: str
    node: str
    labels: Mapping[str, str]
    ports: tuple[PodPort, ...]

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"


@dataclasses.dataclass(frozen=True, slots=True)
class LabSpec:
    lans: tuple[LAN, ...]
    master: Host
    nodes: tuple[Host, ...]
    externals: tuple[Host, ...]
    namespaces: Mapping[str, Mapping[str, str]]
    pods: tuple[PodSpec, ...]
    service_cidr: ipaddress.IPv4Network
    cluster_cidr: ipaddress.IPv4Network | None

    @property
    def hosts(self) -> tuple[Host, ...]:
        return (self.master, *self.nodes, *self.externals)

    def host(self, name: str) -> Host:
        for host in self.hosts:
            if host.name == name:
                return host
        raise KeyError(name)

    def lan(self, name: str) -> LAN:
        return next(lan for lan in self.lans if lan.name == name)

    def router_ip(self, lan: str) -> ipaddress.IPv4Address | None:
        """The router's address on ``lan`` when the lab has several LANs, else None."""
        return next(self.lan(lan).subnet.hosts()) if len(self.lans) > 1 else None


DEFAULT_SPEC_TEXT = """\
# The blog post's cluster: kube-master and kube-node1..3 on one LAN, pods on every node.
serviceCIDR: 10.96.0.0/12
clusterCIDR: 10.1.0.0/16
lans:
  - {name: lan, subnet: 192.168.56.0/24}
master: {name: kube-master, lan: lan, ip: 192.168.56.10}
nodes:
  - {name: kube-node1, lan: lan, ip: 192.168.56.11, podCIDR: 10.1.1.0/24}
  - {name: kube-node2, lan: lan, ip: 192.168.56.12, podCIDR: 10.1.2.0/24}
  - {name: kube-node3, lan: lan, ip: 192.168.56.13, podCIDR: 10.1.3.0/24}
externals:
  - {name: client, lan: lan, ip: 192.168.56.100}
namespaces:
  - {name: frontend, labels: {team: web}}
  - {name: backend, labels: {team: api}}
pods:
  - {namespace: frontend, name: web-1, node: kube-node1, labels: {app: web}, ports: [{name: http, port: 8080, protocol: TCP}]}
  - {namespace: frontend, name: web-2, node: kube-node2, labels: {app: web}, ports: [{name: http, port: 8080, protocol: TCP}]}
  - {namespace: backend, name: api-1, node: kube-node2, labels: {app: api}, ports: [{name: http, port: 9090, protocol: TCP}, {name: dns, port: 5353, protocol: UDP}, {name: sctp, port: 7777, protocol: SCTP}]}
  - {namespace: backend, name: api-2, node: kube-node3, labels: {app: api}, ports: [{name: http, port: 9090, protocol: TCP}, {name: dns, port: 5353, protocol: UDP}, {name: sctp, port: 7777, protocol: SCTP}]}
  - {namespace: backend, name: db-1, node: kube-node3, labels: {app: db}, ports: [{name: sql, port: 5432, protocol: TCP}]}
  - {namespace: default, name: tools, node: kube-node1, labels: {app: tools}, ports: [{name: http, port: 8080, protocol: TCP}]}
"""


def load_spec_document(path: str | Path | None) -> dict[str, Any]:
    """The spec document at ``path`` (the default spec when None), checked by ``parse_spec``."""
    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8") if path else DEFAULT_SPEC_TEXT)
    except (OSError, yaml.YAMLError) as exc:
        raise SpecError(f"cannot read spec {path}: {exc}") from exc
    parse_spec(data)
    return data


def parse_spec(data: Any) -> LabSpec:
    """Check and convert a spec document (already loaded from YAML) into a ``LabSpec``."""
    doc = _mapping(data, "spec")
    lans = tuple(_lan(item, f"lans[{i}]") for i, item in enumerate(_list(doc.get("lans"), "lans", required=True)))
    _unique([lan.name for lan in lans], "lans")
    by_lan = {lan.name: lan for lan in lans}
    service_cidr = _network(doc.get("serviceCIDR", "10.96.0.0/12"), "serviceCIDR")
    cluster_cidr = _network(doc["clusterCIDR"], "clusterCIDR") if doc.get("clusterCIDR") else None

    for lan in lans:
        if lan.subnet.overlaps(service_cidr) or (cluster_cidr is not None and lan.subnet.overlaps(cluster_cidr)):
            raise SpecError(f"lans: {lan.name} ({lan.subnet}) overlaps the service or cluster CIDR")
    if cluster_cidr is not None and cluster_cidr.overlaps(service_cidr):
        raise SpecError(f"clusterCIDR {cluster_cidr} overlaps serviceCIDR {service_cidr}")
    master = _host(_mapping(doc.get("master"), "master"), "master", "master", by_lan)
    nodes = [_host(item, f"nodes[{i}]", "node", by_lan) for i, item in enumerate(_list(doc.get("nodes"), "nodes", required=True))]
    externals = tuple(_host(item, f"externals[{i}]", "external", by_lan)
                      for i, item in enumerate(_list(doc.get("externals"), "externals")))
    nodes = _allocate_pod_cidrs(nodes, cluster_cidr)
    hosts = [master, *nodes, *externals]
    _unique([h.name for h in hosts], "host names")
    _unique([str(h.ip) for h in hosts], "host IPs")
    if len(lans) > 1:
        for host in hosts:
            if host.ip == next(by_lan[host.lan].subnet.hosts()):
                raise SpecError(f"{host.name}: {host.ip} is the router's address on LAN {host.lan}")

    namespaces: dict[str, Mapping[str, str]] = {"default": {}}
    for i, item in enumerate(_list(doc.get("namespaces"), "namespaces")):
        entry = _mapping(item, f"namespaces[{i}]")
        name = _name(entry.get("name"), f"namespaces[{i}].name")
        namespaces[name] = _labels(entry.get("labels"), f"namespaces[{i}].labels")

    node_names = {n.name for n in nodes}
    pods = tuple(_pod(item, f"pods[{i}]", node_names, namespaces) for i, item in enumerate(_list(doc.get("pods"), "pods")))
    _unique([p.key for p in pods], "pods")
    return LabSpec(tuple(lans), master, tuple(nodes), externals, namespaces, pods, service_cidr, cluster_cidr)


# --- a running lab's nodes


def with_node(data: Mapping[str, Any], entry: Mapping[str, Any]) -> tuple[dict[str, Any], Host]:
    """The spec document ``data`` with node ``entry`` (a ``nodes[]`` item) added, and the node as parsed.

    Every node's pod CIDR is written into the new document (the new node's allocated from clusterCIDR
    when ``entry`` gives none), so adding or removing a node never moves another node's CIDR.
    """
    doc = _pinned(data)
    doc["nodes"].append(dict(entry))
    node = parse_spec(doc).nodes[-1]
    doc["nodes"][-1]["podCIDR"] = str(node.pod_cidr)
    return doc, node


def without_node(data: Mapping[str, Any], name: str) -> dict[str, Any]:
    """The spec document ``data`` without node ``name`` and the pods it declares on it (pod CIDRs pinned)."""
    doc = _pinned(data)
    doc["nodes"] = [entry for entry in doc["nodes"] if entry.get("name") != name]
    doc["pods"] = [pod for pod in doc.get("pods") or [] if pod.get("node") != name]
    parse_spec(doc)
    return doc


def _pinned(data: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of ``data`` in which every node states its pod CIDR (allocated ones included)."""
    spec = parse_spec(data)
    return {**data, "nodes": [{**entry, "podCIDR": str(node.pod_cidr)} for entry, node in zip(data["nodes"], spec.nodes)]}


# --- field parsers


def _mapping(value: Any, where: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise SpecError(f"{where}: expected a mapping, got {type(value).__name__}")
    return value


def _list(value: Any, where: str, required: bool = False) -> list[Any]:
    if value is None and not required:
        return []
    if not isinstance(value, list) or (required and not value):
        raise SpecError(f"{where}: expected a non-empty list" if required else f"{where}: expected a list")
    return value


def _name(value: Any, where: str) -> str:
    if not isinstance(value, str) or not _NAME.match(value):
        raise SpecError(f"{where}: {value!r} is not a lowercase DNS label of at most 32 characters")
    return value


def _network(value: Any, where: str) -> ipaddress.IPv4Network:
    try:
        return ipaddress.IPv4Network(str(value), strict=True)
    except ValueError as exc:
        raise SpecError(f"{where}: {value!r} is not an IPv4 CIDR ({exc})") from exc


def _labels(value: Any, where: str) -> Mapping[str, str]:
    if value is None:
        return {}
    labels = _mapping(value, where)
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in labels.items()):
        raise SpecError(f"{where}: labels and annotations must map strings to strings")
    return dict(labels)


def _unique(values: list[str], where: str) -> None:
    seen = set()
    for value in values:
        if value in seen:
            raise SpecError(f"{where}: {value} appears twice")
        seen.add(value)


def _lan(item: Any, where: str) -> LAN:
    entry = _mapping(item, where)
    subnet = _network(entry.get("subnet"), f"{where}.subnet")
    if subnet.num_addresses < 8:
        raise SpecError(f"{where}.subnet: {subnet} is too small for a LAN")
    return LAN(_name(entry.get("name"), f"{where}.name"), subnet)


def _host(item: Any, where: str, role: str, lans: Mapping[str, LAN]) -> Host:
    entry = _mapping(item, where)
    name = _name(entry.get("name"), f"{where}.name")
    lan_name = entry.get("lan", next(iter(lans)))
    if lan_name not in lans:
        raise SpecError(f"{where}.lan: no LAN named {lan_name!r}; choose one of: {', '.join(lans)}")
    try:
        ip = ipaddress.IPv4Address(str(entry.get("ip")))
    except ValueError as exc:
        raise SpecError(f"{where}.ip: {entry.get('ip')!r} is not an IPv4 address") from exc
    subnet = lans[lan_name].subnet
    if ip not in subnet or ip in (subnet.network_address, subnet.broadcast_address):
        raise SpecError(f"{where}.ip: {ip} is not a host address of LAN {lan_name} ({subnet})")
    pod_cidr = _network(entry["podCIDR"], f"{where}.podCIDR") if entry.get("podCIDR") else None
    if role != "node" and pod_cidr is not None:
        raise SpecError(f"{where}: only nodes have a podCIDR")
    return Host(name, lan_name, ip, role, pod_cidr, _labels(entry.get("labels"), f"{where}.labels"),
                _labels(entry.get("annotations"), f"{where}.annotations"))


def _allocate_pod_cidrs(nodes: list[Host], cluster_cidr: ipaddress.IPv4Network | None) -> list[Host]:
    taken = [n.pod_cidr for n in nodes if n.pod_cidr is not None]
    for node in nodes:
        if node.pod_cidr is not None and cluster_cidr is not None and not node.pod_cidr.subnet_of(cluster_cidr):
            raise SpecError(f"{node.name}: podCIDR {node.pod_cidr} is outside clusterCIDR {cluster_cidr}")
        if node.pod_cidr is not None and node.pod_cidr.num_addresses < 4:
            raise SpecError(f"{node.name}: podCIDR {node.pod_cidr} is too small")
    for i, a in enumerate(taken):
        for b in taken[i + 1:]:
            if a.overlaps(b):
                raise SpecError(f"pod CIDRs {a} and {b} overlap")
    free = (s for s in (cluster_cidr.subnets(new_prefix=24) if cluster_cidr else ()) if not any(s.overlaps(t) for t in taken))
    allocated = []
    for node in nodes:
        if node.pod_cidr is None:
            cidr = next(free, None)
            if cidr is None:
                raise SpecError(f"{node.name}: no podCIDR given and none left to allocate (set clusterCIDR)")
            node = dataclasses.replace(node, pod_cidr=cidr)
        allocated.append(node)
    return allocated


def _pod(item: Any, where: str, nodes: set[str], namespaces: Mapping[str, Any]) -> PodSpec:
    entry = _mapping(item, where)
    namespace = entry.get("namespace", "default")
    if namespace not in namespaces:
        raise SpecError(f"{where}.namespace: {namespace!r} is not declared under namespaces")
    node = entry.get("node")
    if node not in nodes:
        raise SpecError(f"{where}.node: no node named {node!r}")
    ports = []
    for j, raw in enumerate(_list(entry.get("ports"), f"{where}.ports")):
        port = _mapping(raw, f"{where}.ports[{j}]")
        number, protocol = port.get("port"), str(port.get("protocol", "TCP")).upper()
        if not isinstance(number, int) or not 1 <= number <= 65535:
            raise SpecError(f"{where}.ports[{j}].port: {number!r} is not a port number")
        if protocol not in PROTOCOLS:
            raise SpecError(f"{where}.ports[{j}].protocol: {protocol!r} is not one of {', '.join(PROTOCOLS)}")
        ports.append(PodPort(_name(port.get("name", f"p{number}"), f"{where}.ports[{j}].name"), number, protocol))
    _unique([f"{p.port}/{p.protocol}" for p in ports], f"{where}.ports")
    return PodSpec(namespace, _name(entry.get("name"), f"{where}.name"), node,
                   _labels(entry.get("labels"), f"{where}.labels"), tuple(ports))
