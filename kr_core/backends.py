"""Backend records, the backend interface, and resolution of one backend per slot.

A plugin offers backends as ``BackendSpec`` records (slot, name, factory, watched kinds), in the style
of conda's ``conda_solvers()``. The host resolves them into an ordered list of live ``Backend`` objects.

Invariants:
- exactly one backend per slot; two loaded plugins claiming one slot is an error naming both;
- slots run in a fixed order: routing, then proxy, then firewall, then any other slot by name, so
  routes exist before services are proxied and policies always see the final datapath;
- a backend must be correct when it ignores the ``changed`` hint, and treats ``full=True`` as "assume
  nothing about what is programmed except what you can see".
"""

from __future__ import annotations

import abc
import dataclasses
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING

from kr_core.errors import PluginError

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

    from kr_core.changes import ChangeSet
    from kr_core.config import AgentConfig
    from kr_core.model import DesiredState

#: The kinds a backend may ask the agent to watch.
KINDS = ("nodes", "services", "endpointslices", "pods", "namespaces", "networkpolicies")

SLOT_ORDER = ("routing", "proxy", "firewall")


@dataclasses.dataclass(frozen=True, slots=True)
class BackendContext:
    """What a backend factory is given: the configuration, a way to ask for a sync, and the agent's
    Prometheus registry for the backend's own metrics (None where nothing serves /metrics, as in
    ``kr cleanup``)."""

    config: AgentConfig
    request_sync: Callable[[], None]
    registry: CollectorRegistry | None = None


class Backend(abc.ABC):
    """A long-lived object that makes one part of the node's datapath match the desired state."""

    def start(self) -> None:
        """Acquire resources (sockets, sessions). Called once, before the first sync."""

    @abc.abstractmethod
    def sync(self, desired: DesiredState, *, full: bool, changed: ChangeSet) -> None:
        """Make the datapath match ``desired``. Raise on failure; the next sync will be full."""

    def stop(self) -> None:
        """Release resources, leaving the datapath programmed so a restart drops no traffic."""

    @abc.abstractmethod
    def cleanup(self) -> None:
        """Remove everything this backend owns from the node, and nothing else."""


@dataclasses.dataclass(frozen=True, slots=True)
class BackendSpec:
    """A backend offered by a plugin.

    ``slot`` is the job (``routing``, ``proxy``, ``firewall`` or a new one a third party defines);
    ``name`` is what operators select and see (``proxy.iptables``); ``watches`` are the API kinds the
    backend needs in the cache (nodes are always watched: the agent needs its own node).
    """

    slot: str
    name: str
    factory: Callable[[BackendContext], Backend]
    watches: frozenset[str] = frozenset()
    description: str = ""

    def __post_init__(self) -> None:
        unknown = set(self.watches) - set(KINDS)
        if unknown:
            raise PluginError(
                f"backend {self.name} asks to watch unknown kinds {sorted(unknown)}; known: {', '.join(KINDS)}"
            )
        if not self.slot or not self.name:
            raise PluginError(f"backend record {self!r} needs a slot and a name")


def slot_sort_key(slot: str) -> tuple[int, str]:
    """Sort key putting the built-in slots first, in datapath order, then the rest by name."""
    return (SLOT_ORDER.index(slot), "") if slot in SLOT_ORDER else (len(SLOT_ORDER), slot)


def resolve_backends(offered: Mapping[str, Iterable[BackendSpec]]) -> list[BackendSpec]:
    """Choose one backend per slot from ``offered`` (plugin name -> its records), in slot order.

    Raises ``PluginError`` when two plugins (or one plugin twice) claim the same slot.
    """
    chosen: dict[str, tuple[str, BackendSpec]] = {}
    for plugin, specs in offered.items():
        for spec in specs:
            if spec.slot in chosen:
                other_plugin, other = chosen[spec.slot]
                raise PluginError(
                    f"two backends for the {spec.slot!r} slot: {other.name} (plugin {other_plugin}) and "
                    f"{spec.name} (plugin {plugin}). Load only one of them with --plugins."
                )
            chosen[spec.slot] = (plugin, spec)
    return [chosen[slot][1] for slot in sorted(chosen, key=slot_sort_key)]


def watched_kinds(specs: Iterable[BackendSpec]) -> tuple[str, ...]:
    """The kinds the agent must watch for ``specs``, in a stable order (nodes always included)."""
    wanted = {"nodes"}.union(*(spec.watches for spec in specs))
    return tuple(kind for kind in KINDS if kind in wanted)
