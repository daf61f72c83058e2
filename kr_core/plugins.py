"""Plugin discovery and loading, and the typed facade over the pluggy manager.

Plugins are setuptools entry points in the ``krouter.plugins`` group; the entry-point name is the plugin
name operators type (``proxy.iptables``). Only the plugins named with ``--plugins`` are imported: there is
no blanket autoload, because a plugin's backends touch the kernel (the path pytest's ``-p name`` takes).

Invariants:
- an unknown plugin name fails listing the installed ones; a plugin that fails to import fails naming
  the plugin and the cause; a hook implementation matching no spec fails at load time (``check_pending``);
- core code calls hooks only through ``PluginHost`` methods, never ``pm.hook.x(**kwargs)`` blind;
- importing a plugin module must not touch the datapath (``kr plugins`` imports every installed plugin).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from importlib import metadata
from typing import Any

import click
import pluggy

from kr_core import hookspecs
from kr_core.backends import BackendSpec, resolve_backends
from kr_core.config import AgentConfig, OptionRegistry
from kr_core.errors import PluginError
from kr_core.model import DesiredState

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "krouter.plugins"
#: Command-line groups plugins add to ``kr`` (``kr bgp ...``): name -> ``module:click_group``.
COMMANDS_GROUP = "krouter.commands"

#: Which kinds each event hook reports, as (add/change hook, update hook, delete hook) names.
_EVENT_HOOKS: Mapping[str, tuple[str, str | None, str | None]] = {
    "nodes": ("on_node_add", "on_node_update", "on_node_delete"),
    "services": ("on_service_add", "on_service_update", "on_service_delete"),
    "endpointslices": ("on_endpoints_change", None, None),
    "pods": ("on_pod_change", None, None),
    "namespaces": ("on_namespace_change", None, None),
    "networkpolicies": ("on_policy_change", None, None),
}


@dataclasses.dataclass(frozen=True, slots=True)
class InstalledPlugin:
    """An entry point in the ``krouter.plugins`` group."""

    name: str
    module: str
    distribution: str
    version: str


def installed_plugins() -> list[InstalledPlugin]:
    """Every plugin installed in this Python environment, sorted by name."""
    found = []
    for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
        dist = ep.dist
        found.append(
            InstalledPlugin(
                name=ep.name,
                module=ep.value,
                distribution=dist.metadata["Name"] if dist else "?",
                version=dist.version if dist else "?",
            )
        )
    return sorted(found, key=lambda p: p.name)


def plugin_commands() -> dict[str, str]:
    """The command groups installed plugins add to ``kr``: name -> ``module:attribute`` (not imported).
    A name registered twice keeps the first distribution's, as sorted by entry-point value."""
    commands: dict[str, str] = {}
    for ep in sorted(metadata.entry_points(group=COMMANDS_GROUP), key=lambda ep: ep.value):
        commands.setdefault(ep.name, ep.value)
    return commands


def _entry_point(name: str) -> metadata.EntryPoint:
    matches = list(metadata.entry_points(group=ENTRY_POINT_GROUP, name=name))
    if not matches:
        names = ", ".join(p.name for p in installed_plugins()) or "(none)"
        raise PluginError(f"unknown plugin {name!r}. Installed plugins: {names}")
    if len({ep.value for ep in matches}) > 1:
        owners = ", ".join(f"{ep.dist.metadata['Name'] if ep.dist else '?'} ({ep.value})" for ep in matches)
        raise PluginError(f"plugin name {name!r} is registered by more than one distribution: {owners}")
    return matches[0]


def _call(impl: pluggy.HookImpl, hook: str, **kwargs: Any) -> Any:
    """Call one implementation with the arguments it asks for; its failure names the plugin."""
    try:
        return impl.function(**{arg: kwargs[arg] for arg in impl.argnames})
    except PluginError:
        raise
    except Exception as exc:  # third-party code: say whose it is, in one line
        raise PluginError(f"plugin {impl.plugin_name!r} failed in {hook}: {type(exc).__name__}: {exc}") from exc


class PluginHost:
    """The pluggy manager with kr's hook specs, and typed calls into it."""

    def __init__(self) -> None:
        self.pm = pluggy.PluginManager(hookspecs.PROJECT)
        self.pm.add_hookspecs(hookspecs)
        self.loaded: list[str] = []

    # --- loading

    def load(self, names: Sequence[str]) -> None:
        """Import and register exactly the plugins ``names``, then validate every hook implementation."""
        for name in names:
            if name in self.loaded:
                continue
            ep = _entry_point(name)
            try:
                plugin = ep.load()
            except Exception as exc:  # an import error in third-party code: report it, name the plugin
                raise PluginError(f"plugin {name!r} ({ep.value}) failed to load: {exc}") from exc
            self.register(plugin, name)

    def register(self, plugin: object, name: str) -> None:
        """Register an already imported plugin object (tests and embedding use this directly)."""
        try:
            self.pm.register(plugin, name=name)
            self.pm.check_pending()
        except pluggy.PluginValidationError as exc:
            self.pm.unregister(name=name)
            raise PluginError(f"plugin {name!r} is invalid: {exc}") from exc
        self.loaded.append(name)

    # --- initialization

    def add_options(self, taken: Mapping[str, str]) -> tuple[click.Option, ...]:
        """Collect the plugins' command-line options; ``taken`` maps flags already defined to owners."""
        registry = OptionRegistry(taken)
        for impl in self.pm.hook.kr_add_options.get_hookimpls():
            _call(impl, "kr_add_options", options=_OwnedRegistry(registry, impl.plugin_name))
        return registry.added

    def configure(self, config: AgentConfig) -> None:
        for impl in self.pm.hook.kr_configure.get_hookimpls():
            _call(impl, "kr_configure", config=config)

    # --- registration

    def backend_offers(self) -> dict[str, list[BackendSpec]]:
        """Plugin name -> the backend records it offers."""
        offers: dict[str, list[BackendSpec]] = {}
        for impl in self.pm.hook.kr_backends.get_hookimpls():
            specs = list(_call(impl, "kr_backends") or ())
            for spec in specs:
                if not isinstance(spec, BackendSpec):
                    raise PluginError(f"plugin {impl.plugin_name!r} returned {spec!r} from kr_backends, not a BackendSpec")
            offers[impl.plugin_name] = specs
        return offers

    def backends(self) -> list[BackendSpec]:
        """One backend per slot, in datapath order (see ``kr_core.backends``)."""
        return resolve_backends(self.backend_offers())

    # --- level-triggered

    def amend_desired_state(
        self, desired: DesiredState, snapshot: Mapping[str, Mapping[str, Any]], config: AgentConfig
    ) -> DesiredState:
        """Chain the ``kr_amend_desired_state`` implementations, each seeing the previous result."""
        for impl in self.pm.hook.kr_amend_desired_state.get_hookimpls():
            result = _call(impl, "kr_amend_desired_state", desired=desired, snapshot=snapshot, config=config)
            if result is not None:
                if not isinstance(result, DesiredState):
                    raise PluginError(f"plugin {impl.plugin_name!r} amended the desired state into {type(result).__name__}")
                desired = result
        return desired

    # --- events

    def notify(self, kind: str, old: Mapping[str, Any] | None, new: Mapping[str, Any] | None) -> None:
        """Fire the event hook for one cache change. A failing hook is logged, never propagated."""
        add, update, delete = _EVENT_HOOKS[kind]
        try:
            if update is None:
                getattr(self.pm.hook, add)(old=old, new=new)
            elif old is None:
                getattr(self.pm.hook, add)(**{kind[:-1]: new})
            elif new is None:
                getattr(self.pm.hook, delete)(**{kind[:-1]: old})
            else:
                getattr(self.pm.hook, update)(old=old, new=new)
        except Exception as exc:  # advisory hooks must not break the watch loop
            log.error("event hook for %s failed: %s: %s", kind, type(exc).__name__, exc,
                      exc_info=log.isEnabledFor(logging.DEBUG))

    # --- lifecycle

    def startup(self, config: AgentConfig, request_sync: Callable[[], None]) -> None:
        for impl in self.pm.hook.kr_startup.get_hookimpls():
            _call(impl, "kr_startup", config=config, request_sync=request_sync)

    def shutdown(self, config: AgentConfig) -> None:
        """Tell every plugin the agent stops; one failing is logged and does not stop the others."""
        for impl in self.pm.hook.kr_shutdown.get_hookimpls():
            try:
                _call(impl, "kr_shutdown", config=config)
            except PluginError as exc:
                log.error("%s", exc)

    def cleanup(self, config: AgentConfig) -> None:
        for impl in self.pm.hook.kr_cleanup.get_hookimpls():
            _call(impl, "kr_cleanup", config=config)


class _OwnedRegistry:
    """An ``OptionRegistry`` view that records which plugin adds each option."""

    def __init__(self, registry: OptionRegistry, owner: str) -> None:
        self._registry = registry
        self._owner = owner

    def add(self, option: click.Option) -> None:
        self._registry.add(option, owner=f"plugin {self._owner}")

    def add_shared(self, option: click.Option, group: str) -> None:
        self._registry.add_shared(option, group)


def describe_installed() -> list[dict[str, str]]:
    """Name, slot(s), distribution and version of every installed plugin, for ``kr plugins``.

    Each plugin is imported in a throwaway host; one that fails to import is listed with its error.
    """
    rows = []
    for plugin in installed_plugins():
        host = PluginHost()
        try:
            host.load([plugin.name])
            slots = ", ".join(sorted({spec.slot for specs in host.backend_offers().values() for spec in specs})) or "-"
        except Exception as exc:  # one broken plugin must not hide the others
            slots = f"error: {exc}"
        rows.append({"name": plugin.name, "slot": slots, "distribution": plugin.distribution, "version": plugin.version})
    return rows


def parse_plugin_list(values: Iterable[str]) -> tuple[str, ...]:
    """Split ``--plugins a,b --plugins c`` into unique names, keeping order."""
    names: list[str] = []
    for value in values:
        for name in value.split(","):
            name = name.strip()
            if name and name not in names:
                names.append(name)
    return tuple(names)
