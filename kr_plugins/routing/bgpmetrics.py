"""Prometheus metrics of ``routing.bgp``'s sessions, read from the speaker when /metrics is scraped.

Per peer (labels ``peer`` — the node's name, or the external router's address — and ``address``):
``kr_bgp_peer_info`` (1, with ``asn`` and ``state`` as labels, as kube-router's ``bgp_peer_info`` carries
them), ``kr_bgp_peer_established`` (1 or 0), ``kr_bgp_routes_received`` and ``kr_bgp_routes_advertised``
(the routes taken from and sent to the peer now). Nothing is cached: each scrape asks the speaker (BIRD:
``birdc show protocols all``, a few milliseconds); while it is not running or does not answer,
the families are empty (the scrape of everything else goes on).
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from kr_core.errors import KrError
from kr_plugins.routing.speaker import Speaker


class BgpCollector(Collector):
    def __init__(self, speaker: Speaker) -> None:
        self._speaker = speaker

    def collect(self) -> Iterator[GaugeMetricFamily]:
        info = GaugeMetricFamily("kr_bgp_peer_info", "A BGP peer of this node's speaker, with its AS and state.",
                                 labels=["peer", "address", "asn", "state"])
        established = GaugeMetricFamily("kr_bgp_peer_established", "1 while the session is Established.",
                                        labels=["peer", "address"])
        received = GaugeMetricFamily("kr_bgp_routes_received", "Routes taken from the peer.", labels=["peer", "address"])
        advertised = GaugeMetricFamily("kr_bgp_routes_advertised", "Routes sent to the peer.", labels=["peer", "address"])
        try:
            sessions = self._speaker.sessions() if self._speaker.running() else []
        except KrError:  # BIRD died or stalled between two questions: this scrape has no sessions
            sessions = []
        for session in sessions:
            peer = [session.peer, session.address]
            info.add_metric([*peer, session.asn, session.state], 1)
            established.add_metric(peer, 1 if session.state == "Established" else 0)
            received.add_metric(peer, session.imported)
            advertised.add_metric(peer, session.exported)
        yield from (info, established, received, advertised)
