#!/usr/bin/env python
"""Scale benchmark of the ``firewall.iptables`` backend (issue 4, "Speed and memory").

Generates namespaces, nodes, pods and NetworkPolicies, serves them from the API stand-in
(``python -m kr_apiserver --seed``) inside a network namespace this script creates, runs the real
agent (``kr run --plugins firewall.iptables``) in the same namespace, and measures:

- the first full sync (agent log and /metrics),
- the floor: ``ipset restore`` + ``iptables-<flavour>-restore`` of the same sets and chains into an
  empty fresh namespace (median of --floor-runs),
- latency from an API write (pod add, pod label change, policy update) to the agent's /healthz
  ``syncedResourceVersions[kind]`` reaching the write's resourceVersion (polled every 1 ms),
- sets and chains written per sync, totals programmed, partial-sync durations, peak RSS (VmHWM).

Only namespaces this script creates (``krbench-XXXX*``) are touched; all are deleted on exit, and all
traffic stays on their loopback. Usage (root):

    .venv/bin/python benchmarks/firewall_scale.py --json /tmp/fw.json
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import random
import re
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from kr_lab import netns as labns
from kr_lab.nsenter import run_in_netns

NODE = "bench-node"
API_PORT = 6443
HEALTHZ_PORT = 20244
METRICS_PORT = 20245
TEAMS = ["payments", "search", "ads", "identity", "platform", "data", "mobile", "web", "ml", "infra"]
ENVS = ["prod", "staging", "dev"]
ROLES = ["frontend", "backend", "db", "cache", "worker", "dns"]
TIERS = ["web", "api", "data"]
APPS = [f"app-{i:02d}" for i in range(30)]

# ---------------------------------------------------------------- object generation


def node_cidr(index: int) -> str:
    """Pod CIDR of node ``index`` (0 = bench-node): 10.200.0.0/24, 10.200.1.0/24, ..."""
    return f"10.{200 + index // 256}.{index % 256}.0/24"


def node_ip(index: int, host: int) -> str:
    return f"10.{200 + index // 256}.{index % 256}.{host}"


def make_namespace(i: int, rng: random.Random) -> dict[str, Any]:
    name = f"ns-{i:03d}"
    labels = {"kubernetes.io/metadata.name": name, "team": TEAMS[i % len(TEAMS)], "env": ENVS[i % 3]}
    if rng.random() < 0.3:
        labels["istio-injection"] = "enabled"
    if rng.random() < 0.1:
        labels["compliance"] = "pci"
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": labels}}


def make_node(i: int) -> dict[str, Any]:
    name = NODE if i == 0 else f"node-{i:03d}"
    return {"apiVersion": "v1", "kind": "Node",
            "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name}},
            "spec": {"podCIDR": node_cidr(i), "podCIDRs": [node_cidr(i)]},
            "status": {"addresses": [{"type": "InternalIP", "address": f"192.168.{i // 250}.{i % 250 + 1}"},
                                     {"type": "Hostname", "address": name}]}}


def make_pod(name: str, namespace: str, node: str, ip: str, rng: random.Random,
             labels: dict[str, str] | None = None) -> dict[str, Any]:
    if labels is None:
        labels = {"app": rng.choice(APPS), "role": rng.choice(ROLES), "tier": rng.choice(TIERS),
                  "version": rng.choice(["v1", "v2", "v3"])}
        if rng.random() < 0.5:
            labels["monitored"] = "true"
    ports = [{"name": "http", "containerPort": rng.choice([8080, 8000, 80]), "protocol": "TCP"}]
    if rng.random() < 0.7:
        ports.append({"name": "metrics", "containerPort": 9090, "protocol": "TCP"})
    if rng.random() < 0.3:
        ports.append({"name": "grpc", "containerPort": 50051, "protocol": "TCP"})
    if labels.get("role") == "dns":
        ports.append({"name": "dns", "containerPort": 53, "protocol": "UDP"})
        ports.append({"name": "dns-tcp", "containerPort": 53, "protocol": "TCP"})
    containers = [{"name": "main", "image": "example/app:1", "ports": ports}]
    if rng.random() < 0.2:
        containers.append({"name": "sidecar", "image": "example/proxy:1",
                           "ports": [{"name": "admin", "containerPort": 15000, "protocol": "TCP"}]})
    return {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace, "labels": labels},
        "spec": {"nodeName": node, "containers": containers},
        "status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}], "hostIP": "192.168.0.1",
                   "conditions": [{"type": "Ready", "status": "True"},
                                  {"type": "ContainersReady", "status": "True"}]},
    }


def _sel(rng: random.Random) -> dict[str, Any]:
    """A pod selector: matchLabels or matchExpressions of several operators."""
    kind = rng.random()
    if kind < 0.55:
        return {"matchLabels": {"app": rng.choice(APPS)}}
    if kind < 0.7:
        return {"matchLabels": {"role": rng.choice(ROLES), "tier": rng.choice(TIERS)}}
    if kind < 0.85:
        return {"matchExpressions": [{"key": "app", "operator": "In", "values": rng.sample(APPS, 3)},
                                     {"key": "version", "operator": "NotIn", "values": ["v1"]}]}
    return {"matchLabels": {"role": rng.choice(ROLES)},
            "matchExpressions": [{"key": "monitored", "operator": rng.choice(["Exists", "DoesNotExist"])}]}


def _ns_sel(rng: random.Random) -> dict[str, Any]:
    kind = rng.random()
    if kind < 0.5:
        return {"matchLabels": {"team": rng.choice(TEAMS)}}
    if kind < 0.75:
        return {"matchExpressions": [{"key": "env", "operator": "In", "values": ["prod", "staging"]}]}
    if kind < 0.9:
        return {"matchLabels": {"kubernetes.io/metadata.name": f"ns-{rng.randrange(10):03d}"}}
    return {}


def _ports(rng: random.Random) -> list[dict[str, Any]]:
    choice = rng.random()
    if choice < 0.35:
        return [{"protocol": "TCP", "port": rng.choice([80, 443, 8080, 5432, 6379])}]
    if choice < 0.55:
        return [{"protocol": "TCP", "port": rng.choice(["http", "metrics", "grpc"])}]
    if choice < 0.7:
        start = rng.choice([8000, 9000, 30000])
        return [{"protocol": "TCP", "port": start, "endPort": start + rng.choice([10, 100, 2767])}]
    if choice < 0.8:
        return [{"protocol": "UDP", "port": 53}, {"protocol": "TCP", "port": 53}]
    if choice < 0.9:
        return [{"protocol": "TCP", "port": 8080}, {"protocol": "TCP", "port": "metrics"}]
    return []  # every port


def _peer(rng: random.Random) -> dict[str, Any]:
    kind = rng.random()
    if kind < 0.35:
        return {"podSelector": _sel(rng)}
    if kind < 0.6:
        return {"namespaceSelector": _ns_sel(rng), "podSelector": _sel(rng)}
    if kind < 0.75:
        return {"namespaceSelector": _ns_sel(rng)}
    second, third = 16 + rng.randrange(16), rng.randrange(256)
    if rng.random() < 0.5:
        return {"ipBlock": {"cidr": f"172.{second}.0.0/16", "except": [f"172.{second}.{third}.0/24"]}}
    return {"ipBlock": {"cidr": "10.0.0.0/8", "except": ["10.200.0.0/16", f"10.{rng.randrange(1, 200)}.0.0/16"]}}


def make_policy(i: int, namespace: str, rng: random.Random) -> dict[str, Any]:
    """One policy of a realistic mix: default denies, app-to-app, cross-namespace, ipBlock, egress."""
    name = f"np-{i:04d}"
    template = rng.random()
    spec: dict[str, Any]
    if template < 0.08:  # default deny ingress
        spec = {"podSelector": {}, "policyTypes": ["Ingress"]}
    elif template < 0.12:  # default deny egress except DNS
        spec = {"podSelector": {}, "policyTypes": ["Egress"],
                "egress": [{"to": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "ns-000"}},
                                    "podSelector": {"matchLabels": {"role": "dns"}}}],
                            "ports": [{"protocol": "UDP", "port": "dns"}, {"protocol": "TCP", "port": "dns-tcp"}]}]}
    elif template < 0.6:  # ingress, one to three rules
        spec = {"podSelector": _sel(rng), "policyTypes": ["Ingress"],
                "ingress": [{"from": [_peer(rng) for _ in range(rng.randint(1, 3))], "ports": _ports(rng)}
                            for _ in range(rng.randint(1, 3))]}
    elif template < 0.8:  # ingress and egress
        spec = {"podSelector": _sel(rng), "policyTypes": ["Ingress", "Egress"],
                "ingress": [{"from": [_peer(rng) for _ in range(rng.randint(1, 2))], "ports": _ports(rng)}],
                "egress": [{"to": [_peer(rng) for _ in range(rng.randint(1, 2))], "ports": _ports(rng)},
                           {"to": [{"ipBlock": {"cidr": "0.0.0.0/0", "except": ["169.254.169.254/32"]}}],
                            "ports": [{"protocol": "TCP", "port": 443}]}]}
    elif template < 0.9:  # egress only
        spec = {"podSelector": _sel(rng), "policyTypes": ["Egress"],
                "egress": [{"to": [_peer(rng)], "ports": _ports(rng)}]}
    elif template < 0.95:  # monitoring scrape by named port
        spec = {"podSelector": {"matchLabels": {"monitored": "true"}},
                "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"team": "platform"}},
                                       "podSelector": {"matchLabels": {"app": "app-00"}}}],
                             "ports": [{"protocol": "TCP", "port": "metrics"}]}]}
    else:  # allow all from the same namespace
        spec = {"podSelector": _sel(rng), "ingress": [{"from": [{"podSelector": {}}]}]}
    return {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"name": name, "namespace": namespace}, "spec": spec}


def generate(args: argparse.Namespace) -> dict[str, list[dict[str, Any]]]:
    rng = random.Random(args.seed)
    namespaces = [make_namespace(i, rng) for i in range(args.namespaces)]
    ns_names = [n["metadata"]["name"] for n in namespaces]
    remote = args.pods - args.local_pods
    per_node = min(args.pods_per_node, 250)
    remote_nodes = max(1, math.ceil(remote / per_node))
    nodes = [make_node(i) for i in range(remote_nodes + 1)]
    pods = []
    for i in range(args.local_pods):
        pods.append(make_pod(f"local-{i:04d}", rng.choice(ns_names), NODE, node_ip(0, 2 + i), rng))
    for i in range(remote):
        node = 1 + i // per_node
        pods.append(make_pod(f"pod-{i:05d}", rng.choice(ns_names), nodes[node]["metadata"]["name"],
                             node_ip(node, 2 + i % per_node), rng))
    # policies concentrate where pods are (round-robin over namespaces, as teams write their own)
    policies = [make_policy(i, ns_names[i % len(ns_names)], rng) for i in range(args.policies)]
    return {"namespaces": namespaces, "nodes": nodes, "pods": pods, "networkpolicies": policies}


def snapshot_of(objects: dict[str, list[dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    """``kind -> key -> object``, the cache's snapshot shape (for build_desired_state)."""
    out: dict[str, dict[str, Any]] = {}
    for kind, items in objects.items():
        store = out.setdefault(kind, {})
        for obj in items:
            meta = obj["metadata"]
            key = f"{meta['namespace']}/{meta['name']}" if "namespace" in meta else meta["name"]
            store[key] = obj
    return out


# ---------------------------------------------------------------- helpers run inside the namespace

_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def http(method: str, url: str, body: Any = None, content_type: str = "application/json",
         timeout: float = 10.0) -> Any:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method,
                                     headers={"Content-Type": content_type} if data else {})
    with _OPENER.open(request, timeout=timeout) as response:
        raw = response.read()
    return json.loads(raw) if raw[:1] in (b"{", b"[") else raw.decode()


def healthz() -> tuple[int, dict[str, Any] | None]:
    try:
        with _OPENER.open(f"http://127.0.0.1:{HEALTHZ_PORT}/healthz", timeout=2) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, None
    except OSError:
        return 0, None


def run_cmd(argv: list[str], stdin: str | None = None) -> tuple[float, str]:
    started = time.perf_counter()
    proc = subprocess.run(argv, input=stdin, capture_output=True, text=True, check=False)
    elapsed = time.perf_counter() - started
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: exit {proc.returncode}: {proc.stderr.strip()[:2000]}")
    return elapsed, proc.stdout


def in_ns(ns: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
    return run_in_netns(ns, fn, *args, **kwargs)


# ---------------------------------------------------------------- measurement


def report(table_text: str, result: dict[str, Any], json_path: Path | None) -> int:
    """Print a benchmark's result table, and write its whole result as JSON when asked."""
    print()
    print(table_text)
    if json_path:
        json_path.write_text(json.dumps(result, indent=2, default=str))
        print(f"\nJSON: {json_path}")
    return 0


def pct(values: list[float], q: float) -> float:
    """Nearest-rank percentile (p99 of 50 samples is the largest but none)."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q / 100 * len(ordered)) - 1))]


POLL_INTERVAL = 0.001


def wait_enforced(kind: str, rv: int, timeout: float = 60.0) -> float:
    """Poll /healthz every POLL_INTERVAL (1 ms) until syncedResourceVersions[kind] >= rv; return perf_counter at that moment."""
    deadline = time.perf_counter() + timeout
    while time.perf_counter() < deadline:
        code, body = healthz()
        if body is not None:
            version = (body.get("syncedResourceVersions") or {}).get(kind)
            if version is not None and int(version) >= rv:
                return time.perf_counter()
        time.sleep(POLL_INTERVAL)
    raise TimeoutError(f"{kind} version {rv} not reported by the agent within {timeout} s")


def measure_changes(api: str, objects: dict[str, list[dict[str, Any]]], desired_local: dict[str, Any],
                    count: int, gap: float, log_path: Path, rng: random.Random) -> dict[str, Any]:
    """Runs inside the namespace: each change kind ``count`` times, one at a time."""
    results: dict[str, Any] = {}

    def series(name: str, kind: str, writes: list[Any]) -> None:
        start_offset = log_path.stat().st_size
        latencies, write_times = [], []
        for write in writes:
            t0 = time.perf_counter()
            obj = write()
            t_written = time.perf_counter()
            rv = int(obj["metadata"]["resourceVersion"])
            t1 = wait_enforced(kind, rv)
            latencies.append((t1 - t0) * 1000)
            write_times.append((t_written - t0) * 1000)
            time.sleep(gap)
        time.sleep(0.2)
        results[name] = {"kind": kind, "n": len(latencies), "latency_ms": latencies, "write_ms": write_times,
                         "log_range": [start_offset, log_path.stat().st_size]}

    # 1. pod add: new local pods whose labels copy a selected local pod's (so policies select them)
    selected = desired_local["selected_pods"]
    templates = [p for p in objects["pods"] if f"{p['metadata']['namespace']}/{p['metadata']['name']}" in selected]
    templates = templates or [p for p in objects["pods"] if p["spec"]["nodeName"] == NODE]
    base = 2 + len([p for p in objects["pods"] if p["spec"]["nodeName"] == NODE])
    if base + count > 254:
        raise SystemExit(f"--changes {count}: bench-node's /24 has no room for that many new pods")

    def pod_add(i: int) -> Any:
        template = templates[i % len(templates)]
        meta = template["metadata"]
        pod = make_pod(f"added-{i:04d}", meta["namespace"], NODE, node_ip(0, base + i), rng,
                       labels=dict(meta["labels"]))
        return lambda: http("POST", f"{api}/api/v1/namespaces/{meta['namespace']}/pods", pod)

    series("pod add", "pods", [pod_add(i) for i in range(count)])

    # 2. pod label change: flip a local, policy-selected pod's app label to another app and back
    def relabel(i: int) -> Any:
        pod = templates[i % len(templates)]
        meta = pod["metadata"]
        original = meta["labels"]["app"]
        turn = (i // len(templates)) % 2
        app = original if turn else APPS[(APPS.index(original) + 1) % len(APPS)]
        return lambda: http("PATCH", f"{api}/api/v1/namespaces/{meta['namespace']}/pods/{meta['name']}",
                            {"metadata": {"labels": {"app": app}}}, "application/merge-patch+json")

    series("pod label change", "pods", [relabel(i) for i in range(count)])

    # 3. policy change: update the ingress ports of a policy selecting local pods
    candidates = [p for p in objects["networkpolicies"]
                  if f"{p['metadata']['namespace']}/{p['metadata']['name']}" in desired_local["selecting_policies"]
                  and p["spec"].get("ingress")]

    def policy_update(i: int) -> Any:
        policy = candidates[i % len(candidates)]
        meta = policy["metadata"]
        ingress = copy.deepcopy(policy["spec"]["ingress"])
        ingress[0]["ports"] = [{"protocol": "TCP", "port": 10000 + i}]
        return lambda: http("PATCH",
                            f"{api}/apis/networking.k8s.io/v1/namespaces/{meta['namespace']}/networkpolicies/{meta['name']}",
                            {"spec": {"ingress": ingress}}, "application/merge-patch+json")

    series("policy change", "networkpolicies", [policy_update(i) for i in range(count)])
    return results


SYNC_LINE = re.compile(r"sync (full|partial) ok in ([\d.]+) ms")
FW_LINE = re.compile(r"firewall sync \(full=(True|False)\): (\d+) set\(s\) written, (\d+) chain\(s\) written, "
                     r"(\d+) chain\(s\) and (\d+) set\(s\) removed")


def parse_log(text: str) -> dict[str, Any]:
    syncs = [(m.group(1), float(m.group(2))) for m in SYNC_LINE.finditer(text)]
    writes = [{"full": m.group(1) == "True", "sets": int(m.group(2)), "chains": int(m.group(3)),
               "chains_removed": int(m.group(4)), "sets_removed": int(m.group(5))} for m in FW_LINE.finditer(text)]
    return {"syncs": syncs, "writes": writes}


def parse_metrics(text: str) -> dict[str, float]:
    wanted = ("kubeproxy_sync_full_proxy_rules_duration_seconds_sum",
              "kubeproxy_sync_full_proxy_rules_duration_seconds_count",
              "kubeproxy_sync_partial_proxy_rules_duration_seconds_sum",
              "kubeproxy_sync_partial_proxy_rules_duration_seconds_count",
              'kr_backend_sync_duration_seconds_sum{backend="firewall.iptables"}',
              'kr_backend_sync_duration_seconds_count{backend="firewall.iptables"}')
    out = {}
    for line in text.splitlines():
        for name in wanted:
            if line.startswith(name + " "):
                out[name] = float(line.rsplit(" ", 1)[1])
    return out


def filter_dump(save: str) -> str:
    """iptables-restore input holding only kr's chains, their rules and the hook jumps."""
    lines = ["*filter"]
    for line in save.splitlines():
        if line.startswith(":KR-FW"):
            lines.append(line.split(" ", 1)[0] + " - [0:0]")
    for line in save.splitlines():
        if line.startswith("-A KR-FW") or (line.startswith("-A ") and line.endswith("-j KR-FW")):
            lines.append(line)
    lines += ["COMMIT", ""]
    return "\n".join(lines)


def ipset_dump(save: str) -> str:
    return "".join(line + "\n" for line in save.splitlines() if line.split(" ", 2)[1:2] and
                   line.split(" ", 2)[1].startswith("KR-FW-"))


def measure_floor(prefix: str, flavour: str, rules: str, sets: str, runs: int) -> dict[str, Any]:
    samples = []
    for i in range(runs):
        ns = f"{prefix}-f{i}"
        labns.create(ns)
        try:
            t_sets, _ = in_ns(ns, run_cmd, ["ipset", "restore"], sets)
            t_rules, _ = in_ns(ns, run_cmd, [f"iptables-{flavour}-restore", "--noflush", "-w"], rules)
            samples.append({"ipset": t_sets * 1000, "iptables": t_rules * 1000, "total": (t_sets + t_rules) * 1000})
        finally:
            labns.delete([ns])
    return {"samples": samples, "median_ms": statistics.median(s["total"] for s in samples),
            "ipset_median_ms": statistics.median(s["ipset"] for s in samples),
            "iptables_median_ms": statistics.median(s["iptables"] for s in samples)}


def vm_status(pid: int) -> dict[str, int]:
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmHWM", "VmRSS"):
                out[key] = int(value.split()[0])  # kB
    return out


def local_selection(objects: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    from kr_core.desired import build_desired_state
    desired = build_desired_state(snapshot_of(objects), NODE)
    local = [p for p in desired.pods if p.node_name == NODE]
    selected, selecting = set(), set()
    for policy in desired.policies:
        for pod in local:
            if policy.selects(pod):
                selected.add(pod.key)
                selecting.add(policy.key)
    return {"selected_pods": selected, "selecting_policies": selecting}


def stop_process(proc: subprocess.Popen[Any] | None) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(5)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


def run(args: argparse.Namespace) -> dict[str, Any]:
    rng = random.Random(args.seed + 1)
    t = time.perf_counter()
    objects = generate(args)
    generation_s = time.perf_counter() - t
    selection = local_selection(objects)
    workdir = Path(tempfile.mkdtemp(prefix="krbench-"))
    seed_file = workdir / "seed.json"
    seed_file.write_text(json.dumps({"apiVersion": "v1", "kind": "List",
                                     "items": [o for kind in ("namespaces", "nodes", "pods", "networkpolicies")
                                               for o in objects[kind]]}))
    prefix = f"krbench-{secrets.token_hex(2)}"
    ns = prefix
    api_proc = agent_proc = None
    result: dict[str, Any] = {"params": vars(args).copy(), "namespace": ns, "workdir": str(workdir),
                              "objects": {k: len(v) for k, v in objects.items()},
                              "local_pods_selected": len(selection["selected_pods"]),
                              "policies_selecting_local": len(selection["selecting_policies"])}
    print(f"objects: {result['objects']} (generated in {generation_s:.1f} s); namespace {ns}; logs in {workdir}",
          flush=True)
    try:
        labns.create(ns)
        port_file = workdir / "api.port"
        api_log = open(workdir / "api.log", "w")
        t = time.perf_counter()
        api_proc = subprocess.Popen(
            ["ip", "netns", "exec", ns, sys.executable, "-m", "kr_apiserver", "--listen", "127.0.0.1",
             "--port", str(API_PORT), "--port-file", str(port_file), "--history", "100000",
             "--bookmark-interval", "1", "--seed", str(seed_file), "--log-level", "warning"],
            cwd=REPO, stdout=api_log, stderr=subprocess.STDOUT)
        while not port_file.exists():
            if api_proc.poll() is not None:
                raise RuntimeError(f"API stand-in exited: {(workdir / 'api.log').read_text()[-2000:]}")
            time.sleep(0.05)
        result["api_seed_s"] = time.perf_counter() - t
        api = f"http://127.0.0.1:{API_PORT}"
        print(f"API stand-in seeded and serving in {result['api_seed_s']:.1f} s", flush=True)

        log_path = workdir / "agent.log"
        agent_log = open(log_path, "w")
        t_start = time.perf_counter()
        agent_proc = subprocess.Popen(
            ["ip", "netns", "exec", ns, str(REPO / ".venv/bin/kr"), "run", "--plugins", "firewall.iptables",
             "--hostname-override", NODE, "--master", api, "--healthz-bind-address", f"127.0.0.1:{HEALTHZ_PORT}",
             "--metrics-bind-address", f"127.0.0.1:{METRICS_PORT}", "--min-sync-period", "0", "-v"],
            cwd=REPO, stdout=agent_log, stderr=subprocess.STDOUT)

        def wait_first_sync() -> float:
            deadline = time.perf_counter() + 600
            while time.perf_counter() < deadline:
                if agent_proc.poll() is not None:
                    raise RuntimeError(f"agent exited: {log_path.read_text()[-3000:]}")
                code, _ = healthz()
                if code == 200:
                    return time.perf_counter()
                time.sleep(0.01)
            raise TimeoutError("agent's first sync did not finish in 600 s")

        result["start_to_first_sync_s"] = in_ns(ns, wait_first_sync) - t_start
        text = log_path.read_text()
        first = parse_log(text)
        result["first_sync_ms"] = next(ms for mode, ms in first["syncs"] if mode == "full")
        result["first_sync_writes"] = first["writes"][0] if first["writes"] else None
        flavour = re.search(r"firewall: using iptables-(\w+)", text)
        result["flavour"] = flavour.group(1) if flavour else "nft"
        result["rss_after_first_sync_kib"] = vm_status(agent_proc.pid)
        print(f"first full sync {result['first_sync_ms']:.0f} ms (agent start to healthy "
              f"{result['start_to_first_sync_s']:.1f} s), iptables-{result['flavour']}", flush=True)

        # what was programmed
        _, save = in_ns(ns, run_cmd, [f"iptables-{result['flavour']}-save", "-t", "filter"])
        _, sets_save = in_ns(ns, run_cmd, ["ipset", "save"])
        rules, sets = filter_dump(save), ipset_dump(sets_save)
        (workdir / "rules.txt").write_text(rules)
        (workdir / "sets.txt").write_text(sets)
        result["programmed"] = {
            "chains": sum(1 for line in rules.splitlines() if line.startswith(":KR-FW")),
            "rules": sum(1 for line in rules.splitlines() if line.startswith("-A KR-FW")),
            "hook_rules": sum(1 for line in rules.splitlines() if line.startswith("-A ") and not line.startswith("-A KR-FW")),
            "sets": sum(1 for line in sets.splitlines() if line.startswith("create ")),
            "set_members": sum(1 for line in sets.splitlines() if line.startswith("add ")),
            "restore_lines": len(rules.splitlines()) + len(sets.splitlines()),
        }
        result["floor"] = measure_floor(prefix, result["flavour"], rules, sets, args.floor_runs)
        result["full_over_floor"] = result["first_sync_ms"] / result["floor"]["median_ms"]
        print(f"floor {result['floor']['median_ms']:.0f} ms (ipset {result['floor']['ipset_median_ms']:.0f} + "
              f"iptables {result['floor']['iptables_median_ms']:.0f}); ratio {result['full_over_floor']:.2f}",
              flush=True)

        # changes
        spy = None
        if args.pyspy:
            spy = subprocess.Popen([args.pyspy, "record", "--pid", str(agent_proc.pid), "--format", "raw",
                                    "--threads", "--rate", "200", "--nonblocking",
                                    "--output", str(workdir / "pyspy.txt")],
                                   stdout=subprocess.DEVNULL, stderr=open(workdir / "pyspy.log", "w"))
            time.sleep(1.0)
        changes = in_ns(ns, measure_changes, api, objects, selection, args.changes, args.gap, log_path, rng)
        if spy is not None:
            spy.send_signal(2)
            spy.wait(30)
        text = log_path.read_text()
        for name, series in changes.items():
            start, end = series.pop("log_range")
            parsed = parse_log(text[start:end])
            lat = series["latency_ms"]
            series.update({
                "p50_ms": pct(lat, 50), "p99_ms": pct(lat, 99), "max_ms": max(lat),
                "write_p50_ms": pct(series["write_ms"], 50),
                "syncs": len(parsed["syncs"]),
                "sync_p50_ms": pct([ms for _, ms in parsed["syncs"]], 50),
                "sync_p99_ms": pct([ms for _, ms in parsed["syncs"]], 99),
                "sets_written_per_sync": pct([w["sets"] for w in parsed["writes"]], 50),
                "chains_written_per_sync": pct([w["chains"] for w in parsed["writes"]], 50),
                "sets_written_max": max((w["sets"] for w in parsed["writes"]), default=0),
                "chains_written_max": max((w["chains"] for w in parsed["writes"]), default=0),
            })
            print(f"{name}: p50 {series['p50_ms']:.0f} ms, p99 {series['p99_ms']:.0f} ms "
                  f"({series['syncs']} syncs, sync p50 {series['sync_p50_ms']:.0f} ms)", flush=True)
        result["changes"] = changes
        all_syncs = parse_log(text)["syncs"]
        partial = [ms for mode, ms in all_syncs if mode == "partial"]
        result["partial_sync_ms"] = {"n": len(partial), "p50": pct(partial, 50), "p99": pct(partial, 99),
                                     "max": max(partial, default=float("nan"))}
        result["metrics"] = parse_metrics(in_ns(ns, http, "GET", f"http://127.0.0.1:{METRICS_PORT}/metrics"))
        result["rss_kib"] = vm_status(agent_proc.pid)
        if args.keep_logs:
            result["agent_log"] = str(log_path)
    finally:
        stop_process(agent_proc)
        stop_process(api_proc)
        labns.delete([ns])
        if not args.keep_logs:
            shutil.rmtree(workdir, ignore_errors=True)
    return result


BACKEND_SUM = 'kr_backend_sync_duration_seconds_sum{backend="firewall.iptables"}'
BACKEND_COUNT = 'kr_backend_sync_duration_seconds_count{backend="firewall.iptables"}'


def table(result: dict[str, Any]) -> str:
    m = result["metrics"]
    rows = [("objects", ", ".join(f"{v} {k}" for k, v in result["objects"].items())),
            ("local pods selected / policies selecting them",
             f"{result['local_pods_selected']} / {result['policies_selecting_local']}"),
            ("iptables flavour", result["flavour"]),
            ("first full sync (agent log)", f"{result['first_sync_ms']:.0f} ms"),
            ("  /metrics full sync sum/count",
             f"{m.get('kubeproxy_sync_full_proxy_rules_duration_seconds_sum', float('nan')) * 1000:.0f} ms / "
             f"{m.get('kubeproxy_sync_full_proxy_rules_duration_seconds_count', 0):.0f}"),
            ("  /metrics backend firewall.iptables sum/count",
             f"{m.get(BACKEND_SUM, float('nan')) * 1000:.0f} ms / "
             f"{m.get(BACKEND_COUNT, 0):.0f}"),
            ("agent start to first sync done", f"{result['start_to_first_sync_s']:.2f} s"),
            ("floor: ipset + iptables restore (median)",
             f"{result['floor']['median_ms']:.0f} ms ({result['floor']['ipset_median_ms']:.0f} + "
             f"{result['floor']['iptables_median_ms']:.0f})"),
            ("full sync / floor (target <= 1.5)", f"{result['full_over_floor']:.2f}"),
            ("programmed", ", ".join(f"{v} {k}" for k, v in result["programmed"].items())),
            ("first sync wrote", str(result["first_sync_writes"]))]
    for name, s in result["changes"].items():
        rows.append((f"{name}: latency p50 / p99 / max (n={s['n']})",
                     f"{s['p50_ms']:.0f} / {s['p99_ms']:.0f} / {s['max_ms']:.0f} ms"))
        rows.append(("  syncs; sync p50/p99; sets, chains written per sync (p50, max)",
                     f"{s['syncs']}; {s['sync_p50_ms']:.0f}/{s['sync_p99_ms']:.0f} ms; "
                     f"{s['sets_written_per_sync']:.0f} ({s['sets_written_max']}), "
                     f"{s['chains_written_per_sync']:.0f} ({s['chains_written_max']})"))
    p = result["partial_sync_ms"]
    rows.append(("partial syncs: n, p50 / p99 / max", f"{p['n']}, {p['p50']:.0f} / {p['p99']:.0f} / {p['max']:.0f} ms"))
    rows.append(("  /metrics partial sum/count",
                 f"{m.get('kubeproxy_sync_partial_proxy_rules_duration_seconds_sum', float('nan')) * 1000:.0f} ms / "
                 f"{m.get('kubeproxy_sync_partial_proxy_rules_duration_seconds_count', 0):.0f}"))
    rows.append(("agent peak RSS (VmHWM, target < 150 MiB)", f"{result['rss_kib']['VmHWM'] / 1024:.0f} MiB "
                 f"(after first sync {result['rss_after_first_sync_kib']['VmHWM'] / 1024:.0f} MiB)"))
    width = max(len(r[0]) for r in rows)
    return "\n".join(f"{k.ljust(width)}  {v}" for k, v in rows)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--policies", type=int, default=1000)
    parser.add_argument("--namespaces", type=int, default=100)
    parser.add_argument("--pods", type=int, default=5000)
    parser.add_argument("--local-pods", type=int, default=110)
    parser.add_argument("--pods-per-node", type=int, default=110, help="remote pods per remote Node")
    parser.add_argument("--changes", type=int, default=50, help="changes of each kind")
    parser.add_argument("--gap", type=float, default=0.05, help="seconds between two changes")
    parser.add_argument("--poll-interval", type=float, default=0.001,
                        help="seconds between two /healthz polls while waiting for enforcement")
    parser.add_argument("--pyspy", metavar="PY_SPY", help="record the agent with this py-spy binary during the changes")
    parser.add_argument("--floor-runs", type=int, default=3)
    parser.add_argument("--seed", type=int, default=4)
    parser.add_argument("--json", type=Path, help="write the full results here")
    parser.add_argument("--keep-logs", action="store_true", help="keep the work directory (agent log, dumps)")
    args = parser.parse_args()
    if os.geteuid() != 0:
        parser.error("must run as root (network namespaces)")
    global POLL_INTERVAL
    POLL_INTERVAL = args.poll_interval
    result = run(args)
    return report(table(result), result, args.json)


if __name__ == "__main__":
    sys.exit(main())
