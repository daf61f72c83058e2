"""Run the firewall.iptables backend in the current network namespace, as ``kr run`` would on a node.

``ip netns exec NODE python fwdriver.py ACTIONS.pickle``: the file holds a list of ``(action, arg)``:
``("sync", (DesiredState, full))``, ``("cleanup", None)``. One backend instance serves them all, as in
one agent process. Prints one JSON line per action (``action``, ``ok``, ``error``, ``ms``); exit 1 if any
failed.
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
from kr_plugins.firewall.iptables import IptablesFirewall


def main() -> int:
    logging.basicConfig(level=logging.DEBUG, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
    with open(sys.argv[1], "rb") as stream:
        options, actions = pickle.load(stream)
    config = AgentConfig(node_name="node-a", plugins=("firewall.iptables",), options=options)
    backend = IptablesFirewall(BackendContext(config, lambda: None))
    backend.start()
    failed = False
    for action, arg in actions:
        started = time.monotonic()
        result: dict[str, object] = {"action": action, "ok": True, "error": None}
        try:
            if action == "sync":
                desired, full = arg
                backend.sync(desired, full=full, changed=ChangeSet())
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
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
