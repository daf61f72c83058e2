"""The heap settler freezes long-lived objects after full syncs and still collects cyclic garbage."""

from __future__ import annotations

import gc
import weakref

from kr_core.heap import HeapSettler


class _Node:
    def __init__(self) -> None:
        self.other: _Node | None = None


def test_settle_freezes_and_later_settles_collect_cycles_made_since() -> None:
    settler = HeapSettler()
    was_enabled = gc.isenabled()
    gc.disable()  # so only the settler can collect the cycle below
    try:
        settler.settle()
        assert gc.get_freeze_count() > 0
        a, b = _Node(), _Node()
        a.other, b.other = b, a  # a cycle created after the first freeze, then dropped
        ref = weakref.ref(a)
        del a, b
        settler.settle()
        assert ref() is None, "cyclic garbage made since the last settle is collected, not frozen"
    finally:
        gc.unfreeze()
        if was_enabled:
            gc.enable()
