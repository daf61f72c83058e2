"""What the ``routing.bgp`` lab tests share: a handle on a running lab that reads its nodes' BGP state.

``BgpLab(state)`` runs commands in a node's namespace (``sh``), reads the routes BIRD installed there
(``bgp_routes``: ``proto bird`` with kr's metric 107 and a next hop), BIRD's pid and ``birdc`` answers,
counts Established sessions, and probes every pod from every pod (``unreachable_pairs``). ``wait_for``
polls a condition. Read-only: nothing here changes the lab.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from kr_lab.lab import Lab
from kr_lab.probe import probe_matrix
from kr_lab.state import StateDir

KR = str(Path(sys.executable).with_name("kr"))
PLUGINS = "routing.bgp,debug.log"


class BgpLab:
    def __init__(self, state: Path) -> None:
        self.state = state
        self.lab = Lab(StateDir(state))

    def sh(self, node: str, *argv: str, check: bool = True) -> str:
        done = subprocess.run(["ip", "netns", "exec", self.lab.netns_of(node), *argv], capture_output=True,
                              text=True, timeout=30, check=False)
        assert done.returncode == 0 or not check, f"{' '.join(argv)} on {node}: {done.stderr}"
        return done.stdout

    def bgp_routes(self, node: str) -> set[str]:
        return {line.split()[0] for line in self.sh(node, "ip", "-4", "route", "show", "proto", "bird").splitlines()
                if "metric 107" in line and " via " in line}

    def bird_pid(self, node: str) -> str:
        """The pid of the node's BIRD ("" while there is no pid file, as when it is being started again)."""
        try:
            return (self.state / "bgp" / node / "bird.pid").read_text().strip()
        except FileNotFoundError:
            return ""

    def birdc(self, node: str, *args: str) -> str:
        """birdc's answer ("" while BIRD does not answer, as when it is being started again)."""
        return self.sh(node, "birdc", "-s", str(self.state / "bgp" / node / "bird.ctl"), *args, check=False)

    def established(self, node: str) -> int:
        return self.birdc(node, "show", "protocols").count("Established")

    def unreachable_pairs(self) -> list[tuple[str, str, str | None]]:
        """Every pod to every pod on its first port: the pairs that failed."""
        pods = self.lab.state.pods
        pairs = [(s, t) for s in sorted(pods) for t in sorted(pods)]
        results = probe_matrix([(pods[s].netns, pods[t].ip, int(pods[t].ports[0][1]), str(pods[t].ports[0][2]))
                                for s, t in pairs], timeout=2.0)
        return [(s, t, r.error) for (s, t), r in zip(pairs, results) if not r.ok]


def wait_for(condition: Callable[[], bool], timeout: float = 30.0, interval: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(interval)
    return condition()
