"""Compile NetworkPolicies into filter-table chains and ipsets: the pure half of ``firewall.iptables``.

``compile_firewall(desired, settings)`` returns a ``FirewallRuleset``: kr's chains (rule specs without
``-A NAME``), the sets they match and the hook rules that jump into ``KR-FW``. Nothing here touches the
kernel. A backend keeps a ``FirewallCompiler``, which returns the same rulesets but recomputes only what
the change since its last compile can affect. See docs/firewall.md for the layout and why it is shaped so.

Invariants:
- every chain and set name starts with ``KR-FW`` and fits the kernel (chain <= 28, set <= 27 characters,
  leaving room for ipset's ``-tmp`` swap suffix); names are derived by hashing what defines the object, so
  they are stable across syncs and processes;
- rule specs are written in the exact form ``iptables-save`` prints them (both flavours), so the apply
  layer can compare what the kernel holds with what is wanted by string equality;
- set members are written as ``ipset save`` prints them (a set has no order, so members are frozensets);
- a chain's rules depend only on what defines it: a policy chain only on its policy (peer and named-port
  sets are named by their content, not by pods), a pod chain only on the policies selecting the pod, so a
  pod's label or IP change rewrites set members and the top chain's dispatch, never policy chains;
- only pods of this node (``pod.node_name == desired.node_name``) get pod chains, and only for a direction
  some policy selects them in; hostNetwork pods are never selected and never peers; IPv4 only.
"""

from __future__ import annotations

import ipaddress
import operator
import re
from collections.abc import Callable, Hashable, Mapping
from functools import lru_cache
from dataclasses import dataclass, field
from typing import Any

from kr_core.model import (
    DesiredState,
    IPBlock,
    LabelSelector,
    NetworkPolicy,
    Pod,
    PolicyPort,
    PolicyRule,
    PolicyType,
    Protocol,
)
from kr_core.selectors import FrozenMap
from kr_plugins.kernel.ipset import IPSetSpec
from kr_plugins.kernel.iptables import referenced, save_string
from kr_plugins.kernel.names import digest

PREFIX = "KR-FW"
TOP_CHAIN = "KR-FW"
REJECT_CHAIN = "KR-FW-REJECT"
KNOWN_SET = "KR-FW-KNOWN"
MAX_CHAIN = 28  # XT_EXTENSION_MAXNAMELEN - 1
MAX_SET = 27  # IPSET_MAXNAMELEN - 1, minus ipset.TEMP_SUFFIX
HOOK_CHAINS = ("INPUT", "FORWARD", "OUTPUT")
HOOK_COMMENT = "kr: network policy"
#: Targets a rule may jump to without kr defining them.
BUILTIN_TARGETS = frozenset({"ACCEPT", "DROP", "RETURN", "REJECT", "MARK", "NFLOG", "LOG"})
_RATE_UNITS = {"s": "sec", "sec": "sec", "second": "sec", "m": "min", "min": "min", "minute": "min",
               "h": "hour", "hour": "hour", "d": "day", "day": "day"}
_NFLOG_PREFIX_MAX = 64


@dataclass(frozen=True, slots=True)
class FirewallSettings:
    """``nflog_group`` 0 turns logging off; ``log_rate`` is iptables' ``--limit`` (``10/second``);
    ``mark`` is the packet-mark bit kr uses, inside its chains only, to carry "some policy allowed it"."""

    nflog_group: int = 100
    log_rate: str = "10/second"
    mark: int = 0x10000

    def __post_init__(self) -> None:
        if not 0 <= self.nflog_group <= 65535:
            raise ValueError(f"NFLOG group {self.nflog_group} is outside 0-65535")
        normalize_rate(self.log_rate)
        if self.mark <= 0 or self.mark & (self.mark - 1) or self.mark >= 1 << 32:
            raise ValueError(f"mark {self.mark:#x} must be a single bit of the 32-bit packet mark")


@dataclass(frozen=True, slots=True)
class FirewallRuleset:
    """``chains``: filter-table chain -> rule specs (no ``-A NAME``), ``KR-FW`` first; ``sets``: name ->
    spec; ``hooks``: (built-in chain, rule spec) to insert first in that chain."""

    chains: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    sets: Mapping[str, IPSetSpec] = field(default_factory=dict)
    hooks: tuple[tuple[str, str], ...] = ()


class InconsistentRuleset(ValueError):
    """A ruleset that jumps to an undefined chain, matches an undefined set or misnames something."""


# --- names and small renderers


def normalize_rate(rate: str) -> str:
    """``10/second`` -> ``10/sec``, as ``iptables-save`` prints a limit."""
    match = re.fullmatch(r"\s*(\d+)\s*/\s*([a-z]+)\s*", rate.lower())
    if match is None or match.group(2) not in _RATE_UNITS or int(match.group(1)) <= 0:
        raise ValueError(f"log rate {rate!r} is not N/second, N/minute, N/hour or N/day")
    return f"{int(match.group(1))}/{_RATE_UNITS[match.group(2)]}"


@lru_cache(maxsize=65536)
def _name_digest(namespace: str, name: str) -> str:
    return digest(namespace, name)


def pod_chain(direction: PolicyType, pod: Pod) -> str:
    return f"{PREFIX}-{'I' if direction is PolicyType.INGRESS else 'E'}-{_name_digest(pod.namespace, pod.name)}"


def policy_chain(direction: PolicyType, policy: NetworkPolicy) -> str:
    return f"{PREFIX}-P-{_name_digest(policy.namespace, policy.name)}-{'I' if direction is PolicyType.INGRESS else 'E'}"


def ipv4s(pod: Pod) -> tuple[str, ...]:
    return tuple(ip for ip in pod.ips if ":" not in ip)


def _mark(bit: int) -> str:
    return f"{bit:#x}/{bit:#x}"


# --- the compile step


_NO_LABELS: Mapping[str, str] = FrozenMap()


@dataclass(frozen=True, slots=True, eq=False)
class _NamespacePods:
    """What a compile needs of one namespace's pods. A compiler keeps handing out the same object while
    the namespace's pods are the same objects, so anything derived from it can be kept as well."""

    pods: tuple[Pod, ...]  # every pod of the namespace in the state, in state order
    peers: tuple[tuple[Pod, tuple[str, ...]], ...]  # (pod, its IPv4s) for pods that can be peers
    peers_by_labels: tuple[tuple[Mapping[str, str], tuple[str, ...]], ...]  # labels -> IPv4s of peers with them
    local: tuple[Pod, ...]  # the peers running on this node


def _namespace_pods(pods: tuple[Pod, ...], node_name: str) -> _NamespacePods:
    """Peers are pods that are not hostNetwork and have an IPv4 address."""
    peers = tuple((pod, ips) for pod in pods if not pod.host_network and (ips := ipv4s(pod)))
    # pods of one workload share their labels: a selector is evaluated once per distinct label set
    by_labels: dict[Mapping[str, str], list[str]] = {}
    for pod, ips in peers:
        by_labels.setdefault(pod.labels, []).extend(ips)
    local = tuple(pod for pod, _ in peers if pod.node_name == node_name)
    return _NamespacePods(pods, peers, tuple((labels, tuple(ips)) for labels, ips in by_labels.items()), local)


def _named_port_members(view: _NamespacePods, port_name: str, protocol: Protocol) -> frozenset[str]:
    """``ip,proto:port`` of each peer declaring ``port_name`` for ``protocol`` (a pod's first
    declaration of a name and protocol wins, as in Kubernetes)."""
    proto = protocol.value.lower()
    members = set()
    for pod, ips in view.peers:
        for port in pod.named_ports:
            if port.name == port_name and port.protocol is protocol:
                members.update(f"{ip},{proto}:{port.port}" for ip in ips)
                break
    return frozenset(members)


_NO_PODS = _NamespacePods((), (), (), ())


@dataclass(frozen=True, slots=True)
class _SelectorSet:
    """The pods a selector peer selects: in ``scope`` (the policy's namespace) when the peer has no
    namespace selector, else in the namespaces ``namespace_selector`` matches."""

    name: str
    scope: str | None
    pod_selector: LabelSelector | None
    namespace_selector: LabelSelector | None


@dataclass(frozen=True, slots=True)
class _NamedPortSet:
    """Every peer pod's (IP, resolved port) for one port name and protocol."""

    name: str
    port_name: str
    protocol: Protocol


@dataclass(frozen=True, slots=True)
class _BlockSet:
    """An ipBlock as hash:net members (excepts as ``nomatch``)."""

    name: str
    members: frozenset[str]


_SetRequest = _SelectorSet | _NamedPortSet | _BlockSet


class _Memo:
    """Results kept from one compile to the next, each with the inputs it was computed from.

    A result is reused when its inputs are the very same objects as last time: the desired-state builder
    hands back the same frozen object for an unchanged API object, and the compiler the same
    ``_NamespacePods`` for a namespace whose pods are unchanged, so reuse never changes a result. A
    result no compile asked for is dropped after that compile (``finish``).
    """

    def __init__(self) -> None:
        self._last: dict[Hashable, tuple[tuple[object, ...], Any]] = {}
        self._now: dict[Hashable, tuple[tuple[object, ...], Any]] = {}

    def get(self, key: Hashable, inputs: tuple[object, ...]) -> Any:
        entry = self._now.get(key) or self._last.get(key)
        if entry is None or len(entry[0]) != len(inputs) or not all(map(operator.is_, entry[0], inputs)):
            return None
        self._now[key] = entry
        return entry[1]

    def put(self, key: Hashable, inputs: tuple[object, ...], value: Any) -> Any:
        self._now[key] = (inputs, value)
        return value

    def finish(self) -> None:
        self._last, self._now = self._now, {}


class FirewallCompiler:
    """Compiles the desired states of one node, one after another.

    Each ``compile`` returns exactly what ``compile_firewall`` returns for the same state; what makes it
    cheaper is reuse (see ``_Memo``): a policy's chain and set requests are recomputed only when the
    policy changed, a set's members only when a namespace it looks at changed its pods (or namespace
    labels changed), and then only that namespace's pods are examined again. So a sync costs in
    proportion to what changed, plus one pass over the pods to group them by namespace.
    """

    def __init__(self, settings: FirewallSettings | None = None) -> None:
        self.settings = settings or FirewallSettings()
        self._mark = _mark(self.settings.mark)
        self._reset()

    def _reset(self) -> None:
        self._node_name: str | None = None
        self._views: dict[str, _NamespacePods] = {}
        self._labels: dict[str, Mapping[str, str]] = {}
        self._matching: dict[LabelSelector, tuple[str, ...]] = {}
        self._selected = _Memo()  # (pod selector, namespace) -> frozenset of IPv4s
        self._named = _Memo()  # (port name, protocol, namespace) -> frozenset of "ip,proto:port"
        self._specs = _Memo()  # set name -> IPSetSpec
        self._policies = _Memo()  # (policy key, direction) -> (rules, set requests)
        self._selection = _Memo()  # policy key -> the local pods it selects
        self._sets: dict[str, IPSetSpec] = {}
        self._on_set: Callable[[str, IPSetSpec], None] | None = None

    def compile(self, desired: DesiredState, on_set: Callable[[str, IPSetSpec], None] | None = None) -> FirewallRuleset:
        """kr's filter-table chains, sets and hooks enforcing ``desired.policies`` on ``desired.node_name``.

        ``on_set(name, spec)`` is called once for each set of the result as soon as it is known, so a
        caller can load sets into the kernel while the compile goes on."""
        if desired.node_name != self._node_name:
            self._reset()
            self._node_name = desired.node_name
        self._on_set = on_set
        try:
            ruleset = self._compile(desired)
        except BaseException:
            self._reset()
            raise
        for memo in (self._selected, self._named, self._specs, self._policies, self._selection):
            memo.finish()
        self._sets, self._on_set = {}, None
        return ruleset

    # namespaces

    def _group(self, desired: DesiredState) -> None:
        """Group the pods by namespace, keeping the previous ``_NamespacePods`` of unchanged namespaces,
        and note namespace labels (a namespace missing from the state has none)."""
        groups: dict[str, list[Pod]] = {}
        for pod in desired.pods:
            groups.setdefault(pod.namespace, []).append(pod)
        views = {}
        for name, pods in groups.items():
            old = self._views.get(name)
            if old is not None and len(old.pods) == len(pods) and all(map(operator.is_, old.pods, pods)):
                views[name] = old
            else:
                views[name] = _namespace_pods(tuple(pods), desired.node_name)
        self._views = views
        labels = {}
        for name in views:
            namespace = desired.namespace(name)
            labels[name] = namespace.labels if namespace is not None else _NO_LABELS
        if labels.keys() != self._labels.keys() or any(labels[n] is not self._labels[n] for n in labels):
            self._matching = {}
        self._labels = labels

    def _namespaces_matching(self, selector: LabelSelector) -> tuple[str, ...]:
        names = self._matching.get(selector)
        if names is None:
            names = self._matching[selector] = tuple(n for n, labels in self._labels.items()
                                                     if selector.matches(labels))
        return names

    # sets

    def _realize(self, request: _SetRequest) -> str:
        """Put the set ``request`` describes into this compile's sets; returns its name."""
        if request.name not in self._sets:
            self._add_set(request.name, self._set_spec(request))
        return request.name

    def _add_set(self, name: str, spec: IPSetSpec) -> None:
        self._sets[name] = spec
        if self._on_set is not None:
            self._on_set(name, spec)

    def _set_spec(self, request: _SetRequest) -> IPSetSpec:
        if isinstance(request, _BlockSet):
            return IPSetSpec("hash:net", request.members)
        if isinstance(request, _NamedPortSet):
            namespaces: tuple[str, ...] = tuple(self._views)
        elif request.scope is not None:
            namespaces = (request.scope,)
        else:
            assert request.namespace_selector is not None
            namespaces = self._namespaces_matching(request.namespace_selector)
        views = tuple(self._views.get(name, _NO_PODS) for name in namespaces)
        spec = self._specs.get(request.name, views)
        if spec is not None:
            return spec  # type: ignore[no-any-return]
        if isinstance(request, _NamedPortSet):
            spec = IPSetSpec("hash:ip,port", frozenset().union(
                *(self._named_members(request, n, v) for n, v in zip(namespaces, views))))
        else:
            spec = IPSetSpec("hash:ip", frozenset().union(
                *(self._selected_ips(request.pod_selector, n, v) for n, v in zip(namespaces, views))))
        return self._specs.put(request.name, views, spec)  # type: ignore[no-any-return]

    def _named_members(self, request: _NamedPortSet, namespace: str, view: _NamespacePods) -> frozenset[str]:
        key = (request.port_name, request.protocol, namespace)
        members = self._named.get(key, (view,))
        if members is None:
            members = self._named.put(key, (view,), _named_port_members(view, request.port_name, request.protocol))
        return members  # type: ignore[no-any-return]

    def _selected_ips(self, selector: LabelSelector | None, namespace: str, view: _NamespacePods) -> frozenset[str]:
        """The IPv4s of ``namespace``'s peer pods that ``selector`` (None: all) matches."""
        ips = self._selected.get((selector, namespace), (view,))
        if ips is None:
            ips = self._selected.put((selector, namespace), (view,), frozenset(
                ip for labels, label_ips in view.peers_by_labels if selector is None or selector.matches(labels)
                for ip in label_ips))
        return ips  # type: ignore[no-any-return]

    # rules

    def _reject(self, log_prefix: str) -> list[str]:
        """Count (the jump's counter), log and reject."""
        rules = []
        if self.settings.nflog_group:
            prefix = f"kr-fw {log_prefix}"[:_NFLOG_PREFIX_MAX]
            rules.append(f"-m limit --limit {normalize_rate(self.settings.log_rate)} -j NFLOG "
                         f"--nflog-prefix {save_string(prefix)} --nflog-group {self.settings.nflog_group}")
        rules.append(f"-j {REJECT_CHAIN}")
        return rules

    def _policy_rules(self, policy: NetworkPolicy, direction: PolicyType) -> tuple[str, ...]:
        """The rules of ``policy``'s chain for ``direction``, its sets realized. The rules depend on the
        policy alone (sets are named by what defines them), so they are recomputed only when it changed."""
        key = (policy.key, direction)
        remembered = self._policies.get(key, (policy,))
        if remembered is None:
            remembered = self._policies.put(key, (policy,), _policy_rules(policy, direction, self._mark))
        rules, requests = remembered
        for request in requests:
            self._realize(request)
        return rules  # type: ignore[no-any-return]

    def _selected_local(self, policy: NetworkPolicy) -> tuple[Pod, ...]:
        view = self._views.get(policy.namespace, _NO_PODS)
        pods = self._selection.get(policy.key, (policy, view))
        if pods is None:
            pods = self._selection.put(policy.key, (policy, view), tuple(p for p in view.local if policy.selects(p)))
        return pods  # type: ignore[no-any-return]

    def _compile(self, desired: DesiredState) -> FirewallRuleset:
        self._group(desired)
        selecting: dict[tuple[PolicyType, str], list[NetworkPolicy]] = {}
        pods_by_key: dict[str, Pod] = {}
        for policy in desired.policies:
            for pod in self._selected_local(policy):
                pods_by_key[pod.key] = pod
                for direction in policy.policy_types:
                    selecting.setdefault((direction, pod.key), []).append(policy)

        policy_chains: dict[str, tuple[str, ...]] = {}
        pod_chains: dict[str, tuple[str, ...]] = {}
        dispatch: dict[PolicyType, list[str]] = {PolicyType.EGRESS: [], PolicyType.INGRESS: []}
        for (direction, key), policies in sorted(selecting.items()):
            pod = pods_by_key[key]
            rules = [f"-j MARK --set-xmark 0x0/{self.settings.mark:#x}"]
            for policy in sorted(policies, key=lambda p: p.key):
                chain = policy_chain(direction, policy)
                if chain not in policy_chains:
                    policy_chains[chain] = self._policy_rules(policy, direction)
                rules += [f"-j {chain}", f"-m mark --mark {self._mark} -j RETURN"]
            word = "ingress to" if direction is PolicyType.INGRESS else "egress from"
            rules += self._reject(f"{word} {pod.key}")
            name = pod_chain(direction, pod)
            pod_chains[name] = tuple(rules)
            flag = "-d" if direction is PolicyType.INGRESS else "-s"
            dispatch[direction] += [f"{flag} {ip}/32 -j {name}" for ip in ipv4s(pod)]

        self._add_set(KNOWN_SET, IPSetSpec("hash:ip", frozenset(
            ip for view in self._views.values() for pod in view.local for ip in ipv4s(pod))))
        cidrs = pod_cidrs(desired)
        top = ['-m conntrack --ctstate RELATED,ESTABLISHED -m comment --comment "kr: replies" -j RETURN']
        for cidr in cidrs:
            top += [f"-s {cidr} -m set ! --match-set {KNOWN_SET} src -j {_UNKNOWN_SRC}",
                    f"-d {cidr} -m addrtype ! --dst-type LOCAL -m set ! --match-set {KNOWN_SET} dst -j {_UNKNOWN_DST}"]
        top += dispatch[PolicyType.EGRESS] + dispatch[PolicyType.INGRESS]
        if pod_chains:
            top.append(f"-j MARK --set-xmark 0x0/{self.settings.mark:#x}")

        chains = {TOP_CHAIN: tuple(top)}
        if cidrs:
            chains[_UNKNOWN_SRC] = tuple(self._reject("from unknown pod"))
            chains[_UNKNOWN_DST] = tuple(self._reject("to unknown pod"))
        # A TCP reset for a packet that came over the bridge is sent straight back through the bridge,
        # past NAT, so a pod that connected through a service address would never see it: connections
        # whose destination was translated get an ICMP error instead, which conntrack translates back.
        chains[REJECT_CHAIN] = ("-p tcp -m conntrack ! --ctstate DNAT -j REJECT --reject-with tcp-reset",
                                "-j REJECT --reject-with icmp-port-unreachable")
        chains.update(sorted(pod_chains.items()))
        chains.update(sorted(policy_chains.items()))
        return FirewallRuleset(chains=chains, sets=dict(sorted(self._sets.items())), hooks=hooks())


def _policy_rules(policy: NetworkPolicy, direction: PolicyType, mark: str) -> tuple[tuple[str, ...], tuple[_SetRequest, ...]]:
    """``policy``'s chain for ``direction``: one MARK rule per (port, peer) pair of each rule, and the
    sets those rules match."""
    flag = "src" if direction is PolicyType.INGRESS else "dst"
    requests: dict[str, _SetRequest] = {}

    def use(request: _SetRequest) -> str:
        requests.setdefault(request.name, request)
        return request.name

    def peer_matches(rule: PolicyRule) -> list[str]:
        if not rule.peers:
            return [""]
        matches = []
        for peer in rule.peers:
            if peer.ip_block is not None:
                members = _block_members(peer.ip_block)
                if members is not None:
                    name = use(_BlockSet(f"{PREFIX}-B-{digest('B', members)}", frozenset(members)))
                    matches.append(f"-m set --match-set {name} {flag}")
            else:
                scope = policy.namespace if peer.namespace_selector is None else None
                name = f"{PREFIX}-S-{digest('S', scope, peer.pod_selector, peer.namespace_selector)}"
                use(_SelectorSet(name, scope, peer.pod_selector, peer.namespace_selector))
                matches.append(f"-m set --match-set {name} {flag}")
        return matches

    def port_match(port: PolicyPort) -> str:
        proto = port.protocol.value.lower()
        if port.port is None:
            return f"-p {proto}"
        if isinstance(port.port, str):
            name = use(_NamedPortSet(f"{PREFIX}-N-{digest('N', port.port, port.protocol)}", port.port, port.protocol))
            return f"-p {proto} -m set --match-set {name} dst,dst"
        if port.end_port is not None and port.end_port > port.port:
            return f"-p {proto} -m {proto} --dport {port.port}:{port.end_port}"
        return f"-p {proto} -m {proto} --dport {port.port}"

    lines = []
    for rule in policy.ingress if direction is PolicyType.INGRESS else policy.egress:
        ports = [port_match(port) for port in rule.ports] if rule.ports else [""]
        for port in ports:
            for peer in peer_matches(rule):
                match = " ".join(part for part in (port, peer) if part)
                lines.append(f"{match} -j MARK --set-xmark {mark}".lstrip())
    return tuple(dict.fromkeys(lines)), tuple(requests.values())


def pod_cidrs(desired: DesiredState) -> list[str]:
    """This node's IPv4 pod CIDRs (none while the Node is unknown)."""
    if desired.node is None:
        return []
    return [c for c in desired.node.pod_cidrs if ipaddress.ip_network(c, strict=False).version == 4]


_UNKNOWN_SRC = f"{PREFIX}-UNKNOWN-SRC"
_UNKNOWN_DST = f"{PREFIX}-UNKNOWN-DST"


def hooks() -> tuple[tuple[str, str], ...]:
    """The jumps into ``KR-FW``, as ``iptables-save`` prints them.

    INPUT skips loopback (the node talking to itself, also to its pod-CIDR gateway address); OUTPUT skips
    packets with a local source, which is all of the node's own traffic (kubelet probes and hostNetwork
    pods are allowed, as in kube-router). FORWARD has no such exemption, so a pod spoofing a node address
    gains nothing.
    """
    jump = f'-m comment --comment "{HOOK_COMMENT}" -j {TOP_CHAIN}'
    return (("INPUT", f"! -i lo {jump}"), ("FORWARD", jump), ("OUTPUT", f"-m addrtype ! --src-type LOCAL {jump}"))


def compile_firewall(desired: DesiredState, settings: FirewallSettings | None = None) -> FirewallRuleset:
    """kr's filter-table chains, sets and hooks enforcing ``desired.policies`` on ``desired.node_name``,
    computed from nothing (a backend keeps a ``FirewallCompiler`` to reuse what did not change)."""
    return FirewallCompiler(settings).compile(desired)


# --- helpers


def _net_text(net: ipaddress.IPv4Network) -> str:
    """A hash:net entry as ``ipset save`` prints it (a /32 without its length)."""
    return str(net.network_address) if net.prefixlen == 32 else str(net)


def _split_zero(net: ipaddress.IPv4Network) -> list[ipaddress.IPv4Network]:
    """hash:net refuses /0: cover it with its two halves."""
    return list(net.subnets(new_prefix=1)) if net.prefixlen == 0 else [net]


def _block_members(block: IPBlock) -> tuple[str, ...] | None:
    """hash:net members: the CIDR, then each except inside it as ``nomatch`` (the kernel tries longer
    prefixes first, so a more specific nomatch wins). None when the block holds no IPv4 address."""
    cidr = ipaddress.ip_network(block.cidr, strict=False)
    if cidr.version != 4:
        return None
    excepts = []
    for text in block.except_cidrs:
        net = ipaddress.ip_network(text, strict=False)
        if net.version == 4 and net.subnet_of(cidr):  # type: ignore[arg-type]
            if net == cidr:
                return None  # everything excepted
            excepts.append(net)
    entries = {(net, _net_text(net)) for net in _split_zero(cidr)}  # type: ignore[arg-type]
    entries |= {(net, f"{_net_text(net)} nomatch") for e in excepts for net in _split_zero(e)}
    # in address order (the order names the set, so it must not depend on how the block was written)
    return tuple(text for _, text in sorted(entries, key=lambda e: (int(e[0].network_address), e[0].prefixlen, e[1])))


# --- consistency


def check_consistency(ruleset: FirewallRuleset) -> None:
    """Raise ``InconsistentRuleset`` listing every problem: a jump to a chain neither defined nor a
    built-in target, a set matched but not defined, or a name that is not kr's or too long."""
    problems = []
    for name in ruleset.chains:
        if not name.startswith(PREFIX) or len(name) > MAX_CHAIN:
            problems.append(f"chain name {name!r} is not KR-FW* within {MAX_CHAIN} characters")
    for name in ruleset.sets:
        if not name.startswith(PREFIX) or len(name) > MAX_SET:
            problems.append(f"set name {name!r} is not KR-FW* within {MAX_SET} characters")
    lines = [(chain, rule) for chain, rules in ruleset.chains.items() for rule in rules]
    lines += list(ruleset.hooks)
    for chain, rule in lines:
        for kind, name in referenced(rule):
            if kind == "chain" and name not in ruleset.chains and name not in BUILTIN_TARGETS:
                problems.append(f"{chain}: jumps to undefined chain {name}: {rule}")
            if kind == "set" and name not in ruleset.sets:
                problems.append(f"{chain}: matches undefined set {name}: {rule}")
    for chain, rule in ruleset.hooks:
        if chain not in HOOK_CHAINS:
            problems.append(f"hook into {chain}, which is not one of {HOOK_CHAINS}")
        if TOP_CHAIN not in dict(referenced(rule)).get("chain", ""):
            problems.append(f"hook in {chain} does not jump to {TOP_CHAIN}: {rule}")
    if problems:
        raise InconsistentRuleset("; ".join(problems))
