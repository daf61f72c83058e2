"""The VXLAN overlay between nodes, flannel style: its options, and what each node derives for its peers.

Role: decide, without any API write, everything a node needs to reach a peer through the overlay. A
peer's VTEP MAC is derived from its node IP (``vtep_mac``) and its VTEP address is the network address
of its pod CIDR (``vtep_address``), so every node computes every peer's neighbour and FDB entries from
the Node objects alone. Both routing backends (``routing.static``, and ``routing.bgp`` for nodes outside
its subnet) share these options and records; ``kr_plugins.routing.vxlan`` programs them
(through ``kr_plugins.routing.programmer``).

Invariants:
- pure: nothing here touches the kernel;
- VXLAN, because this kernel has no ipip, gre or fou (docs/routing.md);
- no flooding and no learning: each peer is one permanent neighbour entry (VTEP address -> MAC) and one
  FDB entry (MAC -> node IP) on the single device ``kr-vxlan``;
- the device's MTU leaves room for the encapsulation (``VXLAN_OVERHEAD``) on the underlay's MTU.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import click

from kr_plugins.routing.routes import Route

DEVICE = "kr-vxlan"
#: Outer IPv4 header (20) + UDP (8) + VXLAN header (8) + inner Ethernet header (14).
VXLAN_OVERHEAD = 50
DEFAULT_VNI = 4096
DEFAULT_PORT = 4789  # IANA's VXLAN port (Linux's own default, 8472, predates it)
#: First two octets of every VTEP MAC: 0x02 marks it locally administered and unicast; 0x6b is "k".
MAC_PREFIX = b"\x02\x6b"


class OverlayType(StrEnum):
    """kube-router's ``--overlay-type``: overlay only peers in other subnets, or every peer."""

    SUBNET = "subnet"
    FULL = "full"


@dataclass(frozen=True, slots=True)
class OverlaySettings:
    enabled: bool = True
    type: OverlayType = OverlayType.SUBNET
    vni: int = DEFAULT_VNI
    port: int = DEFAULT_PORT

    def __post_init__(self) -> None:
        if not 1 <= self.vni <= 0xFFFFFF:
            raise ValueError(f"VXLAN VNI must be within 1..16777215, not {self.vni}")
        if not 1 <= self.port <= 0xFFFF:
            raise ValueError(f"VXLAN UDP port must be within 1..65535, not {self.port}")

    def uses_overlay(self, same_subnet: bool) -> bool:
        """Whether a peer is reached through the overlay (else directly, or not at all if off-subnet)."""
        return self.enabled and (self.type is OverlayType.FULL or not same_subnet)


def overlay_options() -> list[click.Option]:
    """The overlay's command-line options (kube-router's names where kube-router has one)."""
    return [
        click.Option(["--enable-overlay"], type=click.BOOL, is_flag=False, flag_value=True, default=True,
                     show_default=True,
                     help="Reach pods on nodes in other subnets (or all nodes, see --overlay-type) through "
                          f"the VXLAN device {DEVICE}; false leaves those nodes unrouted."),
        click.Option(["--overlay-type"], type=click.Choice([t.value for t in OverlayType]),
                     default=OverlayType.SUBNET.value, show_default=True,
                     help="subnet: overlay only nodes outside this node's subnet; full: overlay every node."),
        click.Option(["--overlay-encap-port"], type=click.IntRange(1, 65535), default=DEFAULT_PORT,
                     show_default=True, help="UDP port of the VXLAN encapsulation (the same on every node)."),
        click.Option(["--overlay-vxlan-vni"], type=click.IntRange(1, 0xFFFFFF), default=DEFAULT_VNI,
                     show_default=True, help="VXLAN network identifier (the same on every node)."),
    ]


def overlay_settings(options: Mapping[str, Any]) -> OverlaySettings:
    """The overlay settings from parsed options (their Python names), defaulting what is absent."""
    return OverlaySettings(
        enabled=bool(options.get("enable_overlay", True)),
        type=OverlayType(options.get("overlay_type") or OverlayType.SUBNET),
        vni=int(options.get("overlay_vxlan_vni") or DEFAULT_VNI),
        port=int(options.get("overlay_encap_port") or DEFAULT_PORT),
    )


def vtep_mac(node_ip: str) -> str:
    """The VTEP MAC of the node with IPv4 ``node_ip``: ``02:6b:`` followed by the address's four octets."""
    return ":".join(f"{octet:02x}" for octet in MAC_PREFIX + ipaddress.IPv4Address(node_ip).packed)


def vtep_address(pod_cidr: str) -> str:
    """The VTEP address of the node owning ``pod_cidr``: the CIDR's network address."""
    return str(ipaddress.IPv4Network(pod_cidr).network_address)


@dataclass(frozen=True, slots=True)
class OverlayDevice:
    """The VXLAN device as it should be: ``addresses`` hold our VTEP address as ``a.b.c.d/32``, if any."""

    name: str
    vni: int
    port: int
    local_ip: str
    underlay: str
    mtu: int
    mac: str
    addresses: tuple[str, ...]

    def same_tunnel(self, other: OverlayDevice) -> bool:
        """Whether ``other`` differs only in what can change on a live device (MTU, MAC, addresses)."""
        return (self.vni, self.port, self.local_ip, self.underlay) == (
            other.vni, other.port, other.local_ip, other.underlay)


@dataclass(frozen=True, slots=True, order=True)
class OverlayPeer:
    """A peer reached through the overlay: its VTEP address and MAC, and the node IP that carries them."""

    vtep_ip: str
    vtep_mac: str
    node_ip: str


@dataclass(frozen=True, slots=True)
class OverlayPlan:
    device: OverlayDevice
    peers: tuple[OverlayPeer, ...]


def overlay_device(settings: OverlaySettings, local_ip: str, underlay: str, underlay_mtu: int,
                   local_pod_cidr: str | None) -> OverlayDevice:
    """This node's VXLAN device on ``underlay``, addressed with its VTEP address when it has a pod CIDR."""
    return OverlayDevice(
        name=DEVICE, vni=settings.vni, port=settings.port, local_ip=local_ip, underlay=underlay,
        mtu=underlay_mtu - VXLAN_OVERHEAD, mac=vtep_mac(local_ip),
        addresses=(f"{vtep_address(local_pod_cidr)}/32",) if local_pod_cidr else (),
    )


def overlay_peer(node_ip: str, pod_cidr: str) -> OverlayPeer:
    """The overlay entries of the node with ``node_ip`` whose (first IPv4) pod CIDR is ``pod_cidr``."""
    return OverlayPeer(vtep_ip=vtep_address(pod_cidr), vtep_mac=vtep_mac(node_ip), node_ip=node_ip)


def overlay_route(peer: OverlayPeer, pod_cidr: str) -> Route:
    """``pod_cidr via <peer VTEP> dev kr-vxlan onlink``: the neighbour entry then supplies the MAC."""
    return Route(dst=pod_cidr, gateway=peer.vtep_ip, device=DEVICE, onlink=True)


#: What the overlay device needs: loose reverse-path filtering (see docs/routing.md, "sysctls").
OVERLAY_SYSCTLS = ((f"net/ipv4/conf/{DEVICE}/rp_filter", "2"),)
