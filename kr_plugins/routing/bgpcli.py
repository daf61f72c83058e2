"""``kr bgp``: what this node's BGP speaker (kr's BIRD unless ``--bgp-speaker``; docs/bgp.md) holds.

Run on the node (in its network namespace), with the agent's ``--bgp-run-dir``, ``--bgp-speaker`` and node
name. Reads the speaker through the ``Speaker`` interface (BIRD: its control socket); never changes
anything. ``--json`` prints machine-readable rows.

Invariants: read-only; a node whose speaker is not running gets a plain error saying where it looked.
"""

from __future__ import annotations

import socket
from pathlib import Path

import click

from kr_core.tables import rows_text
from kr_plugins.routing.bgp import DEFAULT_RUN_DIR
from kr_plugins.routing.speaker import DEFAULT_SPEAKER, Speaker, SpeakerContext, SpeakerError, load_speaker

node_option = click.option("--hostname-override", "node", envvar="NODE_NAME", default=socket.gethostname,
                           show_default="$NODE_NAME, else the hostname", help="This node's name (as the agent's).")
run_dir_option = click.option("--bgp-run-dir", "run_dir", default=DEFAULT_RUN_DIR, show_default=True,
                              help="The agent's --bgp-run-dir.")
speaker_option = click.option("--bgp-speaker", "speaker_name", default=DEFAULT_SPEAKER, show_default=True,
                              help="The agent's --bgp-speaker.")
json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON.")


def _speaker(name: str, run_dir: str, node: str) -> Speaker:
    directory = Path(run_dir) / node
    try:
        speaker = load_speaker(name, SpeakerContext(node, directory, 179))
    except SpeakerError as exc:
        raise click.ClickException(str(exc)) from None
    if not speaker.running():
        raise click.ClickException(f"kr's BGP speaker {name!r} is not running in {directory} "
                                   f"(is routing.bgp running on {node}?)")
    return speaker


@click.group()
def bgp() -> None:
    """This node's BGP sessions and routes (routing.bgp)."""


@bgp.command()
@node_option
@run_dir_option
@speaker_option
@json_option
def peers(node: str, run_dir: str, speaker_name: str, as_json: bool) -> None:
    """The BGP sessions: peer node, address, AS, state and since when."""
    rows = [{"peer": p.peer, "address": p.address, "asn": p.asn, "state": p.state, "since": p.since, "info": p.info}
            for p in _speaker(speaker_name, run_dir, node).sessions()]
    click.echo(rows_text(rows, ("peer", "address", "asn", "state", "since", "info"), as_json))


@bgp.command()
@node_option
@run_dir_option
@speaker_option
@json_option
def routes(node: str, run_dir: str, speaker_name: str, as_json: bool) -> None:
    """The routes the speaker holds: prefix, next hop, the session (or kr_pods) it came from, and whether it is used."""
    rows = [{"prefix": r.prefix, "via": r.via, "source": r.source, "best": "yes" if r.best else "no"}
            for r in _speaker(speaker_name, run_dir, node).routes()]
    click.echo(rows_text(rows, ("prefix", "via", "source", "best"), as_json))
