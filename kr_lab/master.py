"""``python -m kr_lab.master``: the lab's control plane, run inside the master host's namespace.

One process plays kube-apiserver (the ``kr_apiserver`` stand-in, with the lab's ClusterIP/NodePort
allocator as admission) and kube-controller-manager's endpoint-slice controller. The lab's CLI does the
kubelets' part (pod namespaces and Pod status) itself. The controller's progress is served under
``GET /_kr/status`` (``controllers.doneThrough``) for the apply barrier.

The port file is written (atomically) only once the server listens, so its existence means "ready".
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path

from kr_apiserver import APIServer
from kr_lab.controllers import EndpointSliceController, ServiceAllocator


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m kr_lab.master", description=__doc__.splitlines()[0])
    parser.add_argument("--listen", required=True)
    parser.add_argument("--port", type=int, default=6443)
    parser.add_argument("--service-cidr", required=True)
    parser.add_argument("--port-file", type=Path, required=True)
    parser.add_argument("--bookmark-interval", type=float, default=1.0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    server = APIServer(args.listen, args.port, history=10000, bookmark_interval=args.bookmark_interval)
    server.store.admission.append(ServiceAllocator(args.service_cidr))
    controller = EndpointSliceController(server.store)
    server.status_providers["controllers"] = controller.status
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    server.start()
    controller.start()
    temporary = args.port_file.with_name(args.port_file.name + ".tmp")
    temporary.write_text(f"{server.port}\n")
    os.replace(temporary, args.port_file)
    try:
        stop.wait()
    finally:
        controller.stop()
        server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
