"""The cluster the integration tests load into the API stand-in: three nodes, two namespaces, pods on
every node (two api pods mapping the port name ``http`` to different numbers), two services with their
EndpointSlices, and one NetworkPolicy. Test data only; the lab builds its objects from its spec."""

from __future__ import annotations

from typing import Any

from kr_lab.cluster import endpoint_slices, namespace, node, pod, service

NODES = {"kube-node1": ("192.168.56.101", "10.1.1.0/24"), "kube-node2": ("192.168.56.102", "10.1.2.0/24"),
         "kube-node3": ("192.168.56.103", "10.1.3.0/24")}


def seed_cluster() -> list[dict[str, Any]]:
    """The blog post's cluster: three nodes, two namespaces, pods on every node, two services, a policy."""
    objects: list[dict[str, Any]] = [node(name, ip, cidr) for name, (ip, cidr) in NODES.items()]
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
