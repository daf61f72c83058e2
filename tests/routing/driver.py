"""Run the routing.static backend in the current network namespace, as ``kr run`` would on a node.

The tests start it with ``ip netns exec NODE-NS python driver.py NODE [--options JSON] ACTION...``.
ACTION is ``full:SNAPSHOT`` or ``partial:SNAPSHOT`` (sync the desired state built from a JSON snapshot,
``kind -> key -> API object``), ``cleanup``, or ``flavour`` (the iptables flavour detection picks).
One backend instance serves every action, as in one agent process. Each action prints one JSON line
(``action``, ``ok``, ``error``, ``ms``, and ``flavour`` for ``flavour``); a failed action does not stop
the next one; the exit code is 1 if any failed. Logs go to stderr.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

from kr_core.backends import BackendContext
from kr_core.changes import ChangeSet
from kr_core.config import AgentConfig
from kr_core.desired import build_desired_state
from kr_plugins.kernel.iptables import detect_flavour
from kr_plugins.routing.static import StaticRouting


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("node")
    parser.add_argument("--options", default="{}", help="backend options by Python name, as JSON")
    parser.add_argument("actions", nargs="+")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
    config = AgentConfig(node_name=args.node, plugins=("routing.static",), options=json.loads(args.options))
    backend = StaticRouting(BackendContext(config, lambda: None))
    failed = False
    for action in args.actions:
        started = time.monotonic()
        result: dict[str, object] = {"action": action, "ok": True, "error": None}
        try:
            kind, _, path = action.partition(":")
            if kind in ("full", "partial"):
                snapshot = json.loads(Path(path).read_text(encoding="utf-8"))
                backend.sync(build_desired_state(snapshot, args.node), full=kind == "full", changed=ChangeSet())
            elif kind == "cleanup":
                backend.cleanup()
            elif kind == "flavour":
                result["flavour"] = detect_flavour().value
            else:
                raise ValueError(f"unknown action {action!r}")
        except Exception as exc:  # reported to the test, which decides whether it was expected
            logging.exception("%s failed", action)
            result.update(ok=False, error=f"{type(exc).__name__}: {exc}")
            failed = True
        result["ms"] = round((time.monotonic() - started) * 1000, 1)
        print(json.dumps(result), flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
