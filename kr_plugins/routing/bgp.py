"""``routing.bgp``: kube-router's BGP pod networking, with BIRD 2 as the default speaker (docs/bgp.md).

Each sync plans this node's BGP (``bgpplan``: announce this node's pod CIDRs, a session with every other
node, accept exactly their pod CIDRs, what goes to external routers) and hands the plan to the speaker
(``--bgp-speaker``, found in the entry-point group ``krouter.bgp_speakers``; see ``speaker``): kr's own,
``bird`` (``birdspeaker``), renders BIRD's configuration and runs one BIRD per node, which installs the
learned routes itself (``proto bird``, metric 107). Nodes outside this node's subnet (every
node, with ``--overlay-type full``) are reached through ``routing.static``'s VXLAN overlay, and pod egress
is masqueraded, by the same code (``programmer.RoutingProgrammer`` with ``plan_routes``' plan minus its
direct routes); the speaker keeps the CIDRs the overlay carries out of the kernel.

Invariants:
- level-triggered: every sync hands the speaker the whole plan; BIRD is touched only when its
  configuration's text changed, and BIRD's soft reconfiguration keeps the sessions a change does not concern;
- the Node objects and their annotations are read on every sync, so a new node, a removed node or a
  changed ``kube-router.io/node.asn`` takes effect without restarting kr (kube-router reads them at start);
- kr's restarts leave the speaker running with its sessions and routes: ``stop`` does nothing to it, only
  ``cleanup`` has it shut down and delete the kernel routes it left (BIRD's: ``proto bird``, metric 107),
  and removes what the overlay and egress own (``kr-vxlan``, protocol-107 routes, the egress chain and set);
- a pod CIDR the overlay carries is never also a BIRD route in the kernel;
- a sync that moves a peer onto the overlay programs the overlay before the speaker, so that peer is never
  unrouted; other syncs hand the speaker its plan first (a joining node waits for its sessions, not for
  the overlay device and egress rules);
- while kr runs, a speaker that died is started again within ``WATCH_INTERVAL`` with the last plan
  (``Speaker.heal``; BIRD's kernel routes stayed: ``persist``);
- while this node's Node object is missing (or has no IPv4 address) nothing is changed.
"""

from __future__ import annotations

import ipaddress
import logging
import threading
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import click
from pyroute2 import IPRoute

from kr_core.backends import Backend, BackendContext, BackendSpec
from kr_core.changes import ChangeSet
from kr_core.config import OptionRegistry
from kr_core.errors import ConfigError, KrError
from kr_core.hookspecs import hookimpl
from kr_core.model import DesiredState
from kr_plugins.routing.bgpmetrics import BgpCollector
from kr_plugins.routing.bgpadvertise import AdvertiseSettings
from kr_plugins.routing.bgppeers import flag_peers
from kr_plugins.routing.bgpplan import DEFAULT_CLUSTER_ASN, BgpSettings, GracefulRestart, plan_bgp
from kr_plugins.routing.notes import Notes
from kr_plugins.routing.plan import plan_routes
from kr_plugins.routing.programmer import (
    RoutingError,
    RoutingProgrammer,
    add_routing_options,
    routing_settings,
)
from kr_plugins.routing.routes import read_underlay
from kr_plugins.routing.speaker import DEFAULT_SPEAKER, SpeakerContext, load_speaker

log = logging.getLogger(__name__)

NAME = "routing.bgp"
DEFAULT_RUN_DIR = "/run/kr/bgp"


def bgp_settings(options: Mapping[str, Any]) -> BgpSettings:
    """The backend's settings from parsed options; ``ConfigError`` names a bad external peer setting."""
    restart = None
    if options.get("bgp_graceful_restart"):
        restart = GracefulRestart(time=int(options.get("bgp_graceful_restart_time") or 90),
                                  deferral=int(options.get("bgp_graceful_restart_deferral_time") or 360))
    return BgpSettings(cluster_asn=int(options.get("cluster_asn") or DEFAULT_CLUSTER_ASN),
                       full_mesh=bool(options.get("nodes_full_mesh", True)),
                       router_id=options.get("router_id") or None,
                       port=int(options.get("bgp_port") or 179),
                       hold_time=int(options.get("bgp_holdtime") or 90),
                       external_peers=flag_peers(options, _read(options.get("peer_router_passwords_file"))),
                       # kube-router: a TTL below 2 means a direct session
                       multihop_ttl=ttl if (ttl := int(options.get("peer_router_multihop_ttl") or 0)) >= 2 else None,
                       advertise=AdvertiseSettings(cluster_ip=bool(options.get("advertise_cluster_ip")),
                                                   external_ip=bool(options.get("advertise_external_ip")),
                                                   loadbalancer_ip=bool(options.get("advertise_loadbalancer_ip")),
                                                   pod_cidr=bool(options.get("advertise_pod_cidr", True))),
                       override_nexthop=bool(options.get("override_nexthop")),
                       graceful_restart=restart)


def _read(path: str | None) -> str | None:
    """The text of the file at ``path`` (None for no path); ``ConfigError`` when it cannot be read."""
    if not path:
        return None
    try:
        return Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"--peer-router-passwords-file: {exc}") from None


#: How often the agent checks that its speaker is alive (and starts it again if it is not).
WATCH_INTERVAL = 2.0


class BgpRouting(Backend):
    def __init__(self, context: BackendContext) -> None:
        options = context.config.options
        self.settings = bgp_settings(options)
        # routing.static's overlay (nodes outside this subnet) and pod egress, programmed by the same code
        self.routing = routing_settings(options)
        self.programmer = RoutingProgrammer()
        run_dir = Path(options.get("bgp_run_dir") or DEFAULT_RUN_DIR) / context.config.node_name
        self.speaker = load_speaker(options.get("bgp_speaker") or DEFAULT_SPEAKER,
                                    SpeakerContext(context.config.node_name, run_dir, self.settings.port))
        if context.registry is not None:
            context.registry.register(BgpCollector(self.speaker))
        self._notes = Notes(log)
        self._overlaid: tuple[str, ...] = ()  # the pod CIDRs the overlay carried after the last sync
        self._stopping = threading.Event()
        self._watchdog: threading.Thread | None = None

    def start(self) -> None:
        self.speaker.check()
        self._watchdog = threading.Thread(target=self._watch, name="bgp-watchdog", daemon=True)
        self._watchdog.start()

    def stop(self) -> None:
        """Stop watching the speaker; the speaker itself keeps running (a kr restart must not touch BGP)."""
        self._stopping.set()

    def _watch(self) -> None:
        """Start the speaker again, with the last plan, when it died (a crash, an OOM kill)."""
        while not self._stopping.wait(WATCH_INTERVAL):
            try:
                if self.speaker.heal():
                    log.error("BGP: the speaker was not running; started it again")
            except Exception as exc:  # noqa: BLE001 (logged; tried again at the next interval)
                log.error("BGP: the speaker is not running and could not be started again: %s", exc)

    def sync(self, desired: DesiredState, *, full: bool, changed: ChangeSet) -> None:
        plan = plan_bgp(desired, self.settings)
        if plan is None:
            self._notes.tell([f"node {desired.node_name} is not in the API or has no IPv4 address: BGP is left as it is"])
            return
        self._notes.tell(plan.notes)
        failures: list[str] = []
        with IPRoute() as ipr:
            underlay = read_underlay(ipr, plan.local_address)
            # the overlay, its routes, the sysctls and pod egress as routing.static programs them; the nodes
            # in this subnet are BGP's (the speaker installs their routes), so the plan's direct routes go
            routed = plan_routes(desired, underlay, self.routing) if underlay is not None else None
            overlaid = routed.overlaid if routed is not None else ()
            # a peer moving onto the overlay gets its overlay route before the speaker drops its own; else
            # the speaker goes first (its sessions are what a new node waits for)
            overlay_first = not set(overlaid) <= set(self._overlaid)
            if routed is not None and overlay_first:
                failures = self.programmer.apply(ipr, routed.without_direct(), full)
                if failures:  # the speaker keeps the routes the overlay was to take over
                    overlaid = tuple(sorted(set(overlaid) & set(self._overlaid)))
            subnet = str(ipaddress.IPv4Network(underlay.network)) if underlay is not None else None
            try:
                if self.speaker.apply(plan, subnet, overlaid):  # the speaker leaves the overlay's CIDRs to it
                    log.info("BGP: %d peer(s), announcing %s%s%s", len(plan.peers),
                             ", ".join(plan.announce) or "nothing",
                             f"; to external routers also {', '.join(plan.export.vips)}" if plan.export.vips else "",
                             f"; through the overlay: {', '.join(overlaid)}" if overlaid else "")
                self._overlaid = overlaid
            except KrError as exc:  # the overlay and egress are still programmed; the sync fails after them
                failures.append(f"BGP speaker: {exc}")
            if routed is not None and not overlay_first:
                failures += self.programmer.apply(ipr, routed.without_direct(), full)
        if underlay is None:
            raise RoutingError(f"node IP {plan.local_address} of {desired.node_name} is on no interface in this "
                               "network namespace: no overlay or pod egress (run kr in the node's namespace, "
                               "or fix the node's InternalIP)")
        if failures:
            raise RoutingError(f"{len(failures)} routing failure(s): {'; '.join(failures)}")

    def cleanup(self) -> None:
        self._stopping.set()
        failures = []
        try:
            self.speaker.cleanup()  # BIRD stopped, its routes (proto bird, metric 107) deleted
        except KrError as exc:  # still remove the overlay and egress
            failures.append(f"BGP speaker: {exc}")
        failures += self.programmer.cleanup()  # the egress chain and set, kr-vxlan, kr's protocol-107 routes
        if failures:
            raise RoutingError(f"cleanup incomplete: {'; '.join(failures)}")


@hookimpl
def kr_add_options(options: OptionRegistry) -> None:
    options.add(click.Option(["--cluster-asn"], type=click.IntRange(1, 4294967295), default=DEFAULT_CLUSTER_ASN,
                             show_default=True, help="AS number of the nodes (kube-router.io/node.asn overrides it per node)."))
    options.add(click.Option(["--nodes-full-mesh"], type=click.BOOL, default=True, show_default=True,
                             help="Keep an iBGP session between every two nodes."))
    options.add(click.Option(["--router-id"], default=None, help="BGP router id (default: the node's IPv4 address)."))
    options.add(click.Option(["--bgp-port"], type=click.IntRange(1, 65535), default=179, show_default=True,
                             help="TCP port of the BGP sessions between nodes."))
    options.add(click.Option(["--bgp-holdtime"], type=click.IntRange(3, 65535), default=90, show_default=True,
                             help="BGP hold time in seconds."))
    options.add(click.Option(["--bgp-run-dir"], default=DEFAULT_RUN_DIR, show_default=True,
                             help="Where kr's BGP speaker keeps its configuration and control socket (a directory "
                                  "per node)."))
    options.add(click.Option(["--bgp-speaker"], default=DEFAULT_SPEAKER, show_default=True,
                             help="The BGP speaker (entry-point group krouter.bgp_speakers): bird, or a third party's."))
    for flag, text in (("--peer-router-ips", "External BGP routers every node peers with (comma-separated)."),
                       ("--peer-router-asns", "Their AS numbers, position by position."),
                       ("--peer-router-ports", "Their ports, position by position (default 179)."),
                       ("--peer-router-passwords", "Their MD5 passwords, base64-encoded, position by position "
                                                   "(empty: none).")):
        options.add(click.Option([flag], default=None, help=text))
    options.add(click.Option(["--peer-router-passwords-file"], default=None,
                             help="A file holding --peer-router-passwords' list (kept out of the process list)."))
    options.add(click.Option(["--peer-router-multihop-ttl"], type=click.IntRange(1, 255), default=None,
                             help="TTL of the sessions to external routers more than one hop away."))
    for flag, text in (("--advertise-cluster-ip", "Advertise services' cluster IPs to external routers."),
                       ("--advertise-external-ip", "Advertise services' external IPs to external routers."),
                       ("--advertise-loadbalancer-ip", "Advertise LoadBalancer services' ingress IPs to external "
                                                       "routers."),
                       ("--override-nexthop", "Send external routers the address of the session to each as the "
                                              "next hop (BGP next-hop-self), not the node's address.")):
        options.add(click.Option([flag], type=click.BOOL, is_flag=False, flag_value=True, default=False,
                                 show_default=True, help=text))
    options.add(click.Option(["--advertise-pod-cidr"], type=click.BOOL, is_flag=False, flag_value=True, default=True,
                             show_default=True, help="Advertise the node's pod CIDR to external routers."))
    options.add(click.Option(["--bgp-graceful-restart"], type=click.BOOL, is_flag=False, flag_value=True,
                             default=False, show_default=True,
                             help="BGP graceful restart: peers keep this node's routes while its BIRD restarts."))
    options.add(click.Option(["--bgp-graceful-restart-time"], type=click.IntRange(1, 4095), default=90,
                             show_default=True, help="Seconds peers keep the routes of a restarting BIRD."))
    options.add(click.Option(["--bgp-graceful-restart-deferral-time"], type=click.IntRange(1, 3600), default=360,
                             show_default=True, help="Seconds a BIRD started again over its old routes waits "
                                                     "for its peers before replacing them."))
    add_routing_options(options)  # the overlay and pod egress flags, shared with routing.static


@hookimpl
def kr_backends() -> Iterable[BackendSpec]:
    return [BackendSpec(slot="routing", name=NAME, factory=BgpRouting,
                        watches=frozenset({"nodes", "services", "endpointslices"}),  # the advertised VIPs
                        description="pod CIDRs over BGP (BIRD 2): full mesh, per-node ASN, route reflectors, "
                                    "external routers, service VIPs")]
