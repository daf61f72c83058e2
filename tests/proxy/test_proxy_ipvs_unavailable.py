"""proxy.ipvs on a kernel without IPVS (this machine's): a plain error naming what is missing and the
alternative, raised when the backend starts, so the agent leaves it out and serves everything else."""

from __future__ import annotations

import secrets
from pathlib import Path

import pytest

from kr_core.backends import BackendContext
from kr_core.config import AgentConfig
from kr_core.errors import KrError
from kr_lab import netns
from kr_lab.nsenter import run_in_netns
from kr_plugins.kernel.ipvs import IpvsUnavailable
from kr_plugins.proxy.ipvs import IpvsProxy

HAS_IPVS = Path("/proc/net/ip_vs").exists() or Path("/sys/module/ip_vs").exists()


@pytest.mark.skipif(HAS_IPVS, reason="this kernel has IPVS; the guest tests cover proxy.ipvs there")
def test_start_without_ipvs_says_what_is_missing_and_what_to_use() -> None:
    name = f"krpxi-{secrets.token_hex(3)}"
    netns.create(name)
    try:
        backend = IpvsProxy(BackendContext(AgentConfig(node_name="n", plugins=("proxy.ipvs",), options={}), lambda: None))
        with pytest.raises(KrError) as raised:
            run_in_netns(name, backend.start)
        assert isinstance(raised.value, IpvsUnavailable)
        message = str(raised.value)
        assert "no IPVS" in message and "proxy.iptables" in message
        links = netns.ip("-o", "link", "show", netns=name)
        assert "kr-ipvs0" not in links, "nothing is created when IPVS is missing"
    finally:
        netns.delete([name])
