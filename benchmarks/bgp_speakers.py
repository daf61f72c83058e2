#!/usr/bin/env python
"""Which BGP speaker for ``routing.bgp``: BIRD 2 (driven as Calico drives it) or ExaBGP (embedded).

Builds ``--nodes`` node namespaces on one bridge (``kbgp-XXXX-*``, 192.168.77.0/24), gives node *i* the
pod CIDR 10.77.*i*.0/24, and runs an iBGP full mesh (AS 64512) with one speaker per node:

- **bird**: ``bird`` per namespace with a generated config: the pod CIDR as a static route exported to
  every peer, learned routes exported to the kernel by BIRD itself;
- **exabgp**: ``exabgp`` per namespace with an API process (this file, ``api`` mode) that announces the
  pod CIDR and installs each learned route into its namespace's kernel with pyroute2 (protocol 107, kr's),
  as kr would own the kernel routes with an embedded speaker.

Measures, per speaker: from start to every session Established; from start to every node's kernel
holding every other node's pod CIDR; from announcing one more prefix on node 1 to every other kernel
holding it; the RSS of each node's speaker process and (exabgp) of its API process. Only namespaces this script
creates are touched, always deleted at the end. The findings and the choice: docs/bgp.md. Usage (root;
ExaBGP from PyPI: ``.venv/bin/pip install -e '.[speakers]'``):

    .venv/bin/python benchmarks/bgp_speakers.py [--nodes 3] [--runs 3] [--speakers bird,exabgp]
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

ASN = 64512
SUBNET = "192.168.77"
EXTRA_PREFIX = "10.78.0.0/24"
RTPROT_KR = 107


def node_ip(i: int) -> str:
    return f"{SUBNET}.{10 + i}"


def pod_cidr(i: int) -> str:
    return f"10.77.{i}.0/24"


def sh(*argv: str, check: bool = True) -> str:
    done = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
    if check and done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: {done.stderr.strip()}")
    return done.stdout


def ns_exec(ns: str, *argv: str, check: bool = True) -> str:
    return sh("ip", "netns", "exec", ns, *argv, check=check)


class Cluster:
    """The namespaces: ``<prefix>-hub`` holding the bridge, ``<prefix>-n<i>`` the nodes."""

    def __init__(self, nodes: int) -> None:
        self.prefix = f"kbgp-{secrets.token_hex(2)}"
        self.nodes = [f"{self.prefix}-n{i}" for i in range(1, nodes + 1)]
        self.hub = f"{self.prefix}-hub"

    def __enter__(self) -> Cluster:
        try:
            sh("ip", "netns", "add", self.hub)
            ns_exec(self.hub, "ip", "link", "add", "br0", "type", "bridge")
            ns_exec(self.hub, "ip", "link", "set", "br0", "up")
            for i, ns in enumerate(self.nodes, 1):
                sh("ip", "netns", "add", ns)
                sh("ip", "link", "add", "eth0", "netns", ns, "type", "veth", "peer", "name", f"p{i}", "netns", self.hub)
                ns_exec(self.hub, "ip", "link", "set", f"p{i}", "master", "br0", "up")
                ns_exec(ns, "ip", "addr", "add", f"{node_ip(i)}/24", "dev", "eth0")
                ns_exec(ns, "ip", "link", "set", "eth0", "up")
                ns_exec(ns, "ip", "link", "set", "lo", "up")
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        for ns in [*self.nodes, self.hub]:
            for pid in sh("ip", "netns", "pids", ns, check=False).split():
                sh("kill", "-9", pid, check=False)
            sh("ip", "netns", "del", ns, check=False)

    def has_route(self, ns: str, prefix: str) -> bool:
        """Whether ``ns`` routes ``prefix`` through a next hop (not as unreachable)."""
        return " via " in f" {ns_exec(ns, 'ip', '-4', 'route', 'show', prefix)}"


# ---------------------------------------------------------------- BIRD


def bird_config(i: int, nodes: int, extra: bool) -> str:
    statics = [pod_cidr(i), *([EXTRA_PREFIX] if extra else [])]
    peers = "".join(f"protocol bgp n{j} from mesh {{ neighbor {node_ip(j)} as {ASN}; }}\n"
                    for j in range(1, nodes + 1) if j != i)
    return (f"router id {node_ip(i)};\n"
            "protocol device {}\n"
            "protocol static pods { ipv4; " + "".join(f"route {p} unreachable; " for p in statics) + "}\n"
            "protocol kernel { ipv4 { import none; export where source = RTS_BGP; }; }\n"
            f"template bgp mesh {{ local {node_ip(i)} as {ASN}; hold time 9; connect delay time 1; direct;"
            " ipv4 { import all; export where source = RTS_STATIC; next hop self; }; }\n" + peers)


class Speakers:
    """One speaker process per node, started by ``start``; ``stop`` kills them (and what ``pids`` lists)."""

    def __init__(self, cluster: Cluster, work: Path) -> None:
        self.cluster, self.work = cluster, work
        self.procs: list[subprocess.Popen[bytes]] = []

    def pids(self) -> list[list[int]]:
        return [[p.pid] for p in self.procs]  # ip netns exec execs the speaker: the same pid

    def stop(self) -> None:
        helpers = [pid for pids in self.pids() for pid in pids[1:]]
        for p in self.procs:
            p.kill()
            p.wait()
        for pid in helpers:
            sh("kill", "-9", str(pid), check=False)


class Bird(Speakers):
    name = "bird"

    def start(self) -> None:
        n = len(self.cluster.nodes)
        for i, ns in enumerate(self.cluster.nodes, 1):
            (self.work / f"bird{i}.conf").write_text(bird_config(i, n, extra=False))
            self.procs.append(subprocess.Popen(
                ["ip", "netns", "exec", ns, "bird", "-f", "-c", str(self.work / f"bird{i}.conf"),
                 "-s", str(self.work / f"bird{i}.ctl")], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))

    def established(self) -> bool:
        for i, ns in enumerate(self.cluster.nodes, 1):
            sock = self.work / f"bird{i}.ctl"
            if not sock.exists():
                return False
            out = ns_exec(ns, "birdc", "-s", str(sock), "show", "protocols", check=False)
            if out.count("Established") != len(self.cluster.nodes) - 1:
                return False
        return True

    def announce_extra(self) -> None:
        n = len(self.cluster.nodes)
        (self.work / "bird1.conf").write_text(bird_config(1, n, extra=True))
        ns_exec(self.cluster.nodes[0], "birdc", "-s", str(self.work / "bird1.ctl"), "configure")



# ---------------------------------------------------------------- ExaBGP


def exabgp_config(i: int, nodes: int, api: str) -> str:
    neighbors = "".join(
        f"neighbor {node_ip(j)} {{ router-id {node_ip(i)}; local-address {node_ip(i)}; local-as {ASN}; "
        f"peer-as {ASN}; hold-time 9; family {{ ipv4 unicast; }} "
        "api { processes [ kr ]; receive { parsed; update; } neighbor-changes; } }\n"
        for j in range(1, nodes + 1) if j != i)
    return f"process kr {{ run {api}; encoder json; }}\n{neighbors}"


class ExaBGP(Speakers):
    name = "exabgp"

    def start(self) -> None:
        n = len(self.cluster.nodes)
        exabgp = shutil.which("exabgp", path=str(Path(sys.executable).parent)) or "exabgp"
        for i, ns in enumerate(self.cluster.nodes, 1):
            api = f"{sys.executable} {Path(__file__).resolve()} api {i} {self.work}"
            (self.work / f"exabgp{i}.conf").write_text(exabgp_config(i, n, api))
            env = {**os.environ, "exabgp_daemon_user": "root", "exabgp_api_cli": "false",
                   "exabgp_tcp_bind": node_ip(i), "exabgp_tcp_port": "179"}
            log = open(self.work / f"exabgp{i}.log", "wb")  # noqa: SIM115 (the process keeps it)
            self.procs.append(subprocess.Popen(
                ["ip", "netns", "exec", ns, exabgp, str(self.work / f"exabgp{i}.conf")], env=env,
                stdout=log, stderr=subprocess.STDOUT))

    def established(self) -> bool:
        return all((self.work / f"up{i}").exists() and
                   len((self.work / f"up{i}").read_text().split()) == len(self.cluster.nodes) - 1
                   for i in range(1, len(self.cluster.nodes) + 1))

    def announce_extra(self) -> None:
        (self.work / "announce1").write_text(EXTRA_PREFIX)

    def pids(self) -> list[list[int]]:
        out = []
        for p in self.procs:
            children = sh("pgrep", "-P", str(p.pid), check=False).split()
            out.append([p.pid, *map(int, children)])
        return out


def api_process(i: int, work: Path) -> None:
    """ExaBGP's API process on node ``i``: announce the pod CIDR (and, when asked through the file
    ``announce<i>``, one more prefix), install learned routes with pyroute2, record sessions up."""
    import select

    from pyroute2 import IPRoute

    ipr = IPRoute()
    up: set[str] = set()
    print(f"announce route {pod_cidr(i)} next-hop self", flush=True)
    announce = work / f"announce{i}"
    while True:
        ready, _, _ = select.select([sys.stdin], [], [], 0.01)
        if announce.exists():
            print(f"announce route {announce.read_text().strip()} next-hop self", flush=True)
            announce.unlink()
        if not ready:
            continue
        line = sys.stdin.readline()
        if not line:
            return
        if not line.startswith("{"):  # the acknowledgement of a command ("done")
            continue
        message = json.loads(line)
        if message.get("type") == "state":
            peer = message["neighbor"]["address"]["peer"]
            (up.add if message["neighbor"]["state"] == "up" else up.discard)(peer)
            (work / f"up{i}").write_text(" ".join(sorted(up)))
        elif message.get("type") == "update":
            update = message["neighbor"]["message"].get("update", {})
            for next_hop, routes in update.get("announce", {}).get("ipv4 unicast", {}).items():
                for route in routes:
                    address, length = route["nlri"].split("/")
                    ipr.route("replace", dst=address, dst_len=int(length), gateway=next_hop, proto=RTPROT_KR)


# ---------------------------------------------------------------- measuring


def wait(condition: object, timeout: float = 180.0) -> float:
    started = time.monotonic()
    while not condition():  # type: ignore[operator]
        if time.monotonic() - started > timeout:
            raise TimeoutError("condition not reached")
        time.sleep(0.005)
    return time.monotonic() - started


def rss_kib(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                total += int(line.split()[1])
    return total


def measure(speaker_class: type, nodes: int) -> dict[str, float]:
    """One run: a fresh cluster, the speakers started, the figures (seconds, MiB) taken."""
    with Cluster(nodes) as cluster, tempfile.TemporaryDirectory(prefix="kbgp-", ignore_cleanup_errors=True) as tmp:
        speaker = speaker_class(cluster, Path(tmp))
        started = time.monotonic()
        speaker.start()
        try:
            established = wait(speaker.established)
            wait(lambda: all(cluster.has_route(ns, pod_cidr(j)) for i, ns in enumerate(cluster.nodes, 1)
                             for j in range(1, nodes + 1) if j != i))
            everywhere = time.monotonic() - started
            time.sleep(0.5)
            speaker.announce_extra()
            added = wait(lambda: all(cluster.has_route(ns, EXTRA_PREFIX) for ns in cluster.nodes[1:]))
            pids = speaker.pids()
            daemon = [rss_kib(p[:1]) for p in pids]
            helpers = [rss_kib(p[1:]) for p in pids]
        finally:
            speaker.stop()
    return {"established_s": established, "routes_everywhere_s": everywhere, "new_prefix_s": added,
            "speaker_rss_mib": statistics.mean(daemon) / 1024, "api_process_rss_mib": statistics.mean(helpers) / 1024}


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "api":
        work = Path(sys.argv[3])
        try:
            api_process(int(sys.argv[2]), work)
        except Exception:
            import traceback
            (work / f"api{sys.argv[2]}.err").write_text(traceback.format_exc())
            raise
        return 0
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=3)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--speakers", default="bird,exabgp")
    args = parser.parse_args()
    speakers = {"bird": Bird, "exabgp": ExaBGP}
    for name in args.speakers.split(","):
        runs = [measure(speakers[name], args.nodes) for _ in range(args.runs)]
        summary = {key: [round(r[key], 3) for r in runs] for key in runs[0]}
        print(f"{name}: {json.dumps(summary)}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
