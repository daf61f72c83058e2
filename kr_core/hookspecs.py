"""Hook specifications: the whole contract between the kr host and its plugins.

Every hook is documented with when it fires and whether it is *level-triggered* (its result shapes the
datapath and it is called on every sync with the whole state) or an *event* (an advisory notification
that never touches the datapath, may be coalesced, and may be missed across restarts).

Invariants:
- pluggy lets an implementation accept fewer arguments than its spec, so specs pass generous arguments
  and may grow new ones without breaking plugins.
- Event hooks fire after the cache has been updated and a sync has been requested, never before.
- A plugin implementing a hook name that is not specified here fails loudly at load time.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:  # imported for annotations only, to keep this module free of import cycles
    from kr_core.backends import BackendSpec
    from kr_core.config import AgentConfig, OptionRegistry
    from kr_core.model import DesiredState

PROJECT = "krouter"

hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


# --- initialization


@hookspec
def kr_add_options(options: OptionRegistry) -> None:
    """Add command-line options for ``kr run`` and ``kr cleanup``.

    Fires once, after the selected plugins are loaded and before the command line is parsed, so a
    plugin's options appear in ``kr run --plugins NAME --help``. Call ``options.add(click.Option(...))``;
    prefix option names with the plugin's name to avoid clashes (``--bgp-holdtime``). Options that
    several plugins of one slot understand alike (``--masquerade-all`` for every proxy) go through
    ``options.add_shared(click.Option(...), group="proxy backends")``: added once, whichever asks first.
    """


@hookspec
def kr_configure(config: AgentConfig) -> None:
    """Validate and take in the parsed configuration.

    Fires once after parsing, before any backend is created. ``config.options`` holds every option's
    value by its Python name. Raise ``kr_core.errors.ConfigError`` with a plain message to refuse a bad
    value; the agent then exits without touching the datapath.
    """


# --- registration


@hookspec
def kr_backends() -> Iterable[BackendSpec]:
    """Return the backends this plugin provides, as ``BackendSpec(slot, name, factory, watches)``.

    Fires once at start-up. The host resolves exactly one backend per slot among the loaded plugins
    and fails naming both when two loaded plugins claim one slot.
    """


# --- level-triggered


@hookspec
def kr_amend_desired_state(
    desired: DesiredState, snapshot: Mapping[str, Mapping[str, Mapping[str, Any]]], config: AgentConfig
) -> DesiredState | None:
    """Return an amended copy of the desired state, or None to leave it as it is.

    Level-triggered: called on every sync, after the core has built ``desired`` from the cache
    ``snapshot`` and before any backend sees it. Implementations are chained in the order the plugins were loaded,
    each receiving the previous one's result. Must be pure: no datapath changes, no blocking I/O.
    Use ``dataclasses.replace(desired, extras=...)`` to pass data to a backend.
    """


# --- events (advisory notifications: never program the datapath from these)
#
# They are called on the watcher threads (one per kind), so two may run at once, and a slow one holds
# up its kind's watch: return quickly, and hand real work to another thread or to ``request_sync``.


@hookspec
def on_node_add(node: Mapping[str, Any]) -> None:
    """A Node appeared in the cache (event). ``node`` is the API object as a JSON dict."""


@hookspec
def on_node_update(old: Mapping[str, Any], new: Mapping[str, Any]) -> None:
    """A Node changed in the cache (event)."""


@hookspec
def on_node_delete(node: Mapping[str, Any]) -> None:
    """A Node left the cache (event)."""


@hookspec
def on_service_add(service: Mapping[str, Any]) -> None:
    """A Service appeared in the cache (event)."""


@hookspec
def on_service_update(old: Mapping[str, Any], new: Mapping[str, Any]) -> None:
    """A Service changed in the cache (event)."""


@hookspec
def on_service_delete(service: Mapping[str, Any]) -> None:
    """A Service left the cache (event)."""


@hookspec
def on_endpoints_change(old: Mapping[str, Any] | None, new: Mapping[str, Any] | None) -> None:
    """An EndpointSlice was added (``old`` is None), changed, or deleted (``new`` is None) (event)."""


@hookspec
def on_pod_change(old: Mapping[str, Any] | None, new: Mapping[str, Any] | None) -> None:
    """A Pod was added (``old`` is None), changed, or deleted (``new`` is None) (event)."""


@hookspec
def on_namespace_change(old: Mapping[str, Any] | None, new: Mapping[str, Any] | None) -> None:
    """A Namespace was added (``old`` is None), changed, or deleted (``new`` is None) (event)."""


@hookspec
def on_policy_change(old: Mapping[str, Any] | None, new: Mapping[str, Any] | None) -> None:
    """A NetworkPolicy was added (``old`` is None), changed, or deleted (``new`` is None) (event)."""


# --- lifecycle


@hookspec
def kr_startup(config: AgentConfig, request_sync: Callable[[], None]) -> None:
    """The agent is about to start watching (lifecycle).

    Fires once, after backends are created and started. ``request_sync()`` asks the runner for a
    sync; a plugin whose outside world changed (a BGP peer came up) calls it, from any thread.
    """


@hookspec
def kr_shutdown(config: AgentConfig) -> None:
    """The agent is stopping (lifecycle). The datapath stays programmed so a restart drops nothing."""


@hookspec
def kr_cleanup(config: AgentConfig) -> None:
    """``kr cleanup`` is running (lifecycle): remove any state this plugin owns outside its backends."""
