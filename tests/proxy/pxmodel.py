"""Small builders for the proxy tests: Kubernetes API objects (JSON as the API server sends it), the
desired state ``kr_core.desired`` builds from them for node ``node-a`` (pod CIDR 10.244.1.0/24), and
the rendered ruleset as ``iptables-restore`` text (which is also the golden files' format).
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping
from typing import Any

from kr_core.desired import build_desired_state
from kr_core.model import DesiredState
from kr_plugins.proxy.rules import ProxyRuleset

NODE, OTHER, THIRD = "node-a", "node-b", "node-c"
POD_CIDR = "10.244.1.0/24"
KINDS = {"Node": "nodes", "Service": "services", "EndpointSlice": "endpointslices"}

Obj = dict[str, Any]


def node(name: str = NODE, cidrs: Iterable[str] = (POD_CIDR,), ip: str = "192.168.60.11") -> Obj:
    cidrs = list(cidrs)
    spec: Obj = {"podCIDR": cidrs[0], "podCIDRs": cidrs} if cidrs else {}
    return {"kind": "Node", "metadata": {"name": name}, "spec": spec,
            "status": {"addresses": [{"type": "InternalIP", "address": ip}]}}


def port(number: int, name: str = "", protocol: str = "TCP", target: int | str | None = None,
         node_port: int | None = None) -> Obj:
    entry: Obj = {"protocol": protocol, "port": number, "targetPort": number if target is None else target}
    if name:
        entry["name"] = name
    if node_port is not None:
        entry["nodePort"] = node_port
    return entry


def service(name: str, cluster_ip: str | list[str], ports: Iterable[Obj], namespace: str = "default",
            type: str = "ClusterIP", external_ips: Iterable[str] = (), lb_ips: Iterable[str] = (),
            source_ranges: Iterable[str] = (), etp: str | None = None, itp: str | None = None,
            affinity_timeout: int | None = None, health_port: int | None = None) -> Obj:
    """A Service; ``affinity_timeout`` set means ClientIP affinity with that timeout."""
    ips = [cluster_ip] if isinstance(cluster_ip, str) else list(cluster_ip)
    spec: Obj = {"type": type, "clusterIP": ips[0], "clusterIPs": ips, "ports": list(ports)}
    if external_ips:
        spec["externalIPs"] = list(external_ips)
    if source_ranges:
        spec["loadBalancerSourceRanges"] = list(source_ranges)
    if etp:
        spec["externalTrafficPolicy"] = etp
    if itp:
        spec["internalTrafficPolicy"] = itp
    if affinity_timeout is not None:
        spec["sessionAffinity"] = "ClientIP"
        spec["sessionAffinityConfig"] = {"clientIP": {"timeoutSeconds": affinity_timeout}}
    if health_port is not None:
        spec["healthCheckNodePort"] = health_port
    obj: Obj = {"kind": "Service", "metadata": {"name": name, "namespace": namespace}, "spec": spec}
    if lb_ips:
        obj["status"] = {"loadBalancer": {"ingress": [{"ip": ip} for ip in lb_ips]}}
    return obj


def endpoint(address: str, node_name: str | None = OTHER, ready: bool | None = True, serving: bool | None = None,
             terminating: bool | None = None) -> Obj:
    conditions = {k: v for k, v in (("ready", ready), ("serving", serving), ("terminating", terminating))
                  if v is not None}
    entry: Obj = {"addresses": [address], "conditions": conditions}
    if node_name is not None:
        entry["nodeName"] = node_name
    return entry


def endpoint_slice(service_name: str, name: str, ports: Iterable[tuple[str, str, int]], endpoints: Iterable[Obj],
                   namespace: str = "default", address_type: str = "IPv4") -> Obj:
    """An EndpointSlice of ``service_name``; ``ports`` are (name, protocol, number)."""
    return {"kind": "EndpointSlice",
            "metadata": {"name": name, "namespace": namespace,
                         "labels": {"kubernetes.io/service-name": service_name}},
            "addressType": address_type,
            "ports": [{"name": n, "protocol": p, "port": number} for n, p, number in ports],
            "endpoints": list(endpoints)}


def key_of(obj: Mapping[str, Any]) -> str:
    meta = obj["metadata"]
    return f"{meta['namespace']}/{meta['name']}" if "namespace" in meta else meta["name"]


def snapshot(objects: Iterable[Mapping[str, Any]]) -> dict[str, dict[str, Mapping[str, Any]]]:
    """kind -> key -> object; every object is a fresh copy (the agent's cache never mutates objects)."""
    snap: dict[str, dict[str, Mapping[str, Any]]] = {kind: {} for kind in KINDS.values()}
    for obj in objects:
        snap[KINDS[obj["kind"]]][key_of(obj)] = copy.deepcopy(dict(obj))
    return snap


def desired(objects: Iterable[Mapping[str, Any]], node_name: str = NODE) -> DesiredState:
    return build_desired_state(snapshot(objects), node_name)


def describe(ruleset: ProxyRuleset) -> str:
    """The ruleset as ``iptables-restore --noflush`` input: its ipsets as comment lines (``# ipset``
    followed by ``ipset restore`` input, see ``golden_sets``), then per table, every chain declared,
    then its rules, then the hooks inserted first in their built-in chains."""
    out = []
    for name, spec in ruleset.sets.items():
        out.append(f"# ipset create {name} {spec.type}")
        out += [f"# ipset add {name} {member}" for member in sorted(spec.members)]
    for table, chains in ruleset.tables.items():
        out.append(f"*{table}")
        out += [f":{name} - [0:0]" for name in chains]
        out += [f"-A {name} {rule}" for name, rules in chains.items() for rule in rules]
        out += [f"-I {chain} 1 {spec}" for chain, spec in ruleset.hooks[table]]
        out.append("COMMIT")
    return "\n".join(out) + "\n"


def golden_sets(text: str) -> dict[str, tuple[str, list[str]]]:
    """The ipsets a ``describe`` text declares: name -> (type, members)."""
    sets: dict[str, tuple[str, list[str]]] = {}
    for line in text.splitlines():
        if line.startswith("# ipset create "):
            name, set_type = line.split()[3:5]
            sets[name] = (set_type, [])
        elif line.startswith("# ipset add "):
            name, member = line.split()[3:5]
            sets[name][1].append(member)
    return sets


def parse_restore(text: str) -> tuple[dict[str, dict[str, list[str]]], dict[str, list[tuple[str, str]]]]:
    """The inverse of ``describe``: table -> chain -> rules, and table -> hooks."""
    tables: dict[str, dict[str, list[str]]] = {}
    hooks: dict[str, list[tuple[str, str]]] = {}
    table = ""
    for line in text.splitlines():
        if line.startswith("*"):
            table = line[1:]
            tables[table], hooks[table] = {}, []
        elif line.startswith(":"):
            tables[table][line[1:].split(" ", 1)[0]] = []
        elif line.startswith("-A "):
            chain, _, spec = line[3:].partition(" ")
            tables[table][chain].append(spec)
        elif line.startswith("-I "):
            chain, _, rest = line[3:].partition(" ")
            hooks[table].append((chain, rest.split(" ", 1)[1]))
    return tables, hooks


def saved_chains(save_text: str, prefix: str = "KR-PX-") -> tuple[dict[str, list[str]], dict[str, list[str]]]:
    """From one table's ``iptables-save``: the chains named ``prefix``* with their rules, and every
    other chain's rules (for hooks and foreign rules)."""
    own: dict[str, list[str]] = {}
    other: dict[str, list[str]] = {}
    for line in save_text.splitlines():
        if line.startswith(":"):
            name = line[1:].split(" ", 1)[0]
            (own if name.startswith(prefix) else other)[name] = []
        elif line.startswith("-A "):
            chain, _, spec = line[3:].partition(" ")
            (own if chain.startswith(prefix) else other).setdefault(chain, []).append(spec)
    return own, other
