"""``kr demo``: the blog post's walkthrough on this machine, in network namespaces.

It brings up the default lab (kube-master, kube-node1..3, pods on every node, a real ``kr run`` per node
with the backends that exist), then applies the walkthrough's steps and prints a reachability table
after each: pod to pod across nodes, and a Service as the cluster sees it. It tears everything down at
the end unless ``--keep`` is given, also when interrupted.
"""

from __future__ import annotations

import subprocess
import time
from typing import Any

import click
import yaml

from kr_core.errors import KrError
from kr_core.plugins import installed_plugins
from kr_lab.cli import render_matrix
from kr_lab.lab import KR, Lab
from kr_lab.spec import DEFAULT_SPEC_TEXT
from kr_lab.state import StateDir

#: connections each pod makes to the Service in the demo's Service step
SERVICE_PROBES = 6
#: the backends the demo runs when installed, in datapath order
DEMO_PLUGINS = ("routing.static", "proxy.iptables", "firewall.iptables")

SCALE = {"apiVersion": "v1", "kind": "Pod",
         "metadata": {"namespace": "backend", "name": "api-3", "labels": {"app": "api"}},
         "spec": {"nodeName": "kube-node1", "containers": [{"name": "api", "ports": [
             {"name": "http", "containerPort": 9090, "protocol": "TCP"}]}]}}
POLICY = {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
          "metadata": {"namespace": "backend", "name": "api-from-frontend"},
          "spec": {"podSelector": {"matchLabels": {"app": "api"}}, "policyTypes": ["Ingress"],
                   "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"team": "web"}}}],
                                "ports": [{"protocol": "TCP", "port": "http"}]}]}}
SERVICE = {"apiVersion": "v1", "kind": "Service", "metadata": {"namespace": "backend", "name": "api"},
           "spec": {"selector": {"app": "api"}, "ports": [{"name": "http", "port": 80, "targetPort": "http"}]}}


def installed(names: tuple[str, ...]) -> list[str]:
    available = {plugin.name for plugin in installed_plugins()}
    return [name for name in names if name in available]


def step(number: int, title: str) -> None:
    click.secho(f"\nStep {number}: {title}", fg="green", bold=True)


def show_matrix(lab: Lab) -> None:
    started = time.monotonic()
    rows = lab.matrix(None, None, timeout=1.0)
    click.echo(render_matrix(rows))
    click.echo(f"(each pod probed on its first declared port; {len(rows)} probes in {(time.monotonic() - started) * 1000:.0f} ms)")


def run_demo(state_path: str, keep: bool) -> None:
    plugins = installed(DEMO_PLUGINS)
    state_dir = StateDir(state_path)
    if state_dir.exists():
        Lab.down(state_dir)
    step(1, f"bring up the seed's cluster: kube-master, kube-node1..3, pods on every node; kr runs {', '.join(plugins)}")
    try:
        lab = Lab.up(state_dir, yaml.safe_load(DEFAULT_SPEC_TEXT), plugins,
                     progress=lambda message: click.echo("  " + message))
        status = lab.status()
        for node in status["nodes"]:
            click.echo(f"  {node['name']}: {node['ip']}, pod CIDR {node['podCIDR']}, agent {node['agent']}")
        step(2, "pod-to-pod reachability across nodes (routes to every node's pod CIDR come from kr)")
        show_matrix(lab)

        if "routing.static" in plugins:
            step(3, "stop kr on kube-node3 and remove what it programmed (kr cleanup): kube-node3's pods are cut off")
            lab.stop_agent("kube-node3")
            subprocess.run(["ip", "netns", "exec", lab.netns_of("kube-node3"), KR, "cleanup", "--plugins", "routing.static"],
                           check=True, capture_output=True)
            show_matrix(lab)
            click.echo("  start kr on kube-node3 again:")
            lab.start_agent("kube-node3")
            lab.wait_agents_ready(30, ["kube-node3"])
            show_matrix(lab)

        step(4, "scale backend/api: a third api pod starts on kube-node1 and is reachable from every node at once")
        lab.apply([SCALE])
        show_matrix(lab)

        step(5, "create Service backend/api; the API stand-in allocates a ClusterIP and the endpoints follow the pods")
        lab.apply([SERVICE])
        cluster_ip = _show_service(lab)
        if "proxy.iptables" in plugins:
            click.echo(f"  every pod connects {SERVICE_PROBES} times to {cluster_ip}:80; which api pods answered:")
            click.echo(_service_table(lab, cluster_ip))
        else:
            click.echo("  (no service proxy backend is installed, so traffic to the ClusterIP is not proxied)")
        if "firewall.iptables" in plugins:
            step(6, "NetworkPolicy backend/api-from-frontend: api pods accept only namespace frontend (team=web) on http")
            lab.apply([POLICY])
            show_matrix(lab)
            click.echo("  (rows are sources: only frontend/web-* still reach the backend/api-* columns; "
                       "other pods are rejected at once)")
            if "proxy.iptables" in plugins:
                click.echo("  through the Service too (policy applies after the ClusterIP is translated):")
                click.echo(_service_table(lab, cluster_ip))
            step(7, "delete the policy: traffic to the api pods is restored")
            lab.delete([POLICY])
            show_matrix(lab)
    except KrError as exc:
        raise click.ClickException(str(exc)) from exc
    finally:
        if keep:
            click.secho(f"\nThe lab stays up: kr lab status --state {state_path}; kr lab down --state {state_path}", bold=True)
        else:
            click.secho("\nTearing the lab down.", bold=True)
            if state_dir.exists():
                Lab.down(state_dir)


def _show_service(lab: Lab) -> str:
    from kubernetes import client

    def read(api_client: client.ApiClient) -> Any:
        core = client.CoreV1Api(api_client)
        discovery = client.DiscoveryV1Api(api_client)
        service = core.read_namespaced_service("api", "backend")
        slices = discovery.list_namespaced_endpoint_slice("backend", label_selector="kubernetes.io/service-name=api")
        return service, slices

    service, slices = lab.call_api(read)
    endpoints = sorted(f"{endpoint.addresses[0]}:{port.port} ({endpoint.node_name})"
                       for item in slices.items for endpoint in item.endpoints or [] for port in item.ports or [])
    click.echo(f"  backend/api: ClusterIP {service.spec.cluster_ip}:80 -> {', '.join(endpoints)}")
    return str(service.spec.cluster_ip)


def _service_table(lab: Lab, cluster_ip: str) -> str:
    """One row per pod: how many of its connections to the ClusterIP each api pod answered."""
    pods = [pod["pod"] for pod in lab.status()["pods"]]
    lines = []
    for source in pods:
        answers: dict[str, int] = {}
        for _ in range(SERVICE_PROBES):
            result = lab.probe(source, cluster_ip, 80, "tcp", timeout=1.0)
            who = result.answer if result.ok and result.answer else f"({result.error})"
            answers[who] = answers.get(who, 0) + 1
        cells = ", ".join(f"{who} x{count}" for who, count in sorted(answers.items()))
        lines.append(f"  {source.ljust(max(map(len, pods)) + 2)}{cells}")
    return "\n".join(lines)
