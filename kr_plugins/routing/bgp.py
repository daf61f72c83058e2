"""``routing.bgp``: kube-router's BGP pod networking, with BIRD 2 as the speaker (docs/bgp.md).

Each sync plans this node's BGP (``bgpplan``: announce this node's pod CIDRs, a session with every other
node, accept exactly their pod CIDRs), renders BIRD's configuration (``birdconf``) and hands it to this
node's BIRD (``birddaemon``), which is started on the first sync and reconfigured in place afterwards.
BIRD installs learned routes itself (``proto bird``, metric 107).

Invariants:
- level-triggered: every sync renders the whole configuration; BIRD is touched only when the text
  changed, and BIRD's soft reconfiguration keeps the sessions a change does not concern;
- the Node objects and their annotations are read on every sync, so a new node, a removed node or a
  changed ``kube-router.io/node.asn`` takes effect without restarting kr (kube-router reads them at start);
- kr's restarts leave BIRD running with its sessions and routes: ``stop`` does nothing to it, only
  ``cleanup`` shuts it down and deletes the kernel routes it left (``proto bird``, metric 107);
- while kr runs, a BIRD that died is started again within ``WATCH_INTERVAL`` with the last configuration
  (its kernel routes stayed: ``persist``);
- while this node's Node object is missing (or has no IPv4 address) nothing is changed.
"""

from __future__ import annotations

import base64
import binascii
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
from kr_core.errors import ConfigError
from kr_core.hookspecs import hookimpl
from kr_core.model import DesiredState
from kr_plugins.kernel.sysctl import ensure_sysctl
from kr_plugins.routing.bgpmetrics import BgpCollector
from kr_plugins.routing.bgpplan import (
    DEFAULT_CLUSTER_ASN,
    MAX_ASN,
    BgpSettings,
    ExternalPeer,
    plan_bgp,
)
from kr_plugins.routing.birdconf import KERNEL_METRIC, render_bird
from kr_plugins.routing.birddaemon import BirdDaemon
from kr_plugins.routing.notes import Notes
from kr_plugins.routing.plan import IP_FORWARD
from kr_plugins.routing.routes import read_underlay

log = logging.getLogger(__name__)

NAME = "routing.bgp"
RTPROT_BIRD = 12
DEFAULT_RUN_DIR = "/run/kr/bgp"


def bgp_settings(options: Mapping[str, Any]) -> BgpSettings:
    """The backend's settings from parsed options; ``ConfigError`` names a bad external peer setting."""
    return BgpSettings(cluster_asn=int(options.get("cluster_asn") or DEFAULT_CLUSTER_ASN),
                       full_mesh=bool(options.get("nodes_full_mesh", True)),
                       router_id=options.get("router_id") or None,
                       port=int(options.get("bgp_port") or 179),
                       hold_time=int(options.get("bgp_holdtime") or 90),
                       external_peers=external_peers(options),
                       multihop_ttl=options.get("peer_router_multihop_ttl") or None)


def _list(options: Mapping[str, Any], name: str) -> list[str]:
    raw = options.get(name) or ""
    return [item.strip() for item in raw.split(",")] if raw else []


def external_peers(options: Mapping[str, Any]) -> tuple[ExternalPeer, ...]:
    """kube-router's ``--peer-router-ips/asns/ports/passwords`` (comma-separated, position by position;
    passwords base64-encoded, an empty one meaning none)."""
    ips, asns = _list(options, "peer_router_ips"), _list(options, "peer_router_asns")
    ports, passwords = _list(options, "peer_router_ports"), _list(options, "peer_router_passwords")
    if len(ips) != len(asns):
        raise ConfigError(f"--peer-router-ips has {len(ips)} address(es) but --peer-router-asns {len(asns)} AS number(s)")
    for name, values in (("--peer-router-ports", ports), ("--peer-router-passwords", passwords)):
        if values and len(values) != len(ips):
            raise ConfigError(f"{name} has {len(values)} value(s) for {len(ips)} peer router(s)")
    peers = []
    for index, (ip, asn) in enumerate(zip(ips, asns)):
        try:
            address = str(ipaddress.IPv4Address(ip))
            number, port = int(asn), int(ports[index]) if ports else 179
            password = base64.b64decode(passwords[index], validate=True).decode() if passwords and passwords[index] else None
        except (ValueError, binascii.Error) as exc:
            raise ConfigError(f"peer router {index + 1} ({ip}): {exc}") from None
        if not 1 <= number <= MAX_ASN or not 1 <= port <= 65535:
            raise ConfigError(f"peer router {index + 1} ({ip}): AS {asn} or port {port} out of range")
        if password is not None and any(c in password for c in '"\\\n\r'):
            raise ConfigError(f"peer router {index + 1} ({ip}): the password holds a quote, backslash or line break")
        peers.append(ExternalPeer(address, number, port, password))
    return tuple(peers)


#: How often the agent checks that its BIRD is alive (and starts it again if it is not).
WATCH_INTERVAL = 2.0


class BgpRouting(Backend):
    def __init__(self, context: BackendContext) -> None:
        self.settings = bgp_settings(context.config.options)
        run_root = Path(context.config.options.get("bgp_run_dir") or DEFAULT_RUN_DIR)
        self.bird = BirdDaemon(run_root / context.config.node_name, self.settings.port)
        if context.registry is not None:
            context.registry.register(BgpCollector(self.bird))
        self._notes = Notes(log)
        self._lock = threading.Lock()  # one of sync and the watchdog touches BIRD at a time
        self._config: str | None = None  # what this process last handed to BIRD
        self._stopping = threading.Event()
        self._watchdog: threading.Thread | None = None

    def start(self) -> None:
        BirdDaemon.check_installed()
        self._watchdog = threading.Thread(target=self._watch, name="bird-watchdog", daemon=True)
        self._watchdog.start()

    def stop(self) -> None:
        """Stop watching BIRD; BIRD itself keeps running (a kr restart must not touch BGP)."""
        self._stopping.set()

    def _watch(self) -> None:
        """Start BIRD again, with the last configuration, when it died (a crash, an OOM kill)."""
        while not self._stopping.wait(WATCH_INTERVAL):
            with self._lock:
                if self._config is None or self.bird.running():
                    continue
                log.error("BGP: BIRD is not running on %s; starting it again", self.bird.socket)
                try:
                    self.bird.apply(self._config)
                except Exception as exc:  # noqa: BLE001 (logged; tried again at the next interval)
                    log.error("BGP: could not start BIRD again: %s", exc)

    def sync(self, desired: DesiredState, *, full: bool, changed: ChangeSet) -> None:
        plan = plan_bgp(desired, self.settings)
        if plan is None:
            self._notes.tell([f"node {desired.node_name} is not in the API or has no IPv4 address: BGP is left as it is"])
            return
        self._notes.tell(plan.notes)
        with IPRoute() as ipr:
            underlay = read_underlay(ipr, plan.local_address)
        subnet = str(ipaddress.IPv4Network(underlay.network)) if underlay is not None else None
        config = render_bird(plan, subnet)
        with self._lock:
            changed = self.bird.apply(config)
            self._config = config
        if changed:
            log.info("BGP: %d peer(s), announcing %s", len(plan.peers), ", ".join(plan.announce) or "nothing")
        if ensure_sysctl(*IP_FORWARD):
            log.info("set sysctl %s = %s", IP_FORWARD[0].replace("/", "."), IP_FORWARD[1])

    def cleanup(self) -> None:
        self._stopping.set()
        with self._lock:
            self._config = None
            self.bird.stop()
        with IPRoute() as ipr:
            for route in ipr.get_routes(family=2, proto=RTPROT_BIRD):
                if route.get_attr("RTA_PRIORITY") == KERNEL_METRIC:
                    ipr.route("del", dst=route.get_attr("RTA_DST"), dst_len=route["dst_len"],
                              priority=KERNEL_METRIC, proto=RTPROT_BIRD)


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
                             help="Where kr's BIRD keeps its configuration and control socket (a directory per node)."))
    for flag, text in (("--peer-router-ips", "External BGP routers every node peers with (comma-separated)."),
                       ("--peer-router-asns", "Their AS numbers, position by position."),
                       ("--peer-router-ports", "Their ports, position by position (default 179)."),
                       ("--peer-router-passwords", "Their MD5 passwords, base64-encoded, position by position "
                                                   "(empty: none).")):
        options.add(click.Option([flag], default=None, help=text))
    options.add(click.Option(["--peer-router-multihop-ttl"], type=click.IntRange(1, 255), default=None,
                             help="TTL of the sessions to external routers more than one hop away."))


@hookimpl
def kr_backends() -> Iterable[BackendSpec]:
    return [BackendSpec(slot="routing", name=NAME, factory=BgpRouting, watches=frozenset({"nodes"}),
                        description="pod CIDRs over BGP (BIRD 2): full mesh, per-node ASN")]
