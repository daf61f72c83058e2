"""``debug.log``: a backend that logs (and optionally records) every desired state instead of programming it.

It fills the ``debug`` slot, so it runs beside real backends (``--plugins routing.static,debug.log``) or
alone, to watch a cluster from any machine without touching its datapath. With ``--debug-record FILE``
it appends one JSON line per sync (``full``, ``changed`` keys per kind, and the whole desired state);
tests and ``kr demo`` read that file. ``--debug-fail-while FILE`` makes every sync fail while FILE
exists, to exercise the agent's retry and full-resync path.

Invariant: it owns nothing on the node, so ``cleanup()`` only removes its record file.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Iterable

import click

from kr_core.backends import KINDS, Backend, BackendContext, BackendSpec
from kr_core.changes import ChangeSet
from kr_core.config import OptionRegistry
from kr_core.hookspecs import hookimpl
from kr_core.model import DesiredState, to_jsonable

log = logging.getLogger(__name__)


class LogBackend(Backend):
    def __init__(self, context: BackendContext) -> None:
        self.record_path: str | None = context.config.option("debug_record")
        self.fail_while: str | None = context.config.option("debug_fail_while")
        self.syncs = 0
        self._lock = threading.Lock()

    def sync(self, desired: DesiredState, *, full: bool, changed: ChangeSet) -> None:
        if self.fail_while and os.path.exists(self.fail_while):
            raise RuntimeError(f"failing on purpose while {self.fail_while} exists")
        self.syncs += 1
        changed_keys = {kind: sorted(changed.keys(kind)) for kind in KINDS if changed.keys(kind)}
        if changed.count() <= 8:
            summary = ", ".join(f"{kind} {', '.join(keys)}" for kind, keys in changed_keys.items()) or "-"
        else:  # one readable line, even for the first sync of a large cluster
            summary = ", ".join(f"{len(keys)} {kind}" for kind, keys in changed_keys.items())
        log.info(
            "sync #%d (%s): %d service ports, %d endpoints, %d nodes, %d pods, %d policies; changed: %s",
            self.syncs, "full" if full else "partial", len(desired.services),
            sum(len(port.endpoints) for port in desired.services), len(desired.nodes), len(desired.pods),
            len(desired.policies), summary,
        )
        if self.record_path:
            line = json.dumps({"time": time.time(), "sync": self.syncs, "full": full, "changed": changed_keys,
                               "desired": to_jsonable(desired)}, sort_keys=True)
            with self._lock, open(self.record_path, "a", encoding="utf-8") as record:
                record.write(line + "\n")

    def cleanup(self) -> None:
        if self.record_path and os.path.exists(self.record_path):
            os.unlink(self.record_path)


@hookimpl
def kr_add_options(options: OptionRegistry) -> None:
    options.add(click.Option(["--debug-record"], type=click.Path(dir_okay=False), default=None,
                             help="debug.log: append each sync's desired state to this file as a JSON line."))
    options.add(click.Option(["--debug-fail-while"], type=click.Path(dir_okay=False), default=None,
                             help="debug.log: fail every sync while this file exists (to test retries)."))


@hookimpl
def kr_backends() -> Iterable[BackendSpec]:
    return [BackendSpec(slot="debug", name="debug.log", factory=LogBackend, watches=frozenset(KINDS),
                        description="logs and records the desired state; programs nothing")]
