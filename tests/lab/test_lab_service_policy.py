"""The proxy and the firewall together on real traffic: NetworkPolicy applies to service traffic after
the ClusterIP is translated, and a rejected service connection is refused at once, also when the chosen
endpoint sits on the client's own node (where a TCP reset would go back over the bridge, past NAT)."""

from __future__ import annotations

import time
from pathlib import Path

import yaml

from kr_lab.demo import POLICY, SCALE, SERVICE
from kr_lab.lab import Lab
from kr_lab.spec import DEFAULT_SPEC_TEXT
from kr_lab.state import StateDir

PLUGINS = ["routing.static", "proxy.iptables", "firewall.iptables"]
LOCAL_SERVICE = {**SERVICE, "metadata": {"namespace": "backend", "name": "api-local"},
                 "spec": {**SERVICE["spec"], "internalTrafficPolicy": "Local"}}


def test_policy_applies_to_service_traffic_and_rejects_fast(tmp_path: Path) -> None:
    state = StateDir(str(tmp_path / "lab"))
    try:
        lab = Lab.up(state, yaml.safe_load(DEFAULT_SPEC_TEXT), PLUGINS)
        lab.apply([SCALE, SERVICE])  # backend/api-3 runs on kube-node1, next to default/tools and frontend/web-1
        cluster_ip = lab.call_api(lambda api: _cluster_ip(api))
        lab.apply([POLICY])
        answered: set[str] = set()
        for _ in range(30):
            allowed = lab.probe("frontend/web-1", cluster_ip, 80, "tcp", timeout=2.0)
            assert allowed.ok, allowed
            answered.add(allowed.answer or "")
        assert answered == {"backend/api-1", "backend/api-2", "backend/api-3"}, "endpoints on every node, the local one too"
        # A rejected service connection is told by ICMP, which the kernel rate-limits per destination
        # (a burst of 6, then one a second): five in a row stay within the burst. The local service
        # pins them to the endpoint on tools' own node, the case a TCP reset would never reach.
        lab.apply([LOCAL_SERVICE])
        local_ip = lab.call_api(lambda api: _cluster_ip(api, "api-local"))
        for _ in range(5):
            started = time.monotonic()
            denied = lab.probe("default/tools", local_ip, 80, "tcp", timeout=2.0)
            assert not denied.ok and denied.error == "refused", denied
            assert time.monotonic() - started < 0.5, "refused at once, not after a SYN retransmission"
        lab.delete([POLICY])
        assert all(lab.probe("default/tools", cluster_ip, 80, "tcp").ok for _ in range(10))
    finally:
        Lab.down(state)


def _cluster_ip(api_client, name: str = "api") -> str:  # type: ignore[no-untyped-def]
    from kubernetes import client

    return str(client.CoreV1Api(api_client).read_namespaced_service(name, "backend").spec.cluster_ip)
