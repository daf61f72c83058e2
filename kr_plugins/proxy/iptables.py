"""``proxy.iptables``: the Kubernetes service proxy as iptables nat and filter chains, in kube-proxy's design.

Each sync renders the desired state (``rules.ProxyRenderer``: pure in what it returns, re-rendering only
changed service ports), then programs the difference from what it remembers programming with one
``iptables-restore --noflush`` (nat and filter, each committed atomically): only new or changed chains
are declared (so replaced whole), hooks not in place are fixed, and chains no longer wanted are flushed
and deleted after their referrers were rewritten in the same commit. Then, with the new rules in place,
UDP conntrack entries that still point at removed endpoints are deleted, and the health-check ports of
Local load-balancer services are opened, updated or closed.

Invariants:
- kr touches only chains named ``KR-PX-*`` in the nat and filter tables, plus the six hook jumps into
  ``KR-PX-SERVICES``, ``KR-PX-POSTROUTING`` and ``KR-PX-FILTER``; ``IptablesRestore`` refuses anything
  else, and ``cleanup`` removes exactly these from both iptables flavours;
- a full sync (the first, a periodic one, or the one after a failure) re-reads both tables
  (``iptables-save -t nat``, ``-t filter``) and converges; a partial sync trusts memory, so the kernel is
  not listed on every sync; rule specs are in ``iptables-save``'s form, so unchanged chains are never
  rewritten (and keep their counters);
- conntrack entries are deleted only for changes this process saw (never on the first sync after a
  start), so restarting kr drops no flow.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import click

from kr_core.backends import Backend, BackendContext, BackendSpec
from kr_core.changes import ChangeSet
from kr_core.config import OptionRegistry
from kr_core.errors import KrError
from kr_core.hookspecs import hookimpl
from kr_core.model import DesiredState, Protocol, ServicePort, TrafficPolicy
from kr_plugins.kernel import conntrack
from kr_plugins.kernel.command import run
from kr_plugins.kernel.iptables import (
    Flavour,
    IptablesRestore,
    TableState,
    detect_flavour,
    parse_table_save,
    remove_owned_chains,
    render_table,
    restore_text,
    table_lines,
)
from kr_plugins.kernel.sysctl import PROC_SYS, ensure_sysctl
from kr_plugins.proxy.endpoints import choose, externally_reachable
from kr_plugins.proxy.healthcheck import HealthCheckServers, HealthTarget
from kr_plugins.proxy.rules import PREFIX, ProxyRenderer, ProxySettings, check_consistency, hooks, service_label

log = logging.getLogger(__name__)

NAME = "proxy.iptables"
TABLES = ("nat", "filter")
#: Service traffic between two pods on one bridge must pass iptables for its replies to be un-NATed.
BRIDGE_NF_CALL = "net/bridge/bridge-nf-call-iptables"


class ProxyError(KrError):
    """The service proxy could not be programmed."""


def owned_chain(name: str) -> bool:
    return name.startswith(PREFIX + "-")


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


@dataclass(frozen=True, slots=True)
class UdpTargets:
    """Where a UDP service port's traffic arrives (addresses, node port) and the endpoint addresses
    kr's rules send it to."""

    addresses: tuple[str, ...]
    port: int
    node_port: int | None
    endpoints: frozenset[str]


def udp_targets(desired: DesiredState) -> dict[str, UdpTargets]:
    """Service port label -> its UDP targets, for every UDP service port."""
    targets = {}
    for service in desired.services:
        if service.protocol is not Protocol.UDP:
            continue
        choice = choose(service)
        used = choice.cluster + (choice.everywhere + choice.local if externally_reachable(service) else ())
        addresses = tuple(a for a in (*service.cluster_ips, *service.external_ips, *service.load_balancer_ips)
                          if ":" not in a)
        targets[service_label(service)] = UdpTargets(addresses, service.port, service.node_port,
                                                     frozenset(e.address for e in used))
    return targets


def stale_flows(before: Mapping[str, UdpTargets], now: Mapping[str, UdpTargets]) -> list[dict[str, Any]]:
    """``conntrack.delete_udp_flows`` arguments for flows that would otherwise stick to the past: flows
    NATed to an endpoint a service port no longer uses, and flows to a service port that had no endpoint
    and now has one (they were never NATed)."""
    deletions: list[dict[str, Any]] = []
    for label, old in before.items():
        new = now.get(label)
        for endpoint in sorted(old.endpoints - (new.endpoints if new else frozenset())):
            deletions += [{"orig_dst": a, "dst_nat": endpoint} for a in old.addresses]
            if old.node_port is not None:
                deletions.append({"orig_port_dst": old.node_port, "dst_nat": endpoint})
    for label, new in now.items():
        old = before.get(label)
        if new.endpoints and (old is None or not old.endpoints):
            deletions += [{"orig_dst": a, "orig_port_dst": new.port} for a in new.addresses]
            if new.node_port is not None:
                deletions.append({"orig_port_dst": new.node_port})
    return deletions


def health_targets(desired: DesiredState) -> dict[int, HealthTarget]:
    """healthCheckNodePort -> what it reports, for Local load-balancer services."""
    targets: dict[int, HealthTarget] = {}
    for service in desired.services:
        port = service.health_check_node_port
        if port is None or service.external_traffic_policy is not TrafficPolicy.LOCAL:
            continue
        local = _count_local(service)
        seen = targets.get(port)
        count = max(local, seen.local_endpoints) if seen is not None else local  # one per service, not port
        targets[port] = HealthTarget(service.namespace, service.name, count)
    return targets


def _count_local(service: ServicePort) -> int:
    return len({e.address for e in choose(service).local})


class IptablesProxy(Backend):
    def __init__(self, context: BackendContext) -> None:
        self.settings = proxy_settings(context.config.options)
        self._renderer = ProxyRenderer(self.settings)
        self._flavour: Flavour | None = None
        self._programmed: dict[str, TableState] | None = None  # None: unknown, re-read the kernel
        self._udp: dict[str, UdpTargets] | None = None  # None: not known since this process started
        self._health = HealthCheckServers()

    @property
    def flavour(self) -> Flavour:
        if self._flavour is None:
            self._flavour = detect_flavour()
            log.info("proxy: using iptables-%s", self._flavour.value)
        return self._flavour

    def start(self) -> None:
        """Detect the iptables flavour, and let bridged service traffic through iptables."""
        log.debug("proxy starting with iptables-%s", self.flavour.value)
        if (PROC_SYS / BRIDGE_NF_CALL).exists():
            ensure_sysctl(BRIDGE_NF_CALL, "1")
        else:
            log.warning("proxy: br_netfilter is not loaded; service traffic between pods on one bridge "
                        "will not be un-NATed (modprobe br_netfilter)")

    def sync(self, desired: DesiredState, *, full: bool, changed: ChangeSet) -> None:
        ruleset = self._renderer.render(desired)
        check_consistency(ruleset)
        reread = full or self._programmed is None
        programmed = self._read_kernel() if reread else self._programmed
        assert programmed is not None
        self._programmed = None  # until this sync has succeeded
        bodies = {table: render_table(table, ruleset.tables[table], ruleset.hooks[table], programmed[table])
                  for table in TABLES}
        text = restore_text(bodies)
        if text is not None:
            IptablesRestore(self.flavour).restore(text)
        self._programmed = {table: TableState(dict(ruleset.tables[table])) for table in TABLES}
        written = sum(line.startswith(":") for body in bodies.values() for line in body)
        removed = sum(line.startswith("-X ") for body in bodies.values() for line in body)
        log.debug("proxy sync (full=%s): %d chain(s) written, %d chain(s) removed, %d restore line(s)",
                  reread, written, removed, sum(len(body) for body in bodies.values()))
        self._clear_stale_flows(desired)
        for problem in self._health.sync(health_targets(desired)):
            log.error("proxy: %s", problem)

    def _clear_stale_flows(self, desired: DesiredState) -> None:
        now = udp_targets(desired)
        before, self._udp = self._udp, now
        if before is None:
            return
        for deletion in stale_flows(before, now):
            try:
                deleted = conntrack.delete_udp_flows(**deletion)
            except KrError as exc:  # stale flows expire on their own: report, do not fail the sync
                log.warning("proxy: could not delete UDP conntrack entries %s: %s", deletion, exc)
                continue
            if deleted:
                log.info("proxy: deleted %d stale UDP conntrack entr%s %s", deleted, "y" if deleted == 1 else "ies",
                         deletion)

    def _read_kernel(self) -> dict[str, TableState]:
        wanted = hooks()
        return {table: parse_table_save(table_lines(run([self.flavour.save_command, "-t", table]), table),
                                        owned_chain, wanted[table]) for table in TABLES}

    def stop(self) -> None:
        self._health.close()

    def cleanup(self) -> None:
        failures = [failure for table in TABLES for failure in remove_owned_chains(table, owned_chain)]
        self._programmed = None
        if failures:
            raise ProxyError(f"cleanup incomplete: {'; '.join(failures)}")


@hookimpl
def kr_add_options(options: OptionRegistry) -> None:
    options.add(click.Option(
        ["--masquerade-all"], is_flag=True, default=False,
        help="SNAT all traffic to service addresses, not only traffic from outside the pods (kube-router's flag)."))
    options.add(click.Option(
        ["--cluster-cidr"], default=None, metavar="CIDR",
        help="The pods' CIDR: traffic to a ClusterIP from outside it is masqueraded. Default: this node's pod CIDR."))
    options.add(click.Option(
        ["--nodeport-addresses"], default="", metavar="CIDR,...",
        help="Answer NodePorts only on local addresses in these CIDRs. Default: every local address but loopback."))
    options.add(click.Option(
        ["--iptables-masquerade-bit"], type=click.IntRange(0, 31), default=14, show_default=True,
        help="Packet-mark bit marking traffic to masquerade (kube-proxy's flag)."))


@hookimpl
def kr_backends() -> Iterable[BackendSpec]:
    return [BackendSpec(slot="proxy", name=NAME, factory=IptablesProxy,
                        watches=frozenset({"nodes", "services", "endpointslices"}),
                        description="Services with iptables nat chains, kube-proxy semantics, incremental")]
