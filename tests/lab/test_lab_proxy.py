"""The service proxy end to end: real connections through a lab running ``routing.static,<proxy>`` on three
nodes, with endpoints on several nodes.

The proxy is ``proxy.iptables``, or the backend ``KR_LAB_PROXY`` names: ``proxy.ipvs`` needs a kernel with
IPVS, so tests/guest/test_guest_lab_proxy.py runs this module in the UML guest kernel with
``KR_LAB_PROXY=proxy.ipvs``. Both backends must pass the same tests; where their documented behaviour
differs (IPVS refuses traffic for a virtual service without real servers, where proxy.iptables drops
traffic that has no local endpoint), the expectation says so.

One lab (the default spec) serves the whole module; it is taken down at teardown, also on failure. Tests
are independent of order: each creates its own Services (and pods, where it removes some) under names no
other test uses, and deletes them again, also on failure. Changes go through the lab's apply barrier
(``Lab.apply``/``Lab.delete``, what ``kr lab apply``/``delete`` run), so every check right after a change
is made at once, never eventually. Probes run in-process (``kr_lab.probe``), many in parallel; the echo
servers say who answered and which source address they saw.

Pods of the default spec: frontend/web-1 and default/tools on kube-node1, frontend/web-2 and backend/api-1
on kube-node2, backend/api-2 and backend/db-1 on kube-node3; api pods serve 9090/TCP and 5353/UDP.
"""

from __future__ import annotations

import http.client
import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from kr_lab.lab import Lab
from kr_lab.nsenter import run_in_netns
from kr_lab.probe import ProbeResult, probe, probe_matrix
from kr_lab.state import LabError, StateDir
from kr_plugins.kernel.ipvs import IpvsKernel

KR = str(Path(sys.executable).with_name("kr"))
PROXY = os.environ.get("KR_LAB_PROXY", "proxy.iptables")
PLUGINS = f"routing.static,{PROXY}"
IPVS = PROXY == "proxy.ipvs"
NODES = {"kube-node1": "192.168.56.11", "kube-node2": "192.168.56.12", "kube-node3": "192.168.56.13"}
CLIENT = "client"
CLIENT_IP = "192.168.56.100"
API_PODS = {"backend/api-1", "backend/api-2"}
#: client pods, at least one per node (kube-node2 and 3 also hold an api endpoint each)
SOURCES = {"frontend/web-1": "kube-node1", "default/tools": "kube-node1", "frontend/web-2": "kube-node2",
           "backend/db-1": "kube-node3"}

Object = dict[str, Any]


# --- objects


def api_service(name: str, **spec: Any) -> Object:
    """A Service in ``backend`` over the api pods: 80/TCP -> 9090 and 53/UDP -> 5353, plus ``spec``."""
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"namespace": "backend", "name": name},
            "spec": {"selector": {"app": "api"},
                     "ports": [{"name": "http", "port": 80, "targetPort": 9090, "protocol": "TCP"},
                               {"name": "dns", "port": 53, "targetPort": 5353, "protocol": "UDP"}],
                     **spec}}


def pod(name: str, node: str, app: str, ports: Sequence[tuple[str, int, str]]) -> Object:
    """A pod in ``backend`` labelled ``app``, serving ``(port name, number, protocol)``."""
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"namespace": "backend", "name": name, "labels": {"app": app}},
            "spec": {"nodeName": node, "containers": [{"name": "server", "ports": [
                {"name": pname, "containerPort": number, "protocol": proto} for pname, number, proto in ports]}]}}


# --- the lab


class ProxyLab:
    """The module's lab: changes with the barrier, service lookups, probes from any lab host or pod."""

    def __init__(self, state: Path) -> None:
        self.state = state
        self.lab = Lab(StateDir(state))

    def apply(self, *objects: Object) -> None:
        self.lab.apply(objects)

    def delete(self, *objects: Object) -> None:
        self.lab.delete(objects)

    @contextmanager
    def objects(self, *objects: Object, later: Sequence[Object] = ()) -> Iterator[None]:
        """Apply ``objects``; afterwards, also when the test failed, delete whatever is left of them and
        of ``later`` (objects the test itself applies)."""
        self.apply(*objects)
        try:
            yield
        finally:
            for obj in reversed([*objects, *later]):
                try:
                    self.lab.delete([obj], wait=False)  # the next change's barrier covers these
                except LabError:
                    pass  # the test deleted it already

    def service(self, name: str, namespace: str = "backend") -> client.V1Service:
        return self.lab.call_api(lambda api: client.CoreV1Api(api).read_namespaced_service(name, namespace))

    def cluster_ip(self, name: str) -> str:
        return self.service(name).spec.cluster_ip

    def node_port(self, name: str, port_name: str = "http") -> int:
        return next(p.node_port for p in self.service(name).spec.ports if p.name == port_name)

    def netns(self, host: str) -> str:
        return self.lab.netns_of(host)

    def ip(self, host: str) -> str:
        return self.lab.ip_of(host)

    def probes(self, plan: Sequence[tuple[str, str, int, str]], timeout: float = 1.0) -> list[ProbeResult]:
        """Probe every ``(source, address, port, protocol)`` in parallel; results keep the plan's order."""
        return probe_matrix([(self.netns(src), ip, port, proto) for src, ip, port, proto in plan], timeout)

    def repeat(self, source: str, ip: str, port: int, protocol: str = "TCP", count: int = 30,
               timeout: float = 1.0) -> list[ProbeResult]:
        return self.probes([(source, ip, port, protocol)] * count, timeout)

    def dataplane(self, node: str) -> str:
        """kr's dataplane on ``node``, shown when an assertion fails: its nat rules, and with proxy.ipvs
        its filter rules and IPVS table too."""
        if not IPVS:
            out = subprocess.run(["ip", "netns", "exec", self.netns(node), "iptables-save", "-t", "nat"],
                                 capture_output=True, text=True, check=False).stdout
            return "\n".join(line for line in out.splitlines() if "KR-PX" in line)
        rules: dict[str, None] = {}  # whichever flavour the node uses (legacy where there is no nf_tables)
        for save in ("iptables-save", "iptables-legacy-save"):
            out = subprocess.run(["ip", "netns", "exec", self.netns(node), save], capture_output=True, text=True,
                                 check=False).stdout
            rules.update(dict.fromkeys(line for line in out.splitlines() if "KR-PX" in line))
        return "\n".join([*rules, *run_in_netns(self.netns(node), _ipvs_table)])


def _ipvs_table() -> list[str]:
    """This namespace's IPVS services and real servers (weight, active/inactive connections)."""
    ipvs = IpvsKernel()
    try:
        lines = []
        for key, record in sorted(ipvs.services().items()):
            reals = ", ".join(f"{a}:{p} w{r.weight} {r.active}/{r.inactive}"
                              for (a, p), r in sorted(ipvs.reals(record).items()))
            lines.append(f"ipvs {'/'.join(map(str, key))} {record.scheduler} -> {reals or 'none'}")
        return lines
    finally:
        ipvs.close()


def answers(results: Sequence[ProbeResult]) -> Counter[str]:
    """How often each pod answered; failures count under ``!error``."""
    return Counter(r.answer if r.ok else f"!{r.error}" for r in results)


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Iterator[ProxyLab]:
    state = tmp_path_factory.mktemp("proxy-lab") / "lab"
    failed = request.session.testsfailed
    try:
        up = subprocess.run([KR, "lab", "up", "--state", str(state), "--plugins", PLUGINS],
                            capture_output=True, text=True, timeout=120, check=False)
        assert up.returncode == 0, f"kr lab up failed:\n{up.stdout}\n{up.stderr}"
        proxy_lab = ProxyLab(state)
        yield proxy_lab
    finally:
        if request.session.testsfailed > failed:
            _show_agent_logs(request.config, state / "logs")  # `kr lab down` removes them
        subprocess.run([KR, "lab", "down", "--state", str(state)], capture_output=True, text=True, timeout=60,
                       check=False)


def _show_agent_logs(config: pytest.Config, logs: Path, lines: int = 60) -> None:
    """Write the tails of the agents' logs to the terminal (inside the guest, the only place they survive)."""
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    capture = config.pluginmanager.get_plugin("capturemanager")
    if reporter is None or capture is None:
        return
    with capture.global_and_fixture_disabled():
        for log in sorted(logs.glob("agent-*.log")):
            tail = log.read_text(errors="replace").splitlines()[-lines:]
            reporter.write_sep("-", f"{log.name} (last {len(tail)} lines)")
            reporter.write_line("\n".join(tail))


# --- ClusterIP


def test_cluster_ip_from_pods_on_every_node_reaches_every_endpoint(lab: ProxyLab) -> None:
    with lab.objects(api_service("px-cluster")):
        ip = lab.cluster_ip("px-cluster")
        plan = [(src, ip, port, proto) for src in SOURCES for port, proto in ((80, "TCP"), (53, "UDP"))
                for _ in range(24)]
        results = lab.probes(plan)
        for src, node in SOURCES.items():
            for proto in ("TCP", "UDP"):
                mine = [r for (s, _, _, p), r in zip(plan, results) if (s, p) == (src, proto)]
                assert set(answers(mine)) == API_PODS, (src, proto, answers(mine), lab.dataplane(node))
                # traffic from this node's pods keeps its source: the endpoint sees the pod itself
                assert {r.peer_ip for r in mine} == {lab.ip(src)}, (src, proto, {r.peer for r in mine})


def test_node_port_and_external_ip_from_outside(lab: ProxyLab) -> None:
    external_ip = "192.168.56.200"
    with lab.objects(api_service("px-nodeport", type="NodePort", externalIPs=[external_ip])):
        node_port = lab.node_port("px-nodeport")
        plan = [(CLIENT, node_ip, node_port, "TCP") for node_ip in NODES.values() for _ in range(20)]
        results = lab.probes(plan)
        for index, node in enumerate(NODES):
            mine = results[index * 20:(index + 1) * 20]
            assert set(answers(mine)) == API_PODS, (node, answers(mine), lab.dataplane(node))
            # outside traffic may leave the node for another's endpoint: it is masqueraded so the reply
            # comes back the same way (externalTrafficPolicy Cluster)
            assert CLIENT_IP not in {r.peer_ip for r in mine}, (node, {r.peer for r in mine})
        udp = lab.repeat(CLIENT, NODES["kube-node3"], lab.node_port("px-nodeport", "dns"), "UDP", 20)
        assert set(answers(udp)) == API_PODS, answers(udp)

        # the external IP is routed to kube-node2 by the client (as a router would)
        route = ["ip", "netns", "exec", lab.netns(CLIENT), "ip", "route"]
        subprocess.run([*route, "add", f"{external_ip}/32", "via", NODES["kube-node2"]], check=True)
        try:
            external = lab.repeat(CLIENT, external_ip, 80, "TCP", 20) + lab.repeat(CLIENT, external_ip, 53, "UDP", 20)
        finally:
            subprocess.run([*route, "del", f"{external_ip}/32"], check=True)
        assert set(answers(external)) == API_PODS, (answers(external), lab.dataplane("kube-node2"))


# --- session affinity


def test_session_affinity_client_ip_keeps_a_client_on_one_endpoint(lab: ProxyLab) -> None:
    with lab.objects(api_service("px-sticky", sessionAffinity="ClientIP")):
        ip = lab.cluster_ip("px-sticky")
        chosen = {}
        for src in SOURCES:
            first = lab.repeat(src, ip, 80, count=1)[0]  # alone: it records the client's endpoint
            assert first.ok and first.answer in API_PODS, first
            rest = lab.repeat(src, ip, 80, count=30)
            assert answers(rest) == Counter({first.answer: 30}), (src, first.answer, answers(rest))
            chosen[src] = first.answer
        # a control: without affinity the same clients spread over both endpoints
        with lab.objects(api_service("px-unsticky")):
            spread = lab.repeat("frontend/web-1", lab.cluster_ip("px-unsticky"), 80, count=30)
            assert set(answers(spread)) == API_PODS, answers(spread)
        print(f"ClientIP affinity: {chosen}")  # different clients may land on different endpoints


# --- traffic policies


def _health(lab: ProxyLab, node: str, port: int) -> tuple[int, dict[str, Any]]:
    def get() -> tuple[int, dict[str, Any]]:
        conn = http.client.HTTPConnection(NODES[node], port, timeout=2)
        try:
            conn.request("GET", "/healthz")
            response = conn.getresponse()
            return response.status, json.loads(response.read())
        finally:
            conn.close()
    return run_in_netns(lab.netns(CLIENT), get)


def test_external_traffic_policy_local(lab: ProxyLab) -> None:
    """api-1 is on kube-node2, api-2 on kube-node3, none on kube-node1."""
    with lab.objects(api_service("px-etp-local", type="LoadBalancer", externalTrafficPolicy="Local")):
        service = lab.service("px-etp-local")
        node_port = lab.node_port("px-etp-local")
        health_port = service.spec.health_check_node_port
        assert health_port, "the lab allocates a healthCheckNodePort to Local load balancers"
        for node, local in (("kube-node2", "backend/api-1"), ("kube-node3", "backend/api-2")):
            results = lab.repeat(CLIENT, NODES[node], node_port, "TCP", 20)
            assert answers(results) == Counter({local: 20}), (node, answers(results), lab.dataplane(node))
            assert {r.peer_ip for r in results} == {CLIENT_IP}, ("the client's address is kept", node,
                                                                {r.peer for r in results})
            udp = lab.repeat(CLIENT, NODES[node], lab.node_port("px-etp-local", "dns"), "UDP", 10)
            assert answers(udp) == Counter({local: 10}), (node, answers(udp))
            assert {r.peer_ip for r in udp} == {CLIENT_IP}
        unanswered = lab.repeat(CLIENT, NODES["kube-node1"], node_port, "TCP", 5, timeout=0.5)
        if IPVS:
            # the node port's virtual service has no real server there, and IPVS refuses what it cannot
            # schedule (an ICMP error, which the kernel rate-limits per destination: some may go unanswered)
            assert "!refused" in answers(unanswered) and set(answers(unanswered)) <= {"!refused", "!timeout"}, (
                "no local endpoint: refused", answers(unanswered), lab.dataplane("kube-node1"))
        else:
            assert answers(unanswered) == Counter({"!timeout": 5}), ("no local endpoint: dropped",
                                                                     answers(unanswered))

        for node in ("kube-node2", "kube-node3"):
            status, body = _health(lab, node, health_port)
            assert status == 200 and body["localEndpoints"] >= 1, (node, status, body)
            assert body["service"] == {"namespace": "backend", "name": "px-etp-local"}, body
        status, body = _health(lab, "kube-node1", health_port)
        assert status == 503 and body["localEndpoints"] == 0, (status, body)


def test_internal_traffic_policy_local(lab: ProxyLab) -> None:
    with lab.objects(api_service("px-itp-local", internalTrafficPolicy="Local")):
        ip = lab.cluster_ip("px-itp-local")
        for src, local in (("frontend/web-2", "backend/api-1"), ("backend/db-1", "backend/api-2")):
            for port, proto in ((80, "TCP"), (53, "UDP")):
                results = lab.repeat(src, ip, port, proto, 16)
                assert answers(results) == Counter({local: 16}), (src, proto, answers(results))
        # kube-node1 has no endpoint of its own: the ClusterIP does not answer there
        plan = [(src, ip, port, proto) for src in ("frontend/web-1", "default/tools")
                for port, proto in ((80, "TCP"), (53, "UDP")) for _ in range(4)]
        unanswered = answers(lab.probes(plan, timeout=0.5))
        if IPVS:
            # the virtual service has no real server there: IPVS refuses, with an ICMP error the node sends
            # each pod a burst of 6 of, then one a second (the rest of the 8 per pod go unanswered)
            assert "!refused" in unanswered and set(unanswered) <= {"!refused", "!timeout"}, (
                unanswered, lab.dataplane("kube-node1"))
        else:
            # the proxy drops the traffic (in filter FORWARD: the lab's service-CIDR route gets it there)
            assert unanswered == Counter({"!timeout": len(plan)}), (unanswered, lab.dataplane("kube-node1"))


# --- special paths


def test_hairpin_a_pod_reaches_itself_through_its_service(lab: ProxyLab) -> None:
    with lab.objects(api_service("px-hairpin")):
        ip = lab.cluster_ip("px-hairpin")
        for me in sorted(API_PODS):
            for proto, port in (("TCP", 80), ("UDP", 53)):
                results = lab.repeat(me, ip, port, proto, 16)
                assert all(r.ok for r in results), (me, proto, answers(results))
                own = [r for r in results if r.answer == me]
                assert own, (f"{me} never answered itself over {proto} in 16 tries", answers(results))
                # the hairpin flow is masqueraded to the node's bridge address (the pods' gateway): the
                # reply must come back through the node to be un-DNATed
                gateway = lab.ip(me).rsplit(".", 1)[0] + ".1"
                assert {r.peer_ip for r in own} == {gateway}, (me, proto, {r.peer for r in own})


def test_a_service_without_endpoints_rejects_at_once(lab: ProxyLab) -> None:
    """Refused within a round trip, not dropped into a SYN-retransmission timeout: the ClusterIP from pods
    on every node, and NodePorts on every node.

    Rejections are ICMP errors, which the kernel rate-limits per destination and node (a burst of 6, then
    one a second), and a node's ICMP redirects reset that budget: the NodePort tests make every node send
    redirects to ``client`` (a DNATed packet leaves by the LAN it came from), so for some seconds after
    them the client's first SYN can go unanswered. So NodePorts are probed from pods here, which reach
    other nodes masqueraded to their own node's address, and each source meets at most two rejections
    per node."""
    empty = api_service("px-empty", type="NodePort")
    empty["spec"]["selector"] = {"app": "nobody"}
    with lab.objects(empty):
        ip, node_port = lab.cluster_ip("px-empty"), lab.node_port("px-empty")
        plan = [(src, ip, port, proto) for src in SOURCES for port, proto in ((80, "TCP"), (53, "UDP"))]
        plan += [(src, NODES[node], node_port, "TCP") for src, node in (
            ("frontend/web-1", "kube-node2"), ("frontend/web-1", "kube-node3"), ("backend/db-1", "kube-node1"),
            ("frontend/web-2", "kube-node2"))]
        results = lab.probes(plan, timeout=2)
        for item, result in zip(plan, results):
            assert (result.ok, result.error) == (False, "refused"), (item, result)
            assert result.elapsed < 0.3, (item, f"refused only after {result.elapsed:.2f}s")


def test_cluster_ips_are_routable_from_nodes_and_rejects_are_reached(lab: ProxyLab) -> None:
    """The lab gives nodes a route covering the service CIDR (a real node's default route does): the
    node's own stack reaches a ClusterIP, and a pod's packet to a ClusterIP without endpoints reaches
    the proxy's REJECT instead of failing routing. (With proxy.ipvs, ClusterIPs are local addresses of
    the node, on kr-ipvs0, and need no route; the node's connection leaves from the ClusterIP itself.)"""
    empty = api_service("px-unrouted", selector={"app": "nobody"})
    with lab.objects(api_service("px-routed"), empty):
        from_node = lab.repeat("kube-node1", lab.cluster_ip("px-routed"), 80, count=1)[0]
        assert from_node.ok and from_node.answer in API_PODS, f"kube-node1 itself -> ClusterIP: {from_node}"
        rejected = lab.repeat("backend/db-1", lab.cluster_ip("px-unrouted"), 80, count=1, timeout=2)[0]
        assert (rejected.ok, rejected.error) == (False, "refused"), f"no endpoints, from a pod: {rejected}"


# --- endpoints changing


PATIENCE = 0.8


def test_endpoints_scale_down_and_up_under_load(lab: ProxyLab) -> None:
    """Clients on every node connect in a loop while one endpoint is removed and another added: once a
    change has passed the barrier, new connections are answered only by live endpoints (a rare timeout
    aside, see ``wrong``).
    Each probe waits ``PATIENCE``: long enough for a loaded 2-core CI machine to schedule the client
    and the echo server, shorter than TCP's first SYN retransmission (1 s), so a lost SYN still fails."""
    port = [("http", 9090, "TCP")]
    first, second, third = (pod("scale-a", "kube-node2", "px-scale", port),
                            pod("scale-b", "kube-node3", "px-scale", port),
                            pod("scale-c", "kube-node1", "px-scale", port))
    service = api_service("px-scale", selector={"app": "px-scale"},
                          ports=[{"name": "http", "port": 80, "targetPort": 9090, "protocol": "TCP"}])
    with lab.objects(first, second, service, later=[third]):
        ip = lab.cluster_ip("px-scale")
        log: list[tuple[float, str, ProbeResult]] = []
        stop = threading.Event()

        def hammer(source: str, netns: str) -> None:
            while not stop.is_set():
                started = time.monotonic()
                log.append((started, source, probe(netns, ip, 80, "TCP", PATIENCE)))

        threads = [threading.Thread(target=hammer, args=(src, lab.netns(src)), name=f"hammer:{src}", daemon=True)
                   for src in SOURCES]
        for thread in threads:
            thread.start()
        try:
            # a probe under way when scale-a goes may hang on it until its timeout: the windows after each
            # change are longer than that, so every client probes in each of them
            time.sleep(0.3)
            lab.delete(first)
            scaled_down = time.monotonic()
            time.sleep(PATIENCE + 0.5)
            adding = time.monotonic()
            lab.apply(third)  # scale-c may answer from here on: its rules can land before the barrier
            scaled_up = time.monotonic()
            time.sleep(PATIENCE + 0.5)
        finally:
            stop.set()
            for thread in threads:
                thread.join(timeout=5)

        def window(start: float, end: float = float("inf")) -> list[tuple[str, ProbeResult]]:
            return [(src, r) for t, src, r in log if start <= t < end]

        before, down, during, up = (window(0, scaled_down), window(scaled_down, adding), window(adding, scaled_up),
                                    window(scaled_up))
        report = "; ".join(f"{name}: {dict(answers([r for _, r in part]))}" for name, part in
                           (("before the delete", before), ("after it", down), ("during the apply", during),
                            ("after the apply", up)))
        assert {"backend/scale-a", "backend/scale-b"} <= {r.answer for _, r in before}, report

        def wrong(part: list[tuple[str, ProbeResult]], live: tuple[str, ...]) -> list[tuple[str, ProbeResult]]:
            """Probes answered by anything but a live endpoint, or refused; and timeouts beyond one in 500
            (CI runs saw 1 of ~3,500 probes time out on a loaded 2-core runner, cause not pinned down:
            the load, or a reused source port meeting the conntrack entry of a connection to the removed
            endpoint, which kube-proxy and kr clear for UDP only). A wrong answer is never tolerated."""
            timeouts = [(src, r) for src, r in part if r.error == "timeout"]
            bad = [(src, r) for src, r in part if r.error != "timeout" and r.answer not in live]
            return bad + (timeouts if len(timeouts) > max(1, len(part) // 500) else [])

        assert wrong(down, ("backend/scale-b",)) == [], report
        assert wrong(during + up, ("backend/scale-b", "backend/scale-c")) == [], report
        for part in (down, up):  # every client kept connecting through both windows
            assert {src for src, _ in part} == set(SOURCES) and len(part) >= 4 * len(SOURCES), report
        assert "backend/scale-c" in {r.answer for _, r in up}, report
        print(report)


def _udp_socket(lab: ProxyLab, source: str, port: int, to: tuple[str, int]) -> socket.socket:
    """A UDP socket in ``source``'s namespace bound to ``port`` and connected to ``to``."""
    def make() -> socket.socket:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind(("0.0.0.0", port))
        sock.connect(to)
        return sock
    return run_in_netns(lab.netns(source), make)


def _ask(sock: socket.socket, timeout: float = 1.0) -> str:
    """Send one datagram, return who answered (or ``!timeout``/``!refused``)."""
    sock.settimeout(timeout)
    try:
        sock.send(b"who\n")
        return sock.recv(65535).decode().split("\n")[0]
    except TimeoutError:
        return "!timeout"
    except ConnectionRefusedError:
        return "!refused"
    except OSError as exc:
        return f"!{exc.strerror}"


def _udp_entries(lab: ProxyLab, node: str, source_port: int) -> str:
    """``node``'s conntrack entries of UDP flows from ``source_port``."""
    return subprocess.run(["ip", "netns", "exec", lab.netns(node), "conntrack", "-L", "-p", "udp",
                           "--orig-port-src", str(source_port)], capture_output=True, text=True, check=False).stdout


def test_udp_flows_move_off_a_removed_endpoint_at_once(lab: ProxyLab) -> None:
    """One UDP flow (a fixed source port) sticks to its endpoint through its conntrack entry; when that
    endpoint goes, kr deletes the entry, so the flow's next datagram reaches another endpoint at once
    (without the deletion it would go to the dead address until the entry times out). And a flow that was
    refused while the service had no endpoint is answered as soon as one exists."""
    port = [("dns", 5353, "UDP")]
    a, b = pod("udp-a", "kube-node2", "px-udp", port), pod("udp-b", "kube-node3", "px-udp", port)
    service = api_service("px-udp", selector={"app": "px-udp"},
                          ports=[{"name": "dns", "port": 53, "targetPort": 5353, "protocol": "UDP"}])
    with lab.objects(service, later=[a, b]):  # the service starts without endpoints
        sock = _udp_socket(lab, "frontend/web-1", 40053, (lab.cluster_ip("px-udp"), 53))
        with sock:
            assert _ask(sock) == "!refused", "no endpoint: refused"
            lab.apply(a, b)
            first = _ask(sock)
            assert first in ("backend/udp-a", "backend/udp-b"), f"the refused flow is not answered: {first}"
            assert Counter(_ask(sock) for _ in range(10)) == Counter({first: 10}), "one flow, one endpoint"
            entries = _udp_entries(lab, "kube-node1", 40053)
            assert f"src={lab.ip(first)} " in entries, ("the flow's conntrack entry is NATed to it", entries)
            lab.delete(a if first == "backend/udp-a" else b)
            other = "backend/udp-b" if first == "backend/udp-a" else "backend/udp-a"
            after = _ask(sock)
            assert after == other, (f"the flow still goes to the removed {first}: {after}",
                                    lab.dataplane("kube-node1"))


def test_named_target_port_resolves_per_pod(lab: ProxyLab) -> None:
    one = pod("named-a", "kube-node2", "px-named", [("web", 8081, "TCP")])
    two = pod("named-b", "kube-node3", "px-named", [("web", 8082, "TCP")])
    service = api_service("px-named", selector={"app": "px-named"},
                          ports=[{"name": "http", "port": 80, "targetPort": "web", "protocol": "TCP"}])
    with lab.objects(one, two, service):
        ip = lab.cluster_ip("px-named")
        results = lab.probes([(src, ip, 80, "TCP") for src in SOURCES for _ in range(12)])
        assert set(answers(results)) == {"backend/named-a", "backend/named-b"}, (answers(results),
                                                                                 lab.dataplane("kube-node1"))
