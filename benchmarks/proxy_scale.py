#!/usr/bin/env python
"""Scale benchmark of the ``proxy.iptables`` (default) or ``proxy.ipvs`` backend (kube-proxy's 10,000 services
x 10 endpoints).

Generates Nodes, Services and their EndpointSlices, serves them from the API stand-in
(``python -m kr_apiserver``) inside a network namespace this script creates, runs the real agent
(``kr run --plugins proxy.iptables``, or ``--backend proxy.ipvs``) in the same namespace, and measures:

- the first full sync (agent log ``sync full ok in X ms`` and /metrics),
- the floor: ``ipset restore`` of the same KR-PX sets plus ``iptables-<flavour>-restore --noflush`` of the
  same KR-PX chains and hook jumps (dumped from the agent's namespace after its first sync) into an empty
  fresh namespace (median of --floor-runs); none for ``proxy.ipvs`` (``NO_FLOOR`` says why),
- latency from API writes (a new Service and its EndpointSlice; one endpoint of a slice turning not
  ready; one endpoint's address changing) to the agent's /healthz ``syncedResourceVersions`` reaching
  the writes' resourceVersions (polled every 1 ms),
- what each partial sync wrote (the backend's debug line: chains and restore lines for ``proxy.iptables``,
  virtual services and sets for ``proxy.ipvs``), partial-sync durations, and the agent's peak RSS (VmHWM).

The helpers shared with the firewall benchmark (HTTP, /healthz, percentiles, process and namespace
handling) are imported from ``firewall_scale``. Only namespaces this script creates (``krbench-XXXX*``)
are touched; all are deleted on exit, and all traffic stays on their loopback. Usage (root):

    .venv/bin/python benchmarks/proxy_scale.py --json /tmp/px.json
    .venv/bin/python benchmarks/proxy_scale.py --services 1000 --changes 10     # quick
    .venv/bin/python benchmarks/proxy_scale.py --profile                        # offline, no kernel

``proxy.ipvs`` needs a kernel with IPVS: ``benchmarks/proxy_ipvs_guest.py`` runs this script with
``--backend proxy.ipvs`` in the UML guest kernel.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import ipaddress
import json
import math
import os
import pstats
import random
import re
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from firewall_scale import (  # importing it also puts the repository on sys.path
    API_PORT,
    HEALTHZ_PORT,
    METRICS_PORT,
    NODE,
    REPO,
    SYNC_LINE,
    healthz,
    http,
    in_ns,
    make_node,
    pct,
    report,
    run_cmd,
    snapshot_of,
    stop_process,
    vm_status,
)

from kr_lab import netns as labns
from kr_plugins.kernel.iptables import table_lines

IPTABLES, IPVS = "proxy.iptables", "proxy.ipvs"
NO_FLOOR = {IPVS: "no floor for proxy.ipvs: no tool loads IPVS services in bulk here (ipvsadm is not installed)"}
#: Where pods get addresses: each node a block of this range big enough for its endpoints.
POD_RANGE = ipaddress.IPv4Network("10.128.0.0/9")
EXTERNAL_RANGE = ipaddress.IPv4Network("198.51.100.0/24")
NODE_PORT_FIRST = 30000
NODE_PORT_LAST = 32767

# ---------------------------------------------------------------- object generation


def port_shape(rng: random.Random) -> list[dict[str, Any]]:
    """A service's ports (name, protocol, port, targetPort): TCP mostly, some UDP, some two ports."""
    r = rng.random()
    if r < 0.55:
        return [{"name": "http", "protocol": "TCP", "port": 80, "targetPort": 8080}]
    if r < 0.70:
        return [{"name": "", "protocol": "TCP", "port": rng.choice([443, 8080, 9090, 5432, 6379]),
                 "targetPort": rng.choice([8443, 8080, 9090, 5432, 6379])}]
    if r < 0.80:
        return [{"name": "grpc", "protocol": "TCP", "port": 50051, "targetPort": 50051}]
    if r < 0.90:
        return [{"name": "http", "protocol": "TCP", "port": 80, "targetPort": 8080},
                {"name": "https", "protocol": "TCP", "port": 443, "targetPort": 8443}]
    if r < 0.95:
        return [{"name": "statsd", "protocol": "UDP", "port": 8125, "targetPort": 8125}]
    return [{"name": "dns", "protocol": "UDP", "port": 53, "targetPort": 5353},
            {"name": "dns-tcp", "protocol": "TCP", "port": 53, "targetPort": 5353}]


def _slice_ports(ports: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The slice's ports as the EndpointSlice controller writes them (an unnamed port has name "")."""
    return [{"name": p["name"], "protocol": p["protocol"], "port": p["targetPort"]} for p in ports]


class Plan:
    """Deterministic addresses: ClusterIPs drawn from --service-cidr, node pod blocks, endpoint IPs."""

    def __init__(self, args: argparse.Namespace, rng: random.Random) -> None:
        self.args = args
        cidr = ipaddress.IPv4Network(args.service_cidr)
        extra = args.changes + 16
        wanted = args.services + extra
        if wanted > cidr.num_addresses - 2:
            raise SystemExit(f"--service-cidr {cidr} has no room for {wanted} ClusterIPs")
        offsets = rng.sample(range(1, cidr.num_addresses - 1), wanted)
        self.cluster_ips = [str(cidr.network_address + o) for o in offsets]
        # endpoints to nodes: each service's endpoints on distinct nodes where it can (like a spread
        # Deployment), each node a pod block sized for what lands on it
        per_service = args.endpoints_per_service
        self.placement: list[list[int]] = []
        counts = [0] * args.nodes
        for _ in range(args.services + extra):
            if per_service <= args.nodes:
                nodes = rng.sample(range(args.nodes), per_service)
            else:
                nodes = [rng.randrange(args.nodes) for _ in range(per_service)]
            for n in nodes:
                counts[n] += 1
            self.placement.append(nodes)
        need = max(counts) + args.changes + 3  # room for moved endpoints; network, .1, broadcast
        self.prefix = min(24, 32 - math.ceil(math.log2(need)))
        block = 2 ** (32 - self.prefix)
        if block * args.nodes > POD_RANGE.num_addresses:
            raise SystemExit("too many endpoints per node for the pod range")
        self.node_cidrs = [ipaddress.IPv4Network((int(POD_RANGE.network_address) + n * block, self.prefix))
                           for n in range(args.nodes)]
        self._next_host = [2] * args.nodes

    def pod_ip(self, node: int) -> str:
        host = self._next_host[node]
        self._next_host[node] += 1
        return str(self.node_cidrs[node].network_address + host)


def node_name(index: int) -> str:
    return NODE if index == 0 else f"node-{index:03d}"


def make_service(i: int, namespace: str, cluster_ip: str, ports: list[dict[str, Any]], rng: random.Random,
                 node_ports: list[int], shape: str | None = None) -> dict[str, Any]:
    """A ClusterIP service mostly; ``shape`` (or chance) makes it NodePort, externalIPs, ClientIP affinity,
    NodePort with externalTrafficPolicy Local."""
    name = f"svc-{i:05d}"
    spec: dict[str, Any] = {
        "type": "ClusterIP", "clusterIP": cluster_ip, "clusterIPs": [cluster_ip],
        "ipFamilies": ["IPv4"], "ipFamilyPolicy": "SingleStack", "selector": {"app": name},
        "sessionAffinity": "None", "internalTrafficPolicy": "Cluster",
        "ports": [{k: v for k, v in p.items() if k != "name" or v} for p in ports],
    }
    if shape is None:
        r = rng.random()
        shape = ("nodeport-local" if r < 0.01 else "nodeport" if r < 0.05 else "external-ip" if r < 0.07
                 else "affinity" if r < 0.09 else "cluster-ip")
    if shape.startswith("nodeport"):
        spec["type"] = "NodePort"
        spec["externalTrafficPolicy"] = "Local" if shape == "nodeport-local" else "Cluster"
        for p in spec["ports"]:
            p["nodePort"] = node_ports.pop()
    elif shape == "external-ip":
        spec["externalIPs"] = [str(EXTERNAL_RANGE.network_address + 1 + i % 250)]
    elif shape == "affinity":
        spec["sessionAffinity"] = "ClientIP"
        spec["sessionAffinityConfig"] = {"clientIP": {"timeoutSeconds": 10800}}
    return {"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": name, "namespace": namespace, "labels": {"app": name}},
            "spec": spec}


def make_slice(service: dict[str, Any], ports: list[dict[str, Any]], nodes: list[int],
               plan: Plan) -> dict[str, Any]:
    meta = service["metadata"]
    endpoints = []
    for k, n in enumerate(nodes):
        endpoints.append({
            "addresses": [plan.pod_ip(n)],
            "conditions": {"ready": True, "serving": True, "terminating": False},
            "nodeName": node_name(n),
            "targetRef": {"kind": "Pod", "namespace": meta["namespace"], "name": f"{meta['name']}-{k:02d}"},
        })
    return {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": f"{meta['name']}-abcde", "namespace": meta["namespace"],
                         "labels": {"kubernetes.io/service-name": meta["name"],
                                    "endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io"}},
            "addressType": "IPv4", "ports": _slice_ports(ports), "endpoints": endpoints}


def generate(args: argparse.Namespace) -> tuple[dict[str, list[dict[str, Any]]], dict[str, list[dict[str, Any]]], Plan]:
    """(objects to seed, spare services and slices for the 'service add' series, the address plan)."""
    rng = random.Random(args.seed)
    plan = Plan(args, rng)
    namespaces = [f"ns-{i:03d}" for i in range(args.namespaces)]
    nodes = []
    for i in range(args.nodes):
        node = make_node(i)
        node["metadata"]["name"] = node["metadata"]["labels"]["kubernetes.io/hostname"] = node_name(i)
        node["spec"] = {"podCIDR": str(plan.node_cidrs[i]), "podCIDRs": [str(plan.node_cidrs[i])]}
        nodes.append(node)
    node_ports = list(range(NODE_PORT_LAST, NODE_PORT_FIRST - 1, -1))
    services, slices = [], []
    for i in range(args.services + args.changes):
        ports = port_shape(rng)
        shape = "cluster-ip" if i >= args.services else None
        service = make_service(i, namespaces[i % len(namespaces)], plan.cluster_ips[i], ports, rng, node_ports,
                               shape)
        services.append(service)
        slices.append(make_slice(service, ports, plan.placement[i], plan))
    seeded = {"namespaces": [{"apiVersion": "v1", "kind": "Namespace",
                              "metadata": {"name": n, "labels": {"kubernetes.io/metadata.name": n}}}
                             for n in namespaces],
              "nodes": nodes, "services": services[:args.services], "endpointslices": slices[:args.services]}
    spare = {"services": services[args.services:], "endpointslices": slices[args.services:]}
    return seeded, spare, plan


# ---------------------------------------------------------------- seeding


def api_path(obj: dict[str, Any]) -> str:
    meta = obj["metadata"]
    kind = obj["kind"]
    if kind == "Namespace":
        return "/api/v1/namespaces"
    if kind == "Node":
        return "/api/v1/nodes"
    if kind == "Service":
        return f"/api/v1/namespaces/{meta['namespace']}/services"
    if kind == "EndpointSlice":
        return f"/apis/discovery.k8s.io/v1/namespaces/{meta['namespace']}/endpointslices"
    raise ValueError(kind)


def post_all(port: int, objects: list[dict[str, Any]]) -> None:
    """Create ``objects`` one by one over one keep-alive connection (runs inside the namespace).

    ``python -m kr_apiserver --seed FILE`` parses its file with PyYAML's pure-Python loader (~7 ms
    per Service or EndpointSlice here), so seeding through the API is ~20x faster at this scale.
    """
    import http.client

    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        for obj in objects:
            connection.request("POST", api_path(obj), json.dumps(obj), {"Content-Type": "application/json"})
            response = connection.getresponse()
            body = response.read()
            if response.status != 201:
                raise RuntimeError(f"POST {api_path(obj)} {obj['metadata']['name']}: {response.status} {body[:300]!r}")
    finally:
        connection.close()


# ---------------------------------------------------------------- measurement

POLL_INTERVAL = 0.001


def wait_synced(wanted: dict[str, int], timeout: float = 120.0) -> float:
    """Poll /healthz every POLL_INTERVAL until ``syncedResourceVersions[kind] >= rv`` for every kind in
    ``wanted``; return perf_counter at that moment."""
    deadline = time.perf_counter() + timeout
    while time.perf_counter() < deadline:
        _, body = healthz()
        if body is not None:
            versions = body.get("syncedResourceVersions") or {}
            if all(versions.get(kind) is not None and int(versions[kind]) >= rv for kind, rv in wanted.items()):
                return time.perf_counter()
        time.sleep(POLL_INTERVAL)
    raise TimeoutError(f"versions {wanted} not reported by the agent within {timeout} s")


JSON_PATCH = "application/json-patch+json"


def measure_changes(api: str, seeded: dict[str, list[dict[str, Any]]], spare: dict[str, list[dict[str, Any]]],
                    plan: Plan, count: int, gap: float, log_path: Path, rng: random.Random) -> dict[str, Any]:
    """Runs inside the namespace: each change kind ``count`` times, one at a time."""
    results: dict[str, Any] = {}

    def series(name: str, writes: list[Any]) -> None:
        start_offset = log_path.stat().st_size
        latencies, write_times = [], []
        for write in writes:
            t0 = time.perf_counter()
            wanted = write()
            t_written = time.perf_counter()
            t1 = wait_synced(wanted)
            latencies.append((t1 - t0) * 1000)
            write_times.append((t_written - t0) * 1000)
            time.sleep(gap)
        time.sleep(0.2)
        results[name] = {"n": len(latencies), "latency_ms": latencies, "write_ms": write_times,
                         "log_range": [start_offset, log_path.stat().st_size]}

    # 1. service add: a new ClusterIP Service (explicit clusterIP), then its EndpointSlice (10 endpoints)
    def service_add(i: int) -> Any:
        service, slice_ = spare["services"][i], spare["endpointslices"][i]

        def write() -> dict[str, int]:
            created = http("POST", f"{api}{api_path(service)}", service)
            created_slice = http("POST", f"{api}{api_path(slice_)}", slice_)
            return {"services": int(created["metadata"]["resourceVersion"]),
                    "endpointslices": int(created_slice["metadata"]["resourceVersion"])}
        return write

    series("service add", [service_add(i) for i in range(count)])

    # 2. and 3.: one endpoint of a seeded slice becomes not ready; one endpoint's address changes
    # (the pod was replaced on the same node). Each change on another service, chosen at random.
    chosen = rng.sample(range(len(seeded["endpointslices"])), min(2 * count, len(seeded["endpointslices"])))
    slices = [seeded["endpointslices"][i] for i in chosen]

    def slice_url(slice_: dict[str, Any]) -> str:
        meta = slice_["metadata"]
        return f"{api}/apis/discovery.k8s.io/v1/namespaces/{meta['namespace']}/endpointslices/{meta['name']}"

    def not_ready(slice_: dict[str, Any]) -> Any:
        k = rng.randrange(len(slice_["endpoints"]))

        def write() -> dict[str, int]:
            patched = http("PATCH", slice_url(slice_),
                           [{"op": "replace", "path": f"/endpoints/{k}/conditions/ready", "value": False}], JSON_PATCH)
            return {"endpointslices": int(patched["metadata"]["resourceVersion"])}
        return write

    def address_change(slice_: dict[str, Any]) -> Any:
        k = rng.randrange(len(slice_["endpoints"]))
        endpoint = slice_["endpoints"][k]
        node = next(i for i in range(len(plan.node_cidrs)) if node_name(i) == endpoint["nodeName"])
        address = plan.pod_ip(node)

        def write() -> dict[str, int]:
            patched = http("PATCH", slice_url(slice_),
                           [{"op": "replace", "path": f"/endpoints/{k}/addresses/0", "value": address}], JSON_PATCH)
            return {"endpointslices": int(patched["metadata"]["resourceVersion"])}
        return write

    series("endpoint not ready", [not_ready(s) for s in slices[0::2][:count]])
    series("endpoint address change", [address_change(s) for s in slices[1::2][:count]])
    return results


PX_LINE = re.compile(r"proxy sync \(full=(True|False)\): (\d+) chain\(s\) written, (\d+) chain\(s\) removed, "
                     r"(\d+) restore line\(s\)")


IPVS_LINE = re.compile(r"proxy sync \(full=(True|False)\): (\d+) virtual service\(s\), (\d+) set\(s\) written, "
                       r"(\d+) draining")
#: Which iptables flavour the backend chose (``proxy: ...`` or ``proxy (ipvs): using iptables-legacy``).
FLAVOUR_LINE = re.compile(r"proxy(?: \(ipvs\))?: using iptables-(\w+)")


def parse_log(text: str, backend: str) -> dict[str, Any]:
    syncs = [(m.group(1), float(m.group(2))) for m in SYNC_LINE.finditer(text)]
    if backend == IPVS:
        writes = [{"full": m.group(1) == "True", "virtual_services": int(m.group(2)), "sets": int(m.group(3)),
                   "draining": int(m.group(4))} for m in IPVS_LINE.finditer(text)]
    else:
        writes = [{"full": m.group(1) == "True", "chains": int(m.group(2)), "removed": int(m.group(3)),
                   "lines": int(m.group(4))} for m in PX_LINE.finditer(text)]
    return {"syncs": syncs, "writes": writes}


def write_stats(writes: list[dict[str, Any]], backend: str) -> dict[str, Any]:
    """What a series' syncs wrote, p50 and max, in the backend's own terms."""
    keys = ({"virtual_services": "virtual_services", "sets": "sets_written"} if backend == IPVS
            else {"chains": "chains_written", "lines": "lines_written"})
    max_only = {"draining": "draining"} if backend == IPVS else {"removed": "chains_removed"}
    stats: dict[str, Any] = {}
    for key, name in keys.items():
        stats[f"{name}_p50"] = pct([w[key] for w in writes], 50)
        stats[f"{name}_max"] = max((w[key] for w in writes), default=0)
    for key, name in max_only.items():
        stats[f"{name}_max"] = max((w[key] for w in writes), default=0)
    return stats


def writes_summary(series: dict[str, Any], backend: str) -> str:
    """One series' writes per sync for the progress line."""
    if backend == IPVS:
        return (f"virtual services p50 {series['virtual_services_p50']:.0f}, "
                f"sets written p50 {series['sets_written_p50']:.0f}")
    return (f"chains written p50 {series['chains_written_p50']:.0f}, "
            f"restore lines p50 {series['lines_written_p50']:.0f}")


def backend_metric(backend: str, part: str) -> str:
    return f'kr_backend_sync_duration_seconds_{part}{{backend="{backend}"}}'


METRICS = ("kubeproxy_sync_full_proxy_rules_duration_seconds_sum",
           "kubeproxy_sync_full_proxy_rules_duration_seconds_count",
           "kubeproxy_sync_partial_proxy_rules_duration_seconds_sum",
           "kubeproxy_sync_partial_proxy_rules_duration_seconds_count",
           *(backend_metric(b, part) for b in (IPTABLES, IPVS) for part in ("sum", "count")))


def first_attempt_seconds(text: str, backend: str) -> float:
    """From the agent's 'syncing may start' line to its first 'failed to sync' line (log timestamps)."""
    import datetime

    def stamp(marker: str) -> datetime.datetime:
        line = next(line for line in text.splitlines() if marker in line)
        return datetime.datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f")

    return (stamp(f"{backend} failed to sync") - stamp("syncing may start")).total_seconds()


def parse_metrics(text: str) -> dict[str, float]:
    out = {}
    for line in text.splitlines():
        name, _, value = line.rpartition(" ")
        if name in METRICS:
            out[name] = float(value)
    return out


HOOKED = re.compile(r"-j KR-PX-[A-Z0-9-]+$")


def proxy_dump(saves: dict[str, str]) -> str:
    """iptables-restore input holding only kr's proxy chains, their rules and the hook jumps, per table."""
    out = []
    for table, save in saves.items():
        lines = table_lines(save, table)
        out.append(f"*{table}")
        out += [line.split(" ", 1)[0] + " - [0:0]" for line in lines if line.startswith(":KR-PX-")]
        out += [line for line in lines if line.startswith("-A KR-PX-")
                or (line.startswith("-A ") and HOOKED.search(line))]
        out.append("COMMIT")
    return "\n".join(out) + "\n"


def sets_dump(save: str) -> str:
    """``ipset restore`` input holding only kr's proxy sets, from ``ipset save``."""
    return "".join(line + "\n" for line in save.splitlines() if line.split(" ", 2)[1:2] and
                   line.split(" ", 2)[1].startswith("KR-PX-"))


def sets_text(ruleset: Any) -> str:
    """``ruleset``'s sets as ``ipset save`` prints them (members in the kernel's order aside)."""
    return "".join(f"create {name} {spec.type} family inet\n" + "".join(f"add {name} {m}\n" for m in sorted(spec.members))
                   for name, spec in ruleset.sets.items())


def programmed_counts(rules: str, sets: str) -> dict[str, int]:
    lines = rules.splitlines()
    chains = [line[1:].split(" ", 1)[0] for line in lines if line.startswith(":")]
    return {
        "chains": len(chains),
        "bucket_chains": sum(c.startswith("KR-PX-D-") for c in chains),
        "dnat_rules": sum(" -j DNAT " in line for line in lines),
        "set_members": sum(line.startswith("add ") for line in sets.splitlines()),
        "rules": sum(line.startswith("-A KR-PX-") for line in lines),
        "hook_rules": sum(line.startswith("-A ") and not line.startswith("-A KR-PX-") for line in lines),
        "restore_lines": len(lines),
    }


def offline_ruleset(seeded: dict[str, list[dict[str, Any]]], render: bool = True) -> tuple[Any, int]:
    """What ``proxy.iptables``'s renderer makes of the seeded objects (default settings, as the benchmark
    runs it; None unless ``render``), and the number of service ports."""
    from kr_core.desired import build_desired_state
    from kr_plugins.proxy.rules import ProxyRenderer

    desired = build_desired_state(snapshot_of(seeded), NODE)
    return (ProxyRenderer().render(desired) if render else None), len(desired.services)


#: The order iptables-save prints built-in chains in.
BUILTIN_ORDER = ("PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING")


def save_order_text(ruleset: Any) -> str:
    """``ruleset`` as ``proxy_dump`` of the kernel's save would show it once loaded: chains declared in
    name order, the hook jumps (built-in chains first), then each chain's rules in name order."""
    out = []
    for table in ("nat", "filter"):
        chains = ruleset.tables[table]
        out.append(f"*{table}")
        out += [f":{name} - [0:0]" for name in sorted(chains)]
        out += [f"-A {chain} {spec}" for chain, spec in sorted(ruleset.hooks[table],
                                                                  key=lambda h: BUILTIN_ORDER.index(h[0]))]
        out += [f"-A {name} {rule}" for name in sorted(chains) for rule in chains[name]]
        out.append("COMMIT")
    return "\n".join(out) + "\n"


def agent_restore_text(ruleset: Any) -> str:
    """The restore text the agent's first sync feeds ``iptables-restore`` (into an empty kernel)."""
    from kr_plugins.kernel.iptables import parse_table_save, table_change
    from kr_plugins.proxy.iptables import TABLES, owned
    from kr_plugins.proxy.rules import hooks

    wanted = hooks()
    changes = [table_change(table, ruleset.tables[table], ruleset.hooks[table],
                            parse_table_save([], owned, wanted[table])) for table in TABLES]
    return "".join(f"*{c.table}\n" + "".join(f"{line}\n" for line in c.lines()) + "COMMIT\n" for c in changes if len(c))


def restore_timed(flavour: str, text: str, timeout: float, noflush: bool = True) -> dict[str, Any]:
    """Run inside a namespace: one ``iptables-<flavour>-restore`` of ``text``; its wall, user and system ms."""
    import resource

    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    argv = [f"iptables-{flavour}-restore", *(["--noflush"] if noflush else []), "-w"]
    try:
        done = subprocess.run(argv, input=text, text=True, capture_output=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        return {"timed_out_after_s": timeout}
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed: {done.stderr[:500]}")
    return {"wall_ms": round(wall * 1000), "user_ms": round((after.ru_utime - before.ru_utime) * 1000),
            "sys_ms": round((after.ru_stime - before.ru_stime) * 1000)}


def measure_restore(ns: str, flavour: str, text: str, sets: str, timeout: float,
                    noflush: bool = True) -> dict[str, Any]:
    """``restore_timed`` in a fresh namespace ``ns`` (where ``sets`` are loaded first, untimed), deleted
    afterwards."""
    labns.create(ns)
    try:
        in_ns(ns, run_cmd, ["ipset", "restore"], sets)
        return in_ns(ns, restore_timed, flavour, text, timeout, noflush)
    finally:
        labns.delete([ns])


def one_chain_text(rules: str) -> str:
    """A small partial-sync-like input: one service chain of ``rules`` declared again with its rules."""
    lines = rules.splitlines()
    chain = next(line[1:].split(" ", 1)[0] for line in lines if line.startswith(":KR-PX-SVC-"))
    body = [line for line in lines if line.startswith(f"-A {chain} ")]
    return "\n".join(["*nat", f":{chain} - [0:0]", *body, "COMMIT", ""])


def measure_floor(prefix: str, flavour: str, rules: str, sets: str, runs: int, small_runs: int = 5) -> dict[str, Any]:
    """``ipset restore`` of ``sets`` then ``iptables-<flavour>-restore --noflush`` of ``rules`` into ``runs``
    fresh empty namespaces (a sample is the sum of both); in each, then, ``small_runs`` restores of one
    chain (what a one-endpoint partial sync writes) into that full table."""
    samples, small = [], []
    small_text = one_chain_text(rules)
    for i in range(runs):
        ns = f"{prefix}-f{i}"
        labns.create(ns)
        try:
            sets_elapsed, _ = in_ns(ns, run_cmd, ["ipset", "restore"], sets)
            elapsed, _ = in_ns(ns, run_cmd, [f"iptables-{flavour}-restore", "--noflush", "-w"], rules)
            samples.append((sets_elapsed + elapsed) * 1000)
            for _ in range(small_runs):
                elapsed, _ = in_ns(ns, run_cmd, [f"iptables-{flavour}-restore", "--noflush", "-w"], small_text)
                small.append(elapsed * 1000)
        finally:
            labns.delete([ns])
    context = {
        # not what kr can do (it must not flush tables it shares), but how much of the floor --noflush costs
        f"iptables-{flavour}-restore without --noflush": measure_restore(f"{prefix}-c0", flavour, rules, sets, 3600,
                                                                         False),
        "iptables-legacy-restore --noflush": measure_restore(f"{prefix}-c1", "legacy", rules, sets, 3600),
    }
    return {"samples_ms": samples, "median_ms": statistics.median(samples),
            "one_chain_p50_ms": pct(small, 50), "one_chain_max_ms": max(small), "context": context}


def code_version() -> str:
    """The commit measured, and whether kr's code differs from it (others may be editing it)."""
    def git(*argv: str) -> str:
        done = subprocess.run(["git", *argv], cwd=REPO, capture_output=True, text=True, check=False)
        return done.stdout.strip()
    dirty = git("status", "--porcelain", "--", "kr_core", "kr_plugins")
    return git("rev-parse", "--short", "HEAD") + (f" + uncommitted changes in {len(dirty.splitlines())} file(s)"
                                                   if dirty else "")


def measure_iptables_programmed(args: argparse.Namespace, ns: str, prefix: str, workdir: Path,
                                result: dict[str, Any], ruleset: Any, expected: str) -> None:
    """What ``proxy.iptables`` programmed in ``ns``, and the floor: loading exactly that into an empty
    namespace (and, with --time-agent-text, the agent's own restore text)."""
    saves = {table: in_ns(ns, run_cmd, [f"iptables-{result['flavour']}-save", "-t", table])[1]
             for table in ("nat", "filter")}
    rules = proxy_dump(saves)
    sets = sets_dump(in_ns(ns, run_cmd, ["ipset", "save"])[1])
    result["floor_source"] = "kernel dump after the first sync"
    result["dump_equals_offline_render"] = rules == expected
    if rules != expected:
        result["dump_vs_render_differing_lines"] = len(set(rules.splitlines()) ^ set(expected.splitlines()))
    (workdir / "rules.txt").write_text(rules)
    result["programmed"] = programmed_counts(rules, sets)
    result["floor"] = measure_floor(prefix, result["flavour"], rules, sets, args.floor_runs)
    if "preload" not in result:
        result["full_over_floor"] = result["first_sync_ms"] / result["floor"]["median_ms"]
    print(f"programmed {result['programmed']}; floor {result['floor']['median_ms']:.0f} ms "
          f"(samples {', '.join(f'{s:.0f}' for s in result['floor']['samples_ms'])}); "
          f"ratio {result.get('full_over_floor', float('nan')):.2f}", flush=True)
    if args.time_agent_text:
        agent_text = agent_restore_text(ruleset)
        result["agent_text_restore"] = measure_restore(
            f"{prefix}-a", result["flavour"], agent_text, sets, args.agent_text_timeout)
        print(f"the agent's own restore text (declarations in its render order) into an empty namespace: "
              f"{result['agent_text_restore']}", flush=True)


def ipvs_counts() -> dict[str, int]:
    """Run inside a namespace: its IPVS virtual services and their real servers (one netlink dump each)."""
    from kr_plugins.kernel.ipvs import IpvsKernel

    kernel = IpvsKernel()
    try:
        services = kernel.services()
        return {"virtual_services": len(services),
                "real_servers": sum(len(kernel.reals(service)) for service in services.values())}
    finally:
        kernel.close()


def measure_ipvs_programmed(ns: str, result: dict[str, Any]) -> None:
    """What ``proxy.ipvs`` programmed in ``ns``: IPVS services and reals, and its chains and sets around
    them. No floor (``NO_FLOOR``)."""
    saves = {table: in_ns(ns, run_cmd, [f"iptables-{result['flavour']}-save", "-t", table])[1]
             for table in ("nat", "filter")}
    sets = sets_dump(in_ns(ns, run_cmd, ["ipset", "save"])[1])
    result["programmed"] = {**in_ns(ns, ipvs_counts), **programmed_counts(proxy_dump(saves), sets)}
    result["floor_skipped"] = NO_FLOOR[IPVS]
    print(f"programmed {result['programmed']}; {result['floor_skipped']}", flush=True)


def run(args: argparse.Namespace) -> dict[str, Any]:
    rng = random.Random(args.seed + 1)
    t = time.perf_counter()
    seeded, spare, plan = generate(args)
    generation_s = time.perf_counter() - t
    t = time.perf_counter()
    ruleset, service_ports = offline_ruleset(seeded, render=args.backend == IPTABLES)
    render_s = time.perf_counter() - t
    endpoints = sum(len(s["endpoints"]) for s in seeded["endpointslices"])
    local = sum(e.get("nodeName") == NODE for s in seeded["endpointslices"] for e in s["endpoints"])
    workdir = Path(tempfile.mkdtemp(prefix="krbench-"))
    prefix = f"krbench-{secrets.token_hex(2)}"
    ns = prefix
    api_proc = agent_proc = None
    logs: list[Any] = []
    result: dict[str, Any] = {
        "params": vars(args).copy(), "namespace": ns, "workdir": str(workdir),
        "objects": {k: len(v) for k, v in seeded.items()},
        "service_ports": service_ports, "endpoints": endpoints, "local_endpoints": local,
        "shapes": {
            "NodePort": sum(s["spec"]["type"] == "NodePort" for s in seeded["services"]),
            "ETP Local": sum(s["spec"].get("externalTrafficPolicy") == "Local" for s in seeded["services"]),
            "externalIPs": sum(bool(s["spec"].get("externalIPs")) for s in seeded["services"]),
            "ClientIP affinity": sum(s["spec"]["sessionAffinity"] == "ClientIP" for s in seeded["services"]),
            "UDP ports": sum(p["protocol"] == "UDP" for s in seeded["services"] for p in s["spec"]["ports"]),
        },
        "node_pod_prefix": plan.prefix,
        "code": code_version(),
    }
    result["load_average_start"] = os.getloadavg()
    print(f"objects: {result['objects']}, {result['service_ports']} service ports, {endpoints} endpoints "
          f"({local} on {NODE}) (generated in {generation_s:.1f} s, rendered offline in {render_s:.1f} s); "
          f"namespace {ns}; logs in {workdir}; load average {result['load_average_start'][0]:.2f}", flush=True)
    try:
        labns.create(ns)
        port_file = workdir / "api.port"
        api_log = open(workdir / "api.log", "w")  # noqa: SIM115 (closed in finally)
        logs.append(api_log)
        seed_argv: list[str] = []
        items = [o for kind in ("namespaces", "nodes", "services", "endpointslices") for o in seeded[kind]]
        if args.seed_file:
            seed_file = workdir / "seed.json"
            seed_file.write_text(json.dumps({"apiVersion": "v1", "kind": "List", "items": items}))
            seed_argv = ["--seed", str(seed_file)]
        t = time.perf_counter()
        api_proc = subprocess.Popen(
            ["ip", "netns", "exec", ns, sys.executable, "-m", "kr_apiserver", "--listen", "127.0.0.1",
             "--port", str(API_PORT), "--port-file", str(port_file), "--history", "100000",
             "--bookmark-interval", "1", *seed_argv, "--log-level", "warning"],
            cwd=REPO, stdout=api_log, stderr=subprocess.STDOUT)
        while not port_file.exists():
            if api_proc.poll() is not None:
                raise RuntimeError(f"API stand-in exited: {(workdir / 'api.log').read_text()[-2000:]}")
            time.sleep(0.05)
        if not args.seed_file:
            in_ns(ns, post_all, API_PORT, items)
        result["api_seed_s"] = time.perf_counter() - t
        result["seed_method"] = "--seed file" if args.seed_file else "POST over one keep-alive connection"
        api = f"http://127.0.0.1:{API_PORT}"
        print(f"API stand-in seeded ({result['seed_method']}) and serving in {result['api_seed_s']:.1f} s",
              flush=True)

        failure = re.compile(rf"backend {re.escape(args.backend)} failed to sync: (.*)")

        def start_agent(log_path: Path) -> subprocess.Popen[Any]:
            stream = open(log_path, "w")  # noqa: SIM115 (closed in finally)
            logs.append(stream)
            return subprocess.Popen(
                ["ip", "netns", "exec", ns, str(REPO / ".venv/bin/kr"), "run", "--plugins", args.backend,
                 "--hostname-override", NODE, "--master", api, "--healthz-bind-address", f"127.0.0.1:{HEALTHZ_PORT}",
                 "--metrics-bind-address", f"127.0.0.1:{METRICS_PORT}", "--min-sync-period", "0", "-v"],
                cwd=REPO, stdout=stream, stderr=subprocess.STDOUT)

        def wait_first_sync(proc: subprocess.Popen[Any], log_path: Path, max_failures: int) -> float | None:
            """perf_counter when /healthz first answers 200; None once the backend failed
            ``max_failures`` times (each failed sync is retried, full, with backoff)."""
            deadline = time.perf_counter() + args.first_sync_timeout
            while time.perf_counter() < deadline:
                if proc.poll() is not None:
                    raise RuntimeError(f"agent exited: {log_path.read_text()[-3000:]}")
                code, _ = healthz()
                if code == 200:
                    return time.perf_counter()
                if len(failure.findall(log_path.read_text())) >= max_failures:
                    return None
                time.sleep(0.05)
            raise TimeoutError(f"agent's first sync did not finish in {args.first_sync_timeout} s")

        log_path = workdir / "agent.log"
        t_start = time.perf_counter()
        agent_proc = start_agent(log_path)
        healthy = in_ns(ns, wait_first_sync, agent_proc, log_path, args.max_sync_failures)
        text = log_path.read_text()
        flavour = FLAVOUR_LINE.search(text)
        result["flavour"] = flavour.group(1) if flavour else "nft"
        result["rss_after_first_sync_kib"] = vm_status(agent_proc.pid)
        expected = save_order_text(ruleset) if ruleset is not None else None
        if healthy is None:
            errors = failure.findall(text)
            result["first_sync_failed"] = {
                "attempts": len(errors),
                "error": errors[0][:500] if errors else "(gave up before any failure: --max-sync-failures 0)",
                "seconds_to_give_up": time.perf_counter() - t_start,
                "first_attempt_s": first_attempt_seconds(text, args.backend) if errors else float("nan"),
                "rss_kib": result.pop("rss_after_first_sync_kib"),
            }
            print(f"first full sync FAILED {result['first_sync_failed']['attempts']} times: "
                  f"{result['first_sync_failed']['error']}", flush=True)
            if expected is None:  # no ruleset to preload: proxy.ipvs
                result["rss_kib"] = vm_status(agent_proc.pid)
                result["floor_skipped"] = NO_FLOOR[args.backend]
                return result
            if not args.preload:
                result["rss_kib"] = vm_status(agent_proc.pid)
                result["floor_source"] = "offline render (the agent never programmed it)"
                result["programmed"] = programmed_counts(expected, sets_text(ruleset))
                result["floor"] = measure_floor(prefix, result["flavour"], expected, sets_text(ruleset), args.floor_runs)
                return result
            # A restart over a node already programmed: load the ruleset the agent would have written
            # (rendered here, in iptables-save's order) into its namespace, start it again, and measure
            # that first sync (it re-reads the kernel and finds nothing to write) and the changes.
            stop_process(agent_proc)
            in_ns(ns, run_cmd, ["ipset", "restore", "-exist"], sets_text(ruleset))
            result["preload"] = in_ns(ns, restore_timed, result["flavour"], expected, args.agent_text_timeout)
            print(f"preloaded the rendered ruleset into {ns}: {result['preload']}; restarting the agent", flush=True)
            log_path = workdir / "agent-restart.log"
            t_start = time.perf_counter()
            agent_proc = start_agent(log_path)
            healthy = in_ns(ns, wait_first_sync, agent_proc, log_path, max(1, args.max_sync_failures))
            if healthy is None:
                raise RuntimeError(f"the restarted agent failed too: {log_path.read_text()[-3000:]}")
            text = log_path.read_text()
            result["rss_after_first_sync_kib"] = vm_status(agent_proc.pid)
            flavour = FLAVOUR_LINE.search(text)
            if flavour and flavour.group(1) != result["flavour"]:
                # detect_flavour lists both flavours; a listing that times out counts as "not in use"
                result["restart_flavour_changed"] = f"{result['flavour']} -> {flavour.group(1)}"
                result["flavour"] = flavour.group(1)
                print(f"WARNING: the restarted agent chose iptables-{flavour.group(1)} over the preloaded "
                      f"ruleset: {result['restart_flavour_changed']}", flush=True)
        first = parse_log(text, args.backend)
        result["first_sync_kind"] = "restart over the preloaded ruleset" if "preload" in result else "cold"
        result["start_to_first_sync_s"] = healthy - t_start
        result["first_sync_ms"] = next(ms for mode, ms in first["syncs"] if mode == "full")
        result["first_sync_writes"] = first["writes"][0] if first["writes"] else None
        print(f"first full sync ({result['first_sync_kind']}) {result['first_sync_ms']:.0f} ms (agent start to "
              f"healthy {result['start_to_first_sync_s']:.1f} s), iptables-{result['flavour']}, "
              f"VmHWM {result['rss_after_first_sync_kib']['VmHWM'] / 1024:.0f} MiB", flush=True)
        if args.backend == IPVS:
            measure_ipvs_programmed(ns, result)
        else:
            assert expected is not None  # proxy.iptables always renders
            measure_iptables_programmed(args, ns, prefix, workdir, result, ruleset, expected)

        # changes
        changes = in_ns(ns, measure_changes, api, seeded, spare, plan, args.changes, args.gap, log_path, rng)
        text = log_path.read_text()
        for name, series in changes.items():
            start, end = series.pop("log_range")
            parsed = parse_log(text[start:end], args.backend)
            lat = series["latency_ms"]
            series.update({
                "p50_ms": pct(lat, 50), "p99_ms": pct(lat, 99), "max_ms": max(lat),
                "write_p50_ms": pct(series["write_ms"], 50),
                "syncs": len(parsed["syncs"]),
                "sync_p50_ms": pct([ms for _, ms in parsed["syncs"]], 50),
                "sync_p99_ms": pct([ms for _, ms in parsed["syncs"]], 99),
                **write_stats(parsed["writes"], args.backend),
            })
            print(f"{name}: p50 {series['p50_ms']:.0f} ms, p99 {series['p99_ms']:.0f} ms "
                  f"({series['syncs']} syncs, sync p50 {series['sync_p50_ms']:.0f} ms; "
                  f"{writes_summary(series, args.backend)})", flush=True)
        result["changes"] = changes
        all_syncs = parse_log(text, args.backend)["syncs"]
        partial = [ms for mode, ms in all_syncs if mode == "partial"]
        result["partial_sync_ms"] = {"n": len(partial), "p50": pct(partial, 50), "p99": pct(partial, 99),
                                     "max": max(partial, default=float("nan"))}
        result["metrics"] = parse_metrics(in_ns(ns, http, "GET", f"http://127.0.0.1:{METRICS_PORT}/metrics"))
        result["rss_kib"] = vm_status(agent_proc.pid)
        result["load_average_end"] = os.getloadavg()
        errors = [line for line in text.splitlines() if " ERROR " in line or " WARNING " in line]
        result["agent_warnings"] = errors[:20]
        if args.keep_logs:
            result["agent_log"] = str(log_path)
    finally:
        stop_process(agent_proc)
        stop_process(api_proc)
        for stream in logs:
            stream.close()
        labns.delete([ns])
        if not args.keep_logs:
            shutil.rmtree(workdir, ignore_errors=True)
    return result


def floor_rows(result: dict[str, Any]) -> list[tuple[str, str]]:
    if "floor_skipped" in result:
        return [("floor", result["floor_skipped"])]
    floor = result["floor"]
    rows = [(f"floor: iptables-{result['flavour']}-restore (median of {len(floor['samples_ms'])})",
             (f"{floor['median_ms']:.0f} ms ({', '.join(f'{s:.0f}' for s in floor['samples_ms'])}; "
              f"{result['floor_source']})")),
            ("  then one chain (2 rules) into that loaded table, p50 / max",
             f"{floor['one_chain_p50_ms']:.0f} / {floor['one_chain_max_ms']:.0f} ms")]
    rows += [(f"  context: {name}", str(value)) for name, value in floor.get("context", {}).items()]
    if "full_over_floor" in result:
        rows.append(("full sync / floor (target <= 1.5)", f"{result['full_over_floor']:.2f}"))
    if "dump_equals_offline_render" in result:
        rows.append(("kernel dump == offline render in save order", str(result["dump_equals_offline_render"])))
    if "agent_text_restore" in result:
        rows.append(("agent's own restore text into an empty namespace", str(result["agent_text_restore"])))
    return rows


def writes_row(s: dict[str, Any], backend: str) -> tuple[str, str]:
    """A series' syncs: how many, how long, and what each wrote (p50, max)."""
    if backend == IPVS:
        return ("  syncs; sync p50/p99; virtual services, sets written per sync (p50, max)",
                (f"{s['syncs']}; {s['sync_p50_ms']:.0f}/{s['sync_p99_ms']:.0f} ms; "
                 f"{s['virtual_services_p50']:.0f} ({s['virtual_services_max']}), "
                 f"{s['sets_written_p50']:.0f} ({s['sets_written_max']})"))
    return ("  syncs; sync p50/p99; chains, restore lines written per sync (p50, max)",
            (f"{s['syncs']}; {s['sync_p50_ms']:.0f}/{s['sync_p99_ms']:.0f} ms; "
             f"{s['chains_written_p50']:.0f} ({s['chains_written_max']}), "
             f"{s['lines_written_p50']:.0f} ({s['lines_written_max']})"))


def table(result: dict[str, Any]) -> str:
    m = result.get("metrics", {})
    backend = result["params"]["backend"]
    rows = [("code measured", result["code"]),
            ("objects", ", ".join(f"{v} {k}" for k, v in result["objects"].items())),
            ("service ports / endpoints (local)",
             f"{result['service_ports']} / {result['endpoints']} ({result['local_endpoints']})"),
            ("service shapes", ", ".join(f"{v} {k}" for k, v in result["shapes"].items())),
            ("API seeding (outside every figure)", f"{result['api_seed_s']:.1f} s ({result['seed_method']})"),
            ("iptables flavour", result["flavour"]),
            ("load average (1 min) at start / end",
             f"{result['load_average_start'][0]:.2f} / {result.get('load_average_end', [float('nan')])[0]:.2f}")]
    failed = result.get("first_sync_failed")
    if failed:
        rows += [("first full sync (cold)", f"FAILED {failed['attempts']} times: {failed['error'][:160]}"),
                 ("  first attempt: lists done to its failure (agent log)", f"{failed['first_attempt_s']:.1f} s"),
                 ("  agent start to giving up; VmHWM then",
                  f"{failed['seconds_to_give_up']:.1f} s; {failed['rss_kib']['VmHWM'] / 1024:.0f} MiB")]
    if "preload" in result:
        rows.append(("preload of the rendered ruleset into the agent's namespace", str(result["preload"])))
    if "restart_flavour_changed" in result:
        rows.append(("  the restarted agent's iptables flavour CHANGED", result["restart_flavour_changed"]))
    if "first_sync_ms" in result:
        rows += [(f"first full sync, {result['first_sync_kind']} (agent log)", f"{result['first_sync_ms']:.0f} ms"),
                 ("  /metrics full sync sum/count",
                  (f"{m.get('kubeproxy_sync_full_proxy_rules_duration_seconds_sum', float('nan')) * 1000:.0f} ms / "
                   f"{m.get('kubeproxy_sync_full_proxy_rules_duration_seconds_count', 0):.0f}")),
                 (f"  /metrics backend {backend} sum/count",
                  (f"{m.get(backend_metric(backend, 'sum'), float('nan')) * 1000:.0f} ms / "
                   f"{m.get(backend_metric(backend, 'count'), 0):.0f}")),
                 ("agent start to first sync done", f"{result['start_to_first_sync_s']:.2f} s")]
    rows += floor_rows(result)
    if "programmed" in result:
        rows.append(("programmed", ", ".join(f"{v} {k}" for k, v in result["programmed"].items())))
    if "first_sync_writes" in result:
        rows.append(("first sync wrote", str(result["first_sync_writes"])))
    for name, s in result.get("changes", {}).items():
        rows.append((f"{name}: latency p50 / p99 / max (n={s['n']})",
                     f"{s['p50_ms']:.0f} / {s['p99_ms']:.0f} / {s['max_ms']:.0f} ms"))
        rows.append(writes_row(s, backend))
    if "partial_sync_ms" in result:
        p = result["partial_sync_ms"]
        rows.append(("partial syncs: n, p50 / p99 / max",
                     f"{p['n']}, {p['p50']:.0f} / {p['p99']:.0f} / {p['max']:.0f} ms"))
        rows.append(("  /metrics partial sum/count",
                     (f"{m.get('kubeproxy_sync_partial_proxy_rules_duration_seconds_sum', float('nan')) * 1000:.0f}"
                      f" ms / {m.get('kubeproxy_sync_partial_proxy_rules_duration_seconds_count', 0):.0f}")))
    after_first = result.get("rss_after_first_sync_kib")
    rows.append(("agent peak RSS (VmHWM, target < 150 MiB)",
                 f"{result['rss_kib']['VmHWM'] / 1024:.0f} MiB"
                 + (f" (after first sync {after_first['VmHWM'] / 1024:.0f} MiB)" if after_first else "")))
    if result.get("agent_warnings"):
        rows.append(("agent warnings/errors (first)", result["agent_warnings"][0][:200]))
    width = max(len(r[0]) for r in rows)
    return "\n".join(f"{k.ljust(width)}  {v}" for k, v in rows)


# ---------------------------------------------------------------- offline profile (no kernel, no agent)


def sync_steps(snapshot: dict[str, dict[str, Any]], renderer: Any, programmed: dict[str, Any] | None,
               profiler: cProfile.Profile | None = None) -> tuple[dict[str, float], dict[str, Any], int]:
    """The pure half of one ``IptablesProxy.sync`` on ``snapshot``, timed step by step: what the agent
    and the backend compute before and around ``iptables-restore`` (``programmed`` None: an empty
    kernel, as at the first sync). Returns (timings in s, what is programmed afterwards, restore lines)."""
    from kr_core.desired import build_desired_state
    from kr_plugins.kernel.iptables import (
        TableState,
        check_owned_line,
        parse_table_save,
        table_change,
    )
    from kr_plugins.proxy.flows import udp_targets
    from kr_plugins.proxy.healthcheck import health_targets
    from kr_plugins.proxy.iptables import TABLES, owned
    from kr_plugins.proxy.rules import check_consistency, hooks

    timings: dict[str, float] = {}
    if profiler is not None:
        profiler.enable()

    def step(name: str, fn: Any, *a: Any) -> Any:
        t = time.perf_counter()
        out = fn(*a)
        timings[name] = timings.get(name, 0.0) + time.perf_counter() - t
        return out

    frozen = step("snapshot (cache copy)", lambda: {kind: dict(store) for kind, store in snapshot.items()})
    desired = step("build_desired_state", build_desired_state, frozen, NODE)
    ruleset = step("ProxyRenderer.render", renderer.render, desired)
    if programmed is None:
        wanted = hooks()
        programmed = {table: parse_table_save([], owned, wanted[table]) for table in TABLES}
    changes = step("table_change (diff)", lambda: [
        table_change(table, ruleset.tables[table], ruleset.hooks[table], programmed[table]) for table in TABLES])
    # as IptablesProxy.sync does: only the chains this sync writes
    step("check_consistency (written chains)", lambda: check_consistency(
        ruleset, only={change.table: change.changed for change in changes}))
    # what IptablesRestore.apply does besides writing to the tool: render and check each line
    step("lines + check_owned_line (IptablesRestore.apply)", lambda: [
        check_owned_line(n, line) for change in changes for n, line in enumerate(change.lines(), 1)])
    after = step("remember programmed", lambda: {table: TableState(dict(ruleset.tables[table])) for table in TABLES})
    step("udp_targets", udp_targets, desired)
    step("health_targets", health_targets, desired)
    if profiler is not None:
        profiler.disable()
    return timings, after, sum(len(change) for change in changes)


def flip_one(snapshot: dict[str, dict[str, Any]], i: int) -> None:
    """Replace one EndpointSlice of ``snapshot`` by a copy whose first endpoint changed readiness (a new
    object with a new resourceVersion, as the watcher delivers it)."""
    keys = sorted(snapshot["endpointslices"])
    key = keys[(i * 7919) % len(keys)]
    old = snapshot["endpointslices"][key]
    endpoints = [dict(e) for e in old["endpoints"]]
    endpoints[0] = {**endpoints[0], "conditions": {**endpoints[0]["conditions"],
                                                   "ready": not endpoints[0]["conditions"]["ready"]}}
    meta = {**old["metadata"], "resourceVersion": str(1_000_000 + i)}
    snapshot["endpointslices"][key] = {**old, "metadata": meta, "endpoints": endpoints}


def print_timings(title: str, runs: list[dict[str, float]]) -> None:
    print(title)
    total = 0.0
    for name in runs[0]:
        ms = statistics.median(r.get(name, 0.0) for r in runs) * 1000
        total += ms
        print(f"  {name:40s} {ms:9.1f} ms")
    print(f"  {'total':40s} {total:9.1f} ms")


def print_profile(title: str, profiler: cProfile.Profile, top: int) -> None:
    out = io.StringIO()
    stats = pstats.Stats(profiler, stream=out)
    stats.sort_stats("tottime").print_stats(top)
    stats.sort_stats("cumulative").print_stats(top)
    print(title)
    print(out.getvalue())


def profile(args: argparse.Namespace) -> int:
    """Time (in a forked child, so its memos start cold) and then profile the first full sync and
    ``--changes`` partial syncs (one endpoint's readiness flips in each) on the generated objects."""
    from kr_plugins.proxy.rules import ProxyRenderer

    seeded, _, _ = generate(args)
    snapshot = snapshot_of(seeded)
    child = os.fork()
    if child == 0:
        try:
            renderer = ProxyRenderer()
            full, programmed, lines = sync_steps(snapshot, renderer, None)
            print_timings(f"first full sync, cold (no profiler; {lines} restore lines):", [full])
            partial = []
            for i in range(args.changes):
                flip_one(snapshot, i)
                timings, programmed, lines = sync_steps(snapshot, renderer, programmed)
                partial.append(timings)
            print_timings(f"partial sync, one endpoint not ready (median of {args.changes}; last wrote "
                          f"{lines} restore lines):", partial)
            sys.stdout.flush()
        finally:
            os._exit(0)
    os.waitpid(child, 0)
    renderer = ProxyRenderer()
    profiler = cProfile.Profile()
    _, programmed, _ = sync_steps(snapshot, renderer, None, profiler)
    print_profile("cProfile of the first full sync (cold):", profiler, args.top)
    profiler = cProfile.Profile()
    for i in range(args.changes):
        flip_one(snapshot, i)
        _, programmed, _ = sync_steps(snapshot, renderer, programmed, profiler)
    print_profile(f"cProfile of {args.changes} partial syncs:", profiler, args.top)
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", choices=(IPTABLES, IPVS), default=IPTABLES,
                        help="the proxy backend the agent runs (proxy.ipvs needs a kernel with IPVS)")
    parser.add_argument("--services", type=int, default=10_000)
    parser.add_argument("--endpoints-per-service", type=int, default=10)
    parser.add_argument("--nodes", type=int, default=100, help="nodes the endpoints spread over (bench-node is one)")
    parser.add_argument("--namespaces", type=int, default=100)
    parser.add_argument("--service-cidr", default="10.96.0.0/12",
                        help="ClusterIPs are drawn at random from it, as the API server allocates them")
    parser.add_argument("--changes", type=int, default=30, help="changes of each kind")
    parser.add_argument("--gap", type=float, default=0.05, help="seconds between two changes")
    parser.add_argument("--poll-interval", type=float, default=0.001,
                        help="seconds between two /healthz polls while waiting for a change to be programmed")
    parser.add_argument("--floor-runs", type=int, default=3)
    parser.add_argument("--first-sync-timeout", type=float, default=1800.0)
    parser.add_argument("--max-sync-failures", type=int, default=2,
                        help="give up waiting for the first sync after the backend failed this many times "
                             "(0: at once, to exercise the preload path)")
    parser.add_argument("--time-agent-text", action="store_true",
                        help="also time the agent's own restore text (its declaration order) into an empty namespace")
    parser.add_argument("--agent-text-timeout", type=float, default=1800.0,
                        help="timeout of the restores this script runs itself (--time-agent-text, the preload)")
    parser.add_argument("--no-preload", dest="preload", action="store_false",
                        help="when the agent's first sync fails, stop there instead of preloading the ruleset "
                             "and restarting the agent to measure changes")
    parser.add_argument("--seed-file", action="store_true",
                        help="seed through `python -m kr_apiserver --seed FILE` (slow: PyYAML) instead of POSTs")
    parser.add_argument("--seed", type=int, default=10)
    parser.add_argument("--json", type=Path, help="write the full results here")
    parser.add_argument("--keep-logs", action="store_true", help="keep the work directory (agent log, dump)")
    parser.add_argument("--profile", action="store_true",
                        help="no kernel, no agent: time and cProfile the pure half of a full and of partial syncs")
    parser.add_argument("--top", type=int, default=25, help="functions shown per profile (--profile)")
    args = parser.parse_args()
    if args.profile:
        if args.backend != IPTABLES:
            parser.error("--profile times proxy.iptables's renderer only")
        return profile(args)
    if os.geteuid() != 0:
        parser.error("must run as root (network namespaces)")
    global POLL_INTERVAL
    POLL_INTERVAL = args.poll_interval
    result = run(args)
    return report(table(result), result, args.json)


if __name__ == "__main__":
    sys.exit(main())
