"""``kr demo`` (API side): a real ``kr run`` follows the seed cluster through the API stand-in.

It starts the API stand-in on loopback with the seed cluster, runs ``kr run --plugins debug.log`` as a
separate process over HTTP with a kubeconfig, then scales, adds and deletes services while printing what
the agent computed after each step. Nothing outside this process tree is touched: no namespaces, no
routes, no rules; only 127.0.0.1.

Invariant: the agent process and the server are stopped on every exit path (including Ctrl-C).
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from kr_apiserver import APIServer
from kr_lab.cluster import endpoint_slices, pod, seed_cluster, service
from kr_lab.kubeconfig import write_kubeconfig

Sync = dict[str, Any]


class RecordReader:
    """Reads the syncs the agent appends to its record file."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.seen = 0

    def next_sync(self, predicate: Callable[[Sync], bool], timeout: float = 15.0) -> Sync:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            lines = self.path.read_text().splitlines() if self.path.exists() else []
            for index in range(self.seen, len(lines)):
                sync = json.loads(lines[index])
                if predicate(sync):
                    self.seen = index + 1
                    return sync
            time.sleep(0.05)
        raise click.ClickException(f"the agent did not sync within {timeout:g}s")


def describe(sync: Sync) -> str:
    lines = [f"  sync #{sync['sync']} ({'full' if sync['full'] else 'partial'}), changed: "
             + (", ".join(f"{kind} {', '.join(keys)}" for kind, keys in sync["changed"].items()) or "-")]
    for port in sync["desired"]["services"]:
        ends = ", ".join(f"{e['address']}:{e['port']}{'*' if e['is_local'] else ''}" for e in port["endpoints"]) or "(none)"
        vips = ",".join(port["cluster_ips"])
        node_port = f" nodePort {port['node_port']}" if port["node_port"] else ""
        lines.append(f"    {port['namespace']}/{port['name']}:{port['port_name'] or '-'}  {vips}:{port['port']}/{port['protocol']}"
                     f"{node_port} -> {ends}")
    return "\n".join(lines)


def run_demo(node: str = "kube-node1") -> None:
    objects = seed_cluster()
    pods = [o for o in objects if o["kind"] == "Pod"]
    with tempfile.TemporaryDirectory(prefix="kr-demo-") as workdir, \
            APIServer("127.0.0.1", 0, bookmark_interval=5.0) as server:
        for obj in objects:
            server.store.apply(obj)
        kubeconfig = write_kubeconfig(server.url, Path(workdir) / "kubeconfig")
        record = Path(workdir) / "record.jsonl"
        click.secho(f"API stand-in at {server.url} with the seed cluster: kube-node1..3, pod CIDRs 10.1.{{1,2,3}}.0/24, "
                    f"services in 10.96.0.0/12; kubeconfig {kubeconfig}", bold=True)
        command = [str(Path(sys.executable).with_name("kr")), "run", "--plugins", "debug.log",
                   "--hostname-override", node, "--kubeconfig", str(kubeconfig), "--debug-record", str(record),
                   "--min-sync-period", "0.5", "--healthz-bind-address", "127.0.0.1:0", "--metrics-bind-address", "off"]
        click.secho("$ " + " ".join(command[1:]), fg="cyan")
        agent = subprocess.Popen(command)
        try:
            reader = RecordReader(record)
            steps: list[tuple[str, Callable[[], None], Callable[[Sync], bool]]] = [
                ("the agent lists every kind, then makes its first (full) sync",
                 lambda: None, lambda s: True),
                ("scale backend/api: a third pod on kube-node1 joins the endpoints (* = local to this node)",
                 lambda: _scale(server, pods), lambda s: _endpoint_count(s, "backend/api/http") == 3),
                ("create service backend/metrics (ClusterIP 10.96.0.30, port 9100)",
                 lambda: _add_metrics(server, pods), lambda s: _endpoint_count(s, "backend/metrics/metrics") == 3),
                ("delete service frontend/web",
                 lambda: server.store.delete("services", "frontend", "web"),
                 lambda s: "frontend/web/http" not in _ports(s)),
            ]
            for number, (title, action, done) in enumerate(steps, 1):
                click.secho(f"\nStep {number}: {title}", fg="green", bold=True)
                action()
                click.echo(describe(reader.next_sync(done)))
                time.sleep(0.3)
            click.secho("\nThe agent followed every change with one sync each. Stopping it (SIGTERM).", bold=True)
        finally:
            agent.send_signal(signal.SIGTERM)
            try:
                agent.wait(timeout=10)
            except subprocess.TimeoutExpired:
                agent.kill()
                agent.wait()


def _ports(sync: Sync) -> dict[str, Any]:
    return {f"{p['namespace']}/{p['name']}/{p['port_name']}": p for p in sync["desired"]["services"]}


def _endpoint_count(sync: Sync, key: str) -> int:
    port = _ports(sync).get(key)
    return len(port["endpoints"]) if port else 0


def _scale(server: APIServer, pods: list[dict[str, Any]]) -> None:
    extra = pod("backend", "api-3", "kube-node1", "10.1.1.3", {"app": "api"}, [("http", 9092, "TCP"), ("dns", 5353, "UDP")])
    pods.append(extra)
    server.store.apply(extra)
    api = next(o for o in seed_cluster() if o["kind"] == "Service" and o["metadata"]["name"] == "api")
    for slice_ in endpoint_slices(api, pods):
        server.store.apply(slice_)


def _add_metrics(server: APIServer, pods: list[dict[str, Any]]) -> None:
    metrics = service("backend", "metrics", "10.96.0.30", {"app": "api"}, [("metrics", 9100, 9100, "TCP")])
    server.store.apply(metrics)
    for slice_ in endpoint_slices(metrics, pods):
        server.store.apply(slice_)
