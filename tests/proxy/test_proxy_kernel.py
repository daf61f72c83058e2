"""proxy.iptables against a real kernel, inside network namespaces this module creates (``krpxt-<hex>``)
and always deletes, also on failure; the root namespace is never touched (tests/conftest.py checks).

- every golden ruleset loads with ``iptables-restore --noflush`` in both flavours and reads back from
  ``iptables-save`` string-identical to what the renderer produced (the invariant the backend's
  compare-by-string relies on: statistic probabilities, recent and comment quoting included);
- the real backend (tests/proxy/pxdriver.py, run inside the namespace as the agent would be) writes
  nothing on a repeated sync, only the changed chains on a change, keeps other tools' chains and rules,
  coexists with firewall.iptables' hooks, cleans up exactly its own chains from both flavours, and
  serves health-check ports.
"""

from __future__ import annotations

import json
import pickle
import re
import secrets
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from cases import CASES, EVERYTHING, GOLDEN, web, web_slice
from pxmodel import (
    NODE,
    OTHER,
    THIRD,
    desired,
    endpoint,
    endpoint_slice,
    golden_sets,
    parse_restore,
    port,
    saved_chains,
    service,
)

from kr_core.model import DesiredState
from kr_plugins.kernel.ipset import IPSetSpec, parse_save
from kr_plugins.proxy.rules import ProxyRuleset, probability, render_proxy

HERE = Path(__file__).parent
FLAVOURS = ("nft", "legacy")
SYNC_LINE = re.compile(r"proxy sync \(full=(True|False)\): (\d+) chain\(s\) written, (\d+) chain\(s\) removed, "
                       r"(\d+) restore line\(s\)")
COUNTERS = re.compile(r"\[\d+:\d+\]")

pytestmark = pytest.mark.skipif(shutil.which("ip") is None or not Path("/proc/self/ns/net").exists(),
                                reason="needs root and network namespaces")


def sh(*argv: str, check: bool = True, input_text: str | None = None) -> str:
    done = subprocess.run(argv, capture_output=True, text=True, input=input_text, timeout=60, check=False)
    if check and done.returncode != 0:
        raise AssertionError(f"{' '.join(argv)}: exit {done.returncode}: {done.stderr.strip()}")
    return done.stdout


class Netns:
    """One network namespace with its own /etc/netns files (no DNS lookups leave it)."""

    def __init__(self, workdir: Path) -> None:
        self.name = f"krpxt-{secrets.token_hex(4)}"
        self.workdir = workdir
        self.stderr = ""
        etc = Path("/etc/netns") / self.name
        etc.mkdir(parents=True, exist_ok=True)
        (etc / "resolv.conf").write_text("", encoding="ascii")
        (etc / "hosts").write_text("127.0.0.1 localhost\n", encoding="ascii")
        sh("ip", "netns", "add", self.name)
        self.ex("ip", "link", "set", "lo", "up")

    def ex(self, *argv: str, check: bool = True, input_text: str | None = None) -> str:
        return sh("ip", "netns", "exec", self.name, *argv, check=check, input_text=input_text)

    def delete(self) -> None:
        for pid in sh("ip", "netns", "pids", self.name, check=False).split():
            sh("kill", "-9", pid, check=False)
        sh("ip", "netns", "del", self.name, check=False)
        shutil.rmtree(Path("/etc/netns") / self.name, ignore_errors=True)

    def save(self, flavour: str, table: str) -> str:
        return self.ex(f"iptables-{flavour}-save", "-t", table)

    def chains(self, flavour: str, table: str) -> tuple[dict[str, list[str]], dict[str, list[str]]]:
        return saved_chains(self.save(flavour, table))

    def normalized(self, flavour: str) -> str:
        """Both tables without counters and comment lines, for before/after comparisons."""
        text = self.save(flavour, "nat") + self.save(flavour, "filter")
        return "\n".join(COUNTERS.sub("", line) for line in text.splitlines() if not line.startswith("#"))

    def driver(self, *actions: tuple[str, Any], options: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        path = self.workdir / f"actions-{secrets.token_hex(3)}.pickle"
        path.write_bytes(pickle.dumps((options or {}, list(actions))))
        done = subprocess.run(["ip", "netns", "exec", self.name, sys.executable, str(HERE / "pxdriver.py"), str(path)],
                              capture_output=True, text=True, timeout=120, check=False)
        self.stderr = done.stderr
        results = [json.loads(line) for line in done.stdout.splitlines()]
        assert done.returncode == 0 and len(results) == len(actions) and all(r["ok"] for r in results), \
            done.stderr[-4000:]
        return results


@pytest.fixture
def netns(tmp_path: Path) -> Iterator[Callable[[], Netns]]:
    made: list[Netns] = []

    def make() -> Netns:
        ns = Netns(tmp_path)
        made.append(ns)
        return ns

    try:
        yield make
    finally:
        for ns in made:
            ns.delete()


def sync_counts(result: dict[str, Any]) -> tuple[bool, int, int, int]:
    """(full, chains written, chains removed, restore lines) from a sync's debug log line."""
    (match,) = [m for line in result["log"] if (m := SYNC_LINE.search(line))]
    return match.group(1) == "True", int(match.group(2)), int(match.group(3)), int(match.group(4))


def assert_programmed(ns: Netns, ruleset: ProxyRuleset, flavour: str = "nft") -> None:
    """kr's chains and sets in the kernel are exactly ``ruleset``'s, rule for rule, and each hook is in its built-in
    chain exactly once, before any rule of another tool."""
    for table in ("nat", "filter"):
        own, other = ns.chains(flavour, table)
        assert own == {name: list(rules) for name, rules in ruleset.tables[table].items()}, table
        for chain, spec in ruleset.hooks[table]:
            rules = other[chain]
            assert rules.count(spec) == 1, (chain, rules)
            assert all(r.split(" -j ")[-1].startswith("KR-") for r in rules[:rules.index(spec)]), (chain, rules)
    assert parse_save(ns.ex("ipset", "save"), lambda name: name.startswith("KR-PX-"))[0] == dict(ruleset.sets)


# --- what iptables-save prints is what the renderer wrote


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_golden_rulesets_read_back_string_identical(netns: Callable[[], Netns], flavour: str) -> None:
    ns = netns()
    for case in sorted(CASES):
        text = (GOLDEN / f"{case}.txt").read_text(encoding="utf-8")
        objects, settings = CASES[case]
        ruleset = render_proxy(desired(objects), settings)
        tables, case_hooks = parse_restore(text)
        assert tables == {t: {n: list(r) for n, r in c.items()} for t, c in ruleset.tables.items()}, case
        sets = golden_sets(text)
        assert sets == {name: (spec.type, sorted(spec.members)) for name, spec in ruleset.sets.items()}, case
        ns.ex("ipset", "restore", input_text="".join(
            f"create {name} {set_type}\n" + "".join(f"add {name} {m}\n" for m in members)
            for name, (set_type, members) in sets.items()))
        assert parse_save(ns.ex("ipset", "save"), lambda name: name.startswith("KR-PX-"))[0] == {
            name: IPSetSpec(spec.type, spec.members) for name, spec in ruleset.sets.items()}, f"{case}: sets"
        ns.ex(f"iptables-{flavour}-restore", "--noflush", input_text=text)
        for table in ("nat", "filter"):
            own, other = ns.chains(flavour, table)
            assert own == tables[table], f"{case}: {flavour} {table} reads back differently"
            for chain, spec in case_hooks[table]:
                assert other[chain] == [spec], (case, chain)
        # take it all out again before the next case: the hooks first, then every chain
        removal = []
        for table in ("nat", "filter"):
            removal += [f"*{table}", *(f"-D {chain} {spec}" for chain, spec in case_hooks[table])]
            removal += [f"-F {name}" for name in tables[table]] + [f"-X {name}" for name in tables[table]]
            removal.append("COMMIT")
        ns.ex(f"iptables-{flavour}-restore", "--noflush", input_text="\n".join(removal) + "\n")
        ns.ex("ipset", "restore", input_text="".join(f"destroy {name}\n" for name in sets))
        assert "KR-PX" not in ns.save(flavour, "nat") + ns.save(flavour, "filter") + ns.ex("ipset", "save"), case
    # every probability a balancing chain of up to 1,000 endpoints uses reads back as rendered
    rules = [f"-m statistic --mode random --probability {probability(1 / n)} -j RETURN" for n in range(2, 1001)]
    ns.ex(f"iptables-{flavour}-restore", "--noflush", input_text="*nat\n:KR-PX-PROBE - [0:0]\n"
          + "".join(f"-A KR-PX-PROBE {rule}\n" for rule in rules) + "COMMIT\n")
    assert ns.chains(flavour, "nat")[0] == {"KR-PX-PROBE": rules}


# --- the backend


def changed_state() -> tuple[DesiredState, DesiredState]:
    """EVERYTHING, and EVERYTHING with web losing an endpoint, "local" losing all of its (so its
    chains go) and "gone" getting one."""
    before = desired(EVERYTHING)
    objects = [obj for obj in EVERYTHING if obj["metadata"]["name"] not in ("web-a", "local-a")]
    objects += [web_slice("web", endpoint("10.244.1.5", NODE), endpoint("10.244.2.5", OTHER)),
                web_slice("gone", endpoint("10.244.2.7", OTHER))]
    return before, desired(objects)


def chain_delta(old: ProxyRuleset, new: ProxyRuleset) -> tuple[int, int]:
    """(chains new or changed, chains gone) between two rulesets."""
    written = sum(new.tables[t][n] != old.tables[t].get(n) for t in new.tables for n in new.tables[t])
    removed = sum(n not in new.tables[t] for t in old.tables for n in old.tables[t])
    return written, removed


def test_backend_writes_only_what_changed_and_keeps_other_tools_rules(netns: Callable[[], Netns]) -> None:
    ns = netns()
    ns.ex("iptables", "-t", "nat", "-N", "FOREIGN")
    ns.ex("iptables", "-t", "nat", "-A", "FOREIGN", "-p", "tcp", "--dport", "9", "-j", "RETURN")
    ns.ex("iptables", "-t", "nat", "-A", "PREROUTING", "-j", "FOREIGN")
    ns.ex("iptables", "-t", "filter", "-A", "FORWARD", "-s", "10.9.9.9/32", "-j", "DROP")
    before, after = changed_state()
    r_before, r_after = render_proxy(before), render_proxy(after)
    total = sum(len(chains) for chains in r_before.tables.values())
    results = ns.driver(("sync", (before, True)), ("sync", (before, False)), ("sync", (after, False)))
    assert sync_counts(results[0])[:3] == (True, total, 0)
    assert sync_counts(results[1]) == (False, 0, 0, 0)
    written, removed = chain_delta(r_before, r_after)
    assert 0 < written < total and removed > 0
    assert sync_counts(results[2])[:3] == (False, written, removed)
    assert_programmed(ns, r_after)
    # a new process (a restarted agent) reads the kernel back and finds nothing to do
    (again,) = ns.driver(("sync", (after, True)))
    assert sync_counts(again) == (True, 0, 0, 0)
    # the other tool's chain and rules survived, after kr's hooks
    nat = ns.chains("nft", "nat")[1]
    assert nat["FOREIGN"] == ["-p tcp -m tcp --dport 9 -j RETURN"]
    assert nat["PREROUTING"] == ['-m comment --comment "kr: service portals" -j KR-PX-SERVICES', "-j FOREIGN"]
    assert ns.chains("nft", "filter")[1]["FORWARD"][-1] == "-s 10.9.9.9/32 -j DROP"
    # another tool inserting itself first pushes kr's hook down: a full sync puts it back first (once)
    ns.ex("iptables", "-t", "nat", "-I", "PREROUTING", "1", "-j", "FOREIGN")
    ns.ex("iptables", "-t", "nat", "-A", "PREROUTING", "-m", "comment", "--comment", "kr: service portals",
          "-j", "KR-PX-SERVICES")
    partial, full = ns.driver(("sync", (after, False)), ("sync", (after, True)))
    assert sync_counts(partial)[0] is True  # a new process knows nothing: its first sync reads the kernel
    assert sync_counts(full) == (True, 0, 0, 0)
    assert ns.chains("nft", "nat")[1]["PREROUTING"] == [
        '-m comment --comment "kr: service portals" -j KR-PX-SERVICES', "-j FOREIGN", "-j FOREIGN"]
    assert_programmed(ns, r_after)


def test_backend_coexists_with_the_firewall_and_cleans_up_only_its_own(netns: Callable[[], Netns]) -> None:
    ns = netns()
    fw_state = DesiredState(node_name=NODE)
    # another tool's rules, in both flavours, and the firewall's chains and hooks
    for flavour in FLAVOURS:
        ns.ex(f"iptables-{flavour}", "-t", "nat", "-N", "FOREIGN")
        ns.ex(f"iptables-{flavour}", "-t", "nat", "-A", "POSTROUTING", "-j", "FOREIGN")
        ns.ex(f"iptables-{flavour}", "-t", "filter", "-A", "FORWARD", "-s", "10.9.9.9/32", "-j", "DROP")
    ns.ex("ipset", "create", "FOREIGN-SET", "hash:ip")
    ns.driver(("fw-sync", (fw_state, True)))
    baseline = {flavour: ns.normalized(flavour) for flavour in FLAVOURS}
    sets_before = ns.ex("ipset", "list", "-n")
    assert "KR-FW" in baseline["nft"] and "KR-FW" not in baseline["legacy"]

    def hook_order() -> dict[str, list[str]]:
        _, other = ns.chains("nft", "filter")
        order = {chain: [r.split(" -j ")[-1] for r in other[chain]] for chain in ("INPUT", "FORWARD", "OUTPUT")}
        for chain, targets in order.items():
            assert targets.count("KR-FW") == 1 and targets.count("KR-PX-FILTER") == 1, (chain, targets)
            assert set(targets[:2]) == {"KR-FW", "KR-PX-FILTER"}, (chain, targets)
        return order

    state, _ = changed_state()
    ns.driver(("sync", (state, True)))
    first = hook_order()
    for round_ in range(2):  # each backend's full sync, in a new process each time, moves nothing
        (proxy,) = ns.driver(("sync", (state, True)))
        assert sync_counts(proxy) == (True, 0, 0, 0)
        assert hook_order() == first, round_
        results = ns.driver(("fw-sync", (fw_state, True)), ("sync", (state, True)), ("fw-sync", (fw_state, True)))
        assert sync_counts(results[1]) == (True, 0, 0, 0)
        assert hook_order() == first, round_
    assert_programmed(ns, render_proxy(state))
    # leftovers of a run on the other flavour: cleanup removes them too
    ns.ex("iptables-legacy-restore", "--noflush", input_text=(GOLDEN / "etp-local.txt").read_text(encoding="utf-8"))
    assert "KR-PX" in ns.normalized("legacy")
    assert "KR-PX-LOOPBACK" in ns.ex("ipset", "list", "-n")
    ns.driver(("cleanup", None), ("cleanup", None))
    for flavour in FLAVOURS:
        assert ns.normalized(flavour) == baseline[flavour], flavour
    assert ns.ex("ipset", "list", "-n") == sets_before  # the firewall's sets and the foreign one stay


def test_health_check_ports_report_local_endpoints(netns: Callable[[], Netns]) -> None:
    ns = netns()

    def lb(*endpoints: dict[str, Any]) -> DesiredState:
        return desired([*EVERYTHING[:3],
                        web("shop", "10.96.0.30", type="LoadBalancer", node_port=30030, etp="Local",
                            health_port=32030, lb_ips=["198.51.100.30"]),
                        web_slice("shop", *endpoints)])

    local = lb(endpoint("10.244.1.30", NODE), endpoint("10.244.1.31", NODE), endpoint("10.244.2.30", OTHER))
    remote = lb(endpoint("10.244.2.30", OTHER))
    none = desired(EVERYTHING[:3])
    results = ns.driver(("sync", (local, True)), ("http", 32030), ("sync", (remote, False)), ("http", 32030),
                        ("sync", (local, False)), ("http", 32030), ("sync", (none, False)), ("http", 32030))
    healthy, unhealthy, again, gone = (r["http"] for r in results[1::2])
    body = {"service": {"namespace": "default", "name": "shop"}, "serviceProxyHealthy": True}
    assert healthy == {"status": 200, "body": {**body, "localEndpoints": 2}, "weight": "2"}
    assert unhealthy == {"status": 503, "body": {**body, "localEndpoints": 0}, "weight": "0"}
    assert again["status"] == 200 and again["body"]["localEndpoints"] == 2
    assert gone["status"] is None and "refused" in gone["error"].lower()



def test_a_dual_stack_service_syncs(netns: Callable[[], Netns]) -> None:
    ns = netns()
    objects, _ = CASES["ipv6-skipped"]
    v6 = endpoint_slice("dual", "dual-6", [("http", "TCP", 80)], [endpoint("fd00:10:244:1::5", NODE)],
                        address_type="IPv6")
    ns.driver(("sync", (desired([*objects, v6]), True)))
    assert_programmed(ns, render_proxy(desired(objects)))


def test_opening_a_health_check_port_does_not_wait_for_dns(netns: Callable[[], Netns]) -> None:
    ns = netns()
    (Path("/etc/netns") / ns.name / "resolv.conf").write_text("nameserver 127.0.0.1\noptions timeout:1 attempts:1\n",
                                                              encoding="ascii")
    state = desired([*EVERYTHING[:3], web("shop", "10.96.0.30", type="LoadBalancer", node_port=30030, etp="Local",
                                          health_port=32030), web_slice("shop", endpoint("10.244.1.30", NODE))])
    _, sync, check = ns.driver(("mute-dns", None), ("sync", (state, True)), ("http", 32030))
    assert check["http"]["status"] == 200
    assert sync["ms"] < 800, f"the sync took {sync['ms']} ms"


def test_stale_udp_flows_are_deleted_from_the_kernel(netns: Callable[[], Netns]) -> None:
    """The node itself talks UDP to two ClusterIPs: one whose endpoint is replaced (its NATed flow must go,
    so the next packet reaches the new endpoint), one that had no rules at all and now gets an endpoint
    (its un-NATed flow must go); a flow to an address that is no service stays."""
    ns = netns()
    ns.ex("ip", "route", "add", "10.96.0.0/16", "dev", "lo")  # the node's route covering the service range
    for address in ("10.244.2.5", "10.244.3.5"):  # endpoints as local addresses: delivered, so confirmed
        ns.ex("ip", "addr", "add", f"{address}/32", "dev", "lo")

    def dns(name: str, ip: str, *endpoints: dict[str, Any]) -> list[dict[str, Any]]:
        return [service(name, ip, [port(53, "dns", "UDP")]),
                endpoint_slice(name, f"{name}-a", [("dns", "UDP", 5353)], endpoints)]

    first = desired([*EVERYTHING[:3], *dns("one", "10.96.0.53", endpoint("10.244.2.5", OTHER))])
    then = desired([*EVERYTHING[:3], *dns("one", "10.96.0.53", endpoint("10.244.3.5", THIRD)),
                    *dns("two", "10.96.0.54", endpoint("10.244.2.5", OTHER))])
    results = ns.driver(("sync", (first, True)),
                        ("udp", ("10.96.0.53", 53, 40001)), ("udp", ("10.96.0.54", 53, 40002)),
                        ("udp", ("10.96.0.99", 53, 40003)), ("flows", None),
                        ("sync", (then, False)), ("flows", None),
                        ("udp", ("10.96.0.53", 53, 40001)), ("udp", ("10.96.0.54", 53, 40002)), ("flows", None))
    before, after, again = results[4]["flows"], results[6]["flows"], results[9]["flows"]
    assert before == [["10.96.0.53", "40001", "10.244.2.5"], ["10.96.0.54", "40002", "10.96.0.54"],
                      ["10.96.0.99", "40003", "10.96.0.99"]]
    assert after == [["10.96.0.99", "40003", "10.96.0.99"]]
    assert again == [["10.96.0.53", "40001", "10.244.3.5"], ["10.96.0.54", "40002", "10.244.2.5"],
                     ["10.96.0.99", "40003", "10.96.0.99"]]
    assert any("deleted 1 stale UDP conntrack entry" in line for line in results[5]["log"])
