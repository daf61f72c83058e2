"""The BGP speaker behind ``routing.bgp``: what the backend asks of it, so a third party can plug in another.

``routing.bgp`` decides everything (``bgpplan.BgpPlan``: sessions, announcements, what to accept, what to
send external routers) and hands each sync's whole plan to a speaker, which runs the sessions and
installs the routes it learns into the kernel. kr ships ``bird`` (``birdspeaker.BirdSpeaker``, BIRD 2);
another speaker (GoBGP, FRR, ExaBGP) is a class in any pip package, registered under the entry-point
group ``krouter.bgp_speakers`` and chosen with ``--bgp-speaker NAME``:

    [options.entry_points]
    krouter.bgp_speakers =
        gobgp = kr_gobgp.speaker:GoBgpSpeaker

The class is called with a ``SpeakerContext`` and must provide what ``Speaker`` lists. ``kr bgp`` and the
agent's BGP metrics read sessions and routes through the same interface.

Invariants: a speaker is level-triggered (``apply`` gets the complete plan every time and returns whether
it changed anything); it touches only what it owns (its process, its files under ``run_dir``, its
kernel routes) and removes all of it, and only it, in ``cleanup``; there is no stop: when kr stops or
restarts, the speaker's sessions and routes stay in place; every error it raises is a ``KrError`` with a
plain message (``load_speaker`` wraps a third party's failure to load or to construct).
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Protocol

from kr_core.errors import KrError
from kr_plugins.routing.bgpplan import BgpPlan

SPEAKERS_GROUP = "krouter.bgp_speakers"
DEFAULT_SPEAKER = "bird"


class SpeakerError(KrError):
    """The speaker is missing, refused its configuration or does not answer."""


@dataclass(frozen=True, slots=True)
class BgpSession:
    """One BGP session of the speaker."""

    protocol: str  # the speaker's own name for it
    peer: str  # the node's name, or the external router's address
    address: str
    asn: str
    state: str  # the BGP state: Established, Active, Connect, ...
    since: str
    info: str
    imported: int = 0  # routes taken from the peer (after the import filter)
    exported: int = 0  # routes sent to it


@dataclass(frozen=True, slots=True)
class BgpRoute:
    prefix: str
    via: str  # the next hop, or the route's kind (unreachable, ...) when it has none
    source: str  # the session (or the announcement) it came from
    best: bool


@dataclass(frozen=True, slots=True)
class SpeakerContext:
    node_name: str
    run_dir: Path  # this node's directory for the speaker's files (``--bgp-run-dir/<node>``)
    port: int  # ``--bgp-port``


class Speaker(Protocol):
    def check(self) -> None:
        """Raise ``SpeakerError`` when the speaker cannot run here (not installed, say)."""

    def apply(self, plan: BgpPlan, subnet: str | None, overlaid: tuple[str, ...]) -> bool:
        """Run with ``plan``; ``subnet`` is this node's (peers inside it are directly connected), and the
        prefixes in ``overlaid`` reach the kernel by the overlay, not by this speaker. Returns whether
        anything was started or reconfigured."""

    def heal(self) -> bool:
        """Start again, with the last plan, if the speaker died; returns whether it had to."""

    def running(self) -> bool: ...

    def sessions(self) -> list[BgpSession]: ...

    def routes(self) -> list[BgpRoute]: ...

    def cleanup(self) -> None:
        """Stop for good and remove everything the speaker owns, its kernel routes included."""


def speaker_names() -> list[str]:
    return sorted({ep.name for ep in metadata.entry_points(group=SPEAKERS_GROUP)})


def load_speaker(name: str, context: SpeakerContext) -> Speaker:
    """The speaker registered as ``name``; ``SpeakerError`` names the installed ones when there is none."""
    found = list(metadata.entry_points(group=SPEAKERS_GROUP, name=name))
    if not found:
        raise SpeakerError(f"no BGP speaker {name!r}; installed: {', '.join(speaker_names()) or 'none'} "
                           f"(entry-point group {SPEAKERS_GROUP})")
    try:
        factory = found[0].load()
    except Exception as exc:  # noqa: BLE001 (a third party's import error, named)
        raise SpeakerError(f"BGP speaker {name!r} ({found[0].value}) failed to load: {exc}") from None
    try:
        speaker: Speaker = factory(context)
    except KrError:
        raise
    except Exception as exc:  # noqa: BLE001 (a third party's constructor, named)
        raise SpeakerError(f"BGP speaker {name!r} could not be set up: {type(exc).__name__}: {exc}") from None
    return speaker
