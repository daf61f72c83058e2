"""kr's BIRD refuses to start, plainly, where another program already holds the BGP port: BIRD itself would
start, fail to bind and take no session from its peers, which is much harder to see. Checked in a network
namespace this test creates (``krbgpport-<hex>``) and always deletes."""

from __future__ import annotations

import secrets
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from kr_lab import netns as labns
from kr_lab.nsenter import run_in_netns
from kr_plugins.routing.birddaemon import BirdDaemon, BirdError, listening_ports, port_listened

PROC_NET_TCP = """\
  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000:00B3 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1 1 0 100 0 0 10 0
   1: 0100007F:9D6B 0100007F:00B3 01 00000000:00000000 00:00000000 00000000     0        0 2 1 0 20 4 30 10 -1
"""


def test_listening_ports_are_read_from_proc_net_tcp() -> None:
    assert listening_ports(PROC_NET_TCP) == {179}  # the established connection's ports do not count


@pytest.fixture
def namespace() -> Iterator[str]:
    name = f"krbgpport-{secrets.token_hex(3)}"
    labns.create(name)
    try:
        yield name
    finally:
        labns.delete([name])


def test_a_taken_bgp_port_stops_birds_start_with_a_plain_error(namespace: str, tmp_path: Path) -> None:
    assert run_in_netns(namespace, port_listened, 179) is False
    holder = run_in_netns(namespace, socket.create_server, ("0.0.0.0", 179))
    with holder:
        assert run_in_netns(namespace, port_listened, 179) is True
        assert run_in_netns(namespace, port_listened, 180) is False
        daemon = BirdDaemon(tmp_path / "node", 179)
        with pytest.raises(BirdError, match="TCP port 179 is already taken"):
            run_in_netns(namespace, daemon.apply, "router id 10.0.0.1;\nprotocol device {}\n")
        assert not daemon.running()
