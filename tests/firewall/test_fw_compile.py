"""Golden and semantic tests of the pure compile step (``kr_plugins.firewall.compile``).

Regenerate the golden files after an intended change with
``KR_UPDATE_GOLDEN=1 .venv/bin/python -m pytest tests/firewall/test_fw_compile.py`` and review the diff.
"""

from __future__ import annotations

import os
import random
import shlex
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from fwmodel import (  # noqa: E402
    EGRESS, INGRESS, SCTP, TCP, UDP, block, describe, ns, peer, pod, policy, port, rule, sel, sorted_members, state,
)

from kr_core.model import NetworkPolicy  # noqa: E402
from kr_plugins.firewall.compile import (  # noqa: E402
    MAX_CHAIN, MAX_SET, FirewallRuleset, FirewallSettings, InconsistentRuleset, IPSetSpec, check_consistency,
    FirewallCompiler, compile_firewall, hooks, pod_chain, policy_chain,
)
from kr_plugins.kernel.iptables import check_owned, referenced  # noqa: E402

GOLDEN = Path(__file__).parent / "golden"
UPDATE = os.environ.get("KR_UPDATE_GOLDEN") == "1"

NAMESPACES = [ns("x", team="x"), ns("y", team="y"), ns("z")]
PODS = [
    pod("x/a", "10.244.1.2", app="a", ports=[("serve-80", 80, TCP), ("dns", 53, UDP)]),
    pod("x/b", "10.244.1.3", app="b", ports=[("serve-80", 8080, TCP)]),
    pod("y/a", "10.244.2.2", node="node-b", app="a", ports=[("serve-80", 81, TCP)]),
    pod("y/c", "10.244.1.4", app="c"),
    pod("z/a", "10.244.3.2", node="node-c", app="a"),
    pod("kube-system/host", "192.168.50.11", host_network=True, app="a"),
    pod("x/pending", None, app="a"),
]

CASES = {
    "deny-all-ingress": [policy("x/deny", ingress=[])],
    "deny-all-egress": [policy("x/deny", egress=[], types=[EGRESS])],
    "allow-all-ingress": [policy("x/allow", ingress=[rule()])],
    "pod-selector": [policy("x/p", sel(app="a"), ingress=[rule([peer(sel(app="b"))])])],
    "namespace-selector": [policy("x/p", sel(app="a"), ingress=[rule([peer(namespaces=sel(team="y"))])])],
    "pod-and-namespace": [policy("x/p", sel(app="a"), ingress=[rule([peer(sel(app="a"), sel(team="y"))])])],
    "pod-or-namespace": [policy("x/p", sel(app="a"), ingress=[rule([peer(sel(app="a")), peer(namespaces=sel(team="y"))])])],
    "empty-selectors": [policy("x/p", sel(), ingress=[rule([peer(sel(), sel())]), rule([peer(sel())])])],
    "match-expressions": [policy("x/p", sel([("app", "In", ("a", "c"))]), ingress=[
        rule([peer(sel([("app", "NotIn", ("a",))]), sel([("team", "Exists", ())]))]),
        rule([peer(namespaces=sel([("team", "DoesNotExist", ())]))])])],
    "ip-block-except": [policy("x/p", sel(app="a"), ingress=[rule([block("10.244.0.0/16", "10.244.2.0/24", "10.244.2.2/32")])],
                               egress=[rule([block("0.0.0.0/0", "10.0.0.0/8")])])],
    "ports": [policy("x/p", sel(app="a"), ingress=[rule(ports=[port(80), port(81, UDP), port(80, SCTP), port(None, UDP),
                                                                port(1000, TCP, 2000), port("serve-80"), port("dns", UDP)])])],
    "egress-named-port": [policy("x/p", sel(app="a"), egress=[rule([peer(namespaces=sel())], [port("serve-80")])])],
    "two-policies": [policy("x/p1", sel(app="a"), ingress=[rule([peer(sel(app="b"))])]),
                     policy("x/p2", sel(), ingress=[rule(ports=[port(81)])])],
    "no-local-pod-selected": [policy("z/p", sel(), ingress=[])],
}


def golden(name: str, actual: str) -> None:
    path = GOLDEN / f"{name}.txt"
    if UPDATE:
        path.write_text(actual, encoding="utf-8")
    assert actual == path.read_text(encoding="utf-8")


@pytest.mark.parametrize("case", sorted(CASES))
def test_golden(case: str) -> None:
    ruleset = compile_firewall(state(PODS, CASES[case], NAMESPACES))
    check_consistency(ruleset)
    golden(case, describe(ruleset))


def test_golden_without_logging_and_without_node() -> None:
    ruleset = compile_firewall(state(PODS, CASES["deny-all-ingress"], NAMESPACES, with_node=False),
                               FirewallSettings(nflog_group=0))
    check_consistency(ruleset)
    golden("no-log-no-node", describe(ruleset))


def test_restore_text_passes_the_ownership_check() -> None:
    for policies in CASES.values():
        ruleset = compile_firewall(state(PODS, policies, NAMESPACES))
        text = [f":{name} - [0:0]" for name in ruleset.chains]
        text += [f"-A {name} {r}" for name, rules in ruleset.chains.items() for r in rules]
        text += [f"-I {chain} 1 {spec}" for chain, spec in ruleset.hooks]
        check_owned("\n".join(["*filter", *text, "COMMIT"]))
        assert all(len(n) <= MAX_CHAIN and n.startswith("KR-FW") for n in ruleset.chains)
        assert all(len(n) <= MAX_SET and n.startswith("KR-FW") for n in ruleset.sets)


# --- semantics


def chains_of(policies, pods=PODS):  # type: ignore[no-untyped-def]
    return compile_firewall(state(pods, policies, NAMESPACES))


def test_only_local_selected_pods_get_chains_and_only_for_their_directions() -> None:
    r = chains_of([policy("x/p", sel(app="a"), ingress=[])])
    x_a = PODS[0]
    assert pod_chain(INGRESS, x_a) in r.chains
    assert pod_chain(EGRESS, x_a) not in r.chains
    assert not any(pod_chain(INGRESS, p) in r.chains for p in PODS[1:])  # y/a remote, host pod, pending
    assert r.sets["KR-FW-KNOWN"] == IPSetSpec("hash:ip", ("10.244.1.2", "10.244.1.3", "10.244.1.4"))


def test_a_pod_selected_by_two_policies_gets_both() -> None:
    p1 = policy("x/p1", sel(app="a"), ingress=[rule([peer(sel(app="b"))])])
    p2 = policy("x/p2", sel(), ingress=[rule(ports=[port(81)])])
    r = chains_of([p1, p2])
    rules = r.chains[pod_chain(INGRESS, PODS[0])]
    assert f"-j {policy_chain(INGRESS, p1)}" in rules and f"-j {policy_chain(INGRESS, p2)}" in rules
    assert r.chains[pod_chain(INGRESS, PODS[1])].count(f"-j {policy_chain(INGRESS, p1)}") == 0


def _set_members(r: FirewallRuleset, chain: str) -> list[tuple[str, ...]]:
    names = [w for rule_ in r.chains[chain] for w in [rule_.split("--match-set ")[1].split()[0]] if "--match-set" in rule_]
    return [sorted_members(r.sets[n].members) for n in names]


def test_and_versus_or_peers() -> None:
    both = policy("x/p", sel(app="a"), ingress=[rule([peer(sel(app="a"), sel(team="y"))])])
    either = policy("x/p", sel(app="a"), ingress=[rule([peer(sel(app="a")), peer(namespaces=sel(team="y"))])])
    assert _set_members(chains_of([both]), policy_chain(INGRESS, both)) == [("10.244.2.2",)]
    # x/a (app=a in the policy's namespace) OR every pod of y; never the hostNetwork or pending pods
    assert _set_members(chains_of([either]), policy_chain(INGRESS, either)) == [("10.244.1.2",), ("10.244.1.4", "10.244.2.2")]


def test_named_port_resolves_per_pod() -> None:
    p = policy("x/p", sel(), ingress=[rule(ports=[port("serve-80")])])
    r = chains_of([p])
    named = [s for n, s in r.sets.items() if n.startswith("KR-FW-N-")]
    assert named == [IPSetSpec("hash:ip,port", ("10.244.1.2,tcp:80", "10.244.1.3,tcp:8080", "10.244.2.2,tcp:81"))]
    assert any("dst,dst" in line for line in r.chains[policy_chain(INGRESS, p)])


def test_named_port_protocol_must_match() -> None:
    r = chains_of([policy("x/p", sel(), ingress=[rule(ports=[port("dns", TCP)])])])
    assert [s.members for n, s in r.sets.items() if n.startswith("KR-FW-N-")] == [frozenset()]


def test_except_cidrs_are_nomatch_and_zero_is_split() -> None:
    p = policy("x/p", sel(), egress=[rule([block("0.0.0.0/0", "10.0.0.0/8", "10.1.2.3/32")])], types=[EGRESS])
    (members,) = _set_members(chains_of([p]), policy_chain(EGRESS, p))
    assert members == ("0.0.0.0/1", "10.0.0.0/8 nomatch", "10.1.2.3 nomatch", "128.0.0.0/1")


def test_an_ip_block_fully_excepted_or_ipv6_allows_nothing() -> None:
    p = policy("x/p", sel(), ingress=[rule([block("10.0.0.0/8", "10.0.0.0/8"), block("fd00::/8")])])
    assert chains_of([p]).chains[policy_chain(INGRESS, p)] == ()


def test_empty_rule_list_denies_and_empty_rule_allows() -> None:
    deny = policy("x/p", sel(), ingress=[])
    allow = policy("x/p", sel(), ingress=[rule()])
    assert chains_of([deny]).chains[policy_chain(INGRESS, deny)] == ()
    assert chains_of([allow]).chains[policy_chain(INGRESS, allow)] == ("-j MARK --set-xmark 0x10000/0x10000",)


def test_rules_for_a_type_not_in_policy_types_have_no_effect() -> None:
    p = policy("x/p", sel(), ingress=[rule()], egress=[rule()], types=[INGRESS])
    r = chains_of([p])
    assert pod_chain(EGRESS, PODS[0]) not in r.chains and policy_chain(EGRESS, p) not in r.chains


def test_a_label_change_changes_sets_not_policy_chains() -> None:
    p = policy("x/p", sel(app="a"), ingress=[rule([peer(sel(app="b"))])])
    before = chains_of([p])
    relabelled = [pod("x/c2", "10.244.1.9", app="b"), *PODS]
    after = chains_of([p], relabelled)
    assert before.chains[policy_chain(INGRESS, p)] == after.chains[policy_chain(INGRESS, p)]
    assert before.sets != after.sets


def test_names_are_stable_and_distinct() -> None:
    a = chains_of(CASES["two-policies"])
    b = chains_of(CASES["two-policies"])
    assert a == b
    assert len({policy_chain(d, p) for d in (INGRESS, EGRESS) for p in CASES["two-policies"]}) == 4


def test_consistency_check_finds_problems() -> None:
    bad = FirewallRuleset(chains={"KR-FW": ("-j KR-FW-MISSING", "-m set --match-set KR-FW-NOSET src -j RETURN"),
                                  "OTHER": ()},
                          sets={"KR-FW-" + "X" * 30: IPSetSpec("hash:ip")}, hooks=(("PREROUTING", "-j KR-FW"),))
    with pytest.raises(InconsistentRuleset) as info:
        check_consistency(bad)
    message = str(info.value)
    for needle in ("KR-FW-MISSING", "KR-FW-NOSET", "OTHER", "XXXX", "PREROUTING"):
        assert needle in message


def test_settings_are_validated() -> None:
    with pytest.raises(ValueError):
        FirewallSettings(log_rate="fast")
    with pytest.raises(ValueError):
        FirewallSettings(nflog_group=70000)
    assert "--limit 3/min" in "\n".join(compile_firewall(state(PODS, CASES["deny-all-ingress"], NAMESPACES),
                                                         FirewallSettings(log_rate="3/minute")).chains["KR-FW-REJECT"]
                                        + compile_firewall(state(PODS, CASES["deny-all-ingress"], NAMESPACES),
                                                           FirewallSettings(log_rate="3/minute")).chains["KR-FW-UNKNOWN-SRC"])


# --- fast paths agree with the slow definitions


def test_referenced_splits_rules_like_shlex() -> None:
    rules = [spec for ruleset in (compile_firewall(state(PODS, CASES[c], NAMESPACES)) for c in CASES)
             for chain in ruleset.chains.values() for spec in chain]
    rules += [hook for _, hook in hooks()]
    rules += ['-m comment --comment "a -j X" -j Y', '-j"KR-FW"x', "-j 'KR-FW A' --match-set S\\ T src",
              '-m set --match-set  KR-FW-S  src\t-g  KR-FW-G', "-j", ""]
    for spec in rules:
        words = shlex.split(spec)
        expected = [("chain" if w in ("-j", "-g", "--jump", "--goto") else "set", words[i + 1])
                    for i, w in enumerate(words[:-1]) if w in ("-j", "-g", "--jump", "--goto", "--match-set")]
        assert list(referenced(spec)) == expected, spec
    with pytest.raises(ValueError):
        list(referenced('-j "KR-FW'))


def _peer_set(ruleset: FirewallRuleset, item: NetworkPolicy) -> frozenset[str]:
    (rule_,) = ruleset.chains[policy_chain(INGRESS, item)]
    return ruleset.sets[rule_.split("--match-set ")[1].split()[0]].members


def test_selector_and_named_port_sets_match_the_definitions() -> None:
    """Each selector set holds exactly the IPv4s of the peer pods ``PolicyPeer.selects_pod`` selects
    (a pod of a namespace the state does not know is seen with no namespace labels); a named port
    resolves to a pod's first declaration of that name and protocol."""
    pods = PODS + [pod("w/a", "10.244.1.9", app="a", ports=[("serve-80", 80, TCP), ("serve-80", 90, TCP)])]
    selectors = [None, sel(), sel(app="a"), sel([("app", "NotIn", ("b",))]), sel([("team", "DoesNotExist", ())])]
    peers = [peer(p, n) for p in selectors for n in selectors if p is not None or n is not None]
    compiler = FirewallCompiler()
    for space in ("x", "y", "w"):
        for one in peers:
            item = policy(f"{space}/p", sel(), ingress=[rule([one])])
            desired = state(pods, [item], NAMESPACES)
            labels = {n.name: n.labels for n in desired.namespaces}
            expected = {ip for p in desired.pods if not p.host_network
                        and one.selects_pod(space, p, labels.get(p.namespace, {}))
                        for ip in p.ips if ":" not in ip}
            assert _peer_set(compiler.compile(desired), item) == expected
    item = policy("x/p", sel(), ingress=[rule(ports=[port("serve-80")])])
    (named,) = [s.members for n, s in compile_firewall(state(pods, [item], NAMESPACES)).sets.items()
                if n.startswith("KR-FW-N-")]
    assert named == {"10.244.1.2,tcp:80", "10.244.1.3,tcp:8080", "10.244.1.9,tcp:80", "10.244.2.2,tcp:81"}


def test_a_compiler_kept_across_changes_equals_a_fresh_compile() -> None:
    """A ``FirewallCompiler`` reuses what the last compile computed for unchanged objects: after every
    kind of change its output must equal a compile from nothing. Random sequences of pod adds, removals,
    relabels, IP and named-port changes, namespace relabels and policy edits, checked after each step."""
    rng = random.Random(11)
    all_policies = [p for policies in CASES.values() for p in policies]
    all_policies = list({p.key: p for p in all_policies}.values())
    compiler = FirewallCompiler()
    pods, namespaces, policies = list(PODS), list(NAMESPACES), list(all_policies)
    for step in range(300):
        change = rng.randrange(6)
        if change == 0:  # a pod appears (maybe local, maybe named ports)
            space = rng.choice("xyzw")
            pods.append(pod(f"{space}/n{step}", f"10.244.{rng.choice((1, 2))}.{rng.randint(10, 250)}",
                            node=rng.choice(("node-a", "node-b")), app=rng.choice("abc"),
                            ports=[("serve-80", rng.choice((80, 8080)), TCP)] if rng.random() < 0.5 else []))
        elif change == 1 and pods:  # a pod goes
            pods.pop(rng.randrange(len(pods)))
        elif change == 2 and pods:  # a pod is relabelled or readdressed (a new object, as the builder makes)
            i = rng.randrange(len(pods))
            old = pods[i]
            pods[i] = pod(old.key, f"10.244.1.{rng.randint(10, 250)}" if rng.random() < 0.3 else (old.ips or (None,))[0],
                          node=old.node_name or "node-a", host_network=old.host_network,
                          ports=[(n.name, n.port, n.protocol) for n in old.named_ports], app=rng.choice("abc"))
        elif change == 3:  # a namespace is relabelled
            i = rng.randrange(len(namespaces))
            namespaces[i] = ns(namespaces[i].name, **({"team": rng.choice("xy")} if rng.random() < 0.7 else {}))
        elif change == 4:  # a policy is replaced by another case's, or removed and re-added
            i = rng.randrange(len(policies))
            if rng.random() < 0.5:
                policies.pop(i)
            else:
                policies[i] = rng.choice(all_policies)
        else:
            policies = list({p.key: p for p in policies + [rng.choice(all_policies)]}.values())
        pods.sort(key=lambda p: p.key)
        desired = state(pods, sorted({p.key: p for p in policies}.values(), key=lambda p: p.key), namespaces)
        assert compiler.compile(desired) == compile_firewall(desired), f"step {step}: change {change}"


def test_every_set_is_reported_once_as_soon_as_it_is_known() -> None:
    all_policies = list({p.key: p for policies in CASES.values() for p in policies}.values())
    desired = state(PODS, all_policies, NAMESPACES)
    compiler = FirewallCompiler()
    for _ in range(2):  # from nothing, then from what the compiler kept
        reported: list[tuple[str, IPSetSpec]] = []
        ruleset = compiler.compile(desired, on_set=lambda name, spec: reported.append((name, spec)))
        assert sorted(reported) == sorted(ruleset.sets.items())
