"""``routing.static``: kube-router's pod routing without BGP, in the network namespace kr runs in.

Every other node's pod CIDR is routed via that node's IP when the IP lies in this node's subnet, and
through the VXLAN overlay (``kr-vxlan``) when it does not (or always, with ``--overlay-type full``). Routes
carry kr's route protocol (``ip route show proto 107``). It also sets ``net.ipv4.ip_forward`` and the
overlay device's ``rp_filter``, and masquerades pod traffic leaving the cluster (``--enable-pod-egress``).
See docs/routing.md.

Invariants:
- level-triggered: each sync plans from the whole desired state (``changed`` is ignored; planning is
  cheap) and applies only the differences from what it remembers programming; a full sync first
  re-reads what kr owns in the kernel;
- it changes only what kr owns: routes with kr's protocol, the ``kr-vxlan`` device, the ``KR-POD-EGRESS``
  chain with its one jump, the ``kr-pod-subnets`` set, and the two sysctls;
- while this node's Node object is missing (or has no IPv4 address) nothing is programmed and nothing
  is removed: the absence is usually transient, and tearing routes down would cut pod traffic;
- one peer's failure does not stop the others; the sync then raises, naming every failure, so the agent
  retries it as a full sync;
- ``cleanup()`` removes everything above but the sysctls (other software may rely on forwarding), also
  on an instance that never started.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from typing import Any

import click
from pyroute2 import IPRoute

from kr_core.backends import Backend, BackendContext, BackendSpec
from kr_core.changes import ChangeSet
from kr_core.config import OptionRegistry
from kr_core.errors import KrError
from kr_core.hookspecs import hookimpl
from kr_core.model import DesiredState
from kr_plugins.kernel.sysctl import ensure_sysctl
from kr_plugins.routing.egress import PodEgress
from kr_plugins.routing.notes import Notes
from kr_plugins.routing.overlay import DEVICE, overlay_options, overlay_settings
from kr_plugins.routing.plan import RoutingPlan, RoutingSettings, node_ipv4, plan_routes
from kr_plugins.routing.routes import RouteTable, read_underlay
from kr_plugins.routing.vxlan import VxlanOverlay

log = logging.getLogger(__name__)

NAME = "routing.static"


class RoutingError(KrError):
    """The node's routing could not be (fully) programmed."""


def routing_settings(options: Mapping[str, Any]) -> RoutingSettings:
    """The backend's settings from parsed options (their Python names), defaulting what is absent."""
    return RoutingSettings(overlay=overlay_settings(options),
                           enable_pod_egress=bool(options.get("enable_pod_egress", True)))


class StaticRouting(Backend):
    def __init__(self, context: BackendContext) -> None:
        self.settings = routing_settings(context.config.options)
        self.routes = RouteTable()
        self.overlay = VxlanOverlay()
        self.egress = PodEgress()
        self._notes = Notes(log)

    def sync(self, desired: DesiredState, *, full: bool, changed: ChangeSet) -> None:
        node_ip = node_ipv4(desired.node) if desired.node is not None else None
        if node_ip is None:
            state = "not in the API" if desired.node is None else "without an IPv4 address"
            self._notes.tell([f"node {desired.node_name} is {state}: routing is left as it is"])
            return
        with IPRoute() as ipr:
            underlay = read_underlay(ipr, node_ip)
            if underlay is None:
                raise RoutingError(f"node IP {node_ip} of {desired.node_name} is on no interface in this network "
                                   "namespace: run kr in the node's namespace, or fix the node's InternalIP")
            plan = plan_routes(desired, underlay, self.settings)
            self._notes.tell(plan.notes)
            failures = self._apply(ipr, plan, full)
        if failures:
            raise RoutingError(f"{len(failures)} routing failure(s): {'; '.join(failures)}")

    def _apply(self, ipr: IPRoute, plan: RoutingPlan, full: bool) -> list[str]:
        failures = []
        try:  # the device and its peers first: overlay routes need them
            dropped, peer_failures = self.overlay.sync(ipr, plan.overlay, full)
            failures += peer_failures
        except Exception as exc:  # a failure here must not stop direct routes or egress
            dropped = True  # the device may be gone: no longer trust the routes through it
            failures.append(f"overlay device {DEVICE}: {exc}")
        if dropped:
            self.routes.forget_device(DEVICE)
        for key, value in plan.sysctls:
            try:
                if ensure_sysctl(key, value):
                    log.info("set sysctl %s = %s", key.replace("/", "."), value)
            except OSError as exc:
                failures.append(f"sysctl {key}: {exc}")
        failures += self.routes.sync(ipr, plan.routes, full)
        try:
            self.egress.sync(plan.egress, full)
        except Exception as exc:  # reported with the others, so the sync is retried as a full one
            failures.append(f"pod egress: {exc}")
        return failures

    def cleanup(self) -> None:
        failures = []
        try:
            self.egress.cleanup()
        except Exception as exc:  # still remove the routes and the device
            failures.append(f"pod egress: {exc}")
        with IPRoute() as ipr:
            try:
                self.overlay.sync(ipr, None, full=True)
            except Exception as exc:  # still remove the routes
                failures.append(f"overlay device {DEVICE}: {exc}")
            failures += self.routes.sync(ipr, (), full=True)
        if failures:
            raise RoutingError(f"cleanup incomplete: {'; '.join(failures)}")


@hookimpl
def kr_add_options(options: OptionRegistry) -> None:
    for option in overlay_options():
        options.add(option)
    options.add(click.Option(
        ["--enable-pod-egress"], type=click.BOOL, is_flag=False, flag_value=True, default=True, show_default=True,
        help="Masquerade traffic from this node's pods to destinations outside every pod CIDR."))


@hookimpl
def kr_backends() -> Iterable[BackendSpec]:
    return [BackendSpec(slot="routing", name=NAME, factory=StaticRouting, watches=frozenset({"nodes"}),
                        description="pod CIDR routes via node IPs in the subnet, VXLAN beyond; pod egress masquerade")]
