"""iptables for kr: which flavour the host uses, and atomic ``iptables-restore --noflush`` of kr's chains.

Flavour: a host runs its rules through either iptables-legacy (x_tables) or iptables-nft (nf_tables).
Both work in one namespace at once, and both hook sets then run, so kr must write where everybody else
does. ``detect_flavour`` decides as kubernetes-sigs/iptables-wrappers does: the flavour holding
Kubernetes' marker chains (``KUBE-IPTABLES-HINT``, ``KUBE-KUBELET-CANARY``) or kr's own ``KR-`` chains
wins; otherwise the one with more rules; otherwise the default ``iptables`` command's (``iptables -V``),
unless that is iptables-nft and a commit fails (a kernel without nf_tables), which leaves legacy.
A backend detects once and keeps the answer, so it never writes half its rules to each flavour.

Invariants:
- detection and cleanup run ``iptables-legacy-save`` without ``-t``: naming a table makes the legacy
  kernel module create that table in the namespace, after which its hooks run and iptables-nft warns on
  every call. Only a backend already writing to a flavour lists one of its tables (``list_rules``);
- ``IptablesRestore.restore`` refuses text that touches anything but kr-owned (``KR-``) chains: it may
  declare, fill, flush and delete kr chains, and add to or delete from any other chain only rules that
  jump to a kr chain. It never declares (so never resets) a built-in chain and never flushes a table;
- one call is one ``iptables-restore --noflush`` process: each table's changes commit atomically; large
  changes are streamed into it (``IptablesRestore.apply``), never held whole as one text.
"""

from __future__ import annotations

import logging
import re
import shlex
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum

from kr_plugins.kernel.command import CommandError, Feed, ToolMissing, run

log = logging.getLogger(__name__)

#: Chains whose name starts with this are kr's; nothing else is.
OWNED_PREFIX = "KR-"
#: Chains kubelet and kube-proxy create to tell the other tools which flavour the host uses.
KUBE_MARKER_CHAINS = ("KUBE-IPTABLES-HINT", "KUBE-KUBELET-CANARY")
_WAIT = "-w"
_PROBE_CHAIN = "KR-FLAVOUR-PROBE"  # wait for the xtables lock instead of failing while another tool holds it


class Flavour(StrEnum):
    LEGACY = "legacy"
    NFT = "nft"

    @property
    def command(self) -> str:
        return f"iptables-{self.value}"

    @property
    def save_command(self) -> str:
        return f"iptables-{self.value}-save"

    @property
    def restore_command(self) -> str:
        return f"iptables-{self.value}-restore"


class OwnershipError(ValueError):
    """Restore text that would touch a chain kr does not own."""


# --- flavour detection


@dataclass(frozen=True, slots=True)
class SaveSummary:
    """What a flavour's ``iptables-save`` shows: its rule count and whether it holds marker chains."""

    rules: int
    markers: bool


def summarize_save(text: str) -> SaveSummary:
    """Count the rules in ``iptables-save`` output and look for Kubernetes' or kr's chains."""
    rules = 0
    markers = False
    for line in text.splitlines():
        if line.startswith("-A "):
            rules += 1
        elif line.startswith(":"):
            chain = line[1:].split(" ", 1)[0]
            markers = markers or chain in KUBE_MARKER_CHAINS or chain.startswith(OWNED_PREFIX)
    return SaveSummary(rules, markers)


def default_flavour(version_text: str) -> Flavour:
    """The flavour ``iptables -V`` reports (``iptables v1.8.9 (nf_tables)`` or ``(legacy)``)."""
    return Flavour.NFT if "nf_tables" in version_text else Flavour.LEGACY


def choose_flavour(legacy: SaveSummary, nft: SaveSummary, default: Flavour) -> Flavour:
    """Markers first, then more rules, then ``default``."""
    if legacy.markers != nft.markers:
        return Flavour.LEGACY if legacy.markers else Flavour.NFT
    if legacy.rules != nft.rules:
        return Flavour.LEGACY if legacy.rules > nft.rules else Flavour.NFT
    return default


def detect_flavour() -> Flavour:
    """Decide which flavour this network namespace uses (see the module docstring)."""
    summaries = {}
    for flavour in Flavour:
        try:
            summaries[flavour] = summarize_save(run([flavour.save_command]))
        except CommandError:  # that flavour's tools are missing or unusable: it cannot be the one in use
            summaries[flavour] = None
    legacy, nft = summaries[Flavour.LEGACY], summaries[Flavour.NFT]
    if legacy is None or nft is None:
        if legacy is nft:
            raise CommandError("neither iptables-legacy nor iptables-nft is installed")
        return Flavour.NFT if legacy is None else Flavour.LEGACY
    chosen = choose_flavour(legacy, nft, default_flavour(run(["iptables", "-V"])))
    if chosen is Flavour.NFT and nft.rules == 0 and not nft.markers and not _commits(Flavour.NFT):
        return Flavour.LEGACY  # iptables-nft installed as the default, but this kernel has no nf_tables
    return chosen


class DetectedFlavour:
    """The flavour of the namespace a backend runs in, detected at first use and then kept, so the
    backend never writes half its rules to each flavour."""

    def __init__(self, owner: str) -> None:
        self._owner = owner
        self._flavour: Flavour | None = None

    def get(self) -> Flavour:
        if self._flavour is None:
            self._flavour = detect_flavour()
            log.info("%s: using iptables-%s", self._owner, self._flavour.value)
        return self._flavour


def _commits(flavour: Flavour) -> bool:
    """Whether ``flavour`` can commit a change here: its tools list an empty ruleset even on a kernel
    without its backend, so only a real commit (a scratch chain, created and deleted at once) tells."""
    try:
        IptablesRestore(flavour).restore(f"*filter\n:{_PROBE_CHAIN} - [0:0]\n-X {_PROBE_CHAIN}\nCOMMIT\n")
    except CommandError:
        return False
    return True


# --- restore text: ownership and removal


_BARE_STRING = re.compile(r"[A-Za-z0-9_-]+")
_OWN_CHAIN_COMMANDS = frozenset({"-A", "-I", "-D", "-R", "-F", "-X", "-Z"})
#: A chain name made of plain characters, ending the line or followed by a space.
_WORD_END = re.compile(r"[A-Za-z0-9_.:-]+(?: |$)")


def check_owned(text: str) -> None:
    """Raise ``OwnershipError`` unless ``text`` touches only kr chains and jumps into them."""
    for number, line in enumerate(text.splitlines(), 1):
        check_owned_line(number, line)


def check_owned_line(number: int, line: str) -> None:
    """``check_owned`` for one line of restore input (``number`` names it in the error)."""
    if "\n" in line or "\r" in line:
        raise OwnershipError(f"line {number}: holds a line break, which would smuggle in another line: {line!r}")
    if not line or line.startswith(("#", "*")) or line == "COMMIT":
        return
    if line.startswith(":"):
        chain = line[1:].split(" ", 1)[0]
        if not chain.startswith(OWNED_PREFIX):
            raise OwnershipError(f"line {number}: declares chain {chain}, which kr does not own: {line}")
        return
    command, _, rest = line.partition(" ")
    if command in _OWN_CHAIN_COMMANDS and rest.startswith(OWNED_PREFIX) and _WORD_END.match(rest):
        return  # a command on a kr chain (its name is a plain word: no quoting to undo)
    words = shlex.split(line)
    command, chain = words[0], words[1] if len(words) > 1 else ""
    if chain.startswith(OWNED_PREFIX) and command in _OWN_CHAIN_COMMANDS:
        return
    target = words[words.index("-j") + 1] if "-j" in words[:-1] else ""
    if command in ("-A", "-I", "-D") and target.startswith(OWNED_PREFIX):
        return  # the one thing kr adds to a chain it does not own: a jump into its own chain
    raise OwnershipError(f"line {number}: touches chain {chain or '?'}, which kr does not own: {line}")


def table_lines(save_text: str, table: str) -> list[str]:
    """The lines of ``table``'s section (between ``*table`` and ``COMMIT``) in ``iptables-save`` output."""
    lines: list[str] = []
    inside = False
    for line in save_text.splitlines():
        if line == f"*{table}":
            inside = True
        elif inside and line == "COMMIT":
            break
        elif inside:
            lines.append(line)
    return lines


def jumps_into(lines: Iterable[str], chain: str) -> list[str]:
    """The ``-A`` rules among ``lines`` (one table's save) that jump to ``chain``, as saved."""
    found = []
    for line in lines:
        if line.startswith("-A "):
            words = shlex.split(line)
            if "-j" in words[:-1] and words[words.index("-j") + 1] == chain:
                found.append(line)
    return found


def render_removal(table: str, lines: Sequence[str], chains: Collection[str]) -> str | None:
    """Restore text deleting ``chains`` (kr's) and every rule jumping to them, or None if none is there.

    ``lines`` is the table's current save (see ``table_lines``); each jump is deleted by its saved spec,
    once per copy, so duplicates go too.
    """
    present = [c for c in chains if any(line.split(" ", 1)[0] == f":{c}" for line in lines)]
    jumps = [line for c in chains for line in jumps_into(lines, c) if line.split(" ", 2)[1] not in chains]
    if not present and not jumps:
        return None
    body = [f"-D {line[3:]}" for line in jumps]
    body += [f"-F {c}" for c in present] + [f"-X {c}" for c in present]
    return "\n".join([f"*{table}", *body, "COMMIT", ""])


# --- what kr programmed in one table, and the restore text that changes it


@dataclass(slots=True)
class TableState:
    """kr's chains in one table (as the kernel holds them, or as kr last wrote them), and the hooks
    that are not in place: hook (built-in chain, rule spec) -> the saved jumps to delete before
    inserting it. A hook is in place when its chain holds exactly one jump to the hook's target, equal
    to the spec, with only jumps into kr chains before it (so backends hooking one chain coexist)."""

    chains: dict[str, tuple[str, ...]] = field(default_factory=dict)
    hook_fixes: dict[tuple[str, str], list[str]] = field(default_factory=dict)


def jump_target(spec: str) -> str:
    """The chain or target a rule spec jumps to ("" if none)."""
    words = shlex.split(spec)
    return words[words.index("-j") + 1] if "-j" in words[:-1] else ""


def parse_table_save(lines: Sequence[str], owned: Callable[[str], bool],
                     hooks: Iterable[tuple[str, str]]) -> TableState:
    """kr's chains (those ``owned`` accepts) and the state of ``hooks`` from one table's save lines."""
    state = TableState()
    for line in lines:
        if line.startswith(":") and owned(line[1:].split(" ", 1)[0]):
            state.chains[line[1:].split(" ", 1)[0]] = ()
    rules: dict[str, list[str]] = {}
    for line in lines:
        if line.startswith("-A "):
            chain, _, spec = line[3:].partition(" ")
            if chain in state.chains:
                state.chains[chain] += (spec,)
            else:
                rules.setdefault(chain, []).append(line)
    for chain, spec in hooks:
        target, wanted = jump_target(spec), f"-A {chain} {spec}"
        present = rules.get(chain, [])
        jumps = [line for line in present if jump_target(line) == target]
        in_place = jumps == [wanted] and all(
            jump_target(line).startswith(OWNED_PREFIX) for line in present[:present.index(wanted)])
        if not in_place:
            state.hook_fixes[(chain, spec)] = jumps
    return state


@dataclass(frozen=True, slots=True)
class TableChange:
    """What one sync writes to one table to take a ``TableState`` to the wanted chains and hooks: new or
    changed chains declared (so replaced whole), hooks not in place put first (their misplaced copies
    deleted), chains no longer wanted flushed and deleted after their referrers were rewritten in the
    same commit. ``lines`` renders it lazily: a full sync of 160,000 lines is never held as one text."""

    table: str
    chains: Mapping[str, tuple[str, ...]]
    changed: tuple[str, ...]  # in declaration order
    hook_lines: tuple[str, ...]
    stale: tuple[str, ...]

    def __len__(self) -> int:
        """The number of restore lines (without ``*table`` and ``COMMIT``)."""
        return (len(self.changed) + sum(len(self.chains[name]) for name in self.changed) + len(self.hook_lines)
                + 2 * len(self.stale))

    def lines(self) -> Iterator[str]:
        for name in self.changed:
            yield f":{name} - [0:0]"
        for name in self.changed:
            for rule in self.chains[name]:
                yield f"-A {name} {rule}"
        yield from self.hook_lines
        for name in self.stale:
            yield f"-F {name}"
        for name in self.stale:
            yield f"-X {name}"


def table_change(table: str, chains: Mapping[str, tuple[str, ...]], hooks: Iterable[tuple[str, str]],
                 state: TableState) -> TableChange:
    """The change taking ``state`` to ``chains`` and ``hooks`` in ``table`` (see ``TableChange``)."""
    changed = [name for name, rules in chains.items() if state.chains.get(name) != rules]
    # iptables-nft-restore 1.8.9 takes chains declared in reverse name order many times faster (40,000
    # empty chains: 0.4 s, against 3.3 s sorted and 8 s in random order)
    changed.sort(reverse=True)
    hook_lines: list[str] = []
    for hook in hooks:
        if hook in state.hook_fixes:
            hook_lines += [f"-D {line[3:]}" for line in state.hook_fixes[hook]]
            hook_lines.append(f"-I {hook[0]} 1 {hook[1]}")
    stale = tuple(name for name in state.chains if name not in chains)
    return TableChange(table, chains, tuple(changed), tuple(hook_lines), stale)


def save_string(text: str) -> str:
    """``text`` as ``iptables-save`` prints a string argument (a comment, a log prefix): bare when it
    is made of letters, digits, ``_`` and ``-`` only, else in double quotes (kr's texts hold no
    quotes or backslashes)."""
    return text if _BARE_STRING.fullmatch(text) else f'"{text}"'


#: A shell word of a rule without single quotes or backslashes: unquoted runs and "..." runs, joined.
_WORD = re.compile(r'(?:[^ \t\r\n"]+|"[^"]*")+')


def _words(rule: str) -> list[str]:
    """``shlex.split(rule)``; rules as kr writes them (double quotes only, balanced, no
    backslashes) are split with one regex, anything else goes through ``shlex`` with its errors."""
    if "'" in rule or "\\" in rule or rule.count('"') % 2:
        return shlex.split(rule)
    words = _WORD.findall(rule)
    return [w.replace('"', "") for w in words] if '"' in rule else words


def referenced(rule: str) -> Iterator[tuple[str, str]]:
    """("chain", name) for each jump/goto target and ("set", name) for each set ``rule`` names."""
    words = _words(rule)
    for index, word in enumerate(words[:-1]):
        if word in ("-j", "-g", "--jump", "--goto"):
            yield "chain", words[index + 1]
        elif word == "--match-set":
            yield "set", words[index + 1]


# --- running


def remove_owned_chains(table: str, owned: Callable[[str], bool]) -> list[str]:
    """Delete, from every installed flavour, the chains of ``table`` that ``owned`` accepts and every
    rule jumping to them. Returns one message per flavour that failed (the others are still cleaned)."""
    failures = []
    for flavour in Flavour:
        try:
            iptables = IptablesRestore(flavour)
            lines = table_lines(iptables.save(), table)
            chains = [line[1:].split(" ", 1)[0] for line in lines if line.startswith(":")]
            text = render_removal(table, lines, [chain for chain in chains if owned(chain)])
            if text is not None:
                iptables.restore(text)
        except ToolMissing:  # that flavour is not installed, so holds nothing of kr's
            continue
        except Exception as exc:  # still try the other flavour
            failures.append(f"iptables-{flavour.value}: {exc}")
    return failures


class IptablesRestore:
    """``iptables-save`` and ``iptables-restore --noflush`` of one flavour, limited to kr's chains."""

    def __init__(self, flavour: Flavour) -> None:
        self.flavour = flavour

    def save(self) -> str:
        """The whole ruleset (every table) of this flavour."""
        return run([self.flavour.save_command])

    def list_rules(self, table: str, chain: str) -> list[str]:
        """The rules of one existing chain, in save syntax (``-A CHAIN ...``): cheaper than ``save``
        when the host holds a large ruleset. With the legacy flavour this creates ``table`` if absent."""
        return [line for line in run([self.flavour.command, _WAIT, "-t", table, "-S", chain]).splitlines()
                if line.startswith("-A ")]

    def restore(self, text: str) -> None:
        """Apply ``text`` atomically per table, after checking it touches only kr's chains. A large
        input may take minutes (500,000 lines: over a minute with iptables-nft), so the time allowed
        grows with it."""
        check_owned(text)
        run([self.flavour.restore_command, "--noflush", _WAIT], text, timeout=_restore_timeout(text.count("\n")))

    def apply(self, changes: Iterable[TableChange]) -> int:
        """Stream ``changes`` into one ``iptables-restore --noflush`` (each table committed atomically),
        checking line by line that they touch only kr's chains; returns the lines written (0: nothing to
        do, and no process started). A table whose lines fail the check is never committed (the tool is
        killed before its ``COMMIT``); a table committed earlier in the same call stays."""
        changes = [change for change in changes if len(change)]
        total = sum(len(change) for change in changes)
        if not total:
            return 0
        feed = Feed([self.flavour.restore_command, "--noflush", _WAIT], timeout=_restore_timeout(total))
        try:
            number = 0
            for change in changes:
                chunk = [f"*{change.table}"]
                for line in change.lines():
                    number += 1
                    check_owned_line(number, line)
                    chunk.append(line)
                    if len(chunk) >= _CHUNK_LINES:
                        feed.write("\n".join(chunk) + "\n")
                        chunk = []
                chunk.append("COMMIT")
                feed.write("\n".join(chunk) + "\n")
        except BaseException:
            feed.abort()
            raise
        feed.close()
        return total


#: Lines handed to ``iptables-restore`` per write while streaming.
_CHUNK_LINES = 4096


def _restore_timeout(lines: int) -> float:
    return 60 + lines / 2000
