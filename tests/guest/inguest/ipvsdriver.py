"""Run the proxy.ipvs backend in the current network namespace, as ``kr run`` would on a node.

``ip netns exec NS python ipvsdriver.py ACTIONS.pickle``: the file holds ``(options, actions)``, actions
being ``("start", None)``, ``("sync", (DesiredState, full))``, ``("sleep", seconds)``, ``("read", None)`` (the IPVS services with their real servers,
the addresses on kr-ipvs0 and kr's sets, as JSON) or ``("cleanup", None)``. One backend instance serves
them all, as in one agent process. Prints one JSON line per action; exits 1 if any failed.
"""

from __future__ import annotations

import json
import logging
import pickle
import sys
import time

from kr_core.backends import BackendContext
from kr_core.changes import ChangeSet
from kr_core.config import AgentConfig
from kr_plugins.kernel import ipset
from kr_plugins.proxy.ipvs import IpvsProxy


def read(backend: IpvsProxy) -> dict[str, object]:
    services = {}
    for (protocol, address, port), record in sorted(backend.ipvs.services().items()):
        reals = backend.ipvs.reals(record)
        services[f"{protocol}/{address}:{port}"] = {
            "scheduler": record.scheduler, "flags": record.flags, "timeout": record.timeout,
            "reals": {f"{a}:{p}": r.weight for (a, p), r in sorted(reals.items())}}
    return {"services": services, "vips": sorted(backend._read_vips()),
            "sets": sorted(n for n in ipset.existing_sets() if n.startswith("KR-PX-"))}


def main() -> int:
    logging.basicConfig(level=logging.DEBUG, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
    with open(sys.argv[1], "rb") as stream:
        options, actions = pickle.load(stream)
    config = AgentConfig(node_name="node-a", plugins=("proxy.ipvs",), options=options)
    backend = IpvsProxy(BackendContext(config, lambda: None))
    failed = False
    for action, arg in actions:
        started = time.monotonic()
        result: dict[str, object] = {"action": action, "ok": True, "error": None}
        try:
            if action == "start":
                backend.start()
            elif action == "sync":
                desired, full = arg
                backend.sync(desired, full=full, changed=ChangeSet())
            elif action == "read":
                result["state"] = read(backend)
            elif action == "sleep":
                time.sleep(arg)
            elif action == "cleanup":
                backend.cleanup()
            else:
                raise ValueError(action)
        except Exception as exc:  # reported to the test
            logging.exception("%s failed", action)
            result.update(ok=False, error=f"{type(exc).__name__}: {exc}")
            failed = True
        result["ms"] = round((time.monotonic() - started) * 1000, 1)
        print(json.dumps(result), flush=True)
    backend.stop()
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
