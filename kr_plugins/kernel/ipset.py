"""``ipset restore`` for kr's sets: a whole set's members are replaced by create-temp/fill/swap/destroy.

Invariants:
- a set is never flushed in place: the new members go into ``<name>-tmp``, which is then swapped with
  the live set in one kernel operation, so a rule matching the set never sees it half filled;
- one call is one ``ipset restore`` process; the temporary set is destroyed by the same input, and a
  temporary set left by a crash is reused (``-exist``) and emptied before it is filled;
- ``destroy`` must come after the iptables rules referencing the set are gone (the kernel refuses it).
"""

from __future__ import annotations

from collections.abc import Iterable

from kr_plugins.kernel.command import run

TEMP_SUFFIX = "-tmp"
MAX_NAME = 31  # IPSET_MAXNAMELEN - 1


def temp_name(name: str) -> str:
    """The temporary set used to fill ``name`` before the swap."""
    if len(name) + len(TEMP_SUFFIX) > MAX_NAME:
        raise ValueError(f"ipset name {name!r} leaves no room for {TEMP_SUFFIX!r} within {MAX_NAME} characters")
    return name + TEMP_SUFFIX


def render_swap(name: str, set_type: str, members: Iterable[str], family: str = "inet") -> str:
    """``ipset restore`` input that makes set ``name`` hold exactly ``members`` (created if absent)."""
    temp = temp_name(name)
    lines = [f"create {temp} {set_type} family {family} -exist", f"flush {temp}"]
    lines += [f"add {temp} {member}" for member in members]
    lines += [f"create {name} {set_type} family {family} -exist", f"swap {temp} {name}", f"destroy {temp}", ""]
    return "\n".join(lines)


def restore(text: str) -> None:
    """Apply ``ipset restore`` input."""
    run(["ipset", "restore"], text)


def existing_sets() -> set[str]:
    """The names of the sets in this network namespace."""
    return set(run(["ipset", "list", "-n"]).split())


def destroy(name: str) -> None:
    """Destroy set ``name`` (it must exist and be unreferenced)."""
    run(["ipset", "destroy", name])
