"""Fixtures for running ``kr run`` as a real process against the API stand-in on loopback.

The agent runs with the ``debug.log`` backend recording every sync to a JSON-lines file; tests wait on
that file. Every process and server started here is stopped at teardown, also when a test fails.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from kr_apiserver import APIServer

from kr_lab.kubeconfig import write_kubeconfig

from .objects import seed_cluster

KR = str(Path(sys.executable).with_name("kr"))
MIN_SYNC = 0.2


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class AgentProcess:
    """A ``kr run --plugins debug.log`` process and its record of syncs."""

    def __init__(self, workdir: Path, kubeconfig: Path, extra: list[str], env: dict[str, str] | None = None,
                 node: str | None = "kube-node1") -> None:
        self.record = workdir / "record.jsonl"
        self.log_path = workdir / "agent.log"
        self.fail_file = workdir / "fail-now"
        self.healthz_port = free_port()
        self.metrics_port = free_port()
        args = [KR, "run", "--plugins", "debug.log", *(["--hostname-override", node] if node else []),
                "--kubeconfig", str(kubeconfig), "--debug-record", str(self.record),
                "--debug-fail-while", str(self.fail_file), "--min-sync-period", str(MIN_SYNC),
                "--healthz-bind-address", f"127.0.0.1:{self.healthz_port}",
                "--metrics-bind-address", f"127.0.0.1:{self.metrics_port}", "-v", *extra]
        self._log = open(self.log_path, "w", encoding="utf-8")
        self.proc = subprocess.Popen(args, stdout=self._log, stderr=subprocess.STDOUT,
                                     env={**os.environ, **(env or {})})

    def syncs(self) -> list[dict[str, Any]]:
        if not self.record.exists():
            return []
        text = self.record.read_text(encoding="utf-8")
        complete = text[: text.rfind("\n") + 1]  # the agent may be writing the last line right now
        return [json.loads(line) for line in complete.splitlines() if line.strip()]

    def wait_for(self, predicate: Callable[[dict[str, Any]], bool], timeout: float = 10.0,
                 after: int = 0) -> dict[str, Any]:
        """Return the first recorded sync (from index ``after``) satisfying ``predicate``."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, f"agent exited with {self.proc.returncode}:\n{self.log()}"
            for sync in self.syncs()[after:]:
                if predicate(sync):
                    return sync
            time.sleep(0.05)
        raise AssertionError(f"no sync matched within {timeout}s; log:\n{self.log()[-4000:]}")

    def log(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def http(self, port: int, path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()

    def healthz(self) -> int:
        try:
            return self.http(self.healthz_port, "/healthz")[0]
        except OSError:
            return 0

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return self.proc.returncode


def services_in(sync: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Service ports of a recorded desired state, by key."""
    return {f"{s['namespace']}/{s['name']}/{s['port_name']}": s for s in sync["desired"]["services"]}


@pytest.fixture
def apiserver() -> Iterator[APIServer]:
    with APIServer("127.0.0.1", 0, history=200, bookmark_interval=0.5) as server:
        for obj in seed_cluster():
            server.store.apply(obj)
        yield server


@pytest.fixture
def kubeconfig(apiserver: APIServer, tmp_path: Path) -> Path:
    return write_kubeconfig(apiserver.url, tmp_path / "kubeconfig")


@pytest.fixture
def start_agent(tmp_path: Path, kubeconfig: Path) -> Iterator[Callable[..., AgentProcess]]:
    agents: list[AgentProcess] = []

    def start(*extra: str, env: dict[str, str] | None = None, node: str | None = "kube-node1",
              config: Path | None = None) -> AgentProcess:
        workdir = tmp_path / f"agent{len(agents)}"
        workdir.mkdir()
        agent = AgentProcess(workdir, config or kubeconfig, list(extra), env, node)
        agents.append(agent)
        return agent

    yield start
    for agent in agents:
        agent.stop()
