"""A wire-compatible Kubernetes API server stand-in for tests and the lab (stdlib HTTP + PyYAML).

It serves, over plain HTTP, what the official ``kubernetes`` client needs for nodes, namespaces,
pods, services (core v1), endpointslices (discovery.k8s.io/v1) and networkpolicies
(networking.k8s.io/v1): discovery, list, watch (replay from a resourceVersion, synthetic ADDED,
bookmarks, 410 Expired, timeoutSeconds), get, create, replace, patch (merge, strategic-as-merge, JSON
patch), delete, deletecollection and the ``/status`` subresource of pods, nodes, services, namespaces.

Interface::

    from kr_apiserver import APIServer, load_objects

    with APIServer("127.0.0.1", 0, history=1000, bookmark_interval=5.0, watch_queue_size=1000) as server:
        server.url                                   # http://127.0.0.1:PORT
        server.store.apply(obj)                      # create or replace by apiVersion/kind
        for obj in load_objects("seed.yaml"): server.store.apply(obj)
        server.faults.drop_watches(resource=None)    # and expire_watches, compact, stall_watches,
                                                     # hang_requests, fail_requests, clear, describe
        server.stats.requests("pods", "list")        # and open_watches, watch_ends, snapshot, reset

The same faults and counters are reachable over HTTP under ``/_kr/`` (see :mod:`kr_apiserver.admin`),
and ``python -m kr_apiserver`` runs it as a process (see :mod:`kr_apiserver.__main__`).
docs/apiserver.md says what is deliberately left out.

Modules: ``resources`` (served kinds), ``store`` (objects, revisions, history), ``watch`` (per-watch
queues), ``selectors``, ``patch``, ``status`` (Status errors), ``discovery``, ``routes`` (URL paths),
``api`` (verbs), ``admin`` (``/_kr/``), ``faults``, ``stats``, ``watchstream`` (chunked watch
responses), ``handler`` (HTTP transport), ``server`` (lifecycle), ``loader`` (YAML/JSON files).
"""

from kr_apiserver.faults import Faults
from kr_apiserver.loader import load_objects
from kr_apiserver.server import APIServer
from kr_apiserver.stats import Stats
from kr_apiserver.status import APIError
from kr_apiserver.store import Store

__all__ = ["APIError", "APIServer", "Faults", "Stats", "Store", "load_objects"]
