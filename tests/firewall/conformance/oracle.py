"""An independent NetworkPolicy oracle: would networking.k8s.io/v1 allow this pod-to-pod connection?

The conformance suite checks the firewall's real traffic against this module, so it deliberately shares
nothing with kr: it reads the raw API dicts (``metadata``/``spec``/``status`` as the API serves them),
never ``kr_core``'s model or compiler. It is small enough to check by reading it against the API
reference and the upstream e2e netpol suite.

Invariants:
- pure: no I/O, no state, inputs are never modified;
- a connection is allowed only when the source's egress AND the destination's ingress allow it;
- a pod that no policy selects for a direction is open in that direction;
- the allowed traffic of a selected pod is the union of every rule of every policy selecting it.

Loopback (a pod connecting to its own IP) never leaves the pod and follows no policy; that is the
caller's business (the suite expects it to be allowed, as upstream's ``AllowLoopback``), not the API's.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

Obj = Mapping[str, Any]

INGRESS, EGRESS = "Ingress", "Egress"


# --- selectors

def selector_matches(selector: Obj | None, labels: Mapping[str, str]) -> bool:
    """A metav1.LabelSelector against a label set: every matchLabels pair and every expression must hold.

    ``None`` and ``{}`` both select everything (a NetworkPolicy's podSelector and a peer's selectors are
    never "nothing" when present).
    """
    selector = selector or {}
    for key, value in (selector.get("matchLabels") or {}).items():
        if labels.get(key) != value:
            return False
    for expression in selector.get("matchExpressions") or []:
        key, operator, values = expression["key"], expression["operator"], expression.get("values") or []
        if operator == "In":
            ok = key in labels and labels[key] in values
        elif operator == "NotIn":
            ok = key not in labels or labels[key] not in values
        elif operator == "Exists":
            ok = key in labels
        elif operator == "DoesNotExist":
            ok = key not in labels
        else:
            raise ValueError(f"unknown label selector operator {operator!r}")
        if not ok:
            return False
    return True


# --- objects

def _labels(obj: Obj) -> Mapping[str, str]:
    return (obj.get("metadata") or {}).get("labels") or {}


def _namespace(obj: Obj) -> str:
    return (obj.get("metadata") or {}).get("namespace") or "default"


def _ip(pod: Obj) -> str:
    return (pod.get("status") or {})["podIP"]


def pod_key(pod: Obj) -> str:
    return f"{_namespace(pod)}/{pod['metadata']['name']}"


def policy_types(policy: Obj) -> tuple[str, ...]:
    """``spec.policyTypes`` as given, else as the API defaults it: Ingress, plus Egress when egress rules exist."""
    spec = policy.get("spec") or {}
    given = spec.get("policyTypes")
    if given:
        return tuple(given)
    return (INGRESS, EGRESS) if spec.get("egress") else (INGRESS,)


def _selects(policy: Obj, pod: Obj, direction: str) -> bool:
    return (_namespace(policy) == _namespace(pod) and direction in policy_types(policy)
            and selector_matches((policy.get("spec") or {}).get("podSelector"), _labels(pod)))


# --- peers and ports

def peer_matches(peer: Obj, policy_namespace: str, other: Obj, namespace_labels: Mapping[str, Mapping[str, str]]) -> bool:
    """Does one NetworkPolicyPeer (from the policy in ``policy_namespace``) match the pod ``other``?"""
    if "ipBlock" in peer and peer["ipBlock"] is not None:
        block = peer["ipBlock"]
        address = ipaddress.ip_address(_ip(other))
        return (address in ipaddress.ip_network(block["cidr"], strict=False)
                and not any(address in ipaddress.ip_network(cidr, strict=False) for cidr in block.get("except") or []))
    pod_selector, ns_selector = peer.get("podSelector"), peer.get("namespaceSelector")
    if pod_selector is None and ns_selector is None:
        raise ValueError(f"a NetworkPolicyPeer needs podSelector, namespaceSelector or ipBlock: {peer!r}")
    if ns_selector is None:  # podSelector alone: pods of the policy's own namespace
        namespace_ok = _namespace(other) == policy_namespace
    else:
        namespace_ok = selector_matches(ns_selector, namespace_labels.get(_namespace(other), {}))
    return namespace_ok and selector_matches(pod_selector, _labels(other))


def resolve_named_port(pod: Obj, name: str, protocol: str) -> int | None:
    """The container port of ``pod`` named ``name`` for ``protocol``; None when the pod has no such port."""
    for container in (pod.get("spec") or {}).get("containers") or []:
        for port in container.get("ports") or []:
            if port.get("name") == name and (port.get("protocol") or "TCP") == protocol:
                return int(port["containerPort"])
    return None


def port_matches(rule_port: Obj, destination: Obj, port: int, protocol: str) -> bool:
    """One NetworkPolicyPort against a connection to ``destination``'s ``port``/``protocol``.

    Named ports resolve against the destination pod's container ports, for ingress and egress alike.
    """
    if (rule_port.get("protocol") or "TCP") != protocol:
        return False
    wanted = rule_port.get("port")
    if wanted is None:
        return True
    if isinstance(wanted, str):
        if rule_port.get("endPort") is not None:
            raise ValueError("endPort may not be used with a named port")
        return resolve_named_port(destination, wanted, protocol) == port
    end = rule_port.get("endPort")
    return wanted <= port <= end if end is not None else wanted == port


def _rule_allows(rule: Obj, peers_key: str, policy_namespace: str, other: Obj, destination: Obj,
                 port: int, protocol: str, namespace_labels: Mapping[str, Mapping[str, str]]) -> bool:
    peers = rule.get(peers_key) or []  # absent or empty: every peer
    if peers and not any(peer_matches(p, policy_namespace, other, namespace_labels) for p in peers):
        return False
    ports = rule.get("ports") or []  # absent or empty: every port
    return not ports or any(port_matches(p, destination, port, protocol) for p in ports)


def direction_allows(policies: Iterable[Obj], pod: Obj, direction: str, other: Obj, destination: Obj,
                     port: int, protocol: str, namespace_labels: Mapping[str, Mapping[str, str]]) -> bool:
    """Does ``pod``'s ``direction`` (Ingress: ``other`` is the source; Egress: the destination) allow it?"""
    rules_key, peers_key = ("ingress", "from") if direction == INGRESS else ("egress", "to")
    selecting = [p for p in policies if _selects(p, pod, direction)]
    if not selecting:
        return True
    return any(_rule_allows(rule, peers_key, _namespace(policy), other, destination, port, protocol, namespace_labels)
               for policy in selecting for rule in (policy.get("spec") or {}).get(rules_key) or [])


def allowed(policies: Sequence[Obj], pods: Sequence[Obj], namespaces: Sequence[Obj],
            src_pod: Obj | str, dst_pod: Obj | str, port: int, protocol: str = "TCP") -> bool:
    """Would the policies allow ``src_pod`` to connect to ``dst_pod`` on ``port``/``protocol``?

    Pods may be given as dicts or as ``"namespace/name"`` keys into ``pods``.
    """
    by_key = {pod_key(p): p for p in pods}
    source = by_key[src_pod] if isinstance(src_pod, str) else src_pod
    destination = by_key[dst_pod] if isinstance(dst_pod, str) else dst_pod
    protocol = protocol.upper()
    namespace_labels = {n["metadata"]["name"]: _labels(n) for n in namespaces}
    return (direction_allows(policies, source, EGRESS, destination, destination, port, protocol, namespace_labels)
            and direction_allows(policies, destination, INGRESS, source, destination, port, protocol, namespace_labels))


def matrix(policies: Sequence[Obj], pods: Sequence[Obj], namespaces: Sequence[Obj], port: int,
           protocol: str = "TCP") -> dict[tuple[str, str], bool]:
    """The expected reachability of every (source key, destination key) pair, loopback included as computed."""
    return {(pod_key(s), pod_key(d)): allowed(policies, pods, namespaces, s, d, port, protocol)
            for s in pods for d in pods}
