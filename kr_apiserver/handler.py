"""HTTP/1.1 transport: read a request off the socket, hand it to the API, write the answer.

Invariants:
- connections are kept alive between requests (the official client pools them); every plain
  response carries a Content-Length, watch responses are chunked;
- a client that disconnects (reset, broken pipe, timeout) never produces a traceback: one debug line,
  and the connection is closed; an unexpected error is logged once and answered with a 500 Status
  when no response has started yet;
- the server's access log goes to the ``kr_apiserver.handler`` logger at debug level, not stderr.
"""

from __future__ import annotations

import json
import logging
from http.server import BaseHTTPRequestHandler
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, urlsplit

from kr_apiserver import watchstream
from kr_apiserver.api import Request, Response, WatchStream
from kr_apiserver.status import APIError

if TYPE_CHECKING:
    from kr_apiserver.server import HTTPServer

log = logging.getLogger(__name__)


class RequestHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body go out in separate writes; don't wait for delayed ACKs
    server: HTTPServer

    def do_GET(self) -> None:
        self._serve()

    do_POST = do_PUT = do_PATCH = do_DELETE = do_GET

    def _serve(self) -> None:
        started = False
        try:
            request = self._read_request()
            result = self.server.api.handle(request)
            started = True
            if isinstance(result, WatchStream):
                app = self.server.api
                self.log_request(200)
                reusable = watchstream.serve(
                    self.connection, self.wfile, result, app.store, app.faults, app.stats, app.bookmark_interval
                )
                self.close_connection = self.close_connection or not reusable
            else:
                self._send(result)
        except OSError as exc:  # the client went away mid-request
            log.debug("%s %s: connection lost: %s", self.command, self.path, exc)
            self.close_connection = True
        except Exception:
            log.exception("%s %s failed", self.command, self.path)
            self.close_connection = True
            if not started:
                error = APIError(500, "internal error in kr_apiserver; see its log")
                try:
                    self._send(Response(error.code, error.body()))
                except OSError:
                    pass

    def _read_request(self) -> Request:
        url = urlsplit(self.path)
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length > 0 else b""
        content_type = (self.headers.get("Content-Type") or "").split(";")[0].strip().lower()
        return Request(self.command, url.path, dict(parse_qsl(url.query, keep_blank_values=True)), content_type, body)

    def _send(self, response: Response) -> None:
        body: Any = response.body
        if isinstance(body, str):
            data, content_type = body.encode(), "text/plain; charset=utf-8"
        else:
            data, content_type = json.dumps(body, separators=(",", ":")).encode(), "application/json"
        self.send_response(response.code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (the base class's name)
        log.debug("%s %s", self.address_string(), format % args)
