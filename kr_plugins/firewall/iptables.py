"""``firewall.iptables``: NetworkPolicy enforcement with iptables and ipsets, in the namespace kr runs in.

Each sync compiles the desired state (``compile.FirewallCompiler``: pure in what it returns, and
cheap when little changed), then programs the difference
from what it remembers programming:

1. one ``ipset restore``, fed while the compile runs (``SetLoader``): every new or changed set, as
   edits when few members change, else filled into ``<name>-tmp`` and swapped into place;
2. one ``iptables-restore --noflush``: declare (so replace whole) only new or changed chains, insert the
   hook jumps where missing, then flush and delete chains no longer wanted (their last referrers were
   rewritten earlier in the same commit);
3. ``ipset restore`` adding new pods' addresses to ``KR-FW-KNOWN`` (only now that their chains exist),
   and destroying sets no longer wanted (the kernel refuses while a rule uses them).

Invariants:
- kr touches only chains named ``KR-FW`` or ``KR-FW-*`` and sets named ``KR-FW-*`` (plus the three hook
  jumps into ``KR-FW``); ``IptablesRestore`` refuses anything else;
- a full sync (or the first one, or the one after a failure) re-reads the kernel (one ``iptables-save``
  of the filter table, one ``ipset save``) and converges: a chain or set that differs from the wanted one
  is rewritten, a hook that is missing, duplicated or behind another tool's rule is fixed; a partial
  sync trusts memory;
- the rule specs are in ``iptables-save``'s own form, so an unchanged chain is never rewritten and its
  counters (rejected packets) survive syncs;
- the iptables flavour is detected once per backend and kept; ``cleanup`` removes kr's firewall from
  both flavours, and nothing else.

python-iptables is not used: it drives only the legacy flavour and is ~80x slower than one restore
(see /work/shared/KERNEL-NOTES.md).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import click

from kr_core.backends import Backend, BackendContext, BackendSpec
from kr_core.changes import ChangeSet
from kr_core.config import OptionRegistry
from kr_core.errors import KrError
from kr_core.hookspecs import hookimpl
from kr_core.model import DesiredState
from kr_plugins.firewall.compile import (
    KNOWN_SET,
    PREFIX,
    FirewallCompiler,
    FirewallSettings,
    IPSetSpec,
    check_consistency,
    hooks,
)
from kr_plugins.kernel import ipset
from kr_plugins.kernel.command import Feed, run
from kr_plugins.kernel.ipset import parse_save, render_sets
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

log = logging.getLogger(__name__)

NAME = "firewall.iptables"
TABLE = "filter"


class FirewallError(KrError):
    """The firewall could not be programmed."""


def owned_chain(name: str) -> bool:
    return name == PREFIX or name.startswith(PREFIX + "-")


def owned_set(name: str) -> bool:
    return name.startswith(PREFIX + "-")


def firewall_settings(options: Mapping[str, Any]) -> FirewallSettings:
    """The backend's settings from parsed options (their Python names), defaulting what is absent."""
    return FirewallSettings(nflog_group=int(options.get("firewall_nflog_group", 100)),
                            log_rate=str(options.get("firewall_log_rate", "10/second")))


# --- what the kernel holds


@dataclass(slots=True)
class Programmed:
    """kr's firewall as the kernel holds it (or as kr last programmed it)."""

    table: TableState = field(default_factory=TableState)
    sets: dict[str, IPSetSpec] = field(default_factory=dict)
    stray_sets: list[str] = field(default_factory=list)  # temporary sets a crash left behind


# --- sets


class SetLoader:
    """Loads each new or changed set into the kernel as the compiler produces it, through one
    ``ipset restore`` fed while the compile goes on: the kernel's work overlaps Python's, so a sync
    that writes many sets costs about the larger of the two, not their sum.

    ``KR-FW-KNOWN`` is loaded shrunk to the addresses it already holds (removals are safe early: an
    unknown address is rejected); the sync adds its new addresses only once the chains policing them
    are in place, so a new pod is never briefly "known" without its policy.
    """

    def __init__(self, current: Mapping[str, IPSetSpec]) -> None:
        self.current = current
        self.loaded: dict[str, IPSetSpec] = {}  # what was written, per set
        self._feed: Feed | None = None

    def add(self, name: str, spec: IPSetSpec) -> None:
        now = self.current.get(name)
        if name == KNOWN_SET:
            spec = IPSetSpec(spec.type, spec.members & now.members if now is not None else frozenset())
        if spec == now:
            return
        if self._feed is None:
            self._feed = ipset.restore_feed()
        self._feed.write(render_sets({name: spec}, [name], self.current))
        self.loaded[name] = spec

    def close(self) -> None:
        """Wait until everything written is loaded; raise if ``ipset restore`` failed."""
        if self._feed is not None:
            self._feed.close()


# --- the backend


class IptablesFirewall(Backend):
    def __init__(self, context: BackendContext) -> None:
        self.settings = firewall_settings(context.config.options)
        self._compiler = FirewallCompiler(self.settings)
        self._flavour = DetectedFlavour("firewall")
        self._programmed: Programmed | None = None  # None: unknown, re-read the kernel before trusting it

    @property
    def flavour(self) -> Flavour:
        return self._flavour.get()

    def start(self) -> None:
        """Detect the iptables flavour now, so missing tools fail the start, not the first sync."""
        log.debug("firewall starting with iptables-%s", self.flavour.value)

    def sync(self, desired: DesiredState, *, full: bool, changed: ChangeSet) -> None:
        iptables = IptablesRestore(self.flavour)
        reread = full or self._programmed is None
        programmed = self._read_kernel() if reread else self._programmed
        assert programmed is not None
        self._programmed = None  # until this sync has succeeded
        loader = SetLoader(programmed.sets)
        try:
            ruleset = self._compiler.compile(desired, on_set=loader.add)
        finally:
            loader.close()
        check_consistency(ruleset)
        iptables.apply([table_change(TABLE, ruleset.chains, ruleset.hooks, programmed.table)])
        known = loader.loaded.get(KNOWN_SET, programmed.sets.get(KNOWN_SET))
        if known != ruleset.sets[KNOWN_SET]:
            ipset.restore(render_sets(ruleset.sets, [KNOWN_SET], {KNOWN_SET: known} if known else {}))
        stale_sets = [name for name in programmed.sets if name not in ruleset.sets] + programmed.stray_sets
        if stale_sets:
            ipset.restore("".join(f"destroy {name}\n" for name in stale_sets))
        stale_chains = sum(name not in ruleset.chains for name in programmed.table.chains)
        changed_chains = sum(programmed.table.chains.get(n) != r for n, r in ruleset.chains.items())
        log.debug("firewall sync (full=%s): %d set(s) written, %d chain(s) written, %d chain(s) and %d set(s) "
                  "removed", reread, len(loader.loaded), changed_chains, stale_chains, len(stale_sets))
        self._programmed = Programmed(TableState(dict(ruleset.chains)), dict(ruleset.sets))

    def _read_kernel(self) -> Programmed:
        save = run([self.flavour.save_command, "-t", TABLE])
        sets, stray = parse_save(run(["ipset", "save"]), owned_set)
        return Programmed(parse_table_save(table_lines(save, TABLE), owned_chain, hooks()), sets, stray)

    def cleanup(self) -> None:
        failures = remove_owned_chains(TABLE, owned_chain)
        try:
            ipset.destroy_existing(name for name in ipset.existing_sets() if owned_set(name))
        except Exception as exc:
            failures.append(f"ipsets: {exc}")
        self._programmed = None
        if failures:
            raise FirewallError(f"cleanup incomplete: {'; '.join(failures)}")


@hookimpl
def kr_add_options(options: OptionRegistry) -> None:
    options.add(click.Option(
        ["--firewall-nflog-group"], type=click.IntRange(0, 65535), default=100, show_default=True,
        help="NFLOG group that rejected pod traffic is logged to (rate-limited); 0 turns logging off."))
    options.add(click.Option(
        ["--firewall-log-rate"], default="10/second", show_default=True,
        help="Most NFLOG messages per reject site, as iptables' --limit (N/second, N/minute, ...)."))


@hookimpl
def kr_backends() -> Iterable[BackendSpec]:
    return [BackendSpec(slot="firewall", name=NAME, factory=IptablesFirewall,
                        watches=frozenset({"nodes", "pods", "namespaces", "networkpolicies"}),
                        description="NetworkPolicy with iptables chains and ipsets, fail-closed for unknown pods")]
