"""Pod egress masquerade, as kube-router's ``--enable-pod-egress``: pod traffic leaving the cluster takes
the node's address.

Role: the pure ``render_pod_subnets`` and ``render_egress_rules`` say what the ipset and the nat chain
hold; ``PodEgress`` applies them (one ``ipset restore`` swap, then one ``iptables-restore --noflush``) and
removes them.

What it programs, in the nat table of the flavour the host uses::

    POSTROUTING  -> KR-POD-EGRESS (one jump, inserted first)
    KR-POD-EGRESS: destination in set kr-pod-subnets (every node's pod CIDRs) -> RETURN
                   source in this node's pod CIDR(s)                         -> MASQUERADE

Invariants:
- kr owns the chain, the one jump into it and the set; it never declares, flushes or reorders any other
  chain, and checks the jump is there exactly once by listing POSTROUTING on every full sync;
- the set is filled before the rules that use it and swapped whole, and the chain is replaced whole in
  one commit, so no packet ever sees a half-written state;
- removal deletes the jump and chain before the set (the kernel keeps a referenced set).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

from kr_plugins.kernel import ipset
from kr_plugins.kernel.iptables import (
    DetectedFlavour,
    Flavour,
    IptablesRestore,
    jumps_into,
    remove_owned_chains,
    render_removal,
    table_lines,
)

log = logging.getLogger(__name__)

CHAIN = "KR-POD-EGRESS"
POD_SUBNETS_SET = "kr-pod-subnets"
TABLE = "nat"
HOOK_CHAIN = "POSTROUTING"
JUMP_SPEC = f'-m comment --comment "kr: masquerade pod egress" -j {CHAIN}'


@dataclass(frozen=True, slots=True)
class EgressPlan:
    """``pod_subnets``: every node's IPv4 pod CIDRs; ``sources``: this node's, to masquerade from."""

    pod_subnets: tuple[str, ...]
    sources: tuple[str, ...]


def render_pod_subnets(plan: EgressPlan) -> str:
    """``ipset restore`` input making ``kr-pod-subnets`` hold every pod CIDR."""
    return ipset.render_swap(POD_SUBNETS_SET, "hash:net", plan.pod_subnets)


def render_egress_rules(plan: EgressPlan, add_jump: bool, extra_jumps: Sequence[str] = ()) -> str:
    """``iptables-restore --noflush`` input replacing kr's chain whole.

    ``add_jump`` inserts the jump from POSTROUTING (when none is there); ``extra_jumps`` are saved
    copies of it beyond the first (``-A ...`` lines), deleted by the same commit.
    """
    lines = [
        f"*{TABLE}",
        f":{CHAIN} - [0:0]",
        f'-A {CHAIN} -m set --match-set {POD_SUBNETS_SET} dst -m comment --comment "kr: pod to pod keeps its source"'
        " -j RETURN",
        *(f'-A {CHAIN} -s {cidr} -m comment --comment "kr: pod egress leaves with the node address"'
          " -j MASQUERADE" for cidr in plan.sources),
    ]
    if add_jump:
        lines.append(f"-I {HOOK_CHAIN} 1 {JUMP_SPEC}")
    lines += [f"-D {line[3:]}" for line in extra_jumps]
    return "\n".join([*lines, "COMMIT", ""])


class PodEgress:
    """kr's pod egress set, chain and jump in one network namespace."""

    def __init__(self) -> None:
        self._flavour = DetectedFlavour("pod egress")
        self._applied: EgressPlan | None = None
        self._known = False  # whether _applied reflects the kernel (else read it before relying on it)

    @property
    def flavour(self) -> Flavour:
        """The iptables flavour this namespace uses, detected once and kept."""
        return self._flavour.get()

    def sync(self, plan: EgressPlan | None, full: bool) -> None:
        """Converge on ``plan`` (None: egress masquerade off, remove kr's set, chain and jump)."""
        if self._known and not full and plan == self._applied:
            return
        trusted = self._applied if self._known and not full else None  # what is surely programmed
        self._known = False  # until this sync has succeeded
        iptables = IptablesRestore(self.flavour)
        if plan is None:
            _remove(iptables)
        else:
            if trusted is None or plan.pod_subnets != trusted.pod_subnets:
                ipset.restore(render_pod_subnets(plan))
            if trusted is None:  # list the hook chain, not the whole (maybe huge) ruleset
                jumps = jumps_into(iptables.list_rules(TABLE, HOOK_CHAIN), CHAIN)
                iptables.restore(render_egress_rules(plan, add_jump=not jumps, extra_jumps=jumps[1:]))
            elif plan.sources != trusted.sources:  # a node joining or leaving changes only the set
                iptables.restore(render_egress_rules(plan, add_jump=False))
        self._applied = plan
        self._known = True

    def cleanup(self) -> None:
        """Remove kr's chain, jump and set, from whichever flavour holds them."""
        failures = remove_owned_chains(TABLE, lambda chain: chain == CHAIN)
        _remove_sets()
        self._applied, self._known = None, True
        if failures:
            raise RuntimeError(f"pod egress cleanup incomplete: {'; '.join(failures)}")


def _remove(iptables: IptablesRestore) -> None:
    _remove_rules(iptables)
    _remove_sets()


def _remove_rules(iptables: IptablesRestore) -> None:
    text = render_removal(TABLE, table_lines(iptables.save(), TABLE), [CHAIN])
    if text is not None:
        iptables.restore(text)


def _remove_sets() -> None:
    ipset.destroy_existing([POD_SUBNETS_SET, ipset.temp_name(POD_SUBNETS_SET)])
