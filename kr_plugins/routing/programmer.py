"""Programming a ``RoutingPlan`` into the network namespace kr runs in, for every routing backend.

Role: ``RoutingProgrammer`` applies what ``plan_routes`` decided: the overlay device (``kr-vxlan``) and its
peers, the sysctls, kr's routes (protocol 107) and the pod egress set and chain, and removes them all in
``cleanup``. ``routing.static`` hands it the whole plan; ``routing.bgp`` hands it the plan without its
``direct`` routes (BIRD installs those), so nodes outside this node's subnet are reached through the same
overlay, and pods egress the same way, whichever backend runs. The options both backends understand
(``--enable-overlay``, ``--overlay-*``, ``--enable-pod-egress``) are registered here, once, whichever
backend's plugin asks first (``add_routing_options``).

Invariants:
- order: overlay device and peers first (overlay routes need them), sysctls, routes, then pod egress;
- one part's failure does not stop the others: failures are collected and returned, for the backend to
  raise (so the agent retries with a full sync);
- it changes only what kr owns: routes with kr's protocol, ``kr-vxlan``, ``KR-POD-EGRESS`` with its one
  jump, the ``kr-pod-subnets`` set, and the plan's sysctls; ``cleanup`` removes all of it but the sysctls
  (other software may rely on forwarding), also on an instance that never programmed anything.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import click
from pyroute2 import IPRoute

from kr_core.config import OptionRegistry
from kr_core.errors import KrError
from kr_plugins.kernel.sysctl import ensure_sysctl
from kr_plugins.routing.egress import PodEgress
from kr_plugins.routing.overlay import DEVICE, overlay_options, overlay_settings
from kr_plugins.routing.plan import RoutingPlan, RoutingSettings
from kr_plugins.routing.routes import RouteTable
from kr_plugins.routing.vxlan import VxlanOverlay

log = logging.getLogger(__name__)

#: The owner of the options every routing backend shares (``OptionRegistry.add_shared``).
GROUP = "routing backends"


class RoutingError(KrError):
    """The node's routing could not be (fully) programmed."""


def routing_settings(options: Mapping[str, Any]) -> RoutingSettings:
    """The routing settings from parsed options (their Python names), defaulting what is absent."""
    return RoutingSettings(overlay=overlay_settings(options),
                           enable_pod_egress=bool(options.get("enable_pod_egress", True)))


def add_routing_options(options: OptionRegistry) -> None:
    """The overlay and pod egress options, added once for every routing backend loaded."""
    for option in overlay_options():
        options.add_shared(option, group=GROUP)
    options.add_shared(click.Option(
        ["--enable-pod-egress"], type=click.BOOL, is_flag=False, flag_value=True, default=True, show_default=True,
        help="Masquerade traffic from this node's pods to destinations outside every pod CIDR."), group=GROUP)


class RoutingProgrammer:
    """What kr programmed from ``RoutingPlan``s in this network namespace, and how to change or remove it."""

    def __init__(self) -> None:
        self.routes = RouteTable()
        self.overlay = VxlanOverlay()
        self.egress = PodEgress()

    def apply(self, ipr: IPRoute, plan: RoutingPlan, full: bool) -> list[str]:
        """Converge on ``plan``; returns the failures (empty when everything was programmed)."""
        failures = []
        try:  # the device and its peers first: overlay routes need them
            dropped, peer_failures = self.overlay.sync(ipr, plan.overlay, full)
            failures += peer_failures
        except Exception as exc:  # noqa: BLE001 (collected): must not stop the routes or egress
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
        except Exception as exc:  # noqa: BLE001 (collected: the sync is retried as a full one)
            failures.append(f"pod egress: {exc}")
        return failures

    def cleanup(self) -> list[str]:
        """Remove the egress chain and set, ``kr-vxlan`` and every kr route; returns the failures."""
        failures = []
        try:
            self.egress.cleanup()
        except Exception as exc:  # noqa: BLE001 (collected): still remove the routes and the device
            failures.append(f"pod egress: {exc}")
        with IPRoute() as ipr:
            try:
                self.overlay.sync(ipr, None, full=True)
            except Exception as exc:  # noqa: BLE001 (collected): still remove the routes
                failures.append(f"overlay device {DEVICE}: {exc}")
            failures += self.routes.sync(ipr, (), full=True)
        return failures
