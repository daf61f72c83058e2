"""Network namespaces and links, driven through iproute2 (``ip``) subprocesses.

Why ``ip`` rather than pyroute2: the lab must create, find and delete namespaces from processes that may
not share any state (``kr lab down`` after a crash), and ``ip netns`` is the convention every other tool
(``ip netns exec``, ``ip netns pids``, a human debugging) understands: ``/run/netns/NAME`` plus
``/etc/netns/NAME``. ``ip -n NS -batch -`` runs many commands in one namespace with one process, which
keeps a build at a few milliseconds per namespace, and pyroute2 keeps netlink sockets per thread, which
would tie this module to ``nsenter``'s threads for no gain.

Invariants:
- nothing here touches the root namespace: links are made with ``ip -n A link add ... peer ... netns B``,
  so both ends are born in their lab namespaces and a name never exists in the root namespace, not even
  for a moment (two labs may use the same interface names at once);
- every namespace made by ``create`` has ``/etc/netns/NAME/{resolv.conf,hosts}`` with only localhost in
  them, so ``ip netns exec`` never lets a lab process resolve names outward, and ``lo`` is up;
- ``delete`` removes the namespace and its ``/etc/netns`` directory, and works for either half alone;
- ``kill_all`` never signals the calling process.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterable, Mapping, Sequence

from kr_lab.nsenter import NETNS_RUN_DIR, netns_path
from kr_lab.state import LabError

NETNS_ETC_DIR = "/etc/netns"
RESOLV_CONF = "# kr lab: no resolver; names never leave the namespace\nnameserver 127.0.0.1\noptions timeout:1 attempts:1\n"
HOSTS = "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n"


class IPError(LabError):
    """An ``ip`` (or ``ip netns exec``) command failed; the message carries the command and its stderr."""


def _run(argv: Sequence[str], stdin: str | None = None) -> str:
    proc = subprocess.run(argv, input=stdin, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise IPError(f"{' '.join(argv)}: {proc.stderr.strip() or f'exit {proc.returncode}'}"
                      + (f"\n--- input ---\n{stdin}" if stdin else ""))
    return proc.stdout


def ip(*args: str, netns: str | None = None) -> str:
    """Run one ``ip`` command (inside ``netns`` when given) and return its stdout."""
    return _run(["ip", *(("-n", netns) if netns else ()), *args])


def ip_batch(lines: Iterable[str], netns: str | None = None) -> None:
    """Run many ``ip`` commands (one per line, without the leading ``ip``) in one process, stopping at the first error."""
    text = "".join(f"{line}\n" for line in lines)
    if text:
        _run(["ip", *(("-n", netns) if netns else ()), "-batch", "-"], stdin=text)


def create(name: str) -> None:
    """Create namespace ``name`` with its localhost-only ``/etc/netns`` files and ``lo`` up."""
    ip("netns", "add", name)
    etc = _etc_dir(name)
    for attempt in range(3):  # a concurrent delete() may remove an empty /etc/netns between makedirs' steps
        try:
            os.makedirs(etc, exist_ok=True)
            break
        except FileNotFoundError:
            if attempt == 2:
                raise
    with open(os.path.join(etc, "resolv.conf"), "w", encoding="ascii") as f:
        f.write(RESOLV_CONF)
    with open(os.path.join(etc, "hosts"), "w", encoding="ascii") as f:
        f.write(HOSTS)
    ip("link", "set", "lo", "up", netns=name)


def add_veth(netns: str, name: str, peer_netns: str, peer_name: str, mtu: int | None = None) -> None:
    """Create veth ``name`` in ``netns`` whose peer ``peer_name`` is born directly in ``peer_netns``."""
    mtu_args = ["mtu", str(mtu)] if mtu else []
    ip("link", "add", name, *mtu_args, "type", "veth", "peer", "name", peer_name, *mtu_args,
       "netns", peer_netns, netns=netns)


def set_sysctls(name: str, values: Mapping[str, str | int]) -> None:
    """Set sysctls (``net.ipv4.ip_forward`` style keys) inside namespace ``name`` only."""
    if values:
        _run(["ip", "netns", "exec", name, "sysctl", "-qw", *(f"{key}={value}" for key, value in values.items())])


def sysctl(name: str, key: str) -> str:
    """Read one sysctl as namespace ``name`` sees it."""
    return _run(["ip", "netns", "exec", name, "sysctl", "-n", key]).strip()


def list_namespaces(prefix: str) -> list[str]:
    """Names starting with ``prefix`` that have a namespace or an ``/etc/netns`` directory (or both)."""
    names: set[str] = set()
    for directory in (NETNS_RUN_DIR, NETNS_ETC_DIR):
        try:
            names.update(n for n in os.listdir(directory) if n.startswith(prefix))
        except FileNotFoundError:
            pass
    return sorted(names)


def pids(names: Iterable[str]) -> dict[str, list[int]]:
    """The processes whose network namespace is one of ``names`` (as ``ip netns pids`` finds them), by name."""
    by_inode: dict[tuple[int, int], str] = {}
    for name in names:
        try:
            st = os.stat(netns_path(name))
        except FileNotFoundError:
            continue
        by_inode[(st.st_dev, st.st_ino)] = name
    found: dict[str, list[int]] = {name: [] for name in by_inode.values()}
    if not by_inode:
        return found
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            st = os.stat(f"/proc/{entry}/ns/net")
        except OSError:  # gone, or a zombie that has already left its namespaces
            continue
        name = by_inode.get((st.st_dev, st.st_ino))
        if name is not None:
            found[name].append(int(entry))
    return found


def kill_all(names: Iterable[str], grace: float = 1.0) -> list[int]:
    """SIGTERM every process in namespaces ``names``, SIGKILL what is left after ``grace`` seconds; return the pids."""
    names = list(names)
    targets = _pids_of(names)
    _signal(targets, signal.SIGTERM)
    deadline = time.monotonic() + grace
    alive = targets
    while alive and time.monotonic() < deadline:
        time.sleep(0.01)
        alive = _pids_of(names)
    _signal(alive, signal.SIGKILL)
    return sorted(set(targets) | set(alive))


def delete(names: Iterable[str]) -> None:
    """Delete namespaces and their ``/etc/netns`` directories; missing halves are fine, what stays raises."""
    names = list(names)
    failure = ""
    present = [n for n in names if os.path.exists(netns_path(n))]
    if present:
        try:
            _run(["ip", "-force", "-batch", "-"], stdin="".join(f"netns del {n}\n" for n in present))
        except IPError as exc:  # -force went on past it; what matters is checked below
            failure = str(exc)
    for name in names:
        shutil.rmtree(_etc_dir(name), ignore_errors=True)
    still = [n for n in names if os.path.exists(netns_path(n))]
    if still:
        raise IPError(f"namespaces left after delete: {', '.join(still)}; {failure}")


def _etc_dir(name: str) -> str:
    return os.path.join(NETNS_ETC_DIR, os.path.basename(netns_path(name)))


def _pids_of(names: list[str]) -> list[int]:
    me = os.getpid()
    return sorted(pid for found in pids(names).values() for pid in found if pid != me)


def _signal(targets: Iterable[int], sig: signal.Signals) -> None:
    for pid in targets:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass
