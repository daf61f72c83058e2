"""kr's routes in the main table, reconciled by route protocol number, and where the node IP lives.

Role: ``RouteTable`` makes the main table's IPv4 routes carrying ``KR_ROUTE_PROTOCOL`` exactly the
desired ``Route`` records, with one netlink request per route that differs; ``read_underlay`` finds the
interface and prefix holding this node's IP.

Invariants:
- only routes carrying kr's protocol are replaced or deleted (deletes name the protocol, so the kernel
  itself refuses to match anybody else's route); a destination already held by somebody else's route
  of the same metric is left to them and reported once, never replaced;
- what was programmed is remembered; a full (or the first) sync re-reads kr's routes from the kernel
  first, so routes removed or changed behind kr's back converge, while a partial sync with nothing to
  change sends no netlink request at all;
- one route's failure does not stop the others: failures are returned, for the caller to raise.
"""

from __future__ import annotations

import errno
import ipaddress
import logging
import socket
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from kr_plugins.kernel.routeproto import KR_ROUTE_PROTOCOL

log = logging.getLogger(__name__)

MAIN_TABLE = 254
RTNH_F_ONLINK = 4


@dataclass(frozen=True, slots=True, order=True)
class Route:
    """``dst via gateway dev device [onlink]`` in the main table, with kr's protocol."""

    dst: str
    gateway: str
    device: str
    onlink: bool = False

    def __str__(self) -> str:
        return f"{self.dst} via {self.gateway} dev {self.device}{' onlink' if self.onlink else ''}"


@dataclass(frozen=True, slots=True)
class Underlay:
    """Where this node's IP lives: the interface holding it, that address's network, the link's MTU."""

    ip: str
    network: str
    interface: str
    mtu: int


def link_indexes(ipr: IPRoute) -> dict[str, int]:
    """Interface name -> index, in the current network namespace."""
    return {link.get("IFLA_IFNAME"): link["index"] for link in ipr.get_links()}


def read_underlay(ipr: IPRoute, ip: str) -> Underlay | None:
    """The interface holding ``ip`` in this namespace, or None when no interface does."""
    for addr in ipr.get_addr(family=socket.AF_INET):
        if addr.get("IFA_LOCAL") == ip:
            link = ipr.get_links(addr["index"])[0]
            network = ipaddress.IPv4Network(f"{ip}/{addr['prefixlen']}", strict=False)
            return Underlay(ip=ip, network=str(network), interface=link.get("IFLA_IFNAME"),
                            mtu=link.get("IFLA_MTU"))
    return None


def _route_of(message: Any, names: dict[int, str]) -> Route:
    dst = f"{message.get('RTA_DST') or '0.0.0.0'}/{message['dst_len']}"
    return Route(dst=dst, gateway=message.get("RTA_GATEWAY") or "", device=names.get(message.get("RTA_OIF"), "?"),
                 onlink=bool(message["flags"] & RTNH_F_ONLINK))


def read_owned_routes(ipr: IPRoute) -> dict[str, Route]:
    """kr's IPv4 routes in the main table, by destination."""
    names = {index: name for name, index in link_indexes(ipr).items()}
    return {route.dst: route for route in (
        _route_of(message, names)
        for message in ipr.get_routes(family=socket.AF_INET, table=MAIN_TABLE, proto=KR_ROUTE_PROTOCOL)
    )}


def delete_route(ipr: IPRoute, dst: str) -> None:
    """Delete kr's route to ``dst`` (never another protocol's); a route already gone is fine."""
    try:
        ipr.route("del", dst=dst, table=MAIN_TABLE, proto=KR_ROUTE_PROTOCOL)
    except NetlinkError as exc:
        if exc.code != errno.ESRCH:
            raise


class RouteTable:
    """kr's routes in the main table: the desired ones installed, the stale ones deleted."""

    def __init__(self) -> None:
        self._programmed: dict[str, Route] | None = None  # None: unknown, read the kernel first
        self._conflicts: set[str] = set()

    def sync(self, ipr: IPRoute, desired: Iterable[Route], full: bool) -> list[str]:
        """Converge on ``desired``; return one message per route that failed."""
        if full or self._programmed is None:
            self._programmed = read_owned_routes(ipr)
        programmed = self._programmed
        wanted = {route.dst: route for route in desired}
        indexes: dict[str, int] | None = None  # read only when something is to be installed
        failures = []
        for dst in sorted(set(programmed) - set(wanted)):
            try:
                delete_route(ipr, dst)
                del programmed[dst]
            except Exception as exc:  # one route's failure must not stop the others
                failures.append(f"delete route {programmed[dst]}: {exc}")
        for dst, route in sorted(wanted.items()):
            if programmed.get(dst) == route:
                continue
            try:
                indexes = indexes if indexes is not None else link_indexes(ipr)
                if self._install(ipr, route, indexes):
                    programmed[dst] = route
            except Exception as exc:  # one route's failure must not stop the others
                failures.append(f"route {route}: {exc}")
        return failures

    def forget_device(self, device: str) -> None:
        """The kernel dropped every route through ``device`` (it was deleted or recreated)."""
        if self._programmed is not None:
            self._programmed = {dst: r for dst, r in self._programmed.items() if r.device != device}

    def _install(self, ipr: IPRoute, route: Route, indexes: dict[str, int]) -> bool:
        """Add (or replace our own) route; False if somebody else's route holds the destination.

        Always add first and replace only after checking the holder: the in-memory model may be stale
        (another tool may have taken the prefix since), and ``replace`` ignores the protocol.
        """
        if route.device not in indexes:
            raise LookupError(f"no device {route.device}")
        request = dict(dst=route.dst, gateway=route.gateway, oif=indexes[route.device], table=MAIN_TABLE,
                       proto=KR_ROUTE_PROTOCOL, flags=RTNH_F_ONLINK if route.onlink else 0)
        try:
            ipr.route("add", **request)
            self._conflicts.discard(route.dst)
            return True
        except NetlinkError as exc:
            if exc.code != errno.EEXIST:
                raise
        if not self._held_by_us(ipr, route.dst):
            if route.dst not in self._conflicts:
                self._conflicts.add(route.dst)
                log.warning("not routing %s: a route of another protocol already holds it; "
                            "kr leaves it alone", route)
            return False
        ipr.route("replace", **request)
        return True

    @staticmethod
    def _held_by_us(ipr: IPRoute, dst: str) -> bool:
        """Whether the metric-0 route to ``dst`` in the main table is kr's."""
        address, length = dst.split("/")
        return any(
            message["proto"] == KR_ROUTE_PROTOCOL
            for message in ipr.get_routes(family=socket.AF_INET, table=MAIN_TABLE)
            if message.get("RTA_DST") == address and message["dst_len"] == int(length)
            and not message.get("RTA_PRIORITY")
        )
