"""Golden and semantic tests of the pure compile step (``kr_plugins.firewall.compile``).

Regenerate the golden files after an intended change with
``KR_UPDATE_GOLDEN=1 .venv/bin/python -m pytest tests/firewall/test_fw_compile.py`` and review the diff.
"""

from __future__ import annotations

import ipaddress
import os
import random
import shlex
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from fwmodel import (  # noqa: E402
    EGRESS, INGRESS, SCTP, TCP, UDP, block, describe, ns, peer, pod, policy, port, rule, sel, state,
)

from kr_plugins.firewall.compile import (  # noqa: E402
    MAX_CHAIN, MAX_SET, FirewallRuleset, FirewallSettings, InconsistentRuleset, IPSetSpec, check_consistency,
    _Compiler, compile_firewall, hooks, member_key, pod_chain, policy_chain, referenced,
)
from kr_plugins.kernel.iptables import check_owned  # noqa: E402

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
    return [r.sets[n].members for n in names]


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
    assert [s.members for n, s in r.sets.items() if n.startswith("KR-FW-N-")] == [()]


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


def _old_member_key(member: str) -> tuple[int, int, str]:
    net = ipaddress.ip_network(member.split(",")[0].split(" ")[0], strict=False)
    return (int(net.network_address), net.prefixlen, member)


def test_member_key_orders_exactly_like_ipaddress() -> None:
    rng = random.Random(7)

    def address() -> str:
        # few distinct octets, so equal addresses and prefixes (ties broken by the text) are common
        return ".".join(str(rng.choice((0, 1, 9, 10, 99, 100, 128, 200, 255))) for _ in range(4))

    members = []
    for _ in range(3000):
        net = ipaddress.ip_network(f"{address()}/{rng.randint(0, 32)}", strict=False)
        text = str(net.network_address) if net.prefixlen == 32 else str(net)
        members += [address(),                                                              # hash:ip
                    text, f"{text} nomatch",                                                # hash:net
                    f"{address()},{rng.choice(('tcp', 'udp', 'sctp'))}:{rng.randint(1, 65535)}"]  # hash:ip,port
    members += ["::1", "fd00::/64", "fd00::1,tcp:80"]  # not kr's, but member_key must still work
    for member in members:
        assert member_key(member) == _old_member_key(member), member
    rng.shuffle(members)
    assert sorted(members, key=member_key) == sorted(members, key=_old_member_key)


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


def test_indexed_selector_and_named_port_sets_match_the_definitions() -> None:
    """Each selector set holds exactly the IPv4s of the peer pods ``PolicyPeer.selects_pod`` selects
    (a pod of a namespace the state does not know is seen with no namespace labels); a named port
    resolves to a pod's first declaration of that name and protocol."""
    pods = PODS + [pod("w/a", "10.244.1.9", app="a", ports=[("serve-80", 80, TCP), ("serve-80", 90, TCP)])]
    selectors = [None, sel(), sel(app="a"), sel([("app", "NotIn", ("b",))]), sel([("team", "DoesNotExist", ())])]
    peers = [peer(p, n) for p in selectors for n in selectors if p is not None or n is not None]
    policies = [policy(f"{space}/p", sel(), ingress=[rule(peers)]) for space in ("x", "y", "w")]
    desired = state(pods, policies, NAMESPACES)
    compiler = _Compiler(desired, FirewallSettings())
    labels = {n.name: n.labels for n in desired.namespaces}
    for item in policies:
        for one in peers:
            expected = {ip for p in desired.pods if not p.host_network
                        and one.selects_pod(item.namespace, p, labels.get(p.namespace, {}))
                        for ip in p.ips if ":" not in ip}
            assert set(compiler.sets[compiler.selector_set(item, one)].members) == expected
    members = compiler.sets[compiler.named_port_set("serve-80", TCP)].members
    assert members == ("10.244.1.2,tcp:80", "10.244.1.3,tcp:8080", "10.244.1.9,tcp:80", "10.244.2.2,tcp:81")


def test_sets_reused_across_compiles_equal_a_fresh_compile() -> None:
    """The set memo keys on pod identity: a compile after a change equals one with nothing remembered."""
    import kr_plugins.firewall.compile as compile_module

    all_policies = [p for policies in CASES.values() for p in policies]
    base = state(PODS, all_policies, NAMESPACES)
    compile_firewall(base)  # fills the memo
    changed_pods = list(PODS)
    changed_pods[1] = pod("x/b", "10.244.1.3", app="a", ports=[("serve-80", 9090, TCP)])  # relabel + port
    changed_pods.append(pod("y/new", "10.244.2.9", node="node-b", app="b", ports=[("dns", 5353, UDP)]))
    for pods in (changed_pods, PODS[2:], PODS):
        desired = state(pods, all_policies, NAMESPACES)
        remembered = compile_firewall(desired)
        compile_module._MEMO = compile_module._SetMemo()
        assert remembered == compile_firewall(desired)
