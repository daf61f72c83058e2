"""``routing.static``: kube-router's pod routing without BGP, in the network namespace kr runs in.

Every other node's pod CIDR is routed via that node's IP when the IP lies in this node's subnet, and
through the VXLAN overlay (``kr-vxlan``) when it does not (or always, with ``--overlay-type full``). Routes
carry kr's route protocol (``ip route show proto 107``). It also sets ``net.ipv4.ip_forward`` and the
overlay device's ``rp_filter``, and masquerades pod traffic leaving the cluster (``--enable-pod-egress``).
The plan is ``plan.plan_routes``'; ``programmer.RoutingProgrammer`` applies it (``routing.bgp`` uses both
too, for its nodes outside the subnet). See docs/routing.md.

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
from collections.abc import Iterable

from pyroute2 import IPRoute

from kr_core.backends import Backend, BackendContext, BackendSpec
from kr_core.changes import ChangeSet
from kr_core.config import OptionRegistry
from kr_core.hookspecs import hookimpl
from kr_core.model import DesiredState
from kr_plugins.routing.notes import Notes
from kr_plugins.routing.plan import node_ipv4, plan_routes
from kr_plugins.routing.programmer import (
    RoutingError,
    RoutingProgrammer,
    add_routing_options,
    routing_settings,
)
from kr_plugins.routing.routes import read_underlay

log = logging.getLogger(__name__)

NAME = "routing.static"

class StaticRouting(Backend):
    def __init__(self, context: BackendContext) -> None:
        self.settings = routing_settings(context.config.options)
        self.programmer = RoutingProgrammer()  # shared with routing.bgp
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
            failures = self.programmer.apply(ipr, plan, full)
        if failures:
            raise RoutingError(f"{len(failures)} routing failure(s): {'; '.join(failures)}")

    def cleanup(self) -> None:
        failures = self.programmer.cleanup()
        if failures:
            raise RoutingError(f"cleanup incomplete: {'; '.join(failures)}")


@hookimpl
def kr_add_options(options: OptionRegistry) -> None:
    add_routing_options(options)  # shared with routing.bgp: added once when both are loaded


@hookimpl
def kr_backends() -> Iterable[BackendSpec]:
    return [BackendSpec(slot="routing", name=NAME, factory=StaticRouting, watches=frozenset({"nodes"}),
                        description="pod CIDR routes via node IPs in the subnet, VXLAN beyond; pod egress masquerade")]
