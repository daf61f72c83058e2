"""kr's BIRD daemon on one node: started once, reconfigured in place, left running across kr restarts.

``BirdDaemon(run_dir)`` keeps ``bird.conf``, the control socket ``bird.ctl`` and ``bird.pid`` in
``run_dir`` (one per node: nodes sharing a file system, as in the lab, never share a BIRD).
``apply(config)`` checks the text with ``bird -p``, writes it atomically, and then starts BIRD (a daemon
in kr's network namespace) if none answers on the socket, or has it re-read the file (``birdc
configure``: BIRD's soft reconfiguration keeps sessions whose settings did not change). ``stop()`` asks
BIRD to shut down; ``sessions()`` and ``routes()`` read it for inspection (``kr bgp``), through the pure
parsers of ``birdc``'s output.

Invariants: a configuration BIRD rejects is never written over the running one (the error names the
line); kr's restarts leave BIRD and its sessions alone (the daemon is not kr's child); a missing ``bird``
is reported as such, with the package to install; so is a BGP port another program already listens on
(BIRD would start but take no session from its peers).
"""

from __future__ import annotations

import os
from collections.abc import Callable
import re
import shutil
import time
from pathlib import Path

from kr_plugins.kernel.command import CommandError, run, run_unchecked
from kr_plugins.routing.speaker import BgpRoute, BgpSession, SpeakerError

STARTUP_TIMEOUT = 10.0


class BirdError(SpeakerError):
    """BIRD is missing, refused its configuration or does not answer."""


_ROUTE_COUNTS = re.compile(r"(\d+) imported, (\d+) exported")


def parse_sessions(text: str) -> list[BgpSession]:
    """The BGP protocols in ``birdc show protocols all`` output."""
    sessions: list[BgpSession] = []
    fields: dict[str, str] = {}
    header: list[str] = []

    def flush() -> None:
        if len(header) >= 5 and header[1] == "BGP":
            description = fields.get("Description", "")
            counts = _ROUTE_COUNTS.match(fields.get("Routes", ""))
            sessions.append(BgpSession(
                protocol=header[0], peer=description.removeprefix("node ") or header[0],
                address=fields.get("Neighbor address", ""), asn=fields.get("Neighbor AS", ""),
                state=fields.get("BGP state", header[3]), since=header[4], info=" ".join(header[5:]),
                imported=int(counts.group(1)) if counts else 0, exported=int(counts.group(2)) if counts else 0))

    for line in text.splitlines():
        if line and not line[0].isspace():
            flush()
            header, fields = line.split(), {}
        elif ":" in line:
            key, _, value = line.strip().partition(":")
            fields.setdefault(key, value.strip())
    flush()
    return sessions


def parse_routes(text: str) -> list[BgpRoute]:
    """The routes in ``birdc show route`` output (a route's ``via`` is on the line after it)."""
    routes: list[BgpRoute] = []
    for line in text.splitlines():
        words = line.split()
        if line.startswith("\t") and words[:1] == ["via"] and routes:
            last = routes[-1]
            routes[-1] = BgpRoute(last.prefix, words[1], last.source, last.best)
        elif len(words) >= 3 and "/" in words[0] and words[2].startswith("["):
            routes.append(BgpRoute(words[0], words[1], words[2].lstrip("["), "*" in words[3:5]))
    return routes


def listening_ports(proc_net_tcp: str) -> set[int]:
    """The local ports in LISTEN state in ``/proc/net/tcp`` (or ``tcp6``) text."""
    ports = set()
    for line in proc_net_tcp.splitlines()[1:]:
        words = line.split()
        if len(words) > 3 and words[3] == "0A":  # TCP_LISTEN
            ports.add(int(words[1].rsplit(":", 1)[1], 16))
    return ports


def port_listened(port: int) -> bool:
    """Whether something listens on TCP ``port`` in this network namespace (any address, v4 or v6)."""
    found: set[int] = set()
    for table in ("/proc/thread-self/net/tcp", "/proc/thread-self/net/tcp6"):  # this thread's namespace
        try:
            found |= listening_ports(Path(table).read_text())
        except FileNotFoundError:  # no IPv6 in this kernel
            continue
    return port in found


class BirdDaemon:
    def __init__(self, run_dir: Path, port: int = 179) -> None:
        self.port = port
        self.run_dir = run_dir
        self.config = run_dir / "bird.conf"
        self.socket = run_dir / "bird.ctl"
        self.pid_file = run_dir / "bird.pid"

    @staticmethod
    def check_installed() -> None:
        for tool in ("bird", "birdc"):
            if shutil.which(tool) is None:
                raise BirdError(f"{tool} not found: install BIRD 2 (Debian: bird2; scripts/setup.sh does)")

    def running(self) -> bool:
        """Whether a BIRD answers on this node's control socket."""
        if not self.socket.exists():
            return False
        done = run_unchecked(["birdc", "-s", str(self.socket), "show", "status"], timeout=5)
        return done.returncode == 0 and "Daemon is up and running" in done.stdout

    def apply(self, config: str, recover: Callable[[], bool] = lambda: False) -> bool:
        """Run BIRD with ``config``; returns whether anything was (re)started or reconfigured. ``recover`` is
        asked only when BIRD is to be started: if it says so, BIRD does graceful-restart recovery
        (``bird -R``), keeping the kernel routes a previous BIRD left until its peers have sent their
        routes again (or ``graceful restart wait`` ran out)."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        alive = self.running()
        if alive and self.config.exists() and self.config.read_text() == config:
            return False
        candidate = self.run_dir / "bird.conf.new"
        candidate.write_text(config)
        try:
            run(["bird", "-p", "-c", str(candidate)])
        except CommandError as exc:
            candidate.unlink(missing_ok=True)
            raise BirdError(f"BIRD refused kr's configuration (kept the running one): {exc}") from None
        os.replace(candidate, self.config)
        if alive:
            out = run(["birdc", "-s", str(self.socket), "configure"])
            if "Reconfigured" not in out and "Reconfiguration in progress" not in out:
                raise BirdError(f"birdc configure: {out.strip()}")
        else:
            self._start(recover())
        return True

    def _start(self, recover: bool) -> None:
        if port_listened(self.port):
            raise BirdError(f"TCP port {self.port} is already taken in this network namespace (another BGP "
                            "daemon, Calico's BIRD say?): kr's BIRD could not take sessions from its peers; "
                            "stop that daemon, or give kr another --bgp-port")
        self.socket.unlink(missing_ok=True)  # a stale socket of a BIRD that died
        run(["bird", "-c", str(self.config), "-s", str(self.socket), "-P", str(self.pid_file), *(["-R"] if recover else [])])
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while not self.running():
            if time.monotonic() > deadline:
                raise BirdError(f"BIRD did not answer on {self.socket} within {STARTUP_TIMEOUT:.0f} s")
            time.sleep(0.05)

    def sessions(self) -> list[BgpSession]:
        """BIRD's BGP sessions."""
        return parse_sessions(run(["birdc", "-s", str(self.socket), "show", "protocols", "all"]))

    def routes(self) -> list[BgpRoute]:
        """The routes in BIRD's table that BGP concerns: this node's announcements and what the peers sent
        (not the kernel's own routes and the node's subnet, which BIRD holds only to resolve next hops)."""
        return parse_routes(run(["birdc", "-s", str(self.socket), "show", "route", "where",
                                 "source = RTS_BGP || source = RTS_STATIC"]))

    def stop(self) -> None:
        """Shut BIRD down (its kernel routes stay: ``persist``) and remove its files."""
        if self.running():
            run_unchecked(["birdc", "-s", str(self.socket), "down"], timeout=10)
            deadline = time.monotonic() + STARTUP_TIMEOUT
            while self.socket.exists() and self.running() and time.monotonic() < deadline:
                time.sleep(0.05)
        shutil.rmtree(self.run_dir, ignore_errors=True)
