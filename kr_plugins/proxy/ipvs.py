"""``proxy.ipvs``: the Kubernetes service proxy as IPVS virtual services, kube-router's design.

Each sync plans the node's IPVS state (``ipvsplan.plan_ipvs``, pure), then brings the kernel there from
what it remembers programming (re-read on full syncs): kr's ipsets (one ``ipset restore``), the service
addresses on the ``kr-ipvs0`` dummy interface, the IPVS virtual services and their real servers (one
netlink request each, through pyroute2), and the iptables chains around IPVS (one
``iptables-restore --noflush``: marking for SNAT, masquerading, hairpin, and the filter guard that lets
only service ports answer on service addresses). Then stale addresses and sets go, UDP conntrack
entries of removed endpoints are deleted, and health-check ports are served.

Invariants:
- kr touches only: the ``kr-ipvs0`` interface and its addresses; IPVS services on its addresses, or on
  this node's addresses with a port in the node-port range (30000-32767), or that it programmed itself;
  ipsets and chains named ``KR-PX-*`` and the hook jumps into its chains;
- a removed TCP endpoint is drained: its weight drops to 0 (no new connections) and it is deleted once
  it has no connection left or after ``--ipvs-graceful-period``; a UDP endpoint is deleted at once;
- a kernel without IPVS (or without dummy interfaces) fails ``start`` with a message naming what is
  missing and pointing to ``proxy.iptables``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable

import click
from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from kr_core.backends import Backend, BackendContext, BackendSpec
from kr_core.changes import ChangeSet
from kr_core.config import OptionRegistry
from kr_core.errors import KrError
from kr_core.hookspecs import hookimpl
from kr_core.model import DesiredState
from kr_plugins.kernel import ipset
from kr_plugins.kernel.command import run
from kr_plugins.kernel.ipset import IPSetSpec, parse_save, render_sets
from kr_plugins.kernel.iptables import (
    DetectedFlavour,
    Flavour,
    IptablesRestore,
    TableState,
    parse_table_save,
    remove_owned_chains,
    table_change,
    table_lines,
)
from kr_plugins.kernel.ipvs import IpvsKernel, RealRecord, VirtualRecord
from kr_plugins.kernel.sysctl import PROC_SYS, ensure_sysctl
from kr_plugins.proxy.flows import UdpTargets, clear_stale_flows
from kr_plugins.proxy.healthcheck import HealthCheckServers, health_targets
from kr_plugins.proxy.ipvsplan import (
    DUMMY,
    IpvsPlan,
    VirtualService,
    node_addresses,
    plan_ipvs,
)
from kr_plugins.proxy.ipvsplan import hooks as ipvs_hooks
from kr_plugins.proxy.options import add_proxy_options, proxy_settings
from kr_plugins.proxy.rules import PREFIX

log = logging.getLogger(__name__)

NAME = "proxy.ipvs"
TABLES = ("nat", "filter")
NODE_PORT_RANGE = range(30000, 32768)
SYSCTLS = {
    "net/ipv4/vs/conntrack": "1",  # IPVS connections get conntrack entries, so iptables can SNAT them
    "net/ipv4/vs/expire_nodest_conn": "1",  # a deleted real server's connections end at their next packet
    "net/ipv4/vs/expire_quiescent_template": "1",  # persistence ends on a drained real server
}
BRIDGE_NF_CALL = "net/bridge/bridge-nf-call-iptables"


def owned(name: str) -> bool:
    return name.startswith(PREFIX + "-")


def _record(service: VirtualService) -> VirtualRecord:
    key = service.key
    return VirtualRecord(key.protocol, key.address, key.port, service.scheduler, service.flags, service.timeout)


class IpvsProxy(Backend):
    def __init__(self, context: BackendContext) -> None:
        options = context.config.options
        self.settings = proxy_settings(options)
        self.grace = float(options.get("ipvs_graceful_period", 30.0))
        self._request_sync = context.request_sync
        self._ipvs: IpvsKernel | None = None
        self._flavour = DetectedFlavour("proxy (ipvs)")
        # what is programmed; None: unknown, re-read the kernel
        self._tables: dict[str, TableState] | None = None
        self._sets: dict[str, IPSetSpec] | None = None
        self._services: dict[tuple[str, str, int], VirtualRecord] | None = None
        self._reals: dict[tuple[str, str, int], dict[tuple[str, int], RealRecord]] = {}
        self._vips: set[str] = set()
        self._draining: dict[tuple[tuple[str, str, int], tuple[str, int]], float] = {}  # -> deadline
        self._udp: dict[str, UdpTargets] | None = None
        self._health = HealthCheckServers()
        self._reported: set[str] = set()
        self._timer: threading.Timer | None = None

    @property
    def ipvs(self) -> IpvsKernel:
        if self._ipvs is None:
            self._ipvs = IpvsKernel()
        return self._ipvs

    @property
    def flavour(self) -> Flavour:
        return self._flavour.get()

    def start(self) -> None:
        """Open IPVS, make sure ``kr-ipvs0`` exists and set the sysctls IPVS needs; fail plainly when the
        kernel lacks IPVS or dummy interfaces."""
        ipvs = self.ipvs  # fails here, plainly, on a kernel without IPVS
        log.info("proxy: IPVS (%d virtual services found) with iptables-%s around it", len(ipvs.services()),
                 self.flavour.value)
        with IPRoute() as ipr:
            if not ipr.link_lookup(ifname=DUMMY):
                try:
                    ipr.link("add", ifname=DUMMY, kind="dummy")
                except NetlinkError as exc:
                    raise KrError(f"cannot create the {DUMMY} dummy interface ({exc}): this kernel has no "
                                  "dummy interfaces (CONFIG_DUMMY); run --plugins ...,proxy.iptables instead") from None
            ipr.link("set", index=ipr.link_lookup(ifname=DUMMY)[0], state="up")
        for key, value in SYSCTLS.items():
            ensure_sysctl(key, value)
        if (PROC_SYS / BRIDGE_NF_CALL).exists():
            ensure_sysctl(BRIDGE_NF_CALL, "1")

    # --- one sync

    def sync(self, desired: DesiredState, *, full: bool, changed: ChangeSet) -> None:
        plan = plan_ipvs(desired, self.settings)
        for problem in plan.problems:
            if problem not in self._reported:
                self._reported.add(problem)
                log.warning("proxy: %s", problem)
        if full or self._services is None or self._tables is None or self._sets is None:
            self._read_kernel(desired)
        assert self._services is not None and self._tables is not None and self._sets is not None
        tables, sets, services = self._tables, self._sets, self._services
        self._tables = self._sets = self._services = None  # until this sync has succeeded
        changed_sets = [name for name, spec in plan.sets.items() if sets.get(name) != spec]
        if changed_sets:
            ipset.restore(render_sets(plan.sets, changed_sets, sets))
        self._set_vips(plan.vips | self._vips, add_only=True)
        services = self._sync_services(plan, services)
        IptablesRestore(self.flavour).apply(table_change(table, plan.chains[table], plan.hooks[table], tables[table])
                                            for table in TABLES)
        self._set_vips(plan.vips, add_only=False)
        stale = [name for name in sets if name not in plan.sets]
        if stale:
            ipset.restore("".join(f"destroy {name}\n" for name in stale))
        self._tables = {table: TableState(dict(plan.chains[table])) for table in TABLES}
        self._sets, self._services = dict(plan.sets), services
        log.debug("proxy sync (full=%s): %d virtual service(s), %d set(s) written, %d draining",
                  full, len(services), len(changed_sets), len(self._draining))
        self._udp = clear_stale_flows(self._udp, desired)
        for problem in self._health.sync(health_targets(desired)):
            log.error("proxy: %s", problem)
        self._schedule_drain_check()

    def _sync_services(self, plan: IpvsPlan, current: dict[tuple[str, str, int], VirtualRecord]
                       ) -> dict[tuple[str, str, int], VirtualRecord]:
        wanted = {(k.protocol, k.address, k.port): s for k, s in plan.services.items()}
        now = time.monotonic()
        result = dict(current)
        for key, service in wanted.items():
            record = _record(service)
            if key not in current:
                self.ipvs.add_service(record)
                self._reals[key] = {}
            elif current[key] != record:
                self.ipvs.update_service(record)
            result[key] = record
            self._sync_reals(record, service, now)
        for key in [k for k in current if k not in wanted]:
            self.ipvs.delete_service(current[key])
            del result[key]
            self._reals.pop(key, None)
            self._draining = {d: t for d, t in self._draining.items() if d[0] != key}
        return result

    def _sync_reals(self, record: VirtualRecord, service: VirtualService, now: float) -> None:
        key = (record.protocol, record.address, record.port)
        reals = self._reals.setdefault(key, {})
        for address, port in service.destinations:
            real = reals.get((address, port))
            if real is None:
                real = RealRecord(address, port, 1)
                self.ipvs.add_real(record, real)
            elif real.weight != 1:  # it came back while draining
                real = RealRecord(address, port, 1)
                self.ipvs.set_weight(record, real)
            reals[(address, port)] = real
            self._draining.pop((key, (address, port)), None)
        gone = [dest for dest in reals if dest not in service.destinations]
        if not gone:
            return
        counts = self.ipvs.reals(record) if record.protocol != "udp" else {}
        for dest in gone:
            real = reals[dest]
            live = counts.get(dest)
            deadline = self._draining.setdefault((key, dest), now + self.grace)
            if record.protocol == "udp" or live is None or live.active + live.inactive == 0 or now >= deadline:
                self.ipvs.delete_real(record, real)
                del reals[dest]
                self._draining.pop((key, dest), None)
            elif real.weight != 0:
                reals[dest] = RealRecord(real.address, real.port, 0)
                self.ipvs.set_weight(record, reals[dest])

    def _schedule_drain_check(self) -> None:
        """While endpoints drain, ask for a sync when the next one may be deleted."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._draining:
            delay = max(1.0, min(min(self._draining.values()) - time.monotonic(), 5.0))
            self._timer = threading.Timer(delay, self._request_sync)
            self._timer.daemon = True
            self._timer.start()

    # --- the kernel as it is

    def _read_kernel(self, desired: DesiredState) -> None:
        hooks = ipvs_hooks()
        self._tables = {table: parse_table_save(table_lines(run([self.flavour.save_command, "-t", table]), table),
                                                owned, hooks[table]) for table in TABLES}
        self._sets, stray = parse_save(run(["ipset", "save"]), owned)
        if stray:
            ipset.destroy_existing(stray)
        self._vips = self._read_vips()
        node_ips = set(node_addresses(desired, self.settings))
        self._services = {}
        self._reals = {}
        for key, record in self.ipvs.services().items():
            protocol, address, port = key
            if address in self._vips or (address in node_ips and port in NODE_PORT_RANGE):
                self._services[key] = record
                self._reals[key] = self.ipvs.reals(record)

    def _read_vips(self) -> set[str]:
        with IPRoute() as ipr:
            index = ipr.link_lookup(ifname=DUMMY)
            if not index:
                return set()
            return {a.get_attr("IFA_ADDRESS") for a in ipr.get_addr(index=index[0], family=2)}

    def _set_vips(self, wanted: Iterable[str], *, add_only: bool) -> None:
        wanted = set(wanted)
        if wanted == self._vips:
            return
        with IPRoute() as ipr:
            index = ipr.link_lookup(ifname=DUMMY)[0]
            for address in sorted(wanted - self._vips):
                ipr.addr("add", index=index, address=address, prefixlen=32)
            if not add_only:
                for address in sorted(self._vips - wanted):
                    ipr.addr("del", index=index, address=address, prefixlen=32)
        self._vips = wanted if not add_only else self._vips | wanted

    # --- lifecycle

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._health.close()

    def cleanup(self) -> None:
        failures = [failure for table in TABLES for failure in remove_owned_chains(table, owned)]
        try:
            vips = self._read_vips()
            for key, record in self.ipvs.services().items():
                if key[1] in vips or (key[2] in NODE_PORT_RANGE and key[1] in self._node_ips()):
                    self.ipvs.delete_service(record)
        except KrError as exc:
            failures.append(f"ipvs: {exc}")
        with IPRoute() as ipr:
            index = ipr.link_lookup(ifname=DUMMY)
            if index:
                ipr.link("del", index=index[0])
        try:
            ipset.destroy_existing(name for name in ipset.existing_sets() if owned(name))
        except KrError as exc:
            failures.append(f"ipsets: {exc}")
        self._services = self._tables = self._sets = None
        if failures:
            raise KrError(f"cleanup incomplete: {'; '.join(failures)}")

    @staticmethod
    def _node_ips() -> set[str]:
        with IPRoute() as ipr:
            return {a.get_attr("IFA_ADDRESS") for a in ipr.get_addr(family=2)}


@hookimpl
def kr_add_options(options: OptionRegistry) -> None:
    add_proxy_options(options)
    options.add(click.Option(
        ["--ipvs-graceful-period"], type=click.FloatRange(0), default=30.0, show_default=True,
        help="Seconds a removed endpoint keeps its open connections (weight 0) before it is deleted."))


@hookimpl
def kr_backends() -> Iterable[BackendSpec]:
    return [BackendSpec(slot="proxy", name=NAME, factory=IpvsProxy,
                        watches=frozenset({"nodes", "services", "endpointslices"}),
                        description="Services as IPVS virtual services (kube-router's design), graceful endpoint removal")]

