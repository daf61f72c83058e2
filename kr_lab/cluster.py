"""Kubernetes API objects as the lab writes them (Nodes, Namespaces, Pods, Services), and the
EndpointSlices a service's pods imply.

``endpoint_slices`` does what the endpoint-slice controller does for one service: select the pods by
label and resolve target ports by name per pod, one slice per distinct port mapping.

Invariant: these functions are pure; they build dicts and never talk to an API server.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

Object = dict[str, Any]

MANAGED_BY = "kr-lab"  # the endpointslice.kubernetes.io/managed-by value of the lab's slices


def node(name: str, ip: str, pod_cidr: str, labels: Mapping[str, str] | None = None,
         annotations: Mapping[str, str] | None = None) -> Object:
    return {
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name, **(labels or {})},
                     "annotations": dict(annotations or {})},
        "spec": {"podCIDR": pod_cidr, "podCIDRs": [pod_cidr]},
        "status": {"addresses": [{"type": "InternalIP", "address": ip}, {"type": "Hostname", "address": name}],
                   "conditions": [{"type": "Ready", "status": "True"}]},
    }


def namespace(name: str, labels: Mapping[str, str] | None = None) -> Object:
    return {"apiVersion": "v1", "kind": "Namespace",
            "metadata": {"name": name, "labels": {"kubernetes.io/metadata.name": name, **(labels or {})}}}


def pod(ns: str, name: str, node_name: str, ip: str, labels: Mapping[str, str],
        ports: Iterable[tuple[str, int, str]] = (("http", 8080, "TCP"),)) -> Object:
    return {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"namespace": ns, "name": name, "labels": dict(labels)},
        "spec": {"nodeName": node_name, "containers": [{
            "name": "server", "image": "kr-lab/echo",
            "ports": [{"name": pname, "containerPort": number, "protocol": proto} for pname, number, proto in ports],
        }]},
        "status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}],
                   "conditions": [{"type": "Ready", "status": "True"}]},
    }


def service(ns: str, name: str, cluster_ip: str, selector: Mapping[str, str],
            ports: Iterable[tuple[str, int, str | int, str]], service_type: str = "ClusterIP",
            node_ports: Mapping[str, int] | None = None) -> Object:
    spec_ports = []
    for pname, number, target, proto in ports:
        entry: dict[str, Any] = {"name": pname, "port": number, "targetPort": target, "protocol": proto}
        if node_ports and pname in node_ports:
            entry["nodePort"] = node_ports[pname]
        spec_ports.append(entry)
    return {
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"namespace": ns, "name": name},
        "spec": {"type": service_type, "clusterIP": cluster_ip, "clusterIPs": [cluster_ip],
                 "selector": dict(selector), "ports": spec_ports},
    }


def _selected(svc: Mapping[str, Any], pods: Iterable[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    selector = svc["spec"].get("selector") or {}
    namespace_ = svc["metadata"]["namespace"]
    return [p for p in pods if p["metadata"]["namespace"] == namespace_ and selector
            and all(p["metadata"].get("labels", {}).get(k) == v for k, v in selector.items())]


def _container_port(p: Mapping[str, Any], target: str | int, protocol: str) -> int | None:
    if isinstance(target, int):
        return target
    for container in p["spec"].get("containers", []):
        for port in container.get("ports", []):
            if port.get("name") == target and port.get("protocol", "TCP") == protocol:
                return int(port["containerPort"])
    return None


def endpoint_slices(svc: Mapping[str, Any], pods: Iterable[Mapping[str, Any]]) -> list[Object]:
    """The EndpointSlices for ``svc``: one per distinct port mapping, as the controller splits them."""
    by_mapping: dict[tuple[tuple[str, int, str], ...], list[Mapping[str, Any]]] = {}
    for p in _selected(svc, pods):
        mapping = []
        for port in svc["spec"]["ports"]:
            number = _container_port(p, port.get("targetPort", port["port"]), port.get("protocol", "TCP"))
            if number is not None:
                mapping.append((port.get("name", ""), number, port.get("protocol", "TCP")))
        if mapping:
            by_mapping.setdefault(tuple(mapping), []).append(p)
    name = svc["metadata"]["name"]
    slices = []
    for index, (mapping, members) in enumerate(sorted(by_mapping.items())):
        slices.append({
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"namespace": svc["metadata"]["namespace"], "name": f"{name}-{index}",
                         "labels": {"kubernetes.io/service-name": name,
                                    "endpointslice.kubernetes.io/managed-by": MANAGED_BY}},
            "addressType": "IPv4",
            "ports": [{"name": pname, "port": number, "protocol": proto} for pname, number, proto in mapping],
            "endpoints": [{
                "addresses": [m["status"]["podIP"]],
                "conditions": {"ready": True, "serving": True, "terminating": False},
                "nodeName": m["spec"]["nodeName"],
                "targetRef": {"kind": "Pod", "namespace": m["metadata"]["namespace"], "name": m["metadata"]["name"]},
            } for m in sorted(members, key=lambda m: m["metadata"]["name"])],
        })
    return slices
