"""Suite-wide guard: the tests work only inside namespaces they create.

The root network namespace's links, addresses, routes, rules, forwarding sysctls, iptables rules (both
flavours), nftables ruleset and ipsets must be exactly as they were before the suite ran.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Iterator

import pytest

_COUNTERS = re.compile(r"\[\d+:\d+\]")


def _run(*argv: str) -> str:
    if shutil.which(argv[0]) is None:
        return f"({argv[0]} not installed)"
    result = subprocess.run(argv, capture_output=True, text=True)
    return result.stdout + result.stderr


def _iptables(save: str) -> str:
    """The ruleset without comments and packet counters (root's own traffic moves them)."""
    lines = _run(save).splitlines()
    return "\n".join(_COUNTERS.sub("", line) for line in lines if not line.startswith("#"))


def root_namespace_state() -> dict[str, str]:
    return {
        "links": _run("ip", "-br", "link"), "addrs": _run("ip", "-br", "addr"),
        "routes": _run("ip", "route", "show", "table", "all"), "rules": _run("ip", "rule"),
        "sysctls": _run("sysctl", "net.ipv4.ip_forward", "net.ipv4.conf.all.rp_filter"),
        "iptables-nft": _iptables("iptables-nft-save"), "iptables-legacy": _iptables("iptables-legacy-save"),
        "nft": re.sub(r"packets \d+ bytes \d+", "", _run("nft", "list", "ruleset")),
        "ipset": _run("ipset", "list", "-n"),
    }


@pytest.fixture(scope="session", autouse=True)
def root_namespace_untouched() -> Iterator[None]:
    before = root_namespace_state()
    yield
    after = root_namespace_state()
    changed = [key for key in before if before[key] != after[key]]
    assert not changed, f"the root namespace changed: {changed}"
