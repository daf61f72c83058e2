"""A running lab: build it, change its objects with a barrier, look at it, probe it, tear it down.

The CLI (``kr_lab.cli``) is a thin shell over these functions. The lab plays the kubelets and the CNI
plugin itself: it creates pod namespaces, gives pods IPs from their node's pod CIDR, starts their echo
servers and reports them Running and Ready in the API. The master process (``kr_lab.master``) plays
kube-apiserver and the controllers; a real ``kr run`` runs in every node namespace.

Invariants:
- the root network namespace is never changed: every address, link and process lives in a lab
  namespace, and API calls are made from a thread that entered the master's namespace;
- a write returns only after the barrier: the master's controllers have handled it and every agent
  reports (``/healthz`` ``syncedResourceVersions``) that a completed sync includes it;
- ``down`` needs only the lab id, so it also removes labs whose processes were killed or whose
  build failed halfway;
- a node joins a running lab (``add_node``) as ``up`` builds one, recorded in the state before its
  namespace exists, and is removed again if it cannot join; ``remove_node`` takes it out with its pods.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import urllib3
import yaml
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from kr_core.plugins import installed_plugins
from kr_lab import cluster, topology
from kr_lab.kubeconfig import write_kubeconfig
from kr_lab.nsenter import run_in_netns
from kr_lab.probe import ProbeResult, probe, probe_matrix
from kr_lab.spec import (
    Host,
    LabSpec,
    PodSpec,
    SpecError,
    parse_spec,
    with_node,
    without_node,
)
from kr_lab.state import HostRecord, LabError, LabState, PodRecord, StateDir

API_PORT = 6443
HEALTHZ_PORT = 20244
METRICS_PORT = 20245
KR = str(Path(sys.executable).with_name("kr"))
Progress = Callable[[str], None]

#: kind -> (API class, method suffix, namespaced)
KIND_METHODS: Mapping[str, tuple[type, str, bool]] = {
    "Namespace": (client.CoreV1Api, "namespace", False),
    "Node": (client.CoreV1Api, "node", False),
    "Pod": (client.CoreV1Api, "namespaced_pod", True),
    "Service": (client.CoreV1Api, "namespaced_service", True),
    "EndpointSlice": (client.DiscoveryV1Api, "namespaced_endpoint_slice", True),
    "NetworkPolicy": (client.NetworkingV1Api, "namespaced_network_policy", True),
}


def _quiet(message: str) -> None:
    """Progress sink that prints nothing."""


class Lab:
    """An existing lab, found through its state directory."""

    def __init__(self, state_dir: StateDir, barrier_timeout: float = 30.0) -> None:
        self.dir = state_dir
        self.state = state_dir.load()
        self.spec: LabSpec = parse_spec(self.state.spec)
        self.barrier_timeout = barrier_timeout
        self._api_client: client.ApiClient | None = None

    # --- building

    @classmethod
    def up(cls, state_dir: StateDir, spec_data: dict[str, Any], plugins: Sequence[str], agent_args: Sequence[str] = (),
           progress: Progress = _quiet, timeout: float = 60.0, keep_on_failure: bool = False) -> Lab:
        """Build a lab from ``spec_data`` in ``state_dir`` and return once every agent has synced.

        A build that fails is removed again (with the last lines of the agents' and master's logs shown),
        unless ``keep_on_failure``.
        """
        spec = parse_spec(spec_data)
        _check_plugins(plugins)
        state_dir.check_free()
        started = time.monotonic()
        state = LabState(lab_id="", spec=spec_data, plugins=list(plugins), agent_args=list(agent_args))
        _reserve_and_build_network(state_dir, state, spec, progress)
        try:
            lab = cls._record_hosts(state_dir, state, spec)
            lab._populate(progress, timeout)
        except BaseException:
            if keep_on_failure:
                progress(f"lab {state.lab_id}: build failed; left as it is (`kr lab down --state {state_dir.path}`)")
            else:
                logs = _tails(state_dir.logs)
                progress(f"lab {state.lab_id}: build failed; removing what was built")
                topology.teardown(state.lab_id)
                state_dir.remove()
                if logs:
                    progress(logs)
            raise
        progress(f"lab {state.lab_id}: up in {time.monotonic() - started:.1f}s; kubeconfig: {state_dir.kubeconfig}")
        return lab

    @classmethod
    def _record_hosts(cls, state_dir: StateDir, state: LabState, spec: LabSpec) -> Lab:
        state_dir.logs.mkdir(exist_ok=True)
        (state_dir.path / "spec.yaml").write_text(yaml.safe_dump(state.spec, sort_keys=False), encoding="utf-8")
        for host in spec.hosts:
            state.hosts[host.name] = HostRecord(host.name, host.role, str(host.ip), topology.host_ns(state.lab_id, host.name),
                                                str(host.pod_cidr) if host.pod_cidr else None)
        state.api_url = f"http://{spec.master.ip}:{API_PORT}"
        write_kubeconfig(state.api_url, state_dir.kubeconfig)
        state_dir.save(state)
        return cls(state_dir)

    def _populate(self, progress: Progress, timeout: float) -> None:
        """Start the master, register nodes, namespaces and pods, start the agents, wait for their sync."""
        lab_id, spec = self.state.lab_id, self.spec
        progress(f"lab {lab_id}: starting the API stand-in and controllers on {spec.master.name} ({self.state.api_url})")
        self._start_master()
        progress(f"lab {lab_id}: registering {len(spec.nodes)} nodes and {len(spec.namespaces)} namespaces")
        for host in spec.nodes:
            self._write(cluster.node(host.name, str(host.ip), str(host.pod_cidr), host.labels, host.annotations))
        for name, labels in spec.namespaces.items():
            self._write(cluster.namespace(name, labels))
        progress(f"lab {lab_id}: starting {len(spec.pods)} pods")
        for pod_spec in spec.pods:
            self._start_pod(pod_spec)
        progress(f"lab {lab_id}: starting agents ({', '.join(self.state.plugins)}) on {len(spec.nodes)} nodes")
        for host in spec.nodes:
            self.start_agent(host.name)
        self.wait_agents_ready(timeout)
        self.state.status = "up"
        self.dir.save(self.state)

    @staticmethod
    def down(state_dir: StateDir | None = None, lab_id: str | None = None) -> list[str]:
        """Remove the lab (by state directory or id): processes, namespaces, files. Returns namespaces removed."""
        if lab_id is None:
            if state_dir is None or not state_dir.exists():
                raise LabError("no lab to take down: give --state DIR of a lab (or --id ID, see `kr lab list`)")
            lab_id = state_dir.load().lab_id
        removed = topology.teardown(lab_id)
        if state_dir is not None and state_dir.exists() and state_dir.load().lab_id == lab_id:
            state_dir.remove()
        return removed

    def _start_master(self) -> None:
        port_file = self.dir.master_port_file
        port_file.unlink(missing_ok=True)
        self._spawn(self.state.hosts[self.spec.master.name].netns, "master",
                    [sys.executable, "-m", "kr_lab.master", "--listen", str(self.spec.master.ip), "--port", str(API_PORT),
                     "--service-cidr", str(self.spec.service_cidr), "--port-file", str(port_file),
                     "--bookmark-interval", "0.5"])
        _wait(port_file.exists, 15, lambda: f"the API stand-in did not start; see {self.dir.logs / 'master.log'}")

    def _spawn(self, netns: str, log_name: str, argv: list[str]) -> None:
        """Start ``argv`` detached inside ``netns``, logging to ``logs/LOG_NAME.log``."""
        with open(self.dir.logs / f"{log_name}.log", "ab") as log:
            subprocess.Popen(["ip", "netns", "exec", netns, *argv], stdout=log, stderr=subprocess.STDOUT,
                             stdin=subprocess.DEVNULL, start_new_session=True, env=_lab_env())

    # --- agents

    def start_agent(self, node: str) -> None:
        """Start ``kr run`` in ``node``'s namespace with the lab's plugins."""
        host = self._node(node)
        if self._agent_pids(host.netns):
            raise LabError(f"the agent on {node} is already running")
        argv = [KR, "run", "--plugins", ",".join(self.state.plugins), "--kubeconfig", str(self.dir.kubeconfig),
                "--hostname-override", node, "--healthz-bind-address", f"127.0.0.1:{HEALTHZ_PORT}",
                "--metrics-bind-address", f"127.0.0.1:{METRICS_PORT}", "--min-sync-period", "0.1",
                *self._backend_args(self.state.plugins), *self.state.agent_args]
        self._spawn(host.netns, f"agent-{node}", argv)

    def cleanup_agent(self, node: str, plugins: Sequence[str]) -> None:
        """Run ``kr cleanup`` of ``plugins`` on ``node`` (its agent stopped): what they programmed there goes."""
        argv = [KR, "cleanup", "--plugins", ",".join(plugins), "--hostname-override", node, *self._backend_args(plugins)]
        done = subprocess.run(["ip", "netns", "exec", self._node(node).netns, *argv], capture_output=True, text=True,
                              env=_lab_env(), check=False)
        if done.returncode != 0:
            raise LabError(f"kr cleanup on {node} failed: {done.stderr.strip() or done.returncode}")

    def _backend_args(self, plugins: Sequence[str]) -> list[str]:
        """Per-lab places for backends that keep files: the lab's nodes share one file system."""
        return ["--bgp-run-dir", str(self.dir.bgp_run_dir)] if "routing.bgp" in plugins else []

    def stop_agent(self, node: str, kill: bool = False) -> None:
        """Stop ``node``'s agent (SIGTERM, or SIGKILL with ``kill``) and wait until it is gone."""
        host = self._node(node)
        for pid in self._agent_pids(host.netns):
            try:
                os.kill(pid, signal.SIGKILL if kill else signal.SIGTERM)
            except ProcessLookupError:
                pass
        _wait(lambda: not self._agent_pids(host.netns), 15, lambda: f"the agent on {node} did not stop")

    @staticmethod
    def _agent_pids(netns: str) -> list[int]:
        found = []
        for pid in subprocess.run(["ip", "netns", "pids", netns], capture_output=True, text=True).stdout.split():
            try:
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if any(part.endswith(b"/kr") for part in cmdline[:2]) and b"run" in cmdline:
                found.append(int(pid))
        return found

    def agent_health(self, node: str) -> dict[str, Any] | None:
        """The agent's /healthz JSON, or None when it does not answer."""
        def get() -> dict[str, Any] | None:
            try:
                with _DIRECT.open(f"http://127.0.0.1:{HEALTHZ_PORT}/healthz", timeout=2) as response:
                    return json.loads(response.read())
            except urllib.error.HTTPError as exc:
                return json.loads(exc.read() or b"{}")
            except (OSError, ValueError):
                return None
        return run_in_netns(self._node(node).netns, get)

    def wait_agents_ready(self, timeout: float, nodes: Sequence[str] | None = None) -> None:
        """Wait until the agents (of ``nodes``, default all) report a first successful sync."""
        for node in nodes or [host.name for host in self.spec.nodes]:
            log = self.dir.logs / f"agent-{node}.log"

            def ready(node: str = node) -> bool:
                if (self.agent_health(node) or {}).get("healthy") is True:
                    return True
                if not self._agent_pids(self._node(node).netns):
                    time.sleep(0.2)  # it may still be starting: `ip netns exec` execs it
                    if not self._agent_pids(self._node(node).netns):
                        tail = log.read_text(errors="replace").strip().splitlines()[-1:] if log.exists() else []
                        raise LabError(f"the agent on {node} exited: {' '.join(tail) or 'no output'} (log: {log})")
                return False

            _wait(ready, timeout, lambda: f"the agent on {node} did not finish its first sync in {timeout:g}s; see {log}")

    # --- nodes joining and leaving the running lab

    def add_node(self, name: str, ip: str, pod_cidr: str | None = None, lan: str | None = None,
                 labels: Mapping[str, str] | None = None, annotations: Mapping[str, str] | None = None,
                 timeout: float = 60.0) -> Host:
        """Add node ``name`` to the running lab as ``up`` builds one: its namespace on its LAN (the spec's
        first by default), its Node object (pod CIDR allocated from clusterCIDR when not given), its agent
        with the lab's plugins and agent arguments. Returns once that agent has finished its first sync and
        every agent has synced the Node; a node that cannot join is removed again. Pods come with ``apply``.
        """
        entry = {"name": name, "ip": ip, "lan": lan, "podCIDR": pod_cidr, "labels": labels, "annotations": annotations}
        with self.dir.locked():
            self._reload()
            try:
                document, host = with_node(self.state.spec, {k: v for k, v in entry.items() if v is not None})
            except SpecError as exc:
                raise LabError(f"cannot add node {name}: {exc}") from exc
            self.state.spec, self.spec = document, parse_spec(document)
            self.state.hosts[name] = HostRecord(name, "node", str(host.ip), topology.host_ns(self.state.lab_id, name),
                                                str(host.pod_cidr))
            self.dir.save(self.state)  # first: whatever fails next, `remove_node` and `down` find it
            try:
                topology.add_host(self.state.lab_id, self.spec, host)
                revision = self._write(cluster.node(name, str(host.ip), str(host.pod_cidr), host.labels, host.annotations))
                self.start_agent(name)
            except BaseException:
                self._drop_node(name)
                raise
        try:
            self.wait_agents_ready(timeout, [name])
            self.barrier(revision)
        except BaseException:
            self.remove_node(name, wait=False)
            raise
        return host

    def remove_node(self, name: str, wait: bool = True) -> None:
        """Take node ``name`` out of the running lab: its pods (objects and namespaces), its Node object, its
        namespace with everything running there (agent, BIRD) and its backends' files. Returns once every
        remaining agent has synced the removal, unless not ``wait``."""
        with self.dir.locked():
            self._reload()
            self._node(name)
            if len(self.spec.nodes) == 1:
                raise LabError(f"{name} is the lab's last node; take the lab down instead (`kr lab down`)")
            self._drop_node(name)
            revision = self._master_revision()
        if wait:
            self.barrier(revision)

    def _drop_node(self, name: str) -> None:
        """Remove node ``name`` and its pods (from the API, the network and the state); hold the lock."""
        for key, pod in [(key, pod) for key, pod in self.state.pods.items() if pod.node == name]:
            self._delete_if_present("Pod", pod.name, pod.namespace)
            self._stop_pod(key)
        self._delete_if_present("Node", name)
        topology.remove_host(self.state.lab_id, name)
        shutil.rmtree(self.dir.bgp_run_dir / name, ignore_errors=True)
        self.state.spec = without_node(self.state.spec, name)
        self.spec = parse_spec(self.state.spec)
        del self.state.hosts[name]
        self.dir.save(self.state)

    def _delete_if_present(self, kind: str, name: str, namespace: str = "") -> None:
        try:
            self._call(kind, "delete", name=name, namespace=namespace)
        except ApiException as exc:
            if exc.status != 404:
                raise LabError(f"{kind} {namespace}/{name}: {_reason(exc)}") from exc

    def _reload(self) -> None:
        """Read the state again (another command may have changed it); call it holding the state lock."""
        self.state = self.dir.load()
        self.spec = parse_spec(self.state.spec)

    # --- API access (from the master's namespace)

    def call_api(self, fn: Callable[[client.ApiClient], Any]) -> Any:
        """Run ``fn(api_client)`` from the master's namespace, where the API listens."""
        if self._api_client is None:
            configuration = client.Configuration(host=self.state.api_url)
            configuration.proxy = None  # the lab's API is inside the lab: never through a proxy
            configuration.no_proxy = "*"
            configuration.retries = False
            self._api_client = client.ApiClient(configuration)
        api_client = self._api_client
        try:
            return run_in_netns(self.state.hosts[self.spec.master.name].netns, fn, api_client)
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise LabError(f"the lab's API at {self.state.api_url} does not answer ({type(exc).__name__}); "
                           f"see {self.dir.logs / 'master.log'}") from exc

    def _call(self, kind: str, verb: str, obj: Mapping[str, Any] | None = None, name: str = "",
              namespace: str = "", **kwargs: Any) -> Any:
        if kind not in KIND_METHODS:
            raise LabError(f"kind {kind!r} is not handled by the lab; choose one of: {', '.join(KIND_METHODS)}")
        api_class, suffix, namespaced = KIND_METHODS[kind]
        args: dict[str, Any] = {"_request_timeout": (5, self.barrier_timeout), **kwargs}
        if obj is not None:
            args["body"] = obj
        if name and verb != "create":
            args["name"] = name
        if namespaced:
            args["namespace"] = namespace or "default"
        return self.call_api(lambda api_client: getattr(api_class(api_client), f"{verb}_{suffix}")(**args))

    def _write(self, obj: Mapping[str, Any]) -> int:
        """Create or replace ``obj``; return the resourceVersion of the write."""
        kind, meta = obj.get("kind", ""), obj.get("metadata") or {}
        name, namespace = meta.get("name", ""), meta.get("namespace", "default")
        try:
            result = self._call(kind, "create", obj, name=name, namespace=namespace)
        except ApiException as exc:
            if exc.status != 409:
                raise LabError(f"{kind} {namespace}/{name}: {_reason(exc)}") from exc
            try:
                result = self._call(kind, "replace", obj, name=name, namespace=namespace)
            except ApiException as exc2:
                raise LabError(f"{kind} {namespace}/{name}: {_reason(exc2)}") from exc2
        if kind == "Pod" and obj.get("status"):  # what the kubelet reports: Running, Ready, its IP
            result = self.call_api(lambda api_client: client.CoreV1Api(api_client)
                               .replace_namespaced_pod_status(name, namespace, obj))
        return int(result.metadata.resource_version)

    def _master_status(self) -> dict[str, Any]:
        def get() -> dict[str, Any]:
            with _DIRECT.open(f"{self.state.api_url}/_kr/status", timeout=5) as response:
                return json.loads(response.read())
        try:
            return run_in_netns(self.state.hosts[self.spec.master.name].netns, get)
        except (OSError, ValueError) as exc:
            raise LabError(f"the lab's API at {self.state.api_url} does not answer ({exc}); "
                           f"see {self.dir.logs / 'master.log'}") from exc

    # --- the barrier

    def barrier(self, revision: int) -> None:
        """Wait until the controllers and every agent have handled everything up to ``revision``."""
        started = time.monotonic()
        deadline = started + self.barrier_timeout
        status = self._master_status()
        while int(status.get("controllers", {}).get("doneThrough", 0)) < revision:
            if time.monotonic() > deadline:
                raise LabError(f"the lab's controllers did not catch up with resourceVersion {revision}")
            time.sleep(0.02)
            status = self._master_status()
        latest = {kind: int(version) for kind, version in status["latest"].items()}
        for host in self.spec.nodes:
            lagging: list[str] = []

            def caught_up(node: str = host.name) -> bool:
                health = self.agent_health(node)
                if health is None or health.get("healthy") is not True:
                    lagging[:] = ["not healthy" if health else "not answering"]
                    return False
                versions = health.get("syncedResourceVersions") or {}
                lagging[:] = [kind for kind, version in versions.items() if int(version or 0) < latest.get(kind, 0)]
                return bool(versions) and not lagging

            _wait(caught_up, max(0.1, deadline - time.monotonic()),
                  lambda node=host.name: f"the agent on {node} has not synced the change "
                                         f"(lagging: {', '.join(lagging) or 'not answering'}); "
                                         f"see {self.dir.logs / f'agent-{node}.log'}")

    # --- changing objects

    def apply(self, documents: Iterable[Mapping[str, Any]], wait: bool = True) -> int:
        """Create or update objects (pods also get a namespace, an IP and their servers). Returns the count."""
        return self._change(documents, self._apply_one, wait)

    def delete(self, documents: Iterable[Mapping[str, Any]], wait: bool = True) -> int:
        """Delete objects (pods also lose their namespace). Returns the count."""
        return self._change(documents, self._delete_one, wait)

    def _change(self, documents: Iterable[Mapping[str, Any]], one: Callable[[Mapping[str, Any]], int],
                wait: bool) -> int:
        """Apply ``one`` (returning the write's resourceVersion) to each object under the state lock,
        then wait at the barrier for the newest version."""
        revision, count = 0, 0
        with self.dir.locked():
            self._reload()
            try:
                for obj in documents:
                    _check_object(obj)
                    revision = max(revision, one(obj))
                    count += 1
            finally:
                self.dir.save(self.state)  # what was done stays recorded, also when a later object fails
        if wait and revision:
            self.barrier(revision)
        return count

    def _apply_one(self, obj: Mapping[str, Any]) -> int:
        return self._apply_pod(obj) if obj.get("kind") == "Pod" else self._write(obj)

    def _delete_one(self, obj: Mapping[str, Any]) -> int:
        kind, meta = obj.get("kind", ""), obj["metadata"]
        name, namespace = meta.get("name", ""), meta.get("namespace") or "default"
        try:
            self._call(kind, "delete", name=name, namespace=namespace)
        except ApiException as exc:
            raise LabError(f"{kind} {namespace}/{name}: {_reason(exc)}") from exc
        if kind == "Pod":
            self._stop_pod(f"{namespace}/{name}")
        return self._master_revision()  # the deletion's own version

    def label(self, kind: str, name: str, changes: Sequence[str], wait: bool = True) -> None:
        """``key=value`` sets a label, ``key-`` removes it (kubectl's syntax)."""
        kinds = {"pod": "Pod", "namespace": "Namespace", "node": "Node"}
        if kind not in kinds:
            raise LabError(f"cannot label a {kind}; choose pod, namespace or node")
        labels: dict[str, str | None] = {}
        for change in changes:
            if change.endswith("-") and "=" not in change:
                labels[change[:-1]] = None
            elif "=" in change:
                key, value = change.split("=", 1)
                labels[key] = value
            else:
                raise LabError(f"{change!r} is neither key=value nor key-")
        namespace, _, short = name.rpartition("/") if kind == "pod" else ("", "", name)
        if kind == "pod" and not namespace:
            raise LabError("name pods as NAMESPACE/NAME")
        try:
            result = self._call(kinds[kind], "patch", name=short, namespace=namespace,
                                body={"metadata": {"labels": labels}})
        except ApiException as exc:
            raise LabError(f"{kind} {name}: {_reason(exc)}") from exc
        if wait:
            self.barrier(int(result.metadata.resource_version))

    def _master_revision(self) -> int:
        return int(self._master_status()["resourceVersion"])

    # --- pods (the kubelet's and CNI plugin's part)

    def _apply_pod(self, obj: Mapping[str, Any]) -> int:
        meta, spec = obj.get("metadata") or {}, obj.get("spec") or {}
        namespace, name, node = meta.get("namespace") or "default", meta.get("name"), spec.get("nodeName")
        if not name or node not in {h.name for h in self.spec.nodes}:
            raise LabError(f"pod {namespace}/{name}: spec.nodeName must name a lab node "
                           f"({', '.join(h.name for h in self.spec.nodes)})")
        ports = [{"name": p.get("name", f"p{p.get('containerPort')}"), "port": p.get("containerPort"),
                  "protocol": p.get("protocol", "TCP")}
                 for container in spec.get("containers", []) for p in container.get("ports", [])]
        try:
            pod_spec = parse_spec({**self.state.spec, "pods": [{"namespace": namespace, "name": name, "node": node,
                                                                "labels": meta.get("labels") or {}, "ports": ports}],
                                   "namespaces": [{"name": n} for n in {namespace} - {"default"}]}).pods[0]
        except SpecError as exc:
            raise LabError(f"pod {namespace}/{name}: {exc}") from exc
        try:
            self._call("Namespace", "read", name=namespace)
        except ApiException as exc:
            raise LabError(f"pod {namespace}/{name}: namespace {namespace!r} does not exist in the API; "
                           "apply the Namespace first") from exc
        key = f"{namespace}/{name}"
        existing = self.state.pods.get(key)
        ports = [[p.name, p.port, p.protocol] for p in pod_spec.ports]
        if existing is not None and existing.node == node and existing.ports == ports:
            return self._write(_pod_object(pod_spec, existing.ip, self.state.hosts[node].ip))  # a labels update
        if existing is not None:
            self._stop_pod(key)
        return self._start_pod(pod_spec)

    def _start_pod(self, pod_spec: PodSpec) -> int:
        node = self.spec.host(pod_spec.node)
        used = {p.ip for p in self.state.pods.values() if p.node == node.name}
        assert node.pod_cidr is not None
        candidates = (str(ip) for ip in list(node.pod_cidr.hosts())[1:])  # the first host address is the gateway
        ip = next((c for c in candidates if c not in used), None)
        if ip is None:
            raise LabError(f"node {node.name}: pod CIDR {node.pod_cidr} is full")
        netns = topology.add_pod(self.state.lab_id, self.spec, pod_spec, ipaddress.IPv4Address(ip), self.dir.logs / f"pod-{pod_spec.namespace}-{pod_spec.name}.log")
        self.state.pods[pod_spec.key] = PodRecord(pod_spec.namespace, pod_spec.name, node.name, ip, netns,
                                                  [[p.name, p.port, p.protocol] for p in pod_spec.ports])
        self.dir.save(self.state)
        return self._write(_pod_object(pod_spec, ip, str(node.ip)))

    def _stop_pod(self, key: str) -> None:
        record = self.state.pods.pop(key, None)
        if record is not None:
            topology.remove_pod(self.state.lab_id, record.namespace, record.name)

    # --- looking

    def _node(self, name: str) -> HostRecord:
        host = self.state.hosts.get(name)
        if host is None or host.role != "node":
            raise LabError(f"no node named {name!r}; nodes: {', '.join(h.name for h in self.spec.nodes)}")
        return host

    def netns_of(self, target: str) -> str:
        """The namespace of a pod (``ns/name``), a node, the master or an external host."""
        if target in self.state.pods:
            return self.state.pods[target].netns
        if target in self.state.hosts:
            return self.state.hosts[target].netns
        raise LabError(f"no pod or host named {target!r}; pods are NAMESPACE/NAME, hosts: "
                       f"{', '.join(self.state.hosts)}")

    def ip_of(self, target: str) -> str:
        """The IP of a pod, a host, or ``target`` itself when it is an address."""
        if target in self.state.pods:
            return self.state.pods[target].ip
        if target in self.state.hosts:
            return self.state.hosts[target].ip
        try:
            return str(ipaddress.IPv4Address(target))
        except ValueError:
            raise LabError(f"{target!r} is neither a pod, a host nor an IPv4 address") from None

    def status(self) -> dict[str, Any]:
        nodes = []
        for host in self.spec.nodes:
            health = self.agent_health(host.name)
            nodes.append({"name": host.name, "netns": self.state.hosts[host.name].netns, "ip": str(host.ip),
                          "podCIDR": str(host.pod_cidr), "agent": "down" if health is None else
                          ("healthy" if health.get("healthy") else f"unhealthy: {health.get('reason')}")})
        return {
            "lab": self.state.lab_id, "status": self.state.status, "plugins": self.state.plugins,
            "api": self.state.api_url, "kubeconfig": str(self.dir.kubeconfig),
            "master": {"name": self.spec.master.name, "netns": self.state.hosts[self.spec.master.name].netns,
                       "ip": str(self.spec.master.ip)},
            "nodes": nodes,
            "pods": [{"pod": p.key, "ip": p.ip, "node": p.node, "netns": p.netns}
                     for p in sorted(self.state.pods.values(), key=lambda p: p.key)],
            "externals": [{"name": h.name, "netns": self.state.hosts[h.name].netns, "ip": str(h.ip)}
                          for h in self.spec.externals],
        }

    # --- probing

    def probe(self, source: str, target: str, port: int, protocol: str, timeout: float = 2.0) -> ProbeResult:
        return probe(self.netns_of(source), self.ip_of(target), port, protocol.upper(), timeout)

    def matrix(self, port: int | None, protocol: str | None, timeout: float = 1.0) -> list[dict[str, Any]]:
        """Every pod to every pod, in parallel; without ``port``, each target's first declared port."""
        pods = sorted(self.state.pods)
        plan = []
        for source in pods:
            for target in pods:
                first = (self.state.pods[target].ports or [["", 80, "TCP"]])[0]
                number, proto = (port, protocol or "TCP") if port else (int(first[1]), str(first[2]))
                plan.append((source, target, number, proto))
        results = probe_matrix([(self.state.pods[s].netns, self.state.pods[t].ip, n, p) for s, t, n, p in plan], timeout)
        return [{"from": s, "to": t, "port": n, "protocol": p, **dataclasses.asdict(r)}
                for (s, t, n, p), r in zip(plan, results)]


def _pod_object(pod_spec: PodSpec, ip: str, host_ip: str) -> dict[str, Any]:
    obj = cluster.pod(pod_spec.namespace, pod_spec.name, pod_spec.node, ip, pod_spec.labels,
                      [(p.name, p.port, p.protocol) for p in pod_spec.ports])
    obj["status"]["hostIP"] = host_ip
    return obj


def _check_plugins(plugins: Sequence[str]) -> None:
    if not plugins:
        raise LabError("the agents need at least one plugin (--plugins)")
    installed = [p.name for p in installed_plugins()]
    missing = [name for name in plugins if name not in installed]
    if missing:
        raise LabError(f"unknown plugin {', '.join(missing)}. Installed plugins: {', '.join(installed)}")


def _reserve_and_build_network(state_dir: StateDir, state: LabState, spec: LabSpec, progress: Progress) -> None:
    """Pick a free lab id and build the lab's network under it.

    The state is saved before anything exists, so `kr lab down` can always remove what follows; ids are
    random, and ``build_network`` refuses an id in use before it creates anything.
    """
    for _ in range(8):
        state.lab_id = secrets.token_hex(2)
        state_dir.save(state)
        progress(f"lab {state.lab_id}: building the network ({len(spec.lans)} LAN(s), {len(spec.hosts)} hosts)")
        try:
            topology.build_network(state.lab_id, spec)
            return
        except topology.LabExistsError:
            continue
        except BaseException:
            topology.teardown(state.lab_id)
            state_dir.remove()
            raise
    state_dir.remove()
    raise LabError("could not find a free lab id")


#: urllib without proxies: lab addresses exist only inside the lab
_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _lab_env() -> dict[str, str]:
    """The environment for lab processes: no proxy settings, so nothing in the lab reaches outside."""
    return {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")}


def _check_object(obj: Any) -> None:
    if not isinstance(obj, Mapping) or not isinstance(obj.get("metadata"), Mapping) or not obj["metadata"].get("name"):
        raise LabError(f"not a Kubernetes object with metadata.name: {str(obj)[:120]}")
    if obj.get("kind") not in KIND_METHODS:
        raise LabError(f"kind {obj.get('kind')!r} is not handled by the lab; choose one of: {', '.join(KIND_METHODS)}")


def _tails(logs: Path, lines: int = 3) -> str:
    """The last lines of every log, to show why a build failed before the logs are removed."""
    parts = []
    for log in sorted([*logs.glob("agent-*.log"), *logs.glob("master.log")]) if logs.exists() else []:
        tail = log.read_text(errors="replace").strip().splitlines()[-lines:]
        if tail:
            parts.append(f"  {log.name}: " + "\n    ".join(tail))
    return "\n".join(parts)


def _wait(condition: Callable[[], bool], timeout: float, message: Callable[[], str]) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise LabError(message())
        time.sleep(0.02)


def _reason(exc: ApiException) -> str:
    try:
        return json.loads(exc.body or "{}").get("message") or f"HTTP {exc.status}"
    except ValueError:
        return f"HTTP {exc.status} {exc.reason}"
