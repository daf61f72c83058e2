"""Fixtures for the lab datapath tests: labs with random ids that are always torn down.

Every lab a test builds is registered before its first namespace exists and torn down in a ``finally``,
so a failing test leaves nothing behind; a session fixture then checks that the lab tests left no
namespace and did not change the root namespace's links, addresses, routes or forwarding sysctls.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import secrets
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from kr_lab import topology
from kr_lab.spec import LabSpec, load_spec_document, parse_spec

_MADE: set[str] = set()  # every lab id any test of the session built


@dataclasses.dataclass(frozen=True)
class Lab:
    id: str
    spec: LabSpec
    pod_ips: dict[str, ipaddress.IPv4Address]  # by "namespace/name"
    log_dir: Path

    def pod_ns(self, key: str) -> str:
        namespace, name = key.split("/")
        return topology.pod_ns(self.id, namespace, name)

    def host_ns(self, name: str) -> str:
        return topology.host_ns(self.id, name)

    def ip(self, key: str) -> str:
        return str(self.pod_ips[key])

    def log(self, key: str) -> Path:
        return self.log_dir / f"{self.id}-{key.replace('/', '-')}.log"


LabFactory = Callable[..., Lab]


def pod_ips(spec: LabSpec) -> dict[str, ipaddress.IPv4Address]:
    """What the lab assigns: per node the gateway is .1 and pods get .2 upward in spec order."""
    used: dict[str, int] = {}
    ips = {}
    for pod in spec.pods:
        node = spec.host(pod.node)
        assert node.pod_cidr is not None
        used[node.name] = used.get(node.name, 1) + 1
        ips[pod.key] = node.pod_cidr.network_address + used[node.name]
    return ips


def fresh_lab_id() -> str:
    taken = set(topology.list_labs()) | _MADE
    while (lab_id := secrets.token_hex(2)) in taken:
        pass
    _MADE.add(lab_id)
    return lab_id


@contextmanager
def lab_factory(log_dir: Path) -> Iterator[LabFactory]:
    made: list[str] = []

    def make(spec: LabSpec | None = None, pods: bool = True) -> Lab:
        spec = spec or parse_spec(load_spec_document(None))
        lab_id = fresh_lab_id()
        made.append(lab_id)
        topology.build_network(lab_id, spec)
        ips = pod_ips(spec)
        if pods:
            for pod in spec.pods:
                topology.add_pod(lab_id, spec, pod, ips[pod.key], log_dir / f"{lab_id}-{pod.namespace}-{pod.name}.log")
        return Lab(lab_id, spec, ips, log_dir)

    try:
        yield make
    finally:
        for lab_id in made:
            topology.teardown(lab_id)


@pytest.fixture
def new_lab(tmp_path: Path) -> Iterator[LabFactory]:
    """Build labs (default spec unless given); all of them are torn down after the test."""
    with lab_factory(tmp_path) as make:
        yield make


@pytest.fixture(scope="module")
def default_lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    """The default spec's lab with all its pods, shared by a module's read-only tests."""
    with lab_factory(tmp_path_factory.mktemp("lab")) as make:
        yield make()


@pytest.fixture(scope="session", autouse=True)
def no_lab_left_behind() -> Iterator[None]:
    yield
    leftovers = [lab_id for lab_id in topology.list_labs() if lab_id in _MADE]
    for lab_id in leftovers:
        topology.teardown(lab_id)
    assert not leftovers, f"labs left behind: {leftovers}"
