"""``kr demo``: the blog post's walkthrough on this machine, in network namespaces.

It brings up the default lab (kube-master, kube-node1..3, pods on every node, a real ``kr run`` per node
with the backends that exist, routing by ``routing.static`` or, with ``--routing bgp``, ``routing.bgp``),
then applies the walkthrough's steps and prints a reachability table after each: pod to pod across
nodes, and a Service as the cluster sees it. It tears everything down at the end unless ``--keep`` is
given, also when interrupted.

Invariant: a table is printed only once the routing it shows is in place (with BGP, once every node's
BIRD has put the other nodes' pod CIDRs into its kernel), so every table shows a settled state.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Callable
from typing import Any

import click
import yaml

from kr_core.errors import KrError
from kr_core.plugins import installed_plugins
from kr_lab import netns
from kr_lab.cli import render_matrix
from kr_lab.lab import KR, Lab
from kr_lab.spec import DEFAULT_SPEC_TEXT
from kr_lab.state import LabError, StateDir

#: connections each pod makes to the Service in the demo's Service step
SERVICE_PROBES = 6
#: the backends the demo runs after the routing one when installed, in datapath order
SERVICE_PLUGINS = ("proxy.iptables", "firewall.iptables")
#: seconds the BGP mesh gets to (re)converge before the demo gives up
BGP_TIMEOUT = 60.0

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


def run_demo(state_path: str, keep: bool, routing: str = "static") -> None:
    plugins = installed((f"routing.{routing}", *SERVICE_PLUGINS))
    if f"routing.{routing}" not in plugins:
        raise click.ClickException(f"routing.{routing} is not installed")
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
        if routing == "bgp":
            _wait_bgp(lab, "every node's BIRD peers with the others (iBGP full mesh) and installs their pod CIDRs")
            step(2, "pod-to-pod reachability across nodes over routes learned by BGP; kube-node1's sessions and routes")
            _show_bgp(lab, "kube-node1")
        else:
            step(2, "pod-to-pod reachability across nodes (routes to every node's pod CIDR come from kr)")
        show_matrix(lab)

        if routing == "bgp":
            step(3, "stop kr on kube-node3 (its BIRD goes on routing), then remove what kr programmed there "
                    "(kr cleanup): kube-node3's pods are cut off; start kr again")
            _restart_bgp(lab, "kube-node3")
        else:
            step(3, "stop kr on kube-node3 and remove what it programmed (kr cleanup): kube-node3's pods are cut off")
            _restart_static(lab, "kube-node3")

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


# --- step 3 per routing backend


def _restart_static(lab: Lab, node: str) -> None:
    lab.stop_agent(node)
    lab.cleanup_agent(node, ["routing.static"])
    show_matrix(lab)
    click.echo(f"  start kr on {node} again:")
    lab.start_agent(node)
    lab.wait_agents_ready(30, [node])
    show_matrix(lab)


def _restart_bgp(lab: Lab, node: str) -> None:
    click.echo(f"  stopping kr alone leaves {node}'s BIRD running with its sessions and routes; nothing is cut off:")
    lab.stop_agent(node)
    show_matrix(lab)
    cidr = lab.state.hosts[node].pod_cidr
    click.echo(f"  kr cleanup --plugins routing.bgp on {node} stops its BIRD: the other nodes withdraw {cidr}")
    lab.cleanup_agent(node, ["routing.bgp"])
    _wait_routes(lab, lambda other, routes: other == node or cidr not in routes,
                 f"the other nodes still route {cidr} after {node}'s BIRD stopped")
    _show_bgp(lab, "kube-node1", routes=False)
    show_matrix(lab)
    click.echo(f"  start kr on {node} again: it starts its BIRD and the sessions come back")
    lab.start_agent(node)
    lab.wait_agents_ready(30, [node])
    _wait_bgp(lab, "the mesh is whole again")
    show_matrix(lab)


# --- BGP


def _bgp_routes(lab: Lab, node: str) -> set[str]:
    """The prefixes BIRD has put into ``node``'s kernel."""
    routes = json.loads(netns.ip("-j", "-4", "route", "show", "proto", "bird", netns=lab.netns_of(node)) or "[]")
    return {route["dst"] for route in routes}


def _wait_routes(lab: Lab, done: Callable[[str, set[str]], bool], failure: str) -> float:
    """Wait until ``done(node, its BGP routes)`` holds on every node; return the seconds it took."""
    started = time.monotonic()
    while not all(done(host.name, _bgp_routes(lab, host.name)) for host in lab.spec.nodes):
        if time.monotonic() - started > BGP_TIMEOUT:
            raise LabError(f"{failure} ({BGP_TIMEOUT:g}s); see the agents' logs in {lab.dir.logs}")
        time.sleep(0.1)
    return time.monotonic() - started


def _wait_bgp(lab: Lab, what: str) -> None:
    """Wait until every node routes every other node's pod CIDR over BGP."""
    cidrs = {host.name: str(host.pod_cidr) for host in lab.spec.nodes}
    took = _wait_routes(lab, lambda node, routes: routes >= {c for n, c in cidrs.items() if n != node},
                        "the BGP mesh did not converge")
    click.echo(f"  {what}: {took:.1f}s")


def _show_bgp(lab: Lab, node: str, routes: bool = True) -> None:
    """What an operator sees on ``node``: ``kr bgp peers`` (and ``kr bgp routes``)."""
    for command in ("peers", "routes") if routes else ("peers",):
        argv = [KR, "bgp", command, "--hostname-override", node, "--bgp-run-dir", str(lab.dir.bgp_run_dir)]
        done = subprocess.run(["ip", "netns", "exec", lab.netns_of(node), *argv], capture_output=True, text=True,
                              check=False)
        click.echo(f"  {node}$ kr bgp {command}")
        click.echo("\n".join(f"    {line}" for line in (done.stdout or done.stderr).rstrip().splitlines()))


# --- the Service step


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
