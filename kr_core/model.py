"""The desired-state model: what every backend is asked to make true on this node.

Role: typed, backend-neutral records built by :func:`kr_core.desired.build_desired_state` from a
cache snapshot, amended by plugins through ``kr_amend_desired_state``, and read by the routing, proxy
and firewall backends. :func:`to_jsonable` turns any of it into plain JSON for logs and golden tests.

Invariants:
- Every record is a frozen, slotted dataclass; collections are tuples and maps are
  :class:`~kr_core.selectors.FrozenMap`, so a state can be shared across threads and compared cheaply.
- Builder-made collections are in a deterministic order: services by key, endpoints by (IP family,
  numeric address, port), nodes and namespaces by name, pods and policies by (namespace, name),
  selector requirements canonically. Where the API order carries meaning it is
  kept: cluster IPs, pod IPs and pod CIDRs list the primary family first; node addresses keep the
  node's order; named ports keep container order (first match wins, as in Kubernetes).
- Every IP address is a validated, canonical string (``ipaddress`` compressed form) and every CIDR is
  normalised to its network address, so string equality is address equality.
- Values are already defaulted as the API server and kube-proxy would default them: backends never
  re-apply API defaults.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields, is_dataclass
from enum import Enum, StrEnum

from kr_core.selectors import (
    FrozenMap,
    LabelRequirement,
    LabelSelector,
    SelectorOperator,
)

__all__ = [
    "DesiredState",
    "Endpoint",
    "FrozenMap",
    "IPBlock",
    "LabelRequirement",
    "LabelSelector",
    "NamedPort",
    "Namespace",
    "NetworkPolicy",
    "Node",
    "NodeAddress",
    "Pod",
    "PolicyPeer",
    "PolicyPort",
    "PolicyRule",
    "PolicyType",
    "Protocol",
    "SelectorOperator",
    "ServicePort",
    "ServiceType",
    "SessionAffinity",
    "TrafficPolicy",
    "to_jsonable",
]


class Protocol(StrEnum):
    TCP = "TCP"
    UDP = "UDP"
    SCTP = "SCTP"


class ServiceType(StrEnum):
    """Proxied service types; ``ExternalName`` services never reach the model."""

    CLUSTER_IP = "ClusterIP"
    NODE_PORT = "NodePort"
    LOAD_BALANCER = "LoadBalancer"


class TrafficPolicy(StrEnum):
    CLUSTER = "Cluster"
    LOCAL = "Local"


class SessionAffinity(StrEnum):
    NONE = "None"
    CLIENT_IP = "ClientIP"


class PolicyType(StrEnum):
    INGRESS = "Ingress"
    EGRESS = "Egress"


# --- services


@dataclass(frozen=True, slots=True)
class Endpoint:
    """One backend of a service port, from an EndpointSlice, with its conditions already defaulted.

    Endpoints that are not ready are kept: choosing among them is backend policy (kube-proxy uses the
    ready ones and falls back to serving, terminating ones). ``port`` is the slice's port for the
    service port's name, so one service port may reach different numbers on different endpoints.
    """

    address: str
    port: int
    ready: bool
    serving: bool
    terminating: bool
    node_name: str | None
    zone: str | None
    hostname: str | None
    is_local: bool


@dataclass(frozen=True, slots=True)
class ServicePort:
    """One port of a proxied service, with everything kube-proxy would program for it.

    ``target_port`` is informational (endpoints already carry the resolved port). Fields that only
    apply to some service types hold kube-proxy's effective value: ``external_traffic_policy`` is
    ``Local`` only for externally reachable services (NodePort, LoadBalancer, or ClusterIP with
    external IPs), ``health_check_node_port`` is set only for a LoadBalancer with that policy, and
    ``session_affinity_timeout`` is 0 unless affinity is ``ClientIP``. ``load_balancer_ips`` are the
    status ingress IPs minus those with ``ipMode: Proxy``; ``load_balancer_source_ranges`` come from the
    spec field only (the legacy annotation is left in ``annotations``).
    """

    namespace: str
    name: str
    port_name: str
    protocol: Protocol
    port: int
    target_port: int | str
    node_port: int | None
    type: ServiceType
    cluster_ips: tuple[str, ...]
    external_ips: tuple[str, ...]
    load_balancer_ips: tuple[str, ...]
    load_balancer_source_ranges: tuple[str, ...]
    session_affinity: SessionAffinity
    session_affinity_timeout: int
    external_traffic_policy: TrafficPolicy
    internal_traffic_policy: TrafficPolicy
    health_check_node_port: int | None
    labels: FrozenMap[str, str]
    annotations: FrozenMap[str, str]
    endpoints: tuple[Endpoint, ...]

    @property
    def key(self) -> str:
        """``namespace/service/port-name`` (the port name is empty for a single unnamed port)."""
        return f"{self.namespace}/{self.name}/{self.port_name}"

    @property
    def service_key(self) -> str:
        return f"{self.namespace}/{self.name}"


# --- nodes


@dataclass(frozen=True, slots=True)
class NodeAddress:
    """``type`` is the API's (InternalIP, ExternalIP, Hostname, ...); IP types hold canonical IPs."""

    type: str
    address: str


@dataclass(frozen=True, slots=True)
class Node:
    name: str
    addresses: tuple[NodeAddress, ...]
    pod_cidrs: tuple[str, ...]
    labels: FrozenMap[str, str]
    annotations: FrozenMap[str, str]

    @property
    def ips(self) -> tuple[str, ...]:
        """InternalIP addresses, then ExternalIP ones, without duplicates (kube-proxy's preference)."""
        ordered = [a.address for a in self.addresses if a.type == "InternalIP"]
        ordered += [a.address for a in self.addresses if a.type == "ExternalIP"]
        return tuple(dict.fromkeys(ordered))


# --- policy inputs


@dataclass(frozen=True, slots=True)
class NamedPort:
    name: str
    port: int
    protocol: Protocol


@dataclass(frozen=True, slots=True)
class Pod:
    """A pod that is not finished (Succeeded/Failed pods are left out: their IPs get reused).

    ``ips`` may be empty for a pod not yet scheduled or started; such a pod is kept because its labels
    already matter and it gets IPs on a later sync.
    """

    namespace: str
    name: str
    labels: FrozenMap[str, str]
    ips: tuple[str, ...]
    node_name: str | None
    host_network: bool
    phase: str | None
    named_ports: tuple[NamedPort, ...]

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    @property
    def has_ips(self) -> bool:
        return bool(self.ips)


@dataclass(frozen=True, slots=True)
class Namespace:
    name: str
    labels: FrozenMap[str, str]


@dataclass(frozen=True, slots=True)
class IPBlock:
    cidr: str
    except_cidrs: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class PolicyPeer:
    """One ``from``/``to`` entry: either an ``ip_block`` or selectors.

    ``None`` means the selector was not given, which differs from an empty selector: a peer with only
    ``pod_selector`` selects pods in the policy's namespace, one with only ``namespace_selector`` every
    pod in the matching namespaces, and one with both the matching pods in the matching namespaces.
    """

    pod_selector: LabelSelector | None = None
    namespace_selector: LabelSelector | None = None
    ip_block: IPBlock | None = None

    def selects_pod(self, policy_namespace: str, pod: Pod, namespace_labels: Mapping[str, str]) -> bool:
        """Whether this peer selects ``pod``; ``namespace_labels`` are the labels of the pod's namespace."""
        if self.ip_block is not None:
            return False
        if self.namespace_selector is None:
            in_scope = pod.namespace == policy_namespace
        else:
            in_scope = self.namespace_selector.matches(namespace_labels)
        return in_scope and (self.pod_selector is None or self.pod_selector.matches(pod.labels))


@dataclass(frozen=True, slots=True)
class PolicyPort:
    """``port`` is a number, a named container port, or None for every port of ``protocol``.

    ``end_port`` (inclusive) is only ever set with a numeric ``port``.
    """

    protocol: Protocol
    port: int | str | None = None
    end_port: int | None = None


@dataclass(frozen=True, slots=True)
class PolicyRule:
    """One ingress or egress rule: traffic matching any peer AND any port is allowed.

    An empty ``peers`` (``from``/``to`` absent or empty) allows every peer; an empty ``ports`` allows
    every port. Contrast with an empty rule *list* on the policy, which allows nothing.
    """

    peers: tuple[PolicyPeer, ...] = ()
    ports: tuple[PolicyPort, ...] = ()


@dataclass(frozen=True, slots=True)
class NetworkPolicy:
    """A NetworkPolicy with ``policy_types`` defaulted as the API server does.

    For each type in ``policy_types`` the selected pods allow only what the matching rule list allows;
    an empty ``ingress``/``egress`` tuple then means deny all in that direction. Rules for a type not in
    ``policy_types`` are kept as given but have no effect.
    """

    namespace: str
    name: str
    pod_selector: LabelSelector
    policy_types: tuple[PolicyType, ...]
    ingress: tuple[PolicyRule, ...] = ()
    egress: tuple[PolicyRule, ...] = ()

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    def selects(self, pod: Pod) -> bool:
        """Whether this policy applies to ``pod``."""
        return pod.namespace == self.namespace and self.pod_selector.matches(pod.labels)


# --- the whole state


@dataclass(frozen=True, slots=True)
class DesiredState:
    """Everything the backends must make true on ``node_name``.

    ``node`` is this node's record, or None when the Node is not (yet) in the cache. ``extras`` carries
    plugin data set through ``kr_amend_desired_state``; any mapping given is frozen on construction.
    """

    node_name: str
    node: Node | None = None
    nodes: tuple[Node, ...] = ()
    services: tuple[ServicePort, ...] = ()
    pods: tuple[Pod, ...] = ()
    namespaces: tuple[Namespace, ...] = ()
    policies: tuple[NetworkPolicy, ...] = ()
    extras: Mapping[str, object] = FrozenMap()
    # Lookup indexes derived from the fields above; dataclasses.replace() rebuilds them.
    _services_by_key: Mapping[str, ServicePort] = field(init=False, repr=False, compare=False)
    _namespaces_by_name: Mapping[str, Namespace] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.extras, FrozenMap):
            object.__setattr__(self, "extras", FrozenMap(self.extras))
        object.__setattr__(self, "_services_by_key", {s.key: s for s in self.services})
        object.__setattr__(self, "_namespaces_by_name", {n.name: n for n in self.namespaces})

    @property
    def node_ips(self) -> tuple[str, ...]:
        """This node's IPs (see :attr:`Node.ips`), empty when the node is unknown."""
        return self.node.ips if self.node is not None else ()

    def service_port(self, key: str) -> ServicePort | None:
        """The service port with ``key`` (``namespace/service/port-name``), if any."""
        return self._services_by_key.get(key)

    def namespace(self, name: str) -> Namespace | None:
        return self._namespaces_by_name.get(name)


JSONValue = None | bool | int | float | str | list["JSONValue"] | dict[str, "JSONValue"]


def to_jsonable(obj: object) -> JSONValue:
    """Turn a model object (recursively) into plain dicts, lists and scalars.

    Dataclasses become dicts of their constructor fields (derived indexes are left out), enums their
    values, maps dicts with string keys, tuples lists. Anything else (a plugin's extra) becomes its
    ``str()``, so logging a state never fails.
    """
    if isinstance(obj, Enum):
        return obj.value  # type: ignore[no-any-return]
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    if is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_jsonable(getattr(obj, f.name)) for f in fields(obj) if f.init}
    if isinstance(obj, Mapping):
        return {str(key): to_jsonable(value) for key, value in obj.items()}
    if isinstance(obj, (tuple, list)):
        return [to_jsonable(item) for item in obj]
    if isinstance(obj, (set, frozenset)):
        return sorted((to_jsonable(item) for item in obj), key=repr)
    return str(obj)
