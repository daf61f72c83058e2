"""Run Python code inside a named network namespace, one thread at a time.

``netns(name)`` moves the *calling thread* into ``/run/netns/NAME`` with libc ``setns(2)`` (Python 3.11
has no ``os.setns``) and moves it back on exit; ``run_in_netns`` does the same in a fresh thread and hands
back the result or the exception. Sockets opened inside stay in that namespace for their whole life, so a
thread may open one inside and use it anywhere.

Invariants:
- only the calling thread changes namespace: network namespaces are per thread in Linux, and every other
  thread of the process (the main thread above all) is untouched; a thread *started* inside the block
  inherits the namespace, as Linux threads do;
- on leaving ``netns`` the thread is back in the namespace it had on entry (kept as an fd of
  ``/proc/thread-self/ns/net``); if that ever fails the error is raised, never swallowed;
- a name is looked up only under ``/run/netns``; a missing one raises ``FileNotFoundError`` and never
  creates anything.
"""

from __future__ import annotations

import ctypes
import os
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

CLONE_NEWNET = 0x40000000
NETNS_RUN_DIR = "/run/netns"

_libc = ctypes.CDLL(None, use_errno=True)
T = TypeVar("T")


def _setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns(CLONE_NEWNET): {os.strerror(err)}")


def netns_path(name: str) -> str:
    """The bind-mounted namespace file ``ip netns`` keeps for ``name``."""
    if not name or "/" in name or name in (".", ".."):
        raise ValueError(f"not a network namespace name: {name!r}")
    return os.path.join(NETNS_RUN_DIR, name)


@contextmanager
def netns(name: str) -> Iterator[None]:
    """Run the body with the calling thread inside network namespace ``name``."""
    original = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        target = os.open(netns_path(name), os.O_RDONLY | os.O_CLOEXEC)
        try:
            _setns(target)
        finally:
            os.close(target)
        try:
            yield
        finally:
            _setns(original)
    finally:
        os.close(original)


def run_in_netns(name: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Call ``fn(*args, **kwargs)`` in a new thread inside namespace ``name``; return or re-raise its outcome."""
    outcome: dict[str, Any] = {}

    def target() -> None:
        try:
            with netns(name):
                outcome["result"] = fn(*args, **kwargs)
        except BaseException as exc:  # handed to the caller's thread below
            outcome["error"] = exc

    thread = threading.Thread(target=target, name=f"netns:{name}", daemon=True)
    thread.start()
    thread.join()
    if "error" in outcome:
        raise outcome["error"]
    return outcome["result"]
