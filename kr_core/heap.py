"""Keep the cyclic garbage collector's long pauses off the sync path.

The agent holds every watched object (and its parsed record) for as long as it runs: at thousands of
pods and policies that is about a million container objects, and each full collection of CPython's
oldest generation walks all of them (tens of milliseconds, at random moments, so in the middle of a
partial sync). After a successful full sync the long-lived objects are settled, so ``settle`` moves
them out of the collector's sight (``gc.freeze``); young objects are still collected as usual.

Invariants:
- frozen objects are still freed when their reference count drops to zero, which is how the cache
  and the parse memos release objects (they hold no reference cycles);
- from the second call on, a full collection runs before freezing; it walks only what was created
  since the last freeze, so cyclic garbage is collected before it could be frozen. The first call
  skips it (it would walk the whole start-up heap right after the first sync).
"""

from __future__ import annotations

import gc
import logging
import time

log = logging.getLogger(__name__)


class HeapSettler:
    def __init__(self) -> None:
        self._settled_before = False

    def settle(self) -> None:
        """Call after a successful full sync."""
        started = time.monotonic()
        if self._settled_before:
            gc.collect()
        gc.freeze()
        self._settled_before = True
        log.debug("heap settled in %.1f ms: %d objects frozen", (time.monotonic() - started) * 1000,
                  gc.get_freeze_count())
