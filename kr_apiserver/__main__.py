"""``python -m kr_apiserver``: run the API stand-in as its own process (the lab runs one per cluster).

The seed files are loaded before the server listens, and the URL is printed and the port file written
only once it listens, so a port file that exists means "ready and seeded". The port file is written
atomically (a rename), so a reader never sees a partial number. SIGTERM and SIGINT stop the server.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import tempfile
import threading
from collections.abc import Sequence
from pathlib import Path

import yaml

from kr_apiserver.loader import load_objects
from kr_apiserver.server import APIServer
from kr_apiserver.status import APIError

log = logging.getLogger("kr_apiserver")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m kr_apiserver",
        description="Run kr's Kubernetes API stand-in (list, watch, CRUD, fault injection) over plain HTTP.",
    )
    parser.add_argument("--listen", default="127.0.0.1", help="address to bind (default: %(default)s)")
    parser.add_argument("--port", type=int, default=0, help="port to bind; 0 picks a free one (default: 0)")
    parser.add_argument("--port-file", type=Path, help="write the bound port to this file once listening")
    parser.add_argument("--bookmark-interval", type=float, default=5.0, metavar="S",
                        help="seconds between BOOKMARK events on watches that allow them (default: %(default)s)")
    parser.add_argument("--history", type=int, default=1000, metavar="N",
                        help="changes kept for watches to resume from; older versions get 410 (default: %(default)s)")
    parser.add_argument("--watch-queue-size", type=int, default=1000, metavar="N",
                        help="events a watch may fall behind before it is closed (default: %(default)s)")
    parser.add_argument("--seed", action="extend", nargs="+", default=[], type=Path, metavar="FILE",
                        help="YAML or JSON files of objects to create before serving")
    parser.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"))
    return parser


def _write_port_file(path: Path, port: int) -> None:
    descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(descriptor, "w") as stream:
        stream.write(f"{port}\n")
    os.replace(temporary, path)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    server = APIServer(
        args.listen, args.port,
        history=args.history, bookmark_interval=args.bookmark_interval, watch_queue_size=args.watch_queue_size,
    )
    try:
        for path in args.seed:
            objects = load_objects(path)
            for obj in objects:
                server.store.apply(obj)
            log.info("seeded %d objects from %s", len(objects), path)
    except (OSError, ValueError, yaml.YAMLError, APIError) as exc:
        print(f"kr_apiserver: cannot seed: {exc}", file=sys.stderr)
        return 2
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    server.start()
    print(server.url, flush=True)
    if args.port_file:
        _write_port_file(args.port_file, server.port)
    try:
        stop.wait()
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
