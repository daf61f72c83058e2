"""``kr lab ...``: the lab's command line. Every command takes ``--state DIR`` (default ``./.kr-lab``).

Exit status 0 on success; on failure one ``Error: ...`` line and status 1. ``kr lab probe`` exits 1 when
the connection is refused or times out, and prints why.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import click
import yaml

from kr_lab.lab import Lab
from kr_core.errors import KrError
from kr_lab.spec import SpecError, load_spec_document
from kr_lab.state import StateDir

DEFAULT_PLUGINS = "routing.static"

state_option = click.option("--state", "state_path", default=".kr-lab", show_default=True, envvar="KR_LAB_STATE",
                            type=click.Path(file_okay=False), help="The lab's state directory.")


def _lab(state_path: str, barrier_timeout: float = 30.0) -> Lab:
    try:
        return Lab(StateDir(state_path), barrier_timeout)
    except (KrError, SpecError) as exc:
        raise click.ClickException(str(exc)) from exc


def _documents(path: str) -> list[dict[str, Any]]:
    try:
        text = sys.stdin.read() if path == "-" else Path(path).read_text(encoding="utf-8")
        loaded = [doc for doc in yaml.safe_load_all(text) if doc]
    except (OSError, yaml.YAMLError) as exc:
        raise click.ClickException(f"cannot read {path}: {exc}") from exc
    documents: list[dict[str, Any]] = []
    for doc in loaded:
        if not isinstance(doc, dict):
            raise click.ClickException(f"{path}: every document must be a Kubernetes object")
        items = doc.get("items", []) if str(doc.get("kind", "")).endswith("List") else [doc]
        for item in items:
            if not isinstance(item, dict) or not isinstance(item.get("metadata"), dict):
                raise click.ClickException(f"{path}: every object needs a metadata mapping: {str(item)[:100]}")
        documents.extend(items)
    return documents


def _progress(message: str) -> None:
    click.echo(message, err=True)


@click.group()
def lab() -> None:
    """A whole cluster on this machine, in network namespaces, with a real kr agent per node."""


@lab.command()
@state_option
@click.option("--spec", "spec_path", type=click.Path(dir_okay=False, exists=True), help="Spec file (default: the seed's cluster).")
@click.option("--plugins", default=DEFAULT_PLUGINS, show_default=True, help="Plugins every agent runs.")
@click.option("--agent-arg", "agent_args", multiple=True, help="Extra argument for every `kr run` (repeatable).")
@click.option("--timeout", default=60.0, show_default=True, type=click.FloatRange(min=0, min_open=True),
              help="Seconds to wait for the agents' first sync.")
@click.option("--keep-on-failure", is_flag=True, help="Leave a lab whose build failed in place, to look at it.")
def up(state_path: str, spec_path: str | None, plugins: str, agent_args: tuple[str, ...], timeout: float,
       keep_on_failure: bool) -> None:
    """Build the lab and return once every agent has finished its first sync."""
    try:
        data = load_spec_document(spec_path)
        Lab.up(StateDir(state_path), data, [p for p in plugins.split(",") if p], agent_args, _progress, timeout,
               keep_on_failure)
    except (SpecError, KrError) as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(str(StateDir(state_path).kubeconfig))


@lab.command()
@state_option
@click.option("--id", "lab_id", help="Remove the lab with this id even without its state directory.")
def down(state_path: str, lab_id: str | None) -> None:
    """Remove every namespace, link, process and file of the lab (also after a crash)."""
    try:
        removed = Lab.down(StateDir(state_path), lab_id)
    except KrError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"removed {len(removed)} namespaces")


@lab.command(name="list")
def list_labs() -> None:
    """List the ids of labs found on this machine (from their namespaces)."""
    from kr_lab.topology import list_labs as found

    for lab_id in found():
        click.echo(lab_id)


@lab.command()
@state_option
@click.option("--json", "as_json", is_flag=True)
def status(state_path: str, as_json: bool) -> None:
    """Nodes (agent health), pods, external hosts, the API URL and the kubeconfig."""
    report = _lab(state_path).status()
    if as_json:
        click.echo(json.dumps(report, indent=2))
        return
    click.echo(f"lab {report['lab']} ({report['status']}), plugins {', '.join(report['plugins'])}")
    click.echo(f"API {report['api']} on {report['master']['name']}; kubeconfig {report['kubeconfig']}")
    click.echo("NODE          IP               POD CIDR         AGENT      NAMESPACE")
    for node in report["nodes"]:
        click.echo(f"{node['name']:<13} {node['ip']:<16} {node['podCIDR']:<16} {node['agent']:<10} {node['netns']}")
    click.echo("POD                     IP           NODE")
    for pod in report["pods"]:
        click.echo(f"{pod['pod']:<23} {pod['ip']:<12} {pod['node']}")
    for ext in report["externals"]:
        click.echo(f"external {ext['name']} {ext['ip']} ({ext['netns']})")


def change_command(verb: str, past: str, help_text: str) -> click.Command:
    """``kr lab apply`` / ``kr lab delete``: the same options, a different Lab method."""

    @click.option("-f", "--filename", "files", multiple=True, required=True,
                  help="YAML/JSON file of objects ('-' = stdin).")
    @click.option("--no-wait", is_flag=True, help="Return without waiting for the agents to sync the change.")
    @click.option("--timeout", "barrier_timeout", default=30.0, show_default=True,
                  help="Seconds to wait for the agents to sync the change.")
    @state_option
    def command(state_path: str, files: tuple[str, ...], no_wait: bool, barrier_timeout: float) -> None:
        documents = [doc for path in files for doc in _documents(path)]
        try:
            count = getattr(_lab(state_path, barrier_timeout), verb)(documents, wait=not no_wait)
        except KrError as exc:
            raise click.ClickException(str(exc)) from exc
        click.echo(f"{past} {count} objects")

    return click.command(name=verb, help=help_text)(command)


lab.add_command(change_command("apply", "applied", "Create or update objects; return after every agent has synced them."))
lab.add_command(change_command("delete", "deleted", "Delete objects; return after every agent has synced the deletion."))


@lab.command()
@state_option
@click.argument("kind", type=click.Choice(["pod", "namespace", "node"]))
@click.argument("name")
@click.argument("labels", nargs=-1, required=True)
@click.option("--no-wait", is_flag=True)
@click.option("--timeout", "barrier_timeout", default=30.0, show_default=True,
              help="Seconds to wait for the agents to sync the change.")
def label(state_path: str, kind: str, name: str, labels: tuple[str, ...], no_wait: bool, barrier_timeout: float) -> None:
    """Set (key=value) or remove (key-) labels of a pod (ns/name), namespace or node."""
    try:
        _lab(state_path, barrier_timeout).label(kind, name, labels, wait=not no_wait)
    except KrError as exc:
        raise click.ClickException(str(exc)) from exc


@lab.command(context_settings={"ignore_unknown_options": True})
@state_option
@click.argument("host")
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
def exec(state_path: str, host: str, command: tuple[str, ...]) -> None:  # noqa: A001 (the command's name)
    """Run COMMAND inside a pod (ns/name), a node, the master or an external host."""
    try:
        netns = _lab(state_path).netns_of(host)
    except KrError as exc:
        raise click.ClickException(str(exc)) from exc
    os.execvp("ip", ["ip", "netns", "exec", netns, *command])


@lab.command()
@state_option
@click.option("--from", "source", help="Pod (ns/name) or host to probe from.")
@click.option("--to", "target", help="Pod, host or IP to probe.")
@click.option("--port", type=click.IntRange(1, 65535), help="Port (for --matrix: default each target's first declared port).")
@click.option("--protocol", type=click.Choice(["TCP", "UDP", "SCTP"], case_sensitive=False), default="TCP", show_default=True)
@click.option("--timeout", default=2.0, show_default=True, type=click.FloatRange(min=0, min_open=True))
@click.option("--matrix", is_flag=True, help="Probe every pod to every pod, in parallel.")
@click.option("--json", "as_json", is_flag=True)
def probe(state_path: str, source: str | None, target: str | None, port: int | None, protocol: str,
          timeout: float, matrix: bool, as_json: bool) -> None:
    """Connect and report which pod answered (exit 1 when refused or timed out)."""
    current = _lab(state_path)
    try:
        if matrix:
            rows = current.matrix(port, protocol.upper() if port else None, timeout)
            click.echo(json.dumps(rows, indent=2) if as_json else render_matrix(rows))
            return
        if not source or not target or not port:
            raise click.UsageError("give --from, --to and --port (or --matrix)")
        result = current.probe(source, target, port, protocol, timeout)
    except KrError as exc:
        raise click.ClickException(str(exc)) from exc
    if as_json:
        click.echo(json.dumps({"from": source, "to": target, "port": port, "protocol": protocol.upper(),
                               "ok": result.ok, "answer": result.answer, "error": result.error, "elapsed": result.elapsed}))
    elif result.ok:
        click.echo(f"{source} -> {target}:{port}/{protocol.upper()}: answered by {result.answer} in {result.elapsed * 1000:.0f} ms")
    else:
        click.echo(f"{source} -> {target}:{port}/{protocol.upper()}: {result.error} after {result.elapsed * 1000:.0f} ms")
    sys.exit(0 if result.ok else 1)


def render_matrix(rows: list[dict[str, Any]]) -> str:
    """A reachability table: rows are sources, columns targets; 'ok', 'refused' or '--' (timeout)."""
    sources = sorted({row["from"] for row in rows})
    targets = sorted({row["to"] for row in rows})
    cell = {(row["from"], row["to"]): row for row in rows}
    width = max(len(t) for t in targets) if targets else 4
    first = max(len(s) for s in sources) if sources else 4
    lines = [" " * (first + 2) + "  ".join(t.rjust(width) for t in targets)]
    for source in sources:
        marks = []
        for target in targets:
            row = cell[(source, target)]
            mark = "ok" if row["ok"] else ("refused" if row["error"] == "refused" else "--")
            marks.append(mark.rjust(width))
        lines.append(source.ljust(first + 2) + "  ".join(marks))
    reachable = sum(1 for row in rows if row["ok"])
    lines.append(f"{reachable}/{len(rows)} reachable")
    return "\n".join(lines)


def _pairs(values: tuple[str, ...], option: str) -> dict[str, str]:
    """``key=value`` items of a repeatable option as a mapping."""
    if bad := [value for value in values if "=" not in value]:
        raise click.BadParameter(f"{', '.join(bad)}: expected key=value", param_hint=option)
    return dict(value.split("=", 1) for value in values)


@lab.group(name="node")
def node_group() -> None:
    """Add a node to the running lab, or remove one (a machine joining or leaving the cluster)."""


@node_group.command(name="add")
@state_option
@click.argument("name")
@click.option("--ip", required=True, help="The node's address on its LAN.")
@click.option("--pod-cidr", help="Its pod CIDR (default: the next free /24 of the spec's clusterCIDR).")
@click.option("--lan", help="Its LAN (default: the spec's first).")
@click.option("--label", "labels", multiple=True, help="A label of its Node object, key=value (repeatable).")
@click.option("--annotation", "annotations", multiple=True, help="An annotation, key=value (repeatable).")
@click.option("--timeout", default=60.0, show_default=True, type=click.FloatRange(min=0, min_open=True),
              help="Seconds to wait for its agent's first sync and for every agent to sync its Node.")
def node_add(state_path: str, name: str, ip: str, pod_cidr: str | None, lan: str | None, labels: tuple[str, ...],
             annotations: tuple[str, ...], timeout: float) -> None:
    """Add node NAME: its namespace on the LAN, its Node object, its agent; return once every agent has synced it.

    Put pods on it with `kr lab apply` (a Pod whose spec.nodeName is NAME).
    """
    try:
        host = _lab(state_path, timeout).add_node(name, ip, pod_cidr, lan, _pairs(labels, "--label"),
                                                  _pairs(annotations, "--annotation"), timeout)
    except KrError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"added node {host.name}: {host.ip} on {host.lan}, pod CIDR {host.pod_cidr}")


@node_group.command(name="remove")
@state_option
@click.argument("name")
@click.option("--no-wait", is_flag=True, help="Return without waiting for the other agents to sync the removal.")
@click.option("--timeout", "barrier_timeout", default=30.0, show_default=True,
              help="Seconds to wait for the other agents to sync the removal.")
def node_remove(state_path: str, name: str, no_wait: bool, barrier_timeout: float) -> None:
    """Remove node NAME with its pods: API objects, namespaces, agent and everything else running there."""
    try:
        _lab(state_path, barrier_timeout).remove_node(name, wait=not no_wait)
    except KrError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"removed node {name}")


@lab.group()
def agent() -> None:
    """Stop or start a node's agent (to test restarts and failures)."""


@agent.command(name="stop")
@state_option
@click.argument("node")
@click.option("--kill", is_flag=True, help="SIGKILL instead of SIGTERM.")
def agent_stop(state_path: str, node: str, kill: bool) -> None:
    try:
        _lab(state_path).stop_agent(node, kill)
    except KrError as exc:
        raise click.ClickException(str(exc)) from exc


@agent.command(name="start")
@state_option
@click.argument("node")
@click.option("--timeout", default=30.0, show_default=True)
def agent_start(state_path: str, node: str, timeout: float) -> None:
    current = _lab(state_path)
    try:
        current.start_agent(node)
        current.wait_agents_ready(timeout, [node])
    except KrError as exc:
        raise click.ClickException(str(exc)) from exc
