"""Compile NetworkPolicies into filter-table chains and ipsets: the pure half of ``firewall.iptables``.

``compile_firewall(desired, settings)`` returns a ``FirewallRuleset``: kr's chains (rule specs without
``-A NAME``), the sets they match and the hook rules that jump into ``KR-FW``. Nothing here touches the
kernel. See docs/firewall.md for the layout and why it is shaped so.

Invariants:
- every chain and set name starts with ``KR-FW`` and fits the kernel (chain <= 28, set <= 27 characters,
  leaving room for ipset's ``-tmp`` swap suffix); names are derived by hashing what defines the object, so
  they are stable across syncs and processes;
- rule specs are written in the exact form ``iptables-save`` prints them (both flavours), so the apply
  layer can compare what the kernel holds with what is wanted by string equality;
- set members are written as ``ipset save`` prints them, sorted;
- a chain's rules depend only on what defines it: a policy chain only on its policy (peer and named-port
  sets are named by their content, not by pods), a pod chain only on the policies selecting the pod, so a
  pod's label or IP change rewrites set members and the top chain's dispatch, never policy chains;
- only pods of this node (``pod.node_name == desired.node_name``) get pod chains, and only for a direction
  some policy selects them in; hostNetwork pods are never selected and never peers; IPv4 only.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import re
import shlex
import socket
from collections.abc import Hashable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from kr_core.model import (
    DesiredState,
    IPBlock,
    LabelSelector,
    NetworkPolicy,
    Pod,
    PolicyPeer,
    PolicyPort,
    PolicyRule,
    PolicyType,
    Protocol,
    to_jsonable,
)

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
class IPSetSpec:
    type: str
    members: tuple[str, ...] = ()


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


def digest(*parts: object) -> str:
    """16 hex digits identifying ``parts`` (64 bits: collisions are not a practical concern)."""
    text = json.dumps([to_jsonable(p) for p in parts], sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16].upper()


def pod_chain(direction: PolicyType, pod: Pod) -> str:
    return f"{PREFIX}-{'I' if direction is PolicyType.INGRESS else 'E'}-{digest(pod.namespace, pod.name)}"


def policy_chain(direction: PolicyType, policy: NetworkPolicy) -> str:
    return f"{PREFIX}-P-{digest(policy.namespace, policy.name)}-{'I' if direction is PolicyType.INGRESS else 'E'}"


def ipv4s(pod: Pod) -> tuple[str, ...]:
    return tuple(ip for ip in pod.ips if ":" not in ip)


def _quote(text: str) -> str:
    """Quote as ``iptables-save`` does (kr's texts contain no quotes or backslashes)."""
    return f'"{text}"' if re.search(r"[\s\"'\\]", text) else text


def _mark(bit: int) -> str:
    return f"{bit:#x}/{bit:#x}"


# --- the compile step


class _Compiler:
    """One compile. The indexes built here are derived from ``desired`` alone and live only as long as
    the compile, so the module stays pure: they change how fast a set is found, never what it holds."""

    def __init__(self, desired: DesiredState, settings: FirewallSettings) -> None:
        self.desired = desired
        self.settings = settings
        self.sets: dict[str, IPSetSpec] = {}
        self.chains: dict[str, tuple[str, ...]] = {}
        # pods that can be peers or named-port destinations: not hostNetwork, with an IPv4 address
        self.peer_pods = [p for p in desired.pods if not p.host_network and ipv4s(p)]
        self.local_pods = [p for p in self.peer_pods if p.node_name == desired.node_name]
        self.mark = _mark(settings.mark)
        # peer pods by namespace, and the labels a namespace selector sees for each such namespace (a
        # namespace missing from the state has none, so only an empty selector matches its pods)
        self.pods_by_namespace: dict[str, list[Pod]] = {}
        for pod in self.peer_pods:
            self.pods_by_namespace.setdefault(pod.namespace, []).append(pod)
        self.namespace_labels: dict[str, Mapping[str, str]] = {}
        for name in self.pods_by_namespace:
            namespace = desired.namespace(name)
            self.namespace_labels[name] = namespace.labels if namespace is not None else {}
        self.local_pods_by_namespace: dict[str, list[Pod]] = {}
        for pod in self.local_pods:
            self.local_pods_by_namespace.setdefault(pod.namespace, []).append(pod)
        # (port name, protocol) -> (pod, port) for every peer pod declaring it; a pod's first declaration
        # of a (name, protocol) wins, as in Kubernetes
        self.named_ports: dict[tuple[str, Protocol], list[tuple[Pod, int]]] = {}
        for pod in self.peer_pods:
            seen: set[tuple[str, Protocol]] = set()
            for named in pod.named_ports:
                key = (named.name, named.protocol)
                if key not in seen:
                    seen.add(key)
                    self.named_ports.setdefault(key, []).append((pod, named.port))
        self._namespaces_matching: dict[LabelSelector, list[str]] = {}
        self._member_keys: dict[str, tuple[int, int, str]] = {}

    # sets

    def _add_set(self, name: str, set_type: str, members: Iterable[str]) -> str:
        self.sets[name] = self._spec(set_type, members)
        return name

    def _spec(self, set_type: str, members: Iterable[str]) -> IPSetSpec:
        return IPSetSpec(set_type, tuple(sorted(set(members), key=self.member_key)))

    def member_key(self, member: str) -> tuple[int, int, str]:
        """``member_key``, memoized per compile (a pod's IP is a member of many sets)."""
        key = self._member_keys.get(member)
        if key is None:
            key = self._member_keys[member] = member_key(member)
        return key

    def namespaces_matching(self, selector: LabelSelector) -> list[str]:
        """The namespaces of peer pods whose labels ``selector`` matches (memoized per compile)."""
        names = self._namespaces_matching.get(selector)
        if names is None:
            names = [n for n, labels in self.namespace_labels.items() if selector.matches(labels)]
            self._namespaces_matching[selector] = names
        return names

    def selector_set(self, policy: NetworkPolicy, peer: PolicyPeer) -> str:
        """The pods ``peer`` selects (``PolicyPeer.selects_pod``), found through the namespace index: a
        peer without a namespace selector looks only at the policy's namespace, one with it only at the
        namespaces it matches."""
        scope = policy.namespace if peer.namespace_selector is None else None
        name = f"{PREFIX}-S-{digest('S', scope, peer.pod_selector, peer.namespace_selector)}"
        if name not in self.sets:
            if peer.namespace_selector is None:
                namespaces = [policy.namespace]
            else:
                namespaces = self.namespaces_matching(peer.namespace_selector)
            inputs = tuple(pod for namespace in namespaces for pod in self.pods_by_namespace.get(namespace, ()))
            spec = _MEMO.get(name, inputs)
            if spec is None:
                members = [ip for namespace in namespaces for ip in self.selected_ips(peer.pod_selector, namespace)]
                spec = _MEMO.put(name, inputs, self._spec("hash:ip", members))
            self.sets[name] = spec
        return name

    def selected_ips(self, selector: LabelSelector | None, namespace: str) -> tuple[str, ...]:
        """The IPs of ``namespace``'s pods that ``selector`` (None: all) matches, remembered per namespace,
        so a set spanning many namespaces re-examines only those whose pods changed."""
        pods = tuple(self.pods_by_namespace.get(namespace, ()))
        key = ("S", selector, namespace)
        ips = _MEMO.get(key, pods)
        if ips is None:
            ips = _MEMO.put(key, pods, tuple(ip for pod in pods if selector is None or selector.matches(pod.labels)
                                             for ip in ipv4s(pod)))
        return ips

    def block_set(self, block: IPBlock) -> str | None:
        """A hash:net set for ``block`` (its excepts as nomatch entries), or None if it holds no IPv4."""
        members = _block_members(block)
        if members is None:
            return None
        name = f"{PREFIX}-B-{digest('B', members)}"
        return self._add_set(name, "hash:net", members)

    def named_port_set(self, name: str, protocol: Protocol) -> str:
        """Every pod's (IP, resolved port) for ``name``: matched ``dst,dst``, the destination resolves it."""
        set_name = f"{PREFIX}-N-{digest('N', name, protocol)}"
        if set_name not in self.sets:
            entries = self.named_ports.get((name, protocol), [])
            inputs = tuple(pod for pod, _ in entries)
            spec = _MEMO.get(set_name, inputs)
            if spec is None:
                proto = protocol.value.lower()
                members = [f"{ip},{proto}:{port}" for pod, port in entries for ip in ipv4s(pod)]
                spec = _MEMO.put(set_name, inputs, self._spec("hash:ip,port", members))
            self.sets[set_name] = spec
        return set_name

    # rules

    def reject(self, log_prefix: str) -> list[str]:
        """Count (the jump's counter), log and reject."""
        rules = []
        if self.settings.nflog_group:
            prefix = f"kr-fw {log_prefix}"[:_NFLOG_PREFIX_MAX]
            rules.append(f"-m limit --limit {normalize_rate(self.settings.log_rate)} -j NFLOG "
                         f"--nflog-prefix {_quote(prefix)} --nflog-group {self.settings.nflog_group}")
        rules.append(f"-j {REJECT_CHAIN}")
        return rules

    def peer_matches(self, policy: NetworkPolicy, rule: PolicyRule, flag: str) -> list[str]:
        if not rule.peers:
            return [""]
        matches = []
        for peer in rule.peers:
            if peer.ip_block is not None:
                name = self.block_set(peer.ip_block)
                if name is not None:
                    matches.append(f"-m set --match-set {name} {flag}")
            else:
                matches.append(f"-m set --match-set {self.selector_set(policy, peer)} {flag}")
        return matches

    def port_matches(self, rule: PolicyRule) -> list[str]:
        if not rule.ports:
            return [""]
        return [self.port_match(port) for port in rule.ports]

    def port_match(self, port: PolicyPort) -> str:
        proto = port.protocol.value.lower()
        if port.port is None:
            return f"-p {proto}"
        if isinstance(port.port, str):
            return f"-p {proto} -m set --match-set {self.named_port_set(port.port, port.protocol)} dst,dst"
        if port.end_port is not None and port.end_port > port.port:
            return f"-p {proto} -m {proto} --dport {port.port}:{port.end_port}"
        return f"-p {proto} -m {proto} --dport {port.port}"

    def policy_rules(self, policy: NetworkPolicy, direction: PolicyType) -> tuple[str, ...]:
        flag = "src" if direction is PolicyType.INGRESS else "dst"
        rules = policy.ingress if direction is PolicyType.INGRESS else policy.egress
        lines = []
        for rule in rules:
            for port in self.port_matches(rule):
                for peer in self.peer_matches(policy, rule, flag):
                    match = " ".join(part for part in (port, peer) if part)
                    lines.append(f"{match} -j MARK --set-xmark {self.mark}".lstrip())
        return tuple(dict.fromkeys(lines))

    def compile(self) -> FirewallRuleset:
        selecting: dict[tuple[PolicyType, str], list[NetworkPolicy]] = {}
        pods_by_key = {p.key: p for p in self.local_pods}
        for policy in self.desired.policies:
            for direction in policy.policy_types:
                for pod in self.local_pods_by_namespace.get(policy.namespace, ()):
                    if policy.selects(pod):
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
                    policy_chains[chain] = self.policy_rules(policy, direction)
                rules += [f"-j {chain}", f"-m mark --mark {self.mark} -j RETURN"]
            word = "ingress to" if direction is PolicyType.INGRESS else "egress from"
            rules += self.reject(f"{word} {pod.key}")
            name = pod_chain(direction, pod)
            pod_chains[name] = tuple(rules)
            flag = "-d" if direction is PolicyType.INGRESS else "-s"
            dispatch[direction] += [f"{flag} {ip}/32 -j {name}" for ip in ipv4s(pod)]

        known = self._add_set(KNOWN_SET, "hash:ip", (ip for p in self.local_pods for ip in ipv4s(p)))
        top = ['-m conntrack --ctstate RELATED,ESTABLISHED -m comment --comment "kr: replies" -j RETURN']
        for cidr in self.pod_cidrs():
            top += [f"-s {cidr} -m set ! --match-set {known} src -j {_UNKNOWN_SRC}",
                    f"-d {cidr} -m addrtype ! --dst-type LOCAL -m set ! --match-set {known} dst -j {_UNKNOWN_DST}"]
        top += dispatch[PolicyType.EGRESS] + dispatch[PolicyType.INGRESS]
        if pod_chains:
            top.append(f"-j MARK --set-xmark 0x0/{self.settings.mark:#x}")

        chains = {TOP_CHAIN: tuple(top)}
        if self.pod_cidrs():
            chains[_UNKNOWN_SRC] = tuple(self.reject("from unknown pod"))
            chains[_UNKNOWN_DST] = tuple(self.reject("to unknown pod"))
        chains[REJECT_CHAIN] = ("-p tcp -j REJECT --reject-with tcp-reset",
                                "-j REJECT --reject-with icmp-port-unreachable")
        chains.update(sorted(pod_chains.items()))
        chains.update(sorted(policy_chains.items()))
        return FirewallRuleset(chains=chains, sets=dict(sorted(self.sets.items())), hooks=hooks())

    def pod_cidrs(self) -> list[str]:
        node = self.desired.node
        if node is None:
            return []
        return [c for c in node.pod_cidrs if ipaddress.ip_network(c, strict=False).version == 4]


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


class _SetMemo:
    """Pod-derived results kept from one compile to the next: each set's spec, and each (selector,
    namespace) pair's matching IPs.

    Such a result is a function of its key (which encodes the selector or port name) and of the pods it
    looks at, in order. The desired-state builder hands back the very same (frozen) ``Pod`` object for a
    pod that did not change, so when a result looks at the same pod objects as last time it is reused: a
    compile costs in proportion to the namespaces whose pods changed, and its output is exactly what a
    fresh compile gives. Results not used by a compile are dropped after it.
    """

    def __init__(self) -> None:
        self._entries: dict[Hashable, tuple[tuple[Pod, ...], Any]] = {}
        self._used: dict[Hashable, tuple[tuple[Pod, ...], Any]] = {}

    def get(self, key: Hashable, inputs: tuple[Pod, ...]) -> Any:
        entry = self._entries.get(key)
        if entry is None or len(entry[0]) != len(inputs) or any(a is not b for a, b in zip(entry[0], inputs)):
            return None
        self._used[key] = entry
        return entry[1]

    def put(self, key: Hashable, inputs: tuple[Pod, ...], value: Any) -> Any:
        self._used[key] = (inputs, value)
        return value

    def finish(self) -> None:
        self._entries, self._used = self._used, {}


_MEMO = _SetMemo()


def compile_firewall(desired: DesiredState, settings: FirewallSettings | None = None) -> FirewallRuleset:
    """kr's filter-table chains, sets and hooks enforcing ``desired.policies`` on ``desired.node_name``."""
    try:
        return _Compiler(desired, settings or FirewallSettings()).compile()
    finally:
        _MEMO.finish()


# --- helpers


_PREFIX_LENGTHS = {"": 32, **{str(n): n for n in range(33)}}


def member_key(member: str) -> tuple[int, int, str]:
    """Members in address order, then prefix length, then text (ports, nomatch).

    The key is ``(network address as int, prefix length, member)`` exactly as
    ``ipaddress.ip_network(address, strict=False)`` gives it, computed without ``ipaddress`` when the
    address is a canonical dotted quad (as kr writes and ``ipset save`` prints); anything else (IPv6, odd
    spellings) takes the ``ipaddress`` path, with its errors.
    """
    address, _, length = member.split(",", 1)[0].split(" ", 1)[0].partition("/")
    prefix = _PREFIX_LENGTHS.get(length)
    if prefix is not None:
        try:
            packed = socket.inet_aton(address)
        except OSError:
            packed = b""
        if packed and socket.inet_ntoa(packed) == address:
            host_bits = 32 - prefix
            return (int.from_bytes(packed, "big") >> host_bits << host_bits, prefix, member)
    net = ipaddress.ip_network(member.split(",")[0].split(" ")[0], strict=False)
    return (int(net.network_address), net.prefixlen, member)


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
    members = [_net_text(n) for n in _split_zero(cidr)]  # type: ignore[arg-type]
    members += [f"{_net_text(n)} nomatch" for e in excepts for n in _split_zero(e)]
    return tuple(sorted(set(members), key=member_key))


# --- consistency


#: A shell word of a rule without single quotes or backslashes: unquoted runs and "..." runs, joined.
_WORD = re.compile(r'(?:[^ \t\r\n"]+|"[^"]*")+')


def _words(rule: str) -> list[str]:
    """``shlex.split(rule)``; rules as this module writes them (double quotes only, balanced, no
    backslashes) are split with one regex, anything else goes through ``shlex`` with its errors."""
    if "'" in rule or "\\" in rule or rule.count('"') % 2:
        return shlex.split(rule)
    words = _WORD.findall(rule)
    return [w.replace('"', "") for w in words] if '"' in rule else words


def referenced(rule: str) -> Iterator[tuple[str, str]]:
    """("chain", name) for each jump/goto target and ("set", name) for each set ``rule`` names."""
    words = _words(rule)
    for index, word in enumerate(words[:-1]):
        if word in ("-j", "-g", "--jump", "--goto"):
            yield "chain", words[index + 1]
        elif word == "--match-set":
            yield "set", words[index + 1]


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
