#!/usr/bin/env python
"""Where a firewall sync spends its CPU, without the kernel: the objects of firewall_scale.py, then
``build_desired_state`` -> ``compile_firewall`` -> ``check_consistency`` -> diff/render -> ``check_owned``,
timed step by step (median of --runs) and profiled with cProfile (top functions by own time).

    .venv/bin/python benchmarks/firewall_profile.py [--policies 1000 --namespaces 100 --pods 5000 --local-pods 110]
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from firewall_scale import NODE, generate, snapshot_of

from kr_core.desired import build_desired_state
from kr_plugins.firewall.compile import check_consistency, compile_firewall
from kr_plugins.firewall.iptables import TABLE, Programmed, render_sets
from kr_plugins.kernel.iptables import TableState, check_owned, table_change


def render_chains(ruleset, programmed):
    """The restore lines the backend streams for ``ruleset`` over ``programmed``, as one text."""
    return "\n".join(table_change(TABLE, ruleset.chains, ruleset.hooks, programmed.table).lines())


def steps(snapshot):
    timings = {}
    t = time.perf_counter()
    desired = build_desired_state(snapshot, NODE)
    timings["build_desired_state"] = time.perf_counter() - t
    t = time.perf_counter()
    ruleset = compile_firewall(desired)
    timings["compile_firewall"] = time.perf_counter() - t
    t = time.perf_counter()
    check_consistency(ruleset)
    timings["check_consistency"] = time.perf_counter() - t
    t = time.perf_counter()
    unchanged = Programmed(TableState(dict(ruleset.chains)), dict(ruleset.sets))
    [n for n, s in ruleset.sets.items() if unchanged.sets.get(n) != s]
    render_chains(ruleset, unchanged)
    timings["diff (partial, nothing changed)"] = time.perf_counter() - t
    t = time.perf_counter()
    sets_text = render_sets(ruleset.sets, list(ruleset.sets), {})
    chains_text = render_chains(ruleset, Programmed(TableState(hook_fixes={hook: [] for hook in ruleset.hooks})))
    timings["render all (full, empty kernel)"] = time.perf_counter() - t
    t = time.perf_counter()
    check_owned(chains_text)
    timings["check_owned (full restore text)"] = time.perf_counter() - t
    return timings, ruleset, len(sets_text) + len(chains_text)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--policies", type=int, default=1000)
    parser.add_argument("--namespaces", type=int, default=100)
    parser.add_argument("--pods", type=int, default=5000)
    parser.add_argument("--local-pods", type=int, default=110)
    parser.add_argument("--pods-per-node", type=int, default=110)
    parser.add_argument("--seed", type=int, default=4)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--top", type=int, default=25)
    args = parser.parse_args()
    snapshot = snapshot_of(generate(args))

    runs = [steps(snapshot)[0] for _ in range(args.runs)]
    print(f"median of {args.runs} runs (ms):")
    total = 0.0
    for name in runs[0]:
        ms = statistics.median(r[name] for r in runs) * 1000
        total += ms
        print(f"  {name:36s} {ms:8.1f}")
    print(f"  {'total':36s} {total:8.1f}")

    profile = cProfile.Profile()
    profile.enable()
    steps(snapshot)
    profile.disable()
    out = io.StringIO()
    stats = pstats.Stats(profile, stream=out)
    stats.sort_stats("tottime").print_stats(args.top)
    stats.sort_stats("cumulative").print_stats(args.top)
    print(out.getvalue())
    return 0


if __name__ == "__main__":
    sys.exit(main())
