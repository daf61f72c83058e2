"""Golden and semantic tests of the pure renderer of ``proxy.iptables`` (``kr_plugins.proxy.rules``).

Each golden case (tests/proxy/cases.py) is built from API objects through ``build_desired_state`` for
node ``node-a``, rendered, checked for consistency and compared with ``golden/<case>.txt``, which is
``iptables-restore --noflush`` input (test_proxy_kernel.py loads it into a real kernel). Regenerate
after an intended change with ``KR_UPDATE_GOLDEN=1 .venv/bin/python -m pytest tests/proxy`` and review
the diff.
"""

from __future__ import annotations

import copy
import os
import random
import re
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from cases import (
    CASES,
    EVERYTHING,
    GOLDEN,
    MIXED_TRIO,
    NODES,
    REMOTE_PAIR,
    web,
    web_slice,
)
from pxmodel import (
    NODE,
    OTHER,
    THIRD,
    describe,
    desired,
    endpoint,
    endpoint_slice,
    key_of,
    node,
    port,
    service,
    snapshot,
)

from kr_core.desired import build_desired_state
from kr_plugins.kernel.iptables import check_owned, jump_target
from kr_plugins.kernel.ipset import IPSetSpec
from kr_plugins.proxy.rules import (
    FILTER,
    LOOPBACK_SET,
    MARK_MASQ,
    MAX_CHAIN,
    NODEPORTS,
    SERVICES,
    InconsistentRuleset,
    ProxyRenderer,
    ProxyRuleset,
    ProxySettings,
    bucket_chain,
    check_consistency,
    probability,
    render_proxy,
    render_service,
)

UPDATE = os.environ.get("KR_UPDATE_GOLDEN") == "1"
IPV6 = re.compile(r"[0-9a-f]*:[0-9a-f]*:[0-9a-f:]*", re.IGNORECASE)
STATISTIC = re.compile(r"^-p tcp -m statistic --mode random --probability (\S+) -m tcp -j DNAT --to-destination (\S+)$")
DNAT = re.compile(r"-j DNAT --to-destination ([\d.]+):(\d+)$")


def render(objects: Iterable[dict[str, Any]], settings: ProxySettings | None = None) -> ProxyRuleset:
    ruleset = render_proxy(desired(objects), settings)
    check_consistency(ruleset)
    return ruleset


def golden(name: str, actual: str) -> None:
    path = GOLDEN / f"{name}.txt"
    if UPDATE:
        path.parent.mkdir(exist_ok=True)
        path.write_text(actual, encoding="utf-8")
    assert actual == path.read_text(encoding="utf-8")


@pytest.mark.parametrize("case", sorted(CASES))
def test_golden(case: str) -> None:
    objects, settings = CASES[case]
    text = describe(render(objects, settings))
    check_owned(text)
    golden(case, text)


def test_every_golden_file_has_a_case() -> None:
    assert sorted(p.stem for p in GOLDEN.glob("*.txt")) == sorted(CASES)


# --- helpers reading a ruleset


def nat(ruleset: ProxyRuleset) -> dict[str, tuple[str, ...]]:
    return dict(ruleset.tables["nat"])


def dispatched(ruleset: ProxyRuleset, what: str) -> list[str]:
    """Targets of the dispatch rules whose comment ends with ``what`` ("web:http cluster IP", ...)."""
    return [jump_target(rule) for name, rules in nat(ruleset).items() if name.startswith("KR-PX-D-")
            for rule in rules if f'{what}"' in rule]


def the(targets: list[str]) -> str:
    assert len(targets) == 1, targets
    return targets[0]


def targets(chain_rules: Iterable[str]) -> list[str]:
    """The endpoints (address:port) a balancing chain translates to, in order, once each."""
    return list(dict.fromkeys(f"{m.group(1)}:{m.group(2)}" for rule in chain_rules if (m := DNAT.search(rule))))


def destinations(ruleset: ProxyRuleset, chain: str) -> set[str]:
    """The endpoint addresses (address:port) a balancing chain reaches."""
    return set(targets(nat(ruleset)[chain]))


def loopback(ruleset: ProxyRuleset) -> set[str]:
    return set(ruleset.sets[LOOPBACK_SET].members)


def filter_rules(ruleset: ProxyRuleset) -> tuple[str, ...]:
    return tuple(ruleset.tables["filter"][FILTER])


# --- semantics


@pytest.mark.parametrize("n", range(1, 9))
def test_probabilities_are_1_over_n_then_1_over_n_minus_1_and_the_last_rule_is_unconditional(n: int) -> None:
    eps = [endpoint(f"10.244.2.{i + 10}", OTHER) for i in range(n)]
    r = render([*NODES, web(), web_slice("web", *eps)])
    chain = the(dispatched(r, "default/web:http cluster IP"))
    masquerade, *balance = nat(r)[chain]
    assert masquerade.endswith(f"-j {MARK_MASQ}") and masquerade.startswith("! -s 10.244.1.0/24 -d 10.96.0.10/32")
    assert len(balance) == n
    share_left, shares = 1.0, []
    for i, rule in enumerate(balance[:-1]):
        match = STATISTIC.match(rule)
        assert match, rule
        assert match.group(1) == probability(1 / (n - i))
        assert abs(float(match.group(1)) - 1 / (n - i)) < 1e-9
        shares.append(share_left * float(match.group(1)))
        share_left -= shares[-1]
    assert re.fullmatch(r"-p tcp -m tcp -j DNAT --to-destination [\d.:]+", balance[-1])
    shares.append(share_left)
    assert all(abs(share - 1 / n) < 1e-8 for share in shares)
    assert destinations(r, chain) == {f"10.244.2.{i + 10}:8080" for i in range(n)}


def test_probability_is_printed_as_the_kernel_keeps_it() -> None:
    """The kernel stores lround(p * 2^31); iptables-save prints that over 2^31 with 11 decimals."""
    assert probability(0.5) == "0.50000000000"
    assert probability(1 / 3) == "0.33333333349"
    assert probability(1 / 7) == "0.14285714272"
    for n in range(2, 300):
        kept = round(2 ** 31 / n)
        assert probability(1 / n) == f"{kept / 2 ** 31:.11f}"


def test_a_pod_reaching_itself_through_its_service_is_masqueraded_hairpin() -> None:
    """This node's endpoints, and only they, are in the loopback set, which POSTROUTING matches as
    (destination, destination port, source) after the DNAT."""
    r = render(*CASES["etp-local"][:1])
    assert loopback(r) == {"10.244.1.5,tcp:8080,10.244.1.5", "10.244.1.6,tcp:8080,10.244.1.6"}
    assert nat(r)["KR-PX-POSTROUTING"][0] == f"-m set --match-set {LOOPBACK_SET} dst,dst,src -j MASQUERADE"
    assert loopback(render(CASES["etp-local-without-local-endpoints"][0])) == set()
    assert loopback(render(CASES["protocols"][0])) == {"10.244.1.53,tcp:5353,10.244.1.53", "10.244.1.53,udp:5353,10.244.1.53",
                                                       "10.244.1.53,sctp:3868,10.244.1.53"}


def test_named_target_port_reaches_each_endpoint_on_its_own_number() -> None:
    r = render(CASES["named-target-port"][0])
    assert destinations(r, the(dispatched(r, "default/web:http cluster IP"))) == {
        "10.244.1.5:8080", "10.244.2.5:8080", "10.244.2.6:8081"}


def test_each_protocol_gets_its_own_chains_and_matches() -> None:
    r = render(CASES["protocols"][0])
    for name, proto in (("dns-udp", "udp"), ("dns-tcp", "tcp"), ("diameter", "sctp")):
        (rule,) = [rule for rules in nat(r).values() for rule in rules
                   if f'"kube-system/dns:{name} cluster IP"' in rule]
        assert f" -p {proto} " in rule and f"-m {proto} --dport" in rule
        chain = jump_target(rule)
        dnats = [rule for rule in nat(r)[chain] if "-j DNAT" in rule]
        assert dnats and all(rule.startswith(f"-p {proto} ") and f" -m {proto} -j DNAT" in rule for rule in dnats)
    assert len({jump_target(rule) for rules in nat(r).values() for rule in rules if "cluster IP" in rule}) == 3


def test_without_endpoints_everything_is_rejected_and_nothing_translated() -> None:
    r = render(CASES["no-endpoints"][0])
    assert not any(name.startswith(("KR-PX-SVC-", "KR-PX-EXT-", "KR-PX-D-")) for name in nat(r))
    assert nat(r)[NODEPORTS] == ()
    rejected = filter_rules(r)
    assert all(rule.endswith("-j REJECT --reject-with icmp-port-unreachable") for rule in rejected)
    assert all("has no endpoints" in rule for rule in rejected)
    for address in ("10.96.0.11", "10.96.0.12", "192.0.2.12", "198.51.100.12"):
        assert sum(f"-d {address}/32 " in rule for rule in rejected) == 1, address
    assert sum("-m addrtype --dst-type LOCAL" in rule and "--dport 30012" in rule for rule in rejected) == 1
    assert len(rejected) == 5


def test_terminating_endpoints_serve_only_while_none_is_ready() -> None:
    r = render(CASES["terminating-serving"][0])
    assert destinations(r, the(dispatched(r, "default/web:http cluster IP"))) == {"10.244.1.5:8080", "10.244.3.5:8080"}
    r = render(CASES["not-ready"][0])
    assert destinations(r, the(dispatched(r, "default/web:http cluster IP"))) == {"10.244.2.5:8080", "10.244.3.5:8080"}
    assert filter_rules(r) == ()


def test_client_ip_affinity_checks_recent_clients_first_and_records_them() -> None:
    r = render(CASES["affinity"][0])
    chain = the(dispatched(r, "default/web:http cluster IP"))
    rules = nat(r)[chain][1:]
    endpoints = targets(rules)
    assert len(endpoints) == 3 and len(rules) == 6
    lists = [re.search(r"--name (KR-PX-A-\w+) ", rule).group(1) for rule in rules[:3]]  # type: ignore[union-attr]
    assert len(set(lists)) == 3
    assert list(rules[:3]) == [f"-p tcp -m recent --update --seconds 600 --reap --name {name} --mask 255.255.255.255 "
                               f"--rsource -m tcp -j DNAT --to-destination {to}" for name, to in zip(lists, endpoints)]
    for index, (rule, name, to) in enumerate(zip(rules[3:], lists, endpoints)):
        chance = f" -m statistic --mode random --probability {probability(1 / (3 - index))}" if index < 2 else ""
        assert rule == (f"-p tcp{chance} -m recent --set --name {name} --mask 255.255.255.255 --rsource "
                        f"-m tcp -j DNAT --to-destination {to}")
    assert not any("recent" in rule for rules in nat(render(CASES["clusterip-endpoints"][0])).values()
                   for rule in rules)


def test_node_port_external_ip_and_load_balancer_ip_masquerade_and_use_every_endpoint() -> None:
    for case, what in (("nodeport", None), ("external-ips", "external IP"), ("loadbalancer", "loadbalancer IP")):
        r = render(CASES[case][0])
        svc = the(dispatched(r, "default/web:http cluster IP"))
        if what is None:
            (rule,) = nat(r)[NODEPORTS]
            assert rule == f'-p tcp -m comment --comment "default/web:http" -m tcp --dport 30080 -j {jump_target(rule)}'
            ext = jump_target(rule)
        else:
            targets = dispatched(r, f"default/web:http {what}")
            assert len(targets) == 2 and len(set(targets)) == 1
            ext = targets[0]
        assert ext.startswith("KR-PX-EXT-")
        assert nat(r)[ext] == (f"-j {MARK_MASQ}", f"-j {svc}")
        assert filter_rules(r) == ()
        assert destinations(r, svc) == {"10.244.2.5:8080", "10.244.3.5:8080"}


def test_load_balancer_source_ranges_let_only_those_sources_in() -> None:
    r = render(CASES["loadbalancer-source-ranges"][0])
    lbs = the(dispatched(r, "default/web:http loadbalancer IP"))
    assert lbs.startswith("KR-PX-LBS-")
    ext = jump_target(nat(r)[lbs][0])
    assert nat(r)[lbs] == (f"-s 203.0.113.0/24 -j {ext}", f"-s 198.51.100.7/32 -j {ext}")
    assert filter_rules(r) == (('-d 198.51.100.10/32 -p tcp -m comment --comment "default/web:http is not allowed '
                                'from this source" -m tcp --dport 80 -j DROP'),)
    # the node port is not limited by the ranges (as in Kubernetes)
    assert jump_target(the(list(nat(r)[NODEPORTS]))) == ext
    # ranges of the other family only still restrict: no IPv4 source gets in
    objects = copy.deepcopy(CASES["loadbalancer-source-ranges"][0])
    for obj in objects:
        if obj.get("spec", {}).get("loadBalancerSourceRanges"):
            obj["spec"]["loadBalancerSourceRanges"] = ["2001:db8::/32"]
    r = render(objects)
    assert nat(r)[the(dispatched(r, "default/web:http loadbalancer IP"))] == ()
    assert "-j DROP" in the(list(filter_rules(r)))


def test_external_traffic_policy_local_keeps_outside_traffic_on_this_nodes_endpoints() -> None:
    r = render(CASES["etp-local"][0])
    svc = the(dispatched(r, "default/web:http cluster IP"))
    ext = the(dispatched(r, "default/web:http loadbalancer IP"))
    assert dispatched(r, "default/web:http external IP") == [ext]
    svl = jump_target(nat(r)[ext][-1])
    assert nat(r)[ext] == (f'-s 10.244.1.0/24 -m comment --comment "pods reach default/web:http anywhere" -j {svc}',
                           f"-m addrtype --src-type LOCAL -j {MARK_MASQ}", f"-m addrtype --src-type LOCAL -j {svc}",
                           f"-j {svl}")
    assert svl.startswith("KR-PX-SVL-")
    assert destinations(r, svl) == {"10.244.1.5:8080", "10.244.1.6:8080"}
    assert destinations(r, svc) == {"10.244.1.5:8080", "10.244.1.6:8080", "10.244.2.5:8080", "10.244.3.5:8080"}
    assert not any(rule.startswith("! -s") or MARK_MASQ in rule for rule in nat(r)[svl])  # client IP kept
    assert filter_rules(r) == ()


def test_external_traffic_policy_local_without_local_endpoints_drops_outside_traffic() -> None:
    r = render(CASES["etp-local-without-local-endpoints"][0])
    svc = the(dispatched(r, "default/web:http cluster IP"))
    assert destinations(r, svc) == {"10.244.2.5:8080", "10.244.3.5:8080"}
    assert not any(name.startswith("KR-PX-SVL-") for name in nat(r))
    lbs = the(dispatched(r, "default/web:http loadbalancer IP"))
    ext = the(dispatched(r, "default/web:http external IP"))
    assert nat(r)[lbs] == (f"-s 203.0.113.0/24 -j {ext}",)
    assert [jump_target(rule) for rule in nat(r)[ext]] == [svc, MARK_MASQ, svc]  # pods and the node only
    dropped = filter_rules(r)
    assert all(rule.endswith("-j DROP") and "has no local endpoints" in rule for rule in dropped)
    assert [rule.split("-p ")[0].strip() for rule in dropped] == ["-d 192.0.2.10/32", "-d 198.51.100.10/32", ""]
    assert "-m addrtype --dst-type LOCAL" in dropped[2] and "--dport 30080" in dropped[2]


def test_internal_traffic_policy_local() -> None:
    r = render(CASES["itp-local"][0])
    svl = the(dispatched(r, "default/web:http cluster IP"))
    assert svl.startswith("KR-PX-SVL-") and not any(name.startswith("KR-PX-SVC-") for name in nat(r))
    assert nat(r)[svl][0] == f"! -s 10.244.1.0/24 -d 10.96.0.10/32 -p tcp -m tcp --dport 80 -j {MARK_MASQ}"
    assert destinations(r, svl) == {"10.244.1.5:8080"}
    assert nat(r)[svl][1:] == ("-p tcp -m tcp -j DNAT --to-destination 10.244.1.5:8080",)  # no statistic rule
    r = render(CASES["itp-local-without-local-endpoints"][0])
    assert dispatched(r, "default/web:http cluster IP") == []
    assert filter_rules(r) == (('-d 10.96.0.10/32 -p tcp -m comment --comment "default/web:http has no local '
                                'endpoints" -m tcp --dport 80 -j DROP'),)


def test_masquerade_all_and_cluster_cidr() -> None:
    svc_chains = ("default/web:http cluster IP", "default/local:http cluster IP")
    default = render(*CASES["masquerade-all"][:1])
    everything = render(*CASES["masquerade-all"])
    cidr = render(*CASES["cluster-cidr"])
    for what in svc_chains:
        assert nat(default)[the(dispatched(default, what))][0].startswith("! -s 10.244.1.0/24 -d ")
        first = nat(everything)[the(dispatched(everything, what))][0]
        assert first.startswith("-d 10.96.0.") and first.endswith(f"-j {MARK_MASQ}")
        assert nat(cidr)[the(dispatched(cidr, what))][0].startswith("! -s 10.244.0.0/16 -d ")
    ext = the(dispatched(cidr, "default/local:http external IP"))
    assert nat(cidr)[ext][0].startswith("-s 10.244.0.0/16 -m comment")
    assert sum("-s 10.244." in rule for rule in nat(cidr)[ext]) == 1


def test_nodeport_addresses_limit_where_node_ports_answer() -> None:
    default = nat(render(*CASES["nodeport-addresses"][:1]))[SERVICES]
    assert default[-1] == f"! -d 127.0.0.0/8 -m addrtype --dst-type LOCAL -j {NODEPORTS}"
    limited = nat(render(*CASES["nodeport-addresses"]))[SERVICES]
    assert limited[-2:] == (f"-d 192.168.60.0/24 -m addrtype --dst-type LOCAL -j {NODEPORTS}",
                            f"-d 10.1.0.0/16 -m addrtype --dst-type LOCAL -j {NODEPORTS}")
    assert default[:-1] == limited[:-2]


def test_the_masquerade_mark_follows_the_setting() -> None:
    r = render(*CASES["mark-bit"])
    assert nat(r)[MARK_MASQ] == ("-j MARK --set-xmark 0x100000/0x100000",)
    assert nat(r)["KR-PX-POSTROUTING"][1] == "-m mark ! --mark 0x100000/0x100000 -j RETURN"
    assert not any("0x4000" in rule for rules in nat(r).values() for rule in rules)


def test_without_the_node_nothing_counts_as_local_pods() -> None:
    r = render(*CASES["without-node"])
    svc = the(dispatched(r, "default/web:http cluster IP"))
    assert not any(MARK_MASQ in rule for rule in nat(r)[svc])
    ext = the(dispatched(r, "default/local:http external IP"))
    assert not any(rule.startswith("-s ") for rule in nat(r)[ext])


def test_ipv6_addresses_are_skipped() -> None:
    r = render(CASES["ipv6-skipped"][0])
    for table in r.tables.values():
        for name, rules in table.items():
            for rule in rules:
                assert not IPV6.search(rule.split("--comment")[0] + rule.split('"')[-1]), (name, rule)
    assert not any("v6only" in rule for rules in nat(r).values() for rule in rules)
    assert dispatched(r, "default/dual:http cluster IP") and dispatched(r, "default/dual:http external IP")
    lbs = the(dispatched(r, "default/dual:http loadbalancer IP"))
    assert [rule.split(" -j ")[0] for rule in nat(r)[lbs]] == ["-s 203.0.113.0/24"]


def test_ipv6_endpoints_are_skipped() -> None:
    objects, settings = CASES["ipv6-skipped"]
    v6_slice = endpoint_slice("dual", "dual-v6", [("http", "TCP", 80)], [endpoint("fd00:10:244:1::5", NODE)],
                              address_type="IPv6")
    assert describe(render([*objects, v6_slice], settings)) == describe(render(objects, settings))


def test_buckets_hold_one_24_each_in_address_order() -> None:
    assert bucket_chain("10.96.1.2") == "KR-PX-D-0A6001"
    assert bucket_chain("198.51.100.255") == "KR-PX-D-C63364"
    r = render(CASES["buckets"][0])
    buckets = [name for name in nat(r) if name.startswith("KR-PX-D-")]
    assert nat(r)[SERVICES][:-1] == tuple(f"-d 10.96.{i}.0/24 -j KR-PX-D-0A600{i}" for i in range(3))
    assert buckets == [f"KR-PX-D-0A600{i}" for i in range(3)]
    for name in buckets:
        addresses = [int(rule.split()[1].split(".")[3].split("/")[0]) for rule in nat(r)[name]]
        assert addresses == sorted(addresses) and len(addresses) == 3
    assert [rule.split()[1] for rule in nat(render(EVERYTHING))["KR-PX-D-0A6000"]] == [
        "10.96.0.9/32", "10.96.0.10/32"]  # numeric order: .9 before .10


def test_chain_names_are_kr_proxy_names_that_fit_the_kernel_and_are_stable() -> None:
    names: dict[str, str] = {}
    for case, (objects, settings) in CASES.items():
        r = render(objects, settings)
        assert r == render(objects, settings)
        for table in r.tables.values():
            for name in table:
                assert name.startswith("KR-PX-") and len(name) <= MAX_CHAIN
    # the per-service chains are named by what defines them, not by the case that renders them
    for case in ("nodeport", "loadbalancer", "external-ips"):
        for name in nat(render(CASES[case][0])):
            if name.startswith("KR-PX-SVC-"):
                names.setdefault(name, case)
    assert len(names) == 1


def test_consistency_check_finds_problems() -> None:
    bad = ProxyRuleset(tables={"nat": {"KR-PX-SERVICES": ("-j KR-PX-MISSING", "-j DNAT --to-destination 1.2.3.4:5"),
                                       "OTHER": (), "KR-PX-" + "X" * 30: (),
                                       "KR-PX-POSTROUTING": ("-m set --match-set KR-PX-NOSET dst -j MASQUERADE",
                                                             f"-m set --match-set {LOOPBACK_SET} dst,dst,src -j MASQUERADE")},
                               "filter": {FILTER: ("-j KR-PX-SERVICES",)}},
                       hooks={"nat": (("PREROUTING", "-j KR-PX-SERVICES"), ("OUTPUT", "-j KR-PX-NOPE")),
                              "filter": (("INPUT", f"-j {FILTER}"),)},
                       sets={LOOPBACK_SET: IPSetSpec("hash:ip,port,ip")})
    with pytest.raises(InconsistentRuleset) as info:
        check_consistency(bad)
    message = str(info.value)
    assert f"undefined set {LOOPBACK_SET}" not in message
    for needle in ("KR-PX-MISSING", "OTHER", "XXXX", "KR-PX-NOPE", "filter/KR-PX-FILTER", "undefined set KR-PX-NOSET"):
        assert needle in message
    assert "undefined chain DNAT" not in message  # built-in targets are not chains kr must define


# --- the renderer kept across syncs


def test_unchanged_service_ports_keep_their_rule_objects() -> None:
    objects = [*NODES, web("web", type="NodePort", node_port=30080), web_slice("web", *MIXED_TRIO),
               web("other", "10.96.0.20", etp="Local", type="NodePort", node_port=30020),
               web_slice("other", *REMOTE_PAIR)]
    snap = snapshot(objects)
    renderer = ProxyRenderer()
    first = renderer.render(build_desired_state(snap, NODE))
    snap["endpointslices"] = dict(snap["endpointslices"])
    snap["endpointslices"]["default/other-a"] = copy.deepcopy(snap["endpointslices"]["default/other-a"])
    snap["endpointslices"]["default/other-a"]["endpoints"].append(endpoint("10.244.1.9", NODE))
    second = renderer.render(build_desired_state(snap, NODE))
    assert second == render_proxy(build_desired_state(snap, NODE))
    web_port = build_desired_state(snap, NODE).service_port("default/web/http")
    assert web_port is not None
    web_chains = set(render_service(web_port, ProxySettings(), ("10.244.1.0/24",)).chains)
    assert len(web_chains) >= 2
    for name in web_chains:
        assert second.tables["nat"][name] is first.tables["nat"][name], name
    changed = [name for name in nat(second) if name.startswith(("KR-PX-SVC-", "KR-PX-EXT-")) and name not in web_chains]
    assert changed and all(second.tables["nat"][n] is not first.tables["nat"].get(n) for n in changed)
    # a new pod CIDR for this node changes what counts as local pods: everything is rendered again
    snap["nodes"] = {**snap["nodes"], NODE: node(NODE, ["10.244.9.0/24"])}
    third = renderer.render(build_desired_state(snap, NODE))
    assert third == render_proxy(build_desired_state(snap, NODE))
    assert all(third.tables["nat"][n] is not second.tables["nat"][n] for n in web_chains)


class World:
    """API objects that random changes are applied to, each change replacing objects by new ones."""

    CLUSTER_NETS = ("10.96.0", "10.96.1", "10.97.5")

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.objects: dict[tuple[str, str], dict[str, Any]] = {}
        for obj in NODES:
            self.put(obj)
        for i in range(8):
            self.add_service(f"s{i}")

    def put(self, obj: dict[str, Any]) -> None:
        self.objects[(obj["kind"], key_of(obj))] = obj

    def services(self) -> list[str]:
        return [key[1].split("/")[1] for key in self.objects if key[0] == "Service"]

    def slices(self) -> list[tuple[str, str]]:
        return [key for key in self.objects if key[0] == "EndpointSlice"]

    def add_service(self, name: str) -> None:
        rng = self.rng
        kind = rng.choice(["ClusterIP", "ClusterIP", "NodePort", "LoadBalancer"])
        protocols = rng.sample(["TCP", "UDP", "SCTP"], rng.randint(1, 2))
        ports = [port(80 + i, f"p{i}", proto, target=rng.choice([8080, "web"]),
                      node_port=30000 + rng.randrange(2000) if kind != "ClusterIP" else None)
                 for i, proto in enumerate(protocols)]
        ip = f"{rng.choice(self.CLUSTER_NETS)}.{rng.randint(1, 254)}"
        self.put(service(
            name, ip if rng.random() < 0.9 else ["fd00::" + name[1:], ip], ports, type=kind,
            external_ips=rng.sample(["192.0.2.1", "192.0.2.2", "2001:db8::1"], rng.randint(0, 2)),
            lb_ips=rng.sample(["198.51.100.1", "198.51.100.2"], rng.randint(0, 2)) if kind == "LoadBalancer" else (),
            source_ranges=rng.sample(["203.0.113.0/24", "10.0.0.0/8"], rng.randint(0, 2)),
            etp=rng.choice([None, "Local"]), itp=rng.choice([None, "Local"]),
            affinity_timeout=rng.choice([None, None, 60]),
            health_port=32000 + rng.randrange(100) if kind == "LoadBalancer" else None))
        if rng.random() < 0.8:
            self.add_slice(name, protocols)

    def add_slice(self, name: str, protocols: list[str] | None = None) -> None:
        rng = self.rng
        if protocols is None:
            protocols = [p["protocol"] for p in self.objects[("Service", f"default/{name}")]["spec"]["ports"]]
        number = rng.choice([8080, 8081])
        eps = [self.random_endpoint() for _ in range(rng.randint(0, 4))]
        self.put(endpoint_slice(name, f"{name}-{rng.randrange(3)}",
                                [(f"p{i}", proto, number) for i, proto in enumerate(protocols)], eps))

    def random_endpoint(self) -> dict[str, Any]:
        rng = self.rng
        node_name = rng.choice([NODE, OTHER, THIRD, None])
        subnet = {NODE: 1, OTHER: 2, THIRD: 3, None: 4}[node_name]
        ready = rng.random() < 0.7
        return endpoint(f"10.244.{subnet}.{rng.randint(2, 30)}", node_name, ready=ready,
                        serving=rng.choice([None, True, False]), terminating=rng.choice([None, not ready]))

    def change(self) -> str:
        rng = self.rng
        what = rng.choice(["add", "remove", "respec", "slice", "unslice", "conditions", "conditions", "node"])
        services, slices = self.services(), self.slices()
        if what == "add" or not services:
            self.add_service(f"s{rng.randrange(1000)}")
        elif what == "remove":
            del self.objects[("Service", f"default/{rng.choice(services)}")]
        elif what == "respec":  # a new object for the same service: maybe equal, maybe not
            name = rng.choice(services)
            old = self.objects[("Service", f"default/{name}")]
            if rng.random() < 0.3:
                self.put(copy.deepcopy(old))
            else:
                slices_before = {k: v for k, v in self.objects.items() if k[0] == "EndpointSlice"}
                self.add_service(name)
                self.objects.update(slices_before)  # keep its slices unless add_service replaced one
        elif what == "slice" and services:
            self.add_slice(rng.choice(services))
        elif what == "unslice" and slices:
            del self.objects[rng.choice(slices)]
        elif what == "conditions" and slices:
            key = rng.choice(slices)
            obj = copy.deepcopy(self.objects[key])
            if obj["endpoints"] and rng.random() < 0.7:
                obj["endpoints"][rng.randrange(len(obj["endpoints"]))] = self.random_endpoint()
            else:
                obj["endpoints"].append(self.random_endpoint())
            self.objects[key] = obj
        else:
            cidrs = rng.choice([["10.244.1.0/24"], ["10.244.1.0/25"], ["fd00::/64", "10.244.1.0/24"], []])
            self.put(node(NODE, cidrs))
        return what

    def snapshot(self) -> dict[str, dict[str, Any]]:
        snap: dict[str, dict[str, Any]] = {"nodes": {}, "services": {}, "endpointslices": {}}
        kinds = {"Node": "nodes", "Service": "services", "EndpointSlice": "endpointslices"}
        for (kind, key), obj in self.objects.items():
            snap[kinds[kind]][key] = obj  # the same dict while unchanged: the builder reuses its ports
        return snap


@pytest.mark.parametrize("settings", [ProxySettings(), ProxySettings(masquerade_all=True, cluster_cidr="10.244.0.0/16"),
                                      ProxySettings(nodeport_addresses=("192.168.60.0/24",))],
                         ids=["default", "masquerade-all-cluster-cidr", "nodeport-addresses"])
def test_a_renderer_kept_across_changes_equals_a_fresh_render(settings: ProxySettings) -> None:
    """300 random changes of services, slices, endpoint conditions and this node's pod CIDRs: after each,
    the kept renderer returns exactly (chain order included) what a fresh ``render_proxy`` returns."""
    rng = random.Random(20261124)
    world = World(rng)
    renderer = ProxyRenderer(settings)
    reused = 0
    last: ProxyRuleset | None = None
    for step in range(300):
        what = world.change()
        state = build_desired_state(world.snapshot(), NODE)
        kept = renderer.render(state)
        fresh = render_proxy(state, settings)
        assert kept == fresh, f"step {step}: {what}"  # the chain mappings compare without their order
        if last is not None:
            reused += sum(rules is last.tables["nat"].get(name) for name, rules in kept.tables["nat"].items()
                          if name.startswith("KR-PX-SVC-"))
        last = kept
    assert reused > 300  # the renderer did keep rules: the comparison above was not between two fresh renders


def test_consistency_check_can_be_limited_to_the_chains_a_sync_writes() -> None:
    bad = ProxyRuleset(tables={"nat": {"KR-PX-A": ("-j KR-PX-MISSING",), "KR-PX-B": ("-j KR-PX-A",)}},
                       hooks={"nat": ()}, sets={})
    check_consistency(bad, only={"nat": ["KR-PX-B"]})
    with pytest.raises(InconsistentRuleset, match="KR-PX-MISSING"):
        check_consistency(bad, only={"nat": ["KR-PX-A", "KR-PX-B"]})
