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
