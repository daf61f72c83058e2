"""firewall.iptables on real traffic in network namespaces (see fwlab.py for the lab).

Pods: x/a (10.244.1.2, app=a), x/b (.3, app=b), y/c (.4, app=c) on node-a; y/r (10.244.2.2) on node-b.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from fwlab import PODS, REMOTE_POD_IP, FwLab  # noqa: E402
from fwmodel import EGRESS, UDP, ns, peer, pod, policy, port, rule, sel, state  # noqa: E402

A, B, C = PODS["a"], PODS["b"], PODS["c"]
NAMESPACES = [ns("x", team="x"), ns("y", team="y")]
ALL_PODS = [pod("x/a", A, app="a"), pod("x/b", B, app="b"), pod("y/c", C, app="c"),
            pod("y/r", REMOTE_POD_IP, node="node-b", app="r")]


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[FwLab]:
    built = FwLab(tmp_path)
    try:
        built.build()
        yield built
    finally:
        built.teardown()


def desired(*policies, pods=ALL_PODS):  # type: ignore[no-untyped-def]
    return state(pods, policies, NAMESPACES)


def test_policies_on_real_tcp_and_udp(lab: FwLab) -> None:
    started = time.monotonic()
    lab.sync(desired())
    assert all(lab.check(src, proto, A) for src in ("b", "c", "remote", "node") for proto in ("tcp", "udp"))

    deny_a = policy("x/deny-a", sel(app="a"), ingress=[])
    lab.sync(desired(deny_a), full=False)
    for src in ("b", "c", "remote"):
        assert not lab.check(src, "tcp", A) and not lab.check(src, "udp", A)
    assert lab.check("node", "tcp", A) and lab.check("node", "udp", A)  # kubelet probes
    assert lab.check("a", "tcp", B) and lab.check("a", "udp", REMOTE_POD_IP)  # replies come back
    assert lab.check("b", "tcp", C)  # others are untouched

    from_y = policy("x/from-y", sel(app="a"), ingress=[rule([peer(namespaces=sel(team="y"))], [port(80), port(81, UDP)])])
    lab.sync(desired(deny_a, from_y), full=False)
    assert lab.check("c", "tcp", A) and lab.check("remote", "tcp", A) and lab.check("c", "udp", A, 81)
    assert not lab.check("c", "udp", A, 80) and not lab.check("c", "tcp", A, 81)
    assert not lab.check("b", "tcp", A)

    no_egress_b = policy("x/no-egress-b", sel(app="b"), egress=[], types=[EGRESS])
    lab.sync(desired(deny_a, from_y, no_egress_b), full=False)
    assert not lab.check("b", "tcp", C) and not lab.check("b", "udp", REMOTE_POD_IP)
    assert lab.check("c", "tcp", B)  # b's ingress is open; the reply is allowed despite b's egress
    assert lab.check("node", "tcp", B)

    lab.sync(desired(), full=False)  # policies deleted: open again
    assert lab.check("b", "tcp", A) and lab.check("b", "tcp", C)
    print(f"policy walk-through: {time.monotonic() - started:.2f} s")


def test_unknown_pods_in_the_node_cidr_are_rejected(lab: FwLab) -> None:
    lab.sync(desired(pods=ALL_PODS[:2] + ALL_PODS[3:]))  # y/c is not known yet
    assert not lab.check("c", "tcp", A) and not lab.check("a", "tcp", C)
    assert not lab.check("remote", "tcp", C)
    assert lab.check("node", "tcp", C)  # the node (gateway address in the CIDR) still reaches it
    assert lab.check("a", "tcp", B)
    lab.sync(desired(), full=False)  # now it is known, and no policy selects it
    assert lab.check("c", "tcp", A) and lab.check("a", "tcp", C) and lab.check("remote", "tcp", C)


def test_idempotent_owned_and_cleanup(lab: FwLab) -> None:
    n = lab.node
    lab.ex(n, "iptables", "-N", "FOREIGN")
    lab.ex(n, "iptables", "-A", "FOREIGN", "-s", "10.9.9.9", "-j", "DROP")
    lab.ex(n, "iptables", "-A", "FORWARD", "-j", "FOREIGN")
    lab.ex(n, "ipset", "create", "foreign", "hash:ip")
    lab.ex(n, "ipset", "add", "foreign", "10.9.9.9")
    foreign_before = lab.ex(n, "iptables-save", "-t", "filter")
    policies = [policy("x/deny-a", sel(app="a"), ingress=[]),
                policy("x/from-y", sel(app="a"), ingress=[rule([peer(namespaces=sel(team="y"))], [port("http")])]),
                policy("x/no-egress-b", sel(app="b"), egress=[], types=[EGRESS])]
    first = desired(*policies)
    started = time.monotonic()
    results = lab.backend(*[("sync", (first, i % 3 == 0)) for i in range(12)])
    elapsed = time.monotonic() - started
    save = lab.kr_save()
    lab.backend(("sync", (first, True)), ("sync", (first, False)))
    assert lab.kr_save() == save
    assert "written" in lab.last_stderr and "0 set(s) written, 0 chain(s) written" in lab.last_stderr
    for chain in ("INPUT", "FORWARD", "OUTPUT"):  # one hook each, and first
        rules = [line for line in lab.ex(n, "iptables", "-S", chain).splitlines() if line.startswith("-A")]
        assert rules[0].endswith("-j KR-FW") and sum(r.endswith("-j KR-FW") for r in rules) == 1
    # a hook pushed down by another tool is put back first by the next full sync
    lab.ex(n, "iptables", "-I", "FORWARD", "1", "-j", "FOREIGN")
    lab.sync(first)
    assert lab.ex(n, "iptables", "-S", "FORWARD").splitlines()[1].endswith("-j KR-FW")
    lab.ex(n, "iptables", "-D", "FORWARD", "1")
    after = lab.ex(n, "iptables-save", "-t", "filter")
    for line in foreign_before.splitlines():
        if "FOREIGN" in line:
            assert line in after
    assert "10.9.9.9" in lab.ex(n, "ipset", "list", "foreign")
    # a policy change rewrites that policy's chain only; the ruleset shrinks back cleanly
    lab.sync(desired(*policies[:1]), full=False)
    assert lab.kr_sets() == ["KR-FW-KNOWN"]
    assert lab.ex(n, "ipset", "list", "-n").split().count("foreign") == 1
    lab.backend(("cleanup", None), ("cleanup", None))
    assert lab.kr_save() == "" and lab.kr_save("legacy") == "" and lab.kr_sets() == []
    assert "FOREIGN" in lab.ex(n, "iptables", "-S", "FORWARD") and "foreign" in lab.ex(n, "ipset", "list", "-n")
    print(f"12 syncs in one process: {elapsed:.2f} s, per sync ms: {[r['ms'] for r in results]}")


def test_large_sets_are_sized_reused_and_edited(lab: FwLab) -> None:
    """A set of 3,000 members is created with room for them (hashsize), a full resync of the same
    state writes nothing, a leftover temporary set (a crash mid-swap) with another hash size is reused,
    and one pod more is one edit, not a new set."""
    many = [pod(f"y/m{i}", f"10.250.{i // 250}.{i % 250 + 1}", node="node-b", app="m") for i in range(3000)]
    from_y = policy("x/from-y", sel(app="a"), ingress=[rule([peer(namespaces=sel(team="y"))])])
    lab.sync(desired(from_y, pods=ALL_PODS + many))
    (big,) = [name for name in lab.kr_sets() if name.startswith("KR-FW-S-")]
    header = lab.ex(lab.node, "ipset", "list", "-t", big)
    assert "Number of entries: 3002" in header and "hashsize 4096" in header
    lab.sync(desired(from_y, pods=ALL_PODS + many))
    assert "0 set(s) written, 0 chain(s) written" in lab.last_stderr
    lab.ex(lab.node, "ipset", "create", f"{big}-tmp", "hash:ip", "family", "inet")
    one_more = ALL_PODS + many + [pod("y/late", "10.250.99.1", node="node-b")]
    lab.sync(desired(from_y, pods=one_more), full=False)
    assert "Number of entries: 3003" in lab.ex(lab.node, "ipset", "list", "-t", big)
    lab.sync(desired(from_y, pods=one_more))  # full: the stray temporary set goes
    assert f"{big}-tmp" not in lab.kr_sets() and "0 chain(s) written" in lab.last_stderr
    assert lab.check("remote", "tcp", A) and not lab.check("b", "tcp", A)


def test_a_node_on_iptables_legacy_is_policed_there(lab: FwLab) -> None:
    """kubelet's canary chain in iptables-legacy makes kr write its firewall there, and only there: the
    policy holds on real traffic, a full resync finds legacy's save form equal to kr's and writes
    nothing, and cleanup empties legacy's filter table of kr again."""
    lab.ex(lab.node, "iptables-legacy", "-t", "mangle", "-N", "KUBE-KUBELET-CANARY")
    deny_a = policy("x/deny-a", sel(app="a"), ingress=[])
    from_c = policy("x/from-c", sel(app="a"), ingress=[rule([peer(sel(app="c"), sel(team="y"))], [port(80)])])
    lab.sync(desired(deny_a, from_c))
    assert "iptables-legacy" in lab.last_stderr
    assert "-j KR-FW" in lab.kr_save("legacy") and lab.kr_save("nft") == ""
    assert not lab.check("b", "tcp", A) and not lab.check("remote", "udp", A)
    assert lab.check("c", "tcp", A) and not lab.check("c", "tcp", A, 81)
    assert lab.check("node", "tcp", A) and lab.check("a", "tcp", B)
    lab.sync(desired(deny_a, from_c))
    assert "0 set(s) written, 0 chain(s) written" in lab.last_stderr
    lab.backend(("cleanup", None))
    assert lab.kr_save("legacy") == "" and lab.kr_sets() == []
    assert "KUBE-KUBELET-CANARY" in lab.ex(lab.node, "iptables-legacy-save", "-t", "mangle")
    assert lab.check("b", "tcp", A)
