"""Options and settings shared by every service proxy backend (``--masquerade-all``, ``--cluster-cidr``, ...)."""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from typing import Any

import click

from kr_core.config import OptionRegistry
from kr_core.errors import KrError
from kr_plugins.proxy.rules import ProxySettings

GROUP = "proxy backends"


class ProxyError(KrError):
    """The service proxy could not be configured or programmed."""


def proxy_settings(options: Mapping[str, Any]) -> ProxySettings:
    """The backend's settings from parsed options (their Python names), defaulting what is absent."""
    addresses = options.get("nodeport_addresses") or ""
    try:
        return ProxySettings(
            masquerade_all=bool(options.get("masquerade_all", False)),
            cluster_cidr=options.get("cluster_cidr") or None,
            nodeport_addresses=tuple(str(ipaddress.ip_network(c.strip(), strict=False))
                                     for c in addresses.split(",") if c.strip()),
            masquerade_mark=1 << int(options.get("iptables_masquerade_bit", 14)),
        )
    except ValueError as exc:
        raise ProxyError(f"proxy options: {exc}") from None


def add_proxy_options(options: OptionRegistry) -> None:
    """The options every proxy backend understands alike (added once, by whichever is loaded)."""
    options.add_shared(click.Option(
        ["--masquerade-all"], is_flag=True, default=False,
        help="SNAT all traffic to service addresses, not only traffic from outside the pods (kube-router's flag)."), group=GROUP)
    options.add_shared(click.Option(
        ["--cluster-cidr"], default=None, metavar="CIDR",
        help="The pods' CIDR: traffic to a ClusterIP from outside it is masqueraded. Default: this node's pod CIDR."), group=GROUP)
    options.add_shared(click.Option(
        ["--nodeport-addresses"], default="", metavar="CIDR,...",
        help="Answer NodePorts only on local addresses in these CIDRs. Default: every local address but loopback."), group=GROUP)
    options.add_shared(click.Option(
        ["--iptables-masquerade-bit"], type=click.IntRange(0, 31), default=14, show_default=True,
        help="Packet-mark bit marking traffic to masquerade (kube-proxy's flag)."), group=GROUP)
