"""What of an API object the agent keeps: the watcher trims each object before it enters the cache.

Like client-go's informer transforms (kube-proxy and most controllers drop ``managedFields`` this way),
``trim(resource, obj)`` removes in place what no part of kr reads and what makes objects large, and lets
equal small parts be shared between objects:

- every kind: ``metadata.managedFields`` (often as large as the rest of the object) and the
  ``kubectl.kubernetes.io/last-applied-configuration`` annotation (a copy of the object as applied);
- EndpointSlices: each endpoint's ``targetRef`` and ``deprecatedTopology``; equal ``conditions`` objects
  are one shared dict, and node and zone names are interned (100,000 endpoints repeat the same few);
- Pods: container statuses and conditions, volumes, init and ephemeral containers, and of each
  container everything but its ``name`` and ``ports`` (the firewall resolves named ports from those).

Invariants: ``trim`` takes ownership of ``obj`` (the watcher's freshly decoded JSON, not yet shared) and
returns it; it never removes a field ``kr_core.desired`` or a backend reads, so the desired state built
from trimmed objects equals the one built from whole objects (tests/core/test_trim.py checks this on
every golden fixture). Shared parts are never mutated afterwards: the cache's objects are read-only.
Plugins' event hooks see trimmed objects.
"""

from __future__ import annotations

import sys
from typing import Any

LAST_APPLIED = "kubectl.kubernetes.io/last-applied-configuration"
_POD_STATUS_DROPPED = ("containerStatuses", "initContainerStatuses", "ephemeralContainerStatuses", "conditions")
_POD_SPEC_DROPPED = ("volumes", "initContainers", "ephemeralContainers")
_CONTAINER_KEPT = ("name", "ports")
_ENDPOINT_DROPPED = ("targetRef", "deprecatedTopology")
_SHARED_LIMIT = 1024  # distinct conditions objects kept for sharing (there are a handful in practice)

_shared_conditions: dict[tuple[tuple[str, Any], ...], dict[str, Any]] = {}


def trim(resource: str, obj: dict[str, Any]) -> dict[str, Any]:
    """Drop from ``obj`` (of API resource ``resource``, e.g. "pods") what kr never reads; see the module."""
    meta = obj.get("metadata")
    if type(meta) is dict:
        meta.pop("managedFields", None)
        annotations = meta.get("annotations")
        if type(annotations) is dict:
            annotations.pop(LAST_APPLIED, None)
    if resource == "endpointslices":
        _trim_endpoints(obj.get("endpoints"))
    elif resource == "pods":
        _trim_pod(obj)
    return obj


def _trim_endpoints(endpoints: object) -> None:
    if type(endpoints) is not list:
        return
    for endpoint in endpoints:
        if type(endpoint) is not dict:
            continue
        for field in _ENDPOINT_DROPPED:
            endpoint.pop(field, None)
        for field in ("nodeName", "zone"):
            value = endpoint.get(field)
            if type(value) is str:
                endpoint[field] = sys.intern(value)
        conditions = endpoint.get("conditions")
        if type(conditions) is dict and all(type(v) in (bool, type(None)) for v in conditions.values()):
            endpoint["conditions"] = _shared(conditions)


def _shared(conditions: dict[str, Any]) -> dict[str, Any]:
    key = tuple(sorted(conditions.items()))
    shared = _shared_conditions.get(key)
    if shared is None:
        if len(_shared_conditions) >= _SHARED_LIMIT:
            return conditions
        shared = _shared_conditions[key] = conditions
    return shared


def _trim_pod(obj: dict[str, Any]) -> None:
    status = obj.get("status")
    if type(status) is dict:
        for field in _POD_STATUS_DROPPED:
            status.pop(field, None)
    spec = obj.get("spec")
    if type(spec) is not dict:
        return
    for field in _POD_SPEC_DROPPED:
        spec.pop(field, None)
    containers = spec.get("containers")
    if type(containers) is list:
        spec["containers"] = [{k: v for k, v in c.items() if k in _CONTAINER_KEPT} if type(c) is dict else c
                              for c in containers]
