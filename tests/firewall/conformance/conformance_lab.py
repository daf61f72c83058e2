"""The conformance lab: upstream's netpol topology in a `kr lab`, driven only through the `kr` CLI.

Namespaces x, y, z (labelled ``ns: <name>``), each with pods a, b, c (labelled ``pod: <name>``), spread over
three nodes so that every node holds one pod of every namespace (same-node and cross-node pairs both
occur). Every pod serves ports 80 and 81 on TCP, UDP and SCTP with upstream's port names
(``serve-80-tcp``, ...); the lab's echo servers skip SCTP on kernels without it.

``Cluster`` keeps the suite's own view of the objects (raw API dicts, labels included) for the oracle,
and changes labels through `kr lab label` so the view and the lab move together. ``check_matrix``
probes the full 9x9 matrix and compares every cell with the oracle, failing with a readable table.

Invariants: a lab this module brings up is always taken down (``conformance_lab`` is a context manager
whose teardown runs on failure too); the view's labels are changed only after the lab accepted the change.
"""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml

from kr_lab.spec import DEFAULT_SPEC_TEXT

import oracle

KR = str(Path(sys.executable).with_name("kr"))
SCTP = Path("/proc/net/sctp").exists()
NAMESPACES = ("x", "y", "z")
POD_NAMES = ("a", "b", "c")
NODES = ("kube-node1", "kube-node2", "kube-node3")
PORTS = tuple((f"serve-{port}-{proto.lower()}", port, proto) for port in (80, 81) for proto in ("TCP", "UDP", "SCTP"))


def node_of(namespace: str, pod: str) -> str:
    """Rotate per namespace: x/a, y/c, z/b share kube-node1, and so on (every node holds x, y and z pods)."""
    return NODES[(NAMESPACES.index(namespace) + POD_NAMES.index(pod)) % len(NODES)]


def topology_spec() -> str:
    """The lab spec (YAML) of the conformance topology: the default spec's LAN, master and nodes, with
    upstream's namespaces and pods instead of the seed's."""
    spec = yaml.safe_load(DEFAULT_SPEC_TEXT)
    spec.pop("externals", None)
    spec["namespaces"] = [{"name": ns, "labels": {"ns": ns}} for ns in NAMESPACES]
    ports = [{"name": name, "port": port, "protocol": proto} for name, port, proto in PORTS]
    spec["pods"] = [{"namespace": ns, "name": pod, "node": node_of(ns, pod), "labels": {"pod": pod}, "ports": ports}
                    for ns in NAMESPACES for pod in POD_NAMES]
    return yaml.safe_dump(spec, sort_keys=False)


def kr(*args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([KR, *args], capture_output=True, text=True, timeout=timeout, check=False)
    if check and result.returncode != 0:
        raise AssertionError(f"kr {' '.join(args)} exited {result.returncode}:\n{result.stdout}\n{result.stderr}")
    return result


class Cluster:
    """One conformance lab and the suite's raw-API view of its namespaces and pods."""

    def __init__(self, state: Path, workdir: Path) -> None:
        self.state, self.workdir = str(state), workdir
        self.namespaces: dict[str, dict[str, Any]] = {}
        self.pods: dict[str, dict[str, Any]] = {}
        self._files = 0

    def lab(self, command: str, *args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return kr("lab", command, "--state", self.state, *args, check=check, timeout=timeout)

    def load_view(self) -> None:
        """Build the view from the topology and the lab's status (pod IPs are the lab's to choose)."""
        ips = {p["pod"]: p["ip"] for p in json.loads(self.lab("status", "--json").stdout)["pods"]}
        for ns in NAMESPACES:
            # the API stand-in sets kubernetes.io/metadata.name as the real API server does
            self.namespaces[ns] = {"apiVersion": "v1", "kind": "Namespace",
                                   "metadata": {"name": ns, "labels": {"kubernetes.io/metadata.name": ns, "ns": ns}}}
            for pod in POD_NAMES:
                key = f"{ns}/{pod}"
                self.pods[key] = {
                    "apiVersion": "v1", "kind": "Pod",
                    "metadata": {"namespace": ns, "name": pod, "labels": {"pod": pod}},
                    "spec": {"nodeName": node_of(ns, pod), "containers": [{"name": "server", "ports": [
                        {"name": name, "containerPort": port, "protocol": proto} for name, port, proto in PORTS]}]},
                    "status": {"podIP": ips[key]},
                }
        assert sorted(ips) == sorted(self.pods), f"the lab's pods {sorted(ips)} are not the topology's"

    def ip(self, key: str) -> str:
        return self.pods[key]["status"]["podIP"]

    # --- changes, through the CLI

    def _write(self, documents: Sequence[Mapping[str, Any]]) -> str:
        self._files += 1
        path = self.workdir / f"objects-{self._files}.yaml"
        path.write_text(yaml.safe_dump_all([dict(d) for d in documents], sort_keys=False))
        return str(path)

    def apply(self, documents: Sequence[Mapping[str, Any]]) -> None:
        self.lab("apply", "-f", self._write(documents))

    def delete(self, documents: Sequence[Mapping[str, Any]]) -> None:
        self.lab("delete", "-f", self._write(documents))

    def label(self, kind: str, name: str, *changes: str) -> None:
        """`kr lab label`, then the same change in the view (``key=value`` sets, ``key-`` removes)."""
        self.lab("label", kind, name, *changes)
        labels = (self.pods[name] if kind == "pod" else self.namespaces[name])["metadata"]["labels"]
        for change in changes:
            if "=" in change:
                key, value = change.split("=", 1)
                labels[key] = value
            else:
                labels.pop(change.rstrip("-"), None)

    def snapshot(self) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        return copy.deepcopy(list(self.pods.values())), copy.deepcopy(list(self.namespaces.values()))

    # --- the matrix

    def probe_matrix(self, port: int, protocol: str) -> dict[tuple[str, str], dict[str, Any]]:
        rows = json.loads(self.lab("probe", "--matrix", "--port", str(port), "--protocol", protocol.lower(),
                                   "--json", "--timeout", "1").stdout)
        return {(r["from"], r["to"]): r for r in rows}

    def expected_matrix(self, policies: Sequence[Mapping[str, Any]], port: int, protocol: str) -> dict[tuple[str, str], bool]:
        pods, namespaces = self.snapshot()
        expected = oracle.matrix(policies, pods, namespaces, port, protocol)
        for key in self.pods:  # loopback never leaves the pod: upstream's AllowLoopback
            expected[(key, key)] = True
        return expected

    def check_matrix(self, policies: Sequence[Mapping[str, Any]], port: int, protocol: str, title: str) -> None:
        """Probe every pair on ``port``/``protocol`` and fail with a table unless every cell is as expected."""
        expected = self.expected_matrix(policies, port, protocol)
        observed = self.probe_matrix(port, protocol)
        problems = compare(expected, observed)
        if problems:
            raise AssertionError(f"{title}: {port}/{protocol}: {len(problems)} of {len(expected)} cells differ\n"
                                 + render_diff(expected, observed, problems))


def compare(expected: Mapping[tuple[str, str], bool], observed: Mapping[tuple[str, str], Mapping[str, Any]]) -> list[str]:
    """Every disagreement, as readable lines; a missing pair or a wrong answerer is one too."""
    problems = []
    for pair, want in sorted(expected.items()):
        row = observed.get(pair)
        if row is None:
            problems.append(f"{pair[0]} -> {pair[1]}: not probed")
        elif bool(row["ok"]) != want:
            problems.append(f"{pair[0]} -> {pair[1]}: expected {'allowed' if want else 'blocked'}, got "
                            + ("allowed" if row["ok"] else f"blocked ({row.get('error')})"))
        elif row["ok"] and row.get("answer") != pair[1]:
            problems.append(f"{pair[0]} -> {pair[1]}: answered by {row.get('answer')!r}")
    extra = sorted(set(observed) - set(expected))
    problems += [f"{s} -> {d}: probed but not expected" for s, d in extra]
    return problems


def render_diff(expected: Mapping[tuple[str, str], bool], observed: Mapping[tuple[str, str], Mapping[str, Any]],
                problems: Sequence[str]) -> str:
    """Rows are sources, columns destinations; '.' allowed, 'X' blocked, as expected; '!.' / '!X' observed, wrong."""
    pods = sorted({s for s, _ in expected})
    lines = ["from \\ to " + " ".join(f"{p:>4}" for p in pods)]
    for source in pods:
        cells = []
        for target in pods:
            row = observed.get((source, target))
            seen = "?" if row is None else ("." if row["ok"] else "X")
            wrong = row is None or bool(row["ok"]) != expected[(source, target)]
            cells.append(f"{('!' if wrong else '') + seen:>4}")
        lines.append(f"{source:>10} " + " ".join(cells))
    return "\n".join(lines + ["('.' allowed, 'X' blocked, '!' = differs from the oracle)"] + list(problems))


@contextmanager
def conformance_lab(plugins: str, workdir: Path) -> Iterator[Cluster]:
    """`kr lab up` the topology with ``plugins``; `kr lab down` afterwards, whatever happened."""
    spec = workdir / "conformance-topology.yaml"
    spec.write_text(topology_spec())
    cluster = Cluster(workdir / "lab", workdir)
    try:
        cluster.lab("up", "--spec", str(spec), "--plugins", plugins, timeout=180)
        cluster.load_view()
        yield cluster
    finally:
        cluster.lab("down", check=False)


def netpol(namespace: str, name: str, spec: Mapping[str, Any]) -> dict[str, Any]:
    return {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"namespace": namespace, "name": name}, "spec": dict(spec)}
