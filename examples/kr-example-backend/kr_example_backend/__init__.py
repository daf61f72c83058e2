"""example.table-proxy: a toy third-party ``proxy`` backend for kr.

It shows the whole plugin surface a real backend (an eBPF proxy, say) uses: a command-line option, a
backend record for a slot with the kinds it needs, a level-triggered ``sync`` and a ``cleanup``.
Each sync writes the full service table to ``--table-file`` with write-then-rename, so readers never see
a half-written table.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable

import click

from kr_core.backends import Backend, BackendContext, BackendSpec
from kr_core.changes import ChangeSet
from kr_core.config import OptionRegistry
from kr_core.hookspecs import hookimpl
from kr_core.model import DesiredState


class TableProxy(Backend):
    def __init__(self, context: BackendContext) -> None:
        self.path: str = context.config.option("table_file")

    def sync(self, desired: DesiredState, *, full: bool, changed: ChangeSet) -> None:
        table = {}
        for port in desired.services:
            ready = sorted(f"{ep.address}:{ep.port}" for ep in port.endpoints if ep.ready)
            for vip in port.cluster_ips:
                table[f"{vip}:{port.port}/{port.protocol}"] = ready
        tmp = self.path + ".tmp"
        with open(tmp, "w", encoding="utf-8") as out:
            json.dump({"node": desired.node_name, "full": full, "services": table}, out, sort_keys=True)
        os.replace(tmp, self.path)

    def cleanup(self) -> None:
        if os.path.exists(self.path):
            os.unlink(self.path)


@hookimpl
def kr_add_options(options: OptionRegistry) -> None:
    options.add(click.Option(["--table-file"], required=True, type=click.Path(dir_okay=False),
                             help="example.table-proxy: where to write the service table."))


@hookimpl
def kr_backends() -> Iterable[BackendSpec]:
    return [BackendSpec(slot="proxy", name="example.table-proxy", factory=TableProxy,
                        watches=frozenset({"services", "endpointslices"}),
                        description="writes the service table to a file")]
