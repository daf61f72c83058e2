"""Operator notes of the routing backends, logged once each while they hold.

A plan returns stable texts for what the operator should hear about (a node without an address, a bad
annotation); a backend hands each sync's notes to its ``Notes``, which logs a note when it appears and
again only if it went away and came back, so a sync every second does not repeat it.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable


class Notes:
    def __init__(self, log: logging.Logger) -> None:
        self._log = log
        self._current: frozenset[str] = frozenset()

    def tell(self, notes: Iterable[str]) -> None:
        current = frozenset(notes)
        for note in sorted(current - self._current):
            self._log.warning("%s", note)
        self._current = current
