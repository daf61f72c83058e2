"""``ipset restore`` for kr's sets: new members by create-temp/fill/swap/destroy, or by small edits.

Invariants:
- a set is never flushed in place: a new set, or a set whose members change a lot, is filled into
  ``<name>-tmp`` and swapped with the live set in one kernel operation, so a rule matching the set never
  sees it half filled; a small change to a large set (a pod came or went) is applied as deletes, then
  adds, each atomic in the kernel, so the set only ever holds old members not yet removed and new
  members already added, never anything else (the cost then follows the change, not the set's size);
- one call is one ``ipset restore`` process; the temporary set is destroyed by the same input, and a
  temporary set left by a crash is reused (``-exist``) and emptied before it is filled;
- ``destroy`` must come after the iptables rules referencing the set are gone (the kernel refuses it).
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass

from kr_plugins.kernel.command import Feed, run


@dataclass(frozen=True, slots=True)
class IPSetSpec:
    """A set's type and members (any iterable given is kept as a frozenset: the kernel has no order)."""

    type: str
    members: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        if not isinstance(self.members, frozenset):
            object.__setattr__(self, "members", frozenset(self.members))


TEMP_SUFFIX = "-tmp"
MAX_NAME = 31  # IPSET_MAXNAMELEN - 1
DEFAULT_HASHSIZE = 1024


def temp_name(name: str) -> str:
    """The temporary set used to fill ``name`` before the swap."""
    if len(name) + len(TEMP_SUFFIX) > MAX_NAME:
        raise ValueError(f"ipset name {name!r} leaves no room for {TEMP_SUFFIX!r} within {MAX_NAME} characters")
    return name + TEMP_SUFFIX


def render_swap(name: str, set_type: str, members: Collection[str], family: str = "inet") -> str:
    """``ipset restore`` input that makes set ``name`` hold exactly ``members`` (created if absent)."""
    temp = temp_name(name)
    lines = [f"create {temp} {set_type} family {family}{_hashsize(len(members))} -exist", f"flush {temp}"]
    lines += [f"add {temp} {member}" for member in members]
    lines += [f"create {name} {set_type} family {family} -exist", f"swap {temp} {name}", f"destroy {temp}", ""]
    return "\n".join(lines)


def _hashsize(members: int) -> str:
    """A large set is created with room for its members: growing a hash set from the default 1,024
    buckets rehashes it several times (about 10 % of loading 26,000 members). The kernel ignores the
    hash size when ``-exist`` compares an existing set, so the leftover temporary set still matches."""
    if members <= DEFAULT_HASHSIZE:
        return ""
    return f" hashsize {1 << (members - 1).bit_length()}"


def render_update(name: str, set_type: str, members: Collection[str], current: Collection[str] | None,
                  family: str = "inet") -> str:
    """``ipset restore`` input taking set ``name`` from ``current`` (None: absent) to ``members``."""
    if current is None:
        return render_swap(name, set_type, members, family)
    old = current if isinstance(current, (set, frozenset)) else set(current)
    new = members if isinstance(members, (set, frozenset)) else set(members)
    removed, added = old - new, new - old
    if len(removed) + len(added) > max(16, len(new) // 8):
        return render_swap(name, set_type, members, family)
    lines = [f"del {name} {member.removesuffix(' nomatch')} -exist" for member in sorted(removed)]
    lines += [f"add {name} {member} -exist" for member in sorted(added)]
    return "\n".join([*lines, ""])


def render_sets(wanted: Mapping[str, IPSetSpec], names: Iterable[str], current: Mapping[str, IPSetSpec]) -> str:
    """Bring sets ``names`` from ``current`` to ``wanted``: edits for small changes, a swap otherwise."""
    parts = []
    for name in names:
        spec, now = wanted[name], current.get(name)
        members = now.members if now is not None and now.type == spec.type else None
        if now is not None and members is None:  # same name, other type: cannot happen with content names
            raise ValueError(f"ipset {name} exists as {now.type}, not {spec.type}")
        parts.append(render_update(name, spec.type, spec.members, members))
    return "".join(parts)


def parse_save(text: str, owned: Callable[[str], bool]) -> tuple[dict[str, IPSetSpec], list[str]]:
    """The sets ``owned`` accepts (type and members), and the temporary sets of theirs a crash left
    behind, from ``ipset save``."""
    types: dict[str, str] = {}
    members: dict[str, list[str]] = {}
    for line in text.splitlines():
        words = line.split(" ", 2)
        if len(words) < 3 or not owned(words[1]):
            continue
        if words[0] == "create":
            types[words[1]] = words[2].split(" ", 1)[0]
            members[words[1]] = []
        elif words[0] == "add":
            members.setdefault(words[1], []).append(words[2])
    sets, stray = {}, []
    for name, set_type in types.items():
        if name.endswith(TEMP_SUFFIX):
            stray.append(name)
        else:
            sets[name] = IPSetSpec(set_type, frozenset(members[name]))
    return sets, stray


def restore(text: str) -> None:
    """Apply ``ipset restore`` input."""
    run(["ipset", "restore"], text)


def restore_feed() -> Feed:
    """An ``ipset restore`` applying input as it is written (see ``Feed``)."""
    return Feed(["ipset", "restore"])


def existing_sets() -> set[str]:
    """The names of the sets in this network namespace."""
    return set(run(["ipset", "list", "-n"]).split())


def destroy_existing(names: Iterable[str]) -> None:
    """Destroy those of ``names`` that exist, in one ``ipset restore`` (they must be unreferenced)."""
    existing = existing_sets()
    present = [name for name in names if name in existing]
    if present:
        restore("".join(f"destroy {name}\n" for name in present))
