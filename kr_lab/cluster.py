"""The seed cluster as Kubernetes API objects, and the EndpointSlice a service's pods imply.

The blog post's cluster: ``kube-master`` plus ``kube-node1..3`` on one LAN, pod CIDRs ``10.1.N.0/24``
and the service range ``10.96.0.0/12``. ``endpoint_slice`` does what the endpoint-slice controller
does for one service: select ready pods by label and resolve target ports by name.

Invariant: these functions are pure; they build dicts and never talk to an API server.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

Object = dict[str, Any]

LAN_PREFIX = "192.168.56."
NODES = {"kube-node1": ("101", "10.1.1.0/24"), "kube-node2": ("102", "10.1.2.0/24"), "kube-node3": ("103", "10.1.3.0/24")}
SERVICE_CIDR = "10.96.0.0/12"
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


def seed_cluster() -> list[Object]:
    """The blog post's cluster: three nodes, two namespaces, pods on every node, two services, a policy."""
    objects: list[Object] = [node(name, LAN_PREFIX + host, cidr) for name, (host, cidr) in NODES.items()]
    objects += [namespace("default"), namespace("frontend", {"team": "web"}), namespace("backend", {"team": "api"})]
    pods = [
        pod("frontend", "web-1", "kube-node1", "10.1.1.2", {"app": "web"}),
        pod("frontend", "web-2", "kube-node2", "10.1.2.2", {"app": "web"}),
        pod("backend", "api-1", "kube-node2", "10.1.2.3", {"app": "api"}, [("http", 9090, "TCP"), ("dns", 5353, "UDP")]),
        pod("backend", "api-2", "kube-node3", "10.1.3.2", {"app": "api"}, [("http", 9091, "TCP"), ("dns", 5353, "UDP")]),
    ]
    services = [
        service("frontend", "web", "10.96.0.20", {"app": "web"}, [("http", 80, "http", "TCP")],
                service_type="NodePort", node_ports={"http": 30080}),
        service("backend", "api", "10.96.0.10", {"app": "api"}, [("http", 80, "http", "TCP"), ("dns", 53, "dns", "UDP")]),
    ]
    policy = {
        "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
        "metadata": {"namespace": "backend", "name": "allow-frontend"},
        "spec": {"podSelector": {"matchLabels": {"app": "api"}}, "policyTypes": ["Ingress"],
                 "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"team": "web"}}}],
                              "ports": [{"protocol": "TCP", "port": "http"}]}]},
    }
    objects += pods + services
    for svc in services:
        objects += endpoint_slices(svc, pods)
    objects.append(policy)
    return objects
