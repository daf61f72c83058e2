"""nsenter: only the calling thread moves, it always comes back, and errors cross threads intact."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator

import pytest
from conftest import fresh_lab_id

from kr_lab import netns, topology
from kr_lab.nsenter import netns as enter, run_in_netns


def _ns_inode(path: str = "/proc/thread-self/ns/net") -> int:
    return os.stat(path).st_ino


@pytest.fixture
def scratch_ns() -> Iterator[str]:
    lab_id = fresh_lab_id()
    name = f"{topology.lab_prefix(lab_id)}scratch"
    try:
        netns.create(name)
        yield name
    finally:
        topology.teardown(lab_id)


def test_context_manager_enters_and_restores_the_calling_thread(scratch_ns: str) -> None:
    home = _ns_inode()
    with enter(scratch_ns):
        assert _ns_inode() == _ns_inode(f"/run/netns/{scratch_ns}") != home
    assert _ns_inode() == home


def test_other_threads_stay_where_they_are(scratch_ns: str) -> None:
    home = _ns_inode()
    inside, release = threading.Event(), threading.Event()

    def worker() -> None:
        with enter(scratch_ns):
            inside.set()
            release.wait(5)

    thread = threading.Thread(target=worker)
    thread.start()
    try:
        assert inside.wait(5)
        assert _ns_inode() == home
    finally:
        release.set()
        thread.join()


def test_context_manager_restores_after_an_exception(scratch_ns: str) -> None:
    home = _ns_inode()
    with pytest.raises(KeyError):
        with enter(scratch_ns):
            raise KeyError("inside")
    assert _ns_inode() == home


def test_run_in_netns_returns_and_leaves_the_caller_alone(scratch_ns: str) -> None:
    home = _ns_inode()
    assert run_in_netns(scratch_ns, _ns_inode) == _ns_inode(f"/run/netns/{scratch_ns}")
    assert _ns_inode() == home


def test_run_in_netns_reraises_the_inner_exception(scratch_ns: str) -> None:
    def boom(value: int) -> None:
        raise ValueError(f"inner {value}")

    with pytest.raises(ValueError, match="inner 7"):
        run_in_netns(scratch_ns, boom, 7)


def test_sockets_made_inside_stay_inside(scratch_ns: str) -> None:
    import socket

    def listener() -> socket.socket:
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        return sock

    with run_in_netns(scratch_ns, listener) as sock:
        port = sock.getsockname()[1]
        with socket.socket() as outside:  # the root namespace's loopback has no such listener
            assert outside.connect_ex(("127.0.0.1", port)) != 0
        with run_in_netns(scratch_ns, socket.create_connection, ("127.0.0.1", port), 1):
            pass


def test_a_missing_namespace_raises_and_creates_nothing() -> None:
    name = f"{topology.lab_prefix(fresh_lab_id())}missing"
    with pytest.raises(FileNotFoundError):
        run_in_netns(name, lambda: None)
    assert not os.path.exists(f"/run/netns/{name}")
