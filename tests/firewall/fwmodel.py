"""Small builders of model objects for the firewall tests (node ``node-a``, pod CIDR 10.244.1.0/24)."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

from kr_core.model import (
    DesiredState,
    FrozenMap,
    IPBlock,
    LabelRequirement,
    LabelSelector,
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
    SelectorOperator,
)
from kr_plugins.firewall.compile import FirewallRuleset

NODE = "node-a"
INGRESS, EGRESS = PolicyType.INGRESS, PolicyType.EGRESS
TCP, UDP, SCTP = Protocol.TCP, Protocol.UDP, Protocol.SCTP


def sel(expressions: Iterable[tuple[str, str, tuple[str, ...]]] = (), **labels: str) -> LabelSelector:
    reqs = tuple(LabelRequirement(k, SelectorOperator(op), tuple(v)) for k, op, v in expressions)
    return LabelSelector(FrozenMap(labels), reqs)


def pod(key: str, ip: str | None, node: str = NODE, host_network: bool = False,
        ports: Iterable[tuple[str, int, Protocol]] = (), **labels: str) -> Pod:
    namespace, name = key.split("/")
    return Pod(namespace, name, FrozenMap(labels), (ip,) if ip else (), node, host_network, "Running",
               tuple(NamedPort(n, p, proto) for n, p, proto in ports))


def ns(name: str, **labels: str) -> Namespace:
    return Namespace(name, FrozenMap({"kubernetes.io/metadata.name": name, **labels}))


def peer(pods: LabelSelector | None = None, namespaces: LabelSelector | None = None) -> PolicyPeer:
    return PolicyPeer(pod_selector=pods, namespace_selector=namespaces)


def block(cidr: str, *excepts: str) -> PolicyPeer:
    return PolicyPeer(ip_block=IPBlock(cidr, tuple(excepts)))


def port(number: int | str | None = None, protocol: Protocol = TCP, end: int | None = None) -> PolicyPort:
    return PolicyPort(protocol, number, end)


def rule(peers: Iterable[PolicyPeer] = (), ports: Iterable[PolicyPort] = ()) -> PolicyRule:
    return PolicyRule(tuple(peers), tuple(ports))


def policy(key: str, selector: LabelSelector | None = None, ingress: Iterable[PolicyRule] | None = None,
           egress: Iterable[PolicyRule] | None = None, types: Iterable[PolicyType] | None = None) -> NetworkPolicy:
    namespace, name = key.split("/")
    ingress_rules, egress_rules = tuple(ingress or ()), tuple(egress or ())
    if types is None:  # the API's defaulting
        types = [INGRESS] + ([EGRESS] if egress is not None else [])
    return NetworkPolicy(namespace, name, selector or sel(), tuple(types), ingress_rules, egress_rules)


def node(name: str = NODE, ip: str = "192.168.50.11", cidr: str = "10.244.1.0/24") -> Node:
    return Node(name, (NodeAddress("InternalIP", ip),), (cidr,), FrozenMap(), FrozenMap())


def state(pods: Iterable[Pod] = (), policies: Iterable[NetworkPolicy] = (),
          namespaces: Iterable[Namespace] = (), with_node: bool = True) -> DesiredState:
    return DesiredState(node_name=NODE, node=node() if with_node else None, nodes=(node(),) if with_node else (),
                        pods=tuple(pods), namespaces=tuple(namespaces), policies=tuple(policies))


def sorted_members(members: Iterable[str]) -> tuple[str, ...]:
    """Set members in address order, then prefix length, then text (ports, nomatch)."""
    def key(member: str) -> tuple[int, int, str]:
        net = ipaddress.ip_network(member.split(",")[0].split(" ")[0], strict=False)
        return (int(net.network_address), net.prefixlen, member)
    return tuple(sorted(members, key=key))


def describe(ruleset: FirewallRuleset) -> str:
    """The ruleset as text, for golden files: sets with members, chains with rules, hooks."""
    lines = ["# sets"]
    for name, spec in ruleset.sets.items():
        lines.append(f"create {name} {spec.type}")
        lines += [f"add {name} {member}" for member in sorted_members(spec.members)]
    lines.append("# chains")
    for name, rules in ruleset.chains.items():
        lines.append(f":{name}")
        lines += [f"-A {name} {r}" for r in rules]
    lines.append("# hooks")
    lines += [f"-I {chain} 1 {spec}" for chain, spec in ruleset.hooks]
    return "\n".join(lines) + "\n"
