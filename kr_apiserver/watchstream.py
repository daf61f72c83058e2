"""Writing one watch response: newline-delimited JSON events in HTTP/1.1 chunks, one chunk per event.

Invariants:
- every event is written as its own chunk and sent at once (the socket writer is unbuffered), so a
  client sees each event as soon as it is committed;
- a stream ends cleanly (terminating chunk) on ``timeoutSeconds``, on overflow and after an ERROR
  event; it ends abruptly (socket shut down, no terminating chunk) when dropped or at shutdown;
- BOOKMARK events are sent only while nothing is queued for the watch, so a bookmark never claims a
  resourceVersion whose events the client has not received;
- a client that goes away is noticed within ``_CLIENT_POLL`` seconds even if nothing is sent, so the
  open-watch counter reflects reality; socket errors end the stream with one debug line.
"""

from __future__ import annotations

import json
import logging
import math
import select
import socket
import time
from typing import Any, BinaryIO

from kr_apiserver.api import WatchStream
from kr_apiserver.faults import Faults
from kr_apiserver.stats import Stats
from kr_apiserver.store import Store
from kr_apiserver.watch import ABRUPT_REASONS, Watch

log = logging.getLogger(__name__)

WRITE_TIMEOUT = 30.0  # a client that reads nothing for this long is disconnected
_CLIENT_POLL = 0.5


class _ClientGone(Exception):
    pass


def _chunk(wfile: BinaryIO, event_type: str, obj: Any) -> None:
    data = json.dumps({"type": event_type, "object": obj}, separators=(",", ":")).encode() + b"\n"
    wfile.write(b"%x\r\n%b\r\n" % (len(data), data))


def _client_gone(sock: socket.socket) -> bool:
    """The client closed its end (a readable socket with nothing to read); watch clients send nothing."""
    poller = select.poll()  # not select.select: lab processes may hold descriptors above FD_SETSIZE
    poller.register(sock, select.POLLIN)
    if not poller.poll(0):
        return False
    try:
        return sock.recv(1, socket.MSG_PEEK) == b""
    except OSError:
        return True


def serve(
    sock: socket.socket,
    wfile: BinaryIO,
    stream: WatchStream,
    store: Store,
    faults: Faults,
    stats: Stats,
    bookmark_interval: float,
) -> bool:
    """Write ``stream`` to the client; returns whether the connection may be reused."""
    resource = stream.resource
    stats.watch_opened(resource.plural)
    reason = "error"
    try:
        wfile.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nCache-Control: no-cache, private\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n"
        )
        if stream.watch is None:
            _chunk(wfile, "ERROR", stream.error)
            reason = "expired" if (stream.error or {}).get("code") == 410 else "error"
        else:
            stream.watch.attach(sock)
            sock.settimeout(WRITE_TIMEOUT)
            reason = _pump(sock, wfile, stream, stream.watch, store, faults, bookmark_interval)
        if reason in ABRUPT_REASONS:
            return False
        wfile.write(b"0\r\n\r\n")
        return True
    except (_ClientGone, OSError) as exc:  # reset, broken pipe, write timeout, or a plain close
        log.debug("watch on %s ended by the client: %s", resource.plural, exc)
        reason = "client"
        return False
    finally:
        if stream.watch is not None:
            store.unwatch(stream.watch)
            stream.watch.close(reason)
        stats.watch_ended(resource.plural, reason)


def _pump(
    sock: socket.socket,
    wfile: BinaryIO,
    stream: WatchStream,
    watch: Watch,
    store: Store,
    faults: Faults,
    bookmark_interval: float,
) -> str:
    """Send events until the watch closes or times out; returns why it ended."""
    start = time.monotonic()
    deadline = start + stream.timeout if stream.timeout else math.inf
    next_bookmark = start + bookmark_interval if stream.bookmarks else math.inf
    while True:
        faults.hold_while_stalled(watch)
        if watch.closed:
            return watch.closed
        now = time.monotonic()
        if now >= deadline:
            return "timeout"
        if now >= next_bookmark:
            version = store.bookmark_revision(watch)
            if version is not None:
                r = stream.resource
                _chunk(wfile, "BOOKMARK", {
                    "kind": r.kind, "apiVersion": r.api_version, "metadata": {"resourceVersion": str(version)},
                })
            next_bookmark = now + bookmark_interval
            continue
        event = watch.next(min(deadline, next_bookmark, now + _CLIENT_POLL) - now)
        if event is None:
            if not watch.closed and _client_gone(sock):
                raise _ClientGone("connection closed")
            continue
        faults.hold_while_stalled(watch)
        if watch.closed:
            return watch.closed
        _chunk(wfile, *event)
