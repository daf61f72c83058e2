"""The speaker interface: ``routing.bgp`` drives whatever speaker ``--bgp-speaker`` names, found in the
entry-point group ``krouter.bgp_speakers``, and ``kr bgp`` and the metrics read it the same way.

A third party's speaker is stood in for by ``RecordingSpeaker``, registered under the name ``recording``
the way a pip package would register it (an entry point naming ``module:Class``).
"""

from __future__ import annotations

from collections.abc import Iterator
from importlib import metadata
from pathlib import Path

import pytest
from click.testing import CliRunner
from prometheus_client import CollectorRegistry, generate_latest

from kr_core.backends import BackendContext
from kr_core.changes import ChangeSet
from kr_core.config import AgentConfig
from kr_core.model import DesiredState, FrozenMap, Node, NodeAddress
from kr_plugins.routing.bgp import BgpRouting
from kr_plugins.routing.bgpcli import bgp
from kr_plugins.routing.bgpplan import BgpPlan
from kr_plugins.routing.birdspeaker import BirdSpeaker
from kr_plugins.routing.programmer import RoutingError
from kr_plugins.routing.speaker import (
    SPEAKERS_GROUP,
    BgpRoute,
    BgpSession,
    SpeakerContext,
    SpeakerError,
    load_speaker,
)


class RecordingSpeaker:
    """A speaker that records what it is asked and reports one session and one route."""

    made: list[RecordingSpeaker] = []

    def __init__(self, context: SpeakerContext) -> None:
        self.context = context
        self.applied: list[tuple[BgpPlan, str | None, tuple[str, ...]]] = []
        RecordingSpeaker.made.append(self)

    def check(self) -> None:
        pass

    def apply(self, plan: BgpPlan, subnet: str | None, overlaid: tuple[str, ...]) -> bool:
        self.applied.append((plan, subnet, overlaid))
        return True

    def heal(self) -> bool:
        return False

    def running(self) -> bool:
        return True

    def sessions(self) -> list[BgpSession]:
        return [BgpSession("gobgp-1", "node-b", "192.168.50.12", "64512", "Established", "10:00:00", "", 1, 1)]

    def routes(self) -> list[BgpRoute]:
        return [BgpRoute("10.244.2.0/24", "192.168.50.12", "gobgp-1", True)]

    def cleanup(self) -> None:
        pass


@pytest.fixture
def recording(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """``recording`` registered beside the installed speakers, as a third-party package would add it."""
    extra = metadata.EntryPoint(name="recording", value=f"{__name__}:RecordingSpeaker", group=SPEAKERS_GROUP)
    real = metadata.entry_points

    def entry_points(**kwargs):  # type: ignore[no-untyped-def]
        found = list(real(**kwargs))
        if kwargs.get("group") == SPEAKERS_GROUP and kwargs.get("name") in (None, "recording"):
            found.append(extra)
        return metadata.EntryPoints(found)

    monkeypatch.setattr(metadata, "entry_points", entry_points)
    RecordingSpeaker.made.clear()
    yield


def test_bird_is_the_installed_default_and_an_unknown_speaker_is_named(tmp_path: Path) -> None:
    assert isinstance(load_speaker("bird", SpeakerContext("n", tmp_path, 179)), BirdSpeaker)
    with pytest.raises(SpeakerError, match=r"no BGP speaker 'gobgp'; installed: bird \(entry-point group "
                                           r"krouter.bgp_speakers\)"):
        load_speaker("gobgp", SpeakerContext("n", tmp_path, 179))


def test_a_third_party_speaker_gets_the_plan_and_serves_metrics(recording: None, tmp_path: Path) -> None:
    registry = CollectorRegistry()
    options = {"bgp_speaker": "recording", "bgp_run_dir": str(tmp_path), "bgp_port": 1179}
    backend = BgpRouting(BackendContext(AgentConfig("node-a", ("routing.bgp",), options), lambda: None, registry))
    [speaker] = RecordingSpeaker.made
    assert speaker.context == SpeakerContext("node-a", tmp_path / "node-a", 1179)
    nodes = tuple(Node(name, (NodeAddress("InternalIP", ip),), (cidr,), FrozenMap(), FrozenMap())
                  for name, ip, cidr in (("node-a", "192.0.2.201", "10.244.1.0/24"),
                                         ("node-b", "192.0.2.202", "10.244.2.0/24")))
    # 192.0.2.201 (TEST-NET-1) is on no interface here: the speaker still gets the plan, then the sync
    # reports that the overlay and egress have no interface (read-only: nothing is programmed)
    with pytest.raises(RoutingError, match="is on no interface"):
        backend.sync(DesiredState(node_name="node-a", node=nodes[0], nodes=nodes), full=True, changed=ChangeSet())
    [(plan, subnet, overlaid)] = speaker.applied
    assert (plan.announce, plan.accept, [p.node for p in plan.peers]) == (("10.244.1.0/24",), ("10.244.2.0/24",), ["node-b"])
    assert (subnet, overlaid) == (None, ())
    text = generate_latest(registry).decode()
    assert 'kr_bgp_peer_established{address="192.168.50.12",peer="node-b"} 1.0' in text


def test_kr_bgp_reads_the_speaker_it_is_told(recording: None, tmp_path: Path) -> None:
    common = ["--bgp-speaker", "recording", "--bgp-run-dir", str(tmp_path), "--hostname-override", "node-a"]
    peers = CliRunner().invoke(bgp, ["peers", *common])
    assert peers.exit_code == 0, peers.output
    assert peers.output.splitlines()[1].split() == ["node-b", "192.168.50.12", "64512", "Established", "10:00:00"]
    routes = CliRunner().invoke(bgp, ["routes", *common, "--json"])
    assert '"prefix": "10.244.2.0/24"' in routes.output and '"best": "yes"' in routes.output
    missing = CliRunner().invoke(bgp, ["peers", "--bgp-speaker", "nope", "--bgp-run-dir", str(tmp_path)])
    assert missing.exit_code == 1 and "no BGP speaker 'nope'" in missing.output


class RecordingProgrammer:
    """Stands in for the overlay and egress programmer: records the order of calls, programs nothing."""

    def __init__(self, calls: list[str], fail: bool = False) -> None:
        self.calls, self.fail = calls, fail

    def apply(self, ipr: object, plan: object, full: bool) -> list[str]:
        self.calls.append("programmer")
        return ["overlay device kr-vxlan: refused"] if self.fail else []


class FailingSpeaker(RecordingSpeaker):
    def apply(self, plan: BgpPlan, subnet: str | None, overlaid: tuple[str, ...]) -> bool:
        super().apply(plan, subnet, overlaid)
        raise SpeakerError("BIRD refused kr's configuration")


def sync_order(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, speaker_fails: bool, programmer_fails: bool,
               far_node: bool) -> tuple[list[str], RecordingSpeaker, str | None]:
    """One sync of node-a (192.0.2.201/24 on eth0, faked) with node-b in its subnet and, if ``far_node``,
    node-c in another; returns the call order, the speaker and the sync's error."""
    from kr_plugins.routing import bgp as bgp_module
    from kr_plugins.routing.routes import Underlay

    monkeypatch.setattr(bgp_module, "read_underlay", lambda ipr, ip: Underlay(ip, "192.0.2.0/24", "eth0", 1500))
    monkeypatch.setattr(bgp_module, "load_speaker", lambda name, context: (FailingSpeaker if speaker_fails
                                                                          else RecordingSpeaker)(context))
    calls: list[str] = []
    backend = BgpRouting(BackendContext(AgentConfig("node-a", ("routing.bgp",), {"bgp_run_dir": str(tmp_path)}),
                                        lambda: None))
    backend.programmer = RecordingProgrammer(calls, programmer_fails)  # type: ignore[assignment]
    speaker = RecordingSpeaker.made[-1]
    original = speaker.apply

    def apply(plan: BgpPlan, subnet: str | None, overlaid: tuple[str, ...]) -> bool:
        calls.append("speaker")
        return original(plan, subnet, overlaid)

    speaker.apply = apply  # type: ignore[method-assign]
    rows = [("node-a", "192.0.2.201", "10.244.1.0/24"), ("node-b", "192.0.2.202", "10.244.2.0/24")]
    rows += [("node-c", "198.51.100.9", "10.244.3.0/24")] if far_node else []
    nodes = tuple(Node(n, (NodeAddress("InternalIP", ip),), (cidr,), FrozenMap(), FrozenMap()) for n, ip, cidr in rows)
    try:
        backend.sync(DesiredState(node_name="node-a", node=nodes[0], nodes=nodes), full=True, changed=ChangeSet())
    except RoutingError as exc:
        return calls, speaker, str(exc)
    return calls, speaker, None


def test_the_speaker_goes_first_unless_a_peer_moves_onto_the_overlay(
        recording: None, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    calls, speaker, error = sync_order(monkeypatch, tmp_path, False, False, far_node=False)
    assert (calls, error) == (["speaker", "programmer"], None)
    calls, speaker, error = sync_order(monkeypatch, tmp_path, False, False, far_node=True)
    assert (calls, error) == (["programmer", "speaker"], None)
    assert speaker.applied[-1][2] == ("10.244.3.0/24",)  # the speaker leaves node-c's CIDR to the overlay
    # the overlay failed: the speaker keeps node-c's route (it is not told the overlay carries it)
    calls, speaker, error = sync_order(monkeypatch, tmp_path, False, True, far_node=True)
    assert calls == ["programmer", "speaker"] and speaker.applied[-1][2] == ()
    assert error is not None and "kr-vxlan: refused" in error


def test_a_speaker_failure_still_programs_the_overlay_and_egress(
        recording: None, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    calls, _, error = sync_order(monkeypatch, tmp_path, True, False, far_node=False)
    assert calls == ["speaker", "programmer"]
    assert error == "1 routing failure(s): BGP speaker: BIRD refused kr's configuration"
