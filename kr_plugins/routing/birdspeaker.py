"""``bird``: kr's BGP speaker, BIRD 2 driven the way Calico drives it (the default ``--bgp-speaker``).

Each ``apply`` renders the plan into BIRD's whole configuration (``birdconf``) and hands it to this node's
BIRD (``birddaemon``): started on the first apply, reconfigured in place afterwards, and only when the
text changed. BIRD installs what it learns itself (``proto bird``, metric ``KERNEL_METRIC``).

Invariants:
- kr's restarts leave BIRD running with its sessions and routes (nothing here stops it but ``cleanup``);
- ``heal`` starts a BIRD that died again with the last configuration (its kernel routes stayed:
  ``persist``); with graceful restart on, a BIRD started over routes a previous one left recovers
  gracefully (``bird -R``): it keeps them until its peers have resent theirs;
- ``cleanup`` stops BIRD and deletes exactly the kernel routes it left (``proto bird``, metric 107), each
  one tried even when another fails;
- one of apply, heal and cleanup touches BIRD at a time (the agent's sync and its watchdog thread).
"""

from __future__ import annotations

import errno
import threading

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from kr_plugins.routing.bgpplan import BgpPlan
from kr_plugins.routing.birdconf import KERNEL_METRIC, render_bird
from kr_plugins.routing.birddaemon import BirdDaemon
from kr_plugins.routing.speaker import BgpRoute, BgpSession, SpeakerContext, SpeakerError

RTPROT_BIRD = 12


def left_routes(ipr: IPRoute) -> list[tuple[str, int]]:
    """The kernel routes kr's BIRD installed (``proto bird``, metric 107) as (destination, length)."""
    return [(route.get_attr("RTA_DST"), route["dst_len"]) for route in ipr.get_routes(family=2, proto=RTPROT_BIRD)
            if route.get_attr("RTA_PRIORITY") == KERNEL_METRIC]


class BirdSpeaker:
    def __init__(self, context: SpeakerContext) -> None:
        self.daemon = BirdDaemon(context.run_dir, context.port)
        self._lock = threading.Lock()
        self._config: str | None = None  # what this process last handed to BIRD
        self._graceful = False

    def check(self) -> None:
        BirdDaemon.check_installed()

    def apply(self, plan: BgpPlan, subnet: str | None, overlaid: tuple[str, ...]) -> bool:
        config = render_bird(plan, subnet, overlaid=overlaid)
        with self._lock:
            self._graceful = plan.graceful_restart is not None
            changed = self.daemon.apply(config, recover=self._recovering)
            self._config = config
        return changed

    def heal(self) -> bool:
        with self._lock:
            if self._config is None or self.daemon.running():
                return False
            self.daemon.apply(self._config, recover=self._recovering)
            return True

    def _recovering(self) -> bool:
        """Whether a BIRD started now should recover gracefully: graceful restart is on and a previous
        BIRD's routes are in the kernel (asked only when BIRD is started, not on every apply)."""
        if not self._graceful:
            return False
        with IPRoute() as ipr:
            return bool(left_routes(ipr))

    def running(self) -> bool:
        return self.daemon.running()

    def sessions(self) -> list[BgpSession]:
        return self.daemon.sessions()

    def routes(self) -> list[BgpRoute]:
        return self.daemon.routes()

    def cleanup(self) -> None:
        with self._lock:
            self._config = None
            self.daemon.stop()
        failed = []
        with IPRoute() as ipr:
            for dst, dst_len in left_routes(ipr):
                try:
                    ipr.route("del", dst=dst, dst_len=dst_len, priority=KERNEL_METRIC, proto=RTPROT_BIRD)
                except NetlinkError as exc:
                    if exc.code != errno.ESRCH:  # gone meanwhile: fine
                        failed.append(f"{dst}/{dst_len}: {exc}")
        if failed:
            raise SpeakerError(f"could not delete BIRD's kernel route(s) {', '.join(failed)}")
