"""IPVS virtual services and real servers through pyroute2's generic netlink, in kr's network namespace.

Records are plain values (``VirtualRecord``, ``RealRecord``) so the reconciling code above stays pure
and testable without the kernel. Real servers are always added in masquerade mode (IPVS NAT).

Invariants:
- ``IpvsKernel()`` fails with ``IpvsUnavailable`` and a plain message when the kernel has no IPVS
  (``CONFIG_IP_VS`` off or the ``ip_vs`` module not loadable);
- every call is one netlink request; nothing is cached here.
"""

from __future__ import annotations

import socket
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pyroute2 import IPVS, IPVSDest, IPVSService

from kr_core.errors import KrError

PROTOCOLS = {"tcp": socket.IPPROTO_TCP, "udp": socket.IPPROTO_UDP, "sctp": 132}
PROTOCOL_NAMES = {number: name for name, number in PROTOCOLS.items()}
MASQUERADE = 0  # IP_VS_CONN_F_MASQ
FLAG_MASK = 0xFFFF


class IpvsUnavailable(KrError):
    """The kernel has no IPVS."""


@dataclass(frozen=True, slots=True, order=True)
class VirtualRecord:
    protocol: str
    address: str
    port: int
    scheduler: str = "rr"
    flags: int = 0
    timeout: int = 0


@dataclass(frozen=True, slots=True)
class RealRecord:
    address: str
    port: int
    weight: int = 1
    active: int = 0
    inactive: int = 0


def _get(record: Mapping[str, Any], name: str, prefix: str) -> Any:
    """A field of a pyroute2 IPVS record: its netlink attribute if the kernel sent it, else the short
    name (pyroute2 pre-fills some short names, timeout and flags among them, with defaults)."""
    value = record.get(prefix + name.upper())
    return record.get(name) if value is None else value


class IpvsKernel:
    def __init__(self) -> None:
        try:
            self._ipvs = IPVS()
            self._ipvs.service("dump")
        except Exception as exc:  # pyroute2 raises several kinds when the genl family is missing
            raise IpvsUnavailable(
                f"this kernel has no IPVS (CONFIG_IP_VS / modprobe ip_vs): {exc}. "
                "Run the iptables proxy instead: --plugins ...,proxy.iptables") from None

    def close(self) -> None:
        self._ipvs.close()

    # --- reading

    def services(self) -> dict[tuple[str, str, int], VirtualRecord]:
        """(protocol, address, port) -> record of every address-based IPVS service (IPv4)."""
        found = {}
        for message in self._ipvs.service("dump"):
            record = IPVSService.from_message(message)
            protocol = PROTOCOL_NAMES.get(_get(record, "protocol", "IPVS_SVC_ATTR_"))
            address = _get(record, "addr", "IPVS_SVC_ATTR_")
            if protocol is None or not address or ":" in str(address):
                continue  # fwmark services, IPv6 and unknown protocols are not kr's
            flags = _get(record, "flags", "IPVS_SVC_ATTR_") or 0
            flags = flags.get("flags", 0) if isinstance(flags, Mapping) else int(flags)
            key = (protocol, str(address), int(_get(record, "port", "IPVS_SVC_ATTR_")))
            found[key] = VirtualRecord(*key, scheduler=str(_get(record, "sched_name", "IPVS_SVC_ATTR_")),
                                       flags=flags & ~0x2,  # IP_VS_SVC_F_HASHED is the kernel's own
                                       timeout=int(_get(record, "timeout", "IPVS_SVC_ATTR_") or 0))
        return found

    def reals(self, service: VirtualRecord) -> dict[tuple[str, int], RealRecord]:
        found = {}
        for message in self._ipvs.dest("dump", service=self._service(service)):
            record = IPVSDest.from_message(message)
            address, port = str(_get(record, "addr", "IPVS_DEST_ATTR_")), int(_get(record, "port", "IPVS_DEST_ATTR_"))
            found[(address, port)] = RealRecord(
                address, port, int(_get(record, "weight", "IPVS_DEST_ATTR_") or 0),
                int(_get(record, "active_conns", "IPVS_DEST_ATTR_") or 0),
                int(_get(record, "inact_conns", "IPVS_DEST_ATTR_") or 0))
        return found

    # --- writing

    def add_service(self, service: VirtualRecord) -> None:
        self._ipvs.service("add", service=self._service(service, full=True))

    def update_service(self, service: VirtualRecord) -> None:
        self._ipvs.service("set", service=self._service(service, full=True))

    def delete_service(self, service: VirtualRecord) -> None:
        self._ipvs.service("del", service=self._service(service))

    def add_real(self, service: VirtualRecord, real: RealRecord) -> None:
        self._ipvs.dest("add", service=self._service(service), dest=self._dest(real))

    def set_weight(self, service: VirtualRecord, real: RealRecord) -> None:
        self._ipvs.dest("set", service=self._service(service), dest=self._dest(real))

    def delete_real(self, service: VirtualRecord, real: RealRecord) -> None:
        self._ipvs.dest("del", service=self._service(service), dest=self._dest(real))

    @staticmethod
    def _service(service: VirtualRecord, full: bool = False) -> Any:
        fields: dict[str, Any] = {"addr": service.address, "port": service.port,
                                  "protocol": PROTOCOLS[service.protocol]}
        if full:
            fields.update(sched_name=service.scheduler, timeout=service.timeout,
                          flags={"flags": service.flags, "mask": FLAG_MASK})
        return IPVSService(**fields)

    @staticmethod
    def _dest(real: RealRecord) -> Any:
        return IPVSDest(addr=real.address, port=real.port, weight=real.weight, fwd_method=MASQUERADE)
