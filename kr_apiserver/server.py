"""``APIServer``: the store, faults and counters behind a threaded HTTP listener, started and stopped.

Usage::

    with APIServer("127.0.0.1", 0, bookmark_interval=1.0) as server:
        server.store.apply({...})            # or load_objects(path)
        client.Configuration(host=server.url)
        server.faults.drop_watches()
        server.stats.requests("pods", "list")

Invariants:
- the listening socket is bound in ``start()``; ``url`` and ``port`` are valid from then on;
- ``stop()`` leaves no thread serving: it ends faults that park threads, closes every watch and shuts
  down every open connection (idle keep-alive ones included), so clients see the server go away;
- one thread per connection (daemon threads), so a stuck client never blocks another.
"""

from __future__ import annotations

import logging
import socket
import socketserver
import sys
import threading
from http.server import ThreadingHTTPServer
from types import TracebackType
from typing import Any

from kr_apiserver.api import API
from kr_apiserver.faults import Faults
from kr_apiserver.handler import RequestHandler
from kr_apiserver.stats import Stats
from kr_apiserver.store import Store
from kr_apiserver.watch import SHUTDOWN

log = logging.getLogger(__name__)


class HTTPServer(ThreadingHTTPServer):
    """A ThreadingHTTPServer that knows its API and its open connections."""

    daemon_threads = True
    request_queue_size = 128

    def __init__(self, address: tuple[str, int], api: API):
        self.address_family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        self.api = api
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()
        super().__init__(address, RequestHandler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind resolves the host's FQDN: a DNS lookup that can stall for seconds in a
        # lab network namespace without a resolver, and nothing here uses the name
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = str(self.server_address[0]), int(self.server_address[1])

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._connections_lock:
            self._connections.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self._connections_lock:
            self._connections.discard(request)
        super().shutdown_request(request)

    def close_connections(self) -> None:
        with self._connections_lock:
            connections = list(self._connections)
        for connection in connections:
            try:
                connection.shutdown(socket.SHUT_RDWR)
            except OSError:  # already closed by its client
                pass

    def handle_error(self, request: Any, client_address: Any) -> None:
        error = sys.exc_info()[1]
        if isinstance(error, OSError):
            log.debug("connection from %s: %s", client_address, error)
        else:
            log.exception("error serving %s", client_address)


class APIServer:
    """A Kubernetes API stand-in on ``host:port`` (port 0 picks a free one)."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        history: int = 1000,
        bookmark_interval: float = 5.0,
        watch_queue_size: int = 1000,
    ):
        self.host = host
        self._requested_port = port
        self.store = Store(history=history, watch_queue_size=watch_queue_size)
        self.stats = Stats()
        self.faults = Faults(self.store)
        self._api = API(self.store, self.faults, self.stats, bookmark_interval, lambda: self.address)
        self._httpd: HTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        if self._httpd is None:
            raise RuntimeError("the server is not started")
        return int(self._httpd.server_address[1])

    @property
    def address(self) -> str:
        """``host:port`` (``[host]:port`` for IPv6), as clients dial it."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.address}"

    @property
    def status_providers(self) -> dict[str, Any]:
        """Name -> callable whose JSON-able result GET /_kr/status includes (see ``kr_apiserver.admin``)."""
        return self._api.status_providers

    def start(self) -> APIServer:
        if self._httpd is not None:
            raise RuntimeError("the server is already started")
        self._httpd = HTTPServer((self.host, self._requested_port), self._api)
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, name=f"kr-apiserver-{self.port}",
            daemon=True,
        )
        self._thread.start()
        log.info("serving the Kubernetes API stand-in at %s", self.url)
        return self

    def stop(self) -> None:
        httpd, thread = self._httpd, self._thread
        if httpd is None or thread is None:
            return
        self.faults.clear()
        self.store.close_watches(SHUTDOWN)
        httpd.shutdown()
        httpd.close_connections()
        httpd.server_close()
        thread.join()
        self._httpd = self._thread = None

    def __enter__(self) -> APIServer:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.stop()
