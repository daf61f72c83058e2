"""Agent configuration and the registry through which plugins add command-line options.

Invariants: ``AgentConfig`` is immutable once parsed; option names are unique across the core and all
loaded plugins (a clash is reported naming the option, not silently shadowed).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

import click

from kr_core.errors import PluginError


@dataclasses.dataclass(frozen=True, slots=True)
class AgentConfig:
    """What ``kr run`` (or ``kr cleanup``) was asked to do.

    ``options`` maps every option's Python name (``bgp_holdtime``) to its parsed value, core options
    and plugin options alike.
    """

    node_name: str
    plugins: tuple[str, ...]
    options: Mapping[str, Any] = dataclasses.field(default_factory=lambda: MappingProxyType({}))

    def option(self, name: str, default: Any = None) -> Any:
        """Return the parsed value of option ``name`` (its Python name), or ``default``."""
        return self.options.get(name, default)


class OptionRegistry:
    """Collects ``click.Option`` objects from plugins for the command being built."""

    def __init__(self, taken: Mapping[str, str]) -> None:
        # option string ("--foo") -> who defined it, seeded with the command's own options
        self._taken: dict[str, str] = dict(taken)
        self._added: list[click.Option] = []

    def add(self, option: click.Option, owner: str = "a plugin") -> None:
        """Add ``option`` to the command; fail if any of its flags is already defined."""
        for flag in (*option.opts, *option.secondary_opts):
            if flag in self._taken:
                raise PluginError(f"option {flag} from {owner} clashes with the one from {self._taken[flag]}")
            self._taken[flag] = owner
        self._added.append(option)

    def add_shared(self, option: click.Option, group: str) -> None:
        """Add ``option`` on behalf of ``group`` (the backends of one slot, say), once: when another
        plugin of the group has added the same option already, this does nothing."""
        owner = f"{group} (shared)"
        if all(self._taken.get(flag) == owner for flag in (*option.opts, *option.secondary_opts)):
            return
        self.add(option, owner)

    @property
    def added(self) -> tuple[click.Option, ...]:
        return tuple(self._added)
