"""Unit tests of the pod egress rendering: golden ipset and iptables-restore input, and their consistency.

To regenerate the golden files after an intended change, run
``KR_UPDATE_GOLDEN=1 .venv/bin/python -m pytest tests/routing/test_egress_render.py`` and review the diff.
"""

from __future__ import annotations

import os
import re
import shlex
from pathlib import Path

import pytest

from kr_plugins.kernel.iptables import check_owned
from kr_plugins.routing.egress import EgressPlan, render_egress_rules, render_pod_subnets

GOLDEN = Path(__file__).parent / "golden"
UPDATE = os.environ.get("KR_UPDATE_GOLDEN") == "1"
PLAN = EgressPlan(pod_subnets=("10.244.1.0/24", "10.244.2.0/24", "10.244.3.0/24"), sources=("10.244.1.0/24",))
SAVED_JUMP = '-A POSTROUTING -m comment --comment "kr: masquerade pod egress" -j KR-POD-EGRESS'


def golden(name: str, actual: str) -> None:
    path = GOLDEN / name
    if UPDATE:
        path.write_text(actual, encoding="utf-8")
    assert actual == path.read_text(encoding="utf-8")


def test_golden_pod_subnets_set() -> None:
    golden("pod-subnets.ipset", render_pod_subnets(PLAN))


def test_golden_rules_first_sync() -> None:
    golden("egress-first.iptables", render_egress_rules(PLAN, add_jump=True))


def test_golden_rules_with_the_jump_in_place_and_a_duplicate_to_drop() -> None:
    golden("egress-dedup.iptables", render_egress_rules(PLAN, add_jump=False, extra_jumps=[SAVED_JUMP]))


@pytest.mark.parametrize("add_jump", [True, False])
def test_rules_are_consistent_and_touch_only_krs_chains(add_jump: bool) -> None:
    rules = render_egress_rules(PLAN, add_jump=add_jump, extra_jumps=[SAVED_JUMP])
    check_owned(rules)
    declared = set(re.findall(r"^:(\S+)", rules, re.MULTILINE))
    for line in rules.splitlines():
        words = shlex.split(line) if line.startswith("-") else []
        if "-j" in words:
            target = words[words.index("-j") + 1]
            assert target in declared or not target.startswith("KR-"), line  # kr's chains are declared
        if "--match-set" in words:
            assert f"create {words[words.index('--match-set') + 1]} " in render_pod_subnets(PLAN), line
    assert rules.count("-I POSTROUTING") == (1 if add_jump else 0)


def test_a_node_without_pod_cidr_masquerades_nothing() -> None:
    rules = render_egress_rules(EgressPlan(pod_subnets=("10.244.2.0/24",), sources=()), add_jump=False)
    assert "MASQUERADE" not in rules and "-j RETURN" in rules
