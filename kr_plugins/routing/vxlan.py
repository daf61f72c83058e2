"""The kernel side of the overlay: the ``kr-vxlan`` device and its peers' neighbour and FDB entries.

Role: ``VxlanOverlay.sync`` makes the device and its entries match an ``OverlayPlan`` (or removes the
device when there is none); ``remove_device`` is what cleanup calls.

Invariants:
- the device, and every neighbour and FDB entry on it, is kr's (kr named it); nothing here touches any
  other device, and entries on it are dropped with it;
- a device whose VNI, port, local address or underlay differs is deleted and created again (the kernel
  cannot change those on a live device); MTU, MAC and addresses are changed in place. The kernel drops
  the routes through a deleted device: ``sync`` reports it so the route table forgets them;
- what was programmed is remembered; a full (or the first) sync re-reads the device and its entries;
- one peer's failure does not stop the others: failures are returned, for the caller to raise.
"""

from __future__ import annotations

import errno
import socket
from dataclasses import dataclass, field

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError
from pyroute2.netlink.rtnl import ndmsg

from kr_plugins.routing.overlay import DEVICE, OverlayDevice, OverlayPlan

NUD_PERMANENT = ndmsg.states["permanent"]
NUD_NOARP = ndmsg.states["noarp"]
NTF_SELF = ndmsg.flags["self"]


@dataclass(slots=True)
class _Programmed:
    """What is on the device: VTEP address -> MAC (neighbours), MAC -> node IP (FDB)."""

    device: OverlayDevice | None
    index: int | None
    neighbours: dict[str, str] = field(default_factory=dict)
    fdb: dict[str, str] = field(default_factory=dict)


def _read(ipr: IPRoute) -> _Programmed:
    """The device named ``kr-vxlan`` and its entries, as the kernel has them."""
    found = ipr.link_lookup(ifname=DEVICE)
    if not found:
        return _Programmed(None, None)
    index = found[0]
    link = ipr.get_links(index)[0]
    info = link.get("IFLA_LINKINFO")
    data = info.get("IFLA_INFO_DATA") if info is not None and info.get("IFLA_INFO_KIND") == "vxlan" else None
    underlay_index = data.get("IFLA_VXLAN_LINK") if data is not None else None
    underlay = ipr.get_links(underlay_index)[0].get("IFLA_IFNAME") if underlay_index else ""
    device = OverlayDevice(
        name=DEVICE,
        vni=data.get("IFLA_VXLAN_ID") if data is not None else -1,  # not VXLAN: recreated
        port=data.get("IFLA_VXLAN_PORT") if data is not None else -1,
        local_ip=(data.get("IFLA_VXLAN_LOCAL") if data is not None else None) or "",
        underlay=underlay,
        mtu=link.get("IFLA_MTU"),
        mac=link.get("IFLA_ADDRESS"),
        addresses=tuple(sorted(f"{a.get('IFA_LOCAL')}/{a['prefixlen']}"
                               for a in ipr.get_addr(family=socket.AF_INET, index=index))),
    )
    neighbours = {n.get("NDA_DST"): n.get("NDA_LLADDR")
                  for n in ipr.get_neighbours(family=socket.AF_INET, ifindex=index)
                  if n["state"] & NUD_PERMANENT}
    fdb = {f.get("NDA_LLADDR"): f.get("NDA_DST") for f in ipr.fdb("dump", ifindex=index) if f.get("NDA_DST")}
    return _Programmed(device, index, neighbours, fdb)


def remove_device(ipr: IPRoute) -> bool:
    """Delete ``kr-vxlan`` (its neighbour and FDB entries, and routes through it, go with it)."""
    found = ipr.link_lookup(ifname=DEVICE)
    if not found:
        return False
    try:
        ipr.link("del", index=found[0])
    except NetlinkError as exc:
        if exc.code != errno.ENODEV:
            raise
    return True


class VxlanOverlay:
    """The overlay device and its peers, converged on a plan."""

    def __init__(self) -> None:
        self._programmed: _Programmed | None = None  # None: unknown, read the kernel first

    def sync(self, ipr: IPRoute, plan: OverlayPlan | None, full: bool) -> tuple[bool, list[str]]:
        """Converge on ``plan``; return (whether routes through the device were dropped, failures)."""
        if full or self._programmed is None:
            self._programmed = _read(ipr)
        current = self._programmed
        if plan is None:
            dropped = current.device is not None and remove_device(ipr)
            self._programmed = _Programmed(None, None)
            return dropped, []
        dropped = False
        if current.device is None or not current.device.same_tunnel(plan.device):
            dropped = current.device is not None and remove_device(ipr)
            self._programmed = None  # until the device is complete
            current = _Programmed(plan.device, self._create(ipr, plan.device))
        elif current.device != plan.device:
            self._programmed = None
            self._adjust(ipr, current, plan.device)
            current.device = plan.device
        self._programmed = current
        return dropped, self._sync_peers(ipr, current, plan)

    @staticmethod
    def _create(ipr: IPRoute, device: OverlayDevice) -> int:
        underlay = ipr.link_lookup(ifname=device.underlay)
        if not underlay:
            raise LookupError(f"no underlay interface {device.underlay} for {device.name}")
        ipr.link("add", ifname=device.name, kind="vxlan", vxlan_id=device.vni, vxlan_port=device.port,
                 vxlan_local=device.local_ip, vxlan_link=underlay[0], vxlan_learning=0,
                 address=device.mac, mtu=device.mtu)
        index = ipr.link_lookup(ifname=device.name)[0]
        for address in device.addresses:
            ip, length = address.split("/")
            ipr.addr("add", index=index, address=ip, prefixlen=int(length))
        ipr.link("set", index=index, state="up")
        return index

    @staticmethod
    def _adjust(ipr: IPRoute, current: _Programmed, device: OverlayDevice) -> None:
        assert current.device is not None and current.index is not None
        index = current.index
        if (current.device.mtu, current.device.mac) != (device.mtu, device.mac):
            ipr.link("set", index=index, mtu=device.mtu, address=device.mac)
        for address in sorted(set(current.device.addresses) - set(device.addresses)):
            ip, length = address.split("/")
            ipr.addr("del", index=index, address=ip, prefixlen=int(length))
        for address in sorted(set(device.addresses) - set(current.device.addresses)):
            ip, length = address.split("/")
            ipr.addr("add", index=index, address=ip, prefixlen=int(length))
        ipr.link("set", index=index, state="up")

    @staticmethod
    def _sync_peers(ipr: IPRoute, current: _Programmed, plan: OverlayPlan) -> list[str]:
        index = current.index
        neighbours = {peer.vtep_ip: peer.vtep_mac for peer in plan.peers}
        fdb = {peer.vtep_mac: peer.node_ip for peer in plan.peers}
        failures = []
        for ip in sorted(set(current.neighbours) - set(neighbours)):
            try:
                ipr.neigh("del", dst=ip, ifindex=index)
                del current.neighbours[ip]
            except Exception as exc:  # one peer's failure must not stop the others
                failures.append(f"delete neighbour {ip} on {DEVICE}: {exc}")
        for mac in sorted(set(current.fdb) - set(fdb)):
            try:
                ipr.fdb("del", ifindex=index, lladdr=mac, dst=current.fdb[mac])
                del current.fdb[mac]
            except Exception as exc:  # one peer's failure must not stop the others
                failures.append(f"delete fdb entry {mac} on {DEVICE}: {exc}")
        for peer in plan.peers:
            try:
                if current.fdb.get(peer.vtep_mac) != peer.node_ip:
                    ipr.fdb("replace", ifindex=index, lladdr=peer.vtep_mac, dst=peer.node_ip,
                            state=NUD_PERMANENT | NUD_NOARP, flags=NTF_SELF)
                    current.fdb[peer.vtep_mac] = peer.node_ip
                if current.neighbours.get(peer.vtep_ip) != peer.vtep_mac:
                    ipr.neigh("replace", dst=peer.vtep_ip, lladdr=peer.vtep_mac, ifindex=index,
                              state=NUD_PERMANENT)
                    current.neighbours[peer.vtep_ip] = peer.vtep_mac
            except Exception as exc:  # one peer's failure must not stop the others
                failures.append(f"overlay peer {peer.node_ip} ({peer.vtep_ip} {peer.vtep_mac}): {exc}")
        return failures
