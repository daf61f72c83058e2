"""A lab's state directory: what ``kr lab`` commands share between invocations.

Layout of ``--state DIR``::

    lab.json      the lab id, spec, plugins, API URL, hosts and pods (with their IPs and namespaces)
    spec.yaml     the spec the lab was built from
    kubeconfig    for the agents and for operators (the API listens inside the master namespace)
    logs/         master.log, agent-<node>.log, pod-<namespace>-<name>.log
    master.port   written by the master process once it listens
    bgp/          routing.bgp's ``--bgp-run-dir``: a directory per node (BIRD's configuration and socket)

``lab.json``'s spec is the lab as it is now: a node added to the running lab (``kr lab node add``) is
in it, and one removed is not; ``spec.yaml`` stays what ``kr lab up`` was given.

Invariants: ``lab.json`` is written atomically (write then rename) and first of all, before anything is
built, so ``kr lab down`` can always find the lab id and remove a half-built lab; mutating commands hold
an exclusive lock on ``DIR/.lock`` so two commands never allocate the same pod IP.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from kr_core.errors import KrError


class LabError(KrError):
    """A lab command that cannot be carried out; the message says why."""


@dataclasses.dataclass(slots=True)
class PodRecord:
    namespace: str
    name: str
    node: str
    ip: str
    netns: str
    ports: list[list[Any]] = dataclasses.field(default_factory=list)  # [name, port, protocol]

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"


@dataclasses.dataclass(slots=True)
class HostRecord:
    name: str
    role: str
    ip: str
    netns: str
    pod_cidr: str | None = None


@dataclasses.dataclass(slots=True)
class LabState:
    lab_id: str
    spec: dict[str, Any]
    plugins: list[str]
    agent_args: list[str] = dataclasses.field(default_factory=list)
    api_url: str = ""
    status: str = "building"
    hosts: dict[str, HostRecord] = dataclasses.field(default_factory=dict)
    pods: dict[str, PodRecord] = dataclasses.field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> LabState:
        return cls(
            lab_id=data["lab_id"], spec=data["spec"], plugins=data["plugins"], agent_args=data.get("agent_args", []),
            api_url=data.get("api_url", ""), status=data.get("status", "building"),
            hosts={k: HostRecord(**v) for k, v in data.get("hosts", {}).items()},
            pods={k: PodRecord(**v) for k, v in data.get("pods", {}).items()},
        )


class StateDir:
    """The files of one lab."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path).resolve()

    @property
    def state_file(self) -> Path:
        return self.path / "lab.json"

    @property
    def kubeconfig(self) -> Path:
        return self.path / "kubeconfig"

    @property
    def logs(self) -> Path:
        return self.path / "logs"

    @property
    def master_port_file(self) -> Path:
        return self.path / "master.port"

    @property
    def bgp_run_dir(self) -> Path:
        return self.path / "bgp"

    def exists(self) -> bool:
        return self.state_file.exists()

    def check_free(self) -> None:
        """Refuse a directory that holds a lab already, or files that are not a lab's."""
        if self.exists():
            raise LabError(f"a lab already lives in {self.path}; run `kr lab down --state {self.path}` first")
        if self.path.exists() and any(self.path.iterdir()):
            raise LabError(f"{self.path} is not empty; give --state a new or empty directory for the lab")

    def remove(self) -> None:
        """Delete the files the lab made (nothing else), then the directory if it is empty."""
        for name in ("lab.json", "lab.tmp", "spec.yaml", "kubeconfig", "master.port", "master.port.tmp", ".lock"):
            (self.path / name).unlink(missing_ok=True)
        for directory in (self.logs, self.bgp_run_dir):
            if directory.exists():
                shutil.rmtree(directory)
        try:
            self.path.rmdir()
        except OSError:
            pass  # something else lives there too: leave it

    def load(self) -> LabState:
        if not self.state_file.exists():
            raise LabError(f"no lab in {self.path} (no lab.json); start one with `kr lab up --state {self.path}`")
        try:
            return LabState.from_json(json.loads(self.state_file.read_text(encoding="utf-8")))
        except (ValueError, KeyError, TypeError) as exc:
            raise LabError(f"{self.state_file} is unreadable: {exc}") from exc

    def save(self, state: LabState) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        temporary = self.state_file.with_suffix(".tmp")
        temporary.write_text(json.dumps(state.to_json(), indent=2, sort_keys=True), encoding="utf-8")
        os.replace(temporary, self.state_file)

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        self.path.mkdir(parents=True, exist_ok=True)
        with open(self.path / ".lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)
