"""``kernel.command``: tools fed while the caller computes fail as loudly as tools run at once; and
``IptablesRestore.apply``, which streams restore input through such a feed."""

from __future__ import annotations

import time

import pytest

from kr_plugins.kernel import iptables
from kr_plugins.kernel.command import CommandError, Feed, ToolMissing
from kr_plugins.kernel.iptables import TableState


def test_a_feed_passes_everything_written_and_reports_failure_on_close(tmp_path) -> None:  # type: ignore[no-untyped-def]
    out = tmp_path / "out"
    feed = Feed(["sh", "-c", f"cat > {out}"])
    for i in range(20000):
        feed.write(f"line {i}\n")
    feed.close()
    assert out.read_text().splitlines()[-1] == "line 19999"

    failing = Feed(["sh", "-c", "read first; echo \"bad input: $first\" >&2; exit 3"])
    for i in range(20000):  # the tool exits early: writing on must not raise
        failing.write(f"line {i}\n")
    with pytest.raises(CommandError, match="exit code 3: bad input: line 0"):
        failing.close()


def test_a_missing_tool_is_named() -> None:
    with pytest.raises(ToolMissing, match="kr-no-such-tool not found"):
        Feed(["kr-no-such-tool"])


def test_a_hung_tool_is_killed_at_its_timeout_even_while_the_caller_writes() -> None:
    started = time.monotonic()
    feed = Feed(["sleep", "30"], timeout=0.5)
    feed.write("x" * (1 << 20))  # more than a pipe holds: blocks until the watchdog kills the tool
    with pytest.raises(CommandError, match="did not finish within 0 s|did not finish within 1 s"):
        feed.close()
    assert time.monotonic() - started < 5


def test_an_aborted_feed_kills_the_tool_before_it_ends_its_input(tmp_path) -> None:  # type: ignore[no-untyped-def]
    out = tmp_path / "out"
    feed = Feed(["sh", "-c", f"cat > {out}.part && mv {out}.part {out}"])
    feed.write("half\n")
    feed.abort()
    assert not out.exists()  # the tool never saw the end of its input


class Recorder:
    """Stands in for ``Feed`` in ``IptablesRestore.apply``: what was written, and how it ended."""

    def __init__(self, argv: list[str], timeout: float) -> None:
        self.argv, self.text, self.ended = argv, "", ""
        FEEDS.append(self)

    def write(self, text: str) -> None:
        self.text += text

    def close(self) -> None:
        self.ended = "closed"

    def abort(self) -> None:
        self.ended = "aborted"


FEEDS: list[Recorder] = []


def test_apply_streams_each_table_and_never_commits_one_that_fails_the_ownership_check(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(iptables, "Feed", Recorder)
    FEEDS.clear()
    empty = TableState()
    restore = iptables.IptablesRestore(iptables.Flavour.NFT)
    hook = ("INPUT", "-j KR-F")
    unhooked = iptables.parse_table_save([], lambda name: name.startswith("KR-"), [hook])
    assert restore.apply([iptables.table_change("nat", {}, [], empty)]) == 0 and FEEDS == []
    many = {f"KR-C{i:05d}": ("-j RETURN",) * 3 for i in range(3000)}
    assert restore.apply([iptables.table_change("nat", many, [], empty),
                          iptables.table_change("filter", {"KR-F": ()}, [hook], unhooked)]) == 12002
    (feed,) = FEEDS
    lines = feed.text.splitlines()
    assert feed.ended == "closed" and feed.argv[:2] == ["iptables-nft-restore", "--noflush"]
    assert lines[0] == "*nat" and lines[12001] == "COMMIT" and lines[12002:] == [
        "*filter", ":KR-F - [0:0]", "-I INPUT 1 -j KR-F", "COMMIT"]
    FEEDS.clear()
    smuggled = {"KR-X": ("-j RETURN\n-A INPUT -j DROP",)}
    with pytest.raises(iptables.OwnershipError, match="line break"):
        restore.apply([iptables.table_change("nat", {"KR-A": ()}, [], empty),
                       iptables.table_change("filter", smuggled, [], empty)])
    (feed,) = FEEDS
    assert feed.ended == "aborted" and feed.text.count("COMMIT") == 1  # nat went through, filter never
    assert "INPUT" not in feed.text
