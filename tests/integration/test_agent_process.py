"""``kr run`` as a real process against the API stand-in: syncs follow the API, survive faults, and wait
for complete caches. The agent records each sync's desired state (debug.log), which the tests read."""

from __future__ import annotations

import copy
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from kr_apiserver import APIServer
from kr_lab.cluster import endpoint_slices, pod, service
from kr_lab.kubeconfig import write_kubeconfig

from .conftest import KR, MIN_SYNC, AgentProcess, services_in
from .objects import seed_cluster

# A change must be programmed within the runner's interval plus the time a watch event and a sync take.
PROMPT = MIN_SYNC + 2.0

NEW_POD = pod("backend", "api-3", "kube-node1", "10.1.1.9", {"app": "api"}, [("http", 9092, "TCP"), ("dns", 5353, "UDP")])
NEW_SERVICE = service("backend", "api-udp", "10.96.0.11", {"app": "api"}, [("dns", 53, "dns", "UDP")])


def seed_pods() -> list[dict]:
    return [o for o in seed_cluster() if o["kind"] == "Pod"]


def first_sync(agent: AgentProcess) -> dict:
    return agent.wait_for(lambda s: True, timeout=15)


def test_agent_follows_create_update_delete(apiserver: APIServer, start_agent: Callable[..., AgentProcess]) -> None:
    agent = start_agent()
    first = first_sync(agent)
    assert first["full"] is True
    services = services_in(first)
    assert set(services) == {"backend/api/dns", "backend/api/http", "frontend/web/http"}
    http = services["backend/api/http"]
    assert http["cluster_ips"] == ["10.96.0.10"] and http["protocol"] == "TCP"
    assert sorted((e["address"], e["port"]) for e in http["endpoints"]) == [("10.1.2.3", 9090), ("10.1.3.2", 9091)]
    assert services["frontend/web/http"]["node_port"] == 30080
    assert first["desired"]["node"]["pod_cidrs"] == ["10.1.1.0/24"]
    assert len(first["desired"]["pods"]) == 4 and len(first["desired"]["policies"]) == 1

    # create: a new service and its endpoints
    count = len(agent.syncs())
    started = time.monotonic()
    apiserver.store.apply(NEW_SERVICE)
    for slice_ in endpoint_slices(NEW_SERVICE, seed_pods()):
        apiserver.store.apply(slice_)
    sync = agent.wait_for(lambda s: "backend/api-udp/dns" in services_in(s)
                          and len(services_in(s)["backend/api-udp/dns"]["endpoints"]) == 2, timeout=PROMPT, after=count)
    assert time.monotonic() - started < PROMPT
    assert sync["full"] is False
    assert "backend/api-udp" in sync["changed"].get("services", []) or any(
        "backend/api-udp" in key for key in sync["changed"].get("services", []))

    # update: a third api pod on this node joins the service's endpoints, marked local
    count = len(agent.syncs())
    pods = [*seed_pods(), NEW_POD]
    apiserver.store.apply(NEW_POD)
    for slice_ in endpoint_slices(next(o for o in seed_cluster() if o["metadata"]["name"] == "api" and o["kind"] == "Service"), pods):
        apiserver.store.apply(slice_)
    sync = agent.wait_for(lambda s: len(services_in(s)["backend/api/http"]["endpoints"]) == 3, timeout=PROMPT, after=count)
    local = [e for e in services_in(sync)["backend/api/http"]["endpoints"] if e["is_local"]]
    assert [(e["address"], e["port"]) for e in local] == [("10.1.1.9", 9092)]

    # update a service in place: session affinity appears in the desired state
    count = len(agent.syncs())
    changed = copy.deepcopy(NEW_SERVICE)
    changed["spec"]["sessionAffinity"] = "ClientIP"
    apiserver.store.apply(changed)
    agent.wait_for(lambda s: services_in(s).get("backend/api-udp/dns", {}).get("session_affinity") == "ClientIP",
                   timeout=PROMPT, after=count)

    # delete
    count = len(agent.syncs())
    apiserver.store.delete("services", "backend", "api-udp")
    agent.wait_for(lambda s: "backend/api-udp/dns" not in services_in(s), timeout=PROMPT, after=count)
    assert agent.proc.poll() is None


def test_bursts_coalesce_into_few_syncs(apiserver: APIServer, start_agent: Callable[..., AgentProcess]) -> None:
    agent = start_agent("--min-sync-period", "1.0")
    first_sync(agent)
    count = len(agent.syncs())
    for index in range(30):
        apiserver.store.apply(service("default", f"burst-{index}", f"10.96.1.{index + 1}", {"app": "none"},
                                      [("http", 80, 8080, "TCP")]))
    sync = agent.wait_for(lambda s: sum(k.startswith("default/burst-") for k in services_in(s)) == 30,
                          timeout=5, after=count)
    assert sync["sync"] - count <= 3, "30 writes in a burst should take at most a few syncs"


def test_survives_dropped_watches(apiserver: APIServer, start_agent: Callable[..., AgentProcess]) -> None:
    agent = start_agent()
    first_sync(agent)
    # the first sync needs complete lists, not open watches: a watch may still be connecting
    deadline = time.monotonic() + 5
    while apiserver.stats.open_watches() < 6 and time.monotonic() < deadline:
        time.sleep(0.02)
    watches_before = apiserver.stats.requests("services", "watch")
    assert apiserver.faults.drop_watches() >= 6
    count = len(agent.syncs())
    apiserver.store.apply(NEW_SERVICE)
    agent.wait_for(lambda s: "backend/api-udp/dns" in services_in(s), timeout=PROMPT + 2, after=count)
    assert apiserver.stats.requests("services", "watch") > watches_before, "the agent re-opened its watch"
    assert "services: watch failed" in agent.log() and "resuming from resourceVersion" in agent.log()
    assert apiserver.stats.requests("services", "list") == 1, "a dropped watch resumes; it does not relist"


def test_relists_on_410_and_sees_deletions_missed_meanwhile(
    apiserver: APIServer, start_agent: Callable[..., AgentProcess]
) -> None:
    agent = start_agent()
    first_sync(agent)
    lists_before = apiserver.stats.requests("services", "list")
    # Cut the agent off while a service is deleted and the history is compacted: when it comes back,
    # its resourceVersion is too old (410 Gone) and only a relist can reveal the deletion.
    apiserver.faults.hang_requests(2.0, resource="services")
    apiserver.faults.drop_watches("services")
    apiserver.store.delete("services", "frontend", "web")
    apiserver.faults.compact()
    count = len(agent.syncs())
    sync = agent.wait_for(lambda s: "frontend/web/http" not in services_in(s), timeout=10, after=count)
    assert apiserver.stats.requests("services", "list") > lists_before, "the agent relisted"
    assert "410 Gone" in agent.log()
    assert "backend/api/http" in services_in(sync), "the relist kept what still exists"


def test_410_on_reconnect_relists(apiserver: APIServer, start_agent: Callable[..., AgentProcess]) -> None:
    agent = start_agent()
    first_sync(agent)
    lists_before = apiserver.stats.requests("pods", "list")
    apiserver.faults.expire_watches(count=1, resource="pods")
    apiserver.faults.drop_watches("pods")
    deadline = time.monotonic() + 8
    while apiserver.stats.requests("pods", "list") == lists_before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert apiserver.stats.requests("pods", "list") == lists_before + 1
    count = len(agent.syncs())
    apiserver.store.apply(NEW_POD)
    agent.wait_for(lambda s: any(p["name"] == "api-3" for p in s["desired"]["pods"]), timeout=PROMPT + 2, after=count)


def test_stalled_watch_is_reconnected(apiserver: APIServer, start_agent: Callable[..., AgentProcess]) -> None:
    agent = start_agent("--watch-stall-timeout", "1.5")
    first_sync(agent)
    watches_before = apiserver.stats.requests("services", "watch")
    apiserver.faults.stall_watches(4.0, resource="services")
    deadline = time.monotonic() + 6
    while apiserver.stats.requests("services", "watch") == watches_before and time.monotonic() < deadline:
        time.sleep(0.1)
    assert apiserver.stats.requests("services", "watch") > watches_before, "a stalled watch was not reconnected"
    apiserver.faults.clear()
    count = len(agent.syncs())
    apiserver.store.apply(NEW_SERVICE)
    agent.wait_for(lambda s: "backend/api-udp/dns" in services_in(s), timeout=PROMPT + 3, after=count)


def test_no_sync_before_every_kind_is_listed(apiserver: APIServer, start_agent: Callable[..., AgentProcess]) -> None:
    apiserver.faults.hang_requests(3.0, resource="networkpolicies")
    started = time.monotonic()
    agent = start_agent()
    time.sleep(2.0)
    assert agent.syncs() == [], "synced before the network policies were listed"
    assert agent.healthz() == 503
    first = first_sync(agent)
    assert time.monotonic() - started >= 2.9
    assert first["full"] is True and len(first["desired"]["policies"]) == 1 and len(first["desired"]["pods"]) == 4
    deadline = time.monotonic() + 3
    while agent.healthz() != 200 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert agent.healthz() == 200


def test_failed_sync_retries_and_next_is_full(apiserver: APIServer, start_agent: Callable[..., AgentProcess]) -> None:
    agent = start_agent("--watch-stall-timeout", "1")
    first_sync(agent)
    count = len(agent.syncs())
    agent.fail_file.touch()
    apiserver.store.apply(NEW_SERVICE)
    deadline = time.monotonic() + 6
    while agent.healthz() != 503 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert agent.healthz() == 503, "a sync loop that keeps failing must turn /healthz unhealthy"
    assert "sync failed" in agent.log()
    assert len(agent.syncs()) == count, "failed syncs record nothing"
    agent.fail_file.unlink()
    sync = agent.wait_for(lambda s: True, timeout=10, after=count)
    assert sync["full"] is True, "the sync after a failure is full"
    assert "backend/api-udp/dns" in services_in(sync)
    assert "backend/api-udp" in sync["changed"].get("services", []), "failed changes are handed on, not lost"
    deadline = time.monotonic() + 3
    while agent.healthz() != 200 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert agent.healthz() == 200


def test_metrics_use_kube_proxy_names(apiserver: APIServer, start_agent: Callable[..., AgentProcess]) -> None:
    agent = start_agent()
    first_sync(agent)
    status, text = agent.http(agent.metrics_port, "/metrics")
    assert status == 200
    for name in ("kubeproxy_sync_proxy_rules_duration_seconds_bucket",
                 "kubeproxy_sync_proxy_rules_last_timestamp_seconds",
                 "kubeproxy_sync_proxy_rules_last_queued_timestamp_seconds",
                 "kubeproxy_sync_proxy_rules_endpoint_changes_pending",
                 "kubeproxy_sync_proxy_rules_endpoint_changes_total",
                 "kubeproxy_sync_proxy_rules_service_changes_total",
                 "kubeproxy_network_programming_duration_seconds_bucket",
                 'kr_backend_up{backend="debug.log"} 1.0',
                 'kr_cache_objects{kind="pods"} 4.0'):
        assert name in text, name
    count_line = next(line for line in text.splitlines() if line.startswith("kubeproxy_sync_proxy_rules_duration_seconds_count"))
    assert float(count_line.split()[-1]) >= 1


def test_master_overrides_kubeconfig_and_node_name_from_env(
    apiserver: APIServer, start_agent: Callable[..., AgentProcess], tmp_path: Path
) -> None:
    unreachable = write_kubeconfig("http://127.0.0.1:9", tmp_path / "elsewhere")
    agent = start_agent("--master", apiserver.url, config=unreachable, node=None, env={"NODE_NAME": "kube-node2"})
    first = first_sync(agent)
    assert first["desired"]["node_name"] == "kube-node2"
    assert first["desired"]["node"]["pod_cidrs"] == ["10.1.2.0/24"]


def test_unusable_kubeconfig_fails_plainly(tmp_path: Path) -> None:
    broken = tmp_path / "broken"
    broken.write_text("apiVersion: v1\nkind: Config\nclusters: []\ncontexts: []\ncurrent-context: ''\n")
    result = subprocess.run([KR, "run", "--plugins", "debug.log", "--kubeconfig", str(broken)],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 1
    assert "Error: cannot configure the Kubernetes client" in result.stderr
    assert "Traceback" not in result.stderr


def test_healthz_reports_programmed_resource_versions(apiserver: APIServer, start_agent: Callable[..., AgentProcess]) -> None:
    import json

    agent = start_agent()
    first_sync(agent)
    stored = apiserver.store.apply(NEW_SERVICE)
    written = int(stored["metadata"]["resourceVersion"])
    deadline = time.monotonic() + PROMPT
    versions: dict = {}
    while time.monotonic() < deadline:
        versions = json.loads(agent.http(agent.healthz_port, "/healthz")[1])["syncedResourceVersions"]
        if int(versions["services"] or 0) >= written:
            break
        time.sleep(0.05)
    assert int(versions["services"]) >= written
    # by the time the version is reported, the sync that includes the write has been recorded
    assert any("backend/api-udp/dns" in services_in(s) for s in agent.syncs())
    assert set(versions) == {"nodes", "services", "endpointslices", "pods", "namespaces", "networkpolicies"}


def test_sigterm_stops_promptly_on_quiet_watches(tmp_path: Path, start_agent: Callable[..., AgentProcess]) -> None:
    with APIServer("127.0.0.1", 0, bookmark_interval=60.0) as quiet:  # no bookmark will wake the readers
        for obj in seed_cluster():
            quiet.store.apply(obj)
        agent = start_agent(config=write_kubeconfig(quiet.url, tmp_path / "quiet"))
        first_sync(agent)
        time.sleep(0.5)  # every watch is now blocked reading
        started = time.monotonic()
        assert agent.stop() == 0
        assert time.monotonic() - started < 5, "SIGTERM must not wait for the next bookmark"
    assert "agent stopped; the datapath stays programmed" in agent.log()


def test_taken_port_is_a_plain_error(apiserver: APIServer, kubeconfig: Path) -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run([KR, "run", "--plugins", "debug.log", "--kubeconfig", str(kubeconfig),
                                 "--healthz-bind-address", f"127.0.0.1:{port}", "--metrics-bind-address", "off"],
                                capture_output=True, text=True, timeout=30)
    assert result.returncode == 1
    assert f"--healthz-bind-address 127.0.0.1:{port}: cannot listen" in result.stderr
    assert "Traceback" not in result.stderr and "backend debug.log (slot debug) started" not in result.stderr
