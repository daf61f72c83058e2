"""``kernel.command``: tools fed while the caller computes fail as loudly as tools run at once."""

from __future__ import annotations

import pytest

from kr_plugins.kernel.command import CommandError, Feed, ToolMissing


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
