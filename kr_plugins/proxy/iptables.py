"""``proxy.iptables``: the Kubernetes service proxy as iptables nat and filter chains, in kube-proxy's design.

Each sync renders the desired state (``rules.ProxyRenderer``: pure in what it returns, re-rendering only
changed service ports), then programs the difference from what it remembers programming with one
``iptables-restore --noflush`` (nat and filter, each committed atomically): only new or changed chains
are declared (so replaced whole), hooks not in place are fixed, and chains no longer wanted are flushed
and deleted after their referrers were rewritten in the same commit. The hairpin set ``KR-PX-LOOPBACK``
is brought up to date by ``ipset restore`` before that commit (created first, so no rule ever names a
missing set), and sets no longer wanted are destroyed after it. Then, with the new rules in place,
UDP conntrack entries that still point at removed endpoints are deleted, and the health-check ports of
Local load-balancer services are opened, updated or closed.

Invariants:
- kr touches only chains named ``KR-PX-*`` in the nat and filter tables, plus the six hook jumps into
  ``KR-PX-SERVICES``, ``KR-PX-POSTROUTING`` and ``KR-PX-FILTER``, and ipsets named ``KR-PX-*``;
  ``IptablesRestore`` refuses anything else, and ``cleanup`` removes exactly these (chains from both
  iptables flavours);
- a full sync (the first, a periodic one, or the one after a failure) re-reads both tables
  (``iptables-save -t nat``, ``-t filter``) and kr's sets (``ipset save``) and converges; a partial sync trusts memory, so the kernel is
  not listed on every sync; rule specs are in ``iptables-save``'s form, so unchanged chains are never
  rewritten (and keep their counters);
- conntrack entries are deleted only for changes this process saw (never on the first sync after a
  start), so restarting kr drops no flow.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

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
from kr_plugins.kernel.sysctl import PROC_SYS, ensure_sysctl
from kr_plugins.proxy.flows import UdpTargets, clear_stale_flows
from kr_plugins.proxy.healthcheck import HealthCheckServers, health_targets
from kr_plugins.proxy.options import ProxyError, add_proxy_options, proxy_settings
from kr_plugins.proxy.rules import PREFIX, ProxyRenderer, check_consistency, hooks

log = logging.getLogger(__name__)

NAME = "proxy.iptables"
TABLES = ("nat", "filter")
#: Service traffic between two pods on one bridge must pass iptables for its replies to be un-NATed.
BRIDGE_NF_CALL = "net/bridge/bridge-nf-call-iptables"


def owned(name: str) -> bool:
    """Whether a chain or an ipset is the proxy's."""
    return name.startswith(PREFIX + "-")


class IptablesProxy(Backend):
    def __init__(self, context: BackendContext) -> None:
        self.settings = proxy_settings(context.config.options)
        self._renderer = ProxyRenderer(self.settings)
        self._flavour = DetectedFlavour("proxy")
        self._programmed: dict[str, TableState] | None = None  # None: unknown, re-read the kernel
        self._sets: dict[str, IPSetSpec] | None = None  # kr's ipsets as programmed; None: unknown
        self._udp: dict[str, UdpTargets] | None = None  # None: not known since this process started
        self._health = HealthCheckServers()

    @property
    def flavour(self) -> Flavour:
        return self._flavour.get()

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
        reread = full or self._programmed is None or self._sets is None
        if reread:
            self._read_kernel()
        programmed, sets = self._programmed, self._sets
        assert programmed is not None and sets is not None
        self._programmed = self._sets = None  # until this sync has succeeded
        changed_sets = [name for name, spec in ruleset.sets.items() if sets.get(name) != spec]
        if changed_sets:
            ipset.restore(render_sets(ruleset.sets, changed_sets, sets))
        changes = [table_change(table, ruleset.tables[table], ruleset.hooks[table], programmed[table])
                   for table in TABLES]
        check_consistency(ruleset, only={change.table: change.changed for change in changes})
        lines = IptablesRestore(self.flavour).apply(changes)
        stale = [name for name in sets if name not in ruleset.sets]
        if stale:
            ipset.restore("".join(f"destroy {name}\n" for name in stale))
        self._programmed = {table: TableState(dict(ruleset.tables[table])) for table in TABLES}
        self._sets = dict(ruleset.sets)
        log.debug("proxy sync (full=%s): %d chain(s) written, %d chain(s) removed, %d restore line(s)",
                  reread, sum(len(c.changed) for c in changes), sum(len(c.stale) for c in changes), lines)
        self._udp = clear_stale_flows(self._udp, desired)
        for problem in self._health.sync(health_targets(desired)):
            log.error("proxy: %s", problem)

    def _read_kernel(self) -> None:
        wanted = hooks()
        self._programmed = {table: parse_table_save(table_lines(run([self.flavour.save_command, "-t", table]), table),
                                                    owned, wanted[table]) for table in TABLES}
        self._sets, stray = parse_save(run(["ipset", "save"]), owned)
        if stray:
            ipset.destroy_existing(stray)

    def stop(self) -> None:
        self._health.close()

    def cleanup(self) -> None:
        failures = [failure for table in TABLES for failure in remove_owned_chains(table, owned)]
        try:
            ipset.destroy_existing(name for name in ipset.existing_sets() if owned(name))
        except KrError as exc:
            failures.append(f"ipsets: {exc}")
        self._programmed = self._sets = None
        if failures:
            raise ProxyError(f"cleanup incomplete: {'; '.join(failures)}")


@hookimpl
def kr_add_options(options: OptionRegistry) -> None:
    add_proxy_options(options)


@hookimpl
def kr_backends() -> Iterable[BackendSpec]:
    return [BackendSpec(slot="proxy", name=NAME, factory=IptablesProxy,
                        watches=frozenset({"nodes", "services", "endpointslices"}),
                        description="Services with iptables nat chains, kube-proxy semantics, incremental")]
